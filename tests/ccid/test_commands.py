# SPDX-License-Identifier: GPL-3.0-or-later
"""Every PC_to_RDR message and its error answers (CCID rev 1.1 §6.1, §6.2.6)."""

import struct

import pytest

from ccidgadget.ccid import PowerOff, PowerOn, SlotError, Transmit

from .wire import (
    ABORT, ATR, BAD_ATR_TCK, BAD_ATR_TS, CMD_SLOT_BUSY, DATA_BLOCK, DATA_RATE_RESP, ESCAPE, ESCAPE_RESP,
    FAILED_ABSENT, FAILED_ACTIVE, FAILED_INACTIVE, GET_PARAMETERS, GET_SLOT_STATUS, HW_ERROR, ICC_CLOCK,
    ICC_MUTE, ICC_POWER_OFF, ICC_POWER_ON, MECHANICAL, NOT_SUPPORTED, OK_ABSENT, OK_ACTIVE, OK_INACTIVE,
    PARAMETERS, RESET_PARAMETERS, SECURE, SET_DATA_RATE, SET_PARAMETERS, SLOT_STATUS, T0APDU, XFR_BLOCK,
    Host, cmd, make_atr, xfr,
)

APDU = bytes.fromhex("00A4040007A0000003080000")


@pytest.fixture
def host():
    return Host()


@pytest.fixture
def card(host):
    host.insert()
    return host


@pytest.fixture
def active(card):
    resp = card.power_on(seq=1)
    assert resp.status == OK_ACTIVE
    return card


# --- IccPowerOn §6.1.1 -------------------------------------------------------

def test_power_on_returns_atr(card):
    resp = card.power_on(seq=7)
    assert (resp.message_type, resp.seq, resp.slot, resp.status, resp.error) == (DATA_BLOCK, 7, 0, OK_ACTIVE, 0)
    assert resp.data == ATR and resp.b9 == 0
    state = card.reader.slot_state(0)
    assert state.powered and state.atr == ATR and state.protocol == 1


@pytest.mark.parametrize("power_select", [0, 1, 2, 3])
def test_power_on_valid_power_select(card, power_select):
    assert card.send(cmd(ICC_POWER_ON, seq=3, b7=power_select)) == []
    assert len(card.take(PowerOn)) == 1


@pytest.mark.parametrize("power_select", [4, 0x80, 0xFF])
def test_power_on_bad_power_select(card, power_select):
    resp = card.one(cmd(ICC_POWER_ON, seq=3, b7=power_select))
    assert (resp.message_type, resp.status, resp.error) == (DATA_BLOCK, FAILED_INACTIVE, 7)
    assert card.take(PowerOn) == []


@pytest.mark.parametrize("offset", [8, 9])
def test_power_on_rfu(card, offset):
    raw = bytearray(cmd(ICC_POWER_ON, seq=3))
    raw[offset] = 1
    resp = card.one(bytes(raw))
    assert (resp.status, resp.error) == (FAILED_INACTIVE, offset)


def test_power_on_no_card(host):
    resp = host.one(cmd(ICC_POWER_ON, seq=9))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 9, FAILED_ABSENT, ICC_MUTE)
    assert host.take(PowerOn) == []


def test_power_on_bad_dwlength(card):
    resp = card.one(cmd(ICC_POWER_ON, seq=2, data=b"\0"))
    assert (resp.message_type, resp.status, resp.error) == (DATA_BLOCK, FAILED_INACTIVE, 1)


def test_power_on_engine_mute(card):
    card.send(cmd(ICC_POWER_ON, seq=4))
    (event,) = card.take(PowerOn)
    card.reader.card_failed(event.token, SlotError.ICC_MUTE)
    (resp,) = card.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 4, FAILED_INACTIVE, ICC_MUTE)
    assert not card.reader.slot_state(0).powered


def test_power_on_engine_hw_error(card):
    card.send(cmd(ICC_POWER_ON, seq=4))
    (event,) = card.take(PowerOn)
    card.reader.card_failed(event.token, SlotError.HW_ERROR)
    (resp,) = card.drain()
    assert (resp.status, resp.error) == (FAILED_INACTIVE, HW_ERROR)


