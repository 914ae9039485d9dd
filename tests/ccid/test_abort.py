# SPDX-License-Identifier: GPL-3.0-or-later
"""Abort: ep0 ABORT request + PC_to_RDR_Abort (CCID rev 1.1 §5.3.1, §6.1.13), late answers."""

import pytest

from ccidgadget.ccid import Cancel, PowerOn, Transmit

from .wire import (
    ABORT, CMD_ABORTED, DATA_BLOCK, FAILED_ACTIVE, FAILED_INACTIVE, GET_SLOT_STATUS, ICC_POWER_ON, OK_ACTIVE,
    OK_INACTIVE, SLOT_STATUS, Host, cmd, xfr,
)

APDU = b"\x00\xa4\x04\x00"


def abort_request(host: Host, slot: int, seq: int):
    return host.reader.control_request(0x21, 0x01, slot | seq << 8, 0, 0)


@pytest.fixture
def active():
    host = Host()
    host.insert()
    host.power_on()
    return host


def test_request_then_message_idle(active):
    assert abort_request(active, 0, 9) == b""
    assert active.drain() == []
    resp = active.one(cmd(ABORT, seq=9))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 9, OK_ACTIVE, 0)


def test_message_then_request_idle(active):
    assert active.send(cmd(ABORT, seq=9)) == []  # no answer until both halves are in
    assert abort_request(active, 0, 9) == b""
    (resp,) = active.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 9, OK_ACTIVE, 0)


@pytest.mark.parametrize("request_first", [True, False])
def test_abort_pending_transmit(active, request_first):
    active.send(xfr(APDU, seq=4))
    token = active.transmit_pending().token
    if request_first:
        abort_request(active, 0, 5)
        responses = active.drain()
    else:
        responses = active.send(cmd(ABORT, seq=5))
    # the aborted XfrBlock is answered at once with CMD_ABORTED, the engine request cancelled
    (aborted,) = responses
    assert (aborted.message_type, aborted.seq, aborted.status, aborted.error) == (
        DATA_BLOCK, 4, FAILED_ACTIVE, CMD_ABORTED)
    assert active.take(Cancel) == [Cancel(0, token)]
    if request_first:
        (resp,) = active.send(cmd(ABORT, seq=5))
    else:
        abort_request(active, 0, 5)
        (resp,) = active.drain()
    assert (resp.message_type, resp.seq, resp.error) == (SLOT_STATUS, 5, 0)
    # a late answer from the engine is ignored and counted
    active.reader.card_answer(token, b"\x90\x00")
    active.reader.card_failed(token, 0xFE)
    assert active.drain() == []
    assert active.reader.counters.late_answers == 2
    # the slot works again
    assert active.send(xfr(APDU, seq=6)) == []
    assert active.transmit_pending().apdu == APDU


def test_abort_pending_power_on():
    host = Host()
    host.insert()
    host.send(cmd(ICC_POWER_ON, seq=1))
    (event,) = host.take(PowerOn)
    abort_request(host, 0, 2)
    (resp,) = host.drain()
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 1, FAILED_INACTIVE, CMD_ABORTED)
    assert host.take(Cancel) == [Cancel(0, event.token)]
    host.reader.card_answer(event.token, b"\x3b\x00")
    assert host.drain() == []
    (resp,) = host.send(cmd(ABORT, seq=2))
    assert (resp.status, resp.error) == (OK_INACTIVE, 0)


def test_commands_during_abort_get_cmd_aborted(active):
    abort_request(active, 0, 7)
    for raw in (cmd(GET_SLOT_STATUS, seq=8), xfr(APDU, seq=9), cmd(ICC_POWER_ON, seq=10)):
        resp = active.one(raw)
        assert (resp.status & 0xC0, resp.error) == (0x40, CMD_ABORTED)
    assert active.take(Transmit) == [] and active.take(PowerOn) == []
    assert active.one(cmd(ABORT, seq=7)).error == 0
    assert active.one(cmd(GET_SLOT_STATUS, seq=11)).error == 0


def test_mismatched_seq_waits_for_the_pair(active):
    abort_request(active, 0, 1)
    assert active.send(cmd(ABORT, seq=2)) == []  # not the pair of request 1
    abort_request(active, 0, 2)
    (resp,) = active.drain()
    assert (resp.seq, resp.error) == (2, 0)
    assert not active.reader.slot_state(0).aborting


def test_second_abort_message_replaces_first(active):
    assert active.send(cmd(ABORT, seq=1)) == []
    (older,) = active.send(cmd(ABORT, seq=2))
    assert (older.message_type, older.seq, older.error) == (SLOT_STATUS, 1, CMD_ABORTED)
    abort_request(active, 0, 2)
    (resp,) = active.drain()
    assert (resp.seq, resp.error) == (2, 0)


def test_replaced_abort_message_is_answered_when_the_new_pair_completes(active):
    """Abort 5 alone, then the ep0 request and the message of Abort 6: Abort 5 gets CMD_ABORTED, 6 its answer."""
    assert active.send(cmd(ABORT, seq=5)) == []
    abort_request(active, 0, 6)
    assert active.drain() == []
    older, resp = active.send(cmd(ABORT, seq=6))
    assert (older.message_type, older.seq, older.error) == (SLOT_STATUS, 5, CMD_ABORTED)
    assert (resp.message_type, resp.seq, resp.error) == (SLOT_STATUS, 6, 0)
    assert not active.reader.slot_state(0).aborting


def test_abort_is_per_slot():
    host = Host(slots=2)
    host.insert(0)
    host.insert(1)
    host.power_on(0)
    host.power_on(1)
    host.send(xfr(APDU, slot=1, seq=3))
    token1 = host.transmit_pending().token
    abort_request(host, 0, 4)
    assert host.drain() == [] and host.take(Cancel) == []
    host.reader.card_answer(token1, b"\x90\x00")
    (resp,) = host.drain()
    assert (resp.slot, resp.seq, resp.data) == (1, 3, b"\x90\x00")
    assert host.one(cmd(GET_SLOT_STATUS, slot=1, seq=5)).error == 0


def test_abort_drops_chains(active):
    active.send(xfr(b"\x01" * 100, seq=1, level=0x0001))
    abort_request(active, 0, 2)
    active.send(cmd(ABORT, seq=2))
    assert active.reader.slot_state(0).chaining == "idle"


def test_abort_message_bad_length(active):
    resp = active.one(cmd(ABORT, seq=1, data=b"\x00"))
    assert (resp.message_type, resp.error) == (SLOT_STATUS, 1)
    assert not active.reader.slot_state(0).aborting


def test_time_extension_not_sent_during_abort(active):
    active.send(xfr(APDU, seq=1))
    active.send(cmd(ABORT, seq=2))
    active.reader.time_extension(0)
    assert active.drain() == []


def test_unknown_token_ignored(active):
    active.reader.card_answer(12345, b"\x90\x00")
    active.reader.card_failed(999, 0xFB)
    assert active.drain() == []
    assert active.reader.counters.late_answers == 2


def test_tokens_unique_and_increasing(active):
    tokens = []
    for seq in range(5):
        active.send(xfr(APDU, seq=seq))
        token = active.transmit_pending().token
        tokens.append(token)
        active.reader.card_answer(token, b"\x90\x00")
        active.drain()
    assert tokens == sorted(set(tokens))
