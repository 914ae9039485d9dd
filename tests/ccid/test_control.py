# SPDX-License-Identifier: GPL-3.0-or-later
"""ep0 class requests (CCID rev 1.1 §5.3)."""

import struct

import pytest

from ccidgadget.ccid import ReaderConfig

from .wire import Host


@pytest.fixture
def reader():
    return Host(slots=2).reader


def test_abort_acknowledged(reader):
    assert reader.control_request(0x21, 0x01, 0x0501, 0, 0) == b""
    assert reader.slot_state(1).aborting and not reader.slot_state(0).aborting


@pytest.mark.parametrize("args", [
    (0xA1, 0x01, 0x0000, 0, 0),  # wrong direction
    (0x21, 0x01, 0x0002, 0, 0),  # no slot 2
    (0x21, 0x01, 0x0000, 0, 4),  # ABORT has no data stage
])
def test_abort_stalls(reader, args):
    assert reader.control_request(*args) is None
    assert not reader.slot_state(0).aborting


def test_get_clock_frequencies(reader):
    assert reader.control_request(0xA1, 0x02, 0, 0, 256) == struct.pack("<I", 4000)


def test_get_data_rates(reader):
    assert reader.control_request(0xA1, 0x03, 0, 0, 256) == struct.pack("<I", 10752)


def test_truncated_to_wlength(reader):
    assert reader.control_request(0xA1, 0x02, 0, 0, 2) == struct.pack("<I", 4000)[:2]
    assert reader.control_request(0xA1, 0x03, 0, 0, 0) == b""


def test_values_follow_config():
    reader = Host(ReaderConfig(default_clock_khz=3580, data_rate_bps=9600)).reader
    assert reader.control_request(0xA1, 0x02, 0, 0, 4) == struct.pack("<I", 3580)
    assert reader.control_request(0xA1, 0x03, 0, 0, 4) == struct.pack("<I", 9600)


@pytest.mark.parametrize("args", [
    (0x21, 0x02, 0, 0, 4),  # GET_CLOCK_FREQUENCIES as OUT: wrong direction
    (0x21, 0x03, 0, 0, 4),
    (0xA1, 0x02, 1, 0, 4),  # bad wValue
    (0xA1, 0x03, 0x100, 0, 4),
    (0xA1, 0x04, 0, 0, 4),  # unknown request
    (0xA1, 0x00, 0, 0, 4),
    (0x21, 0xFF, 0, 0, 0),
    (0xC1, 0x02, 0, 0, 4),  # vendor type
    (0xA1, 0x02, 0, 0, 0x10000),  # out of range from a buggy caller: STALL, never raise
    (0x21, 0x01, -1, 0, 0),
])
def test_stall(reader, args):
    assert reader.control_request(*args) is None
