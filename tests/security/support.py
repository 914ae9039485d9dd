# SPDX-License-Identifier: GPL-3.0-or-later
"""Test support for the security checks: cards with known secrets, and a small APDU client."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ccidgadget.cards.tlv import tlv, unwrap
from ccidgadget.cryptocompat import TripleDES

PIV_AID = bytes.fromhex("A00000030800001000")


def block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


def mgmt_cipher(alg: int, key: bytes) -> Cipher:
    return Cipher(TripleDES(key) if alg == 0x03 else algorithms.AES(key), modes.ECB())


class Client:
    """Short APDUs with CLA-10 chaining and GET RESPONSE; `send` is any bytes -> bytes transport."""

    def __init__(self, send) -> None:
        self.send_raw = send

    def send(self, ins: int, p1: int, p2: int, data: bytes = b"") -> tuple[bytes, int]:
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        for i, chunk in enumerate(chunks):
            cla = 0x10 if i < len(chunks) - 1 else 0x00
            apdu = bytes((cla, ins, p1, p2)) + (bytes((len(chunk),)) + chunk if chunk else b"")
            if cla == 0:
                apdu += b"\x00"
            r = self.send_raw(apdu)
            out, sw = r[:-2], int.from_bytes(r[-2:], "big")
        while sw >> 8 == 0x61:
            r = self.send_raw(bytes((0x00, 0xC0, 0x00, 0x00, sw & 0xFF)))
            out, sw = out + r[:-2], int.from_bytes(r[-2:], "big")
        return out, sw

    def select_piv(self) -> int:
        return self.send(0xA4, 0x04, 0x00, PIV_AID)[1]

    def authenticate(self, key: bytes, alg: int) -> int:
        out, sw = self.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80)))
        if sw != 0x9000:
            return sw
        witness = unwrap(unwrap(out, 0x7C), 0x80)
        cipher = mgmt_cipher(alg, key)
        d = cipher.decryptor()
        plain = d.update(witness) + d.finalize()
        challenge = os.urandom(len(witness))
        return self.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80, plain) + tlv(0x81, challenge) + tlv(0x82)))[1]
