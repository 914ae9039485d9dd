"""The client side of the VSCard codec (`VSCardClient`), driven with host bytes written from
vscard_common.h (tests/passthrough/vsc_client.py's encoder, not ours) in the order QEMU's
ccid-card-passthru sends them."""

from __future__ import annotations

import struct

import pytest

from ccidgadget.passthrough import vscard
from ccidgadget.passthrough.vscard import (Acknowledged, ApduReceived, ClientState, FlushRequested, HostError,
                                           HostInit, MsgType, ReaderAdded, ReaderRefused, VSCardClient,
                                           VSCardProtocolError)

from .vsc_client import (APDU, ATR, CANNOT_ADD_MORE_READERS, CARD_REMOVE, ERROR, FLUSH, FLUSH_COMPLETE,
                         GENERAL_ERROR, INIT, READER_ADD, READER_REMOVE, SUCCESS, UNDEFINED_READER,
                         init_payload, msg)

ATR_T0 = bytes.fromhex("3B0A63636964676164676574")


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split what the client wrote into (type, reader id, payload), independently of the codec."""
    out = []
    while data:
        t, rid, n = struct.unpack(">III", data[:12])
        out.append((t, rid, data[12:12 + n]))
        data = data[12 + n:]
    return out


def error(code: int, reader_id: int = 0) -> bytes:
    """VSC_Error as QEMU writes it: the code htonl'd."""
    return msg(ERROR, struct.pack(">I", code), reader_id)


def host_init() -> bytes:
    return msg(INIT, init_payload(), UNDEFINED_READER)


def ready_client() -> VSCardClient:
    c = VSCardClient()
    c.initiate()
    assert c.receive_data(host_init())
    c.add_reader("r")
    assert c.receive_data(error(SUCCESS) + error(SUCCESS)) == [Acknowledged(MsgType.READER_REMOVE, 0),
                                                              ReaderAdded(0)]
    return c


def test_handshake_as_vscclient_does_it():
    c = VSCardClient()
    assert frames(c.initiate()) == [(INIT, 0, init_payload())]          # "VSCD", 0.0.2, one capability 0
    assert c.state is ClientState.AWAIT_INIT
    assert c.receive_data(host_init()) == [HostInit(2, (0,))]
    assert frames(c.add_reader("ccidgadget piv")) == [(READER_REMOVE, 0, b""),
                                                      (READER_ADD, UNDEFINED_READER, b"ccidgadget piv")]
    # QEMU answers each with VSC_Error; the ReaderAdd's carries the reader id
    assert c.receive_data(error(SUCCESS, 0)) == [Acknowledged(MsgType.READER_REMOVE, SUCCESS)]
    assert c.state is ClientState.AWAIT_READER
    assert c.receive_data(error(SUCCESS, 7)) == [ReaderAdded(7)]
    assert c.state is ClientState.READY and c.reader_id == 7
    assert frames(c.insert(ATR_T0)) == [(ATR, 7, ATR_T0)]


def test_qemus_unprompted_init_then_its_answer():
    """Connected before the device was realized (wait=on), a client sees QEMU's Init twice."""
    c = VSCardClient()
    c.initiate()
    assert c.receive_data(host_init() + host_init()) == [HostInit(2, (0,))]
    c.add_reader()
    assert c.receive_data(host_init() + error(SUCCESS) + error(SUCCESS)) == [
        Acknowledged(MsgType.READER_REMOVE, 0), ReaderAdded(0)]


def test_byte_by_byte_gives_the_same_events():
    stream = host_init() + error(SUCCESS) + error(SUCCESS) + msg(APDU, b"\x00\xA4\x04\x00")
    c = VSCardClient()
    c.initiate()
    events = []
    for i, b in enumerate(stream):
        events += c.receive_data(bytes([b]))
        if events and isinstance(events[-1], HostInit) and c.state is ClientState.CONNECTED:
            c.add_reader()
        if events and isinstance(events[-1], ReaderAdded) and not c.card_inserted:
            c.insert(ATR_T0)
    assert [type(e) for e in events] == [HostInit, Acknowledged, ReaderAdded, ApduReceived]
    assert events[-1].apdu == b"\x00\xA4\x04\x00"


