#!/usr/bin/env python3
"""`make bench`: every speed and memory figure, from one run.

In-process figures run here; figures that need the USB gadget stack run in the
QEMU guest (or natively where dummy_hcd exists).  Timings in the TCG guest are
noisy and its CPU is emulated: compare figures only within one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def run(argv: list[str]) -> int:
    print(f"\n### {' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])}", flush=True)
    return subprocess.call(argv, cwd=REPO)


def have_gadget_stack() -> bool:
    udc = Path("/sys/class/udc")
    return os.geteuid() == 0 and Path("/sys/kernel/config/usb_gadget").is_dir() and udc.is_dir() \
        and any(udc.iterdir())


def main() -> int:
    print("## in-process (this machine's CPU)", flush=True)
    rc = run([sys.executable, str(SCRIPTS / "bench_core.py")])
    piv = REPO / "ccidgadget" / "cards" / "piv" / "bench.py"
    if piv.exists():
        rc |= run([sys.executable, "-m", "ccidgadget.cards.piv.bench"])
    rc |= run([sys.executable, str(SCRIPTS / "bench_vault.py")])      # VERIFY, format 1 vs 2 (keys at rest)
    rc |= run([sys.executable, "-m", "ccidgadget.cards.openpgp.bench"])    # the OpenPGP card in process
    latency = REPO / "tests" / "passthrough" / "bench_latency.py"
    if latency.exists():
        rc |= run([sys.executable, str(latency)])
    print("\n## through USB (dummy_hcd), host side pcscd + libccid + pyscard", flush=True)
    if have_gadget_stack():
        rc |= run([sys.executable, str(SCRIPTS / "bench_guest.py")])
    else:
        sys.path.insert(0, str(REPO))
        from tests.vm import testbed

        print("(in the QEMU guest: TCG-emulated CPU, expect 10-20x the native times)", flush=True)
        result = testbed.run([sys.executable, str(SCRIPTS / "bench_guest.py")], timeout=1200, cwd=REPO,
                             env={"CCIDGADGET_E2E": "1"})
        print(result.output, flush=True)
        if not result.ok:
            print(result.describe(tail=40), file=sys.stderr)
            rc |= 1
    print("\n## start to READY and idle RSS per card, and the imports that cost the start", flush=True)
    rc |= run([sys.executable, str(SCRIPTS / "bench_startup.py")])
    print("\n## the floor: ours/floor per APDU, alternating guest boots, on x86-64 and on arm64", flush=True)
    rc |= run([sys.executable, str(SCRIPTS / "bench_floor.py")])
    print("\n## QEMU's own usb-ccid in the guest: libcacard's ccid-card-emulated vs vscard-card", flush=True)
    rc |= run([sys.executable, str(SCRIPTS / "bench_qemu_ccid.py")])
    return rc


if __name__ == "__main__":
    sys.exit(main())
