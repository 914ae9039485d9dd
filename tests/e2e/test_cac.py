# SPDX-License-Identifier: GPL-3.0-or-later
"""The emulated CAC card end to end (issue 4): the daemon is the USB device, the guest's kernel +
pcscd + libccid + OpenSC (cac driver) + pyscard + openssl are the host.

Three card configurations, each with its own daemon, pcscd and state directory:

* ``nss``: an NSS database built with ``certutil`` exactly as QEMU's docs/system/devices/ccid.rst does
  (CA ``fake-smartcard-ca`` + ``id-cert``, ``signing-cert``, ``encryption-cert``), passed as
  ``--db sql:DIR --cert id-cert --cert signing-cert --cert encryption-cert``;
* ``pem``: three PEM files (key + certificate) made with ``openssl req`` (other keys and subjects, the
  signing key 3072 bits), passed as ``--cert FILE`` three times;
* ``p12``: three PKCS#12 files: the database's ``id-cert`` exported with docs/cac.md's one-liner
  (``pk12util -W ''``, 600000 PBKDF2 iterations) and the other two PEM pairs as ``openssl pkcs12 -export``.

For each: ``opensc-tool -n`` says CAC, ``pkcs15-tool -D`` and ``pkcs11-tool -O`` list three
certificates and keys with libcacard's labels and the right subjects, the certificates read back are the
input's (and the NSS ones are issued by QEMU's CA), a ``pkcs11-tool --sign`` signature verifies with
``openssl`` (every key for the NSS database, the signature key for the files), and an ``openssl pkeyutl
-encrypt`` ciphertext decrypts with ``pkcs11-tool --decrypt``.

A fourth configuration (PEM input, fresh state directory) takes the abuse: raw APDUs with bad parameters get
the status words docs/cac.md documents, a wrong PIN counts down (63C2, 63C1, 63C0), the right PIN resets
the counter, three wrong PINs lock the card ("PIN locked" in OpenSC), and the lock survives a daemon
restart.

The daemon has no PIN option, so every card has the default PIN 12345678 and the database no password.

Time in the TCG guest: about 4-5 minutes, of which ~35 s build the material and ~45 s are the
daemon's start on the NSS database (pk12util's 600000-iteration PKCS#12 export and import, 3 times).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from cryptography import x509

from cac_helpers import build_nss_db, run_status_word_checks, select_aid, verify_apdu, with_get_response
from ccidgadget.cards.cac import CAC_LABELS, DEFAULT_PIN
from ccidgadget.cards.cac.applets import pki_aid
from ccidgadget.cryptocompat import verify_directly_issued_by

PIN = DEFAULT_PIN
WRONG_PIN = "87654321"
NICKNAMES = ("id-cert", "signing-cert", "encryption-cert")
NSS_SUBJECTS = ("John Doe", "John Doe (signing)", "John Doe (encryption)")
PEM_SUBJECTS = ("Jane Roe", "Jane Roe (signing)", "Jane Roe (encryption)")
PEM_BITS = (2048, 3072, 2048)
TOOLS = ("certutil", "pk12util", "openssl", "opensc-tool", "pkcs15-tool", "pkcs11-tool", "pcscd")
OUR_READER = "ccidgadget"


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing host tools in the guest: {missing} (libnss3-tools, openssl, opensc, pcscd)",
                    pytrace=False)


# --------------------------------------------------------------------------- material (built once)


def _run(cmd, cwd=None, env=None, timeout=120, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=None if env is None else {**os.environ, **env}, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {cmd}\n{p.stdout.decode(errors='replace')}"
                             f"{p.stderr.decode(errors='replace')}")
    return p


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """The NSS database, its CA and certificates (DER), PKCS#12 exports, PEM files, an opensc.conf."""
    root = tmp_path_factory.mktemp("cac-material")
    db = build_nss_db(root / "fake-smartcard")
    # export the CA as QEMU's docs do, and each certificate (to compare with what the card serves)
    _run(["certutil", "-L", "-r", "-d", db, "-o", str(root / "fake-smartcard-ca.cer"), "-n", "fake-smartcard-ca"])
    _run(["openssl", "x509", "-inform", "der", "-in", str(root / "fake-smartcard-ca.cer"),
          "-out", str(root / "ca.pem")])
    nss_der = []
    for nick in NICKNAMES:
        der = root / f"{nick}.der"
        _run(["certutil", "-L", "-r", "-d", db, "-n", nick, "-o", str(der)])
        nss_der.append(der.read_bytes())
    # docs/cac.md: "for n in id-cert signing-cert encryption-cert; do pk12util ... -W ''; done" (one of
    # them: loading pk12util's 600000-iteration files is slow under TCG, and --db covers pk12util too)
    p12 = [str(root / "id-cert.p12")]
    _run(["pk12util", "-d", db, "-n", "id-cert", "-o", p12[0], "-W", ""])
    pem, pem_der = [], []
    for i, (cn, bits) in enumerate(zip(PEM_SUBJECTS, PEM_BITS)):
        key, cert = root / f"pem{i}.key", root / f"pem{i}.crt"
        _run(["openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-noenc", "-keyout", str(key), "-out", str(cert),
              "-subj", f"/CN={cn}", "-days", "30", "-set_serial", str(100 + i)])
        both = root / f"pem{i}.pem"
        both.write_bytes(key.read_bytes() + cert.read_bytes())
        pem.append(str(both))
        pem_der.append(_run(["openssl", "x509", "-in", str(cert), "-outform", "der"]).stdout)
        if i > 0:
            p12.append(str(root / f"pem{i}.p12"))
            _run(["openssl", "pkcs12", "-export", "-inkey", str(key), "-in", str(cert), "-name", cn,
                  "-passout", "pass:", "-out", p12[-1]])
    # no OpenSC file cache: every configuration is a new card and every run reads the card
    conf = root / "opensc.conf"
    conf.write_text("app default {\n framework pkcs15 {\n  use_file_caching = no;\n }\n}\n")
    ca = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    return types.SimpleNamespace(
        root=root, db=db, opensc_conf=conf,
        sources={
            # (daemon arguments, subject CNs, certificate DERs, issuing CA or None) per configuration
            "nss": (["--db", db, *sum((["--cert", n] for n in NICKNAMES), [])], NSS_SUBJECTS, nss_der,
                    [ca] * 3),
            "pem": (sum((["--cert", p] for p in pem), []), PEM_SUBJECTS, pem_der, [None] * 3),
            "p12": (sum((["--cert", p] for p in p12), []), (NSS_SUBJECTS[0], *PEM_SUBJECTS[1:]),
                    [nss_der[0], *pem_der[1:]], [ca, None, None]),
        })


