# SPDX-License-Identifier: GPL-3.0-or-later
"""The emulated OpenPGP card end to end (issue 11): ``ccidgadget --card emulated --type openpgp`` is
the USB device; the guest's kernel is the host, with Debian's unmodified GnuPG 2.2.40 (scdaemon
both with its own CCID driver over libusb and over pcscd + libccid), OpenSSH, git and OpenSC 0.23.

The tests share one card (module scope) and run in file order, each building on what the
previous ones left:

1. scdaemon's own CCID driver (pcscd stopped): card-status; key-attr to ed25519/cv25519, on-card
   generation; sign + verify a detached signature over a file larger than one APDU, encrypt +
   decrypt; ssh through gpg-agent (ssh-add -L, ssh-keygen -Y sign/verify); a signed git commit;
   passwd (PW1, PW3, resetting code), lockout after three wrong PINs, the lock kept across a
   daemon restart, unblock with the resetting code; kdf-setup then sign again; key-attr back to
   rsa2048 with on-card generation, keytocard of a key made on the host.
2. scdaemon over pcscd (``disable-ccid``, ``reader-port``): the same keys sign and (RSA-2048)
   decrypt; factory-reset.
3. OpenSC's openpgp driver: openpgp-tool (info, generate), pkcs15-tool -D, a pkcs11-tool
   signature verified with openssl.
4. A two-slot reader, PIV in slot 0 and OpenPGP in slot 1 (provisioned offline with
   ``ccidgadget card``): GnuPG (``reader-port`` names slot 1, ``pcsc-shared``; ssh signatures
   through gpg-agent) and OpenSC each use their card at the same time; then RSA-3072 generation
   in slot 1 while slot 0 answers, with CCID time extensions.

RSA-3072/4096 generation is tested in process (tests/cards/test_openpgp.py): under TCG it takes
minutes.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnupg_helpers import GnuPG, GpgError  # noqa: E402
from piv_helpers import PKCS11_MODULE  # noqa: E402

READER_MATCH = "ccidgadget"
OPENSC_CONF = "app default {\n  framework pkcs15 {\n    use_file_caching = no;\n  }\n}\n"
NEW_PIN, NEW_ADMIN, RESET_CODE = "24681357", "87654321abc", "11223344"


class Stack:
    """The daemon (one or two slots), an optional pcscd, and one GnuPG home per host stack."""

    def __init__(self, e2e, base: Path, log_dir: Path) -> None:
        self.e2e = e2e
        self.base = base
        self.log_dir = log_dir
        self.state_dir = base / "state"
        self.work = base / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "opensc.conf").write_text(OPENSC_CONF)
        self.env = {**os.environ, "OPENSC_CONF": str(self.work / "opensc.conf")}
        self.pcscd = e2e.PcscdProcess(log_dir / "pcscd.log")
        self.daemons: list = []
        self.daemon = None
        self.homes: list[GnuPG] = []
        self.gadgets_before = e2e.gadgets()

    def start_daemon(self, *slots: str, timeout: float = 60) -> None:
        args = []
        for t in slots:
            args += ["--card", "emulated", "--type", t]
        d = self.e2e.DaemonProcess([*args, "--state-dir", str(self.state_dir), "--log-level", "info"],
                                   self.log_dir / f"ccidgadget-{len(self.daemons)}.log")
        self.daemons.append(d)
        self.daemon = d
        d.wait_bound(timeout)

    def stop_daemon(self) -> None:
        rc = self.daemon.stop()
        assert rc == 0, f"ccidgadget exited with {rc}\n{self.daemon.log()}"

    def gnupg(self, name: str, options, ssh: bool = False) -> GnuPG:
        g = GnuPG(self.base / name, scdaemon_options=options, ssh=ssh, log_dir=self.log_dir / name)
        (self.log_dir / name).mkdir(parents=True, exist_ok=True)
        self.homes.append(g)
        return g

    def run(self, argv, check: bool = True, timeout: float = 120, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        p = subprocess.run(list(argv), cwd=cwd or self.work, env={**self.env, **(env or {})}, text=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        if check and p.returncode != 0:
            tail = "\n".join(self.daemon.log().splitlines()[-15:]) if self.daemon else ""
            raise AssertionError(f"exit {p.returncode}: {' '.join(argv)}\n{p.stdout}\n--- daemon ---\n{tail}")
        return p

    def close(self) -> list[str]:
        problems = []
        for g in self.homes:
            g.kill()
        self.pcscd.stop()
        for d in self.daemons:
            try:
                d.stop()
            except AssertionError as e:
                problems.append(str(e))
        for name in self.e2e.gadgets() - self.gadgets_before:
            self.e2e.remove_gadget(name)
            problems.append(f"ccidgadget left gadget {name} behind")
        return problems


@pytest.fixture(scope="module")
def stack(tmp_path_factory, e2e):
    out = os.environ.get("CCIDGADGET_VM_OUT")
    log_dir = Path(out) / "logs" / "test_openpgp" if out else tmp_path_factory.mktemp("openpgp-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    s = Stack(e2e, tmp_path_factory.mktemp("openpgp"), log_dir)
    try:
        s.start_daemon("openpgp")
        yield s
    finally:
        problems = s.close()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def ccid(stack):
    """GnuPG with scdaemon's own CCID driver (libusb): no pcscd may hold the reader."""
    assert not stack.pcscd.running
    return stack.gnupg("gnupg-ccid", options=(), ssh=True)