@pytest.mark.parametrize("atr, error", [
    (b"", BAD_ATR_TS),
    (b"\x3a\x00", BAD_ATR_TS),
    (ATR[:-1] + bytes([ATR[-1] ^ 1]), BAD_ATR_TCK),
    (ATR[:-1], BAD_ATR_TCK),  # TCK missing
    (b"\x3b\x9f\x11", HW_ERROR),  # truncated
    (b"\x3b" + b"\x0f" + b"\x00" * 40, HW_ERROR),  # too long
])
def test_power_on_bad_atr(card, atr, error):
    card.send(cmd(ICC_POWER_ON, seq=4))
    (event,) = card.take(PowerOn)
    card.reader.card_answer(event.token, atr)
    (resp,) = card.drain()
    assert (resp.status, resp.error) == (FAILED_INACTIVE, error)
    assert card.take(PowerOff) == [PowerOff(0)]


def test_power_on_t0_atr_without_tck(card):
    atr = bytes.fromhex("3B 02 14 50".replace(" ", ""))  # T=0 only: no TCK
    resp = card.power_on(atr=atr)
    assert resp.status == OK_ACTIVE and resp.data == atr
    assert card.reader.slot_state(0).protocol == 0


def test_power_on_busy(card):
    card.send(cmd(ICC_POWER_ON, seq=1))
    resp = card.one(cmd(ICC_POWER_ON, seq=2))
    assert (resp.seq, resp.error, resp.status) == (2, CMD_SLOT_BUSY, FAILED_INACTIVE)
    assert card.reader.busy_slots() == {0}


# --- IccPowerOff §6.1.2, GetSlotStatus §6.1.3 ----------------------------------

def test_power_off(active):
    resp = active.one(cmd(ICC_POWER_OFF, seq=5))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 5, OK_INACTIVE, 0)
    assert resp.b9 == 1  # bClockStatus: stopped in state L
    assert active.take(PowerOff) == [PowerOff(0)]


def test_power_off_no_card(host):
    resp = host.one(cmd(ICC_POWER_OFF, seq=5))
    assert (resp.message_type, resp.status, resp.error) == (SLOT_STATUS, OK_ABSENT, 0)
    assert host.take(PowerOff) == []


@pytest.mark.parametrize("fixture, status", [("host", OK_ABSENT), ("card", OK_INACTIVE), ("active", OK_ACTIVE)])
def test_get_slot_status(request, fixture, status):
    h = request.getfixturevalue(fixture)
    resp = h.one(cmd(GET_SLOT_STATUS, seq=0xAB))
    assert (resp.message_type, resp.length, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 0, 0xAB, status, 0)
    assert resp.b9 == (0 if status == OK_ACTIVE else 1)


@pytest.mark.parametrize("message_type, response_type", [
    (ICC_POWER_ON, DATA_BLOCK), (ICC_POWER_OFF, SLOT_STATUS), (GET_SLOT_STATUS, SLOT_STATUS),
    (XFR_BLOCK, DATA_BLOCK), (GET_PARAMETERS, PARAMETERS), (RESET_PARAMETERS, PARAMETERS),
    (SET_PARAMETERS, PARAMETERS), (ESCAPE, ESCAPE_RESP), (ICC_CLOCK, SLOT_STATUS), (T0APDU, SLOT_STATUS),
    (SECURE, DATA_BLOCK), (MECHANICAL, SLOT_STATUS), (ABORT, SLOT_STATUS), (SET_DATA_RATE, DATA_RATE_RESP),
])
def test_bad_slot(host, message_type, response_type):
    resp = host.one(cmd(message_type, slot=1, seq=0x42))
    assert (resp.message_type, resp.slot, resp.seq, resp.status, resp.error) == (
        response_type, 1, 0x42, FAILED_ABSENT, 5)


@pytest.mark.parametrize("message_type", [0x00, 0x50, 0x60, 0x64, 0x66, 0x70, 0x74, 0x80, 0xFF])
def test_unknown_message_type(host, message_type):
    resp = host.one(cmd(message_type, seq=3, data=b"xyz"))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 3, FAILED_ABSENT, NOT_SUPPORTED)


@pytest.mark.parametrize("message_type", [ICC_POWER_OFF, GET_SLOT_STATUS, GET_PARAMETERS, RESET_PARAMETERS,
                                          ABORT, SET_DATA_RATE])
@pytest.mark.parametrize("offset", [7, 8, 9])
def test_rfu_bytes(active, message_type, offset):
    raw = bytearray(cmd(message_type, seq=1, data=b"\0" * (8 if message_type == SET_DATA_RATE else 0)))
    raw[offset] = 0x5A
    resp = active.one(bytes(raw))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, offset)


