"""The VSCard protocol (QEMU ccid-card-passthru <-> libcacard vscclient), sans I/O.

Wire format, from libcacard `src/vscard_common.h` (protocol version 0.0.2):

- every message starts with a 12-byte header of three big-endian uint32:
  `type`, `reader_id`, `length`; `length` counts the payload only;
- VSC_Init payload: the 4 bytes "VSCD" (built so that they are in this order
  in memory on any host, i.e. *not* byte-swapped), `version` (BE uint32,
  MAKE_VERSION(major, middle, minor) = major << 21 | middle << 10 | minor),
  then capabilities (BE uint32 each; version 0.0.2 sends one, 0);
- VSC_Error payload: one uint32 code.  QEMU sends it big-endian but vscclient
  sends it in host order and neither side swaps what it reads, so a receiver
  should treat the byte order as unknown (`error_code` does);
- VSC_ReaderAdd: optional UTF-8 reader name; VSC_ATR: the raw ATR;
  VSC_APDU: a raw C-APDU (host -> client) or R-APDU (client -> host);
  ReaderRemove, CardRemove, Flush, FlushComplete: no payload.

The "host" is the reader side (QEMU, or ccidgadget's VSCard server engine);
the "client" owns the card (vscclient, spice-gtk).

`VSCardDecoder` turns received bytes into `Message`s and raises
`VSCardProtocolError` for what no compliant peer sends; `encode` and the
`*_message` helpers build the bytes to write.  No sockets here: the server
engine (`vscard_server.py`) and the tests drive it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">III")
HEADER_SIZE = HEADER.size                     # 12

#: "VSCD" in wire order (VSCARD_MAGIC is built from the characters, not htonl'd).
VSCARD_MAGIC = b"VSCD"


def make_version(major: int, middle: int, minor: int) -> int:
    """MAKE_VERSION of vscard_common.h: 11 bits major, 11 middle, 10 minor."""
    return (major << 21) | (middle << 10) | minor


def version_tuple(version: int) -> tuple[int, int, int]:
    return version >> 21, (version >> 10) & 0x7FF, version & 0x3FF


#: The version libcacard and QEMU speak (MAKE_VERSION(0, 0, 2)).
VSCARD_VERSION = make_version(0, 0, 2)

VSCARD_UNDEFINED_READER_ID = 0xFFFFFFFF
VSCARD_MINIMAL_READER_ID = 0

#: Largest payload accepted.  The biggest legitimate message is an extended
#: C-APDU: 4 header bytes + 3 (Lc) + 65535 data + 2 (Le) = 65544 (ISO 7816-4
#: §5.1); an R-APDU is at most 65536 + 2.  QEMU's whole input buffer is 64 KiB
#: (VSCARD_IN_SIZE) and it drops the connection beyond that; we allow the one
#: maximal extended APDU and refuse anything larger.
MAX_PAYLOAD = 65544

#: Init payload: magic + version, then zero or more capabilities.
INIT_MIN_PAYLOAD = 8


class MsgType(enum.IntEnum):
    """VSCMsgType."""
    INIT = 1
    ERROR = 2
    READER_ADD = 3
    READER_REMOVE = 4
    ATR = 5
    CARD_REMOVE = 6
    APDU = 7
    FLUSH = 8
    FLUSH_COMPLETE = 9


class ErrorCode(enum.IntEnum):
    """VSCErrorCode (CARD_ALREAY_INSERTED is spelled this way in the header)."""
    SUCCESS = 0
    GENERAL_ERROR = 1
    CANNOT_ADD_MORE_READERS = 2
    CARD_ALREADY_INSERTED = 3


class VSCardProtocolError(Exception):
    """The peer sent something no VSCard implementation sends; drop it."""


@dataclass(frozen=True)
class Message:
    type: MsgType
    reader_id: int
    payload: bytes = b""


@dataclass(frozen=True)
class Init:
    version: int
    capabilities: tuple[int, ...]

    @property
    def major(self) -> int:
        return version_tuple(self.version)[0]


def encode(msg_type: int, reader_id: int, payload: bytes = b"") -> bytes:
    """One complete message, header and payload, ready for a single write."""
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("payload too long")
    return HEADER.pack(int(msg_type), reader_id & 0xFFFFFFFF, len(payload)) + payload


def init_message(reader_id: int = VSCARD_UNDEFINED_READER_ID, *,
                 version: int = VSCARD_VERSION, capabilities: tuple[int, ...] = (0,)) -> bytes:
    """VSC_Init; QEMU sends it with the undefined reader id."""
    payload = VSCARD_MAGIC + struct.pack(f">I{len(capabilities)}I", version, *capabilities)
    return encode(MsgType.INIT, reader_id, payload)


def error_message(reader_id: int, code: int) -> bytes:
    """VSC_Error with the code big-endian, as QEMU sends it."""
    return encode(MsgType.ERROR, reader_id, struct.pack(">I", int(code)))


def parse_init(payload: bytes) -> Init:
    """Check magic and shape of a VSC_Init payload (vscard_common.h VSCMsgInit)."""
    if len(payload) < INIT_MIN_PAYLOAD:
        raise VSCardProtocolError(f"Init payload of {len(payload)} bytes is truncated")
    if len(payload) % 4:
        raise VSCardProtocolError(f"Init payload of {len(payload)} bytes is not whole uint32s")
    if payload[:4] != VSCARD_MAGIC:
        raise VSCardProtocolError(f"Init magic {payload[:4]!r} is not {VSCARD_MAGIC!r}")
    version, = struct.unpack_from(">I", payload, 4)
    caps = struct.unpack_from(f">{(len(payload) - 8) // 4}I", payload, 8)
    return Init(version, tuple(caps))


def error_code(payload: bytes) -> int:
    """The code of a VSC_Error, whichever byte order the sender used.

    A code is tiny (0..3), so a value that only makes sense byte-swapped is
    taken swapped (vscclient writes host order, QEMU big-endian).
    """
    if len(payload) < 4:
        raise VSCardProtocolError(f"Error payload of {len(payload)} bytes is truncated")
    big = int.from_bytes(payload[:4], "big")
    little = int.from_bytes(payload[:4], "little")
    return big if big <= 0xFFFF or little > 0xFFFF else little


class VSCardDecoder:
    """Bytes in, `Message`s out.

    After a `VSCardProtocolError` the decoder stays broken (`error` is set)
    and the connection must be closed: VSCard has no way to resynchronise.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.error: str | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet a whole message (a truncated tail)."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> list[Message]:
        if self.error is not None:
            raise VSCardProtocolError(self.error)
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER_SIZE:
            msg_type, reader_id, length = HEADER.unpack_from(self._buf)
            try:
                if length > self.max_payload:
                    raise VSCardProtocolError(
                        f"message length {length} exceeds the maximum {self.max_payload}")
                try:
                    kind = MsgType(msg_type)
                except ValueError:
                    raise VSCardProtocolError(f"unknown message type {msg_type}") from None
            except VSCardProtocolError as e:
                self.error = str(e)
                raise
            if len(self._buf) < HEADER_SIZE + length:
                break
            payload = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])
            del self._buf[:HEADER_SIZE + length]
            out.append(Message(kind, reader_id, payload))
        return out
