# SPDX-License-Identifier: GPL-3.0-or-later
"""The 54-byte CCID class descriptor (CCID rev 1.1 §5.1)."""

import struct

import pytest

from ccidgadget.ccid import DEFAULT_MAX_MESSAGE_LENGTH, ClassDescriptor, Reader, ReaderConfig


def test_length_and_type():
    raw = Reader().descriptor.to_bytes()
    assert len(raw) == 54
    assert raw[0] == 0x36 and raw[1] == 0x21


def test_byte_layout_default():
    raw = Reader().descriptor.to_bytes()
    # Offsets from §5.1 table 5.1-1; libccid reads the same offsets (ccid_usb.c).
    assert struct.unpack_from("<H", raw, 2)[0] == 0x0110  # bcdCCID
    assert raw[4] == 0  # bMaxSlotIndex
    assert raw[5] == 0x07  # bVoltageSupport
    assert struct.unpack_from("<I", raw, 6)[0] == 0x3  # dwProtocols T=0|T=1
    assert struct.unpack_from("<I", raw, 10)[0] == 4000  # dwDefaultClock
    assert struct.unpack_from("<I", raw, 14)[0] == 4000  # dwMaximumClock
    assert raw[18] == 1  # bNumClockSupported
    assert struct.unpack_from("<I", raw, 19)[0] == 10752  # dwDataRate
    assert struct.unpack_from("<I", raw, 23)[0] == 10752  # dwMaxDataRate
    assert raw[27] == 1  # bNumDataRatesSupported
    assert struct.unpack_from("<I", raw, 28)[0] == 254  # dwMaxIFSD
    assert struct.unpack_from("<I", raw, 32)[0] == 0  # dwSynchProtocols
    assert struct.unpack_from("<I", raw, 36)[0] == 0  # dwMechanical
    assert struct.unpack_from("<I", raw, 40)[0] == 0x000404FE  # dwFeatures
    assert struct.unpack_from("<I", raw, 44)[0] == DEFAULT_MAX_MESSAGE_LENGTH  # dwMaxCCIDMessageLength
    assert raw[48] == 0xFF and raw[49] == 0xFF  # bClassGetResponse, bClassEnvelope
    assert struct.unpack_from("<H", raw, 50)[0] == 0  # wLcdLayout
    assert raw[52] == 0  # bPINSupport
    assert raw[53] == 1  # bMaxCCIDBusySlots


def test_features_bits():
    features = Reader().descriptor.dwFeatures
    for bit in (0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x400, 0x40000):
        assert features & bit
    assert not features & 0x10000 and not features & 0x20000  # not TPDU, not short APDU
    assert not features & 0x100000  # no remote wake-up


def test_default_message_length_forces_chaining_of_4k():
    # A 4 KiB response (4096 + SW) must not fit one message, a short APDU must.
    assert 261 + 10 <= DEFAULT_MAX_MESSAGE_LENGTH < 4098 + 10
    assert DEFAULT_MAX_MESSAGE_LENGTH % 64 != 0


@pytest.mark.parametrize("slots", [1, 2, 5, 8])
def test_from_config(slots):
    d = Reader(ReaderConfig(slots=slots, max_message_length=300, default_clock_khz=3580,
                            data_rate_bps=9600)).descriptor
    raw = d.to_bytes()
    assert raw[4] == slots - 1 and raw[53] == slots
    assert struct.unpack_from("<I", raw, 44)[0] == 300
    assert struct.unpack_from("<I", raw, 10)[0] == 3580
    assert struct.unpack_from("<I", raw, 19)[0] == 9600


def test_fields_for_functionfs():
    d = ClassDescriptor()
    fields = d.fields()
    assert "bLength" not in fields and "bDescriptorType" not in fields
    assert len(fields) == 20
    assert fields["dwFeatures"] == d.dwFeatures
    assert list(fields)[0] == "bcdCCID" and list(fields)[-1] == "bMaxCCIDBusySlots"


def test_frozen():
    with pytest.raises(Exception):
        ClassDescriptor().bLength = 1  # type: ignore[misc]


@pytest.mark.parametrize("kw", [dict(slots=0), dict(slots=9), dict(max_message_length=270),
                                dict(max_message_length=65555), dict(default_clock_khz=0)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        ReaderConfig(**kw)