@pytest.mark.parametrize("message_type", [ICC_POWER_OFF, GET_SLOT_STATUS, GET_PARAMETERS, RESET_PARAMETERS,
                                          ICC_CLOCK, ABORT])
def test_bad_dwlength(active, message_type):
    resp = active.one(cmd(message_type, seq=1, data=b"\x01\x02"))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 1)


# --- XfrBlock §6.1.4 -------------------------------------------------------------

def test_xfr_block(active):
    assert active.send(xfr(APDU, seq=2)) == []
    event = active.transmit_pending()
    assert (event.slot, event.apdu) == (0, APDU)
    assert active.reader.busy_slots() == {0}
    active.reader.card_answer(event.token, b"\x90\x00")
    (resp,) = active.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error, resp.b9, resp.data) == (
        DATA_BLOCK, 2, OK_ACTIVE, 0, 0, b"\x90\x00")
    assert active.reader.busy_slots() == set()


def test_xfr_block_no_card(host):
    resp = host.one(xfr(APDU, seq=2))
    assert (resp.message_type, resp.status, resp.error) == (DATA_BLOCK, FAILED_ABSENT, ICC_MUTE)


def test_xfr_block_inactive_card(card):
    resp = card.one(xfr(APDU, seq=2))
    assert (resp.message_type, resp.status, resp.error) == (DATA_BLOCK, FAILED_INACTIVE, ICC_MUTE)


def test_xfr_block_after_power_off(active):
    active.send(cmd(ICC_POWER_OFF, seq=2))
    resp = active.one(xfr(APDU, seq=3))
    assert (resp.status, resp.error) == (FAILED_INACTIVE, ICC_MUTE)


def test_xfr_block_engine_mute(active):
    active.send(xfr(APDU, seq=2))
    active.reader.card_failed(active.transmit_pending().token, SlotError.ICC_MUTE)
    (resp,) = active.drain()
    assert (resp.seq, resp.status, resp.error) == (2, FAILED_ACTIVE, ICC_MUTE)


def test_xfr_block_engine_failure(active):
    active.send(xfr(APDU, seq=2))
    active.reader.card_failed(active.transmit_pending().token, SlotError.HW_ERROR)
    (resp,) = active.drain()
    assert (resp.seq, resp.status, resp.error) == (2, FAILED_ACTIVE, HW_ERROR)


def test_xfr_block_busy(active):
    active.send(xfr(APDU, seq=2))
    for raw in (xfr(APDU, seq=3), cmd(GET_SLOT_STATUS, seq=4), cmd(ICC_POWER_OFF, seq=5)):
        resp = active.one(raw)
        assert (resp.status, resp.error) == (FAILED_ACTIVE, CMD_SLOT_BUSY)
    # the first command still completes normally
    active.reader.card_answer(active.transmit_pending().token, b"\x90\x00")
    (resp,) = active.drain()
    assert (resp.seq, resp.status, resp.data) == (2, OK_ACTIVE, b"\x90\x00")


@pytest.mark.parametrize("apdu", [b"", b"\x00", b"\x00\xa4\x04"])
def test_xfr_block_too_short_for_an_apdu(active, apdu):
    resp = active.one(xfr(apdu, seq=2))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 1)
    assert active.take(Transmit) == []


def test_xfr_block_bwi_ignored(active):
    active.send(xfr(APDU, seq=2, bwi=0x0F))
    assert active.transmit_pending().apdu == APDU


@pytest.mark.parametrize("level", [0x0004, 0x0011, 0x0100, 0xFFFF, 0x0002, 0x0003, 0x0010])
def test_xfr_block_bad_level_parameter(active, level):
    resp = active.one(xfr(APDU, seq=2, level=level))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 8)


def test_response_too_long_from_engine(active):
    active.send(xfr(APDU, seq=2))
    active.reader.card_answer(active.transmit_pending().token, b"\0" * 65539)
    (resp,) = active.drain()
    assert (resp.status, resp.error) == (FAILED_ACTIVE, HW_ERROR)


def test_empty_response_passes(active):
    active.send(xfr(APDU, seq=2))
    active.reader.card_answer(active.transmit_pending().token, b"")
    (resp,) = active.drain()
    assert (resp.status, resp.length) == (OK_ACTIVE, 0)


# --- Get/Reset/SetParameters §6.1.5-7 -------------------------------------------------