@pytest.mark.parametrize("payload, why", [
    (b"VSCX" + struct.pack(">II", 2, 0), "magic"),
    (b"VSCD" + struct.pack(">II", 1 << 21, 0), "incompatible"),
    (b"VSCD\x00", "truncated"),
])
def test_bad_host_init(payload, why):
    c = VSCardClient()
    c.initiate()
    with pytest.raises(VSCardProtocolError, match=why):
        c.receive_data(msg(INIT, payload, UNDEFINED_READER))
    assert c.state is ClientState.ERROR
    with pytest.raises(VSCardProtocolError):
        c.receive_data(host_init())


def test_reader_refused():
    c = VSCardClient()
    c.initiate()
    c.receive_data(host_init())
    c.add_reader()
    events = c.receive_data(error(SUCCESS) + error(CANNOT_ADD_MORE_READERS, UNDEFINED_READER))
    assert events[-1] == ReaderRefused(CANNOT_ADD_MORE_READERS) and c.state is ClientState.REFUSED
    with pytest.raises(RuntimeError):
        c.insert(ATR_T0)


def test_success_without_a_reader_id_is_no_reader():
    c = VSCardClient()
    c.initiate()
    c.receive_data(host_init())
    c.add_reader()
    assert c.receive_data(error(SUCCESS) + error(SUCCESS, UNDEFINED_READER))[-1] == ReaderRefused(GENERAL_ERROR)


@pytest.mark.parametrize("stream", [
    msg(APDU, b"\x00\xA4\x04\x00"),                            # APDU before any Init
    msg(READER_ADD, b""),                                      # a client message from the host
    msg(ATR, ATR_T0),
    msg(CARD_REMOVE),
    msg(FLUSH_COMPLETE),
    struct.pack(">III", 99, 0, 0),                             # unknown type
    struct.pack(">III", APDU, 0, 0x7FFFFFFF),                  # absurd length
])
def test_what_no_host_sends_is_a_protocol_error(stream):
    c = VSCardClient()
    c.initiate()
    with pytest.raises(VSCardProtocolError):
        c.receive_data(stream)
    assert c.state is ClientState.ERROR


def test_apdu_round_trip_and_one_answer_each():
    c = ready_client()
    c.insert(ATR_T0)
    assert c.receive_data(error(SUCCESS)) == [Acknowledged(MsgType.ATR, SUCCESS)]
    (ev,) = c.receive_data(msg(APDU, b"\x00\x84\x00\x00\x08"))
    assert isinstance(ev, ApduReceived) and ev.apdu == b"\x00\x84\x00\x00\x08"
    assert frames(c.answer(ev.tag, b"\x01" * 8 + b"\x90\x00")) == [(APDU, 0, b"\x01" * 8 + b"\x90\x00")]
    assert c.answer(ev.tag, b"\x90\x00") == b""                  # answered already
    (ev2,) = c.receive_data(msg(APDU, b"\x00\x84\x00\x00\x08"))
    assert ev2.tag != ev.tag
    assert frames(c.fail(ev2.tag)) == [(ERROR, 0, struct.pack(">I", GENERAL_ERROR))]


def test_second_apdu_before_the_answer_is_a_protocol_error():
    c = ready_client()
    c.insert(ATR_T0)
    c.receive_data(error(SUCCESS) + msg(APDU, b"\x00\x84\x00\x00\x08"))
    with pytest.raises(VSCardProtocolError, match="before the previous one was answered"):
        c.receive_data(msg(APDU, b"\x00\x84\x00\x00\x08"))


