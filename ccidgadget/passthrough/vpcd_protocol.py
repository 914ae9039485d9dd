"""The vpcd <-> vicc wire protocol of vsmartcard, sans I/O; shared by both directions.

From vsmartcard `virtualsmartcard/src/vpcd/vpcd.c` and `vpicc/.../VirtualSmartcard.py`:

- TCP; vpcd (the pcscd driver, the *reader*) listens on 35963 (0x8C7B) plus
  the reader index, and vicc (the *card*) connects.  `vicc --reversed` swaps
  who listens, not who speaks first.
- Every message is a 2-byte big-endian length then that many bytes.
- The reader always speaks first and the card answers at most once:
  a 1-byte message is a control code (`VPCD_CTRL_*`); only GET ATR has an
  answer (the ATR; an empty answer means "no card", and vpcd then closes the
  connection).  Any longer message is a C-APDU, answered by the R-APDU.
- So one message is at most 65535 bytes, which bounds extended APDUs.

Used by the vpcd server engine (`vpcd_server.py`, vicc connects to us) and
by the vpcd client front end (`ccidgadget/frontends/vpcd_client.py`, we
connect to pcscd's vpcd driver as a card).
"""

from __future__ import annotations

import enum
import struct

LENGTH = struct.Struct(">H")

#: vpcd's default port, VPCDPORT in vpcd.h; reader n listens on port + n.
VPCD_DEFAULT_PORT = 35963

#: The length field is 16 bits.
MAX_MESSAGE = 0xFFFF

#: Length of a control message (VPCD_CTRL_LEN).
CTRL_LEN = 1


class Ctrl(enum.IntEnum):
    """VPCD_CTRL_* codes, sent by the reader side."""
    OFF = 0x00
    ON = 0x01
    RESET = 0x02
    ATR = 0x04


class VpcdProtocolError(Exception):
    """Bytes that cannot be a vpcd message (only too-long payloads to send)."""


def frame(payload: bytes) -> bytes:
    """Length prefix + payload, one buffer to write in a single call."""
    if len(payload) > MAX_MESSAGE:
        raise VpcdProtocolError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    return LENGTH.pack(len(payload)) + payload


def ctrl_frame(code: Ctrl) -> bytes:
    return frame(bytes((int(code),)))


def is_ctrl(payload: bytes) -> bool:
    """A 1-byte message from the reader is a control code, never an APDU."""
    return len(payload) == CTRL_LEN


class VpcdFramer:
    """Bytes in, whole messages out (any partition of the stream is fine)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buf)
            end = LENGTH.size + length
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[LENGTH.size:end]))
            del self._buf[:end]
        return out
