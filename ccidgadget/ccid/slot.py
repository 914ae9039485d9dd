# SPDX-License-Identifier: GPL-3.0-or-later
"""One slot of the reader: card and power state, the card request it waits on, XfrBlock chaining.

The reader (`reader.py`) checks and dispatches messages; what a slot remembers
between messages lives here.  XfrBlock chaining at extended APDU level (§6.1.4
for the command, §6.2.1 for the response) is a table, `XFR_TRANSITIONS`, from
(chain state, wLevelParameter) to a step of `Slot`.  A step returns either the
complete command APDU (bytes) for the card, or a `Reply` (bChainParameter and
abData of the RDR_to_PC_DataBlock that answers the message), or raises
`ChainError` with the bError to answer; the reader does the sending.

States (`Chain`):

- IDLE: no chained command or response in progress (the buffers are empty);
- COLLECTING: got wLevelParameter 0x0001 (and maybe 0x0003s), waiting for 0x0002;
- RESPONDING: sent bChainParameter 0x01/0x03, waiting for wLevelParameter 0x0010.
"""

from __future__ import annotations

import enum
from typing import Callable, Union

from .atr import DEFAULT_FI_DI, DEFAULT_WI, Atr
from .constants import ChainParameter, ClockStatus, FieldOffset, ICCStatus, LevelParameter, Protocol

#: T=0 parameters before any ATR is known (ISO 7816-3 defaults, CCID §6.1.7).
DEFAULT_T0_PARAMETERS = bytes([DEFAULT_FI_DI, 0x00, 0x00, DEFAULT_WI, 0x00])


class Chain(str, enum.Enum):
    """Where a slot is in XfrBlock chaining (§6.1.4, §6.2.1); see the module docstring."""

    # (a str mix-in: the transition table is looked up once per XfrBlock, and str hashes in C)
    IDLE = "idle"
    COLLECTING = "collecting"
    RESPONDING = "responding"


class Request(enum.Enum):
    """What a slot waits for from its card engine."""

    POWER_ON = "power-on"
    TRANSMIT = "transmit"
    SECURE = "secure"  # PC_to_RDR_Secure: the board collects a PIN, then the card answers


