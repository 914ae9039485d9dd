"""The sans-I/O codecs: byte-exact encoding, any stream partition, fuzzed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from ccidgadget.passthrough.atr import atr_problem
from ccidgadget.passthrough.vpcd_protocol import Ctrl, VpcdFramer, ctrl_frame, frame
from ccidgadget.passthrough.vscard import (MAX_PAYLOAD, VSCARD_VERSION, ErrorCode, MsgType,
                                           VSCardDecoder, VSCardProtocolError, encode,
                                           error_code, error_message, init_message, make_version,
                                           parse_init)


def test_vscard_constants_match_vscard_common_h():
    assert VSCARD_VERSION == 2 == make_version(0, 0, 2)
    assert [m.value for m in MsgType] == list(range(1, 10))
    assert init_message() == bytes.fromhex("00000001 ffffffff 0000000c 56534344 00000002 00000000")
    assert error_message(0, ErrorCode.CANNOT_ADD_MORE_READERS) == bytes.fromhex(
        "00000002 00000000 00000004 00000002")


def test_error_code_either_byte_order():
    assert error_code(struct.pack(">I", 2)) == 2
    assert error_code(struct.pack("<I", 2)) == 2
    assert error_code(struct.pack(">I", 0)) == 0
    with pytest.raises(VSCardProtocolError):
        error_code(b"\x00")


def test_parse_init():
    init = parse_init(b"VSCD" + struct.pack(">III", 2, 0, 7))
    assert init.version == 2 and init.capabilities == (0, 7)
    assert parse_init(b"VSCD\x00\x00\x00\x02").capabilities == ()
    for bad in (b"VSCD\x00\x00", b"DCSV\x00\x00\x00\x02", b"VSCD\x00\x00\x00\x02\x00"):
        with pytest.raises(VSCardProtocolError):
            parse_init(bad)


messages = st.lists(st.tuples(st.sampled_from(list(MsgType)), st.integers(0, 0xFFFFFFFF),
                              st.binary(max_size=300)), max_size=8)


@given(messages, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_vscard_decoder_any_partition(msgs, cuts):
    stream = b"".join(encode(t, r, p) for t, r, p in msgs)
    dec = VSCardDecoder()
    out, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out += dec.receive_data(stream[pos:pos + n])
        pos, i = pos + n, i + 1
    assert [(m.type, m.reader_id, m.payload) for m in out] == msgs
    assert dec.pending_bytes == 0


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_vscard_decoder_fuzz(data):
    dec = VSCardDecoder()
    try:
        for m in dec.receive_data(data):
            assert isinstance(m.type, MsgType) and len(m.payload) <= MAX_PAYLOAD
    except VSCardProtocolError:
        with pytest.raises(VSCardProtocolError):
            dec.receive_data(b"")               # stays broken


def test_vscard_decoder_limits():
    with pytest.raises(VSCardProtocolError, match="exceeds"):
        VSCardDecoder().receive_data(struct.pack(">III", 7, 0, MAX_PAYLOAD + 1))
    with pytest.raises(VSCardProtocolError, match="unknown"):
        VSCardDecoder().receive_data(struct.pack(">III", 10, 0, 0))
    m, = VSCardDecoder().receive_data(struct.pack(">III", 7, 0, MAX_PAYLOAD) + bytes(MAX_PAYLOAD))
    assert len(m.payload) == MAX_PAYLOAD


@given(st.lists(st.binary(max_size=0xFFFF // 64), max_size=8),
       st.lists(st.integers(1, 97), min_size=1, max_size=10))
def test_vpcd_framer_any_partition(payloads, cuts):
    stream = b"".join(frame(p) for p in payloads)
    f = VpcdFramer()
    out, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out += f.receive_data(stream[pos:pos + n])
        pos, i = pos + n, i + 1
    assert out == payloads and f.pending_bytes == 0


@given(st.binary(max_size=300))
def test_vpcd_framer_fuzz(data):
    f = VpcdFramer()
    out = f.receive_data(data)
    assert sum(2 + len(m) for m in out) + f.pending_bytes == len(data)


def test_vpcd_frames():
    assert ctrl_frame(Ctrl.ATR) == b"\x00\x01\x04"
    assert frame(b"\x00\xa4\x04\x00") == b"\x00\x04\x00\xa4\x04\x00"
    assert len(frame(bytes(0xFFFF))) == 0x10001
    with pytest.raises(Exception):
        frame(bytes(0x10000))


@pytest.mark.parametrize("atr,ok", [
    ("3b951381018073ff01000b", True),          # vicc iso7816
    ("3bd518ff8091fe1fc38073c8211308", True),   # QEMU passthru default (Athena)
    ("3b00", True),
    ("3f00", True),
    ("3a00", False),
    ("3b", False),
    ("3b9513", False),                          # announces more than it has
    ("3b8f80", False),
])
def test_atr_problem(atr, ok):
    assert (atr_problem(bytes.fromhex(atr)) is None) == ok


def test_atr_too_long():
    assert atr_problem(b"\x3b\x0f" + bytes(32)) is not None
