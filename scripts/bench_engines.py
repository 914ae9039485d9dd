#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Added latency per APDU of each card engine, through the USB gadget (issue 5).

    .venv/bin/python scripts/bench_engines.py [-n 200] [--apdu 00CA005A00]

One daemon, one slot per engine, all holding the same emulated ISO card:

    slot 0  emulated   the card in the daemon itself (the reference)
    slot 1  passthru   a VSCard client process relaying an IsoCard over loopback
    slot 2  vpcd       a vicc look-alike process relaying an IsoCard over loopback
                       (real vicc is too slow to say anything about our engine)
    slot 3  pcsc       pcscd's "Virtual PCD 00 00" (vsmartcard-vpcd), filled by
                       `ccidgadget vpcd-card --type iso` (skipped if it does not come up);
                       shared, so that the bench also times that reader directly ("vpcd-direct":
                       pyscard -> pcscd -> vpcd -> vpcd-card, no USB), the cost of the relayed
                       reader itself
    slot 4  passthru-min  the VSCard engine with scripts/min_peer.c as its client: C, 90 00 to
    slot 5  vpcd-min      every APDU, no card; the vpcd engine likewise.  What these add over the
                       emulated slot is our engine and the loopback round trip, nothing of a peer

Two floors under any relaying engine, measured before and after the rounds: a round trip of a
12-byte message between two C processes on loopback (min_peer rtt/echo: the kernel's share), and
the same from a Python asyncio Protocol, as our engines use, to the C echo (what any asyncio
engine pays for one write, one wake-up and one read).

The client is pyscard -> pcscd -> libccid -> USB (dummy_hcd) -> daemon -> engine -> peer.  The
variants are interleaved APDU by APDU, in a rotating order, so that the guest's noise hits them
all alike; "added" is the variant's latency minus the emulated slot's, as medians and p90s and,
paired round by round, as the median and p90 of the differences.

Where this machine has no USB device controller the script boots the QEMU guest of
tests/vm/testbed.py and runs itself there with --guest (as scripts/bench_guest.py does).
"""

from __future__ import annotations

import argparse
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

import min_peer  # noqa: E402

GADGETS = Path("/sys/kernel/config/usb_gadget")
OUT = Path(os.environ.get("CCIDGADGET_VM_OUT", "/tmp"))
HELPERS = REPO / "tests" / "e2e" / "passthrough_helpers.py"
VSCARD_PORT = 2001
VPCD_PORT = 35990                 # pcscd's own vpcd driver has 35963/35964
PCSCD_VPCD_PORT = 35963
VIRTUAL_PCD_0 = "Virtual PCD 00 00"
MIN_VSCARD_PORT = VSCARD_PORT + 1
MIN_VPCD_PORT = VPCD_PORT + 1
ECHO_PORT = 35992
ENGINES = ("emulated", "passthru", "vpcd", "pcsc", "passthru-min", "vpcd-min")


def have_gadget_stack() -> bool:
    udc = Path("/sys/class/udc")
    return os.geteuid() == 0 and GADGETS.is_dir() and udc.is_dir() and any(udc.iterdir())


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def bound() -> bool:
    for udc in GADGETS.glob("*/UDC"):
        try:
            if udc.read_text().strip():
                return True
        except OSError:
            pass
    return False


def pct(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


class Stack:
    """The six-slot daemon, the peers, pcscd; all stopped on exit."""

    def __init__(self, state: Path):
        self.state = state
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.log = open(OUT / "bench-engines.log", "a")

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.log.write(f"--- {name}: {' '.join(argv)}\n")
        self.log.flush()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                             cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append((name, p))
        return p

    def __enter__(self) -> "Stack":
        py = sys.executable
        self.daemon = self.spawn("daemon", [
            py, "-m", "ccidgadget", "--state-dir", str(self.state / "daemon"), "--log-level", "warning",
            "--card", "emulated", "--type", "iso",
            "--card", "passthru", "--listen", f"127.0.0.1:{VSCARD_PORT}",
            "--card", "vpcd", "--listen", f"127.0.0.1:{VPCD_PORT}",
            "--card", "pcsc", "--reader", VIRTUAL_PCD_0, "--shared",
            "--card", "passthru", "--listen", f"127.0.0.1:{MIN_VSCARD_PORT}",
            "--card", "vpcd", "--listen", f"127.0.0.1:{MIN_VPCD_PORT}"])
        wait_for(lambda: self.daemon.poll() is not None or bound(), 120, "gadget bound")
        if self.daemon.poll() is not None:
            raise SystemExit(f"bench_engines: the daemon exited with {self.daemon.returncode}; "
                             f"see {OUT / 'bench-engines.log'}")
        wait_for(lambda: any(p.read_text().strip() == "0b" for p in
                             Path("/sys/bus/usb/devices").glob("*/bInterfaceClass")), 30, "enumeration")
        # pcscd after the reader is on the bus (no udev in the guest)
        self.spawn("pcscd", ["pcscd", "-f"])
        self.spawn("vscard-peer", [py, str(HELPERS), "vscard", str(VSCARD_PORT)])
        self.spawn("vpcd-peer", [py, str(HELPERS), "vpcd", str(VPCD_PORT)])
        self.spawn("vpcd-card", [py, "-m", "ccidgadget", "vpcd-card", "--type", "iso", "--port",
                                 str(PCSCD_VPCD_PORT), "--state-dir", str(self.state / "vpcd-card")])
        from ccidgadget.cards.iso import IsoCard
        atr = IsoCard().atr().hex()
        self.spawn("vscard-min-peer", [str(self.min_peer), "vscard", str(MIN_VSCARD_PORT), atr])
        self.spawn("vpcd-min-peer", [str(self.min_peer), "vpcd", str(MIN_VPCD_PORT), atr])
        self.spawn("echo-peer", [str(self.min_peer), "echo", str(ECHO_PORT)])
        return self

    @property
    def min_peer(self) -> Path:
        return min_peer.build(self.state)

    def __exit__(self, *exc) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.log.close()


def our_readers(timeout: float) -> list:
    from smartcard.System import readers

    def all_slots():
        try:
            rs = sorted((r for r in readers() if "ccidgadget" in str(r)), key=str)
        except Exception:
            return None
        return rs if len(rs) == len(ENGINES) else None
    return wait_for(all_slots, timeout, f"{len(ENGINES)} ccidgadget readers in pcscd", 0.3)


def connect_when_present(reader, timeout: float):
    from smartcard.Exceptions import CardConnectionException, NoCardException

    deadline = time.monotonic() + timeout
    while True:
        conn = reader.createConnection()
        try:
            conn.connect()
            return conn
        except (NoCardException, CardConnectionException):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)


def transmit(conn, apdu: list[int]) -> float:
    t = time.perf_counter()
    data, sw1, sw2 = conn.transmit(apdu)
    dt = time.perf_counter() - t
    if (sw1, sw2) != (0x90, 0x00):
        raise SystemExit(f"bench_engines: unexpected status {sw1:02X}{sw2:02X}")
    return dt


def run_bench(n: int, apdu_hex: str) -> int:
    from ccidgadget.cards.iso import ISO_APPLET_AID

    select = list(bytes.fromhex("00A40400%02X" % len(ISO_APPLET_AID)) + ISO_APPLET_AID + b"\x00")
    apdu = list(bytes.fromhex(apdu_hex))
    state = Path("/tmp/ccidgadget-bench-engines")
    with Stack(state) as stack:
        t0 = time.monotonic()
        readers = our_readers(90)
        conns = {}
        for engine, reader in zip(ENGINES, readers):
            conn = connect_when_present(reader, 60 if engine != "pcsc" else 45)
            if conn is None:
                print(f"bench_engines: no card in the {engine} slot ({reader}); variant skipped")
                continue
            transmit(conn, select)
            conns[engine] = conn
        if "pcsc" in conns:
            from smartcard.System import readers as all_readers
            direct = next((r for r in all_readers() if str(r) == VIRTUAL_PCD_0), None)
            conn = connect_when_present(direct, 10) if direct is not None else None
            if conn is not None:
                transmit(conn, select)
                conns["vpcd-direct"] = conn
        if "emulated" not in conns:
            raise SystemExit("bench_engines: the emulated slot did not work")
        print(f"set-up {time.monotonic() - t0:.1f} s; APDU {apdu_hex}, {n} rounds, variants interleaved: "
              f"{', '.join(conns)}")
        floors_before = min_peer.rtt_floors(stack.min_peer, ECHO_PORT, max(n, 200))
        for _ in range(20):                                   # warm-up
            for conn in conns.values():
                transmit(conn, apdu)
        samples: dict[str, list[float]] = {e: [] for e in conns}
        order = list(conns)
        for i in range(n):
            rot = order[i % len(order):] + order[:i % len(order)]
            for engine in rot:
                samples[engine].append(transmit(conns[engine], apdu))
        for conn in conns.values():
            conn.disconnect()
            conn.release()
        floors_after = min_peer.rtt_floors(stack.min_peer, ECHO_PORT, max(n, 200))
        ms = {e: [x * 1e3 for x in v] for e, v in samples.items()}
        ref = ms["emulated"]
        ref_med, ref_p90 = statistics.median(ref), pct(ref, 0.9)
        print()
        print(f"{'engine':<12} {'median':>8} {'p90':>8}   {'added: median':>14} {'p90':>7}   "
              f"{'paired diff: median':>20} {'p90':>7}   (ms, n={n})")
        for engine, v in ms.items():
            med, p90 = statistics.median(v), pct(v, 0.9)
            if engine == "emulated":
                print(f"{engine:<12} {med:8.2f} {p90:8.2f}   {'(reference)':>14} {'':>7}   {'':>20} {'':>7}")
                continue
            diffs = [a - b for a, b in zip(v, ref)]
            print(f"{engine:<12} {med:8.2f} {p90:8.2f}   {med - ref_med:+14.2f} {p90 - ref_p90:+7.2f}   "
                  f"{statistics.median(diffs):+20.2f} {pct(diffs, 0.9):+7.2f}")
        if "vpcd-direct" in ms and "pcsc" in ms:
            diffs = [a - b - c for a, b, c in zip(ms["pcsc"], ms["vpcd-direct"], ref)]
            print(f"{'pcsc engine alone (pcsc - vpcd-direct - emulated, paired)':<60} median "
                  f"{statistics.median(diffs):+.2f} p90 {pct(diffs, 0.9):+.2f}")
        print("\nfloors of a relay round trip on loopback (12 bytes to the C echo peer; median / p90 ms, "
              "before and after the rounds):")
        for name in floors_before:
            (b, bp), (a, ap) = floors_before[name], floors_after[name]
            print(f"  {name:<14} {b:6.3f} / {bp:6.3f}   {a:6.3f} / {ap:6.3f}")
        print("\nround trip: pyscard -> pcscd -> libccid -> USB (dummy_hcd) -> daemon -> engine -> peer; "
              "the passthru and vpcd peers hold an IsoCard, in Python processes, on loopback; the -min peers are "
              "scripts/min_peer.c (90 00, no card)")
        if stack.daemon.poll() is not None:
            raise SystemExit(f"bench_engines: the daemon died (exit {stack.daemon.returncode})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="APDUs per engine (default 200)")
    ap.add_argument("--apdu", default="00CA005A00", help="command APDU in hex (default GET DATA 00CA005A00; "
                    "it must answer 90 00 on the ISO card with its applet selected)")
    ap.add_argument("--guest", action="store_true", help="run here (in the guest), do not boot a VM")
    ap.add_argument("--timeout", type=float, default=900, help="VM timeout in seconds")
    args = ap.parse_args(argv)
    if args.guest or have_gadget_stack():
        return run_bench(args.n, args.apdu)
    from tests.vm import testbed

    return testbed.rerun_in_guest(__file__, ["-n", str(args.n), "--apdu", args.apdu], timeout=args.timeout,
                                  what="bench_engines", tail=60, cwd=REPO, stream=None)


if __name__ == "__main__":
    sys.exit(main())