def test_get_parameters_t1_from_atr(active):
    resp = active.one(cmd(GET_PARAMETERS, seq=3))
    assert (resp.message_type, resp.seq, resp.status, resp.error, resp.b9) == (PARAMETERS, 3, OK_ACTIVE, 0, 1)
    # bmFindexDindex 11, bmTCCKST1 10, guard 0, BWI/CWI 45, clock stop 0, IFSC FE, NAD 0
    assert resp.data == bytes([0x11, 0x10, 0x00, 0x45, 0x00, 0xFE, 0x00])


def test_get_parameters_t0_from_atr(card):
    resp = card.power_on(atr=bytes.fromhex("3B1513") + b"\x01\x02\x03\x04\x05")  # TA1 13, T=0 only
    assert resp.status == OK_ACTIVE
    resp = card.one(cmd(GET_PARAMETERS, seq=3))
    assert resp.b9 == 0
    assert resp.data == bytes([0x13, 0x00, 0x00, 0x0A, 0x00])


def test_get_parameters_inverse_convention_and_tc1_tc2(card):
    atr = bytes([0x3F, 0xD0 | 1, 0x96, 0x25, 0x40, 0x33, ord("Z")])  # TA1 96, TC1 25, TD1 40, TC2 33
    assert card.power_on(atr=atr).status == OK_ACTIVE
    resp = card.one(cmd(GET_PARAMETERS, seq=3))
    assert resp.data == bytes([0x96, 0x02, 0x25, 0x33, 0x00])


def test_get_parameters_no_card(host):
    resp = host.one(cmd(GET_PARAMETERS, seq=3))
    assert (resp.message_type, resp.status, resp.error, resp.length) == (PARAMETERS, FAILED_ABSENT, ICC_MUTE, 0)


def test_get_parameters_inactive_card_defaults(card):
    resp = card.one(cmd(GET_PARAMETERS, seq=3))
    assert (resp.status, resp.b9, resp.data) == (OK_INACTIVE, 0, bytes([0x11, 0, 0, 0x0A, 0]))


def test_set_then_reset_parameters(active):
    t0 = bytes([0x18, 0x02, 0x05, 0x20, 0x00])
    resp = active.one(cmd(SET_PARAMETERS, seq=4, b7=0, data=t0))
    assert (resp.message_type, resp.status, resp.error, resp.b9, resp.data) == (PARAMETERS, OK_ACTIVE, 0, 0, t0)
    assert active.one(cmd(GET_PARAMETERS, seq=5)).data == t0
    resp = active.one(cmd(RESET_PARAMETERS, seq=6))
    assert (resp.b9, resp.data) == (1, bytes([0x11, 0x10, 0x00, 0x45, 0x00, 0xFE, 0x00]))


def test_set_parameters_t1(active):
    t1 = bytes([0x11, 0x11, 0x00, 0x75, 0x00, 0x20, 0x00])
    resp = active.one(cmd(SET_PARAMETERS, seq=4, b7=1, data=t1))
    assert (resp.status, resp.b9, resp.data) == (OK_ACTIVE, 1, t1)


@pytest.mark.parametrize("protocol", [2, 0x0F, 0xFF])
def test_set_parameters_bad_protocol(active, protocol):
    resp = active.one(cmd(SET_PARAMETERS, seq=4, b7=protocol, data=b"\0" * 5))
    assert (resp.message_type, resp.status, resp.error) == (PARAMETERS, FAILED_ACTIVE, 7)


@pytest.mark.parametrize("protocol, size", [(0, 7), (0, 4), (1, 5), (1, 0), (0, 0)])
def test_set_parameters_bad_length(active, protocol, size):
    data = bytes([0x11, 0x10 if protocol else 0, 0, 0x45, 0, 0xFE, 0])[:size].ljust(size, b"\0")
    resp = active.one(cmd(SET_PARAMETERS, seq=4, b7=protocol, data=data))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 1)


@pytest.mark.parametrize("protocol, data, offset", [
    (0, bytes([0x11, 0x01, 0, 0x0A, 0]), 11),
    (0, bytes([0x11, 0x00, 0, 0x0A, 4]), 14),
    (1, bytes([0x11, 0x00, 0, 0x45, 0, 0xFE, 0]), 11),
    (1, bytes([0x11, 0x10, 0, 0x45, 0, 0xFF, 0]), 15),
    (1, bytes([0x11, 0x10, 0, 0x45, 0, 0x00, 0]), 15),
    (1, bytes([0x11, 0x10, 0, 0x45, 0, 0xFE, 1]), 16),
])
def test_set_parameters_bad_field(active, protocol, data, offset):
    resp = active.one(cmd(SET_PARAMETERS, seq=4, b7=protocol, data=data))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, offset)


