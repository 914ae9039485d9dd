# SPDX-License-Identifier: GPL-3.0-or-later
"""Codec for CCID bulk and interrupt messages (CCID rev 1.1 §6).

Parsing reads the fixed 10-byte header first (`parse_header`, and so
dwLength), so that the framer never buffers a payload it will reject; abData
travels beside the `Header` as plain bytes.  Builders return `bytes` ready for
the bulk-IN or interrupt-IN endpoint.  Everything here runs once per message:
the structs are built once and `Header` is a tuple.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from .constants import (
    CCID_HEADER_SIZE,
    ClockStatus,
    MessageType,
)

#: PC_to_RDR header: bMessageType dwLength bSlot bSeq + 3 message-specific bytes (fields of `Header`).
HEADER = struct.Struct("<BIBBBBB")
_RESPONSE_HEADER = struct.Struct("<BIBBBBB")  # ... bStatus bError + 1 message-specific byte
_DATA_RATE_AND_CLOCK = struct.Struct("<II")  # dwClockFrequency dwDataRate (§6.2.5)
assert HEADER.size == CCID_HEADER_SIZE == _RESPONSE_HEADER.size

_DATA_BLOCK = MessageType.RDR_to_PC_DataBlock.value
_SLOT_STATUS = MessageType.RDR_to_PC_SlotStatus.value
_PARAMETERS = MessageType.RDR_to_PC_Parameters.value
_ESCAPE = MessageType.RDR_to_PC_Escape.value
_DATA_RATE_AND_CLOCK_FREQUENCY = MessageType.RDR_to_PC_DataRateAndClockFrequency.value


class Header(NamedTuple):
    """The 10-byte header every PC_to_RDR message starts with (§6.1).

    Offsets 7, 8 and 9 are message-specific; `field(offset)` reads one of them
    by its offset in the message, the way §6.2.6 names a bad field in bError.
    """

    message_type: int
    length: int  # dwLength: size of abData, header excluded
    slot: int
    seq: int
    b7: int
    b8: int
    b9: int

    def field(self, offset: int) -> int:
        """Byte at `offset` (7, 8 or 9) of the message."""
        return self[offset - 3]  # offsets 7..9 are tuple items 4..6

    @property
    def level_parameter(self) -> int:
        """wLevelParameter of PC_to_RDR_XfrBlock, offsets 8-9 (§6.1.4)."""
        return self.b8 | self.b9 << 8


_header_from = tuple.__new__  # Header(*fields) without the per-field Python call


def parse_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Decode the 10 bytes of `buf` at `offset`; the caller guarantees they are there."""
    return _header_from(Header, HEADER.unpack_from(buf, offset))


def encode_command(message_type: int, slot: int, seq: int, specific: bytes = b"\0\0\0",
                   data: bytes = b"") -> bytes:
    """Build a PC_to_RDR message (for tools and the fuzz corpus; the tests build theirs by hand)."""
    return HEADER.pack(message_type, len(data), slot, seq, *specific) + data


# --- RDR_to_PC (§6.2) --------------------------------------------------------

_pack_response = _RESPONSE_HEADER.pack


def _response(message_type: int, slot: int, seq: int, status: int, error: int, specific: int,
              data: bytes | memoryview = b"") -> bytes:
    return _pack_response(message_type, len(data), slot, seq, status, error, specific) + data


def data_block(slot: int, seq: int, status: int, error: int = 0, chain: int = 0,
               data: bytes | memoryview = b"") -> bytes:
    """RDR_to_PC_DataBlock 0x80 (§6.2.1); offset 9 is bChainParameter.  `data` may be a view."""
    # Once per XfrBlock answer: packed here rather than through _response.
    return _pack_response(_DATA_BLOCK, len(data), slot, seq, status, error, chain) + data


