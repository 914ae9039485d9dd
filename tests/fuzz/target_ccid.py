# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzz target `ccid_core`: the sans-IO CCID reader driven by a hostile host and a flaky engine.

The input is a program (see `harness.Input`): bulk-OUT chunks with or without
a transfer end, ep0 class requests, and the engine side's moves (answers,
failures, presence changes, time extensions, hardware errors, bus resets).

Checked after every step, against a framing model written here from CCID rev
1.1 §6 (not from the core's code):

- no exception escapes;
- every bulk-IN message is a well-formed RDR_to_PC message (dwLength matches,
  at most dwMaxCCIDMessageLength) answering a command that was received and
  not yet answered (same bSlot, bSeq and the §6.1 response type); time
  extensions only for a pending XfrBlock: never more answers than commands;
- a message that is malformed in itself (unknown type, bad bSlot, dwLength
  over the limit or cut by the transfer end, wrong dwLength, RFU bytes set,
  unsupported command, bad wLevelParameter) is answered at once with
  bmCommandStatus "failed" and the §6.2.6 bError (or CMD_ABORTED / SLOT_BUSY /
  ICC_MUTE where the slot's state comes first);
- engine requests carry 4..max_command_apdu_length bytes; buffers stay within
  the named limits (one partial message, chained APDUs, queued hardware errors);
- at the end, after a transfer end: GetSlotStatus gets the right answer on
  every slot, and once the engine has answered what it owes and the host has
  completed any abort, IccPowerOn and an XfrBlock work (the slot never wedges).
"""

from __future__ import annotations

import operator
import struct
from pathlib import Path

from ccidgadget.ccid import (BulkIn, Cancel, InterruptPending, PowerOff, PowerOn, Reader, ReaderConfig,
                             Transmit)
from ccidgadget.ccid.framing import BulkOutFramer
from ccidgadget.ccid.slot import Slot

from .harness import Finding, Input, Target, Writer, register

# CCID rev 1.1 §6.1 / §6.2: PC_to_RDR type -> RDR_to_PC type.
RESPONSE = {0x62: 0x80, 0x63: 0x81, 0x65: 0x81, 0x6F: 0x80, 0x6C: 0x82, 0x6D: 0x82, 0x61: 0x82, 0x6B: 0x83,
            0x6E: 0x81, 0x6A: 0x81, 0x69: 0x80, 0x71: 0x81, 0x72: 0x81, 0x73: 0x84}
UNSUPPORTED = {0x6B, 0x6A, 0x69, 0x71}                  # Escape, T0APDU, Secure, Mechanical
FIXED_LENGTH = {0x62: 0, 0x63: 0, 0x65: 0, 0x6C: 0, 0x6D: 0, 0x6E: 0, 0x72: 0, 0x73: 8}
#: Allowed values of bytes 7..9 (§6.1.x); the first bad offset is the bError.
FIELDS = {0x62: ({0, 1, 2, 3}, {0}, {0}), 0x63: ({0}, {0}, {0}), 0x65: ({0}, {0}, {0}),
          0x6C: ({0}, {0}, {0}), 0x6D: ({0}, {0}, {0}), 0x61: ({0, 1}, {0}, {0}), 0x6E: ({0, 1}, {0}, {0}),
          0x72: ({0}, {0}, {0}), 0x73: ({0}, {0}, {0})}
LEVELS = {0x0000, 0x0001, 0x0002, 0x0003, 0x0010}
ABORTED, BUSY, MUTE = 0xFF, 0xE0, 0xFE

SLOTS = 2
CONFIG = ReaderConfig(slots=SLOTS, max_message_length=300, max_command_apdu_length=700,
                      max_response_apdu_length=1000)
MAX_PAYLOAD = CONFIG.max_payload
MAX_MESSAGE, MAX_COMMAND, MAX_RESPONSE = (CONFIG.max_message_length, CONFIG.max_command_apdu_length,
                                          CONFIG.max_response_apdu_length)


def make_atr(hist: bytes = b"ccidgdgt") -> bytes:
    body = bytes([0x90 | len(hist), 0x11, 0x81, 0x31, 0xFE, 0x45]) + hist
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


ATR = make_atr()


def header(message_type: int, slot: int, seq: int, data: bytes = b"", specific: bytes = b"\0\0\0",
           length: int | None = None) -> bytes:
    return struct.pack("<BIBB", message_type, len(data) if length is None else length, slot, seq) \
        + specific + data


def response(message_type: int, slot: int, seq: int, status: int, error: int, b9: int, data: bytes = b"") -> bytes:
    """An RDR_to_PC message (§6.2): the header with bStatus, bError and byte 9, then abData."""
    return struct.pack("<BIBBBBB", message_type, len(data), slot, seq, status, error, b9) + data


class Model:
    """Bulk-OUT framing as §6 describes it, to know which commands the host sent."""

    def __init__(self) -> None:
        self.rx = bytearray()
        self.discarding = False

    def feed(self, data: bytes, end: bool) -> list[tuple[str, tuple[int, int, int, int], bytes, bytes]]:
        """Messages framed by this chunk: (kind, (type, length, slot, seq), bytes 7..9, abData)."""
        out = []
        if self.discarding:
            if end:
                self.discarding = False
            return out
        self.rx += data
        while len(self.rx) >= 10:
            hdr = struct.unpack_from("<BIBB", self.rx)
            if hdr[1] > MAX_PAYLOAD:
                out.append(("oversize", hdr, b"", b""))
                self.rx.clear()
                self.discarding = not end
                return out
            if len(self.rx) < 10 + hdr[1]:
                break
            out.append(("message", hdr, bytes(self.rx[7:10]), bytes(self.rx[10:10 + hdr[1]])))
            del self.rx[:10 + hdr[1]]
        if end and self.rx:
            if len(self.rx) >= 7:
                hdr = struct.unpack_from("<BIBB", bytes(self.rx[:10]).ljust(10, b"\0"))
                out.append(("truncated", hdr, b"", b""))
            self.rx.clear()
        return out


def immediate_errors(kind: str, hdr, specific: bytes) -> set[int] | None:
    """The bErrors allowed for a message that must fail at once, or None if it may succeed."""
    mtype, length, slot, _ = hdr
    if kind != "message":
        return {1}
    if mtype not in RESPONSE:
        return {0}
    if slot >= SLOTS:
        return {5}
    if mtype in UNSUPPORTED:
        return {0, ABORTED}
    if mtype in FIXED_LENGTH and length != FIXED_LENGTH[mtype]:
        return {1, ABORTED, BUSY}
    if mtype in FIELDS:
        for offset, (value, allowed) in enumerate(zip(specific, FIELDS[mtype]), 7):
            if value not in allowed:
                return {offset, ABORTED, BUSY}
    if mtype == 0x6F and (specific[1] | specific[2] << 8) not in LEVELS:
        return {8, ABORTED, BUSY, MUTE}
    return None


#: Reader and slot attributes that do not change what the reader does next: its configuration,
#: and counters nothing reads back (status output only).  Every other attribute is part of
#: `Harness.state_key`; an attribute the core gains fails that key until it is named here or there.
READER_STATIC = frozenset({"_config", "_descriptor", "_rules", "_max_response", "_rx", "_late_answers",
                           "_dropped_hardware_errors"})
READER_STATE = frozenset({"_slots", "_events", "_framer", "_pending", "_next_token", "_hardware_errors"})
SLOT_COUNTERS = frozenset({"commands", "errors", "time_extensions"})
FRAMER_COUNTERS = frozenset({"messages", "framing_errors", "discarded_bytes"})
#: The other attributes of a slot and of the framer, read in one call (C); the mutable and
#: relative ones are taken apart in `state_key`.
_APART = {"request_token", "command", "response", "buffer"}
SLOT_FIELDS = operator.attrgetter(*(n for n in Slot.__slots__ if n not in SLOT_COUNTERS | _APART))
FRAMER_FIELDS = operator.attrgetter(*(n for n in BulkOutFramer.__slots__ if n not in FRAMER_COUNTERS | _APART))

#: End states whose final check passed (see `Harness.check_not_wedged`), bounded.
CHECKED: set = set()
MAX_CHECKED = 1 << 17


class Harness:
    def __init__(self) -> None:
        self.reader = Reader(CONFIG)
        self.model = Model()
        self.owed: dict[tuple[int, int, int], int] = {}       # (slot, seq, response type) -> count
        self.requests: dict[int, PowerOn | Transmit] = {}      # token -> engine request
        self.cancelled: list[int] = []

    # -- the host -------------------------------------------------------------------
    def bulk(self, data: bytes, end: bool) -> list[tuple[int, int, int, int, int, bytes]]:
        framed = self.model.feed(data, end)
        owed = self.owed
        for _, (mtype, _, slot, seq), _, _ in framed:
            key = (slot, seq, RESPONSE.get(mtype, 0x81))
            owed[key] = owed.get(key, 0) + 1
        self.reader.receive_bulk_out(data, transfer_end=end)
        answers = self.drain()
        pool = None
        for kind, hdr, specific, _ in framed:
            errors = immediate_errors(kind, hdr, specific)
            if errors is None:
                continue
            if pool is None:
                pool = list(answers)
            rtype = RESPONSE.get(hdr[0], 0x81)
            for i, a in enumerate(pool):
                if a[0] == rtype and a[1] == hdr[2] and a[2] == hdr[3] and a[3] >> 6 == 1 and a[4] in errors:
                    del pool[i]
                    break
            else:
                raise Finding(f"{kind} message {hdr} {specific.hex()} not answered at once with bError in "
                              f"{sorted(errors)}; answers: {answers}")
        return answers

    def control(self, request_type: int, request: int, value: int, length: int):
        """An ep0 class request: (its answer, the bulk-IN messages it released, e.g. an abort's end)."""
        result = self.reader.control_request(request_type, request, value, 0, length)
        if result is not None and (not isinstance(result, bytes) or len(result) > length):
            raise Finding(f"ep0 answer {result!r} longer than wLength {length}")
        return result, self.drain()

    # -- what comes back ----------------------------------------------------------------
    def drain(self) -> list[tuple[int, int, int, int, int, bytes]]:
        answers = []
        requests = self.requests
        events = self.reader.next_events()
        for event in events:
            kind = event.__class__
            if kind is BulkIn:
                answers.append(self.answer(event.data))
            elif kind is PowerOn or kind is Transmit:
                # (busy now, unless a later message of the same transfer cancelled it: Abort)
                if event.token in requests or (event.slot not in self.reader.busy_slots()
                                               and Cancel(event.slot, event.token) not in events):
                    raise Finding(f"engine request {event} for a slot that is not busy with it")
                if kind is Transmit and not 4 <= len(event.apdu) <= CONFIG.max_command_apdu_length:
                    raise Finding(f"Transmit of {len(event.apdu)} bytes")
                requests[event.token] = event
            elif kind is Cancel:
                if requests.pop(event.token, None) is None:
                    raise Finding(f"Cancel of unknown token {event}")
                self.cancelled.append(event.token)
                del self.cancelled[:-8]
            elif kind is not PowerOff and kind is not InterruptPending:
                raise Finding(f"unknown event {event!r}")
        self.check_bounds()
        return answers

    def answer(self, raw: bytes) -> tuple[int, int, int, int, int, bytes]:
        if not 10 <= len(raw) <= CONFIG.max_message_length:
            raise Finding(f"bulk-IN message of {len(raw)} bytes (dwMaxCCIDMessageLength {CONFIG.max_message_length})")
        mtype, length, slot, seq, status, error, _ = struct.unpack_from("<BIBBBBB", raw)
        if length != len(raw) - 10 or not 0x80 <= mtype <= 0x84:
            raise Finding(f"malformed bulk-IN message {raw.hex()}")
        key = (slot, seq, mtype)
        owed = self.owed.get(key, 0)
        if status >> 6 == 2:                       # time extension (§6.2.6): the command stays owed
            if mtype != 0x80 or owed == 0 or slot not in self.reader.busy_slots():
                raise Finding(f"time extension {raw.hex()} for no pending XfrBlock")
        else:
            if owed == 0:
                raise Finding(f"answer {raw.hex()} to no command (owed: {self.owed})")
            self.owed[key] = owed - 1
        return mtype, slot, seq, status, error, raw[10:]

    def check_bounds(self) -> None:
        """Buffers within their limits; the busy slots are those with an outstanding engine request.

        Runs after every step, so it reads the slots directly (`busy_slots()`, the
        adapter's view of the same thing, is checked in `drain` and the final check).
        """
        r = self.reader
        if len(r._rx) >= MAX_MESSAGE:
            raise Finding(f"{len(r._rx)} bulk-OUT bytes buffered, more than one message")
        slots = r._slots
        busy = 0
        for s in slots:
            if len(s.command) > MAX_COMMAND or len(s.response) > MAX_RESPONSE:
                raise Finding(f"slot {s.index} buffers {len(s.command)}/{len(s.response)} chained bytes")
            if s.request is not None:
                busy += 1
        if len(r._hardware_errors) > 16 or len(r._pending) > SLOTS:
            raise Finding("queues past their limits")
        requests = self.requests
        if busy != len(requests):
            raise Finding(f"busy slots {r.busy_slots()} but outstanding engine requests {requests}")
        for request in requests.values():
            if slots[request.slot].request is None:
                raise Finding(f"busy slots {r.busy_slots()} but outstanding engine requests {requests}")

    # -- the engine -------------------------------------------------------------------------
    def pick(self, index: int) -> int | None:
        tokens = sorted(self.requests) + self.cancelled
        return tokens[index % len(tokens)] if tokens else None

    def reply(self, token: int, data: bytes) -> None:
        self.requests.pop(token, None)
        self.reader.card_answer(token, data)
        self.drain()

    def fail(self, token: int, error: int, absent: bool) -> None:
        self.requests.pop(token, None)
        self.reader.card_failed(token, error, absent=absent)
        self.drain()

    # -- the final check: nothing wedged ----------------------------------------------------
    def one(self, answers, mtype: int, slot: int, seq: int):
        mine = [a for a in answers if a[0] == mtype and a[1] == slot and a[2] == seq]
        if len(mine) != 1:
            raise Finding(f"expected one answer {mtype:02X} slot {slot} seq {seq}, got {answers}")
        return mine[0]

    def exactly(self, what: str, want: list) -> None:
        """The events since the last drain are exactly `want` (a check with no model in between)."""
        got = self.reader.next_events()
        if got != want:
            raise Finding(f"{what}: expected {want}, got {got}")

    def new_requests(self, what: str, kind: type) -> list:
        """The events since the last drain are one new `kind` request per slot, in slot order."""
        got = self.reader.next_events()
        if [(e.__class__, getattr(e, "slot", None)) for e in got] != [(kind, slot) for slot in range(SLOTS)] \
                or len({e.token for e in got} | set(self.requests)) != SLOTS + len(self.requests):
            raise Finding(f"{what}: expected one new {kind.__name__} per slot, got {got}")
        return got

    def state_key(self):
        """Everything the final check's outcome depends on: the reader's state and the harness's model.

        The core is deterministic (sans-IO: no clock, no randomness), so two runs that
        end in equal keys get the same final check, to the byte.  Tokens are taken
        relative to the next one the reader will hand out.
        """
        r = self.reader
        attributes = vars(r).keys() - READER_STATIC
        if attributes != READER_STATE:
            raise Finding(f"the reader has attributes this harness does not know: {sorted(attributes ^ READER_STATE)}")
        base = r._next_token
        slots = []
        for slot in r._slots:
            values = SLOT_FIELDS(slot)
            slots.append((values, slot.request_token - base, bytes(slot.command), bytes(slot.response)))
        framer = r._framer
        return (tuple(slots), FRAMER_FIELDS(framer), bytes(framer.buffer), tuple(r._events), tuple(r._hardware_errors),
                tuple(sorted((token - base, slot.index) for token, slot in r._pending.items())),
                tuple(sorted((token - base, event.__class__, event.slot) for token, event in self.requests.items())),
                bytes(self.model.rx), self.model.discarding,
                tuple(sorted(item for item in self.owed.items() if item[1])))

    def check_not_wedged(self) -> None:
        """After a transfer end, every slot answers, and works again once engine and host did their part.

        The host sends the same message to every slot in one transfer (a host may
        queue several bulk-OUT messages, §6.1).  The messages of this check are
        well-formed, so what comes back is known to the byte (§6.2.1, §6.2.2) and
        compared whole; only the engine's late answers go through `drain`.

        It runs once per end state (`state_key`): most inputs end where an earlier one
        did, and the check was a third of an input's cost.  A failing check raises
        before its state is recorded, so a finding replays in a fresh process.
        """
        key = self.state_key()
        if key in CHECKED:
            return
        self.run_final_check()
        if len(CHECKED) >= MAX_CHECKED:
            CHECKED.clear()
        CHECKED.add(key)

    def run_final_check(self) -> None:
        r = self.reader
        slots = range(SLOTS)
        self.bulk(b"", True)
        # GetSlotStatus (§6.1.3): bStatus, bError and bClockStatus from the slot's state.
        want = []
        states = [r.slot_state(slot) for slot in slots]
        for slot, state in zip(slots, states):
            failed, error = (1, ABORTED) if state.aborting else (1, BUSY) if state.busy else (0, 0)
            icc = int(state.icc_status)
            clock = 0 if icc == 0 else 1                  # stopped in state L unless active (ISO 7816-3 §6.4)
            want.append(BulkIn(response(0x81, slot, 0xA0 + slot, failed << 6 | icc, error, clock)))
        r.receive_bulk_out(b"".join(header(0x65, slot, 0xA0 + slot) for slot in slots), transfer_end=True)
        self.exactly("GetSlotStatus on every slot", want)
        # The engine pays what it owes (answers checked against what the host is owed), the host
        # completes any abort, a card goes in.
        for token, request in sorted(self.requests.items()):
            self.reply(token, ATR if isinstance(request, PowerOn) else b"\x90\x00")
        for slot, state in zip(slots, states):
            if state.aborting:                            # (answers from the engine do not end an abort)
                # §5.3.1: the abort ends when both halves with one bSeq are in, in either order; the
                # input may have sent a PC_to_RDR_Abort with this bSeq already, and the ABORT request
                # then ends it (answered at once; a second PC_to_RDR_Abort would start a new abort).
                result, answers = self.control(0x21, 0x01, slot | 0x7E << 8, 0)
                if result != b"":
                    raise Finding("ep0 ABORT refused")
                if not [a for a in answers if a[:3] == (0x81, slot, 0x7E)]:
                    self.one(self.bulk(header(0x72, slot, 0x7E), True), 0x81, slot, 0x7E)
                else:
                    self.one(answers, 0x81, slot, 0x7E)
            r.set_card_present(slot, True)
        self.drain()
        for request in self.requests.values():
            raise Finding(f"engine request {request} left after answering everything")
        # IccPowerOn (§6.1.1): one PowerOn per slot, answered with the ATR in a DataBlock.
        r.receive_bulk_out(b"".join(header(0x62, slot, 0x31) for slot in slots), transfer_end=True)
        for event in self.new_requests("IccPowerOn on every slot", PowerOn):
            r.card_answer(event.token, ATR)
            self.exactly(f"ATR on slot {event.slot}", [BulkIn(response(0x80, event.slot, 0x31, 0, 0, 0, ATR))])
        # XfrBlock (§6.1.4): the APDU reaches the card, its answer the host.
        apdu = bytes.fromhex("00A4040000")
        r.receive_bulk_out(b"".join(header(0x6F, slot, 0x33, apdu) for slot in slots), transfer_end=True)
        for event in self.new_requests("XfrBlock on every slot", Transmit):
            if event.apdu != apdu:
                raise Finding(f"XfrBlock made {event}")
            r.card_answer(event.token, b"\x90\x00")
            self.exactly(f"XfrBlock answer on slot {event.slot}",
                         [BulkIn(response(0x80, event.slot, 0x33, 0, 0, 0, b"\x90\x00"))])
        self.check_bounds()
        if r.busy_slots():
            raise Finding(f"busy slots {r.busy_slots()} after every request was answered")


def run(data: bytes) -> None:
    h = Harness()
    inp = Input(data)
    steps = 0
    while inp.pos < inp.end and steps < 200:          # (inp.more(), inlined: once per step)
        steps += 1
        op = inp.byte()
        kind = op & 0x0F                              # 0x80 and 0x40 are flags of the op
        if kind <= 2 or kind >= 11:
            h.bulk(inp.take(inp.u16() % 2048), bool(op & 0x80))
        elif kind == 3:
            token = h.pick(inp.byte())
            how = inp.byte()
            if token is None:
                continue
            request = h.requests.get(token)
            if how % 4 == 0:
                body = ATR if isinstance(request, PowerOn) else b"\x90\x00"
            elif how % 4 == 1:
                body = inp.take(inp.byte())
            elif how % 4 == 2:
                body = bytes([inp.byte()]) * (inp.u16() % 1400)   # around the 300/1000-byte limits
            else:
                body = ATR[:inp.byte() % 40] + inp.take(inp.byte() % 8)
            h.reply(token, body)
        elif kind == 4:
            token = h.pick(inp.byte())
            error, absent = inp.byte(), bool(op & 0x80)
            if token is not None:
                h.fail(token, error, absent)
        elif kind == 5:
            h.reader.set_card_present(inp.byte() % SLOTS, bool(op & 0x80))
            h.drain()
        elif kind == 6:
            h.reader.time_extension(inp.byte() % SLOTS)
            h.drain()
        elif kind == 7:
            request_type = inp.byte() if op & 0x20 else (0xA1 if op & 0x40 else 0x21)
            h.control(request_type, inp.byte() % 6, inp.u16(), inp.u16())
        elif kind == 8:
            h.reader.hardware_error(inp.byte() % SLOTS, inp.byte())
            h.drain()
        elif kind == 9:
            h.reader.reset()
            h.model = Model()
            h.owed.clear()                            # the host forgets its commands too (§5.3: bus reset)
            h.drain()
        elif kind == 10:
            message = h.reader.pop_interrupt()
            if message is not None and not ((message[0] == 0x50 and len(message) == 1 + (2 * SLOTS + 7) // 8)
                                            or (message[0] == 0x51 and len(message) == 4)):
                raise Finding(f"malformed interrupt message {message.hex()}")
    h.check_not_wedged()


def make():
    return run


# -- seeds ---------------------------------------------------------------------------
CCID_CORPUS = Path(__file__).resolve().parents[1] / "ccid" / "corpus"


def bulk_op(data: bytes, end: bool = True) -> bytes:
    return Writer().byte(0x80 if end else 0x00).u16(len(data)).raw(data).bytes()


def ep0_op(request_type_in: bool, request: int, value: int, length: int) -> bytes:
    return Writer().byte(0x47 if request_type_in else 0x07).byte(request).u16(value).u16(length).bytes()


def from_ccid_corpus() -> dict[str, bytes]:
    """tests/ccid/corpus/*.hex (raw bulk-OUT transfers), each as one bulk op with a transfer end."""
    out = {}
    for path in sorted(CCID_CORPUS.glob("*.hex")):
        raw = bytes.fromhex("".join(line.split("#")[0] for line in path.read_text().splitlines()))
        out[f"ccid-{path.stem}"] = bulk_op(raw)
    return out


def seeds() -> dict[str, bytes]:
    power_on = bulk_op(header(0x62, 0, 1))
    answer_atr = bytes([3, 0, 0])
    select = bulk_op(header(0x6F, 0, 2, bytes.fromhex("00A4040000")))
    present = bytes([0x85, 0])                        # card in slot 0
    big_answer = bytes([3, 0, 2, 0x41]) + (900).to_bytes(2, "big")
    return {
        "power-on-xfr": present + power_on + answer_atr + select + bytes([3, 0, 0]),
        "power-on-xfr-split": present + bulk_op(header(0x62, 0, 1)[:6], False) + bulk_op(header(0x62, 0, 1)[6:])
        + answer_atr + bulk_op(header(0x6F, 0, 2, bytes.fromhex("00A4040000"))[:12], False)
        + bulk_op(header(0x6F, 0, 2, bytes.fromhex("00A4040000"))[12:]) + bytes([3, 0, 0]),
        "response-chaining": present + power_on + answer_atr + select + big_answer
        + bulk_op(header(0x6F, 0, 3, specific=b"\0\x10\0")) + bulk_op(header(0x6F, 0, 4, specific=b"\0\x10\0"))
        + bulk_op(header(0x6F, 0, 5, specific=b"\0\x10\0")),
        "command-chaining": present + power_on + answer_atr
        + bulk_op(header(0x6F, 0, 2, b"\0\xA4\x04\0" + b"\x11" * 200, b"\0\x01\0"))
        + bulk_op(header(0x6F, 0, 3, b"\x22" * 280, b"\0\x03\0"))
        + bulk_op(header(0x6F, 0, 4, b"\x33" * 100, b"\0\x02\0")) + bytes([3, 0, 0]),
        "abort": present + power_on + ep0_op(False, 1, 0x0100, 0) + bulk_op(header(0x72, 0, 1)),
        "abort-during-xfr": present + power_on + answer_atr + select + ep0_op(False, 1, 0x0200, 0)
        + bulk_op(header(0x72, 0, 2)),
        "abort-message-first": present + power_on + answer_atr + select + bulk_op(header(0x72, 0, 2))
        + ep0_op(False, 1, 0x0200, 0),
        "removal-while-busy": present + power_on + answer_atr + select + bytes([0x05, 0]),
        "time-extension": present + power_on + answer_atr + select + bytes([6, 0, 6, 0]) + bytes([3, 0, 0]),
        "engine-fails": present + power_on + bytes([0x84, 0, 0xFE]) + bytes([0x85, 1])
        + bulk_op(header(0x62, 1, 9)) + bytes([4, 0, 0xFB]),
        "bad-atr": present + power_on + bytes([3, 0, 3, 5, 2, 0x41, 0x42]),
        "hw-error-interrupt": present + bytes([8, 0, 0x11, 8, 1, 0x22, 10, 10, 10]),
        "ep0": ep0_op(True, 2, 0, 4) + ep0_op(True, 3, 0, 2) + ep0_op(False, 1, 0xFFFF, 0)
        + ep0_op(False, 1, 0x0001, 8) + ep0_op(True, 4, 0, 0),
        "oversize-split": bulk_op(header(0x6F, 0, 1, length=0xFFFFFFFF) + b"x" * 20, False)
        + bulk_op(b"y" * 100, False) + bulk_op(b"", True) + bulk_op(header(0x65, 0, 2)),
        "reset": present + power_on + answer_atr + select + bytes([9]) + bulk_op(header(0x65, 0, 9)),
        "two-slots": present + bytes([0x85, 1]) + power_on + bulk_op(header(0x62, 1, 1)) + bytes([3, 1, 0])
        + bytes([3, 0, 0]) + bulk_op(header(0x6F, 1, 2, bytes.fromhex("00B0000000"))) + bytes([3, 0, 1, 4])
        + b"abcd",
    }


TARGET = register(Target("ccid_core", make, seeds, max_len=4096, bounded_runs=4000,
                         extra_corpus=(from_ccid_corpus,)))
