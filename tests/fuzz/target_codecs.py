# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzz targets for the byte parsers: APDUs, BER-TLV, SimpleTLV, the VSCard codec (both sides) and the vpcd framer.

Each parser may fail only with its documented error, and what it accepts must
survive a round trip through the matching encoder.  The two stream decoders
are fed the input in random-sized chunks (the split points come from the
input) and must never hold more than one incomplete message.
"""

from __future__ import annotations

import struct

from ccidgadget.cards.cac import simpletlv
from ccidgadget.cards.iso7816 import SW, ApduError, CommandAPDU
from ccidgadget.cards.tlv import parse_dict, parse_tlv, tlv, unwrap
from ccidgadget.passthrough import vpcd_protocol as vpcd
from ccidgadget.passthrough import vscard

from .harness import Finding, Input, Target, register


def _expect_6a80(e: ApduError, what: str) -> None:
    if e.sw != SW.WRONG_DATA:
        raise Finding(f"{what} failed with SW {e.sw:04X}, not 6A80") from e


# -- ISO 7816-4 §5.1 command APDU --------------------------------------------------------
def run_apdu(data: bytes) -> None:
    try:
        cmd = CommandAPDU.parse(data)
    except ApduError as e:
        if e.sw != SW.WRONG_LENGTH:
            raise Finding(f"APDU parse failed with {e.sw:04X}, not 6700") from e
        return
    again = CommandAPDU.parse(cmd.to_bytes())
    if again != cmd:
        raise Finding(f"APDU {data.hex()} -> {cmd} -> {cmd.to_bytes().hex()} -> {again}")
    if len(cmd.data) > 65535 or (cmd.le is not None and not 1 <= cmd.le <= 65536):
        raise Finding(f"APDU fields out of range: {cmd}")


def apdu_seeds() -> dict[str, bytes]:
    return {name: bytes.fromhex(h) for name, h in {
        "case1": "00A40400", "case2s": "00B0000000", "case3s": "00A4040005A000000308",
        "case4s": "00A4040005A00000030800", "case2e": "00B00000000000", "case3e": "00D6000000000401020304",
        "case4e": "00D60000000004010203040100", "bad-ext": "00D6000000", "bad-lc": "00D6000004010203"}.items()}


# -- BER-TLV (ISO 7816-4 §5.2) ------------------------------------------------------------------
def run_ber_tlv(data: bytes, depth: int = 0) -> None:
    try:
        items = parse_tlv(data)
    except ApduError as e:
        _expect_6a80(e, "BER-TLV")
        return
    encoded = b"".join(tlv(tag, value) for tag, value in items)
    if parse_tlv(encoded) != items:
        raise Finding(f"BER-TLV {data.hex()} does not survive re-encoding: {encoded.hex()}")
    for call in (lambda: parse_dict(data), lambda: unwrap(data, items[0][0] if items else 0x7C)):
        try:
            call()
        except ApduError as e:
            _expect_6a80(e, "BER-TLV dict/unwrap")
    if depth < 8:
        for tag, value in items:
            first = tag >> 8 * ((tag.bit_length() - 1) // 8) if tag else 0
            if first & 0x20:                           # constructed: parse the inside too
                run_ber_tlv(value, depth + 1)


def ber_seeds() -> dict[str, bytes]:
    return {
        "piv-auth": tlv(0x7C, tlv(0x80, b"\x01" * 8) + tlv(0x81, b"\x02" * 8) + tlv(0x82)),
        "put-data": tlv(0x5C, b"\x5f\xc1\x05") + tlv(0x53, b"\x70\x82\x01\x00" + b"\x00" * 256),
        "lengths": bytes.fromhex("0181FF") + b"\x11" * 255 + bytes.fromhex("5F2F8200020102"),
        "filler": bytes.fromhex("00FF00 53 01 AA FFFF"),
        "long-tag": bytes.fromhex("1F8101 02 AABB 9F7F00"),
    }


# -- SimpleTLV (GSC-IS 2.1 §8.4) ----------------------------------------------------------------
def run_simple_tlv(data: bytes) -> None:
    try:
        items = list(simpletlv.iter_simpletlv(data))
    except ApduError as e:
        _expect_6a80(e, "SimpleTLV")
        return
    encodable = [(t, v) for t, v in items if 0x01 <= t <= 0xFE and len(v) <= simpletlv.MAX_VALUE]
    encoded = b"".join(simpletlv.tlv(t, v) for t, v in encodable)
    if list(simpletlv.iter_simpletlv(encoded)) != encodable:
        raise Finding(f"SimpleTLV {data.hex()} does not survive re-encoding")
    tl, v = simpletlv.buffer_files(encodable)
    if simpletlv.join_buffers(tl, v) != encodable:
        raise Finding(f"SimpleTLV buffer files of {data.hex()} do not join back")


def simple_seeds() -> dict[str, bytes]:
    return {"short": bytes.fromhex("0102AABB 0300"), "long": bytes.fromhex("71FF0001") + b"\x42" * 256,
            "cert": bytes.fromhex("70FF0400") + b"\x30" * 4 + bytes.fromhex("7101 00 FE00")}


# -- VSCard ------------------------------------------------------------------------------------
def chunks(inp: Input):
    while inp.more():
        n = inp.byte()
        if n & 0x80:
            n = ((n & 0x7F) << 8) | inp.byte()
        yield inp.take(n)


def run_vscard(data: bytes) -> None:
    inp = Input(data)
    max_payload = vscard.MAX_PAYLOAD if inp.byte() & 1 else 300
    decoder = vscard.VSCardDecoder(max_payload)
    stream = bytearray()
    decoded = bytearray()
    for chunk in chunks(inp):
        stream += chunk
        try:
            messages = decoder.receive_data(chunk)
        except vscard.VSCardProtocolError:
            if decoder.error is None:
                raise Finding("VSCardProtocolError without the decoder's error set") from None
            try:
                decoder.receive_data(b"\x00" * 12)
            except vscard.VSCardProtocolError:
                return
            raise Finding("the VSCard decoder accepted data after a protocol error") from None
        if decoder.pending_bytes >= vscard.HEADER_SIZE + max_payload:
            raise Finding(f"VSCard decoder holds {decoder.pending_bytes} bytes (max payload {max_payload})")
        for m in messages:
            if len(m.payload) > max_payload:
                raise Finding(f"VSCard message of {len(m.payload)} bytes passed the {max_payload} limit")
            decoded += vscard.encode(m.type, m.reader_id, m.payload)
            try:
                if m.type == vscard.MsgType.INIT:
                    vscard.parse_init(m.payload)
                elif m.type == vscard.MsgType.ERROR:
                    if not 0 <= vscard.error_code(m.payload) <= 0xFFFFFFFF:
                        raise Finding("VSC_Error code out of range")
            except vscard.VSCardProtocolError:
                pass
        if bytes(stream[:len(decoded)]) != bytes(decoded) or len(stream) - len(decoded) != decoder.pending_bytes:
            raise Finding("VSCard messages do not re-encode to the bytes received")


def vscard_seeds() -> dict[str, bytes]:
    def split(stream: bytes, size: int) -> bytes:
        out = bytearray([1])
        for i in range(0, len(stream), size):
            part = stream[i:i + size]
            out += bytes([len(part)]) + part
        return bytes(out)

    session = (vscard.init_message() + vscard.encode(vscard.MsgType.READER_ADD, 0, b"reader")
               + vscard.encode(vscard.MsgType.ATR, 0, bytes.fromhex("3B8080018080"))
               + vscard.encode(vscard.MsgType.APDU, 0, bytes.fromhex("6A82"))
               + vscard.error_message(0, 0) + vscard.encode(vscard.MsgType.CARD_REMOVE, 0)
               + vscard.encode(vscard.MsgType.READER_REMOVE, 0))
    return {"session-whole": split(session, 127), "session-bytewise": split(session, 1),
            "session-odd": split(session, 5),
            "too-long": split(struct.pack(">III", 7, 0, 0x7FFFFFFF) + b"xx", 20),
            "unknown-type": split(struct.pack(">III", 99, 0, 0), 12),
            "error-le": split(vscard.encode(vscard.MsgType.ERROR, 0, (1).to_bytes(4, "little")), 16)}


# -- VSCard, the client's side (vscard-card towards QEMU) -------------------------------------
def run_vscard_client(data: bytes) -> None:
    """Host bytes in chunks into `VSCardClient`, answered as the front end would (reader, card,
    APDU answers, removals chosen by the input); only VSCardProtocolError may come out, and what the
    client writes must decode as whole, known messages."""
    inp = Input(data)
    client = vscard.VSCardClient()
    written = bytearray(client.initiate())
    for chunk in chunks(inp):
        try:
            events = client.receive_data(chunk)
        except vscard.VSCardProtocolError:
            if client.state is not vscard.ClientState.ERROR:
                raise Finding("protocol error without the ERROR state") from None
            break
        for ev in events:
            if isinstance(ev, vscard.HostInit):
                written += client.add_reader("fuzz")
            elif isinstance(ev, vscard.ReaderAdded):
                written += client.insert(bytes.fromhex("3B0A") + b"ccidgadget")
            elif isinstance(ev, vscard.ApduReceived):
                choice = inp.byte() if inp.more() else 0
                if choice & 3 == 1:
                    written += client.remove()
                    written += client.answer(ev.tag, b"\x90\x00")
                    if client.state is vscard.ClientState.READY:
                        written += client.insert(bytes.fromhex("3B0A") + b"ccidgadget")
                elif choice & 3 == 2:
                    written += client.fail(ev.tag)
                else:
                    written += client.answer(ev.tag, ev.apdu[:choice] + b"\x90\x00")
            elif isinstance(ev, vscard.FlushRequested):
                written += client.flush_complete()
    written += client.remove_reader()
    decoder = vscard.VSCardDecoder()
    try:
        decoder.receive_data(bytes(written))
    except vscard.VSCardProtocolError as e:
        raise Finding(f"the client wrote a malformed message: {e}") from None
    if decoder.pending_bytes:
        raise Finding("the client wrote a truncated message")


def vscard_client_seeds() -> dict[str, bytes]:
    def split(stream: bytes, size: int) -> bytes:
        out = bytearray()
        for i in range(0, len(stream), size):
            part = stream[i:i + size]
            out += bytes([len(part)]) + part
        return bytes(out)

    ok = vscard.error_message(0, vscard.ErrorCode.SUCCESS)
    qemu = (vscard.init_message() + ok + ok + ok + vscard.encode(vscard.MsgType.APDU, 0, bytes.fromhex("00A4040000"))
            + vscard.encode(vscard.MsgType.FLUSH, 0) + vscard.encode(vscard.MsgType.APDU, 0, bytes.fromhex("00B0000000"))
            + ok)
    return {"qemu-session": split(qemu, 100), "qemu-bytewise": split(qemu, 1),
            "refused": split(vscard.init_message() + ok
                             + vscard.error_message(vscard.VSCARD_UNDEFINED_READER_ID,
                                                    vscard.ErrorCode.CANNOT_ADD_MORE_READERS), 30),
            "apdu-first": split(vscard.encode(vscard.MsgType.APDU, 0, b"\x00\x00\x00\x00"), 16)}


# -- vpcd --------------------------------------------------------------------------------------
def run_vpcd(data: bytes) -> None:
    inp = Input(data)
    framer = vpcd.VpcdFramer()
    stream = bytearray()
    decoded = bytearray()
    for chunk in chunks(inp):
        stream += chunk
        for payload in framer.receive_data(chunk):
            decoded += vpcd.frame(payload)
            vpcd.is_ctrl(payload)
        if framer.pending_bytes >= vpcd.LENGTH.size + vpcd.MAX_MESSAGE:
            raise Finding(f"vpcd framer holds {framer.pending_bytes} bytes")
        if bytes(stream[:len(decoded)]) != bytes(decoded) or len(stream) - len(decoded) != framer.pending_bytes:
            raise Finding("vpcd messages do not re-frame to the bytes received")
    try:
        vpcd.frame(bytes(len(data) * 40))
    except vpcd.VpcdProtocolError:
        if len(data) * 40 <= vpcd.MAX_MESSAGE:
            raise Finding("vpcd refused a message within its limit") from None


def vpcd_seeds() -> dict[str, bytes]:
    stream = (vpcd.ctrl_frame(vpcd.Ctrl.ON) + vpcd.ctrl_frame(vpcd.Ctrl.ATR) + vpcd.frame(bytes.fromhex("3B8080"))
              + vpcd.frame(bytes.fromhex("00A4040000")) + vpcd.frame(b"\x90\x00") + vpcd.frame(b""))
    return {"session": bytes([len(stream)]) + stream,
            "bytewise": b"".join(bytes([1, b]) for b in stream),
            "big": bytes([0x81, 0x04]) + b"\xff\xff" + b"A" * 258}


register(Target("apdu", lambda: run_apdu, apdu_seeds, max_len=1024, bounded_runs=20000))
register(Target("ber_tlv", lambda: run_ber_tlv, ber_seeds, max_len=1024, bounded_runs=4000))
register(Target("simple_tlv", lambda: run_simple_tlv, simple_seeds, max_len=2048, bounded_runs=8000))
register(Target("vscard", lambda: run_vscard, vscard_seeds, max_len=4096, bounded_runs=8000))
register(Target("vscard_client", lambda: run_vscard_client, vscard_client_seeds, max_len=4096,
                bounded_runs=6000))
register(Target("vpcd", lambda: run_vpcd, vpcd_seeds, max_len=4096, bounded_runs=8000))
