#!/usr/bin/env python3
"""PIV signatures per second through the whole stack: pyscard -> pcscd -> libccid -> USB (dummy_hcd)
-> FunctionFS -> ccidgadget -> the emulated PIV card, and the card's in-process cost for comparison.

    scripts/bench_piv.py [--rsa N] [--ec N]     # boots the QEMU guest unless this machine has a UDC
    scripts/bench_piv.py --guest                # inside the guest (scripts/bench_guest.py calls this)

In the guest: the daemon runs on a fresh card (``ccidgadget --card emulated``), a pyscard client
authenticates with the default management key, generates RSA-2048 in 9A and P-256 in 9D (both
PIN policy ONCE), verifies the PIN once, then times GENERAL AUTHENTICATE loops:

* RSA-2048 with one extended APDU per signature (what a client that uses the reader's extended
  APDU support sends) and with short APDUs as yubico-piv-tool sends them (command chaining
  ``10 87`` + ``00 87``, then GET RESPONSE for the 264-byte answer: 3 USB round trips);
* P-256 ECDSA (one short APDU each way);
* a short APDU that does no cryptography (GET DATA of the Discovery Object), for the floor;
* whole ``pkcs11-tool --sign`` processes (OpenSC start-up, login, sign), as a user sees it.

Then the in-process figures of ``python -m ccidgadget.cards.piv.bench`` on the same CPU, so the
USB + pcscd share is the difference. Under QEMU TCG every figure is 10-20x slower than native.
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

PIV_AID = "A000000308000010000100"
DEFAULT_MGM_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
PIN = b"123456\xff\xff"


def have_gadget_stack() -> bool:
    udc = Path("/sys/class/udc")
    return os.geteuid() == 0 and Path("/sys/kernel/config/usb_gadget").is_dir() and udc.is_dir() \
        and any(udc.iterdir())


# --------------------------------------------------------------------------- APDUs over pyscard


class Card:
    def __init__(self, conn):
        self.conn = conn

    def raw(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw1, sw2 = self.conn.transmit(list(apdu))
        return bytes(data), (sw1 << 8) | sw2

    def send(self, ins: int, p1: int, p2: int, data: bytes = b"", *, extended: bool = False) -> bytes:
        """One command; short APDUs with command chaining and GET RESPONSE, or one extended APDU."""
        if extended:
            apdu = bytes((0, ins, p1, p2, 0)) + len(data).to_bytes(2, "big") + data + b"\x00\x00"
            out, sw = self.raw(apdu)
        else:
            chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
            for i, chunk in enumerate(chunks):
                cla = 0x10 if i < len(chunks) - 1 else 0x00
                apdu = bytes((cla, ins, p1, p2)) + (bytes((len(chunk),)) + chunk if chunk else b"") + b"\x00"
                out, sw = self.raw(apdu)
            while sw >> 8 == 0x61:
                more, sw = self.raw(bytes((0, 0xC0, 0, 0, sw & 0xFF)))
                out += more
        if sw != 0x9000:
            raise RuntimeError(f"INS {ins:02X} P1 {p1:02X} P2 {p2:02X}: SW {sw:04X}")
        return out


def authenticate_management(card: Card) -> None:
    """SELECT the PIV application and authenticate with the default (3DES) management key."""
    from ccidgadget.cryptocompat import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    from ccidgadget.cards.tlv import tlv, unwrap

    card.send(0xA4, 0x04, 0x00, bytes.fromhex(PIV_AID))
    witness = unwrap(unwrap(card.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x80))), 0x7C), 0x80)
    dec = Cipher(TripleDES(DEFAULT_MGM_KEY), modes.ECB()).decryptor()
    card.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x80, dec.update(witness) + dec.finalize())
                                    + tlv(0x81, os.urandom(8)) + tlv(0x82)))


def provision(card: Card):
    """Management key auth, RSA-2048 in 9A and P-256 in 9D, PIN verified; returns the public keys."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from ccidgadget.cards.tlv import parse_dict, tlv, unwrap

    authenticate_management(card)
    rsa_tpl = parse_dict(unwrap(card.send(0x47, 0x00, 0x9A, tlv(0xAC, tlv(0x80, b"\x07"))), 0x7F49))
    rsa_pub = rsa.RSAPublicNumbers(int.from_bytes(rsa_tpl[0x82], "big"),
                                   int.from_bytes(rsa_tpl[0x81], "big")).public_key()
    ec_tpl = parse_dict(unwrap(card.send(0x47, 0x00, 0x9D, tlv(0xAC, tlv(0x80, b"\x11"))), 0x7F49))
    ec_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ec_tpl[0x86])
    card.send(0x20, 0x00, 0x80, PIN)
    return rsa_pub, ec_pub


