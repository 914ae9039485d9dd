# SPDX-License-Identifier: GPL-3.0-or-later
"""Several slots, NotifySlotChange, HardwareError, time extension and bus reset (§6.3)."""

import pytest

from ccidgadget.ccid import TIME_EXTENSION_INTERVAL, Cancel, InterruptPending, PowerOff, PowerOn, SlotError

from .wire import (
    DATA_BLOCK, FAILED_ABSENT, GET_SLOT_STATUS, ICC_MUTE, ICC_POWER_ON, OK_ACTIVE, OK_INACTIVE, TIME_EXT_ACTIVE,
    Host, cmd, xfr,
)

APDU = b"\x00\xa4\x04\x00"


def test_time_extension_interval_is_below_libccid_timeouts():
    # libccid: >= 3 s for T=0, 3.76 s for the recommended T=1 ATR, >= 1.09 s for any T=1 ATR at 4 MHz.
    assert 0 < TIME_EXTENSION_INTERVAL <= 1.0


@pytest.mark.parametrize("slots, expected", [
    (1, [b"\x50\x03"]),
    (2, [b"\x50\x0f"]),
    (5, [b"\x50\xff\x03"]),
])
def test_notify_all_inserted(slots, expected):
    host = Host(slots=slots)
    for slot in range(slots):
        host.reader.set_card_present(slot, True)
    assert host.reader.next_events() == [InterruptPending()]  # only once: coalesced
    got = []
    while (msg := host.reader.pop_interrupt()) is not None:
        got.append(msg)
    assert got == expected


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_notify_sizes_and_bits(slots):
    host = Host(slots=slots)
    host.reader.set_card_present(slots - 1, True)
    msg = host.reader.pop_interrupt()
    assert len(msg) == 1 + (2 * slots + 7) // 8
    assert msg[0] == 0x50
    value = int.from_bytes(msg[1:], "little")
    assert value == 0b11 << (2 * (slots - 1))
    assert host.reader.pop_interrupt() is None


def test_notify_changed_bit_clears_present_stays():
    host = Host(slots=2)
    host.reader.set_card_present(0, True)
    assert host.reader.pop_interrupt() == b"\x50\x03"
    host.reader.set_card_present(1, True)
    assert host.reader.pop_interrupt() == b"\x50\x0d"  # slot 0 present, slot 1 present+changed
    host.reader.set_card_present(0, False)
    assert host.reader.pop_interrupt() == b"\x50\x06"  # slot 0 absent+changed, slot 1 present


def test_insert_remove_before_read_keeps_changed():
    host = Host()
    host.reader.set_card_present(0, True)
    host.reader.set_card_present(0, False)
    assert host.reader.pop_interrupt() == b"\x50\x02"


def test_interrupt_pending_only_on_transition():
    host = Host(slots=2)
    host.reader.set_card_present(0, True)
    host.reader.set_card_present(1, True)
    host.reader.set_card_present(1, True)  # no change
    assert host.reader.next_events() == [InterruptPending()]
    host.reader.pop_interrupt()
    host.reader.set_card_present(1, False)
    assert host.reader.next_events() == [InterruptPending()]


def test_hardware_error():
    host = Host(slots=2)
    host.insert(1)
    host.send(cmd(GET_SLOT_STATUS, slot=1, seq=0x33))
    assert host.reader.pop_interrupt() == b"\x50\x0c"
    host.reader.hardware_error(1, 0x01)
    assert host.reader.next_events() == [InterruptPending()]
    assert host.reader.pop_interrupt() == b"\x51\x01\x33\x01"
    assert host.reader.pop_interrupt() is None


def test_hardware_error_queue_bounded():
    host = Host()
    for i in range(40):
        host.reader.hardware_error(0, i)
    got = []
    while (msg := host.reader.pop_interrupt()) is not None:
        got.append(msg[3])
    assert got == list(range(24, 40))
    assert host.reader.counters.dropped_hardware_errors == 24


def test_notify_before_hardware_error():
    host = Host()
    host.reader.hardware_error(0, 1)
    host.reader.set_card_present(0, True)
    assert host.reader.pop_interrupt()[0] == 0x50
    assert host.reader.pop_interrupt()[0] == 0x51


def test_bad_arguments_from_adapter():
    host = Host(slots=2)
    with pytest.raises(ValueError):
        host.reader.set_card_present(2, True)
    with pytest.raises(ValueError):
        host.reader.hardware_error(0, 256)
    with pytest.raises(ValueError):
        host.reader.slot_state(-1)


def test_two_slots_concurrently():
    host = Host(slots=2)
    host.insert(0)
    host.insert(1)
    host.power_on(0, seq=1)
    host.power_on(1, seq=1)
    assert host.send(xfr(APDU, slot=0, seq=2)) == []
    slow = host.transmit_pending()
    # slot 1 is not blocked by the slow card in slot 0
    assert host.send(xfr(APDU + b"\x01", slot=1, seq=7)) == []
    fast = host.transmit_pending()
    assert (slow.slot, fast.slot) == (0, 1)
    assert host.reader.busy_slots() == {0, 1}
    host.reader.card_answer(fast.token, b"\x61\x00")
    (resp,) = host.drain()
    assert (resp.slot, resp.seq, resp.data) == (1, 7, b"\x61\x00")
    assert host.reader.busy_slots() == {0}
    host.reader.time_extension(0)
    host.reader.time_extension(1)  # not busy: no-op
    (ext,) = host.drain()
    assert (ext.slot, ext.seq, ext.status, ext.error, ext.length) == (0, 2, TIME_EXT_ACTIVE, 1, 0)
    host.reader.card_answer(slow.token, b"\x90\x00")
    (resp,) = host.drain()
    assert (resp.slot, resp.seq, resp.status, resp.data) == (0, 2, OK_ACTIVE, b"\x90\x00")
    assert host.reader.slot_state(0).time_extensions == 1