def _field(status: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}\s*\.*:\s*(.*)$", status, re.M)
    assert m, status
    return m.group(1).strip()


def _sign_verify(g: GnuPG, fpr: str, size: int) -> None:
    data = g.home / "data.bin"
    data.write_bytes(os.urandom(size))
    g.gpg("--yes", "--local-user", fpr, "--detach-sign", "-o", str(g.home / "data.sig"), str(data))
    out = g.gpg("--status-fd", "1", "--verify", str(g.home / "data.sig"), str(data)).stdout
    assert f"VALIDSIG {fpr}" in out, out


def _encrypt_decrypt(g: GnuPG, fpr: str) -> None:
    secret = g.home / "secret.txt"
    secret.write_text("only the card can read this\n" * 20)
    g.gpg("--yes", "--trust-model", "always", "-r", fpr, "-e", "-o", str(g.home / "secret.gpg"), str(secret))
    assert g.gpg("-d", str(g.home / "secret.gpg")).stdout == secret.read_text()


def _wait_card(g: GnuPG, timeout: float = 60) -> str:
    """card-status once scdaemon sees the (new) reader."""
    deadline = time.monotonic() + timeout
    while True:
        p = g.gpg("--card-status", check=False)
        if p.returncode == 0:
            return p.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"no card for GnuPG: {p.stderr}\n{g.scd_log_tail()}")
        g.kill_scdaemon()
        time.sleep(0.5)


# --------------------------------------------------------------------------- 1. scdaemon's CCID driver


def test_ccid_driver_card_status(stack, ccid):
    # the driver's own trace of the first open (USB claim, power on, T=1 parameters) goes to the log
    conf = ccid.home / "scdaemon.conf"
    plain = conf.read_text()
    conf.write_text(plain + "debug-ccid-driver\n")
    t0 = time.monotonic()
    status = _wait_card(ccid)
    print(f"scdaemon's CCID driver: card-status after {time.monotonic() - t0:.1f} s")
    conf.write_text(plain)
    ccid.restart_scdaemon()
    # the reader is scdaemon's own (libusb), named after the USB device, not a PC/SC reader
    assert "1209:2702" in _field(status, "Reader"), status
    assert _field(status, "Version") == "3.4"
    assert _field(status, "Manufacturer") == "unmanaged S/N range"
    serial = _field(status, "Serial number")
    assert re.fullmatch(r"[0-9A-F]{8}", serial)
    state = stack.state_dir / "cards" / "slot0-openpgp" / "state.json"
    import json
    assert json.loads(state.read_text())["serial"] == int(serial, 16)
    assert _field(status, "Key attributes") == "rsa2048 rsa2048 rsa2048"
    assert _field(status, "PIN retry counter") == "3 0 3"
    log = (ccid.log_dir / "scdaemon.log").read_text(errors="replace")
    assert "using ccid driver" in log and "PC_to_RDR_IccPowerOn" in log, ccid.scd_log_tail()


