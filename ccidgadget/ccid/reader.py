# SPDX-License-Identifier: GPL-3.0-or-later
"""The CCID reader as a sans-IO state machine (CCID rev 1.1, APDU level).

Bytes from bulk-OUT and ep0 class requests go in; `next_events()` gives back
bulk-IN messages, requests for the card engines and interrupt notifications.
There are no file descriptors, threads, tasks or clocks here: the adapter owns
the endpoints, the engines and the time-extension timers.

The core in modules, in the order a message crosses them:

- `framing.py`: bulk-OUT bytes cut into messages by dwLength (oversize and cut
  messages, resynchronisation at a short packet);
- this module: the command table, the checks, dispatch and the message
  handlers, the card side's inputs (answers, failures, presence) and ep0;
- `slot.py`: what a slot remembers between messages, with XfrBlock chaining as
  a transition table;
- `messages.py`: the §6 codec; `events.py`: what `next_events()` returns.

What is implemented, and how each PC_to_RDR message is answered (§6.1):

=============================  ======  ==============================================
message                        answer  behaviour
=============================  ======  ==============================================
0x62 IccPowerOn      §6.1.1    0x80    PowerOn event, ATR from the engine
0x63 IccPowerOff     §6.1.2    0x81    PowerOff event, answered at once
0x65 GetSlotStatus   §6.1.3    0x81    answered at once
0x6F XfrBlock        §6.1.4    0x80    extended APDU level, wLevelParameter chaining
0x6C GetParameters   §6.1.5    0x82    parameters derived from the ATR
0x6D ResetParameters §6.1.6    0x82    back to the ATR's values
0x61 SetParameters   §6.1.7    0x82    validated and stored (nothing to program)
0x6B Escape          §6.1.8    0x83    CMD_NOT_SUPPORTED (no vendor commands)
0x6E IccClock        §6.1.9    0x81    accepted, no-op (there is no clock to stop)
0x6A T0APDU          §6.1.10   0x81    CMD_NOT_SUPPORTED (APDU level, no T=0 TPDUs)
0x69 Secure          §6.1.11   0x80    Secure event (PIN pad), or CMD_NOT_SUPPORTED (bPINSupport 0)
0x71 Mechanical      §6.1.12   0x81    CMD_NOT_SUPPORTED (dwMechanical 0)
0x72 Abort           §6.1.13   0x81    paired with the ep0 ABORT request (§5.3.1)
0x73 SetDataRateAnd… §6.1.14   0x84    answers the one clock and rate we have
other                          0x81    failed, CMD_NOT_SUPPORTED
=============================  ======  ==============================================

Checks, in this order, each answered with the message's own response type,
bStatus failed and this bError (§6.2.6):

1. unknown bMessageType -> CMD_NOT_SUPPORTED (0x00), in a SlotStatus;
2. bSlot > bMaxSlotIndex -> 5 (offset of bSlot), ICC status "absent";
3. slot in the middle of an abort (§5.3.1) -> CMD_ABORTED (0xFF);
4. message not supported (table above) -> CMD_NOT_SUPPORTED;
5. a card request pending on that slot -> CMD_SLOT_BUSY (0xE0);
6. dwLength wrong for the message (0 for most, 8 for SetDataRate…, 5/7 for
   SetParameters T=0/T=1) -> 1;
7. message-specific bytes at offsets 7..9 (`_RULES` below: RFU bytes must be 0,
   bPowerSelect 0..3, bProtocolNum 0..1, bClockCommand 0..1, wLevelParameter in
   the chaining table of `slot.py`) -> the offset of the first bad byte;
8. no card for a command that needs one -> ICC_MUTE (0xFE), ICC status 2;
   card present but not activated on XfrBlock -> ICC_MUTE, ICC status 1.

Framing errors are found before a message is dispatched (`framing.py`): a
message cut short by the end of a USB transfer, or a dwLength over
dwMaxCCIDMessageLength - 10, is answered with bError 1 (dwLength) and dropped.
"""

from __future__ import annotations

import collections
import enum
import itertools
import struct
from dataclasses import dataclass
from typing import Callable

