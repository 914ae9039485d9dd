# SPDX-License-Identifier: GPL-3.0-or-later
"""The CCID reader as a sans-IO state machine (CCID rev 1.1, APDU level).

Bytes from bulk-OUT and ep0 class requests go in; `next_events()` gives back
bulk-IN messages, requests for the card engines and interrupt notifications.
There are no file descriptors, threads, tasks or clocks here: the adapter owns
the endpoints, the engines and the time-extension timers.

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
   the chaining table) -> the offset of the first bad byte;
8. no card for a command that needs one -> ICC_MUTE (0xFE), ICC status 2;
   card present but not activated on XfrBlock -> ICC_MUTE, ICC status 1.

Framing errors are found before a message is dispatched: a message cut short
by the end of a USB transfer, or a dwLength over dwMaxCCIDMessageLength - 10, is
answered with bError 1 (dwLength) and dropped.  An oversize message's payload
is skipped up to the end of the transfer without being stored.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import messages
from .atr import DEFAULT_FI_DI, DEFAULT_WI, Atr, AtrError, parse_atr
from .config import MAX_PENDING_HARDWARE_ERRORS, ReaderConfig
from .constants import (
    CCID_HEADER_SIZE,
    REQUEST_TYPE_CLASS_INTERFACE_IN,
    REQUEST_TYPE_CLASS_INTERFACE_OUT,
    RESPONSE_TYPE,
    ChainParameter,
    ClassRequest,
    ClockStatus,
    CommandStatus,
    FieldOffset,
    ICCStatus,
    LevelParameter,
    MessageType,
    Protocol,
    SlotError,
    make_status,
)
from .descriptor import ClassDescriptor
from .events import BulkIn, Cancel, Event, InterruptPending, PowerOff, PowerOn, Secure, Transmit
from .secure import SecureError, parse_secure

MT = MessageType

#: T=0 parameters before any ATR is known (ISO 7816-3 defaults, CCID §6.1.7).
DEFAULT_T0_PARAMETERS = bytes([DEFAULT_FI_DI, 0x00, 0x00, DEFAULT_WI, 0x00])


class _Chain(enum.Enum):
    """Where a slot is in XfrBlock chaining (§6.1.4, §6.2.1)."""

    IDLE = "idle"  # no chained command or response in progress
    COLLECTING = "collecting"  # got wLevelParameter 0x0001 (and maybe 0x0003s), waiting for 0x0002
    RESPONDING = "responding"  # sent bChainParameter 0x01/0x03, waiting for wLevelParameter 0x0010


class _Request(enum.Enum):
    """What a slot waits for from its card engine."""

    POWER_ON = "power-on"
    TRANSMIT = "transmit"
    SECURE = "secure"  # PC_to_RDR_Secure: the board collects a PIN, then the card answers


class _Need(enum.IntEnum):
    """What a command needs in the slot before it runs."""

    NOTHING = 0
    CARD = 1  # a card present (ICC status 0 or 1)
    ACTIVE_CARD = 2  # a card present and powered (ICC status 0)


_ZERO = frozenset({0})


@dataclass(frozen=True)
class _Rule:
    """How one PC_to_RDR message is checked and handled."""

    handler: str | None  # name of the Reader method; None = CMD_NOT_SUPPORTED
    length: int | None = 0  # required dwLength; None = variable, the handler checks
    fields: tuple[tuple[int, frozenset[int]], ...] = ((7, _ZERO), (8, _ZERO), (9, _ZERO))
    need: _Need = _Need.NOTHING


#: The command table.  "fields" lists, for offsets 7..9, the allowed values; the
#: first offending offset is the bError (§6.2.6).  XfrBlock's offsets 7 (bBWI:
#: any value, there is no BWT to extend) and 8-9 (wLevelParameter, checked by
#: `_XFR_TRANSITIONS`) are not in the generic check.
_RULES: dict[int, _Rule] = {
    MT.PC_to_RDR_IccPowerOn: _Rule(
        "_icc_power_on", fields=((7, frozenset({0, 1, 2, 3})), (8, _ZERO), (9, _ZERO)), need=_Need.CARD),
    MT.PC_to_RDR_IccPowerOff: _Rule("_icc_power_off"),
    MT.PC_to_RDR_GetSlotStatus: _Rule("_get_slot_status"),
    MT.PC_to_RDR_XfrBlock: _Rule("_xfr_block", length=None, fields=(), need=_Need.ACTIVE_CARD),
    MT.PC_to_RDR_GetParameters: _Rule("_get_parameters", need=_Need.CARD),
    MT.PC_to_RDR_ResetParameters: _Rule("_reset_parameters", need=_Need.CARD),
    MT.PC_to_RDR_SetParameters: _Rule(
        "_set_parameters", length=None, fields=((7, frozenset({0, 1})), (8, _ZERO), (9, _ZERO)),
        need=_Need.CARD),
    MT.PC_to_RDR_Escape: _Rule(None, length=None, fields=()),
    MT.PC_to_RDR_IccClock: _Rule(
        "_icc_clock", fields=((7, frozenset({0, 1})), (8, _ZERO), (9, _ZERO)), need=_Need.CARD),
    MT.PC_to_RDR_T0APDU: _Rule(None, fields=()),
    MT.PC_to_RDR_Secure: _Rule(None, length=None, fields=()),
    MT.PC_to_RDR_Mechanical: _Rule(None, fields=()),
    MT.PC_to_RDR_Abort: _Rule("_abort_message"),
    MT.PC_to_RDR_SetDataRateAndClockFrequency: _Rule("_set_data_rate_and_clock_frequency", length=8),
}
assert set(_RULES) == set(RESPONSE_TYPE)

#: PC_to_RDR_Secure when bPINSupport is set (§6.1.11): offsets 7 (bBWI) any, 8-9
#: (wLevelParameter) 0 = the whole structure in one message, checked by the handler.
_SECURE_RULE = _Rule("_secure", length=None, fields=(), need=_Need.ACTIVE_CARD)

#: XfrBlock chaining at extended APDU level (§6.1.4): (chain state, wLevelParameter)
#: -> handler.  A pair not in the table is answered with bError 8 (offset of
#: wLevelParameter) and drops any chain in progress.  A fresh command (0x0000 or
#: 0x0001) in the middle of a chain means the host gave up on it: the partial
#: command or the rest of the response is dropped and the new command runs.
_XFR_TRANSITIONS: dict[tuple[_Chain, int], str] = {
    (_Chain.IDLE, LevelParameter.SINGLE): "_xfr_single",
    (_Chain.IDLE, LevelParameter.BEGIN): "_xfr_begin",
    (_Chain.COLLECTING, LevelParameter.CONTINUE): "_xfr_continue",
    (_Chain.COLLECTING, LevelParameter.END): "_xfr_end",
    (_Chain.COLLECTING, LevelParameter.SINGLE): "_xfr_single",
    (_Chain.COLLECTING, LevelParameter.BEGIN): "_xfr_begin",
    (_Chain.RESPONDING, LevelParameter.NEXT_RESPONSE): "_xfr_next_response",
    (_Chain.RESPONDING, LevelParameter.SINGLE): "_xfr_single",
    (_Chain.RESPONDING, LevelParameter.BEGIN): "_xfr_begin",
}


@dataclass
class _Pending:
    """A card request the host is waiting on."""

    token: int
    slot: int
    kind: _Request
    seq: int  # bSeq of the PC_to_RDR message to answer
    message_type: int


@dataclass
class _Slot:
    index: int
    present: bool = False
    powered: bool = False
    #: The engine may be powered (a PowerOn went out and no PowerOff since).
    engine_on: bool = False
    #: bmSlotICCState "changed" bit (§6.3.1), cleared when reported.
    changed: bool = False
    atr: Atr | None = None
    protocol: int = Protocol.T0
    parameters: bytes = DEFAULT_T0_PARAMETERS
    pending: _Pending | None = None
    chain: _Chain = _Chain.IDLE
    command: bytearray = field(default_factory=bytearray)
    response: bytes = b""
    response_pos: int = 0
    #: Abort pairing (§5.3.1): bSeq of the ep0 ABORT request seen, and bSeq of the
    #: PC_to_RDR_Abort message still waiting for its answer.
    abort_request_seq: int | None = None
    abort_message_seq: int | None = None
    last_seq: int = 0
    commands: int = 0
    errors: int = 0
    time_extensions: int = 0

    @property
    def aborting(self) -> bool:
        return self.abort_request_seq is not None or self.abort_message_seq is not None

    @property
    def icc_status(self) -> ICCStatus:
        if not self.present:
            return ICCStatus.ABSENT
        return ICCStatus.ACTIVE if self.powered else ICCStatus.INACTIVE

    @property
    def clock_status(self) -> ClockStatus:
        # ISO 7816-3 §6.4 deactivation leaves CLK at state L.
        return ClockStatus.RUNNING if self.powered else ClockStatus.STOPPED_L

    def drop_chain(self) -> None:
        self.chain = _Chain.IDLE
        self.command = bytearray()
        self.response = b""
        self.response_pos = 0

    def reset_parameters(self) -> None:
        if self.atr is None:
            self.protocol, self.parameters = Protocol.T0, DEFAULT_T0_PARAMETERS
        else:
            self.protocol = self.atr.default_protocol
            self.parameters = self.atr.parameters(self.protocol)


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
        self._descriptor = ClassDescriptor.from_config(config)
        self._rules = dict(_RULES)
        if config.pin_support:
            self._rules[MT.PC_to_RDR_Secure] = _SECURE_RULE
        self._slots = [_Slot(i) for i in range(config.slots)]
        self._events: list[Event] = []
        self._rx = bytearray()  # bulk-OUT bytes of the message being assembled
        self._discarding = False  # skipping an oversize message's payload up to the transfer end
        self._pending: dict[int, _Pending] = {}
        self._next_token = 1
        self._hardware_errors: collections.deque[bytes] = collections.deque()
        self._messages = 0
        self._framing_errors = 0
        self._discarded_bytes = 0
        self._late_answers = 0
        self._dropped_hardware_errors = 0

    # ------------------------------------------------------------------ output
    @property
    def descriptor(self) -> ClassDescriptor:
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
        if any(slot.changed for slot in self._slots):
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
        return {slot.index for slot in self._slots if slot.pending is not None}

    def slot_state(self, slot: int) -> SlotState:
        s = self._slot_arg(slot)
        return SlotState(
            slot=s.index, present=s.present, powered=s.powered, busy=s.pending is not None,
            aborting=s.aborting, icc_status=s.icc_status, protocol=s.protocol,
            atr=None if s.atr is None else s.atr.raw, chaining=s.chain.value,
            commands=s.commands, errors=s.errors, time_extensions=s.time_extensions)

    @property
    def counters(self) -> ReaderCounters:
        return ReaderCounters(self._messages, self._framing_errors, self._discarded_bytes,
                              self._late_answers, self._dropped_hardware_errors)

    # ------------------------------------------------------ input: USB side
    def receive_bulk_out(self, data: bytes, *, transfer_end: bool = False) -> None:
        """Feed bulk-OUT bytes as they arrive; messages are framed by dwLength.

        `transfer_end` says the USB transfer ended after these bytes (short
        packet): a partial message left then is answered with bError 1 and
        dropped, and skipping an oversize payload stops there.
        """
        if self._discarding:
            self._discarded_bytes += len(data)
            if transfer_end:
                self._discarding = False
            return
        self._rx += data
        rx = self._rx
        pos = 0
        max_payload = self._config.max_payload
        while len(rx) - pos >= CCID_HEADER_SIZE:
            header = messages.parse_header(memoryview(rx)[pos:pos + CCID_HEADER_SIZE])
            if header.length > max_payload:
                # Never buffer it: answer now, skip the payload up to the transfer end.
                self._framing_error(header)
                self._discarded_bytes += len(rx) - pos - CCID_HEADER_SIZE
                pos = len(rx)
                self._discarding = not transfer_end
                break
            end = pos + CCID_HEADER_SIZE + header.length
            if end > len(rx):
                break
            command = messages.Command(header, bytes(rx[pos + CCID_HEADER_SIZE:end]))
            pos = end
            self._messages += 1
            self._dispatch(command)
        del rx[:pos]
        if transfer_end and rx:
            if len(rx) >= 7:  # bMessageType, dwLength, bSlot and bSeq are known
                padded = bytes(rx[:CCID_HEADER_SIZE]).ljust(CCID_HEADER_SIZE, b"\0")
                self._framing_error(messages.parse_header(padded))
            else:
                self._discarded_bytes += len(rx)
            rx.clear()

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
        self._rx.clear()
        self._discarding = False
        for slot in self._slots:
            if slot.pending is not None:
                self._cancel(slot)
            slot.drop_chain()
            slot.abort_request_seq = slot.abort_message_seq = None
            slot.powered = False
            slot.reset_parameters()
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
        with self._interrupt_watch():
            s.present = present
            s.changed = True
            s.powered = False
            if not present:
                if s.pending is not None:
                    pending = s.pending
                    self._cancel(s)
                    self._fail_pending(s, pending, SlotError.ICC_MUTE)
                s.drop_chain()
                s.engine_on = False
                s.atr = None
            s.reset_parameters()

    def card_answer(self, token: int, data: bytes) -> None:
        """The engine answered request `token`: an ATR for PowerOn, a response APDU for Transmit."""
        pending = self._take_pending(token)
        if pending is None:
            return
        slot = self._slots[pending.slot]
        data = bytes(data)
        if pending.kind is _Request.POWER_ON:
            try:
                atr = parse_atr(data)
            except AtrError as exc:
                slot.powered = False
                self._fail_pending(slot, pending, exc.error)
                # The engine is on but its card is unusable: switch it off again.
                slot.engine_on = False
                self._events.append(PowerOff(slot.index))
                return
            slot.powered = True
            slot.atr = atr
            slot.reset_parameters()
            self._send(messages.data_block(slot.index, pending.seq, make_status(slot.icc_status), data=data))
            return
        if len(data) > self._config.max_response_apdu_length:
            self._fail_pending(slot, pending, SlotError.HW_ERROR)
            return
        self._send_response_apdu(slot, pending.seq, data)

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
        pending = self._take_pending(token)
        if pending is None:
            return
        slot = self._slots[pending.slot]
        if pending.kind is _Request.POWER_ON:
            slot.powered = False
        if absent:
            self.set_card_present(slot.index, False)
        self._fail_pending(slot, pending, error)

    def time_extension(self, slot: int) -> None:
        """The adapter's timer fired: ask the host for more time (§6.2.6, bStatus 0x80).

        Sent only for a pending XfrBlock or Secure (CCID_Receive loops on both):
        libccid's CmdPowerOn does not know time extensions (see
        `config.TIME_EXTENSION_INTERVAL`).  bError is the BWT multiplier, 1:
        libccid then waits its normal timeout again.
        """
        s = self._slot_arg(slot)
        pending = s.pending
        if pending is None or pending.kind is _Request.POWER_ON or s.aborting:
            return
        s.time_extensions += 1
        status = make_status(s.icc_status, CommandStatus.TIME_EXTENSION)
        self._send(messages.data_block(s.index, pending.seq, status, 1))

    def hardware_error(self, slot: int, code: int) -> None:
        """Queue an RDR_to_PC_HardwareError (§6.3.2) for `slot`, with the slot's last bSeq."""
        s = self._slot_arg(slot)
        if not 0 <= code <= 0xFF:
            raise ValueError(f"bHardwareErrorCode must be one byte, not {code}")
        with self._interrupt_watch():
            if len(self._hardware_errors) >= MAX_PENDING_HARDWARE_ERRORS:
                self._hardware_errors.popleft()
                self._dropped_hardware_errors += 1
            self._hardware_errors.append(messages.hardware_error(s.index, s.last_seq, code))

    # ------------------------------------------------------------ dispatching
    def _dispatch(self, command: messages.Command) -> None:
        response_type = RESPONSE_TYPE.get(command.message_type)
        if response_type is None:
            slot = self._slots[command.slot] if command.slot < len(self._slots) else None
            self._fail(MT.RDR_to_PC_SlotStatus, command.slot, command.seq, slot, SlotError.CMD_NOT_SUPPORTED)
            return
        if command.slot >= len(self._slots):
            self._fail(response_type, command.slot, command.seq, None, FieldOffset.B_SLOT)
            return
        slot = self._slots[command.slot]
        slot.last_seq = command.seq
        slot.commands += 1
        rule = self._rules[command.message_type]
        is_abort = command.message_type == MT.PC_to_RDR_Abort
        error = self._check(slot, command, rule, is_abort)
        if error is not None:
            if command.message_type == MT.PC_to_RDR_XfrBlock and error not in (
                    SlotError.CMD_SLOT_BUSY, SlotError.CMD_ABORTED):
                slot.drop_chain()
            self._fail(response_type, command.slot, command.seq, slot, error)
            return
        assert rule.handler is not None
        handler: Callable[[_Slot, messages.Command], None] = getattr(self, rule.handler)
        handler(slot, command)

    def _check(self, slot: _Slot, command: messages.Command, rule: _Rule, is_abort: bool) -> int | None:
        """The bError for `command` in `slot`'s current state, or None if it may run."""
        if slot.aborting and not is_abort:
            return SlotError.CMD_ABORTED
        if rule.handler is None:
            return SlotError.CMD_NOT_SUPPORTED
        if slot.pending is not None and not is_abort:
            return SlotError.CMD_SLOT_BUSY
        if rule.length is not None and command.length != rule.length:
            return FieldOffset.DW_LENGTH
        for offset, allowed in rule.fields:
            if command.field(offset) not in allowed:
                return offset
        if rule.need >= _Need.CARD and not slot.present:
            return SlotError.ICC_MUTE
        if rule.need >= _Need.ACTIVE_CARD and not slot.powered:
            return SlotError.ICC_MUTE
        return None

    # -------------------------------------------------------------- handlers
    def _icc_power_on(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.1.  The card is (re)activated by the engine; any chain dies with it.
        slot.drop_chain()
        slot.powered = False
        slot.engine_on = True
        token = self._start(slot, _Request.POWER_ON, command)
        self._events.append(PowerOn(slot.index, token))

    def _icc_power_off(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.2.  Answered at once; also fine with no card (ICC status 2, no error).
        slot.drop_chain()
        slot.powered = False
        if slot.engine_on:
            slot.engine_on = False
            self._events.append(PowerOff(slot.index))
        self._send(messages.slot_status(slot.index, command.seq, make_status(slot.icc_status), 0,
                                        slot.clock_status))

    def _get_slot_status(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.3
        self._send(messages.slot_status(slot.index, command.seq, make_status(slot.icc_status), 0,
                                        slot.clock_status))

    def _get_parameters(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.5
        self._send_parameters(slot, command.seq)

    def _reset_parameters(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.6: back to the values from the ATR (or ISO defaults before any ATR).
        slot.reset_parameters()
        self._send_parameters(slot, command.seq)

    def _set_parameters(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.7.  Nothing to program (dwFeatures 0x40: the reader negotiates), so
        # the structure is checked and stored for GetParameters.  Checked bytes
        # (bError = offset in the message): bmTCCKST0 in {00,02} / bmTCCKST1 in
        # 10..13 (11), bClockStop 0..3 (14), T=1 bIFSC 1..FE (15), T=1 bNadValue 0 (16:
        # we do not support NAD, dwFeatures 0x200 is clear).  Fi/Di, guard time and
        # waiting integers take any value.
        protocol = command.field(7)
        data = command.data
        if len(data) != (5 if protocol == Protocol.T0 else 7):
            self._fail_command(slot, command, FieldOffset.DW_LENGTH)
            return
        if protocol == Protocol.T0:
            bad = [(11, data[1] in (0x00, 0x02)), (14, data[4] <= 3)]
        else:
            bad = [(11, 0x10 <= data[1] <= 0x13), (14, data[4] <= 3), (15, 1 <= data[5] <= 0xFE),
                   (16, data[6] == 0)]
        for offset, ok in bad:
            if not ok:
                self._fail_command(slot, command, offset)
                return
        slot.protocol = protocol
        slot.parameters = bytes(data)
        self._send_parameters(slot, command.seq)

    def _icc_clock(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.9: accepted and ignored; an emulated card has no clock to stop.
        self._send(messages.slot_status(slot.index, command.seq, make_status(slot.icc_status), 0,
                                        slot.clock_status))

    def _set_data_rate_and_clock_frequency(self, slot: _Slot, command: messages.Command) -> None:
        # §6.1.14: the reader answers with the values it actually applies, which are
        # always our single clock and rate (bNumClockSupported = bNumDataRatesSupported = 1).
        self._send(messages.data_rate_and_clock_frequency(
            slot.index, command.seq, make_status(slot.icc_status), 0,
            self._config.default_clock_khz, self._config.data_rate_bps))

    # --- XfrBlock and chaining (§6.1.4, §6.2.1) ---
    def _xfr_block(self, slot: _Slot, command: messages.Command) -> None:
        handler = _XFR_TRANSITIONS.get((slot.chain, command.level_parameter))
        if handler is None:
            slot.drop_chain()
            self._fail_command(slot, command, FieldOffset.W_LEVEL_PARAMETER)
            return
        getattr(self, handler)(slot, command)

    def _xfr_single(self, slot: _Slot, command: messages.Command) -> None:
        slot.drop_chain()
        self._transmit(slot, command, command.data)

    def _xfr_begin(self, slot: _Slot, command: messages.Command) -> None:
        slot.drop_chain()
        slot.chain = _Chain.COLLECTING
        slot.command = bytearray(command.data)
        self._more_command_expected(slot, command)

    def _xfr_continue(self, slot: _Slot, command: messages.Command) -> None:
        if self._collect(slot, command):
            self._more_command_expected(slot, command)

    def _xfr_end(self, slot: _Slot, command: messages.Command) -> None:
        if self._collect(slot, command):
            apdu = bytes(slot.command)
            slot.drop_chain()
            self._transmit(slot, command, apdu)

    def _collect(self, slot: _Slot, command: messages.Command) -> bool:
        if len(slot.command) + len(command.data) > self._config.max_command_apdu_length:
            # Over MAX_COMMAND_APDU_LENGTH: cannot be a real APDU; forget the chain.
            slot.drop_chain()
            self._fail_command(slot, command, FieldOffset.DW_LENGTH)
            return False
        slot.command += command.data
        return True

    def _more_command_expected(self, slot: _Slot, command: messages.Command) -> None:
        # libccid (CmdXfrBlockAPDU_extended) reads one empty DataBlock after each
        # non-final block and ignores its bChainParameter; §6.2.1 names 0x10 for it.
        self._send(messages.data_block(slot.index, command.seq, make_status(slot.icc_status), 0,
                                       ChainParameter.EXPECT_MORE_COMMAND))

    def _xfr_next_response(self, slot: _Slot, command: messages.Command) -> None:
        if command.length != 0:
            slot.drop_chain()
            self._fail_command(slot, command, FieldOffset.DW_LENGTH)
            return
        self._send_response_chunk(slot, command.seq)

    def _transmit(self, slot: _Slot, command: messages.Command, apdu: bytes) -> None:
        # ISO 7816-4 §5.1: a command APDU has at least CLA INS P1 P2.
        if len(apdu) < 4:
            self._fail_command(slot, command, FieldOffset.DW_LENGTH)
            return
        token = self._start(slot, _Request.TRANSMIT, command)
        self._events.append(Transmit(slot.index, token, apdu))

    # --- Secure (§6.1.11): the PIN pad ---
    def _secure(self, slot: _Slot, command: messages.Command) -> None:
        if command.level_parameter != 0:
            # wLevelParameter 0: the structure begins and ends in this message (no chaining).
            self._fail_command(slot, command, FieldOffset.W_LEVEL_PARAMETER)
            return
        try:
            request = parse_secure(command.data)
        except SecureError as e:
            self._fail_command(slot, command, e.offset)
            return
        slot.drop_chain()
        token = self._start(slot, _Request.SECURE, command)
        self._events.append(Secure(slot.index, token, request))

    def _send_response_apdu(self, slot: _Slot, seq: int, data: bytes) -> None:
        if len(data) <= self._config.max_payload:
            self._send(messages.data_block(slot.index, seq, make_status(slot.icc_status), 0,
                                           ChainParameter.SINGLE, data))
            return
        slot.chain = _Chain.RESPONDING
        slot.response = data
        slot.response_pos = 0
        self._send_response_chunk(slot, seq)

    def _send_response_chunk(self, slot: _Slot, seq: int) -> None:
        start = slot.response_pos
        end = min(start + self._config.max_payload, len(slot.response))
        chunk = slot.response[start:end]
        if end == len(slot.response):
            chain = ChainParameter.END
            slot.drop_chain()
        else:
            chain = ChainParameter.BEGIN if start == 0 else ChainParameter.CONTINUE
            slot.response_pos = end
        self._send(messages.data_block(slot.index, seq, make_status(slot.icc_status), 0, chain, chunk))

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
    def _abort_request(self, slot: _Slot, seq: int) -> None:
        self._stop_for_abort(slot)
        if slot.abort_message_seq == seq:
            self._finish_abort(slot, seq)
        else:
            slot.abort_request_seq = seq

    def _abort_message(self, slot: _Slot, command: messages.Command) -> None:
        self._stop_for_abort(slot)
        if slot.abort_request_seq == command.seq:
            self._finish_abort(slot, command.seq)
            return
        if slot.abort_message_seq is not None:
            self._fail(MT.RDR_to_PC_SlotStatus, slot.index, slot.abort_message_seq, slot,
                       SlotError.CMD_ABORTED)
        slot.abort_message_seq = command.seq

    def _stop_for_abort(self, slot: _Slot) -> None:
        if slot.pending is not None:
            pending = slot.pending
            self._cancel(slot)
            if pending.kind is _Request.POWER_ON:
                slot.powered = False
            self._fail_pending(slot, pending, SlotError.CMD_ABORTED)
        slot.drop_chain()

    def _finish_abort(self, slot: _Slot, seq: int) -> None:
        slot.abort_request_seq = slot.abort_message_seq = None
        self._send(messages.slot_status(slot.index, seq, make_status(slot.icc_status), 0, slot.clock_status))

    # -------------------------------------------------------------- helpers
    def _slot_arg(self, slot: int) -> _Slot:
        if not 0 <= slot < len(self._slots):
            raise ValueError(f"no slot {slot}; the reader has {len(self._slots)}")
        return self._slots[slot]

    def _start(self, slot: _Slot, kind: _Request, command: messages.Command) -> int:
        assert slot.pending is None
        token = self._next_token
        self._next_token += 1
        pending = _Pending(token, slot.index, kind, command.seq, command.message_type)
        slot.pending = pending
        self._pending[token] = pending
        return token

    def _take_pending(self, token: int) -> _Pending | None:
        pending = self._pending.pop(token, None)
        if pending is None:
            self._late_answers += 1
            return None
        slot = self._slots[pending.slot]
        assert slot.pending is pending
        slot.pending = None
        return pending

    def _cancel(self, slot: _Slot) -> None:
        pending = slot.pending
        assert pending is not None
        del self._pending[pending.token]
        slot.pending = None
        self._events.append(Cancel(slot.index, pending.token))

    def _send(self, data: bytes) -> None:
        self._events.append(BulkIn(data))

    def _send_parameters(self, slot: _Slot, seq: int) -> None:
        self._send(messages.parameters(slot.index, seq, make_status(slot.icc_status), 0, slot.protocol,
                                       slot.parameters))

    def _fail(self, response_type: int, slot_number: int, seq: int, slot: _Slot | None, error: int) -> None:
        icc = ICCStatus.ABSENT if slot is None else slot.icc_status
        if slot is not None:
            slot.errors += 1
        self._send(messages.error_response(
            response_type, slot_number, seq, make_status(icc, CommandStatus.FAILED), int(error),
            clock_status=ClockStatus.STOPPED_L if slot is None else slot.clock_status,
            protocol=0 if slot is None else slot.protocol,
            clock_khz=self._config.default_clock_khz, rate_bps=self._config.data_rate_bps))

    def _fail_command(self, slot: _Slot, command: messages.Command, error: int) -> None:
        self._fail(RESPONSE_TYPE[command.message_type], slot.index, command.seq, slot, error)

    def _fail_pending(self, slot: _Slot, pending: _Pending, error: int) -> None:
        self._fail(RESPONSE_TYPE[pending.message_type], slot.index, pending.seq, slot, error)

    def _framing_error(self, header: messages.Header) -> None:
        """Answer a message whose dwLength cannot be honoured (§6.2.6: bError 1)."""
        self._framing_errors += 1
        response_type = RESPONSE_TYPE.get(header.message_type, MT.RDR_to_PC_SlotStatus)
        slot = self._slots[header.slot] if header.slot < len(self._slots) else None
        if slot is not None and header.message_type == MT.PC_to_RDR_XfrBlock and slot.pending is None:
            slot.drop_chain()
        self._fail(response_type, header.slot, header.seq, slot, FieldOffset.DW_LENGTH)

    def _interrupt_waiting(self) -> bool:
        return bool(self._hardware_errors) or any(slot.changed for slot in self._slots)

    @contextlib.contextmanager
    def _interrupt_watch(self) -> Iterator[None]:
        """Emit InterruptPending if the interrupt queue goes from empty to non-empty."""
        before = self._interrupt_waiting()
        yield
        if not before and self._interrupt_waiting():
            self._events.append(InterruptPending())