def test_ccid_generate_sign_encrypt(stack, ccid):
    ccid.key_attr("ed25519", "cv25519", "ed25519")
    assert _field(ccid.card_status(), "Key attributes") == "ed25519 cv25519 ed25519"
    ccid.fpr = ccid.generate_on_card("Card User", "card@example.org")
    # the detached signature covers 100 KB, many times an APDU (the card signs its hash)
    _sign_verify(ccid, ccid.fpr, 100_000)
    _encrypt_decrypt(ccid, ccid.fpr)


def test_ccid_ssh_through_gpg_agent(stack, ccid):
    sock = ccid.run(["--list-dirs", "agent-ssh-socket"], binary="gpgconf").stdout.strip()
    env = {"SSH_AUTH_SOCK": sock}
    listed = stack.run(["ssh-add", "-L"], env=env).stdout
    assert listed.startswith("ssh-ed25519 ") and "cardno:FF00" in listed, listed
    pub = stack.work / "card_ssh.pub"
    pub.write_text(listed.splitlines()[0] + "\n")
    msg = stack.work / "msg.txt"
    msg.write_text("signed by the card through gpg-agent\n")
    stack.run(["ssh-keygen", "-Y", "sign", "-f", str(pub), "-n", "file", str(msg)], env=env)
    (stack.work / "allowed_signers").write_text("card@example.org " + pub.read_text())
    with open(msg, "rb") as f:
        v = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(stack.work / "allowed_signers"),
                            "-I", "card@example.org", "-n", "file", "-s", str(msg) + ".sig"], stdin=f,
                           capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "Good" in v.stdout, v
    # an ssh certificate signed by the card: more than one short APDU of message for EdDSA
    # (GnuPG 2.2's agent passes at most 476 bytes to scdaemon, see docs/openpgp.md)
    stack.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stack.work / "user")])
    stack.run(["ssh-keygen", "-s", str(pub), "-U", "-I", "card-issued", "-n", "alice,bob,carol",
               str(stack.work / "user.pub")], env=env)
    body = base64.b64decode((stack.work / "user-cert.pub").read_text().split()[1])
    assert len(body) - 91 > 254


def test_ccid_signed_git_commit(stack, ccid):
    repo = stack.work / "repo"
    repo.mkdir()
    env = {"GNUPGHOME": str(ccid.home), "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    git = ["git", "-c", "user.name=Card User", "-c", "user.email=card@example.org", "-c", "gpg.program=gpg",
           "-c", f"user.signingkey={ccid.fpr}"]
    stack.run(["git", "init", "-q"], cwd=repo, env=env)
    (repo / "README").write_text("signed with the emulated OpenPGP card\n")
    stack.run([*git, "add", "README"], cwd=repo, env=env)
    stack.run([*git, "commit", "-q", "-S", "-m", "signed commit"], cwd=repo, env=env)
    out = stack.run([*git, "verify-commit", "-v", "HEAD"], cwd=repo, env=env).stdout
    assert "Good signature" in out and ccid.fpr[-16:] in out.replace(" ", ""), out


def test_ccid_passwd_lockout_survives_restart_unblock(stack, ccid):
    ccid.set_pins(new_pin=NEW_PIN)
    ccid.card_edit(["passwd"], {"cardutil.change_pin.menu": ["1", "q"]})
    ccid.set_pins(pin=NEW_PIN, new_admin=NEW_ADMIN)
    ccid.card_edit(["admin", "passwd"], {"cardutil.change_pin.menu": ["3", "q"]})
    ccid.set_pins(pin=NEW_PIN, admin=NEW_ADMIN, new_reset_code=RESET_CODE)
    ccid.card_edit(["admin", "passwd"], {"cardutil.change_pin.menu": ["4", "q"]})
    assert _field(ccid.card_status(), "PIN retry counter") == "3 3 3"
    ccid.set_pins(pin="999999", admin=NEW_ADMIN)
    ccid.restart_scdaemon()              # scdaemon would otherwise keep the last good PIN verified
    for _ in range(3):
        with pytest.raises(GpgError):
            _sign_verify(ccid, ccid.fpr, 10)
    assert _field(ccid.card_status(), "PIN retry counter") == "0 3 3"
    # the lock is in the card's state: a new daemon (a new USB device) still has it
    ccid.kill()
    stack.stop_daemon()
    stack.start_daemon("openpgp")
    status = _wait_card(ccid)
    assert _field(status, "PIN retry counter") == "0 3 3"
    ccid.set_pins(reset_code=RESET_CODE, new_pin=NEW_PIN, admin=NEW_ADMIN)
    ccid.card_edit(["unblock"])
    ccid.set_pins(pin=NEW_PIN, admin=NEW_ADMIN)
    ccid.restart_scdaemon()
    _sign_verify(ccid, ccid.fpr, 10)
    assert _field(ccid.card_status(), "PIN retry counter") == "3 3 3"


