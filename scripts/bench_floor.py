#!/usr/bin/env python3
"""ours/floor: the daemon with its default PIV card against the floor responder, same run, same stack.

    scripts/bench_floor.py [--flavour amd64 --flavour arm64] [--rounds 3] [-n 300] [--chained 30]
                           [--rev REV ...] [--no-tree]
    scripts/bench_floor.py --guest --variant daemon|floor [--tree DIR]   # one measurement, inside a guest

Each round boots one guest per variant, alternating which goes first, so machine noise hits both:
the daemon (``ccidgadget --card emulated``, a fresh PIV card) or scripts/floor_responder.py (same
USB identity and descriptors, fixed ATR, 90 00). In each guest pcscd + libccid + pyscard are the host,
and pyscard ``transmit`` times:

* a short SELECT of the PIV application, ``n`` times (after 20 for warm-up);
* a 4 KiB read: one extended GET DATA whose answer (4096 bytes + SW) comes back in 5 chained
  DataBlocks (dwMaxCCIDMessageLength 1034); the daemon's object is written once before, untimed;
* a 3000-byte write: one extended PUT DATA that libccid sends as 3 chained XfrBlocks (the daemon,
  authenticated with the management key once, stores the object each time).

Printed per flavour and variant: each run's median and p90, the best median of the runs and the
run-to-run spread of the medians ((max - min) / min), then ours/floor from the best medians.

``--rev REV`` (repeatable) adds the daemon as of git revision REV as one more variant (its
``ccidgadget/`` exported to .cache/bench-rev/, run with that package first on sys.path), so a change
is measured before and after in the same run, every variant alternating with the others;
``--no-tree`` leaves out the working tree's daemon.  ``--one-boot`` runs every round of every variant
in one guest boot instead of one boot per run: the variants then alternate every few seconds, which
a machine whose load changes from minute to minute needs.
Under TCG every figure is far slower than on a board; only the ratio carries over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_guest  # noqa: E402  (Stack, timed, pct: the guest-side helpers)
from bench_piv import have_gadget_stack  # noqa: E402

PIV_AID = bytes.fromhex("A000000308000010000100")
SELECT = [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID, 0x00]
READ_OBJECT = bytes.fromhex("5FC105")         # X.509 certificate for PIV Authentication (9A)
WRITE_OBJECT = bytes.fromhex("5FC10A")        # X.509 certificate for Digital Signature (9C)
READ_SIZE = 4096                              # GET DATA answer: 53 82 0F FC + 4092 bytes
WRITE_SIZE = 3000                             # PUT DATA command data
RESULT_TAG = "BENCH-FLOOR "
WORKLOADS = ("short SELECT", "4 KiB chained read", "3000-byte chained write")


def extended(ins: int, data: bytes) -> list[int]:
    """An extended case-4 APDU (ISO 7816-4 §5.1): Lc and Le on 3 and 2 bytes, Le 0000 = up to 65536."""
    return [0x00, ins, 0x3F, 0xFF, 0x00, *len(data).to_bytes(2, "big"), *data, 0x00, 0x00]


def object_data(tag: bytes, total: int) -> bytes:
    """PUT DATA's data (SP 800-73-4 Part 2 §3.3.2): 5C tag list, 53 object, ``total`` bytes in all."""
    content = bytes((i * 7) & 0xFF for i in range(total - 5 - 4))
    return b"\x5c\x03" + tag + b"\x53\x82" + len(content).to_bytes(2, "big") + content


# --------------------------------------------------------------------------- in the guest


def daemon_command(tree: str | None, args: tuple[str, ...] = ("--card", "emulated", "--state-dir",
                                                              "/tmp/ccidgadget-bench-state"),
                   python: tuple[str, ...] = ()) -> list[str]:
    """The daemon (default: with a fresh PIV card); from `tree` (a directory holding a ccidgadget/ package)
    if given; `python`: interpreter options."""
    if tree is None:
        return [sys.executable, *python, "-m", "ccidgadget", *args]
    code = (f"import sys, runpy; sys.path.insert(0, {tree!r}); import ccidgadget; "
            f"print('ccidgadget from', ccidgadget.__file__, file=sys.stderr, flush=True); "
            f"runpy.run_module('ccidgadget', run_name='__main__', alter_sys=True)")
    return [sys.executable, *python, "-c", code, *args]


