#!/usr/bin/env python3
"""`make demo`: the daemon on its default emulated card, and what a user gains from it on the host.

The USB and PC/SC view (descriptors, reader, ATR), then a key generated on the card, a
signature made by the card and verified with openssl, and the card's key as ssh lists it
(OpenSC's PKCS#11 module); gpg --card-status once the OpenPGP card exists.

Where this machine has a UDC (dummy_hcd loaded, root) the demo runs here;
otherwise it boots the QEMU guest of tests/vm/testbed.py and runs there, the
daemon being the USB device and the guest's own USB host side (kernel, pcscd,
libccid, OpenSC) being the host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GADGETS = Path("/sys/kernel/config/usb_gadget")

sys.path.insert(0, str(REPO))
from ccidgadget.options import CARD_TYPES  # noqa: E402

#: the OpenPGP card (another work item) is shown once it exists
OPENPGP = "openpgp" in CARD_TYPES


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


PKCS11 = next((str(p) for p in Path("/usr/lib").glob("*/opensc-pkcs11.so")), "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
#: the PIV card's factory defaults (SP 800-73-4 leaves them to the issuer; these are YubiKey's)
PIN, MGM_KEY = "123456", "010203040506070801020304050607080102030405060708"


def card_demo(work: Path, reader_index: str) -> None:
    """What a user gains: a key made on the card, a signature made by the card, an ssh key."""
    os.chdir(work)              # the files below (9a.pub, message.sig...) are made here
    section("generate a key ON THE CARD (slot 9A, ECC P-256; the private key never leaves the board)")
    show(f"yubico-piv-tool -r ccidgadget -k{MGM_KEY} -a generate -s 9a -A ECCP256 -o 9a.pub")
    show("cat 9a.pub")
    section("a certificate for it (OpenSSL issues it over the card's public key), stored on the card")
    show(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
         f"-out ca.crt -subj '/CN=demo CA' -days 30 2>/dev/null && openssl x509 -in ca.crt -noout -subject")
    show(f"openssl x509 -new -force_pubkey 9a.pub -subj '/CN=ccidgadget demo' -CA ca.crt "
         f"-CAkey ca.key -days 30 -out 9a.crt && "
         f"yubico-piv-tool -r ccidgadget -k{MGM_KEY} -a import-certificate -s 9a -i 9a.crt")
    section("sign on the board (PKCS#11 through OpenSC), verify on the host with openssl")
    show(f"echo 'signed by the card inside the board' > message.txt; "
         f"pkcs11-tool --module {PKCS11} --login --pin {PIN} --sign -m ECDSA-SHA256 --signature-format openssl "
         f"--id 01 -i message.txt -o message.sig 2>&1 | tail -1")
    out = show(f"openssl dgst -sha256 -verify 9a.pub -signature message.sig message.txt")
    if "Verified OK" not in out:
        raise SystemExit("demo: the card's signature did not verify")
    section("the card's key for ssh (add it to ~/.ssh/authorized_keys on a server; log in with "
            f"ssh -I {PKCS11} user@server)")
    out = show(["ssh-keygen", "-D", PKCS11])
    if "ecdsa-sha2-nistp256" not in out:
        raise SystemExit("demo: ssh-keygen -D did not list the card's key")
    show(["pkcs15-tool", "--reader", reader_index, "--list-public-keys"])
    # --- OPENPGP: when the OpenPGP card lands (CARD_TYPES gains "openpgp"), the demo starts a
    # --- second slot with it (guest_demo) and this shows what gpg sees; until then it says so.
    section("OpenPGP card: gpg --card-status")
    if OPENPGP:
        gnupg = work / "gnupg"
        gnupg.mkdir(mode=0o700, exist_ok=True)
        # scdaemon over PC/SC takes the reader whose name *starts* with reader-port: the OpenPGP slot's
        # full name (slot 1: "... 00 01"), as the README's quick start writes it
        from smartcard.System import readers
        name = next((str(r) for r in readers() if "ccidgadget" in str(r) and str(r).endswith(" 00 01")), None)
        if name is None:
            raise SystemExit("demo: pcscd lists no reader for the OpenPGP slot (... 00 01)")
        (gnupg / "scdaemon.conf").write_text(f"disable-ccid\npcsc-shared\nreader-port {name}\n")
        out = show(f"GNUPGHOME={gnupg} gpg --card-status", timeout=60)
        show(f"GNUPGHOME={gnupg} gpgconf --kill all")
        if "D276000124" not in out.replace(" ", ""):
            raise SystemExit("demo: gpg --card-status did not show the OpenPGP card")
    else:
        print("(not yet: the OpenPGP card is being built; then `gpg --card-status` shows it here)")


def guest_demo() -> int:
    work = Path(tempfile.mkdtemp(prefix="ccidgadget-demo-"))
    state = Path(os.environ.get("CCIDGADGET_DEMO_STATE") or work / "state")
    log_path = Path(os.environ.get("CCIDGADGET_VM_OUT", str(work))) / "demo-daemon.log"
    # OpenSC caches card files by serial number; a fresh demo card must not meet an old cache
    (work / "opensc.conf").write_text("app default {\n  framework pkcs15 {\n    use_file_caching = no;\n  }\n}\n")
    os.environ["OPENSC_CONF"] = str(work / "opensc.conf")
    cards = ["--card", "emulated"] + (["--card", "emulated", "--type", "openpgp"] if OPENPGP else [])
    section(f"start the daemon: ccidgadget {' '.join(cards)}")
    t0 = time.monotonic()
    log = open(log_path, "w")
    daemon = subprocess.Popen([sys.executable, "-m", "ccidgadget", *cards,
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
            show(["yubico-piv-tool", "-r", "ccidgadget", "-a", "status"], timeout=120)
            card_demo(work, index)
        finally:
            pcscd.terminate()
            pcscd.wait(timeout=10)
        section("daemon log")
        print(log_path.read_text()[-2000:])
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)
        section(f"daemon stopped (exit {rc}); configfs afterwards")
        show("ls /sys/kernel/config/usb_gadget/")
    print(f"\ndemo: {time.monotonic() - t0:.0f} s from the daemon's start to its stop", flush=True)
    return rc


def main() -> int:
    if "--guest" in sys.argv or have_gadget_stack():
        return guest_demo()
    from tests.vm import testbed

    return testbed.rerun_in_guest(__file__, timeout=600, what="demo", tail=60, cwd=REPO, stream=None)


if __name__ == "__main__":
    sys.exit(main())
