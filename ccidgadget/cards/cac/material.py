"""The three certificates and keys of a CAC card, from an NSS database or files.

QEMU's ``ccid-card-emulated,backend=certificates,db=sql:DIR,cert1=..,cert2=..,
cert3=..`` reads three certificates by nickname from an NSS database and uses
their private keys there.  We read the same database with Debian's
libnss3-tools (``certutil`` to find the certificate, ``pk12util`` to export
certificate and key as PKCS#12 into a private temporary directory), or take
three PEM/DER/PKCS#12 files, and check everything before a card exists:

- exactly three certificates (QEMU's ccid.rst: "you must have exactly three");
- every certificate has a private key and the key belongs to it;
- keys are RSA of 1024, 2048 or 3072 bits: libcacard is RSA-only and
  OpenSC's cac driver registers raw RSA at exactly these sizes
  (card-cac.c `cac_init`); its PKCS#15 emulator skips any non-RSA
  certificate (pkcs15-cac.c), so an EC key would silently vanish on the host.

Errors are `CacMaterialError` with a message for the user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..base import CardSetupError
from ..keys import CardKey, KeyLoadError, load_key_and_cert

#: libcacard builds one PKI applet per certificate; QEMU passes exactly three.
CERT_COUNT = 3
#: RSA sizes OpenSC's cac driver accepts (card-cac.c cac_init: 1024 mandatory, 2048/3072 optional).
RSA_SIZES = (1024, 2048, 3072)
#: The labels OpenSC gives the PKI objects in order (card-cac-common.c `cac_labels`).
CAC_LABELS = ("CAC ID Certificate", "CAC Email Signature Certificate", "CAC Email Encryption Certificate")
NSS_TIMEOUT = 60


class CacMaterialError(CardSetupError, ValueError):
    """The certificates or keys cannot make a CAC card (message is for the user)."""


@dataclass(frozen=True)
class CacCredential:
    """One PKI applet's content: the certificate (DER) and its private key."""

    certificate: x509.Certificate
    key: CardKey | None             # None: only sealed in the card state (cards/vault.py) until the PIN opens it
    source: str                     # nickname or file, for messages
    sealed: dict | None = None      # the sealed private key of a card state, if it came from one

    @property
    def cert_der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding
        return self.certificate.public_bytes(Encoding.DER)


def _check_pair(cert: x509.Certificate | None, key: CardKey | None, source: str) -> CacCredential:
    if cert is None:
        raise CacMaterialError(f"{source}: no certificate")
    if key is None:
        raise CacMaterialError(f"{source}: the certificate has no private key")
    if not key.matches(cert.public_key()):
        raise CacMaterialError(f"{source}: the private key does not match the certificate")
    if not isinstance(key.private_key, rsa.RSAPrivateKey):
        raise CacMaterialError(
            f"{source}: {key.algorithm.name} key: a CAC card holds RSA keys only "
            "(libcacard is RSA-only and OpenSC's cac driver ignores other certificates)")
    if key.private_key.key_size not in RSA_SIZES:
        raise CacMaterialError(
            f"{source}: RSA-{key.private_key.key_size}: OpenSC's cac driver supports RSA "
            + "/".join(map(str, RSA_SIZES)) + " only")
    return CacCredential(cert, key, source)


def _check_count(items: list, what: str) -> None:
    if len(items) != CERT_COUNT:
        raise CacMaterialError(
            f"a CAC card needs exactly {CERT_COUNT} certificates ({what}), got {len(items)}: "
            "ID, email signature and email encryption, as QEMU's ccid-card-emulated takes cert1..cert3")


# -- NSS ----------------------------------------------------------------------

def nss_dir(db: str) -> Path:
    """The directory of an NSS database spec (``sql:DIR``, ``dbm:DIR`` or a plain DIR)."""
    kind, sep, rest = db.partition(":")
    if sep and kind in ("sql", "dbm", "extern", "rdb", "multiaccess"):
        if kind != "sql":
            raise CacMaterialError(f"{db}: only sql: (cert9.db/key4.db) NSS databases are supported; "
                                   "convert with: certutil --upgrade-merge or certutil -N -d sql:DIR")
        return Path(rest)
    return Path(db)


