#!/usr/bin/env python3
"""`make demo`: the daemon on its default emulated card, and the host's view of it.

Where this machine has a UDC (dummy_hcd loaded, root) the demo runs here;
otherwise it boots the QEMU guest of tests/vm/testbed.py and runs there, the
daemon being the USB device and the guest's own USB host side (kernel, pcscd,
libccid, OpenSC) being the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GADGETS = Path("/sys/kernel/config/usb_gadget")


def have_gadget_stack() -> bool:
    udc = Path("/sys/class/udc")
    return os.geteuid() == 0 and GADGETS.is_dir() and udc.is_dir() and any(udc.iterdir())


def section(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def show(cmd: list[str] | str, timeout: float = 60) -> str:
    shell = isinstance(cmd, str)
    print(f"$ {cmd if shell else ' '.join(cmd)}", flush=True)
    try:
        p = subprocess.run(cmd, shell=shell, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        out = (p.stdout + p.stderr).rstrip()
    except subprocess.TimeoutExpired:
        out = f"(timed out after {timeout} s)"
    print(out, flush=True)
    return out


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: {what} did not happen within {timeout} s")


def guest_demo() -> int:
    state = Path(os.environ.get("CCIDGADGET_DEMO_STATE", "/tmp/ccidgadget-demo-state"))
    log_path = Path(os.environ.get("CCIDGADGET_VM_OUT", "/tmp")) / "demo-daemon.log"
    section("start the daemon: ccidgadget --card emulated")
    log = open(log_path, "w")
    daemon = subprocess.Popen([sys.executable, "-m", "ccidgadget", "--card", "emulated",
                               "--state-dir", str(state), "--log-level", "info"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for(lambda: any((g / "UDC").read_text().strip() for g in GADGETS.glob("*") if (g / "UDC").exists()),
                 60, "binding the gadget")
        wait_for(lambda: any(p.read_text().strip() == "0b" for p in Path("/sys/bus/usb/devices").glob("*/bInterfaceClass")),
                 30, "host enumeration")
        section("configfs, as the daemon built it")
        show("find /sys/kernel/config/usb_gadget/ccidgadget -maxdepth 3 | sort | head -40")
        section("the host's USB view")
        show(["lsusb"])
        show("lsusb -v -d 1209:2702 2>/dev/null | sed -n '/Interface Descriptor/,$p' | head -70")
        section("pcscd + libccid: the reader and the card")
        pcscd = subprocess.Popen(["pcscd", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: Path("/run/pcscd/pcscd.comm").exists(), 30, "pcscd start")
            time.sleep(2)
            listing = show(["opensc-tool", "--list-readers"])
            # vsmartcard-vpcd, when installed, adds "Virtual PCD" readers before ours.
            index = next((line.split()[0] for line in listing.splitlines()
                          if "ccidgadget" in line and line.split()[0].isdigit()), "0")
            show(["opensc-tool", "--reader", index, "--atr"])
            show(["opensc-tool", "--reader", index, "--name"])
            show(["pkcs15-tool", "--reader", index, "--dump"], timeout=120)
            if shutil.which("yubico-piv-tool"):
                show(["yubico-piv-tool", "-r", "ccidgadget", "-a", "status"], timeout=120)
        finally:
            pcscd.terminate()
            pcscd.wait(timeout=10)
        section("daemon log")
        print(log_path.read_text()[-3000:])
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)
        section(f"daemon stopped (exit {rc}); configfs afterwards")
        show("ls /sys/kernel/config/usb_gadget/")
    return rc


def main() -> int:
    if "--guest" in sys.argv or have_gadget_stack():
        return guest_demo()
    sys.path.insert(0, str(REPO))
    from tests.vm import testbed

    print("demo: this machine has no USB device controller; booting the QEMU guest (about 10 s)...", flush=True)
    result = testbed.run([sys.executable, str(Path(__file__).resolve()), "--guest"], timeout=600,
                         cwd=REPO, stream=None)
    print(result.output)
    if not result.ok:
        print(result.describe(tail=60), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