def measure(variant: str, n: int, chained: int, tree: str | None = None) -> dict:
    shutil.rmtree("/tmp/ccidgadget-bench-state", ignore_errors=True)   # a fresh card, as in a fresh boot
    if variant == "daemon":
        stack = bench_guest.Stack(command=daemon_command(tree))
    else:
        stack = bench_guest.Stack(command=[sys.executable, str(REPO / "scripts" / "floor_responder.py"),
                                           "--read-size", str(READ_SIZE)])
    with stack as s:
        conn = s.readers[0].createConnection()
        conn.connect()
        write = extended(0xDB, object_data(WRITE_OBJECT, WRITE_SIZE))
        read = extended(0xCB, b"\x5c\x03" + READ_OBJECT)
        card = None
        if variant == "daemon":
            from bench_piv import Card, authenticate_management

            card = Card(conn)
            authenticate_management(card)
            data, sw1, sw2 = conn.transmit(extended(0xDB, object_data(READ_OBJECT, READ_SIZE + 5)))
            assert (sw1, sw2) == (0x90, 0x00), f"PUT DATA {READ_OBJECT.hex()}: {sw1:02X}{sw2:02X}"
        data, sw1, sw2 = conn.transmit(read)
        assert len(data) == READ_SIZE, f"GET DATA returned {len(data)} bytes, not {READ_SIZE}"
        bench_guest.timed(conn, SELECT, 20)                       # warm-up
        res = {"short SELECT": bench_guest.timed(conn, SELECT, n),
               "4 KiB chained read": bench_guest.timed(conn, read, chained),
               "3000-byte chained write": bench_guest.timed(conn, write, chained)}
        bench_guest.release(conn)
        del conn, card                # pyscard 2.0.5 releases its context when collected
    return {"variant": variant, "bound_s": s.t_bound, "samples": res}


# --------------------------------------------------------------------------- on the host