def test_ccid_kdf_setup_then_sign(stack, ccid):
    ccid.card_edit(["admin", "kdf-setup"])
    status = ccid.card_status()
    assert _field(status, "KDF setting") == "on"
    # kdf-setup writes the hashes of the default PINs: 123456 / 12345678 hashed from now on
    ccid.set_pins()
    ccid.restart_scdaemon()
    _sign_verify(ccid, ccid.fpr, 10)


def test_ccid_rsa2048_on_card_and_keytocard(stack, ccid):
    ccid.key_attr("rsa2048", "rsa2048", "rsa2048")
    assert _field(ccid.card_status(), "Key attributes") == "rsa2048 rsa2048 rsa2048"
    fpr = ccid.generate_on_card("RSA Card", "rsa@example.org")
    ccid.rsa_fpr = fpr
    _sign_verify(ccid, fpr, 5000)
    # a key made on the host moves to the card (the card switches the slot to ed25519)
    ccid.gpg("--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", "Host Key <host@example.org>",
             "ed25519", "sign", "0")
    host_fpr = [f for f in ccid.fingerprints(secret=True) if f not in (fpr, ccid.fpr)][0]
    ccid.edit(["--edit-key", host_fpr], {"keyedit.prompt": ["keytocard", "save"],
                                         "keyedit.keytocard.use_primary": "y",
                                         "cardedit.genkeys.storekeytype": "1",
                                         "cardedit.genkeys.replace_key": "y"})
    assert ccid.card_key_fingerprints()["sig"] == host_fpr
    assert _field(ccid.card_status(), "Key attributes").startswith("ed25519 ")
    _sign_verify(ccid, host_fpr, 1000)
    ccid.host_fpr = host_fpr
    ccid.kill()                     # scdaemon lets go of the USB interface for pcscd


# --------------------------------------------------------------------------- 2. over pcscd


@pytest.fixture(scope="module")
def pcsc(stack):
    stack.pcscd.restart()
    reader = str(stack.e2e.find_reader(lambda name: READER_MATCH in name, timeout=60))
    # scdaemon over PC/SC takes the first reader, vsmartcard-vpcd's empty "Virtual PCD 00 00" here,
    # unless reader-port names (a prefix of) ours
    return stack.gnupg("gnupg-pcsc", options=("disable-ccid", f"reader-port {reader}"))


def test_pcscd_gnupg_and_factory_reset(stack, ccid, pcsc):
    # the same card keys, now through pcscd + libccid: the public keys come from the first home
    exported = ccid.run(["--batch", "--export"], input=b"").stdout
    assert exported
    pcsc.run(["--batch", "--import"], input=exported)
    status = _wait_card(pcsc)
    assert READER_MATCH in _field(status, "Reader"), status
    assert _field(status, "Key attributes") == "ed25519 rsa2048 rsa2048"
    _sign_verify(pcsc, ccid.host_fpr, 20_000)
    _encrypt_decrypt(pcsc, ccid.rsa_fpr)          # RSA-2048 PSO:DECIPHER: a 257-byte extended APDU
    pcsc.card_edit(["admin", "factory-reset"], {"cardedit.factory-reset.proceed": "y",
                                                "cardedit.factory-reset.really": "yes"})
    status = pcsc.card_status()
    assert _field(status, "Signature key") == "[none]"
    assert _field(status, "KDF setting") == "off"
    assert _field(status, "PIN retry counter") == "3 0 3"
    pcsc.kill()


