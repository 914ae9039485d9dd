"""The CAC card seen by OpenSC through a private pcscd + vsmartcard vpcd (no USB).

Skipped when the host tools are missing or a pcscd already runs (fails
instead in CI).  Runs its own pcscd in the foreground with a private
reader.conf.d (-c) whose vpcd reader listens on a free port, and stops it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.ci import skip_or_fail

import ccidgadget.cards.pin as pin_module
from ccidgadget.cards.cac import CAC_LABELS, CacCard

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
TOOLS = ("pcscd", "opensc-tool", "pkcs15-tool", "pkcs11-tool", "openssl")


def _missing() -> str | None:
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not VPCD_DRIVER.exists():
        return "vsmartcard-vpcd (libifdvpcd.so) not installed"
    try:
        import ccidgadget.frontends.vpcd_client  # noqa: F401
    except ImportError as e:
        return f"vpcd client front end not available ({e})"
    if Path("/run/pcscd/pcscd.pid").exists():
        return "a pcscd is already running (it owns /run/pcscd/pcscd.pid)"
    return None


_why = _missing()
if _why:
    skip_or_fail(f"the vpcd integration test cannot run: {_why}", allow_module_level=True)

from ccidgadget.frontends.vpcd_client import serve_card_to_vpcd  # noqa: E402
from test_cac import cert_files, keys  # noqa: E402,F401  (session fixtures)

PIN = "1234"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def host(tmp_path_factory, request):
    """pcscd with one vpcd reader, our CAC card connected to it; yields run(argv) -> stdout."""
    d = tmp_path_factory.mktemp("vpcd")
    port = _free_port()
    conf = d / "reader.conf.d"
    conf.mkdir()
    (conf / "vpcd").write_text(f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:04X}\n'
                               f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:04X}\n")
    (d / "opensc.conf").write_text("app default {\n framework pkcs15 {\n  use_file_caching = no;\n }\n}\n")
    env = {**os.environ, "OPENSC_CONF": str(d / "opensc.conf")}
    pcscd = subprocess.Popen(["pcscd", "-f", "-c", str(conf)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)

    mp = pytest.MonkeyPatch()
    mp.setattr(pin_module, "SCRYPT_N", 2 ** 4)
    certs = request.getfixturevalue("cert_files")
    card = CacCard.from_sources(d / "state", certs=certs, pin=PIN)
    loop = asyncio.new_event_loop()

    async def serve():
        await card.start()
        await serve_card_to_vpcd(card, "127.0.0.1", port)

    task_holder = {}

    def run_loop():
        asyncio.set_event_loop(loop)
        task_holder["task"] = loop.create_task(serve())
        try:
            loop.run_until_complete(task_holder["task"])
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()

    def run(*argv: str, check: bool = True) -> str:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=d)
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    try:
        deadline = time.monotonic() + 20
        while "Yes" not in run("opensc-tool", "-l", check=False):
            if time.monotonic() > deadline or pcscd.poll() is not None:
                pytest.fail("the CAC card did not appear in our pcscd:\n" + run("opensc-tool", "-l", check=False))
            time.sleep(0.3)
        run.dir = d
        yield run
    finally:
        if "task" in task_holder:
            loop.call_soon_threadsafe(task_holder["task"].cancel)
        thread.join(10)
        pcscd.terminate()
        pcscd.wait(10)
        mp.undo()


def test_opensc_says_cac(host):
    assert "Common Access Card (CAC)" in host("opensc-tool", "-n")


def test_pkcs15_and_pkcs11_list_three_certificates_and_keys(host):
    dump = host("pkcs15-tool", "-D")
    for label in CAC_LABELS:
        assert dump.count(label) >= 3, dump            # certificate, public key, private key
    objects = host("pkcs11-tool", "-O", "--login", "--pin", PIN)
    for label in CAC_LABELS:
        assert f"label:      {label}" in objects, objects
    assert objects.count("Private Key Object") == 3
    assert objects.count("Certificate Object") == 3
    assert "ID:         0002" in objects


def test_wrong_pin_counts_down(host):
    out = host("pkcs11-tool", "--login", "--pin", "9999", "-O", check=False)
    assert "CKR_PIN_INCORRECT" in out
    # the right PIN resets the counter (the next tests need it)
    host("pkcs11-tool", "--login", "--pin", PIN, "-O")


def test_decrypt_round_trip(host):
    d = host.dir
    host("pkcs11-tool", "-r", "--type", "cert", "--id", "0003", "-o", "enc.der")
    host("openssl", "x509", "-inform", "der", "-in", "enc.der", "-pubkey", "-noout", "-out", "enc.pem")
    (d / "secret").write_bytes(b"a secret for the CAC card")
    host("openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", "enc.pem", "-in", "secret", "-out", "secret.enc")
    host("pkcs11-tool", "--login", "--pin", PIN, "--decrypt", "-m", "RSA-PKCS", "--id", "0003",
         "-i", "secret.enc", "-o", "secret.dec")
    assert (d / "secret.dec").read_bytes() == b"a secret for the CAC card"


def test_pkcs11_sign_verified_by_openssl(host):
    d = host.dir
    (d / "data").write_bytes(b"signed by the emulated CAC card\n")
    # pkcs11-tool picks the signing key by --id (the label is ignored for --sign); the cac
    # driver numbers the objects 0001.. in CardURL order, so 0002 is "CAC Email Signature Certificate".
    host("pkcs11-tool", "--login", "--pin", PIN, "--sign", "-m", "SHA256-RSA-PKCS",
         "--id", "0002", "-i", "data", "-o", "data.sig")
    host("pkcs11-tool", "-r", "--type", "cert", "--id", "0002", "-o", "cert.der")
    subject = host("openssl", "x509", "-inform", "der", "-in", "cert.der", "-noout", "-subject")
    assert "John Doe (signing)" in subject
    host("openssl", "x509", "-inform", "der", "-in", "cert.der", "-pubkey", "-noout", "-out", "pub.pem")
    assert "Verified OK" in host("openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature",
                                 "data.sig", "data")
