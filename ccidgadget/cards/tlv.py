"""BER-TLV (ISO 7816-4 §5.2 / X.690 subset) as smart cards use it.

One small helper for every applet: tags of one to three bytes kept as ints
(0x5FC105, 0x7F49), definite lengths of up to three bytes after 0x81/0x82/0x83.
Malformed input raises `ApduError(SW.WRONG_DATA)` so a card answers 6A80.
"""

from __future__ import annotations

from typing import Iterator

from .iso7816 import SW, ApduError


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return bytes((0x82,)) + n.to_bytes(2, "big")
    if n <= 0xFFFFFF:
        return bytes((0x83,)) + n.to_bytes(3, "big")
    raise ValueError("TLV value too long")


def encode_tag(tag: int) -> bytes:
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def tlv(tag: int, value: bytes = b"") -> bytes:
    """Encode one TLV."""
    value = bytes(value)
    return encode_tag(tag) + encode_length(len(value)) + value


def _read_tag(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise ApduError(SW.WRONG_DATA, "TLV truncated in tag")
    first = data[i]
    tag = first
    i += 1
    if first & 0x1F == 0x1F:                       # multi-byte tag number
        for _ in range(2):
            if i >= len(data):
                raise ApduError(SW.WRONG_DATA, "TLV truncated in tag")
            tag = (tag << 8) | data[i]
            i += 1
            if not data[i - 1] & 0x80:
                break
        else:
            raise ApduError(SW.WRONG_DATA, "TLV tag longer than three bytes")
    return tag, i


def _read_length(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise ApduError(SW.WRONG_DATA, "TLV truncated in length")
    first = data[i]
    i += 1
    if first < 0x80:
        return first, i
    count = first & 0x7F
    if count == 0 or count > 3:
        raise ApduError(SW.WRONG_DATA, "unsupported TLV length form")
    if i + count > len(data):
        raise ApduError(SW.WRONG_DATA, "TLV truncated in length")
    return int.from_bytes(data[i:i + count], "big"), i + count


def iter_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, value) for each TLV at this level; padding 00/FF bytes between objects are skipped."""
    data = bytes(data)
    i = 0
    while i < len(data):
        if data[i] in (0x00, 0xFF):                # ISO 7816-4 §5.2: filler bytes
            i += 1
            continue
        tag, i = _read_tag(data, i)
        length, i = _read_length(data, i)
        if i + length > len(data):
            raise ApduError(SW.WRONG_DATA, f"TLV {tag:X} runs past the end")
        yield tag, data[i:i + length]
        i += length


def parse_tlv(data: bytes) -> list[tuple[int, bytes]]:
    return list(iter_tlv(data))


def parse_dict(data: bytes, *, allowed: set[int] | None = None) -> dict[int, bytes]:
    """Parse one level into a dict; repeated or (when `allowed` is given) unknown tags are 6A80."""
    out: dict[int, bytes] = {}
    for tag, value in iter_tlv(data):
        if tag in out:
            raise ApduError(SW.WRONG_DATA, f"tag {tag:X} repeated")
        if allowed is not None and tag not in allowed:
            raise ApduError(SW.WRONG_DATA, f"unexpected tag {tag:X}")
        out[tag] = value
    return out


def unwrap(data: bytes, tag: int) -> bytes:
    """The value of a single expected outer TLV, which must span all of `data`."""
    items = parse_tlv(data)
    if len(items) != 1 or items[0][0] != tag:
        raise ApduError(SW.WRONG_DATA, f"expected one TLV {tag:X}")
    return items[0][1]


def parse_header_list(data: bytes) -> list[tuple[int, int]]:
    """A header list: tags with lengths but no values (ISO 7816-4 §8.5.2, the OpenPGP card's
    7F48 template); returns [(tag, length), ...]."""
    data = bytes(data)
    out = []
    i = 0
    while i < len(data):
        tag, i = _read_tag(data, i)
        length, i = _read_length(data, i)
        out.append((tag, length))
    return out
