# SPDX-License-Identifier: GPL-3.0-or-later
"""Raw CCID wire helpers for the tests, written with struct only.

Deliberately independent of ccidgadget.ccid.messages: the tests check the
reader against the byte layouts of CCID rev 1.1 §6, not against its own codec.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ccidgadget.ccid import BulkIn, InterruptPending, PowerOn, Reader, ReaderConfig, Transmit

# bMessageType values, spelled out (§6.1, §6.2)
SET_PARAMETERS, ICC_POWER_ON, ICC_POWER_OFF, GET_SLOT_STATUS = 0x61, 0x62, 0x63, 0x65
SECURE, T0APDU, ESCAPE, GET_PARAMETERS, RESET_PARAMETERS = 0x69, 0x6A, 0x6B, 0x6C, 0x6D
ICC_CLOCK, XFR_BLOCK, MECHANICAL, ABORT, SET_DATA_RATE = 0x6E, 0x6F, 0x71, 0x72, 0x73
DATA_BLOCK, SLOT_STATUS, PARAMETERS, ESCAPE_RESP, DATA_RATE_RESP = 0x80, 0x81, 0x82, 0x83, 0x84

# bStatus / bError
OK_ACTIVE, OK_INACTIVE, OK_ABSENT = 0x00, 0x01, 0x02
FAILED_ACTIVE, FAILED_INACTIVE, FAILED_ABSENT = 0x40, 0x41, 0x42
TIME_EXT_ACTIVE = 0x80
CMD_ABORTED, ICC_MUTE, HW_ERROR, BAD_ATR_TS, BAD_ATR_TCK, CMD_SLOT_BUSY, NOT_SUPPORTED = (
    0xFF, 0xFE, 0xFB, 0xF8, 0xF7, 0xE0, 0x00)

#: A T=1 ATR as recommended in config.py: 3B 9K 11 81 31 FE 45 <hist> TCK
HIST = b"ccidgdgt"


def make_atr(hist: bytes = HIST) -> bytes:
    body = bytes([0x90 | len(hist), 0x11, 0x81, 0x31, 0xFE, 0x45]) + hist
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


ATR = make_atr()


def cmd(message_type: int, slot: int = 0, seq: int = 0, b7: int = 0, b8: int = 0, b9: int = 0,
        data: bytes = b"", length: int | None = None) -> bytes:
    """A PC_to_RDR message: bMessageType dwLength bSlot bSeq + 3 specific bytes + abData."""
    return struct.pack("<BIBBBBB", message_type, len(data) if length is None else length,
                       slot, seq, b7, b8, b9) + data


def xfr(apdu: bytes, slot: int = 0, seq: int = 0, level: int = 0, bwi: int = 0) -> bytes:
    return cmd(XFR_BLOCK, slot, seq, bwi, level & 0xFF, level >> 8, apdu)


@dataclass(frozen=True)
class Resp:
    message_type: int
    length: int
    slot: int
    seq: int
    status: int
    error: int
    b9: int
    data: bytes


def parse(raw: bytes) -> Resp:
    assert len(raw) >= 10, raw
    mt, length, slot, seq, status, error, b9 = struct.unpack_from("<BIBBBBB", raw)
    assert len(raw) == 10 + length, "dwLength must match the message size"
    return Resp(mt, length, slot, seq, status, error, b9, raw[10:])


class Host:
    """Drives a Reader with raw bytes and sorts what comes back."""

    def __init__(self, config: ReaderConfig | None = None, **kw) -> None:
        self.reader = Reader(config or ReaderConfig(**kw))
        self.events: list = []

    def send(self, raw: bytes, transfer_end: bool = True) -> list[Resp]:
        self.reader.receive_bulk_out(raw, transfer_end=transfer_end)
        return self.drain()

    def drain(self) -> list[Resp]:
        """Parse bulk-IN events; keep the others in self.events."""
        out = []
        for event in self.reader.next_events():
            if isinstance(event, BulkIn):
                out.append(parse(event.data))
            else:
                self.events.append(event)
        return out

    def one(self, raw: bytes) -> Resp:
        responses = self.send(raw)
        assert len(responses) == 1, responses
        return responses[0]

    def take(self, kind: type) -> list:
        taken = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return taken

    def insert(self, slot: int = 0) -> None:
        self.reader.set_card_present(slot, True)
        self.drain()
        self.take(InterruptPending)

    def power_on(self, slot: int = 0, seq: int = 0, atr: bytes = ATR) -> Resp:
        assert self.send(cmd(ICC_POWER_ON, slot, seq)) == []
        (event,) = self.take(PowerOn)
        assert event.slot == slot
        self.reader.card_answer(event.token, atr)
        (resp,) = self.drain()
        return resp

    def transmit_pending(self) -> Transmit:
        (event,) = self.take(Transmit)
        return event