# --------------------------------------------------------------------------- one daemon + pcscd per configuration


@pytest.fixture(scope="module")
def module_log_dir(tmp_path_factory) -> Path:
    out = os.environ.get("CCIDGADGET_VM_OUT")
    d = Path(out) / "logs" / "test_cac" if out else tmp_path_factory.mktemp("cac-logs")
    d.mkdir(parents=True, exist_ok=True)
    return d


class CardBed:
    """One card configuration: the daemon on its own state directory, a pcscd, our reader."""

    def __init__(self, e2e, name: str, args: list[str], subjects, ders, cas, work: Path, log_dir: Path,
                 opensc_conf):
        self.e2e, self.name, self.subjects, self.ders, self.cas = e2e, name, subjects, ders, cas
        self.work, self.log_dir = work, log_dir
        self.args = ["--card", "emulated", "--type", "cac", *args, "--state-dir", str(work / "state"),
                     "--log-level", "debug"]
        self.env = {"OPENSC_CONF": str(opensc_conf)}
        self.daemon = None
        self.pcscd = e2e.PcscdProcess(log_dir / f"pcscd-{name}.log")
        self.starts = 0
        self.before = e2e.gadgets()

    def start(self) -> "CardBed":
        self.starts += 1
        self._objects = None
        self.daemon = self.e2e.DaemonProcess(self.args, self.log_dir / f"ccidgadget-{self.name}-{self.starts}.log")
        self.daemon.wait_bound(120)
        self.pcscd.restart()             # no udev in the guest: pcscd sees the reader when it starts
        self.reader = self.e2e.find_reader(lambda n: OUR_READER in n, timeout=90)
        self.index = self.opensc_reader()
        return self

    def stop(self) -> list[str]:
        problems = []
        self.pcscd.stop()
        if self.daemon is not None:
            try:
                rc = self.daemon.stop()
                if rc != 0:
                    problems.append(f"ccidgadget ({self.name}) exited with {rc}\n{self.daemon.log()[-4000:]}")
            except AssertionError as e:
                problems.append(str(e))
        leftover = self.e2e.gadgets() - self.before
        for g in leftover:
            try:
                self.e2e.remove_gadget(g)
            except OSError as e:
                problems.append(f"could not remove gadget {g}: {e}")
        if leftover:
            problems.append(f"ccidgadget ({self.name}) left gadget(s) behind: {sorted(leftover)}")
        return problems

    def restart_daemon(self) -> None:
        problems = self.stop()
        assert not problems, "\n".join(problems)
        self.start()

    # -- host tools

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> str:
        """Run a host tool in the work directory with our opensc.conf; stdout+stderr."""
        p = self.e2e.run_command(list(argv), timeout=timeout, check=False, env=self.env, cwd=self.work)
        out = p.stdout + p.stderr
        if check and p.returncode != 0:
            raise AssertionError(f"exit {p.returncode}: {' '.join(argv)}\n{out}\n"
                                 f"--- daemon log (tail) ---\n{self.daemon.log()[-3000:]}")
        self.last_rc = p.returncode
        return out

    def opensc_reader(self) -> str:
        """OpenSC's index of our reader (vsmartcard-vpcd's "Virtual PCD" readers come first)."""
        out = self.run("opensc-tool", "--list-readers")
        for line in out.splitlines():
            m = re.match(r"\s*(\d+)\s+\S+\s+(.*)$", line)
            if m and OUR_READER in m.group(2):
                return m.group(1)
        raise AssertionError(f"OpenSC does not list our reader:\n{out}")

    def pkcs11(self, *argv: str, check: bool = True) -> str:
        return self.run("pkcs11-tool", *argv, check=check)

    def objects(self) -> list[dict]:
        """``pkcs11-tool --login -O`` as a list of {"kind": ..., "label": ..., ...} (once per start)."""
        if self._objects is None:
            self._objects = parse_pkcs11_objects(self.pkcs11("--login", "--pin", PIN, "-O"))
        return self._objects

    def public_key_file(self, index: int, out: Path) -> None:
        """The public key of input certificate `index` (what test_certificates_are_the_inputs read back)."""
        der = self.work / f"input{index}.der"
        der.write_bytes(self.ders[index])
        self.run("openssl", "x509", "-inform", "der", "-in", str(der), "-pubkey", "-noout", "-out", str(out))

    def certificates(self) -> list[dict]:
        return [o for o in self.objects() if o["kind"] == "Certificate"]

    # -- raw APDUs with pyscard

    def connect(self, disposition=None):
        conn = self.reader.createConnection()
        conn.connect(disposition=disposition)

        def raw(apdu: bytes):
            data, sw1, sw2 = conn.transmit(list(apdu))
            return bytes(data), (sw1 << 8) | sw2
        return conn, with_get_response(raw)

    def pin_status(self) -> int:
        """SW of an empty VERIFY in PKI applet 0 (9000 verified, 63Cx tries left, 6983 blocked); then reset
        the card. (OpenSC leaves the card as it is when it disconnects, so a PIN it verified stays verified.)"""
        from smartcard.scard import SCARD_RESET_CARD
        conn, tx = self.connect(disposition=SCARD_RESET_CARD)
        try:
            assert tx(select_aid(pki_aid(0)))[1] == 0x9000
            return tx(bytes.fromhex("00200000"))[1]
        finally:
            conn.disconnect()


