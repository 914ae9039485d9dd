# SPDX-License-Identifier: GPL-3.0-or-later
"""Bulk-OUT framing: the byte stream cut into PC_to_RDR messages by dwLength (CCID rev 1.1 §6.1).

Sans-IO like the rest of the core: `BulkOutFramer.feed()` takes the bytes of
one bulk-OUT completion and returns, in order, what they complete: each item is
``(header, abData)`` for a whole message, or ``(header, None)`` for a message
that cannot be framed (the reader answers it with bError 1, "dwLength", §6.2.6).
Nothing here knows what a message means.

- A message is the 10-byte header and exactly dwLength bytes of abData.  One
  completion may carry several messages, and one message may span several
  completions (a multiple of wMaxPacketSize ends no transfer, USB 2.0 §5.8.3).
- dwLength over `max_payload` (dwMaxCCIDMessageLength - 10, §5.1): the header is
  reported at once, and everything up to the end of the USB transfer is skipped
  without being stored, so a 4 GiB dwLength costs no memory.
- A transfer end (short packet) always ends a message: bytes of a message cut
  there are dropped, reported when bMessageType, dwLength, bSlot and bSeq are
  known (7 bytes, so the host gets an answer with its bSeq), counted as
  discarded otherwise.  The next transfer starts a new message: this is how the
  stream resynchronises after garbage.

At most one partial message is buffered (`buffer`, under dwMaxCCIDMessageLength).
"""

from __future__ import annotations

from typing import Optional

from .constants import CCID_HEADER_SIZE
from .messages import HEADER, Header, parse_header

#: One framed item: the header and abData, or the header and None (bError 1).
Framed = tuple[Header, Optional[bytes]]

#: bMessageType (1), dwLength (4), bSlot (1) and bSeq (1): enough to answer a cut message.
KNOWN_PREFIX = 7

# parse_header, inlined in the loop below (it runs once per message)
_unpack_header = HEADER.unpack_from
_header_from = tuple.__new__


class BulkOutFramer:
    """Reassembles PC_to_RDR messages from bulk-OUT completions.  See the module docstring."""

    __slots__ = ("max_payload", "buffer", "discarding", "messages", "framing_errors", "discarded_bytes")

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        #: Bytes of the message being assembled (never rebound: `Reader._rx` is this object).
        self.buffer = bytearray()
        #: Skipping an oversize message's payload up to the transfer end.
        self.discarding = False
        self.messages = 0  # complete messages returned
        self.framing_errors = 0  # oversize or cut messages returned with None
        self.discarded_bytes = 0  # bytes skipped after an oversize header or dropped as a short fragment

    def reset(self) -> None:
        """Forget the partial message and any skipping (bus reset: the host forgot it too)."""
        self.buffer.clear()
        self.discarding = False

    def feed(self, data: bytes | bytearray | memoryview, transfer_end: bool) -> list[Framed]:
        """The items completed by `data`; `transfer_end` says the USB transfer ended after it."""
        if not data and (not transfer_end or not (self.buffer or self.discarding)):
            # A zero-length packet completes nothing; it matters only when it ends a transfer
            # in the middle of a message or of a skipped payload (handled below).
            return []
        if self.discarding:
            self.discarded_bytes += len(data)
            if transfer_end:
                self.discarding = False
            return []
        buffer = self.buffer
        if buffer:
            buffer += data
            buf: bytes | memoryview = bytes(buffer)  # one copy, then views and slices of it
            buffer.clear()
        elif data.__class__ is bytes:
            buf = data  # the usual case: slices of it are the payloads
        else:
            buf = memoryview(data)  # a caller's buffer: copy only what is kept
        out: list[Framed] = []
        n = len(buf)
        pos = 0
        max_payload = self.max_payload
        while n - pos >= CCID_HEADER_SIZE:
            header = _header_from(Header, _unpack_header(buf, pos))
            length = header[1]
            if length > max_payload:
                # Never buffered: reported now, the rest of the transfer skipped.
                out.append((header, None))
                self.framing_errors += 1
                self.discarded_bytes += n - pos - CCID_HEADER_SIZE
                self.discarding = not transfer_end
                self.messages += len(out) - 1
                return out
            end = pos + CCID_HEADER_SIZE + length
            if end > n:
                break
            out.append((header, bytes(buf[pos + CCID_HEADER_SIZE:end])))
            pos = end
        self.messages += len(out)
        if pos < n:
            if not transfer_end:
                buffer += buf[pos:]
            elif n - pos >= KNOWN_PREFIX:
                head = bytes(buf[pos:pos + CCID_HEADER_SIZE]).ljust(CCID_HEADER_SIZE, b"\0")
                out.append((parse_header(head), None))
                self.framing_errors += 1
            else:
                self.discarded_bytes += n - pos
        return out
