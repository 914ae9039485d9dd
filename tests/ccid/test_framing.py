# SPDX-License-Identifier: GPL-3.0-or-later
"""Bulk-OUT reassembly by dwLength, bad lengths and resynchronisation."""

import struct

import pytest

from .wire import (
    DATA_BLOCK, FAILED_ABSENT, GET_SLOT_STATUS, ICC_POWER_ON, OK_ABSENT, OK_ACTIVE, SLOT_STATUS, XFR_BLOCK,
    Host, cmd, xfr,
)


def status(seq: int, slot: int = 0) -> bytes:
    return cmd(GET_SLOT_STATUS, slot, seq)


def test_byte_by_byte():
    host = Host()
    raw = status(1)
    for b in raw[:-1]:
        assert host.send(bytes([b]), transfer_end=False) == []
    (resp,) = host.send(raw[-1:], transfer_end=True)
    assert (resp.message_type, resp.seq, resp.status) == (SLOT_STATUS, 1, OK_ABSENT)


def test_several_messages_in_one_completion():
    host = Host()
    responses = host.send(status(1) + status(2) + status(3))
    assert [r.seq for r in responses] == [1, 2, 3]


def test_message_split_across_completions_without_transfer_end():
    # A 64-byte multiple arrives with no short packet: framing by dwLength only.
    host = Host()
    host.insert()
    host.power_on()
    apdu = b"\x00\xd6\x00\x00" + b"\x01" + b"\x00" * 49  # 10 + 54 = 64 bytes
    raw = xfr(apdu, seq=5)
    assert len(raw) == 64
    assert host.send(raw[:30], transfer_end=False) == []
    assert host.send(raw[30:] + status(6)[:4], transfer_end=False) == []
    assert host.transmit_pending().apdu == apdu
    (resp,) = host.send(status(6)[4:], transfer_end=True)
    assert (resp.seq, resp.error) == (6, 0xE0)  # busy: the XfrBlock still waits for the card


def test_incomplete_message_at_transfer_end():
    host = Host()
    raw = cmd(XFR_BLOCK, seq=7, data=b"\0" * 20)
    (resp,) = host.send(raw[:15], transfer_end=True)
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 7, FAILED_ABSENT, 1)
    # and the stream is clean afterwards
    assert host.one(status(8)).seq == 8


def test_short_header_at_transfer_end_with_seq():
    host = Host()
    (resp,) = host.send(status(9)[:7], transfer_end=True)
    assert (resp.message_type, resp.seq, resp.error) == (SLOT_STATUS, 9, 1)


def test_tiny_fragment_dropped_silently():
    host = Host()
    assert host.send(b"\x65\x00\x00", transfer_end=True) == []
    assert host.reader.counters.discarded_bytes == 3
    assert host.one(status(1)).seq == 1


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x80000000, 1025, 65544])
def test_oversize_dwlength_answered_at_once_and_skipped(length):
    host = Host()
    header = struct.pack("<BIBBBBB", XFR_BLOCK, length, 0, 0x21, 0, 0, 0)
    # answered as soon as the header is complete, before any payload or transfer end
    (resp,) = host.send(header, transfer_end=False)
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (DATA_BLOCK, 0x21, FAILED_ABSENT, 1)
    # the payload, even if it looks like messages, is skipped up to the transfer end
    for _ in range(100):
        assert host.send(status(1) * 100, transfer_end=False) == []
    assert len(host.reader._rx) == 0  # nothing buffered: a 4 GiB length costs no memory
    assert host.send(b"tail", transfer_end=True) == []
    assert host.reader.counters.discarded_bytes == 100 * 100 * 10 + 4
    assert host.one(status(2)).seq == 2


def test_oversize_with_transfer_end_in_same_completion():
    host = Host()
    header = struct.pack("<BIBBBBB", GET_SLOT_STATUS, 0xFFFFFFFF, 0, 3, 0, 0, 0)
    (resp,) = host.send(header + b"junk", transfer_end=True)
    assert (resp.message_type, resp.seq, resp.error) == (SLOT_STATUS, 3, 1)
    assert host.one(status(4)).seq == 4


def test_max_size_message_accepted():
    host = Host()
    host.insert()
    host.power_on()
    apdu = b"\x00\xd6\x00\x00" + b"\xaa" * (1024 - 4)
    assert host.send(xfr(apdu, seq=3)) == []
    assert host.transmit_pending().apdu == apdu
    one_more = host.send(xfr(apdu + b"\x00", seq=4))
    assert (one_more[0].seq, one_more[0].error) == (4, 1)


def test_garbage_then_resync():
    host = Host()
    host.insert()
    # a plausible-looking header whose length reaches past the transfer end
    garbage = bytes([0x6F, 0x40, 0, 0, 0, 0, 0x11, 0, 0, 0]) + b"\xff" * 13
    (resp,) = host.send(garbage, transfer_end=True)
    assert (resp.seq, resp.error) == (0x11, 1)
    resp = host.one(status(0x12))
    assert (resp.message_type, resp.seq, resp.status, resp.error) == (SLOT_STATUS, 0x12, 1, 0)


def test_power_on_after_garbage():
    host = Host()
    host.insert()
    host.send(b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", transfer_end=True)
    host.drain()
    resp = host.power_on(seq=5)
    assert (resp.seq, resp.status) == (5, OK_ACTIVE)


def test_framing_counter():
    host = Host()
    host.send(status(1)[:8], transfer_end=True)
    host.send(struct.pack("<BIBBBBB", ICC_POWER_ON, 99999, 0, 0, 0, 0, 0), transfer_end=True)
    assert host.reader.counters.framing_errors == 2