def pkcs1_sha256_block(digest: bytes) -> bytes:
    info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    return b"\x00\x01" + b"\xff" * (256 - 3 - len(info)) + b"\x00" + info


def timed_loop(name: str, n: int, op) -> dict:
    op()                                   # warm-up (and a first correctness check by the caller)
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        op()
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat.sort()
    res = {"name": name, "n": n, "per_s": n / total, "median_ms": statistics.median(lat) * 1000,
           "p90_ms": lat[min(len(lat) - 1, int(round(0.9 * (len(lat) - 1))))] * 1000}
    print(f"  {name:62s} {res['per_s']:7.1f} /s   median {res['median_ms']:7.1f} ms   "
          f"p90 {res['p90_ms']:7.1f} ms   (n={n})", flush=True)
    return res


def through_the_stack(n_rsa: int, n_ec: int, n_tool: int) -> int:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    from ccidgadget.cards.tlv import parse_dict, tlv, unwrap

    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    import conftest as e2e_conftest  # the e2e bed's daemon/pcscd helpers (imports pytest)
    from piv_helpers import PKCS11_MODULE, PivStack

    e2e = types.SimpleNamespace(**{k: getattr(e2e_conftest, k) for k in (
        "DaemonProcess", "PcscdProcess", "find_reader", "gadgets", "remove_gadget")})
    problem = e2e_conftest.environment_problem()
    if problem:
        print(f"bench_piv: no USB gadget stack here: {problem}", file=sys.stderr)
        return 1
    out = Path(os.environ.get("CCIDGADGET_VM_OUT") or tempfile.mkdtemp(prefix="bench-piv-"))
    with tempfile.TemporaryDirectory(prefix="bench-piv-") as tmp:
        stack = PivStack(e2e, state_dir=Path(tmp) / "state", work=Path(tmp) / "work", log_dir=out / "bench-piv")
        try:
            t0 = time.perf_counter()
            stack.start()
            print(f"daemon on a fresh PIV card, pcscd and the reader ready in {time.perf_counter() - t0:.1f} s; "
                  f"reader: {stack.reader}", flush=True)
            conn = stack.reader.createConnection()
            conn.connect()
            card = Card(conn)
            rsa_pub, ec_pub = provision(card)
            print("through pyscard -> pcscd -> libccid -> USB -> ccidgadget -> PIV card "
                  "(PIN verified once, PIN policy ONCE):", flush=True)

            digest = os.urandom(32)
            block = pkcs1_sha256_block(digest)
            ga_rsa = tlv(0x7C, tlv(0x82) + tlv(0x81, block))

            def rsa_sig(extended: bool) -> bytes:
                return parse_dict(unwrap(card.send(0x87, 0x07, 0x9A, ga_rsa, extended=extended), 0x7C))[0x82]

            for extended in (True, False):          # each path is checked once before it is timed
                rsa_pub.verify(rsa_sig(extended), digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
            ga_ec = tlv(0x7C, tlv(0x82) + tlv(0x81, digest))

            def ec_sig() -> bytes:
                return parse_dict(unwrap(card.send(0x87, 0x11, 0x9D, ga_ec), 0x7C))[0x82]

            ec_pub.verify(ec_sig(), digest, ec.ECDSA(Prehashed(hashes.SHA256())))

            timed_loop("RSA-2048 sign, 9A, one extended APDU", n_rsa, lambda: rsa_sig(True))
            timed_loop("RSA-2048 sign, 9A, chained short APDUs + GET RESPONSE", n_rsa, lambda: rsa_sig(False))
            timed_loop("P-256 ECDSA sign, 9D, short APDU", n_ec, ec_sig)
            timed_loop("GET DATA Discovery Object (no crypto: the round-trip floor)", n_ec,
                       lambda: card.send(0xCB, 0x3F, 0xFF, tlv(0x5C, b"\x7e")))
            conn.disconnect()
            conn.release()

            if n_tool:
                # OpenSC shows a key only with its certificate, and uses EC keys of 9A/9C/9E for
                # signatures (9D: derive only): certificates for 9A and a P-256 key in 9E
                _certificate_for(stack, "9a", rsa_pub)
                stack.piv("-a", "generate", "-s", "9e", "-A", "ECCP256", "-o", "9e.pub", mgm=True)
                from cryptography.hazmat.primitives import serialization
                _certificate_for(stack, "9e", serialization.load_pem_public_key(stack.file("9e.pub").read_bytes()))
                stack.file("data").write_bytes(os.urandom(256))
                for label, mech, key_id, extra in (
                        ("RSA-2048, 9A", "SHA256-RSA-PKCS", "01", []),
                        ("P-256, 9E", "ECDSA-SHA256", "04", ["--signature-format", "openssl"])):
                    argv = ["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", stack.pkcs11_slot, "--login",
                            "--pin", "123456", "--sign", "-m", mech, "--id", key_id, "-i", "data", "-o", "sig",
                            *extra]
                    timed_loop(f"whole pkcs11-tool process (start, login, sign), {label}", n_tool,
                               lambda argv=argv: stack.run(argv))
        finally:
            problems = stack.close()
            for p in problems:
                print(f"bench_piv: {p}", file=sys.stderr)
    return 0


def _certificate_for(stack, slot: str, public_key) -> None:
    """A throw-away CA-signed certificate over the card's public key, imported with yubico-piv-tool."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench {slot}")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")]))
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca, hashes.SHA256()))
    path = stack.file(f"{slot}.crt")
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    stack.piv("-a", "import-certificate", "-s", slot, "-i", str(path), mgm=True)


def in_process() -> int:
    print("in-process, same CPU (python -m ccidgadget.cards.piv.bench: process_apdu, no USB):", flush=True)
    return subprocess.call([sys.executable, "-m", "ccidgadget.cards.piv.bench"], cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", action="store_true", help="run here (inside the guest / on a UDC machine)")
    ap.add_argument("--rsa", type=int, default=50, help="RSA-2048 signatures per loop (default 50)")
    ap.add_argument("--ec", type=int, default=200, help="P-256 signatures per loop (default 200)")
    ap.add_argument("--tool", type=int, default=5, help="pkcs11-tool processes (default 5; 0 skips)")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process figures")
    args = ap.parse_args(argv)
    if args.guest or have_gadget_stack():
        rc = through_the_stack(args.rsa, args.ec, args.tool)
        if not args.no_in_process:
            rc |= in_process()
        return rc
    from tests.vm import testbed

    return testbed.rerun_in_guest(__file__, ["--rsa", str(args.rsa), "--ec", str(args.ec), "--tool", str(args.tool),
                                            *(["--no-in-process"] if args.no_in_process else [])],
                                  timeout=1200, what="bench_piv", cwd=REPO, env={"CCIDGADGET_E2E": "1"})


if __name__ == "__main__":
    sys.exit(main())
