"""In-process cost of PIV operations: `python -m ccidgadget.cards.piv.bench`.

APDUs go through `PivCard.process_apdu` (framework chaining included, no USB),
on a throw-away card in a temporary directory.  For `make bench`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from ..tlv import parse_dict, tlv, unwrap
from .applet import PivCard
from .constants import DEFAULT_MANAGEMENT_KEY


class _Host:
    def __init__(self, card: PivCard) -> None:
        self.card = card

    def send(self, ins: int, p1: int, p2: int, data: bytes = b"") -> bytes:
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        for i, chunk in enumerate(chunks):
            cla = 0x10 if i < len(chunks) - 1 else 0x00
            apdu = bytes((cla, ins, p1, p2)) + (bytes((len(chunk),)) + chunk if chunk else b"") + b"\x00"
            r = self.card.process_apdu(apdu)
        out, sw = r[:-2], r[-2:]
        while sw[0] == 0x61:
            r = self.card.process_apdu(bytes((0, 0xC0, 0, 0, sw[1])))
            out, sw = out + r[:-2], r[-2:]
        if sw != b"\x90\x00":
            raise RuntimeError(f"INS {ins:02X}: SW {sw.hex()}")
        return out

    def authenticate(self) -> None:
        from ...cryptocompat import TripleDES
        from cryptography.hazmat.primitives.ciphers import Cipher, modes
        cipher = Cipher(TripleDES(DEFAULT_MANAGEMENT_KEY), modes.ECB())
        witness = unwrap(unwrap(self.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x80))), 0x7C), 0x80)
        d = cipher.decryptor()
        self.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x80, d.update(witness) + d.finalize())
                                        + tlv(0x81, os.urandom(8)) + tlv(0x82)))

    def sign(self, alg: int, slot: int, data: bytes) -> bytes:
        return parse_dict(unwrap(self.send(0x87, alg, slot, tlv(0x7C, tlv(0x82) + tlv(0x81, data))), 0x7C))[0x82]


def _bench(name: str, fn, n: int) -> None:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n
    print(f"{name:50s} {dt * 1000:8.2f} ms/op {1 / dt:9.0f} op/s")


def main() -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        card = PivCard.from_directory(Path(tmp) / "card")
        card.reset()
        h = _Host(card)
        h.send(0xA4, 0x04, 0x00, bytes.fromhex("A00000030800001000"))
        h.authenticate()
        for slot, alg in ((0x9A, 0x07), (0x9D, 0x11), (0x9E, 0x11)):
            h.send(0x47, 0x00, slot, tlv(0xAC, tlv(0x80, bytes([alg]))))
        h.send(0x20, 0x00, 0x80, b"123456\xff\xff")
        info = bytes.fromhex("3031300d060960864801650304020105000420") + os.urandom(32)
        pkcs1 = b"\x00\x01" + b"\xff" * (256 - 3 - len(info)) + b"\x00" + info
        raw = b"\x00\x01" + b"\xff" * 200 + b"\x00" + os.urandom(53)
        _bench("RSA-2048 sign, PKCS#1 v1.5 SHA-256 block (9A)", lambda: h.sign(0x07, 0x9A, pkcs1), 300)
        _bench("RSA-2048 raw, other block (blinded CRT) (9A)", lambda: h.sign(0x07, 0x9A, raw), 100)
        _bench("P-256 ECDSA sign, PIN once (9D)", lambda: h.sign(0x11, 0x9D, os.urandom(32)), 1000)
        _bench("P-256 ECDSA sign, no PIN (9E)", lambda: h.sign(0x11, 0x9E, os.urandom(32)), 1000)
        _bench("management key mutual auth, 3DES (2 APDUs)", h.authenticate, 1000)
        _bench("VERIFY PIN (scrypt + 2 durable saves)", lambda: h.send(0x20, 0x00, 0x80, b"123456\xff\xff"), 20)


if __name__ == "__main__":
    main()