def parse_pkcs11_objects(text: str) -> list[dict]:
    objects, current = [], None
    for line in text.splitlines():
        m = re.match(r"^(Certificate|Private Key|Public Key|Data) Object\b(.*)$", line)
        if m:
            current = {"kind": m.group(1), "header": line}
            objects.append(current)
            continue
        m = re.match(r"^\s+([A-Za-z ]+?):\s+(.*)$", line)
        if m and current is not None:
            current.setdefault(m.group(1).strip().lower(), m.group(2).strip())
    return objects


@pytest.fixture(scope="class")
def bed(request, material, e2e, module_log_dir, tmp_path_factory):
    """The test class's configuration (``NAME``, ``SOURCE``) running on a fresh state directory."""
    name = request.cls.NAME
    args, subjects, ders, cas = material.sources[request.cls.SOURCE]
    bed = CardBed(e2e, name, args, subjects, ders, cas, tmp_path_factory.mktemp(f"cac-{name}"), module_log_dir,
                  material.opensc_conf)
    try:
        bed.start()
    except BaseException:
        bed.stop()
        raise
    yield bed
    problems = bed.stop()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------- the same checks for every input


class CardChecks:
    NAME = SOURCE = ""
    SIGN_WITH = (CAC_LABELS[1],)              # the keys test_sign_verifies_with_openssl uses

    def test_opensc_says_cac(self, bed):
        out = bed.run("opensc-tool", "--reader", bed.index, "-n")
        assert "Common Access Card (CAC)" in out, out

    def test_pkcs15_lists_three_certificates_and_keys(self, bed):
        dump = bed.run("pkcs15-tool", "--reader", bed.index, "-D")
        for label in CAC_LABELS:
            for kind in ("X.509 Certificate", "Private RSA Key", "Public RSA Key"):
                assert f"{kind} [{label}]" in dump, (kind, label, dump)
        assert dump.count("X.509 Certificate [") == 3, dump
        assert dump.count("Private RSA Key [") == 3, dump
        assert bed.subjects[0] in dump, dump                      # token label: CN of the first certificate
        for der in bed.ders:                                      # key sizes (the PEM signing key: 3072)
            bits = x509.load_der_x509_certificate(der).public_key().key_size
            assert re.search(rf"ModLength\s*:\s*{bits}\b", dump), (bits, dump)

    def test_pkcs11_lists_labels_and_subjects(self, bed):
        objects = bed.objects()
        certs = [o for o in objects if o["kind"] == "Certificate"]
        privs = [o for o in objects if o["kind"] == "Private Key"]
        text = "\n".join(map(str, objects))
        assert [c.get("label") for c in certs] == list(CAC_LABELS), text
        assert sorted(p.get("label") for p in privs) == sorted(CAC_LABELS), text
        for cert, cn in zip(certs, bed.subjects):
            assert cert.get("subject") == f"DN: CN={cn}", text
        by_label = {p["label"]: p for p in privs}
        for cert in certs:
            assert by_label[cert["label"]].get("id") == cert.get("id"), text   # key and certificate pair up
            assert "sign" in by_label[cert["label"]].get("usage", ""), text

    def test_certificates_are_the_inputs(self, bed):
        for i, cert in enumerate(bed.certificates()):
            der = bed.work / f"cert{i}.der"
            bed.pkcs11("-r", "--type", "cert", "--id", cert["id"], "-o", str(der))
            assert der.read_bytes() == bed.ders[i], f"certificate {cert['id']} ({cert['label']}) is not the input's"
            if bed.cas[i] is not None:
                # issued by QEMU's fake-smartcard-ca. Not `openssl verify`: ccid.rst's CA has no
                # basicConstraints, and OpenSSL refuses it as a CA ("invalid CA certificate").
                verify_directly_issued_by(x509.load_der_x509_certificate(der.read_bytes()), bed.cas[i])

    def test_sign_verifies_with_openssl(self, bed):
        data = bed.work / "data"
        data.write_bytes(f"signed by the emulated CAC card ({bed.name})\n".encode())
        signed = 0
        for i, cert in enumerate(bed.certificates()):
            if cert["label"] not in self.SIGN_WITH:
                continue
            sig, pub = bed.work / f"sig{i}", bed.work / f"pub{i}.pem"
            # pkcs11-tool picks the signing key by --id (it ignores --label for --sign)
            bed.pkcs11("--login", "--pin", PIN, "--sign", "-m", "SHA256-RSA-PKCS", "--id", cert["id"],
                       "-i", str(data), "-o", str(sig))
            bed.public_key_file(i, pub)
            out = bed.run("openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data))
            assert "Verified OK" in out, (cert["label"], out)
            signed += 1
        assert signed == len(self.SIGN_WITH)

    def test_decrypt_round_trip(self, bed):
        i = CAC_LABELS.index("CAC Email Encryption Certificate")
        cid = bed.certificates()[i]["id"]
        w = bed.work
        bed.public_key_file(i, w / "enc.pub")
        secret = os.urandom(32)
        (w / "secret").write_bytes(secret)
        bed.run("openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", str(w / "enc.pub"), "-in", str(w / "secret"),
                "-out", str(w / "secret.enc"))
        bed.pkcs11("--login", "--pin", PIN, "--decrypt", "-m", "RSA-PKCS", "--id", cid,
                   "-i", str(w / "secret.enc"), "-o", str(w / "secret.dec"))
        assert (w / "secret.dec").read_bytes() == secret


class TestNssDatabase(CardChecks):
    NAME, SOURCE = "nss", "nss"
    SIGN_WITH = CAC_LABELS                    # every key of QEMU's database


class TestPemFiles(CardChecks):
    NAME, SOURCE = "pem", "pem"


class TestPkcs12Files(CardChecks):
    NAME, SOURCE = "p12", "p12"


# --------------------------------------------------------------------------- bad input and the PIN counter


class TestStatusWordsAndPinLock:
    NAME, SOURCE = "lock", "pem"          # PEM: the quickest start (no PBKDF2), and the test restarts

    def test_bad_apdus_get_the_documented_status_words(self, bed):
        conn, tx = bed.connect()
        try:
            bad, log = run_status_word_checks(tx)
        finally:
            conn.disconnect()
        assert not bad, "wrong status words:\n" + "\n".join(bad) + "\n--- all ---\n" + "\n".join(log)

    def test_wrong_pin_counts_down_and_the_right_one_resets(self, bed):
        assert bed.pin_status() == 0x63C3
        out = bed.pkcs11("--login", "--pin", WRONG_PIN, "-O", check=False)
        assert bed.last_rc != 0 and "CKR_PIN_INCORRECT" in out, out
        assert bed.pin_status() == 0x63C2
        out = bed.pkcs11("--login", "--pin", WRONG_PIN, "-O", check=False)
        assert "CKR_PIN_INCORRECT" in out, out
        assert bed.pin_status() == 0x63C1
        out = bed.pkcs11("--login", "--pin", PIN, "-O")
        assert out.count("Private Key Object") == 3, out
        assert bed.pin_status() == 0x9000          # OpenSC left the card verified; pin_status resets it
        assert bed.pin_status() == 0x63C3          # and the right PIN had reset the counter

    def test_three_wrong_pins_lock_the_card(self, bed):
        for left in (2, 1, 0):
            out = bed.pkcs11("--login", "--pin", WRONG_PIN, "-O", check=False)
            assert bed.last_rc != 0 and ("CKR_PIN_INCORRECT" in out or (left == 0 and "CKR_PIN_LOCKED" in out)), out
            # the card answers the wrong VERIFY itself with 63C2, 63C1, 63C0; an empty VERIFY says 6983
            # (blocked) once no try is left
            assert bed.pin_status() == (0x63C0 | left if left else 0x6983)
        out = bed.pkcs11("--login", "--pin", PIN, "-O", check=False)
        assert bed.last_rc != 0 and "CKR_PIN_LOCKED" in out, out
        assert bed.pin_status() == 0x6983
        # the right PIN in a raw VERIFY: blocked too; no signature without it
        conn, tx = bed.connect()
        try:
            assert tx(select_aid(pki_aid(1)))[1] == 0x9000
            assert tx(verify_apdu(PIN.encode()))[1] == 0x6983
            assert tx(bytes.fromhex("8042000001 00 00".replace(" ", "")))[1] == 0x6982
        finally:
            conn.disconnect()

    def test_lock_survives_a_daemon_restart(self, bed):
        bed.restart_daemon()
        assert "removing the gadget" not in bed.daemon.log()
        assert bed.pin_status() == 0x6983
        out = bed.pkcs11("--login", "--pin", PIN, "-O", check=False)
        assert bed.last_rc != 0 and "CKR_PIN_LOCKED" in out, out
        # still a CAC card with its certificates (the public side needs no PIN)
        out = bed.pkcs11("-O")
        assert out.count("Certificate Object") == 3, out
