# SPDX-License-Identifier: GPL-3.0-or-later
"""``ccidgadget vpcd-card --type piv`` against Debian's real pcscd + vsmartcard-vpcd, used by OpenSC.

The card is provisioned offline with ``ccidgadget card create/generate`` (RSA-2048 in 9A, P-256 in
9C, self-signed certificates), then ``ccidgadget vpcd-card`` runs as a separate process and connects
to a private ``pcscd -f -c DIR`` whose only reader is a vpcd on a free port.  OpenSC's PKCS#11
module does the rest: ``pkcs11-tool --test --login``, signatures checked by openssl against the
certificates read back through PKCS#11, and a wrong PIN counted down.  No USB, no fake peer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ci import skip_or_fail
from tests.e2e.piv_helpers import PKCS11_MODULE
from tests.passthrough.pcscd import PcscdUnavailable, free_port, private_pcscd_with_vpcd

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("pkcs11-tool", "opensc-tool", "openssl")
PIN = "123456"                                  # the PIV card's default PIN (card create)
SELECT_PIV = "00:A4:04:00:09:A0:00:00:03:08:00:00:10:00"


def _ccidgadget(*args: str) -> list[str]:
    return [sys.executable, "-m", "ccidgadget", *args]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A provisioned PIV card served by ``vpcd-card`` to a private pcscd; yields run(*argv) -> output."""
    missing = [t for t in TOOLS if shutil.which(t) is None] + [m for m in (PKCS11_MODULE,) if not Path(m).exists()]
    if missing:
        skip_or_fail(f"OpenSC/openssl missing: {', '.join(missing)}")
    d = tmp_path_factory.mktemp("vpcd-piv")
    (d / "opensc.conf").write_text("app default {\n framework pkcs15 {\n  use_file_caching = no;\n }\n}\n")
    env = {**os.environ, "OPENSC_CONF": str(d / "opensc.conf")}

    def run(*argv: str, check: bool = True) -> str:
        p = subprocess.run(argv, env=env, cwd=d, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        if check and p.returncode != 0:
            raise AssertionError(f"exit {p.returncode}: {' '.join(argv)}\n{out}\n--- vpcd-card ---\n"
                                 + (d / "vpcd-card.log").read_text(errors="replace")[-2000:])
        run.rc = p.returncode
        return out

    card_dir = d / "state" / "cards" / "slot0-piv"      # vpcd-card's default card directory
    run(*_ccidgadget("card", "create", "--dir", str(card_dir)))
    run(*_ccidgadget("card", "generate", "--dir", str(card_dir), "--slot", "9a", "--algorithm", "rsa2048",
                     "--subject", "/CN=vpcd-card 9a"))
    run(*_ccidgadget("card", "generate", "--dir", str(card_dir), "--slot", "9c", "--algorithm", "eccp256",
                     "--subject", "/CN=vpcd-card 9c"))
    port = free_port()
    try:
        with private_pcscd_with_vpcd(d, port):
            with open(d / "vpcd-card.log", "wb") as log:
                card = subprocess.Popen(_ccidgadget("vpcd-card", "--type", "piv", "--port", str(port),
                                                    "--state-dir", str(d / "state")),
                                        cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 30
                while "Yes" not in run("opensc-tool", "--list-readers", check=False):
                    assert card.poll() is None and time.monotonic() < deadline, (
                        "the PIV card did not appear in pcscd's vpcd reader\n"
                        + (d / "vpcd-card.log").read_text(errors="replace"))
                    time.sleep(0.2)
                run.dir = d
                yield run
            finally:
                card.terminate()
                card.wait(10)
    except PcscdUnavailable as e:
        skip_or_fail(f"pcscd with vpcd unavailable: {e}")


def p11(host, *args: str, login: bool = True, check: bool = True) -> str:
    return host("pkcs11-tool", "--module", PKCS11_MODULE, *(["--login", "--pin", PIN] if login else []), *args,
                check=check)


def test_opensc_names_the_piv_card_and_pkcs11_self_test_passes(host):
    assert "Personal Identity Verification Card" in host("opensc-tool", "--name").splitlines()
    out = p11(host, "--test")
    assert "No errors" in out, out
    for mech in ("RSA-X-509", "RSA-PKCS", "SHA256-RSA-PKCS"):
        assert f"    {mech}: OK" in out, out
    objects = p11(host, "--list-objects")
    assert objects.count("Private Key Object") == 2 and objects.count("Certificate Object") == 2, objects


@pytest.mark.parametrize("key_id,mechanism,extra,cn", [
    ("01", "SHA256-RSA-PKCS", (), "vpcd-card 9a"),
    ("02", "ECDSA-SHA256", ("--signature-format", "openssl"), "vpcd-card 9c"),
])
def test_signature_verified_by_openssl(host, key_id, mechanism, extra, cn):
    d = host.dir
    data = d / f"data-{key_id}"
    data.write_bytes(os.urandom(777))
    p11(host, "--sign", "-m", mechanism, *extra, "--id", key_id, "-i", data.name, "-o", f"sig-{key_id}")
    p11(host, "--read-object", "--type", "cert", "--id", key_id, "-o", f"cert-{key_id}.der", login=False)
    subject = host("openssl", "x509", "-inform", "der", "-in", f"cert-{key_id}.der", "-noout", "-subject")
    assert f"CN = {cn}" in subject, subject
    host("openssl", "x509", "-inform", "der", "-in", f"cert-{key_id}.der", "-pubkey", "-noout", "-out",
         f"pub-{key_id}.pem")
    out = host("openssl", "dgst", "-sha256", "-verify", f"pub-{key_id}.pem", "-signature", f"sig-{key_id}",
               data.name)
    assert "Verified OK" in out, out
    # and a signature over other data does not verify: openssl really checked it
    (d / "other").write_bytes(b"other data")
    out = host("openssl", "dgst", "-sha256", "-verify", f"pub-{key_id}.pem", "-signature", f"sig-{key_id}",
               "other", check=False)
    assert host.rc != 0 and "Verification failure" in out, out


def pin_tries(host) -> str:
    """VERIFY without data on the PIV PIN (SP 800-73-4 Part 2 §3.2.1): 63Cx, x tries left; first
    VERIFY P1=FF forgets the verification OpenSC left behind (it answers 9000 then)."""
    out = host("opensc-tool", "--send-apdu", SELECT_PIV, "--send-apdu", "00:20:FF:80:00",
               "--send-apdu", "00:20:00:80:00")
    words = re.findall(r"SW1=0x\w\w, SW2=0x\w\w", out)
    assert len(words) == 3 and words[1] == "SW1=0x90, SW2=0x00", out
    return words[-1]


def test_wrong_pin_is_refused_and_counted(host):
    assert pin_tries(host).endswith("SW1=0x63, SW2=0xC3"), pin_tries(host)
    out = host("pkcs11-tool", "--module", PKCS11_MODULE, "--login", "--pin", "999999", "--list-objects",
               check=False)
    assert host.rc != 0 and "CKR_PIN_INCORRECT" in out, out
    assert pin_tries(host).endswith("SW1=0x63, SW2=0xC2"), pin_tries(host)
    p11(host, "--list-objects")                          # the right PIN resets the counter
    assert pin_tries(host).endswith("SW1=0x63, SW2=0xC3"), pin_tries(host)
