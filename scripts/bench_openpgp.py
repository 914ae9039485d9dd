#!/usr/bin/env python3
"""OpenPGP signatures per second through gpg: gpg -> gpg-agent -> scdaemon -> pcscd -> libccid -> USB
(dummy_hcd) -> FunctionFS -> ccidgadget -> the emulated OpenPGP card, and the card's in-process cost.

    scripts/bench_openpgp.py [--n N]        # boots the QEMU guest unless this machine has a UDC
    scripts/bench_openpgp.py --guest        # inside the guest (scripts/bench_guest.py calls this)

For Ed25519, P-256 and RSA-2048 in turn: key-attr, on-card generation (gpg --card-edit), then N
``gpg --detach-sign`` processes of a 1 KiB file, timed one by one (a whole gpg process each, as a
user or git sees it; gpg-agent and scdaemon stay up and scdaemon keeps PW1 verified, "Signature
PIN: not forced"). Then ``python -m ccidgadget.cards.openpgp.bench`` on the same CPU. Under QEMU
TCG every figure is 10-20x slower than native.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

ALGORITHMS = (("Ed25519", ("ed25519", "cv25519", "ed25519")),
              ("P-256", ("nistp256", "nistp256", "nistp256")),
              ("RSA-2048", ("rsa2048", "rsa2048", "rsa2048")))


def have_gadget_stack() -> bool:
    udc = Path("/sys/class/udc")
    return os.geteuid() == 0 and Path("/sys/kernel/config/usb_gadget").is_dir() and udc.is_dir() \
        and any(udc.iterdir())


def through_gpg(n: int) -> int:
    import conftest as e2e_conftest  # the e2e bed's daemon/pcscd helpers (imports pytest)
    from gnupg_helpers import GnuPG

    problem = e2e_conftest.environment_problem()
    if problem:
        print(f"bench_openpgp: no USB gadget stack here: {problem}", file=sys.stderr)
        return 1
    e2e = types.SimpleNamespace(**{k: getattr(e2e_conftest, k) for k in (
        "DaemonProcess", "PcscdProcess", "find_reader")})
    out = Path(os.environ.get("CCIDGADGET_VM_OUT") or tempfile.mkdtemp(prefix="bench-openpgp-")) / "bench-openpgp"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-openpgp-") as tmp:
        tmp = Path(tmp)
        daemon = e2e.DaemonProcess(["--card", "emulated", "--type", "openpgp", "--state-dir", str(tmp / "state")],
                                   out / "ccidgadget.log")
        pcscd = e2e.PcscdProcess(out / "pcscd.log")
        g = None
        try:
            daemon.wait_bound(60)
            pcscd.restart()
            reader = str(e2e.find_reader(lambda name: "ccidgadget" in name, timeout=60))
            # scdaemon over PC/SC takes the first reader pcscd lists (vsmartcard-vpcd's empty
            # "Virtual PCD 00 00" where that is installed) unless reader-port names ours
            g = GnuPG(tmp / "gnupg", scdaemon_options=("disable-ccid", f"reader-port {reader}"), log_dir=out)
            deadline = time.monotonic() + 60
            while g.gpg("--card-status", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit("bench_openpgp: GnuPG does not see the card\n" + g.scd_log_tail())
                g.kill_scdaemon()
            data = tmp / "data"
            data.write_bytes(os.urandom(1024))
            for name, attrs in ALGORITHMS:
                g.key_attr(*attrs)
                t = time.perf_counter()
                fpr = g.generate_on_card(f"bench {name}", "bench@example.org")
                gen = time.perf_counter() - t
                g.gpg("--yes", "-u", fpr, "--detach-sign", "-o", str(tmp / "warm.sig"), str(data))  # PIN, caches
                times = []
                for i in range(n):
                    t = time.perf_counter()
                    g.gpg("--yes", "-u", fpr, "--detach-sign", "-o", str(tmp / "data.sig"), str(data))
                    times.append(time.perf_counter() - t)
                med = statistics.median(times)
                print(f"gpg --detach-sign, {name:9s} median {med * 1000:7.0f} ms, {1 / med:5.2f} signatures/s "
                      f"(n={n}, min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms); "
                      f"card-edit generate {gen:.1f} s", flush=True)
        finally:
            if g is not None:
                g.kill()
            pcscd.stop()
            daemon.stop()
    return 0


def in_process() -> int:
    print("in-process, same CPU (python -m ccidgadget.cards.openpgp.bench: process_apdu, no USB):", flush=True)
    return subprocess.call([sys.executable, "-m", "ccidgadget.cards.openpgp.bench"], cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", action="store_true", help="run here (inside the guest / on a UDC machine)")
    ap.add_argument("--n", type=int, default=8, help="gpg processes per algorithm (default 8)")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process figures")
    args = ap.parse_args(argv)
    if args.guest or have_gadget_stack():
        rc = through_gpg(args.n)
        if not args.no_in_process:
            rc |= in_process()
        return rc
    from tests.vm import testbed

    return testbed.rerun_in_guest(__file__, ["--n", str(args.n), *(["--no-in-process"] if args.no_in_process else [])],
                                  timeout=1500, what="bench_openpgp", cwd=REPO, env={"CCIDGADGET_E2E": "1"})


if __name__ == "__main__":
    sys.exit(main())