# --------------------------------------------------------------------------- 3. OpenSC


def test_opensc_openpgp_driver(stack, pcsc):
    name = stack.run(["opensc-tool", "--reader", READER_MATCH, "--name"], check=False).stdout
    if "OpenPGP card v3.4" not in name:
        name = stack.run(["opensc-tool", "--name"]).stdout
    assert "OpenPGP card v3.4" in name, name
    info = stack.run(["openpgp-tool", "--card-info"]).stdout
    assert "Version:         3.4" in info and "unmanaged S/N range" in info, info
    out = stack.run(["openpgp-tool", "--verify", "CHV3", "--pin", "12345678", "--gen-key", "3",
                     "--key-type", "rsa2048"], timeout=300).stdout
    assert "Fingerprint" in out, out
    dump = stack.run(["pkcs15-tool", "-D"]).stdout
    assert "Authentication key" in dump and "RSA" in dump, dump
    data = stack.work / "p11.txt"
    data.write_bytes(os.urandom(3000))
    p11 = ["pkcs11-tool", "--module", PKCS11_MODULE]
    stack.run([*p11, "--login", "--pin", "123456", "--sign", "-m", "SHA256-RSA-PKCS", "--id", "03",
               "-i", str(data), "-o", str(stack.work / "p11.sig")])
    stack.run([*p11, "--read-object", "--type", "pubkey", "--id", "03", "-o", str(stack.work / "p11.pub.der")])
    out = stack.run(["openssl", "dgst", "-sha256", "-verify", str(stack.work / "p11.pub.der"), "-keyform", "DER",
                     "-signature", str(stack.work / "p11.sig"), str(data)]).stdout
    assert "Verified OK" in out, out


# --------------------------------------------------------------------------- 4. two slots


def _ssh_sign_verify(stack, g: GnuPG, n: int = 1) -> None:
    """ssh-keygen -Y sign with the card's authentication key through gpg-agent, then verify."""
    sock = g.run(["--list-dirs", "agent-ssh-socket"], binary="gpgconf").stdout.strip()
    env = {"SSH_AUTH_SOCK": sock}
    listed = stack.run(["ssh-add", "-L"], env=env).stdout
    pub = g.home / "card_ssh.pub"
    pub.write_text(listed.splitlines()[0] + "\n")
    (g.home / "allowed_signers").write_text("card@example.org " + pub.read_text())
    msg = g.home / "msg.txt"
    for i in range(n):
        msg.write_text(f"signature {i} through gpg-agent\n")
        stack.run(["ssh-keygen", "-Y", "sign", "-f", str(pub), "-n", "file", str(msg)], env=env)
        with open(msg, "rb") as f:
            v = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(g.home / "allowed_signers"),
                                "-I", "card@example.org", "-n", "file", "-s", str(msg) + ".sig"], stdin=f,
                               capture_output=True, text=True, timeout=60)
        assert v.returncode == 0 and "Good" in v.stdout, v
        (g.home / "msg.txt.sig").unlink()