@pytest.mark.parametrize("offset", [8, 9])
def test_set_parameters_rfu(active, offset):
    raw = bytearray(cmd(SET_PARAMETERS, seq=4, b7=0, data=bytes([0x11, 0, 0, 0x0A, 0])))
    raw[offset] = 1
    assert active.one(bytes(raw)).error == offset


def test_set_parameters_no_card(host):
    resp = host.one(cmd(SET_PARAMETERS, seq=4, b7=0, data=bytes([0x11, 0, 0, 0x0A, 0])))
    assert (resp.status, resp.error) == (FAILED_ABSENT, ICC_MUTE)


def test_reset_parameters_no_card(host):
    resp = host.one(cmd(RESET_PARAMETERS, seq=4))
    assert (resp.message_type, resp.status, resp.error) == (PARAMETERS, FAILED_ABSENT, ICC_MUTE)


# --- IccClock §6.1.9, SetDataRateAndClockFrequency §6.1.14 --------------------------

@pytest.mark.parametrize("clock_command", [0, 1])
def test_icc_clock_accepted(active, clock_command):
    resp = active.one(cmd(ICC_CLOCK, seq=8, b7=clock_command))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 8, OK_ACTIVE, 0)


def test_icc_clock_bad_command(active):
    resp = active.one(cmd(ICC_CLOCK, seq=8, b7=2))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 7)


def test_icc_clock_no_card(host):
    resp = host.one(cmd(ICC_CLOCK, seq=8))
    assert (resp.status, resp.error) == (FAILED_ABSENT, ICC_MUTE)


@pytest.mark.parametrize("fixture", ["host", "active"])
def test_set_data_rate_and_clock(request, fixture):
    h = request.getfixturevalue(fixture)
    resp = h.one(cmd(SET_DATA_RATE, seq=9, data=struct.pack("<II", 8000, 115200)))
    assert (resp.message_type, resp.seq, resp.error, resp.length) == (DATA_RATE_RESP, 9, 0, 8)
    assert resp.status & 0xC0 == 0
    assert struct.unpack("<II", resp.data) == (4000, 10752)


def test_set_data_rate_bad_length(host):
    resp = host.one(cmd(SET_DATA_RATE, seq=9, data=b"\0" * 4))
    assert (resp.message_type, resp.error, resp.length) == (DATA_RATE_RESP, 1, 8)
    assert resp.status == FAILED_ABSENT


# --- Not supported: Escape §6.1.8, T0APDU §6.1.10, Secure §6.1.11, Mechanical §6.1.12 ---

@pytest.mark.parametrize("message_type, response_type, data", [
    (ESCAPE, ESCAPE_RESP, b"\x01\x02\x03"),
    (T0APDU, SLOT_STATUS, b""),
    (SECURE, DATA_BLOCK, b"\x00" * 20),
    (MECHANICAL, SLOT_STATUS, b""),
])
@pytest.mark.parametrize("fixture, status", [("host", FAILED_ABSENT), ("active", FAILED_ACTIVE)])
def test_not_supported(request, fixture, status, message_type, response_type, data):
    h = request.getfixturevalue(fixture)
    resp = h.one(cmd(message_type, seq=0x33, b7=1, data=data))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (response_type, 0x33, status, NOT_SUPPORTED)
    assert resp.length == 0


def test_not_supported_while_busy_is_still_not_supported(active):
    active.send(xfr(APDU, seq=2))
    resp = active.one(cmd(ESCAPE, seq=3))
    assert (resp.message_type, resp.error) == (ESCAPE_RESP, NOT_SUPPORTED)


def test_seq_and_slot_echo(active):
    for seq in (0, 1, 0x7F, 0xFF):
        resp = active.one(cmd(GET_SLOT_STATUS, seq=seq))
        assert (resp.slot, resp.seq) == (0, seq)


def test_counters(active):
    active.one(cmd(GET_SLOT_STATUS, seq=1))
    active.one(cmd(ICC_CLOCK, seq=1, b7=9))
    state = active.reader.slot_state(0)
    assert state.commands == 3 and state.errors == 1


def test_another_atr(card):
    atr = make_atr(b"")
    assert card.power_on(atr=atr).data == atr
