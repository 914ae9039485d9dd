#!/usr/bin/env python3
"""Cost of keys at rest (issue 13): VERIFY before (format 1) and after (format 2), in one run.

"Before" is the real code of the last commit with format 1, taken from git (`git archive`) into a
temporary package `ccidgadget_v1`; "after" is this tree.  Both cards live in temporary directories
with the default scrypt cost and are driven with APDUs through `process_apdu` (no USB), the two
alternating, the first one switching each round, so that both see the same machine load.  Printed:
median and mean per side and the median of the paired after/before ratios.  Also: PIN change, the
first PIN-protected signature after a VERIFY (the key is opened then), a format 1 conversion, and
what one scrypt guess costs here and, by memory bandwidth, on a GPU.

Run by `make bench` (scripts/bench.py); alone: `python scripts/bench_vault.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PIN_BLOCK = b"123456\xff\xff"
PIV_AID = bytes.fromhex("A00000030800001000")


def before_commit() -> str | None:
    """The parent of the commit that replaced format 1 (the newest commit changing that line)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%H", "-S", "FORMAT_VERSION = 1",
                              "--", "ccidgadget/cards/storage.py"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    commit = out.stdout.strip()
    return f"{commit}^" if commit else None


def load_before(tmp: Path):
    commit = before_commit()
    if commit is None:
        return None, None
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "ccidgadget"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp / "v1")
    (tmp / "v1" / "ccidgadget").rename(tmp / "v1" / "ccidgadget_v1")
    sys.path.insert(0, str(tmp / "v1"))
    import ccidgadget_v1.cards.piv as old_piv                     # noqa: E402
    return old_piv, commit


def host(card):
    from ccidgadget.cards.piv.bench import _Host
    h = _Host(card)
    card.reset()
    h.send(0xA4, 0x04, 0x00, PIV_AID)
    return h


def sign_9a(h) -> None:
    from ccidgadget.cards.tlv import tlv
    h.send(0x87, 0x11, 0x9A, tlv(0x7C, tlv(0x82) + tlv(0x81, os.urandom(32))))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(name: str, sides: dict, fn, rounds: int) -> None:
    """`fn(host)` on each side, alternating (the first side switches each round)."""
    names = list(sides)
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            samples[n].append(timed(lambda: fn(sides[n])))
    line = f"{name:44s}"
    for n in names:
        line += f" {n}: median {statistics.median(samples[n]) * 1000:8.2f} ms, mean {statistics.mean(samples[n]) * 1000:8.2f}"
    if len(names) == 2:
        ratios = [b / a for a, b in zip(samples[names[0]], samples[names[1]])]
        line += f"; paired ratio {names[1]}/{names[0]} median {statistics.median(ratios):.3f}"
    print(line, flush=True)


def kdf_costs() -> None:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    print("\nscrypt cost per guess (r=8, p=1): here, and a GPU bound by memory bandwidth", flush=True)
    print("  (an attacker's guesses/s <= bandwidth / (160 B * N * r * p): 960 GB/s is a 2022 high-end GPU;")
    print("   this ignores the device secret, without which a copied card needs only these guesses)")
    for log2 in (14, 15, 16, 17):
        n = 1 << log2
        times = [timed(lambda: Scrypt(salt=b"s" * 16, length=32, n=n, r=8, p=1).derive(b"123456\xff\xff"))
                 for _ in range(3)]
        gpu = 960e9 / (160 * n * 8)
        print(f"  N=2^{log2} ({128 * n * 8 >> 20:3d} MiB): {min(times) * 1000:7.1f} ms here; GPU <= {gpu:9.0f} "
              f"guesses/s: 6-digit PIN space {1e6 / gpu:8.0f} s, 8-digit {1e8 / gpu / 3600:7.1f} h", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    from ccidgadget.cards.piv import PivCard
    from ccidgadget.cards.storage import CardStore
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_piv, commit = load_before(tmp)
        sides = {}
        if old_piv is None:
            print("no git history here: the format 1 side cannot be measured (only format 2 below)")
        else:
            print(f"format 1 = {commit} (git archive), format 2 = this tree; {args.rounds} rounds each, "
                  "alternating", flush=True)
            sides["v1"] = host(old_piv.PivCard.from_directory(tmp / "v1card"))
        sides["v2"] = host(PivCard.from_directory(tmp / "v2card"))
        for h in sides.values():
            h.authenticate()
            from ccidgadget.cards.tlv import tlv
            h.send(0x47, 0x00, 0x9A, tlv(0xAC, tlv(0x80, b"\x11")))
        alternate("VERIFY PIN", sides, lambda h: h.send(0x20, 0x00, 0x80, PIN_BLOCK), args.rounds)

        def reset_verify_sign(h):
            h.card.reset()
            h.send(0xA4, 0x04, 0x00, PIV_AID)
            h.send(0x20, 0x00, 0x80, PIN_BLOCK)
            sign_9a(h)
        alternate("reset + VERIFY + first 9A signature", sides, reset_verify_sign, args.rounds)
        alternate("9A signature (key already open)", sides, sign_9a, args.rounds * 10)

        def change_back_and_forth(h):
            h.send(0x24, 0x00, 0x80, PIN_BLOCK + b"654321\xff\xff")
            h.send(0x24, 0x00, 0x80, b"654321\xff\xff" + PIN_BLOCK)
        alternate("CHANGE REFERENCE DATA x2 (PIN)", sides, change_back_and_forth, max(4, args.rounds // 4))
        if old_piv is not None:
            times = []
            for i in range(5):
                old_piv.PivCard.from_directory(tmp / f"m{i}")
                times.append(timed(lambda: PivCard.open(CardStore(tmp / f"m{i}"))))
            print(f"{'format 1 -> 2 conversion at open':44s} median {statistics.median(times) * 1000:7.1f} ms "
                  f"(5 cards)", flush=True)
    kdf_costs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
