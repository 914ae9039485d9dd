#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Start to READY and resident memory of the daemon, per card, and where the start-up time goes.

    scripts/bench_startup.py [--flavour amd64|arm64] [--runs 3] [--rev REV ...] [--no-tree]
    scripts/bench_startup.py --guest [--runs 3] [--tree LABEL=DIR ...]       # inside a guest

For the ISO card, a fresh PIV card (a new state directory each run: PIN/PUK derivation, attestation key)
and an existing PIV card: ``runs`` daemon starts each, timed from launch to the gadget bound to the UDC
(what systemd's READY=1 follows), and the daemon's RSS once the host has enumerated the reader (idle;
bench_floor.py and profile_apdu.py give it after APDUs).  Then one start of the ISO and the fresh PIV
card with ``python -X importtime``: the import share of the start and the heaviest top-level imports.

Printed per card: each run's time to bound and RSS, their median and best.  ``--rev REV`` adds the
daemon as of a git revision (bench_floor.py's exported trees), started in the same guest, alternating
with the others run by run.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

RESULT_TAG = "BENCH-STARTUP "
OUT = Path(os.environ.get("CCIDGADGET_VM_OUT", "/tmp"))
STATE = Path("/tmp/ccidgadget-bench-startup")
CARDS = {"iso": ["--card", "emulated", "--type", "iso"],
         "piv (fresh)": ["--card", "emulated"],
         "piv (existing)": ["--card", "emulated"]}


def start_once(card: str, importtime: bool = False, tree: str | None = None) -> dict:
    import bench_guest
    from bench_floor import daemon_command

    state = STATE / card.split()[0]
    if card == "piv (fresh)" and state.exists():
        shutil.rmtree(state)
    command = daemon_command(tree, (*CARDS[card], "--state-dir", str(state)),
                             ("-X", "importtime") if importtime else ())
    err = OUT / "bench-startup-stderr.log"
    with open(err, "w") as stderr:
        t0 = time.monotonic()
        daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
        try:
            bench_guest.wait_for(bench_guest.bound, 120, "gadget bound")
            t_bound = time.monotonic() - t0
            bench_guest.wait_for(lambda: any(p.read_text().strip() == "0b" for p in
                                             Path("/sys/bus/usb/devices").glob("*/bInterfaceClass")), 30,
                                 "enumeration")
            time.sleep(0.5)                          # the host's first requests answered
            rss = bench_guest.rss_kib(daemon.pid)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    out = {"card": card, "bound_s": t_bound, "rss_kib": rss}
    if importtime:
        out["imports"] = imports(err.read_text())
    return out


def imports(text: str) -> dict:
    """-X importtime's lines: the total (sum of self times), the top-level imports by cumulative time and
    the modules by their own time."""
    total, top, own = 0, [], []
    for line in text.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
        if not self_us.isdigit():
            continue                                 # the header line
        total += int(self_us)
        own.append((int(self_us), name.strip()))
        if not name.startswith(" "):
            top.append((int(cumulative), name.strip()))
    top.sort(reverse=True)
    own.sort(reverse=True)
    return {"total_us": total, "modules": len(own), "top": top[:12], "own": own[:12]}


def measure(runs: int, trees: dict[str, str | None]) -> dict:
    """Every card started `runs` times from every tree, the trees alternating run by run."""
    results: dict[str, dict[str, list[dict]]] = {label: {card: [] for card in CARDS} for label in trees}
    for r in range(runs):
        for card in CARDS:
            for label, tree in trees.items():
                results[label][card].append(start_once(card, tree=tree))
    profile = {label: {card: start_once(card, importtime=True, tree=tree) for card in ("iso", "piv (fresh)")}
               for label, tree in trees.items()}
    # The floor under any daemon start: the interpreter, then what an asyncio program with a command line
    # imports before it does anything (asyncio as the daemon imports it, without ssl; argparse; logging).
    floors = {"python -c pass": "pass",
              "python -c 'import asyncio, argparse, logging' (no ssl)":
                  "import sys; sys.modules['ssl'] = None; import asyncio, argparse, logging"}
    floor = {}
    for name, code in floors.items():
        times = []
        for _ in range(3):
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.monotonic() - t)
        floor[name] = min(times)
    return {"runs": results, "profile": profile, "python_s": floor["python -c pass"], "floor_s": floor}


def report(where: str, m: dict) -> None:
    for label, cards in m["runs"].items():
        print(f"\n{where}, {label}: daemon start to gadget bound (READY) and idle RSS, "
              f"{len(cards['iso'])} runs per card, alternating with the other trees")
        for card, runs in cards.items():
            bound = [r["bound_s"] for r in runs]
            rss = [r["rss_kib"] / 1024 for r in runs]
            print(f"  {card:15s} bound {', '.join(f'{b:.2f}' for b in bound)} s (median {statistics.median(bound):.2f},"
                  f" best {min(bound):.2f}); RSS {', '.join(f'{x:.1f}' for x in rss)} MiB")
    for name, seconds in m.get("floor_s", {"python -c pass": m["python_s"]}).items():
        print(f"  ({name}: {seconds:.2f} s, best of 3)")
    for label, profile in m["profile"].items():
        for card, p in profile.items():
            imp = p["imports"]
            print(f"  {label}, {card}: with -X importtime bound {p['bound_s']:.2f} s; {imp['modules']} modules "
                  f"imported in {imp['total_us'] / 1e6:.2f} s; heaviest top-level imports (cumulative), then "
                  f"modules by own time:")
            for (cumulative, name), (own, oname) in zip(imp["top"], imp["own"]):
                print(f"      {cumulative / 1e3:8.0f} ms  {name:40s} {own / 1e3:8.0f} ms  {oname}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", action="store_true", help="measure here (inside a guest or on a UDC machine)")
    ap.add_argument("--flavour", default="amd64", choices=("amd64", "arm64"))
    ap.add_argument("--runs", type=int, default=3, help="starts per card (default 3)")
    ap.add_argument("--rev", action="append", default=[],
                    help="also the daemon as of this git revision (bench_floor.py --rev), alternating")
    ap.add_argument("--no-tree", action="store_true", help="leave out the working tree's daemon (with --rev)")
    ap.add_argument("--tree", action="append", default=[],
                    help="(with --guest) LABEL=DIR: a daemon from DIR's ccidgadget/ package")
    args = ap.parse_args(argv)
    from bench_floor import export_rev
    from bench_piv import have_gadget_stack

    if args.guest:
        trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"daemon": None}
        print(RESULT_TAG + json.dumps(measure(args.runs, {k: v or None for k, v in trees.items()})), flush=True)
        return 0
    trees = {} if args.no_tree and args.rev else {"daemon": None}
    trees.update(export_rev(rev) for rev in args.rev)
    if have_gadget_stack():
        report(os.uname().machine, measure(args.runs, trees))
        return 0
    from tests.vm import testbed

    # .pyc files made here for what changed: the guest's tree is a tmpfs overlay, it compiles at every boot
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "ccidgadget")], check=False)
    prepared = testbed.prepare(flavour_name=args.flavour)
    res = testbed.run([prepared.guest_python, str(Path(__file__).resolve()), "--guest", "--runs", str(args.runs),
                       *(a for label, tree in trees.items() for a in ("--tree", f"{label}={tree or ''}"))],
                      timeout=2400, cwd=REPO, env={"CCIDGADGET_E2E": "1"}, prepared=prepared)
    for line in res.output.splitlines():
        if line.startswith(RESULT_TAG):
            report(f"{args.flavour} guest", json.loads(line[len(RESULT_TAG):]))
            return 0
    print(res.describe(tail=40), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
