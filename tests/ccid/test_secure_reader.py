# SPDX-License-Identifier: GPL-3.0-or-later
"""PC_to_RDR_Secure through the core (§6.1.11): a Secure event, the answer, errors, abort, time extensions."""

from __future__ import annotations

import pytest

from ccidgadget.ccid import Cancel, ClassDescriptor, ReaderConfig, Secure, SlotError

from .test_secure import OPENSC_PIV_VERIFY, gnupg_modify
from .wire import ABORT, DATA_BLOCK, FAILED_ACTIVE, NOT_SUPPORTED, OK_ACTIVE, SECURE, Host, cmd, xfr

TIME_EXTENSION_STATUS = 0x80


@pytest.fixture
def pinpad():
    host = Host(ReaderConfig(pin_support=0x03))
    host.insert()
    assert host.power_on(seq=1).status == OK_ACTIVE
    return host


def test_descriptor_advertises_the_pin_pad() -> None:
    d = ClassDescriptor.from_config(ReaderConfig(pin_support=0x03, lcd_layout=0))
    raw = d.to_bytes()
    assert raw[52] == 0x03 and raw[50:52] == b"\x00\x00"          # libccid: bPINSupport @52, wLcdLayout @50
    assert ClassDescriptor.from_config(ReaderConfig()).to_bytes()[52] == 0


def test_secure_without_pin_support_is_not_supported() -> None:
    host = Host()
    host.insert()
    host.power_on(seq=1)
    resp = host.one(cmd(SECURE, seq=2, data=OPENSC_PIV_VERIFY))
    assert (resp.message_type, resp.status, resp.error) == (DATA_BLOCK, FAILED_ACTIVE, NOT_SUPPORTED)


def test_verify_becomes_a_secure_event_and_the_card_answers(pinpad) -> None:
    assert pinpad.send(cmd(SECURE, seq=5, data=OPENSC_PIV_VERIFY)) == []
    (event,) = pinpad.take(Secure)
    assert event.slot == 0 and event.request.prompts() == ["current"]
    assert pinpad.reader.slot_state(0).busy
    pinpad.reader.card_answer(event.token, b"\x90\x00")
    (resp,) = pinpad.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error, resp.data) == (DATA_BLOCK, 5, OK_ACTIVE, 0,
                                                                                 b"\x90\x00")


@pytest.mark.parametrize("error", [SlotError.PIN_CANCELLED, SlotError.PIN_TIMEOUT])
def test_cancel_and_timeout_are_bError_ef_and_f0(pinpad, error) -> None:
    pinpad.send(cmd(SECURE, seq=6, data=gnupg_modify(0)))
    (event,) = pinpad.take(Secure)
    pinpad.reader.card_failed(event.token, error)
    (resp,) = pinpad.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 6, FAILED_ACTIVE, int(error))


def test_time_extensions_while_the_pin_is_typed(pinpad) -> None:
    pinpad.send(cmd(SECURE, seq=7, data=OPENSC_PIV_VERIFY))
    pinpad.take(Secure)
    pinpad.reader.time_extension(0)
    (resp,) = pinpad.drain()
    assert (resp.seq, resp.status, resp.error) == (7, TIME_EXTENSION_STATUS | OK_ACTIVE, 1)


def test_bad_structure_gets_the_offset_of_the_bad_field(pinpad) -> None:
    bad = bytearray(OPENSC_PIV_VERIFY)
    bad[2] = 0x83
    resp = pinpad.one(cmd(SECURE, seq=8, data=bytes(bad)))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 12)
    assert pinpad.take(Secure) == [] and not pinpad.reader.slot_state(0).busy
    resp = pinpad.one(cmd(SECURE, seq=9, data=b""))
    assert resp.error == 1
    resp = pinpad.one(cmd(SECURE, seq=10, b8=1, data=OPENSC_PIV_VERIFY))      # wLevelParameter 1: no chaining
    assert resp.error == 8


def test_secure_needs_an_active_card_and_a_free_slot(pinpad) -> None:
    pinpad.send(xfr(b"\x00\xa4\x04\x00", seq=11))
    resp = pinpad.one(cmd(SECURE, seq=12, data=OPENSC_PIV_VERIFY))
    assert resp.error == SlotError.CMD_SLOT_BUSY
    host = Host(ReaderConfig(pin_support=0x03))
    host.insert()
    resp = host.one(cmd(SECURE, seq=1, data=OPENSC_PIV_VERIFY))
    assert resp.error == SlotError.ICC_MUTE


def test_abort_cancels_the_pin_entry(pinpad) -> None:
    pinpad.send(cmd(SECURE, seq=13, data=OPENSC_PIV_VERIFY))
    (event,) = pinpad.take(Secure)
    pinpad.reader.control_request(0x21, 0x01, 0 | 13 << 8, 0, 0)
    events = pinpad.reader.next_events()
    assert [e for e in events if isinstance(e, Cancel)] == [Cancel(0, event.token)]
    resp = pinpad.one(cmd(ABORT, seq=13))
    assert resp.error == 0
    pinpad.reader.card_answer(event.token, b"\x90\x00")      # too late: ignored
    assert pinpad.drain() == []