def test_two_slots_piv_and_openpgp(stack):
    stack.pcscd.stop()
    stack.stop_daemon()
    # slot 1's OpenPGP card is provisioned offline: an Ed25519 authentication key
    card_dir = stack.state_dir / "cards" / "slot1-openpgp"
    cli = [sys.executable, "-m", "ccidgadget", "card"]
    stack.run([*cli, "create", "--type", "openpgp", "--dir", str(card_dir)])
    stack.run([*cli, "generate", "--dir", str(card_dir), "--slot", "aut", "--algorithm", "ed25519"])
    import json
    shown = stack.run([*cli, "show", "--dir", str(card_dir), "--json"]).stdout   # stderr (warnings) too
    offline = json.loads(shown[shown.index("\n{") + 1:] if not shown.startswith("{") else shown)
    stack.start_daemon("piv", "openpgp")
    # libccid's debug log says when the reader sends a time extension (RSA-3072 below)
    os.environ["LIBCCID_ifdLogLevel"] = "0x000F"
    try:
        stack.pcscd = stack.e2e.PcscdProcess(stack.log_dir / "pcscd-two-slots.log", args=["-d"])
        stack.pcscd.start()
    finally:
        del os.environ["LIBCCID_ifdLogLevel"]
    readers = []
    deadline = time.monotonic() + 60
    while len(readers) < 2 and time.monotonic() < deadline:
        readers = sorted(str(r) for r in stack.e2e.list_readers() if READER_MATCH in str(r))
        time.sleep(0.3)
    assert len(readers) == 2, readers
    slot0 = next(r for r in readers if r.endswith(" 00"))
    slot1 = next(r for r in readers if r.endswith(" 01"))
    # GnuPG: PC/SC, the OpenPGP card's reader by name, shared with OpenSC
    g = stack.gnupg("gnupg-two", options=("disable-ccid", "pcsc-shared", f"reader-port {slot1}"), ssh=True)
    status = _wait_card(g)
    assert _field(status, "Reader") == slot1
    # the fingerprint ccidgadget computed offline is what GnuPG shows
    aut = offline["keys"]["aut"]["fingerprint"]
    assert _field(status, "Authentication key").replace(" ", "") == aut, status
    # OpenSC uses the PIV card in slot 0 while GnuPG (gpg-agent's ssh support) signs with slot 1
    errors: list[str] = []

    def opensc_loop():
        for _ in range(3):
            p = stack.run(["pkcs15-tool", "--reader", slot0, "-D"], check=False)
            if p.returncode != 0 or "PIV" not in p.stdout:
                errors.append(p.stdout)

    t = threading.Thread(target=opensc_loop)
    t.start()
    _ssh_sign_verify(stack, g, n=2)
    t.join(120)
    assert not errors, errors[0]
    name0 = stack.run(["opensc-tool", "--reader", slot0, "--name"]).stdout
    assert "Personal Identity Verification Card" in name0, name0
    g.kill()
    _rsa3072_generation_does_not_stall_slot0(stack, slot0, slot1)


def _rsa3072_generation_does_not_stall_slot0(stack, slot0: str, slot1: str) -> None:
    """RSA-3072 generation on the OpenPGP card runs on its worker thread for seconds (TCG): the
    host gets CCID time extensions instead of a timeout, and the PIV slot answers meanwhile."""
    from smartcard.System import readers

    by_name = {str(r): r for r in readers()}
    pgp = by_name[slot1].createConnection()
    piv = by_name[slot0].createConnection()
    pgp.connect()
    piv.connect()

    def tx(conn, hexstr):
        data, sw1, sw2 = conn.transmit(list(bytes.fromhex(hexstr)))
        return bytes(data), (sw1 << 8) | sw2

    assert tx(pgp, "00A4040006D27600012401")[1] == 0x9000
    assert tx(pgp, "00200083083132333435363738")[1] == 0x9000
    assert tx(pgp, "00DA00C306010C00002000")[1] == 0x9000            # AUT: RSA-3072
    assert tx(piv, "00A4040009A00000030800001000")[1] == 0x9000
    result: dict = {}

    def generate():
        t0 = time.monotonic()
        result["answer"] = tx(pgp, "00478000000002A4000000")   # extended Le for the 7F49 of RSA-3072
        result["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=generate)
    worker.start()
    piv_answers = 0
    while worker.is_alive():
        data, sw = tx(piv, "00CB3FFF035C017E00")                        # PIV discovery object
        assert sw == 0x9000 and data.startswith(b"\x7e"), hex(sw)
        piv_answers += 1
    worker.join()
    data, sw = result["answer"]
    assert sw == 0x9000 and data[:2] == b"\x7f\x49" and len(data) > 384, (hex(sw), len(data))
    assert piv_answers > 0
    log = stack.pcscd.log()
    assert "Time extension requested" in log, f"RSA-3072 took {result['seconds']:.1f} s; no time extension seen"
    print(f"RSA-3072 generation {result['seconds']:.1f} s; {piv_answers} PIV APDUs answered meanwhile")
    pgp.disconnect()
    piv.disconnect()