def _nss_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise CacMaterialError(f"{name} not found: install Debian's libnss3-tools to read an NSS database "
                               "(or export the certificates to PKCS#12 files, see docs/cac.md)")
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=NSS_TIMEOUT,
                              env={**os.environ, "LANG": "C", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise CacMaterialError(f"{os.path.basename(argv[0])} did not finish in {NSS_TIMEOUT} s") from None
    except OSError as e:
        raise CacMaterialError(f"cannot run {argv[0]}: {e.strerror or e}") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def export_nss_credential(db: str, nickname: str, password: str | None,
                          known: dict[bytes, CacCredential] | None = None) -> CacCredential:
    """Export one certificate and its key from an NSS database by nickname.

    `known` maps certificate DER to credentials the card state already holds:
    a certificate found there needs no key export.  pk12util always uses
    600,000 PBKDF2 iterations, which costs 45 s per start on a slow board.
    """
    directory = nss_dir(db)
    spec = f"sql:{directory}"
    if not (directory / "cert9.db").is_file():
        raise CacMaterialError(f"{db}: no NSS database (cert9.db) in {directory}; create it as docs/cac.md shows")
    certutil, pk12util = _nss_tool("certutil"), _nss_tool("pk12util")

    found = _run([certutil, "-L", "-d", spec, "-n", nickname, "-a"])
    if found.returncode != 0:
        raise CacMaterialError(f"{db}: no certificate with nickname {nickname!r} "
                               f"(list them with: certutil -L -d {spec})")
    if known:
        try:
            der = x509.load_pem_x509_certificate(found.stdout.encode()).public_bytes(serialization.Encoding.DER)
        except ValueError:
            der = b""
        if der in known:
            return known[der]

    with tempfile.TemporaryDirectory(prefix="ccidgadget-nss-") as tmp:   # mode 0700
        tmp_path = Path(tmp)
        db_pw = tmp_path / "db.pw"
        p12_pw = tmp_path / "p12.pw"
        p12 = tmp_path / "export.p12"
        export_password = os.urandom(12).hex()
        # An empty-password database accepts any password; NSS refuses an empty password file.
        db_pw.write_text((password or "ccidgadget") + "\n")
        p12_pw.write_text(export_password + "\n")
        os.chmod(db_pw, 0o600)
        os.chmod(p12_pw, 0o600)
        done = _run([pk12util, "-o", str(p12), "-n", nickname, "-d", spec, "-k", str(db_pw), "-w", str(p12_pw)])
        if done.returncode != 0:
            message = done.stdout + done.stderr
            if "BAD_PASSWORD" in message or "Incorrect password" in message:
                if password is None:
                    raise CacMaterialError(
                        f"{db} is protected by a password: give it as the PIN (--pin-file FILE), as libcacard "
                        "uses the database password as the card PIN, or with --db-password-file FILE")
                raise CacMaterialError(f"{db}: wrong database password")
            if "UNKNOWN_CERT" in message or "user certs" in message:
                raise CacMaterialError(f"{db}: certificate {nickname!r} has no private key in the database")
            raise CacMaterialError(f"{db}: pk12util could not export {nickname!r}: {_last_line(message)}")
        try:
            with warnings.catch_warnings():
                # pk12util writes BER (indefinite lengths); cryptography reads it and warns.
                warnings.simplefilter("ignore", UserWarning)
                bundle = load_key_and_cert(p12, export_password)
        except KeyLoadError as e:
            raise CacMaterialError(f"{db}: {nickname!r}: {e}") from None
    return _check_pair(bundle.certificate, bundle.key, f"{db}: {nickname!r}")


# -- files ----------------------------------------------------------------------

def load_file_credential(path: str | Path, password: str | None) -> CacCredential:
    """A PEM/DER/PKCS#12 file holding one private key and its certificate."""
    source = str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # BER PKCS#12 from pk12util, as above
        try:
            bundle = load_key_and_cert(path, None)
        except KeyLoadError as first:
            if password is None:
                raise CacMaterialError(str(first)) from None
            try:
                bundle = load_key_and_cert(path, password)
            except KeyLoadError as e:
                raise CacMaterialError(str(e)) from None
    if bundle.certificate is None:
        raise CacMaterialError(f"{source}: no certificate in the file (put the key and its certificate "
                               "in one PEM file, or use PKCS#12)")
    return _check_pair(bundle.certificate, bundle.key, source)


def load_cac_material(certs: list[str], db: str | None = None, *,
                      password: str | None = None,
                      known: dict[bytes, CacCredential] | None = None) -> list[CacCredential]:
    """Three credentials in CAC order (ID, email signature, email encryption).

    With `db`, `certs` are nicknames in that NSS database and `password` is
    its password (None for an empty-password database); without, they are
    PEM/DER/PKCS#12 files and `password` decrypts encrypted ones.
    """
    certs = list(certs)
    _check_count(certs, "nicknames" if db else "files")
    if db is not None:
        creds = [export_nss_credential(db, nick, password, known) for nick in certs]
    else:
        creds = [load_file_credential(path, password) for path in certs]
    return creds
