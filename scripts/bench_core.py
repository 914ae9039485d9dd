#!/usr/bin/env python3
"""In-process throughput of the CCID core and of the reader service (no USB, no kernel).

1. core: XfrBlock messages/s through Reader.receive_bulk_out -> Transmit event ->
   a trivial card answering 90 00 at once -> card_answer -> BulkIn message.
2. service: the same through ReaderService on an asyncio loop with the small ISO
   card (worker-thread hop per APDU, as every emulated card does).

    scripts/bench_core.py                     both figures
    scripts/bench_core.py --baseline REV      the core against ccidgadget/ccid/ as of git REV,
                                              loaded side by side, rounds alternating
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ccidgadget.ccid  # noqa: E402

ATR = bytes.fromhex("3b8a8131fe456363696467616467657498")


def xfr(seq: int, apdu: bytes) -> bytes:
    return struct.pack("<BIBBBBB", 0x6F, len(apdu), 0, seq & 0xFF, 0, 0, 0) + apdu


def load_core_at(rev: str):
    """ccidgadget/ccid/ as of git `rev`, imported as its own package (the core imports only itself)."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, "ccidgadget/ccid"], check=True,
                         stdout=subprocess.PIPE).stdout
    root = Path(tempfile.mkdtemp(prefix="bench-core-"))
    name = "ccid_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                target = root / name / Path(member.name).name
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


def time_core(n: int, core=ccidgadget.ccid) -> tuple[float, float]:
    """Wall and CPU seconds (this process) for `n` XfrBlock round trips through `core`."""
    BulkIn, PowerOn, Transmit = core.BulkIn, core.PowerOn, core.Transmit
    reader = core.Reader(core.ReaderConfig())
    reader.set_card_present(0, True)
    reader.receive_bulk_out(struct.pack("<BIBBBBB", 0x62, 0, 0, 0, 0, 0, 0), transfer_end=True)
    for e in reader.next_events():
        if isinstance(e, PowerOn):
            reader.card_answer(e.token, ATR)
    reader.next_events()
    reader.pop_interrupt()
    apdu = bytes.fromhex("00A4040007A000000308000010")
    messages = [xfr(i, apdu) for i in range(256)]
    ok = b"\x90\x00"
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        reader.receive_bulk_out(messages[i & 0xFF], transfer_end=True)
        for e in reader.next_events():
            if isinstance(e, Transmit):
                reader.card_answer(e.token, ok)
        for e in reader.next_events():
            assert isinstance(e, BulkIn)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_service(n: int = 5_000) -> tuple[float, float]:
    from ccidgadget.cards.iso import IsoCard
    from ccidgadget.daemon.service import ReaderService

    async def main():
        service = ReaderService([IsoCard()])
        done = asyncio.Event()
        latencies = []

        class T:
            def send_bulk_in(self, data):
                done.set()

            def interrupt_pending(self):
                while service.pop_interrupt():
                    pass

        await service.start()
        service.attach(T())
        service.bulk_out(struct.pack("<BIBBBBB", 0x62, 0, 0, 0, 0, 0, 0), transfer_end=True)
        await done.wait()
        apdu = bytes.fromhex("00CA005A00")
        t0 = time.perf_counter()
        for i in range(n):
            done.clear()
            t = time.perf_counter()
            service.bulk_out(xfr(i, apdu), transfer_end=True)
            await done.wait()
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        await service.stop()
        latencies.sort()
        return n / total, latencies[len(latencies) // 2]

    return asyncio.run(main())


def compare(rev: str, rounds: int, n: int) -> None:
    """The core now and at `rev`, alternating rounds so that machine noise hits both.

    Wall-clock rates, and rates per CPU second of this process (what other
    processes on a busy machine take away from the wall clock does not count).
    """
    old = load_core_at(rev)
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, core in ((rev, old), ("now", ccidgadget.ccid)):
            wall, cpu = time_core(n, core)
            rates.setdefault((name, "wall"), []).append(n / wall)
            rates.setdefault((name, "cpu"), []).append(n / cpu)
    for clock in ("wall", "cpu"):
        for name in (rev, "now"):
            values = rates[(name, clock)]
            print(f"core {name:>12} ({clock:>4}): best {max(values):>9,.0f}  median {statistics.median(values):>9,.0f} "
                  f"XfrBlock messages/s  ({rounds} rounds of {n:,})")
        now, then = rates[("now", clock)], rates[(rev, clock)]
        print(f"ratio now/{rev} ({clock}): best {max(now) / max(then):.2f}, "
              f"median {statistics.median(now) / statistics.median(then):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", metavar="REV", help="compare the core with ccidgadget/ccid/ at git REV")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-n", type=int, default=200_000, help="XfrBlock messages per round")
    args = p.parse_args()
    if args.baseline:
        compare(args.baseline, args.rounds, args.n)
        return
    walls, cpus = [], []
    for _ in range(args.rounds):
        wall, cpu = time_core(args.n)
        walls.append(args.n / wall)
        cpus.append(args.n / cpu)
    print(f"core: {statistics.median(walls):,.0f} XfrBlock messages/s (parse -> trivial card -> encode, one thread; "
          f"median of {args.rounds} rounds of {args.n:,}, best {max(walls):,.0f}; per CPU second of this process "
          f"{statistics.median(cpus):,.0f}; issue 15 asks for 250,000)")
    rate, median = bench_service()
    print(f"service + ISO card: {rate:,.0f} APDUs/s, median {median * 1e6:.0f} us per XfrBlock "
          "(asyncio loop; this read-only command runs inline, crypto and writes hop to the card thread)")


if __name__ == "__main__":
    main()