def slot_status(slot: int, seq: int, status: int, error: int = 0,
                clock_status: int = ClockStatus.RUNNING) -> bytes:
    """RDR_to_PC_SlotStatus 0x81 (§6.2.2); offset 9 is bClockStatus, dwLength is 0."""
    return _response(_SLOT_STATUS, slot, seq, status, error, clock_status)


def parameters(slot: int, seq: int, status: int, error: int = 0, protocol: int = 0, data: bytes = b"") -> bytes:
    """RDR_to_PC_Parameters 0x82 (§6.2.3); offset 9 is bProtocolNum, abData the T=0/T=1 structure."""
    return _response(_PARAMETERS, slot, seq, status, error, protocol, data)


def escape(slot: int, seq: int, status: int, error: int = 0, data: bytes = b"") -> bytes:
    """RDR_to_PC_Escape 0x83 (§6.2.4); offset 9 is RFU."""
    return _response(_ESCAPE, slot, seq, status, error, 0, data)


def data_rate_and_clock_frequency(slot: int, seq: int, status: int, error: int, clock_khz: int,
                                  rate_bps: int) -> bytes:
    """RDR_to_PC_DataRateAndClockFrequency 0x84 (§6.2.5): dwLength 8, dwClockFrequency, dwDataRate."""
    return _response(_DATA_RATE_AND_CLOCK_FREQUENCY, slot, seq, status, error, 0,
                     _DATA_RATE_AND_CLOCK.pack(clock_khz, rate_bps))


def notify_slot_change(slot_bits: bytes) -> bytes:
    """RDR_to_PC_NotifySlotChange 0x50 (§6.3.1): bmSlotICCState, 2 bits per slot, LSB first."""
    return bytes([MessageType.RDR_to_PC_NotifySlotChange]) + slot_bits


def hardware_error(slot: int, seq: int, code: int) -> bytes:
    """RDR_to_PC_HardwareError 0x51 (§6.3.2): bSlot, bSeq, bHardwareErrorCode."""
    return bytes([MessageType.RDR_to_PC_HardwareError, slot, seq, code])


def error_response(response_type: int, slot: int, seq: int, status: int, error: int, *,
                   clock_status: int = ClockStatus.RUNNING, protocol: int = 0,
                   clock_khz: int = 0, rate_bps: int = 0) -> bytes:
    """A response of `response_type` that carries no payload except what §6.2 makes mandatory."""
    # Once per failed command: compared with plain ints (an enum member looked up on its class
    # costs ten times a global), SlotStatus first (most failures are answered with it).
    if response_type == _SLOT_STATUS:
        return _pack_response(_SLOT_STATUS, 0, slot, seq, status, error, clock_status)
    if response_type == _DATA_BLOCK:
        return _pack_response(_DATA_BLOCK, 0, slot, seq, status, error, 0)
    if response_type == _PARAMETERS:
        return _pack_response(_PARAMETERS, 0, slot, seq, status, error, protocol)
    if response_type == _ESCAPE:
        return _pack_response(_ESCAPE, 0, slot, seq, status, error, 0)
    if response_type == _DATA_RATE_AND_CLOCK_FREQUENCY:
        # §6.2.5 fixes dwLength at 8, so the current values go along even on failure.
        return data_rate_and_clock_frequency(slot, seq, status, error, clock_khz, rate_bps)
    raise AssertionError(f"not a bulk-IN message type: {response_type:#x}")


@dataclass(frozen=True)
class Response:
    """A decoded RDR_to_PC bulk message (used by tools and tests of the codec)."""

    message_type: int
    slot: int
    seq: int
    status: int
    error: int
    specific: int
    data: bytes


def parse_response(buf: bytes) -> Response:
    message_type, length, slot, seq, status, error, specific = _RESPONSE_HEADER.unpack_from(buf, 0)
    return Response(message_type, slot, seq, status, error, specific,
                    bytes(buf[CCID_HEADER_SIZE:CCID_HEADER_SIZE + length]))