def export_rev(rev: str) -> tuple[str, str]:
    """(label, directory): REV's ccidgadget/ package under .cache/bench-rev/SHA (the guest sees the checkout)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True, text=True,
                         stdout=subprocess.PIPE).stdout.strip()
    target = REPO / ".cache" / "bench-rev" / sha
    if not (target / "ccidgadget" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "ccidgadget"], check=True,
                                 stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        # compiled here: under TCG the guest would compile it again at every boot (its tree is a tmpfs overlay)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(target)], check=True)
    return f"daemon@{sha}", str(target)


def run_guest(testbed, prepared, variant: str, n: int, chained: int, tree: str | None = None) -> dict:
    cmd = [prepared.guest_python, str(Path(__file__).resolve()), "--guest", "--variant", variant,
           "-n", str(n), "--chained", str(chained), *(["--tree", tree] if tree else [])]
    res = testbed.run(cmd, timeout=900, cwd=REPO, env={"CCIDGADGET_E2E": "1"}, prepared=prepared)
    for line in res.output.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{prepared.flavour} guest, {variant}: no result\n{res.describe(tail=40)}")


def summary(runs: list[dict], workload: str) -> tuple[list[tuple[float, float]], float, float]:
    """[(median, p90) per run], best median, spread of the medians; in ms."""
    per_run = [(statistics.median(r["samples"][workload]) * 1e3, bench_guest.pct(r["samples"][workload], 0.9) * 1e3)
               for r in runs]
    medians = [m for m, _ in per_run]
    return per_run, min(medians), (max(medians) - min(medians)) / min(medians)


def report(where: str, results: dict[str, list[dict]]) -> None:
    print(f"\n{where}: {len(results['floor'])} runs per variant, alternating; pyscard transmit through "
          "pcscd + libccid + dummy_hcd", flush=True)
    ours = [v for v in results if v != "floor"]
    width = max(len(v) for v in results)
    for workload in WORKLOADS:
        best = {}
        for variant in results:
            per_run, best[variant], spread = summary(results[variant], workload)
            runs = ", ".join(f"{m:.2f}/{p:.2f}" for m, p in per_run)
            print(f"  {workload:24s} {variant:{width}s} median/p90 per run (ms): {runs}; best median "
                  f"{best[variant]:.2f} ms, spread {spread * 100:.0f} %")
        for variant in ours:
            label = "ours/floor" if variant == "daemon" else f"{variant}/floor"
            print(f"  {workload:24s} {label} = {best[variant] / best['floor']:.2f}")
    for variant in ours:
        bound = [r["bound_s"] for r in results[variant]]
        print(f"  {variant} start to gadget bound (fresh PIV card): {', '.join(f'{b:.2f}' for b in bound)} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", action="store_true", help="measure here (inside a guest or on a UDC machine)")
    ap.add_argument("--variant", choices=("daemon", "floor"), default="daemon")
    ap.add_argument("--flavour", action="append", choices=("amd64", "arm64"),
                    help="test bed flavours to measure (default: both)")
    ap.add_argument("--rounds", type=int, default=3, help="boots per variant (default 3)")
    ap.add_argument("-n", type=int, default=300, help="short SELECTs per boot (default 300)")
    ap.add_argument("--chained", type=int, default=30, help="chained reads and writes per boot (default 30)")
    ap.add_argument("--tree", help="(with --guest) run the daemon from this directory's ccidgadget/ package")
    ap.add_argument("--rev", action="append", default=[], help="also measure the daemon as of this git revision")
    ap.add_argument("--no-tree", action="store_true", help="leave out the working tree's daemon (with --rev)")
    ap.add_argument("--one-boot", action="store_true",
                    help="every round of every variant in one guest boot (finer alternation, no boot per run)")
    ap.add_argument("--all", action="append", default=[],
                    help="(with --guest) LABEL=TREE: run every variant --rounds times here, alternating")
    args = ap.parse_args(argv)
    if args.guest and args.all:
        trees = {label: tree or None for label, tree in (a.split("=", 1) for a in args.all)}
        results = {}

        def here(label, variant, tree):
            results.setdefault(label, []).append(measure(variant, args.n, args.chained, tree))
        rounds(None, args, {k: v for k, v in trees.items() if k != "floor"}, None, here)
        print(RESULT_TAG + json.dumps(results), flush=True)
        return 0
    if args.guest:
        print(RESULT_TAG + json.dumps(measure(args.variant, args.n, args.chained, args.tree)), flush=True)
        return 0
    # .pyc files made here for what changed: the guest's tree is a tmpfs overlay, it compiles at every boot
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "ccidgadget")], check=False)
    trees: dict[str, str | None] = {} if args.no_tree and args.rev else {"daemon": None}
    trees.update(export_rev(rev) for rev in args.rev)
    if have_gadget_stack():                 # a board (or a dummy_hcd machine): here, no guests
        rounds(os.uname().machine, args, trees,
               lambda variant, tree: measure(variant, args.n, args.chained, tree))
        return 0
    from tests.vm import testbed

    for flavour in args.flavour or ["amd64", "arm64"]:
        prepared = testbed.prepare(flavour_name=flavour)
        if args.one_boot:
            t0 = time.monotonic()
            cmd = [prepared.guest_python, str(Path(__file__).resolve()), "--guest", "-n", str(args.n),
                   "--chained", str(args.chained), "--rounds", str(args.rounds),
                   *(a for label, tree in {**trees, "floor": None}.items() for a in ("--all", f"{label}={tree or ''}"))]
            res = testbed.run(cmd, timeout=900 * args.rounds, cwd=REPO, env={"CCIDGADGET_E2E": "1"}, prepared=prepared)
            line = next((x for x in res.output.splitlines() if x.startswith(RESULT_TAG)), None)
            if line is None:
                raise RuntimeError(f"{prepared.flavour} guest: no result\n{res.describe(tail=40)}")
            report(f"{flavour} guest, one boot", json.loads(line[len(RESULT_TAG):]))
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
            continue
        rounds(f"{flavour} guest", args, trees,
               lambda variant, tree: run_guest(testbed, prepared, variant, args.n, args.chained, tree))
    return 0


def rounds(where: str | None, args, trees: dict[str, str | None], one, each=None) -> None:
    """`args.rounds` runs of every variant; each round starts one variant later, so each goes first in turn.
    `one(kind, tree)` measures; or `each(label, kind, tree)` is told to and nothing is reported here."""
    variants = [*trees, "floor"]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    t0 = time.monotonic()
    for r in range(args.rounds):
        k = r % len(variants)
        for variant in variants[k:] + variants[:k]:
            kind = "floor" if variant == "floor" else "daemon"
            if each is not None:
                each(variant, kind, trees.get(variant))
            else:
                results[variant].append(one(kind, trees.get(variant)))
    if each is None:
        report(where, results)
        print(f"  ({time.monotonic() - t0:.0f} s for {len(variants) * args.rounds} runs)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
