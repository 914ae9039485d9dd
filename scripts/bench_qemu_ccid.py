#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Latency per APDU through QEMU's usb-ccid: libcacard's ccid-card-emulated vs our vscard-card (issue 14).

    .venv/bin/python scripts/bench_qemu_ccid.py [-n 200]

One guest, two QEMU usb-ccid readers on its UHCI controller, both holding a CAC card made from the
same NSS database (QEMU's docs/system/devices/ccid.rst, tests/e2e/cac_helpers.build_nss_db):

    port 1  ccid-card-emulated,backend=certificates   libcacard inside QEMU (the reference)
    port 2  ccid-card-passthru + vscard-card --type cac our card, across a loopback VSCard socket

The client in the guest is pyscard -> pcscd -> libccid -> UHCI -> QEMU.  For each APDU kind the two
readers are timed alternately, round by round (the order flips every round), so the guest's noise
hits both alike; the figures are medians and p90s per APDU, and the paired per-round differences.
The guest's CPU is emulated (TCG) but both card ends run natively, outside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QEMU_READER = "Gemalto Gemplus USB SmartCard Reader 433-Swap"
NICKNAMES = ("id-cert", "signing-cert", "encryption-cert")
PKI0 = bytes.fromhex("A0000000790100")
#: (name, APDU): what a CAC client does most: select an applet, read a certificate buffer
WORKLOAD = (
    ("SELECT PKI applet", bytes((0, 0xA4, 4, 0, len(PKI0))) + PKI0),
    ("READ BUFFER 240 bytes", bytes.fromhex("8052000002 02F0")),
)
VARIANTS = ("emulated", "vscard-card")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def guest(rounds: int) -> int:
    subprocess.run(["modprobe", "-d", os.environ["CCIDGADGET_VM_MODULES"], "-a", "uhci_hcd"], check=True)
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    import conftest as e2e
    from smartcard.System import readers
    e2e.wait_until(lambda: len([d for d in Path("/sys/bus/usb/devices").glob("*/idVendor")
                                if d.read_text().strip() == "08e6"]) == 2, 30, what="two usb-ccid devices")
    out = Path(os.environ.get("CCIDGADGET_VM_OUT", "/tmp"))
    pcscd = e2e.PcscdProcess(out / "bench-pcscd.log").start()
    try:
        def both():
            rs = {str(r): r for r in readers() if QEMU_READER in str(r)}
            by_port = {v: next((r for n, r in rs.items() if f"-{p})" in n), None)
                       for v, p in zip(VARIANTS, (1, 2))}
            return by_port if all(by_port.values()) else None
        found = e2e.wait_until(both, 60, what="both readers")
        conns = {}
        for v in VARIANTS:
            def connected(v=v):
                try:
                    c = found[v].createConnection()
                    c.connect()
                    return c
                except Exception:
                    return None
            conns[v] = e2e.wait_until(connected, 60, what=f"a card in the {v} reader")
            print(f"{v:12s} ATR {bytes(conns[v].getATR()).hex()}  ({found[v]})", flush=True)

        apdus = {v: {} for v in VARIANTS}

        def tx(v: str, apdu: bytes) -> float:
            """One operation: the command, then GET RESPONSE while 61xx (libcacard answers T=0 style:
            61xx first; ours answers at once); its time in ms, and the APDU count kept in `apdus`."""
            t = time.perf_counter()
            data, sw1, sw2 = conns[v].transmit(list(apdu))
            n = 1
            while sw1 == 0x61:
                more, sw1, sw2 = conns[v].transmit([0x00, 0xC0, 0x00, 0x00, sw2])
                data += more
                n += 1
            dt = time.perf_counter() - t
            if (sw1, sw2) != (0x90, 0x00):
                raise SystemExit(f"{v}: {apdu.hex()} -> {sw1:02X}{sw2:02X}")
            apdus[v][apdu] = n
            return dt * 1000

        print(f"\n{rounds} rounds per operation, the two readers alternating (order flipped each round); "
              "ms per operation (the command and the GET RESPONSEs its 61xx asks for)")
        print(f"{'operation':24s} {'variant':12s} {'median':>8s} {'p90':>8s} {'APDUs':>6s} {'ms/APDU':>8s}")
        for name, apdu in WORKLOAD:
            select = WORKLOAD[0][1]
            for v in VARIANTS:                       # warm up, and the READ BUFFER needs the applet selected
                for _ in range(5):
                    tx(v, select)
                    if apdu != select:
                        tx(v, apdu)
            times = {v: [] for v in VARIANTS}
            for i in range(rounds):
                order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
                for v in order:
                    times[v].append(tx(v, apdu))
            for v in VARIANTS:
                med, n = statistics.median(times[v]), apdus[v][apdu]
                print(f"{name:24s} {v:12s} {med:8.2f} {pct(times[v], 0.9):8.2f} {n:6d} {med / n:8.2f}")
            diff = [b - a for a, b in zip(times[VARIANTS[0]], times[VARIANTS[1]])]
            print(f"{name:24s} {'added':12s} {statistics.median(diff):8.2f} {pct(diff, 0.9):8.2f}"
                  "   (vscard-card minus emulated, paired per round)")
        for c in conns.values():
            c.disconnect()
            c.release()
        conns.clear()
    finally:
        pcscd.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--rounds", type=int, default=200)
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.guest:
        return guest(args.rounds)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    from cac_helpers import build_nss_db

    from tests.vm import testbed
    from tests.e2e.qemu_host import free_ports
    work = Path(tempfile.mkdtemp(prefix="bench-qemu-ccid-"))
    db = build_nss_db(work / "fake-smartcard")
    (port,) = free_ports(1)
    certs = ",".join(f"cert{i}={n}" for i, n in enumerate(NICKNAMES, 1))
    qemu_args = ["-device", "piix3-usb-uhci,id=uhci",
                 "-device", "usb-ccid,bus=uhci.0,port=1,id=ccid-emulated",
                 "-device", f"ccid-card-emulated,backend=certificates,db={db},{certs},bus=ccid-emulated.0",
                 "-chardev", f"socket,id=vsc,host=127.0.0.1,port={port},server=on,wait=off",
                 "-device", "usb-ccid,bus=uhci.0,port=2,id=ccid-vscard",
                 "-device", "ccid-card-passthru,chardev=vsc,bus=ccid-vscard.0"]
    host = [sys.executable, "-m", "ccidgadget", "vscard-card", "--state-dir", str(work / "state"),
            "--connect", f"127.0.0.1:{port}", "--type", "cac", "--db", db,
            *sum((["--cert", n] for n in NICKNAMES), [])]
    print("(in the QEMU guest: TCG-emulated CPU; both cards run natively outside it)", flush=True)
    res = testbed.run([sys.executable, str(Path(__file__).resolve()), "--guest", "-n", str(args.rounds)],
                      timeout=1200, cwd=REPO, env={"CCIDGADGET_E2E": "1"}, qemu_args=qemu_args,
                      host_command=host, out_dir=work / "out")
    print(res.output, flush=True)
    if not res.ok:
        print(res.describe(tail=40), file=sys.stderr)
        print((work / "out" / testbed.HOST_LOG_FILE).read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
