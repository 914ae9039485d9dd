# SPDX-License-Identifier: GPL-3.0-or-later
"""In-process cost of OpenPGP card operations: `python -m ccidgadget.cards.openpgp.bench`.

APDUs go through `OpenPgpCard.process_apdu` (framework chaining included, no USB) on a
throw-away card in a temporary directory.  PSO:CDS saves the signature counter durably (write,
fsync, rename, fsync of the directory) before the signature leaves, so its figure includes one
state save; INTERNAL AUTHENTICATE of the same key saves nothing and shows the cryptography
alone.  For `make bench` (scripts/bench_openpgp.py prints it beside the figures through gpg).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

from .applet import OpenPgpCard

#: (name, C1/C3 attributes, what PSO:CDS gets: a SHA-256 DigestInfo for RSA, the hash for ECDSA;
#: EdDSA signs GnuPG's hash of the data too, a 32-byte value)
ALGORITHMS = (
    ("Ed25519", "162B06010401DA470F01"),
    ("P-256", "132A8648CE3D030107"),
    ("RSA-2048", "010800002000"),
)
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


class _Host:
    def __init__(self, card: OpenPgpCard) -> None:
        self.card = card

    def send(self, apdu: bytes) -> bytes:
        r = self.card.process_apdu(apdu)
        out, sw = r[:-2], r[-2:]
        while sw[0] == 0x61:
            r = self.card.process_apdu(bytes((0, 0xC0, 0, 0, sw[1])))
            out, sw = out + r[:-2], r[-2:]
        if sw != b"\x90\x00":
            raise RuntimeError(f"{apdu[:4].hex()}: SW {sw.hex()}")
        return out

    def hexsend(self, text: str) -> bytes:
        return self.send(bytes.fromhex(text))


def _bench(name: str, fn, n: int) -> None:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n
    print(f"{name:58s} {dt * 1000:8.2f} ms/op {1 / dt:9.0f} op/s", flush=True)


def _sign_input(name: str) -> bytes:
    digest = hashlib.sha256(os.urandom(16)).digest()
    return DIGEST_INFO_SHA256 + digest if name.startswith("RSA") else digest


def main(rounds: int = 1) -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        card = OpenPgpCard.from_directory(Path(tmp) / "card")
        card.reset()
        h = _Host(card)
        h.hexsend("00A4040006D27600012401")
        h.hexsend("00200083083132333435363738")
        h.hexsend("00DA00C40101")                       # PW1 valid for several signatures
        for name, attrs in ALGORITHMS:
            raw = bytes.fromhex(attrs)
            for tag in (0xC1, 0xC3):
                h.send(bytes((0x00, 0xDA, 0x00, tag, len(raw))) + raw)
            t = time.perf_counter()
            h.hexsend("0047800002B60000")
            h.hexsend("0047800002A40000")
            gen = (time.perf_counter() - t) / 2
            h.hexsend("0020008106313233343536")
            h.hexsend("0020008206313233343536")
            n = 40 if name.startswith("RSA") else 300
            data = _sign_input(name)
            cds = bytes((0x00, 0x2A, 0x9E, 0x9A, len(data))) + data + b"\x00"
            auth = bytes((0x00, 0x88, 0x00, 0x00, len(data))) + data + b"\x00"
            print(f"{name + ' key generation':58s} {gen * 1000:8.2f} ms/op", flush=True)
            _bench(f"{name} PSO:CDS (signature counter saved)", lambda: h.send(cds), n * rounds)
            _bench(f"{name} INTERNAL AUTHENTICATE (no save)", lambda: h.send(auth), n * rounds)
        _bench("VERIFY PW1 (scrypt + 2 durable saves)", lambda: h.hexsend("0020008206313233343536"), 10)
        t = time.perf_counter()
        h.hexsend("00DA00C106011000002000")
        h.hexsend("0047800002B60000")
        print(f"{'RSA-4096 key generation (one sample)':58s} {(time.perf_counter() - t) * 1000:8.2f} ms/op",
              flush=True)


if __name__ == "__main__":
    main()
