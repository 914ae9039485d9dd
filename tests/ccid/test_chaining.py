# SPDX-License-Identifier: GPL-3.0-or-later
"""Extended APDU level chaining (CCID rev 1.1 §6.1.4 wLevelParameter, §6.2.1 bChainParameter).

The host side here does what libccid's CmdXfrBlockAPDU_extended does: split a
command into XfrBlocks of dwMaxCCIDMessageLength - 10 bytes with wLevelParameter
1, 3, ..., 2, read one empty DataBlock after each non-final block, and answer
bChainParameter 1/3/0x10 with an empty XfrBlock of wLevelParameter 0x10.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccidgadget.ccid import Cancel, ReaderConfig, Transmit

from .wire import (
    DATA_BLOCK, FAILED_ACTIVE, GET_SLOT_STATUS, ICC_MUTE, ICC_POWER_OFF, OK_ACTIVE, Host, cmd, xfr,
)


def extended_apdu(n: int) -> bytes:
    """Case 4E command with n data bytes: 4 + 3 + n + 2."""
    return b"\x00\xdb\x3f\xff" + b"\x00" + struct.pack(">H", n) + bytes(i & 0xFF for i in range(n)) + b"\x00\x00"


def host_send_chained(host: Host, apdu: bytes, seq: int, chunk: int) -> int:
    """Send like libccid; return the next bSeq.  Checks every intermediate answer."""
    if len(apdu) <= chunk:
        assert host.send(xfr(apdu, seq=seq)) == []
        return seq + 1
    parts = [apdu[i:i + chunk] for i in range(0, len(apdu), chunk)]
    for n, part in enumerate(parts):
        level = 0x0001 if n == 0 else (0x0002 if n == len(parts) - 1 else 0x0003)
        responses = host.send(xfr(part, seq=seq & 0xFF, level=level))
        if level != 0x0002:
            (resp,) = responses
            assert (resp.message_type, resp.seq, resp.status, resp.error, resp.length) == (
                DATA_BLOCK, seq & 0xFF, OK_ACTIVE, 0, 0)
            assert resp.b9 == 0x10  # empty abData, continuation of the command expected
        else:
            assert responses == []
        seq += 1
    return seq


def host_receive_chained(host: Host, first, seq: int) -> tuple[bytes, int]:
    """Collect a response like libccid; returns (data, next bSeq)."""
    data = first.data
    chain = first.b9
    count = 1
    while chain in (0x01, 0x03, 0x10):
        (resp,) = host.send(xfr(b"", seq=seq & 0xFF, level=0x0010))
        assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, seq & 0xFF, OK_ACTIVE, 0)
        assert resp.b9 in (0x02, 0x03)
        data += resp.data
        chain = resp.b9
        seq += 1
        count += 1
    return data, seq


@pytest.fixture
def active():
    host = Host()
    host.insert()
    host.power_on()
    return host


def test_65544_byte_command(active):
    apdu = extended_apdu(65535)
    assert len(apdu) == 65544
    chunk = active.reader.config.max_payload
    seq = host_send_chained(active, apdu, 1, chunk)
    event = active.transmit_pending()
    assert event.apdu == apdu
    active.reader.card_answer(event.token, b"\x90\x00")
    (resp,) = active.drain()
    assert (resp.seq, resp.b9, resp.data) == ((seq - 1) & 0xFF, 0x00, b"\x90\x00")


def test_65538_byte_response(active):
    assert active.send(xfr(b"\x00\xca\x00\x00\x00\x00\x00", seq=3)) == []
    event = active.transmit_pending()
    response = bytes((i * 7) & 0xFF for i in range(65536)) + b"\x90\x00"
    active.reader.card_answer(event.token, response)
    (first,) = active.drain()
    chunk = active.reader.config.max_payload
    assert (first.seq, first.b9, first.length) == (3, 0x01, chunk)
    data, _ = host_receive_chained(active, first, 4)
    assert data == response
    assert active.reader.slot_state(0).chaining == "idle"


def test_4k_response_is_chained_with_default_config(active):
    active.send(xfr(b"\x00\xcb\x3f\xff\x00\x00\x00", seq=1))
    response = b"\x42" * 4096 + b"\x90\x00"
    active.reader.card_answer(active.transmit_pending().token, response)
    (first,) = active.drain()
    assert first.b9 == 0x01
    chain_values = [first.b9]
    seq = 2
    data = first.data
    while chain_values[-1] != 0x02:
        (resp,) = active.send(xfr(b"", seq=seq, level=0x0010))
        chain_values.append(resp.b9)
        data += resp.data
        seq += 1
    assert data == response
    assert chain_values == [0x01, 0x03, 0x03, 0x03, 0x02]


def test_response_exactly_max_payload_is_not_chained(active):
    active.send(xfr(b"\x00\xca\x00\x00", seq=1))
    n = active.reader.config.max_payload
    active.reader.card_answer(active.transmit_pending().token, b"\x01" * n)
    (resp,) = active.drain()
    assert (resp.b9, resp.length) == (0x00, n)


def test_response_max_payload_plus_one(active):
    active.send(xfr(b"\x00\xca\x00\x00", seq=1))
    n = active.reader.config.max_payload
    active.reader.card_answer(active.transmit_pending().token, b"\x01" * (n + 1))
    (first,) = active.drain()
    (last,) = active.send(xfr(b"", seq=2, level=0x0010))
    assert (first.b9, first.length, last.b9, last.length) == (0x01, n, 0x02, 1)


def test_command_chain_with_small_message_length():
    host = Host(ReaderConfig(max_message_length=271))
    host.insert()
    host.power_on()
    apdu = extended_apdu(1000)
    host_send_chained(host, apdu, 10, 261)
    assert host.transmit_pending().apdu == apdu


def test_chained_command_then_chained_response_then_normal(active):
    apdu = extended_apdu(3000)
    seq = host_send_chained(active, apdu, 0, active.reader.config.max_payload)
    event = active.transmit_pending()
    response = bytes(range(256)) * 20 + b"\x90\x00"
    active.reader.card_answer(event.token, response)
    (first,) = active.drain()
    assert first.seq == seq - 1
    data, seq = host_receive_chained(active, first, seq)
    assert data == response
    assert active.send(xfr(b"\x00\xa4\x04\x00", seq=seq)) == []
    assert active.transmit_pending().apdu == b"\x00\xa4\x04\x00"


def test_command_over_the_limit_is_rejected_and_state_cleaned(active):
    chunk = active.reader.config.max_payload
    limit = active.reader.config.max_command_apdu_length
    active.send(xfr(b"\x00" * chunk, seq=0, level=0x0001))
    seq = 1
    sent = chunk
    while True:
        (resp,) = active.send(xfr(b"\x00" * chunk, seq=seq & 0xFF, level=0x0003))
        sent += chunk
        if sent > limit:
            assert (resp.status, resp.error) == (FAILED_ACTIVE, 1)
            break
        assert resp.b9 == 0x10
        seq += 1
    assert active.reader.slot_state(0).chaining == "idle"
    # the end of the dropped chain is now out of sequence
    (resp,) = active.send(xfr(b"\x00" * 10, seq=1, level=0x0002))
    assert resp.error == 8
    # and a plain APDU works
    assert active.send(xfr(b"\x00\xa4\x04\x00", seq=2)) == []
    assert active.transmit_pending().apdu == b"\x00\xa4\x04\x00"


def test_small_limit_from_config():
    host = Host(ReaderConfig(max_command_apdu_length=600))
    host.insert()
    host.power_on()
    host.send(xfr(b"\x01" * 500, seq=1, level=0x0001))
    (resp,) = host.send(xfr(b"\x01" * 101, seq=2, level=0x0002))
    assert resp.error == 1
    host.send(xfr(b"\x01" * 500, seq=3, level=0x0001))
    assert host.send(xfr(b"\x01" * 100, seq=4, level=0x0002)) == []
    assert len(host.transmit_pending().apdu) == 600


def test_new_command_restarts_partial_chain(active):
    active.send(xfr(b"\x01" * 100, seq=1, level=0x0001))
    assert active.send(xfr(b"\x00\xa4\x04\x00", seq=2)) == []
    assert active.transmit_pending().apdu == b"\x00\xa4\x04\x00"


def test_new_command_abandons_chained_response(active):
    active.send(xfr(b"\x00\xca\x00\x00", seq=1))
    active.reader.card_answer(active.transmit_pending().token, b"\x07" * 5000)
    active.drain()
    assert active.send(xfr(b"\x00\xa4\x04\x00", seq=2)) == []
    active.reader.card_answer(active.transmit_pending().token, b"\x90\x00")
    (resp,) = active.drain()
    assert (resp.b9, resp.data) == (0, b"\x90\x00")
    (resp,) = active.send(xfr(b"", seq=3, level=0x0010))
    assert resp.error == 8  # nothing left to continue


def test_next_response_with_data_is_rejected(active):
    active.send(xfr(b"\x00\xca\x00\x00", seq=1))
    active.reader.card_answer(active.transmit_pending().token, b"\x07" * 5000)
    active.drain()
    (resp,) = active.send(xfr(b"\x00", seq=2, level=0x0010))
    assert (resp.status, resp.error) == (FAILED_ACTIVE, 1)
    assert active.reader.slot_state(0).chaining == "idle"


def test_other_commands_between_response_chunks(active):
    active.send(xfr(b"\x00\xca\x00\x00", seq=1))
    active.reader.card_answer(active.transmit_pending().token, b"\x07" * 3000)
    (first,) = active.drain()
    assert active.one(cmd(GET_SLOT_STATUS, seq=2)).error == 0
    data, _ = host_receive_chained(active, first, 3)
    assert data == b"\x07" * 3000


def test_power_off_drops_chains(active):
    active.send(xfr(b"\x01" * 100, seq=1, level=0x0001))
    active.send(cmd(ICC_POWER_OFF, seq=2))
    assert active.reader.slot_state(0).chaining == "idle"
    (resp,) = active.send(xfr(b"\x01" * 10, seq=3, level=0x0002))
    assert resp.error == ICC_MUTE


def test_removal_drops_chains(active):
    active.send(xfr(b"\x00\xca\x00\x00", seq=1))
    active.reader.card_answer(active.transmit_pending().token, b"\x07" * 3000)
    active.drain()
    active.reader.set_card_present(0, False)
    assert active.reader.slot_state(0).chaining == "idle"


def test_busy_during_chain_end(active):
    seq = host_send_chained(active, extended_apdu(2000), 0, active.reader.config.max_payload)
    (resp,) = active.send(xfr(b"\x00\xa4\x04\x00", seq=seq))
    assert resp.error == 0xE0
    assert len(active.take(Transmit)) == 1 and active.take(Cancel) == []


@settings(max_examples=40, deadline=None)
@given(command_size=st.integers(4, 9000), response_size=st.integers(0, 9000),
       message_length=st.integers(271, 3000))
def test_round_trip_any_sizes(command_size, response_size, message_length):
    host = Host(ReaderConfig(max_message_length=message_length))
    host.insert()
    host.power_on()
    apdu = bytes((i * 13) & 0xFF for i in range(command_size))
    seq = host_send_chained(host, apdu, 0, message_length - 10)
    event = host.transmit_pending()
    assert event.apdu == apdu
    response = bytes((i * 31) & 0xFF for i in range(response_size))
    host.reader.card_answer(event.token, response)
    (first,) = host.drain()
    data, _ = host_receive_chained(host, first, seq)
    assert data == response