from . import messages
from .atr import AtrError, parse_atr
from .config import MAX_PENDING_HARDWARE_ERRORS, ReaderConfig
from .constants import (
    REQUEST_TYPE_CLASS_INTERFACE_IN,
    REQUEST_TYPE_CLASS_INTERFACE_OUT,
    RESPONSE_TYPE,
    ChainParameter,
    ClassRequest,
    ClockStatus,
    CommandStatus,
    FieldOffset,
    ICCStatus,
    MessageType,
    Protocol,
    SlotError,
    make_status,
)
from .descriptor import ClassDescriptor
from .events import BulkIn, Cancel, Event, InterruptPending, PowerOff, PowerOn, Secure, Transmit
from .framing import BulkOutFramer
from .messages import Header, data_block
from .slot import XFR_TRANSITIONS, ChainError, Request, Slot

MT = MessageType

_POWER_ON, _TRANSMIT, _SECURE = Request.POWER_ON, Request.TRANSMIT, Request.SECURE
#: bStatus of a failed command (§6.2.6): bmCommandStatus 1 in bits 6-7, then | bmICCStatus.
_FAILED_BITS = make_status(0, CommandStatus.FAILED)
_SINGLE = int(ChainParameter.SINGLE)
_new_event = tuple.__new__      # BulkIn(m) is _new_event(BulkIn, (m,)) (events.py), minus one Python call
_ABSENT_FAILED = make_status(ICCStatus.ABSENT, CommandStatus.FAILED)
_STOPPED_L = int(ClockStatus.STOPPED_L)
# The bErrors and the response type of the checks, as module globals: an enum member looked up
# on its class costs ten times as much, and these run once per malformed message.
_CMD_NOT_SUPPORTED, _CMD_ABORTED, _CMD_SLOT_BUSY, _ICC_MUTE = (
    int(SlotError.CMD_NOT_SUPPORTED), int(SlotError.CMD_ABORTED), int(SlotError.CMD_SLOT_BUSY),
    int(SlotError.ICC_MUTE))
_B_SLOT, _DW_LENGTH = int(FieldOffset.B_SLOT), int(FieldOffset.DW_LENGTH)
_SLOT_STATUS = int(MT.RDR_to_PC_SlotStatus)
_XFR_BLOCK = int(MT.PC_to_RDR_XfrBlock)
#: Errors that leave a chain in progress alone: the XfrBlock was not looked at.
_KEEPS_CHAIN = frozenset({SlotError.CMD_SLOT_BUSY, SlotError.CMD_ABORTED})


class _Need(enum.IntEnum):
    """What a command needs in the slot before it runs."""

    NOTHING = 0
    CARD = 1  # a card present (ICC status 0 or 1)
    ACTIVE_CARD = 2  # a card present and powered (ICC status 0)


_ZERO = frozenset({0})
_RFU = ((7, _ZERO), (8, _ZERO), (9, _ZERO))

#: A message handler: ``handler(reader, slot, header, abData)``.
Handler = Callable[["Reader", Slot, Header, bytes], None]


class _Rule:
    """How one PC_to_RDR message is checked and handled (one row of `_RULES`)."""

    __slots__ = ("message_type", "handler", "length", "fields", "specific", "need_card", "need_active",
                 "response_type", "is_abort")

    def __init__(self, message_type: int, handler: Handler | None, length: int | None = 0,
                 fields: tuple[tuple[int, frozenset[int]], ...] = _RFU, need: _Need = _Need.NOTHING) -> None:
        self.message_type = int(message_type)
        self.handler = handler  # None: CMD_NOT_SUPPORTED
        self.length = length  # required dwLength; None = variable, the handler checks
        self.fields = fields  # (offset, allowed values) for offsets 7..9
        #: Every allowed (byte 7, byte 8, byte 9), so that a good message costs one look-up; None: unchecked.
        self.specific: frozenset[tuple[int, int, int]] | None = None
        if fields:
            assert tuple(offset for offset, _ in fields) == (7, 8, 9)
            self.specific = frozenset(itertools.product(*(allowed for _, allowed in fields)))
        self.need_card = need >= _Need.CARD
        self.need_active = need >= _Need.ACTIVE_CARD
        self.response_type = RESPONSE_TYPE[message_type]
        self.is_abort = message_type == MT.PC_to_RDR_Abort


@dataclass(frozen=True)
class SlotState:
    """A snapshot of one slot, for status output and tests."""

    slot: int
    present: bool
    powered: bool
    busy: bool
    aborting: bool
    icc_status: ICCStatus
    protocol: int
    atr: bytes | None
    chaining: str
    commands: int
    errors: int
    time_extensions: int


