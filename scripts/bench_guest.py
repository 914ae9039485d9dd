#!/usr/bin/env python3
"""Benchmarks that need the USB gadget stack (the QEMU guest, or a dummy_hcd machine).

Prints, for the daemon on dummy_hcd with the host side's pcscd + libccid + pyscard:
- start-up time from launch to the gadget bound (READY) and to the reader usable;
- resident memory of the daemon idle and after the APDU loops;
- APDU round trip seen by a pyscard client: median and p90, short APDU and a 4 KiB read;
- per card engine, the added latency of the engine over the emulated card (median, p90),
  when the passthrough engines are available.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ccidgadget.cards.iso import ISO_APPLET_AID  # noqa: E402

OUT = Path(os.environ.get("CCIDGADGET_VM_OUT", "/tmp"))


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"bench: {what} not reached in {timeout} s")


def bound() -> bool:
    for udc in Path("/sys/kernel/config/usb_gadget").glob("*/UDC"):
        try:
            if udc.read_text().strip():
                return True
        except OSError:
            pass
    return False


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


class Stack:
    """The daemon (or ``command``, another gadget with the daemon's identity) plus pcscd, torn down on exit."""

    def __init__(self, *args: str, command: list[str] | None = None):
        self.command = command or [sys.executable, "-m", "ccidgadget", *args, "--state-dir",
                                   "/tmp/ccidgadget-bench-state"]

    def __enter__(self):
        self.log = open(OUT / "bench-daemon.log", "a")
        t0 = time.monotonic()
        self.daemon = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(bound, 120, "gadget bound")
        self.t_bound = time.monotonic() - t0
        wait_for(lambda: any(p.read_text().strip() == "0b" for p in
                             Path("/sys/bus/usb/devices").glob("*/bInterfaceClass")), 30, "enumeration")
        self.pcscd = subprocess.Popen(["pcscd", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from smartcard.System import readers

        def ours():
            try:
                return [r for r in readers() if "ccidgadget" in str(r)]
            except Exception:
                return []
        self.readers = wait_for(ours, 60, "the reader in pcscd")
        self.t_usable = time.monotonic() - t0
        return self

    def __exit__(self, *exc):
        self.pcscd.terminate()
        self.pcscd.wait(10)
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(30)
        self.log.close()


def release(conn) -> None:
    """Release the connection's context before pcscd goes, or pyscard complains at exit
    (Debian 12's pyscard 2.0.5, the arm64 guest's, has no release(): it does that when collected)."""
    conn.disconnect()
    if hasattr(conn, "release"):
        conn.release()


def timed(conn, apdu: list[int], n: int):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        data, sw1, sw2 = conn.transmit(apdu)
        out.append(time.perf_counter() - t)
        assert (sw1, sw2) == (0x90, 0x00), (hex(sw1), hex(sw2))
    return out


def reader_bench(n: int = 300) -> None:
    with Stack("--card", "emulated", "--type", "iso") as s:
        print(f"start-up: gadget bound {s.t_bound:.2f} s after launch; reader usable in pcscd after "
              f"{s.t_usable:.2f} s (includes starting pcscd)")
        print(f"daemon RSS idle: {rss_kib(s.daemon.pid) / 1024:.1f} MiB")
        conn = s.readers[0].createConnection()
        conn.connect()
        conn.transmit(list(bytes.fromhex("00A40400%02X" % len(ISO_APPLET_AID)) + ISO_APPLET_AID))
        timed(conn, list(bytes.fromhex("00CA005A00")), 20)        # warm-up
        short = timed(conn, list(bytes.fromhex("00CA005A00")), n)
        conn.transmit(list(bytes.fromhex("00A4000C020102")))
        big = timed(conn, list(bytes.fromhex("00B00000001000")), max(20, n // 10))
        print(f"APDU round trip via pyscard/pcscd/libccid/dummy_hcd, short (GET DATA), n={len(short)}: "
              f"median {statistics.median(short) * 1e3:.2f} ms, p90 {pct(short, 0.9) * 1e3:.2f} ms")
        print(f"4 KiB extended read (5 chained DataBlocks), n={len(big)}: median "
              f"{statistics.median(big) * 1e3:.2f} ms, p90 {pct(big, 0.9) * 1e3:.2f} ms")
        print(f"daemon RSS after {len(short) + len(big) + 20} APDUs: {rss_kib(s.daemon.pid) / 1024:.1f} MiB")
        release(conn)
    with Stack("--card", "emulated") as s:
        print(f"default card (PIV, created on first start): gadget bound {s.t_bound:.2f} s after launch; "
              f"RSS {rss_kib(s.daemon.pid) / 1024:.1f} MiB")


def main() -> int:
    reader_bench()
    extra = REPO / "scripts" / "bench_engines.py"
    if extra.exists():
        subprocess.run([sys.executable, str(extra), "--guest"], check=False)
    extra = REPO / "scripts" / "bench_piv.py"
    if extra.exists():
        subprocess.run([sys.executable, str(extra), "--guest"], check=False)
    extra = REPO / "scripts" / "bench_openpgp.py"
    if extra.exists():
        subprocess.run([sys.executable, str(extra), "--guest"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