def test_time_extension_repeated_then_answer():
    host = Host()
    host.insert()
    host.power_on()
    host.send(xfr(APDU, seq=0x99))
    token = host.transmit_pending().token
    for _ in range(3):
        host.reader.time_extension(0)
    responses = host.drain()
    assert [(r.message_type, r.seq, r.status, r.error) for r in responses] == [(DATA_BLOCK, 0x99, 0x80, 1)] * 3
    host.reader.card_answer(token, b"\x90\x00")
    (resp,) = host.drain()
    assert resp.status == OK_ACTIVE


def test_no_time_extension_for_power_on_or_idle():
    host = Host()
    host.insert()
    host.reader.time_extension(0)
    host.send(cmd(ICC_POWER_ON, seq=1))
    host.reader.time_extension(0)  # libccid's CmdPowerOn would take it for an empty ATR
    assert host.drain() == []


def test_removal_answers_pending_and_cancels():
    host = Host()
    host.insert()
    host.power_on()
    host.send(xfr(APDU, seq=5))
    token = host.transmit_pending().token
    host.reader.set_card_present(0, False)
    (resp,) = host.drain()
    assert (resp.seq, resp.status, resp.error) == (5, FAILED_ABSENT, ICC_MUTE)
    assert host.take(Cancel) == [Cancel(0, token)]
    assert host.reader.pop_interrupt() == b"\x50\x02"
    host.reader.card_failed(token, SlotError.ICC_MUTE)
    assert host.drain() == []


def test_reinsert_is_inactive():
    host = Host()
    host.insert()
    host.power_on()
    host.reader.set_card_present(0, False)
    host.reader.set_card_present(0, True)
    assert host.one(cmd(GET_SLOT_STATUS, seq=1)).status == OK_INACTIVE


def test_reset():
    host = Host(slots=3)
    host.insert(0)
    host.insert(1)
    host.power_on(0)
    host.power_on(1)
    host.reader.pop_interrupt()
    host.send(xfr(APDU, slot=1, seq=2))
    token = host.transmit_pending().token
    host.send(cmd(GET_SLOT_STATUS, seq=3)[:5], transfer_end=False)  # partial message
    host.reader.control_request(0x21, 1, 2 | 9 << 8, 0, 0)  # abort in progress on slot 2
    host.reader.hardware_error(0, 1)
    host.reader.reset()
    assert host.drain() == []  # nothing answered: the host forgot everything too
    assert host.take(Cancel) == [Cancel(1, token)]
    assert sorted(e.slot for e in host.take(PowerOff)) == [0, 1]
    assert InterruptPending() in host.take(InterruptPending)
    # all slots changed, cards 0 and 1 still present
    assert host.reader.pop_interrupt() == b"\x50\x2f"  # 11, 11, 10 (absent, changed)
    assert host.reader.pop_interrupt() is None  # hardware errors from before the reset are gone
    for slot, status in ((0, OK_INACTIVE), (1, OK_INACTIVE), (2, 0x02)):
        resp = host.one(cmd(GET_SLOT_STATUS, slot=slot, seq=4))
        assert (resp.slot, resp.status, resp.error) == (slot, status, 0)
    host.reader.card_answer(token, b"\x90\x00")
    assert host.drain() == []
    assert host.power_on(1, seq=5).status == OK_ACTIVE


def test_slot_state_snapshot():
    host = Host()
    host.insert()
    host.power_on()
    host.send(xfr(APDU, seq=1))
    state = host.reader.slot_state(0)
    assert (state.present, state.powered, state.busy, state.aborting) == (True, True, True, False)
    assert state.icc_status == 0 and state.commands == 2


def test_power_on_pending_blocks_only_its_slot():
    host = Host(slots=2)
    host.insert(0)
    host.insert(1)
    host.send(cmd(ICC_POWER_ON, slot=0, seq=1))
    (event,) = host.take(PowerOn)
    assert host.power_on(1, seq=1).status == OK_ACTIVE
    host.reader.card_answer(event.token, b"\x3b\x00")
    (resp,) = host.drain()
    assert (resp.slot, resp.status, resp.data) == (0, OK_ACTIVE, b"\x3b\x00")


def test_card_failed_absent():
    host = Host()
    host.insert()
    assert host.reader.pop_interrupt() == b"\x50\x03"
    host.power_on()
    host.send(xfr(APDU, seq=5))
    token = host.transmit_pending().token
    host.reader.card_failed(token, SlotError.ICC_MUTE, absent=True)
    (resp,) = host.drain()
    assert (resp.seq, resp.status, resp.error) == (5, FAILED_ABSENT, ICC_MUTE)
    assert host.take(Cancel) == []  # answered, not cancelled
    assert host.take(InterruptPending) == [InterruptPending()]
    assert host.reader.pop_interrupt() == b"\x50\x02"
    assert not host.reader.slot_state(0).present


def test_card_failed_absent_during_power_on():
    host = Host()
    host.insert()
    host.send(cmd(ICC_POWER_ON, seq=3))
    (event,) = host.take(PowerOn)
    host.reader.card_failed(event.token, SlotError.ICC_MUTE, absent=True)
    (resp,) = host.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 3, FAILED_ABSENT, ICC_MUTE)
