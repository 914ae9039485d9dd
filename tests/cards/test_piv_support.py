"""Test support (no tests here): a tiny PIV host — short APDUs, CLA 10 command chaining, 61xx / GET RESPONSE.

It speaks to `card.process_apdu` the way OpenSC and yubico-piv-tool speak to
a reader, so the applet is exercised through the framework's transport rules.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ccidgadget.cards.tlv import parse_dict, tlv, unwrap
from ccidgadget.cryptocompat import TripleDES

DEFAULT_MGMT = bytes.fromhex("010203040506070801020304050607080102030405060708")


def pin_block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


class PivClient:
    def __init__(self, card) -> None:
        self.card = card
        self.apdus = 0

    def raw(self, apdu: bytes) -> tuple[bytes, int]:
        self.apdus += 1
        r = self.card.process_apdu(apdu)
        return r[:-2], int.from_bytes(r[-2:], "big")

    def send(self, ins: int, p1: int, p2: int, data: bytes = b"", *, le: bool = True) -> tuple[bytes, int]:
        """Send with chaining in 255-byte pieces; follow 61xx; return (data, sw)."""
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        for i, chunk in enumerate(chunks):
            cla = 0x10 if i < len(chunks) - 1 else 0x00
            apdu = bytes((cla, ins, p1, p2))
            if chunk:
                apdu += bytes((len(chunk),)) + chunk
            if le and cla == 0x00:
                apdu += b"\x00"
            out, sw = self.raw(apdu)
            if cla == 0x10 and sw != 0x9000:
                return out, sw
        while sw >> 8 == 0x61:
            more, sw = self.raw(bytes((0x00, 0xC0, 0x00, 0x00, sw & 0xFF)))
            out += more
        return out, sw

    def ok(self, ins: int, p1: int, p2: int, data: bytes = b"") -> bytes:
        out, sw = self.send(ins, p1, p2, data)
        assert sw == 0x9000, f"INS {ins:02X} failed with {sw:04X}"
        return out

    # -- PIV operations -------------------------------------------------------
    def select(self) -> tuple[bytes, int]:
        return self.send(0xA4, 0x04, 0x00, bytes.fromhex("A00000030800001000"))

    def verify(self, pin: str = "123456") -> int:
        return self.send(0x20, 0x00, 0x80, pin_block(pin))[1]

    def get_object(self, tag: int) -> tuple[bytes, int]:
        tb = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
        return self.send(0xCB, 0x3F, 0xFF, tlv(0x5C, tb))

    def put_object(self, tag: int, content: bytes) -> int:
        tb = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
        return self.send(0xDB, 0x3F, 0xFF, tlv(0x5C, tb) + tlv(0x53, content))[1]

    def authenticate(self, key: bytes = DEFAULT_MGMT, alg: int = 0x03) -> int:
        out, sw = self.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80)))
        if sw != 0x9000:
            return sw
        witness = unwrap(unwrap(out, 0x7C), 0x80)
        cipher = mgmt_cipher(alg, key)
        d = cipher.decryptor()
        plain = d.update(witness) + d.finalize()
        challenge = os.urandom(len(witness))
        out, sw = self.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80, plain) + tlv(0x81, challenge) + tlv(0x82)))
        if sw != 0x9000:
            return sw
        e = cipher.encryptor()
        assert unwrap(unwrap(out, 0x7C), 0x82) == e.update(challenge) + e.finalize()
        return sw

    def generate(self, slot: int, alg: int, pin_policy: int | None = None, touch: int | None = None) -> bytes:
        t = tlv(0x80, bytes([alg]))
        if pin_policy is not None:
            t += tlv(0xAA, bytes([pin_policy]))
        if touch is not None:
            t += tlv(0xAB, bytes([touch]))
        out = self.ok(0x47, 0x00, slot, tlv(0xAC, t))
        return unwrap(out, 0x7F49)

    def general_authenticate(self, alg: int, slot: int, data: bytes, tag: int = 0x81) -> tuple[bytes, int]:
        out, sw = self.send(0x87, alg, slot, tlv(0x7C, tlv(0x82) + tlv(tag, data)))
        if sw != 0x9000:
            return out, sw
        return parse_dict(unwrap(out, 0x7C))[0x82], sw


def mgmt_cipher(alg: int, key: bytes) -> Cipher:
    if alg == 0x03:
        return Cipher(TripleDES(key), modes.ECB())
    return Cipher(algorithms.AES(key), modes.ECB())
