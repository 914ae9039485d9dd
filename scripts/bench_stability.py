#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Resource-stability and fault figures of the daemon through USB (issue 7).

Runs the fault-injection module tests/e2e/test_faults.py (all of it, or the tests matching ``-k``)
in the QEMU guest, or natively where dummy_hcd exists, and prints what its tests measured: the
daemon's VmRSS and fd count before/after/max over 1,000 network client cycles, 100 host
re-enumerations and oversized messages, plus the fault loops' counts and latencies. The tests
append these lines to ``$CCIDGADGET_VM_OUT/stability.txt``; this script prints that file.

    .venv/bin/python scripts/bench_stability.py                 # the whole module (~8 min in TCG)
    .venv/bin/python scripts/bench_stability.py -k stability    # only the RSS/fd loops
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = "tests/e2e/test_faults.py"


def have_gadget_stack() -> bool:
    udc = Path("/sys/class/udc")
    return os.geteuid() == 0 and Path("/sys/kernel/config/usb_gadget").is_dir() and udc.is_dir() \
        and any(udc.iterdir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", dest="select", default=None, help="pytest -k expression (default: every test)")
    ap.add_argument("--timeout", type=float, default=1500, help="guest timeout in seconds")
    args = ap.parse_args(argv)
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", MODULE]
    if args.select:
        pytest_args += ["-k", args.select]
    out = Path(tempfile.mkdtemp(prefix="ccidgadget-stability-"))
    if have_gadget_stack():
        p = subprocess.run(pytest_args, cwd=REPO, env={**os.environ, "CCIDGADGET_E2E": "1",
                                                      "CCIDGADGET_VM_OUT": str(out)})
        ok, output = p.returncode == 0, ""
    else:
        sys.path.insert(0, str(REPO))
        from tests.vm import testbed

        print("(in the QEMU guest: TCG-emulated CPU; RSS and fd counts are what matter, times are "
              "10-20x native)", flush=True)
        result = testbed.run(shlex.join(pytest_args), timeout=args.timeout, cwd=REPO, out_dir=out,
                             env={"CCIDGADGET_E2E": "1"})
        ok, output = result.ok, result.output
        if not ok:
            print(result.describe(tail=60), file=sys.stderr)
    figures = out / "stability.txt"
    if output:
        print("\n".join(output.splitlines()[-15:]))
    print(f"\n## figures ({figures})")
    print(figures.read_text() if figures.exists() else "(none written)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
