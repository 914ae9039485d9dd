"""SimpleTLV and the CAC "buffer" files (GSC-IS 2.1 §8.4, NIST IR 6887).

SimpleTLV is not BER-TLV: a tag is one byte (01..FE), a length is one byte
below 255, else FF followed by a 16-bit **little-endian** length.  A CAC
container keeps each object as two files that READ BUFFER serves:

    TL buffer  [length LE16] [tag len] [tag len] ...
    V buffer   [length LE16] [value] [value] ...

where the 2-byte prefix counts the bytes after it.  The sizes announced in
GET PROPERTIES (tag 42) include the prefix, as libcacard announces them.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..iso7816 import SW, ApduError

#: Largest value SimpleTLV can describe (the length is 16 bits).
MAX_VALUE = 0xFFFE


def encode_length(n: int) -> bytes:
    if n < 0xFF:
        return bytes((n,))
    if n <= MAX_VALUE:
        return b"\xFF" + n.to_bytes(2, "little")
    raise ValueError("SimpleTLV value longer than 65534 bytes")


def header(tag: int, length: int) -> bytes:
    if not 0x01 <= tag <= 0xFE:
        raise ValueError("SimpleTLV tags are 01..FE")
    return bytes((tag,)) + encode_length(length)


def tlv(tag: int, value: bytes = b"") -> bytes:
    """One SimpleTLV object (tag, length, value in one string)."""
    return header(tag, len(value)) + bytes(value)


def iter_simpletlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, value); malformed input is 6A80."""
    data = bytes(data)
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise ApduError(SW.WRONG_DATA, "SimpleTLV truncated")
        tag, n = data[i], data[i + 1]
        i += 2
        if n == 0xFF:
            if i + 2 > len(data):
                raise ApduError(SW.WRONG_DATA, "SimpleTLV truncated in length")
            n = int.from_bytes(data[i:i + 2], "little")
            i += 2
        if i + n > len(data):
            raise ApduError(SW.WRONG_DATA, f"SimpleTLV {tag:02X} runs past the end")
        yield tag, data[i:i + n]
        i += n


def _file(body: bytes) -> bytes:
    return len(body).to_bytes(2, "little") + body


def buffer_files(items: Iterable[tuple[int, bytes]]) -> tuple[bytes, bytes]:
    """Split (tag, value) pairs into the TL and V files, each with its LE16 prefix."""
    tl = bytearray()
    v = bytearray()
    for tag, value in items:
        tl += header(tag, len(value))
        v += value
    return _file(bytes(tl)), _file(bytes(v))


def join_buffers(tl_file: bytes, v_file: bytes) -> list[tuple[int, bytes]]:
    """Inverse of `buffer_files` (used by tests and tools): pair the tags with their values."""
    tl = tl_file[2:2 + int.from_bytes(tl_file[:2], "little")]
    v = v_file[2:2 + int.from_bytes(v_file[:2], "little")]
    out = []
    i = j = 0
    while i < len(tl):
        tag, n = tl[i], tl[i + 1]
        i += 2
        if n == 0xFF:
            n = int.from_bytes(tl[i:i + 2], "little")
            i += 2
        out.append((tag, v[j:j + n]))
        j += n
    return out