class ChainError(Exception):
    """An XfrBlock the chaining rules refuse; `offset` is its bError (§6.2.6).  The chain is dropped."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


#: bChainParameter and abData of the RDR_to_PC_DataBlock that answers an XfrBlock (§6.2.1).
Reply = tuple[int, Union[bytes, memoryview]]

_IDLE, _COLLECTING, _RESPONDING = Chain.IDLE, Chain.COLLECTING, Chain.RESPONDING
_ACTIVE, _INACTIVE, _ABSENT = ICCStatus.ACTIVE, ICCStatus.INACTIVE, ICCStatus.ABSENT
_RUNNING, _STOPPED_L = ClockStatus.RUNNING, ClockStatus.STOPPED_L
_SINGLE, _BEGIN, _END, _CONTINUE = (int(ChainParameter.SINGLE), int(ChainParameter.BEGIN),
                                    int(ChainParameter.END), int(ChainParameter.CONTINUE))
# libccid (CmdXfrBlockAPDU_extended) reads one empty DataBlock after each non-final
# block and ignores its bChainParameter; §6.2.1 names 0x10 for it.
_MORE_COMMAND: Reply = (int(ChainParameter.EXPECT_MORE_COMMAND), b"")


class Slot:
    """The state of one slot.  `max_payload` and `max_command` are the reader's limits."""

    __slots__ = (
        "index", "max_payload", "max_command", "present", "powered", "engine_on", "changed", "atr",
        "atr_defaults", "protocol", "parameters", "request", "request_token", "request_seq", "request_type", "chain",
        "command", "response", "response_pos", "abort_request_seq", "abort_message_seq", "last_seq",
        "commands", "errors", "time_extensions")

    def __init__(self, index: int, max_payload: int, max_command: int) -> None:
        self.index = index
        self.max_payload = max_payload  # largest abData in one bulk message
        self.max_command = max_command  # largest command APDU chaining may build
        self.present = False
        self.powered = False
        #: The engine may be powered (a PowerOn went out and no PowerOff since).
        self.engine_on = False
        #: bmSlotICCState "changed" bit (§6.3.1), cleared when reported.
        self.changed = False
        self.atr: Atr | None = None  # set through set_atr()
        #: (bProtocolNum, abProtocolDataStructure) the ATR implies, worked out once per ATR.
        self.atr_defaults: tuple[int, bytes] = (Protocol.T0, DEFAULT_T0_PARAMETERS)
        self.protocol: int = Protocol.T0
        self.parameters = DEFAULT_T0_PARAMETERS
        #: The card request the host waits on (None: the slot is not busy), its token, and the
        #: bSeq and bMessageType of the PC_to_RDR message its answer goes to.
        self.request: Request | None = None
        self.request_token = 0
        self.request_seq = 0
        self.request_type = 0
        self.chain = _IDLE
        self.command = bytearray()  # COLLECTING: the command APDU so far
        self.response: bytes = b""  # RESPONDING: the whole response APDU ...
        self.response_pos = 0  # ... and how much of it went out
        #: Abort pairing (§5.3.1): bSeq of the ep0 ABORT request seen, and bSeq of the
        #: PC_to_RDR_Abort message still waiting for its answer.
        self.abort_request_seq: int | None = None
        self.abort_message_seq: int | None = None
        self.last_seq = 0
        self.commands = 0
        self.errors = 0
        self.time_extensions = 0

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self.request is not None

    @property
    def aborting(self) -> bool:
        return self.abort_request_seq is not None or self.abort_message_seq is not None

    @property
    def icc_status(self) -> ICCStatus:
        """bmICCStatus (§6.2.6); also bStatus of a processed command."""
        if not self.present:
            return _ABSENT
        return _ACTIVE if self.powered else _INACTIVE

    @property
    def clock_status(self) -> ClockStatus:
        # ISO 7816-3 §6.4 deactivation leaves CLK at state L.
        return _RUNNING if self.powered else _STOPPED_L

    def set_atr(self, atr: Atr | None) -> None:
        """The card's ATR (None: no card, or not powered since it came)."""
        self.atr = atr
        if atr is None:
            self.atr_defaults = (Protocol.T0, DEFAULT_T0_PARAMETERS)
        else:
            protocol = atr.default_protocol
            self.atr_defaults = (protocol, atr.parameters(protocol))

    def reset_parameters(self) -> None:
        """Protocol and parameters back to the ATR's (or ISO's defaults before any ATR), §6.1.6."""
        self.protocol, self.parameters = self.atr_defaults

    def drop_chain(self) -> None:
        """Forget a chained command or response in progress."""
        if self.chain is not _IDLE:  # IDLE means the buffers are empty already
            self.chain = _IDLE
            self.command = bytearray()
            self.response = b""
            self.response_pos = 0

    # ------------------------------------------- XfrBlock steps (XFR_TRANSITIONS)
    def xfr_single(self, data: bytes) -> bytes:
        """wLevelParameter 0x0000: the whole command APDU; a chain in progress is given up."""
        if self.chain is not _IDLE:
            self.drop_chain()
        return data

    def xfr_begin(self, data: bytes) -> Reply:
        """0x0001: the first block of a command APDU; a chain in progress is given up."""
        self.drop_chain()
        self.chain = _COLLECTING
        self.command = bytearray(data)
        return _MORE_COMMAND

    def xfr_continue(self, data: bytes) -> Reply:
        """0x0003: a middle block."""
        self._collect(data)
        return _MORE_COMMAND

    def xfr_end(self, data: bytes) -> bytes:
        """0x0002: the last block; the command APDU is complete."""
        self._collect(data)
        apdu = bytes(self.command)
        self.drop_chain()
        return apdu

    def xfr_next_response(self, data: bytes) -> Reply:
        """0x0010 (with empty abData): the host wants the next block of the response APDU."""
        if data:
            self.drop_chain()
            raise ChainError(FieldOffset.DW_LENGTH)
        return self._next_block()

    def _collect(self, data: bytes) -> None:
        if len(self.command) + len(data) > self.max_command:
            # Over the command APDU limit: cannot be a real APDU; forget the chain.
            self.drop_chain()
            raise ChainError(FieldOffset.DW_LENGTH)
        self.command += data

    # ------------------------------------------------------------- responses
    def respond(self, rapdu: bytes) -> Reply:
        """The DataBlock that carries response APDU `rapdu`: all of it, or its first block (§6.2.1)."""
        if len(rapdu) <= self.max_payload:
            return _SINGLE, rapdu
        self.chain = _RESPONDING
        self.response = rapdu
        self.response_pos = 0
        return self._next_block()

    def _next_block(self) -> Reply:
        start = self.response_pos
        response = self.response
        end = min(start + self.max_payload, len(response))
        block = memoryview(response)[start:end]
        if end == len(response):
            self.drop_chain()
            return _END, block
        self.response_pos = end
        return (_BEGIN if start == 0 else _CONTINUE), block


#: XfrBlock chaining at extended APDU level (§6.1.4): (chain state, wLevelParameter)
#: -> step.  A pair not in the table is answered with bError 8 (offset of
#: wLevelParameter) and drops any chain in progress.  A fresh command (0x0000 or
#: 0x0001) in the middle of a chain means the host gave up on it: the partial
#: command or the rest of the response is dropped and the new command runs.
XFR_TRANSITIONS: dict[tuple[Chain, int], Callable[[Slot, bytes], Union[bytes, Reply]]] = {
    (Chain.IDLE, LevelParameter.SINGLE): Slot.xfr_single,
    (Chain.IDLE, LevelParameter.BEGIN): Slot.xfr_begin,
    (Chain.COLLECTING, LevelParameter.CONTINUE): Slot.xfr_continue,
    (Chain.COLLECTING, LevelParameter.END): Slot.xfr_end,
    (Chain.COLLECTING, LevelParameter.SINGLE): Slot.xfr_single,
    (Chain.COLLECTING, LevelParameter.BEGIN): Slot.xfr_begin,
    (Chain.RESPONDING, LevelParameter.NEXT_RESPONSE): Slot.xfr_next_response,
    (Chain.RESPONDING, LevelParameter.SINGLE): Slot.xfr_single,
    (Chain.RESPONDING, LevelParameter.BEGIN): Slot.xfr_begin,
}