def test_removal_abandons_the_outstanding_apdu():
    c = ready_client()
    c.insert(ATR_T0)
    (ev,) = c.receive_data(error(SUCCESS) + msg(APDU, b"\x00\xB0\x00\x00\x00"))[1:]
    assert frames(c.remove()) == [(CARD_REMOVE, 0, b"")]
    assert c.answer(ev.tag, b"\x90\x00") == b"" and c.fail(ev.tag) == b""
    # an APDU that crossed the CardRemove on the wire is dropped: QEMU answered the guest itself
    assert c.receive_data(error(SUCCESS) + msg(APDU, b"\x00\xB0\x00\x00\x00")) == [
        Acknowledged(MsgType.CARD_REMOVE, SUCCESS)]
    # re-inserted: a new APDU gets through while the old answer is still worthless
    c.insert(ATR_T0)
    (ev3,) = c.receive_data(error(SUCCESS) + msg(APDU, b"\x00\xB0\x00\x00\x00"))[1:]
    assert c.answer(ev.tag, b"\x90\x00") == b"" and c.answer(ev3.tag, b"\x90\x00") != b""


def test_refused_atr_is_reported():
    c = ready_client()
    c.insert(b"\x3B" + b"\x0F" * 40)
    assert c.receive_data(error(GENERAL_ERROR)) == [Acknowledged(MsgType.ATR, GENERAL_ERROR)]
    assert not c.receive_data(b"")


def test_error_code_in_host_byte_order_and_unsolicited_errors():
    c = ready_client()
    c.insert(ATR_T0)
    # vscclient-style little-endian code, then one that answers nothing
    assert c.receive_data(msg(ERROR, struct.pack("<I", GENERAL_ERROR))) == [Acknowledged(MsgType.ATR, GENERAL_ERROR)]
    assert c.receive_data(error(SUCCESS)) == [HostError(SUCCESS)]


def test_answer_too_big_for_qemus_input_buffer_is_failed():
    c = ready_client()
    c.insert(ATR_T0)
    (ev,) = c.receive_data(error(SUCCESS) + msg(APDU, b"\x00\xB0\x00\x00\x00\xFF\xFF"))[1:]
    assert vscard.QEMU_MAX_PAYLOAD == 65536 - 12
    assert frames(c.answer(ev.tag, bytes(65535) + b"\x90\x00")) == [(ERROR, 0, struct.pack(">I", GENERAL_ERROR))]
    (ev,) = c.receive_data(msg(APDU, b"\x00\xB0\x00\x00\x00\xFF\xF0"))
    assert len(c.answer(ev.tag, bytes(vscard.QEMU_MAX_PAYLOAD - 2) + b"\x90\x00")) == 65536


def test_flush():
    c = ready_client()
    assert c.receive_data(msg(FLUSH)) == [FlushRequested()]
    assert frames(c.flush_complete()) == [(FLUSH_COMPLETE, 0, b"")]


def test_goodbye():
    c = ready_client()
    c.insert(ATR_T0)
    assert frames(c.remove_reader()) == [(CARD_REMOVE, 0, b""), (READER_REMOVE, 0, b"")]
    assert c.state is ClientState.CLOSING
    assert c.receive_data(error(SUCCESS) + error(SUCCESS) + msg(APDU, b"\x00\x00\x00\x00")) == [
        Acknowledged(MsgType.ATR, SUCCESS), Acknowledged(MsgType.CARD_REMOVE, SUCCESS)]
    assert c.receive_data(error(SUCCESS)) == [Acknowledged(MsgType.READER_REMOVE, SUCCESS)]
    assert ready_client().remove_reader() == vscard.encode(MsgType.READER_REMOVE, 0)   # no card: no CardRemove
    c = VSCardClient()
    c.initiate()
    assert c.remove_reader() == b""                                # no reader yet: nothing to remove


def test_calls_out_of_order_are_bugs():
    c = VSCardClient()
    with pytest.raises(RuntimeError):
        c.add_reader()
    c.initiate()
    with pytest.raises(RuntimeError):
        c.initiate()
    with pytest.raises(RuntimeError):
        c.remove()