@dataclass(frozen=True)
class ReaderCounters:
    """Reader-wide counters (never reset except by a new Reader)."""

    messages: int  # complete bulk-OUT messages dispatched
    framing_errors: int  # oversize or truncated messages answered with bError 1
    discarded_bytes: int  # bulk-OUT bytes skipped after an oversize header or a short fragment
    late_answers: int  # card_answer/card_failed for an unknown or cancelled token
    dropped_hardware_errors: int  # HardwareError notifications lost to MAX_PENDING_HARDWARE_ERRORS


class Reader:
    """One CCID interface with `config.slots` slots.  See the module docstring."""

    def __init__(self, config: ReaderConfig = ReaderConfig()) -> None:
        self._config = config
        self._descriptor: ClassDescriptor | None = None  # made when first asked for (most of a new Reader's cost)
        # PC_to_RDR_Secure is a command only when the descriptor announces a PIN pad (bPINSupport).
        self._rules = _RULES_WITH_SECURE if config.pin_support else _RULES
        self._max_response = config.max_response_apdu_length
        self._slots = [Slot(i, config.max_payload, config.max_command_apdu_length) for i in range(config.slots)]
        self._events: list[Event] = []
        self._framer = BulkOutFramer(config.max_payload)
        self._rx = self._framer.buffer  # the partial bulk-OUT message (the same bytearray, for inspection)
        self._pending: dict[int, Slot] = {}  # token -> the slot waiting on that card request
        self._next_token = 1
        self._hardware_errors: collections.deque[bytes] = collections.deque()
        self._late_answers = 0
        self._dropped_hardware_errors = 0

    # ------------------------------------------------------------------ output
    @property
    def descriptor(self) -> ClassDescriptor:
        if self._descriptor is None:
            self._descriptor = ClassDescriptor.from_config(self._config)
        return self._descriptor

    @property
    def config(self) -> ReaderConfig:
        return self._config

    def next_events(self) -> list[Event]:
        """All events queued since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def pop_interrupt(self) -> bytes | None:
        """The next interrupt-IN message, or None.

        A NotifySlotChange (§6.3.1) covering every slot goes first whenever a
        slot changed; reporting it clears the "changed" bits.  Then queued
        HardwareError messages (§6.3.2), oldest first.
        """
        changed = False
        for slot in self._slots:             # (a loop, not any() over a generator: once per step)
            if slot.changed:
                changed = True
                break
        if changed:
            bits = bytearray((2 * len(self._slots) + 7) // 8)
            for slot in self._slots:
                value = (1 if slot.present else 0) | (2 if slot.changed else 0)
                bits[slot.index // 4] |= value << (2 * (slot.index % 4))
                slot.changed = False
            return messages.notify_slot_change(bytes(bits))
        if self._hardware_errors:
            return self._hardware_errors.popleft()
        return None

    def busy_slots(self) -> set[int]:
        """Slots with a card request outstanding (the adapter times time extensions for these)."""
        return {slot.index for slot in self._slots if slot.request is not None}

    def slot_state(self, slot: int) -> SlotState:
        s = self._slot_arg(slot)
        return SlotState(
            slot=s.index, present=s.present, powered=s.powered, busy=s.request is not None,
            aborting=s.aborting, icc_status=s.icc_status, protocol=s.protocol,
            atr=None if s.atr is None else s.atr.raw, chaining=s.chain.value,
            commands=s.commands, errors=s.errors, time_extensions=s.time_extensions)

    @property
    def counters(self) -> ReaderCounters:
        f = self._framer
        return ReaderCounters(f.messages, f.framing_errors, f.discarded_bytes,
                              self._late_answers, self._dropped_hardware_errors)

    # ------------------------------------------------------ input: USB side
    def receive_bulk_out(self, data: bytes, *, transfer_end: bool = False) -> None:
        """Feed bulk-OUT bytes as they arrive; messages are framed by dwLength.

        `transfer_end` says the USB transfer ended after these bytes (short
        packet): a partial message left then is answered with bError 1 and
        dropped, and skipping an oversize payload stops there.
        """
        for header, payload in self._framer.feed(data, transfer_end):
            if payload is None:
                self._framing_error(header)
            else:
                self._dispatch(header, payload)

    def control_request(self, request_type: int, request: int, value: int, index: int,
                        length: int) -> bytes | None:
        """An ep0 class request to the CCID interface (§5.3).

        Returns the IN data stage (truncated to `length`), b"" to acknowledge an
        OUT request, or None to STALL.  `index` (the interface number) is the
        adapter's business and is not checked here.
        """
        if not (0 <= value <= 0xFFFF and 0 <= length <= 0xFFFF):
            return None
        if request == ClassRequest.ABORT:
            # §5.3.1: host to device, wValue = bSlot | bSeq << 8, no data stage.
            if request_type != REQUEST_TYPE_CLASS_INTERFACE_OUT or length != 0:
                return None
            slot, seq = value & 0xFF, value >> 8
            if slot >= len(self._slots):
                return None
            self._abort_request(self._slots[slot], seq)
            return b""
        if request == ClassRequest.GET_CLOCK_FREQUENCIES:  # §5.3.2
            values = [self._config.default_clock_khz]
        elif request == ClassRequest.GET_DATA_RATES:  # §5.3.3
            values = [self._config.data_rate_bps]
        else:
            return None
        if request_type != REQUEST_TYPE_CLASS_INTERFACE_IN or value != 0:
            return None
        return struct.pack(f"<{len(values)}I", *values)[:length]

    def reset(self) -> None:
        """USB bus reset, disable, unbind or re-enumeration.

        Partial bulk-OUT data and every pending request are dropped (one Cancel
        each, no answer: the host forgot them too), powered cards get a
        PowerOff and are reported inactive, and every slot is marked changed so
        that the next NotifySlotChange tells the host the current state.
        """
        self._framer.reset()
        for slot in self._slots:
            if slot.request is not None:
                self._cancel(slot)
            slot.drop_chain()
            slot.abort_request_seq = slot.abort_message_seq = None
            slot.powered = False
            slot.protocol, slot.parameters = slot.atr_defaults  # slot.reset_parameters(), inlined
            if slot.engine_on:
                slot.engine_on = False
                self._events.append(PowerOff(slot.index))
            slot.changed = True
        self._hardware_errors.clear()
        self._events.append(InterruptPending())

    # ---------------------------------------------------- input: card engines
    def set_card_present(self, slot: int, present: bool) -> None:
        """A card was inserted or removed; queues a NotifySlotChange.

        Removal answers a pending request with ICC_MUTE / ICC absent and cancels it.
        """
        s = self._slot_arg(slot)
        present = bool(present)
        if present == s.present:
            return
        was_waiting = self._interrupt_waiting()
        s.present = present
        s.changed = True
        s.powered = False
        if not present:
            if s.request is not None:
                self._cancel(s)
                self._fail_pending(s, SlotError.ICC_MUTE)
            s.drop_chain()
            s.engine_on = False
            s.set_atr(None)
        s.reset_parameters()
        self._interrupt_queued(was_waiting)

    def card_answer(self, token: int, data: bytes) -> None:
        """The engine answered request `token`: an ATR for PowerOn, a response APDU for Transmit."""
        slot = self._pending.pop(token, None)
        if slot is None:
            self._late_answers += 1
            return
        if data.__class__ is not bytes:
            data = bytes(data)
        if slot.request is _POWER_ON:
            slot.request = None
            try:
                atr = parse_atr(data)
            except AtrError as exc:
                slot.powered = False
                self._fail_pending(slot, exc.error)
                # The engine is on but its card is unusable: switch it off again.
                slot.engine_on = False
                self._events.append(PowerOff(slot.index))
                return
            slot.powered = True
            slot.set_atr(atr)
            slot.reset_parameters()
            self._send(messages.data_block(slot.index, slot.request_seq, slot.icc_status, data=data))
            return
        slot.request = None
        n = len(data)
        if n > self._max_response:
            self._fail_pending(slot, SlotError.HW_ERROR)
            return
        # Once per APDU: the one-block answer (most are) without slot.respond's call, the event made
        # as its class's __new__ would make it.
        if n <= slot.max_payload:
            message = data_block(slot.index, slot.request_seq, slot.icc_status, 0, _SINGLE, data)
        else:
            chain, block = slot.respond(data)
            message = data_block(slot.index, slot.request_seq, slot.icc_status, 0, chain, block)
        self._events.append(_new_event(BulkIn, (message,)))

    def card_failed(self, token: int, error: SlotError | int, *, absent: bool = False) -> None:
        """The engine could not answer request `token`; the host gets `error` as bError.

        The ICC status in the answer is the slot's: for a card that turned out
        to be gone, pass ``absent=True`` (or call `set_card_present(slot, False)`
        first, which answers the pending command with ICC_MUTE / "absent" itself):
        the slot is then marked empty, a NotifySlotChange is queued and the host
        sees `error` (normally ICC_MUTE) with ICC status 2.
        """
        error = int(error)
        if not 0 <= error <= 0xFF:
            raise ValueError(f"bError must be one byte, not {error}")
        slot = self._take_pending(token)
        if slot is None:
            return
        if slot.request is _POWER_ON:
            slot.powered = False
        slot.request = None
        if absent:
            self.set_card_present(slot.index, False)
        self._fail_pending(slot, error)

    def time_extension(self, slot: int) -> None:
        """The adapter's timer fired: ask the host for more time (§6.2.6, bStatus 0x80).

        Sent only for a pending XfrBlock or Secure (libccid's CCID_Receive loops on
        both): libccid's CmdPowerOn does not know time extensions (see
        `config.TIME_EXTENSION_INTERVAL`).  bError is the BWT multiplier, 1: libccid
        then waits its normal timeout again.
        """
        s = self._slot_arg(slot)
        if s.request is None or s.request is _POWER_ON or s.aborting:
            return
        s.time_extensions += 1
        status = make_status(s.icc_status, CommandStatus.TIME_EXTENSION)
        self._send(messages.data_block(s.index, s.request_seq, status, 1))

    def hardware_error(self, slot: int, code: int) -> None:
        """Queue an RDR_to_PC_HardwareError (§6.3.2) for `slot`, with the slot's last bSeq."""
        s = self._slot_arg(slot)
        if not 0 <= code <= 0xFF:
            raise ValueError(f"bHardwareErrorCode must be one byte, not {code}")
        was_waiting = self._interrupt_waiting()
        if len(self._hardware_errors) >= MAX_PENDING_HARDWARE_ERRORS:
            self._hardware_errors.popleft()
            self._dropped_hardware_errors += 1
        self._hardware_errors.append(messages.hardware_error(s.index, s.last_seq, code))
        self._interrupt_queued(was_waiting)

    # ------------------------------------------------------------ dispatching
    def _dispatch(self, header: Header, data: bytes) -> None:
        """Run the checks of the module docstring in their order, then the message's handler."""
        rule = self._rules.get(header.message_type)
        slots = self._slots
        if rule is None:  # 1
            slot = slots[header.slot] if header.slot < len(slots) else None
            self._fail(_SLOT_STATUS, header.slot, header.seq, slot, _CMD_NOT_SUPPORTED)
            return
        if header.slot >= len(slots):  # 2
            self._fail(rule.response_type, header.slot, header.seq, None, _B_SLOT)
            return
        slot = slots[header.slot]
        slot.last_seq = header.seq
        slot.commands += 1
        # 3..8, written out: this runs once per message.
        if (slot.abort_request_seq is not None or slot.abort_message_seq is not None) and not rule.is_abort:
            error: int = _CMD_ABORTED
        elif rule.handler is None:
            error = _CMD_NOT_SUPPORTED
        elif slot.request is not None and not rule.is_abort:
            error = _CMD_SLOT_BUSY
        elif rule.length is not None and header.length != rule.length:
            error = _DW_LENGTH
        elif rule.specific is not None and header[4:] not in rule.specific:  # (b7, b8, b9)
            error = next(offset for offset, allowed in rule.fields if header.field(offset) not in allowed)
        elif (rule.need_card and not slot.present) or (rule.need_active and not slot.powered):
            error = _ICC_MUTE
        else:
            rule.handler(self, slot, header, data)
            return
        if header.message_type == _XFR_BLOCK and error not in _KEEPS_CHAIN:
            slot.drop_chain()
        self._fail(rule.response_type, header.slot, header.seq, slot, error)

    # -------------------------------------------------------------- handlers
    def _icc_power_on(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.1.  The card is (re)activated by the engine; any chain dies with it.
        slot.drop_chain()
        slot.powered = False
        slot.engine_on = True
        token = self._start(slot, _POWER_ON, header)
        self._events.append(PowerOn(slot.index, token))

    def _icc_power_off(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.2.  Answered at once; also fine with no card (ICC status 2, no error).
        slot.drop_chain()
        slot.powered = False
        if slot.engine_on:
            slot.engine_on = False
            self._events.append(PowerOff(slot.index))
        self._send_slot_status(slot, header.seq)

    def _get_slot_status(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.3
        self._send_slot_status(slot, header.seq)

    def _get_parameters(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.5
        self._send_parameters(slot, header.seq)

    def _reset_parameters(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.6: back to the values from the ATR (or ISO defaults before any ATR).
        slot.reset_parameters()
        self._send_parameters(slot, header.seq)

    def _set_parameters(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.7.  Nothing to program (dwFeatures 0x40: the reader negotiates), so
        # the structure is checked and stored for GetParameters.  Checked bytes
        # (bError = offset in the message): bmTCCKST0 in {00,02} / bmTCCKST1 in
        # 10..13 (11), bClockStop 0..3 (14), T=1 bIFSC 1..FE (15), T=1 bNadValue 0 (16:
        # we do not support NAD, dwFeatures 0x200 is clear).  Fi/Di, guard time and
        # waiting integers take any value.
        protocol = header.field(7)
        if len(data) != (5 if protocol == Protocol.T0 else 7):
            self._fail_command(slot, header, FieldOffset.DW_LENGTH)
            return
        if protocol == Protocol.T0:
            bad = [(11, data[1] in (0x00, 0x02)), (14, data[4] <= 3)]
        else:
            bad = [(11, 0x10 <= data[1] <= 0x13), (14, data[4] <= 3), (15, 1 <= data[5] <= 0xFE),
                   (16, data[6] == 0)]
        for offset, ok in bad:
            if not ok:
                self._fail_command(slot, header, offset)
                return
        slot.protocol = protocol
        slot.parameters = bytes(data)
        self._send_parameters(slot, header.seq)

    def _icc_clock(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.9: accepted and ignored; an emulated card has no clock to stop.
        self._send_slot_status(slot, header.seq)

    def _set_data_rate_and_clock_frequency(self, slot: Slot, header: Header, data: bytes) -> None:
        # §6.1.14: the reader answers with the values it actually applies, which are
        # always our single clock and rate (bNumClockSupported = bNumDataRatesSupported = 1).
        self._send(messages.data_rate_and_clock_frequency(
            slot.index, header.seq, slot.icc_status, 0,
            self._config.default_clock_khz, self._config.data_rate_bps))

    # --- XfrBlock (§6.1.4): chaining is `slot.XFR_TRANSITIONS` ---
    def _xfr_block(self, slot: Slot, header: Header, data: bytes) -> None:
        step = XFR_TRANSITIONS.get((slot.chain, header.b8 | header.b9 << 8))  # wLevelParameter
        if step is None:
            slot.drop_chain()
            self._fail_command(slot, header, FieldOffset.W_LEVEL_PARAMETER)
            return
        try:
            outcome = step(slot, data)
        except ChainError as error:
            self._fail_command(slot, header, error.offset)
            return
        if outcome.__class__ is tuple:  # a Reply: more of the command expected, or the next response block
            chain, block = outcome
            self._events.append(BulkIn(data_block(slot.index, header.seq, slot.icc_status, 0, chain, block)))
        else:  # the whole command APDU
            self._transmit(slot, header, outcome)  # type: ignore[arg-type]

    def _transmit(self, slot: Slot, header: Header, apdu: bytes) -> None:
        # ISO 7816-4 §5.1: a command APDU has at least CLA INS P1 P2.
        if len(apdu) < 4:
            self._fail_command(slot, header, FieldOffset.DW_LENGTH)
            return
        token = self._start(slot, _TRANSMIT, header)
        self._events.append(_new_event(Transmit, (slot.index, token, apdu)))

    # --- Secure (§6.1.11): the PIN pad ---
    def _secure(self, slot: Slot, header: Header, data: bytes) -> None:
        if header.level_parameter != 0:
            # wLevelParameter 0: the structure begins and ends in this message (no chaining).
            self._fail_command(slot, header, FieldOffset.W_LEVEL_PARAMETER)
            return
        # Imported here: a reader has a Secure rule only with bPINSupport, i.e. a PIN pad configured,
        # whose modules have loaded this one at start; a reader without one does not pay for it.
        from .secure import SecureError, parse_secure
        try:
            request = parse_secure(data)
        except SecureError as e:
            self._fail_command(slot, header, e.offset)
            return
        slot.drop_chain()
        token = self._start(slot, _SECURE, header)
        self._events.append(Secure(slot.index, token, request))

    # --- Abort (§5.3.1, §6.1.13) ---
    #
    # The host sends the ep0 ABORT request and PC_to_RDR_Abort with the same
    # bSlot and bSeq, in either order.  On the first of the two the slot stops:
    # a pending card request is cancelled (Cancel event) and its command is
    # answered with bError CMD_ABORTED; chained data in either direction is
    # dropped.  Until the pair is complete every other message to the slot is
    # answered CMD_ABORTED.  PC_to_RDR_Abort is answered (SlotStatus, no error)
    # only once both halves are seen.  A second PC_to_RDR_Abort with another bSeq
    # replaces the first, which is answered CMD_ABORTED; a second ABORT request
    # replaces the first.  Other slots are not affected.
    def _abort_request(self, slot: Slot, seq: int) -> None:
        self._stop_for_abort(slot)
        if slot.abort_message_seq == seq:
            self._finish_abort(slot, seq)
        else:
            slot.abort_request_seq = seq

    def _abort_message(self, slot: Slot, header: Header, data: bytes) -> None:
        self._stop_for_abort(slot)
        if slot.abort_message_seq is not None and slot.abort_message_seq != header.seq:
            # The earlier PC_to_RDR_Abort is replaced: it is answered, never dropped.
            self._fail(MT.RDR_to_PC_SlotStatus, slot.index, slot.abort_message_seq, slot,
                       SlotError.CMD_ABORTED)
            slot.abort_message_seq = None
        if slot.abort_request_seq == header.seq:
            self._finish_abort(slot, header.seq)
            return
        slot.abort_message_seq = header.seq

    def _stop_for_abort(self, slot: Slot) -> None:
        if slot.request is not None:
            kind = slot.request
            self._cancel(slot)
            if kind is _POWER_ON:
                slot.powered = False
            self._fail_pending(slot, SlotError.CMD_ABORTED)
        slot.drop_chain()

    def _finish_abort(self, slot: Slot, seq: int) -> None:
        slot.abort_request_seq = slot.abort_message_seq = None
        self._send_slot_status(slot, seq)

    # -------------------------------------------------------------- helpers
    def _slot_arg(self, slot: int) -> Slot:
        if not 0 <= slot < len(self._slots):
            raise ValueError(f"no slot {slot}; the reader has {len(self._slots)}")
        return self._slots[slot]

    def _start(self, slot: Slot, kind: Request, header: Header) -> int:
        """Make `slot` wait for the card: its answer goes to the message `header`."""
        assert slot.request is None
        token = self._next_token
        self._next_token = token + 1
        slot.request = kind
        slot.request_token = token
        slot.request_seq = header.seq
        slot.request_type = header.message_type
        self._pending[token] = slot
        return token

    def _take_pending(self, token: int) -> Slot | None:
        """The slot that waits on `token`, no longer tracked by token (the caller clears its request)."""
        slot = self._pending.pop(token, None)
        if slot is None:
            self._late_answers += 1
        return slot

    def _cancel(self, slot: Slot) -> None:
        token = slot.request_token
        del self._pending[token]
        slot.request = None
        self._events.append(Cancel(slot.index, token))

    def _send(self, data: bytes) -> None:
        self._events.append(BulkIn(data))

    def _send_slot_status(self, slot: Slot, seq: int) -> None:
        self._send(messages.slot_status(slot.index, seq, slot.icc_status, 0, slot.clock_status))

    def _send_parameters(self, slot: Slot, seq: int) -> None:
        self._send(messages.parameters(slot.index, seq, slot.icc_status, 0, slot.protocol, slot.parameters))

    def _fail(self, response_type: int, slot_number: int, seq: int, slot: Slot | None, error: int) -> None:
        # (the answer to most malformed input: no enum looked up, no call that can be avoided)
        if slot is None:
            status, clock, protocol = _ABSENT_FAILED, _STOPPED_L, 0
        else:
            slot.errors += 1
            status, clock, protocol = slot.icc_status | _FAILED_BITS, slot.clock_status, slot.protocol
        config = self._config
        self._events.append(BulkIn(messages.error_response(
            response_type, slot_number, seq, status, int(error), clock_status=clock, protocol=protocol,
            clock_khz=config.default_clock_khz, rate_bps=config.data_rate_bps)))

    def _fail_command(self, slot: Slot, header: Header, error: int) -> None:
        self._fail(RESPONSE_TYPE[header.message_type], slot.index, header.seq, slot, error)

    def _fail_pending(self, slot: Slot, error: int) -> None:
        """Answer the message of the slot's last card request (taken or cancelled) with `error`."""
        self._fail(RESPONSE_TYPE[slot.request_type], slot.index, slot.request_seq, slot, error)

    def _framing_error(self, header: Header) -> None:
        """Answer a message whose dwLength cannot be honoured (§6.2.6: bError 1)."""
        response_type = RESPONSE_TYPE.get(header.message_type, _SLOT_STATUS)
        slot = self._slots[header.slot] if header.slot < len(self._slots) else None
        if slot is not None and header.message_type == _XFR_BLOCK and slot.request is None:
            slot.drop_chain()
        self._fail(response_type, header.slot, header.seq, slot, _DW_LENGTH)

    def _interrupt_waiting(self) -> bool:
        # (before and after every presence change and hardware error: a loop, not a generator)
        if self._hardware_errors:
            return True
        for slot in self._slots:
            if slot.changed:
                return True
        return False

    def _interrupt_queued(self, was_waiting: bool) -> None:
        """Emit InterruptPending if the interrupt queue went from empty to non-empty."""
        if not was_waiting and self._interrupt_waiting():
            self._events.append(InterruptPending())


#: The command table.  "fields" lists, for offsets 7..9, the allowed values; the
#: first offending offset is the bError (§6.2.6).  XfrBlock's offsets 7 (bBWI:
#: any value, there is no BWT to extend) and 8-9 (wLevelParameter, checked by
#: `slot.XFR_TRANSITIONS`) are not in the generic check.
_RULES: dict[int, _Rule] = {rule.message_type: rule for rule in (
    _Rule(MT.PC_to_RDR_IccPowerOn, Reader._icc_power_on,
          fields=((7, frozenset({0, 1, 2, 3})), (8, _ZERO), (9, _ZERO)), need=_Need.CARD),
    _Rule(MT.PC_to_RDR_IccPowerOff, Reader._icc_power_off),
    _Rule(MT.PC_to_RDR_GetSlotStatus, Reader._get_slot_status),
    _Rule(MT.PC_to_RDR_XfrBlock, Reader._xfr_block, length=None, fields=(), need=_Need.ACTIVE_CARD),
    _Rule(MT.PC_to_RDR_GetParameters, Reader._get_parameters, need=_Need.CARD),
    _Rule(MT.PC_to_RDR_ResetParameters, Reader._reset_parameters, need=_Need.CARD),
    _Rule(MT.PC_to_RDR_SetParameters, Reader._set_parameters, length=None,
          fields=((7, frozenset({0, 1})), (8, _ZERO), (9, _ZERO)), need=_Need.CARD),
    _Rule(MT.PC_to_RDR_Escape, None, length=None, fields=()),
    _Rule(MT.PC_to_RDR_IccClock, Reader._icc_clock,
          fields=((7, frozenset({0, 1})), (8, _ZERO), (9, _ZERO)), need=_Need.CARD),
    _Rule(MT.PC_to_RDR_T0APDU, None, fields=()),
    _Rule(MT.PC_to_RDR_Secure, None, length=None, fields=()),
    _Rule(MT.PC_to_RDR_Mechanical, None, fields=()),
    _Rule(MT.PC_to_RDR_Abort, Reader._abort_message),
    _Rule(MT.PC_to_RDR_SetDataRateAndClockFrequency, Reader._set_data_rate_and_clock_frequency, length=8),
)}
assert set(_RULES) == set(RESPONSE_TYPE)
#: With a PIN pad: offsets 7 (bBWI) any, 8-9 (wLevelParameter) 0 = the whole structure in one message,
#: checked by the handler.
_RULES_WITH_SECURE = dict(_RULES) | {MT.PC_to_RDR_Secure: _Rule(MT.PC_to_RDR_Secure, Reader._secure, length=None,
                                                               fields=(), need=_Need.ACTIVE_CARD)}
