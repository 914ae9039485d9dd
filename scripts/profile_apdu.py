#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where an APDU's time goes in the daemon (and, for comparison, in the floor responder), in the guest.

    scripts/profile_apdu.py [--flavour amd64] [--card piv|iso] [--workload short|read|write] [-n 300]
    scripts/profile_apdu.py --guest [--card piv|iso] [--workload ...] [-n 300]     # here (a guest or a UDC machine)

One guest boot, one pcscd + libccid + pyscard host stack, each variant (daemon, floor) started several
times, one workload of bench_floor.py: ``short`` APDUs (the PIV SELECT, or GET DATA 5A on the ISO
card), the 4 KiB chained ``read`` or the 3000-byte chained ``write`` (PIV card only; the daemon's
card is authenticated with the management key first, as in bench_floor.py):

1. plain: the process as it ships; wall time per APDU seen by pyscard, the process' CPU time per
   APDU (all its threads, /proc/PID/task/*/schedstat) and pcscd's;
2. strace -c -f attached for the n APDUs: system calls per APDU, by name;
3. meters (this script's --shim): inclusive wall time per APDU of the loop's parts (asyncio's
   _run_once and its selector, each callback, python-functionfs' processEvents, the eventfd read,
   io_getevents, io_submit, the service, the core, the card), from perf_counter_ns wrappers
   that are on only while the n APDUs run (the wrappers add their own cost: compare rows, not sums);
4. cProfile over the n APDUs: the functions with the most own time, per APDU.

Everything is printed; nothing is asserted.  Under TCG every figure is far slower than on a board.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

OUT = Path(os.environ.get("CCIDGADGET_VM_OUT", "/tmp"))
PIV_AID = bytes.fromhex("A000000308000010000100")
APDUS = {"piv": [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID, 0x00],
         "iso": list(bytes.fromhex("00CA005A00"))}
RESULT_TAG = "PROFILE-APDU "


# --------------------------------------------------------------------------- the shim (in the measured process)


class Meters:
    """Inclusive wall time and calls per wrapped function, counted only while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.ns: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def wrap(self, owner, name: str, key: str | None = None, by_callback: bool = False) -> None:
        orig = getattr(owner, name)
        key = key or f"{owner.__name__}.{name}"
        ns, calls, clock = self.ns, self.calls, time.perf_counter_ns

        def wrapper(*args, **kwargs):
            if not self.on:
                return orig(*args, **kwargs)
            k = key
            if by_callback:              # asyncio Handle._run: one row per callback
                cb = getattr(args[0], "_callback", None)
                k = f"{key} {getattr(cb, '__qualname__', type(cb).__name__)}"
            t0 = clock()
            try:
                return orig(*args, **kwargs)
            finally:
                ns[k] += clock() - t0
                calls[k] += 1
        setattr(owner, name, wrapper)


def install_meters(meters: Meters) -> None:
    import asyncio.base_events
    import asyncio.events
    import selectors

    import functionfs
    import libaio

    meters.wrap(asyncio.base_events.BaseEventLoop, "_run_once", "asyncio _run_once (one loop turn)")
    meters.wrap(selectors.EpollSelector, "select", "selector.select (epoll_wait + bookkeeping)")
    meters.wrap(asyncio.events.Handle, "_run", "callback", by_callback=True)
    meters.wrap(functionfs.Function, "processEvents", "functionfs processEvents")
    meters.wrap(libaio.EventFD, "read", "eventfd read")
    meters.wrap(libaio.AIOContext, "getEvents", "AIOContext.getEvents (io_getevents + completions)")
    meters.wrap(libaio.AIOContext, "submit", "AIOContext.submit (io_submit)")
    meters.wrap(libaio.AIOBlock, "__init__", "AIOBlock() (bulk-IN block made)")
    meters.wrap(functionfs.Endpoint0File, "readinto", "ep0 readinto (ep0 events)")
    try:
        from ccidgadget.cards.base import EmulatedCard
        from ccidgadget.ccid.reader import Reader
        from ccidgadget.daemon.service import ReaderService
        from ccidgadget.usb.function import CCIDFunction
    except ImportError:
        return
    meters.wrap(ReaderService, "bulk_out", "service.bulk_out (core + card + bulk-IN submit)")
    meters.wrap(Reader, "receive_bulk_out", "core receive_bulk_out")
    meters.wrap(Reader, "card_answer", "core card_answer")
    meters.wrap(Reader, "next_events", "core next_events")
    meters.wrap(EmulatedCard, "transmit_now", "card transmit_now (applet)")
    meters.wrap(CCIDFunction, "send_bulk_in", "function send_bulk_in")
    # the worker-thread path (commands that are not QUICK_INS: PUT DATA...)
    from ccidgadget.cards.applet import AppletCard
    from ccidgadget.cards.storage import CardStore
    from ccidgadget.daemon.service import _Requests
    meters.wrap(AppletCard, "process_apdu", "card process_apdu (any thread)")
    meters.wrap(EmulatedCard, "transmit", "card transmit (coroutine made)")
    meters.wrap(ReaderService, "_complete", "service _complete (coroutine made)")
    meters.wrap(_Requests, "add", "service request added (timer armed if none)")
    meters.wrap(CardStore, "save", "card state saved (JSON + MAC + write + fsync)")


def shim(variant: str, argv: list[str]) -> int:
    """Run the daemon (or the floor responder) with meters; SIGUSR1 starts them, SIGUSR2 writes them out."""
    mode = os.environ.get("PROFILE_APDU_MODE", "meters")
    result = Path(os.environ["PROFILE_APDU_RESULT"])
    meters = Meters()
    profiler = None
    if mode == "meters":
        install_meters(meters)

    def start(*_):
        nonlocal profiler
        meters.ns.clear()
        meters.calls.clear()
        if mode == "cprofile":
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        meters.on = True

    def stop(*_):
        meters.on = False
        if profiler is not None:
            profiler.disable()
            import io
            import pstats
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
            result.write_text(text.getvalue())
        else:
            result.write_text(json.dumps({"ns": dict(meters.ns), "calls": dict(meters.calls)}))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if variant == "floor":
        import floor_responder
        return floor_responder.main(argv)
    from ccidgadget.cli import main
    return main(argv)


# --------------------------------------------------------------------------- in the guest


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (schedstat's first field: ns on a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def pcscd_pid() -> int | None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "pcscd":
                    return int(p.name)
            except OSError:
                pass
    return None


def variant_command(variant: str, card: str, shim_mode: str | None) -> tuple[list[str], dict]:
    if variant == "floor":
        args = ["--read-size", "4096"]
    else:
        args = ["--card", "emulated", *(["--type", "iso"] if card == "iso" else []),
                "--state-dir", f"/tmp/profile-apdu-{card}", "--log-level", "info"]
    if shim_mode is None:
        if variant == "floor":
            return [sys.executable, str(REPO / "scripts" / "floor_responder.py"), *args], {}
        return [sys.executable, "-m", "ccidgadget", *args], {}
    return [sys.executable, str(Path(__file__).resolve()), "--shim", variant, "--", *args], \
        {"PROFILE_APDU_MODE": shim_mode}


def workload_apdus(variant: str, card: str, workload: str) -> tuple[list[int], list[list[int]]]:
    """The timed APDU and what the daemon's card needs before (bench_floor.py's objects)."""
    from bench_floor import READ_OBJECT, READ_SIZE, WRITE_OBJECT, WRITE_SIZE, extended, object_data

    if workload == "short":
        return (APDUS[card] if variant == "daemon" else APDUS["piv"]), []
    if workload == "read":
        return extended(0xCB, b"\x5c\x03" + READ_OBJECT), \
            [extended(0xDB, object_data(READ_OBJECT, READ_SIZE + 5))] if variant == "daemon" else []
    return extended(0xDB, object_data(WRITE_OBJECT, WRITE_SIZE)), []


def one_phase(variant: str, card: str, n: int, phase: str, workload: str = "short") -> dict:
    import bench_guest

    shim_mode = {"meters": "meters", "cprofile": "cprofile"}.get(phase)
    command, env = variant_command(variant, card, shim_mode)
    result_file = OUT / f"profile-apdu-{variant}-{phase}.out"
    result_file.unlink(missing_ok=True)
    os.environ.update(env, PROFILE_APDU_RESULT=str(result_file))
    apdu, setup = workload_apdus(variant, card, workload)
    out: dict = {"variant": variant, "phase": phase}
    with bench_guest.Stack(command=command) as s:
        conn = s.readers[0].createConnection()
        conn.connect()
        if card == "iso" and variant == "daemon":
            from ccidgadget.cards.iso import ISO_APPLET_AID
            conn.transmit(list(bytes.fromhex("00A40400%02X" % len(ISO_APPLET_AID)) + ISO_APPLET_AID))
        if variant == "daemon" and workload != "short":
            from bench_piv import Card, authenticate_management

            authenticate_management(Card(conn))
        for command in setup:
            data, sw1, sw2 = conn.transmit(command)
            assert (sw1, sw2) == (0x90, 0x00), f"set-up: {sw1:02X}{sw2:02X}"
        bench_guest.timed(conn, apdu, 10 if workload != "short" else 30)      # warm-up
        pid, pcscd = s.daemon.pid, pcscd_pid()
        strace = None
        if phase == "strace":
            trace_file = OUT / f"profile-apdu-{variant}-strace.txt"
            strace = subprocess.Popen(["strace", "-c", "-f", "-o", str(trace_file), "-p", str(pid)],
                                      stderr=subprocess.DEVNULL)
            time.sleep(2)                                      # attached to every thread
        if shim_mode:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.2)
        cpu0, pcscd0 = cpu_ns(pid), cpu_ns(pcscd) if pcscd else 0
        samples = bench_guest.timed(conn, apdu, n)
        cpu1, pcscd1 = cpu_ns(pid), cpu_ns(pcscd) if pcscd else 0
        if shim_mode:
            os.kill(pid, signal.SIGUSR2)
            bench_guest.wait_for(result_file.exists, 30, "profile written")
            time.sleep(0.5)
        if strace is not None:
            strace.send_signal(signal.SIGINT)
            strace.wait(30)
            out["strace"] = trace_file.read_text()
        out.update(median_ms=statistics.median(samples) * 1e3, p90_ms=bench_guest.pct(samples, 0.9) * 1e3,
                   cpu_us=(cpu1 - cpu0) / n / 1e3, pcscd_cpu_us=(pcscd1 - pcscd0) / n / 1e3,
                   rss_kib=bench_guest.rss_kib(pid))
        if shim_mode == "meters":
            out["meters"] = json.loads(result_file.read_text())
        elif shim_mode == "cprofile":
            out["cprofile"] = result_file.read_text()
        bench_guest.release(conn)
        del conn
    return out


def guest(card: str, n: int, variants: list[str], workload: str) -> None:
    phases = ("plain", "strace", "meters", "cprofile", "plain")
    results = []
    for phase in phases:
        for variant in variants:
            results.append(one_phase(variant, card, n, phase, workload))
    report(results, n)


def report(results: list[dict], n: int) -> None:
    print(f"\n== per APDU, n={n}; wall = pyscard transmit round trip, cpu = the process' CPU time "
          f"(all threads), pcscd = pcscd's CPU time", flush=True)
    for r in results:
        print(f"  {r['variant']:6s} {r['phase']:8s} wall median {r['median_ms']:.2f} ms p90 {r['p90_ms']:.2f} ms; "
              f"cpu {r['cpu_us']:.0f} us; pcscd {r['pcscd_cpu_us']:.0f} us; RSS {r['rss_kib'] / 1024:.1f} MiB")
    for r in results:
        if "meters" in r:
            print(f"\n== {r['variant']}: meters, inclusive wall time per APDU (us) and calls per APDU")
            m = r["meters"]
            for key, ns in sorted(m["ns"].items(), key=lambda kv: -kv[1]):
                print(f"  {ns / n / 1e3:9.1f} us  {m['calls'][key] / n:6.2f}x  {key}")
        if "strace" in r:
            print(f"\n== {r['variant']}: strace -c -f over {n} APDUs (calls / {n} = per APDU)")
            for line in r["strace"].splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[3].isdigit():
                    print(f"  {int(parts[3]) / n:6.2f}/APDU  {line}")
                elif line.strip():
                    print(f"  {line}")
        if "cprofile" in r:
            print(f"\n== {r['variant']}: cProfile over {n} APDUs (sorted by own time; divide by {n})")
            lines = r["cprofile"].splitlines()
            start = next((i for i, l in enumerate(lines) if "ncalls" in l), 0)
            print("\n".join("  " + l for l in lines[max(0, start - 4):start + 40]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--shim"]:
        variant, rest = argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return shim(variant, rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", action="store_true", help="measure here (in a guest or on a UDC machine)")
    ap.add_argument("--card", choices=tuple(APDUS), default="piv", help="the daemon's card (default piv)")
    ap.add_argument("--variant", action="append", choices=("daemon", "floor"), help="default: both")
    ap.add_argument("--flavour", default="amd64", choices=("amd64", "arm64"))
    ap.add_argument("--workload", choices=("short", "read", "write"), default="short",
                    help="short APDUs (default), the 4 KiB chained read or the 3000-byte chained write")
    ap.add_argument("-n", type=int, default=300, help="APDUs per phase (default 300)")
    args = ap.parse_args(argv)
    if args.workload != "short" and args.card != "piv":
        ap.error("--workload read|write needs the PIV card")
    variants = args.variant or ["daemon", "floor"]
    if args.guest:
        guest(args.card, args.n, variants, args.workload)
        return 0
    from tests.vm import testbed

    prepared = testbed.prepare(flavour_name=args.flavour)
    cmd = [prepared.guest_python, str(Path(__file__).resolve()), "--guest", "--card", args.card, "-n", str(args.n),
           "--workload", args.workload,
           *(a for v in variants for a in ("--variant", v))]
    res = testbed.run(cmd, timeout=1800, cwd=REPO, env={"CCIDGADGET_E2E": "1"}, prepared=prepared)
    print(res.output, flush=True)
    if not res.ok:
        print(res.describe(tail=40), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
