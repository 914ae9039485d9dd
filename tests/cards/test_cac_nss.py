"""The CAC card from a real NSS database, built exactly as QEMU's docs/system/devices/ccid.rst does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ci import skip_or_fail
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

import ccidgadget.cards.pin as pin_module
from ccidgadget.cards.cac import CAC_LABELS, CacCard, CacMaterialError, load_cac_material
from ccidgadget.cards.cac.applets import pki_aid

from test_cac import pkcs1_sign_block, select, sign_block, verify_pin

NICKNAMES = ["id-cert", "signing-cert", "encryption-cert"]

if shutil.which("certutil") is None or shutil.which("pk12util") is None:
    skip_or_fail("certutil/pk12util (Debian libnss3-tools) not installed", allow_module_level=True)


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


def certutil(*args: str, password_file: Path | None = None, noise: Path | None = None) -> None:
    argv = ["certutil", *args]
    if password_file is not None:
        argv += ["-f", str(password_file)]
    if noise is not None:
        argv += ["-z", str(noise)]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def make_db(directory: Path, password: str | None = None) -> str:
    """ccid.rst's commands; -z (noise) and -m (serial) only make them non-interactive and distinct."""
    directory.mkdir()
    db = f"sql:{directory}"
    noise = directory / "noise"
    noise.write_bytes(os.urandom(64))
    pwfile = None
    if password is None:
        certutil("-N", "--empty-password", "-d", db)
    else:
        pwfile = directory / "pw"
        pwfile.write_text(password + "\n")
        certutil("-N", "-d", db, password_file=pwfile)
    kw = dict(password_file=pwfile, noise=noise)
    certutil("-S", "-d", db, "-s", "CN=Fake Smart Card CA", "-x", "-t", "TC,TC,TC", "-n", "fake-smartcard-ca",
             "-m", "1", **kw)
    certutil("-S", "-d", db, "-t", ",,", "-s", "CN=John Doe", "-n", "id-cert", "-c", "fake-smartcard-ca",
             "-m", "2", **kw)
    certutil("-S", "-d", db, "-t", ",,", "-s", "CN=John Doe (signing)", "--nsCertType", "smime",
             "-n", "signing-cert", "-c", "fake-smartcard-ca", "-m", "3", **kw)
    certutil("-S", "-d", db, "-t", ",,", "-s", "CN=John Doe (encryption)", "--nsCertType", "sslClient",
             "-n", "encryption-cert", "-c", "fake-smartcard-ca", "-m", "4", **kw)
    return db


@pytest.fixture(scope="module")
def nss_db(tmp_path_factory) -> str:
    return make_db(tmp_path_factory.mktemp("nss") / "fake-smartcard")


def test_load_by_nickname_in_cac_order(nss_db):
    creds = load_cac_material(NICKNAMES, nss_db.removeprefix("sql:"))     # a plain DIR works too
    assert [c.certificate.subject.rfc4514_string() for c in creds] == [
        "CN=John Doe", "CN=John Doe (signing)", "CN=John Doe (encryption)"]
    assert all(c.certificate.issuer.rfc4514_string() == "CN=Fake Smart Card CA" for c in creds)
    assert all(c.key.private_key.key_size == 2048 for c in creds)


def test_nss_card_signs_with_the_database_key(tmp_path, nss_db):
    card = CacCard.from_sources(tmp_path / "state", certs=NICKNAMES, db=nss_db)
    card.reset()
    assert [c["label"] for c in card.describe()["certificates"]] == list(CAC_LABELS)
    assert verify_pin(card, b"12345678") == 0x9000
    assert select(card, pki_aid(1)) == 0x9000
    signature, sw = sign_block(card, pkcs1_sign_block(b"hello", 256))
    assert sw == 0x9000
    card.credentials[1].certificate.public_key().verify(signature, b"hello", padding.PKCS1v15(), hashes.SHA256())


def test_wrong_nickname(nss_db):
    with pytest.raises(CacMaterialError, match="no certificate with nickname 'signing'"):
        load_cac_material(["id-cert", "signing", "encryption-cert"], nss_db)


def test_two_nicknames(nss_db):
    with pytest.raises(CacMaterialError, match="exactly 3 certificates \\(nicknames\\), got 2"):
        load_cac_material(NICKNAMES[:2], nss_db)


def test_certificate_without_key(tmp_path, nss_db):
    # A database holding only the certificates (as after importing someone else's cert).
    db = f"sql:{tmp_path}"
    certutil("-N", "--empty-password", "-d", db)
    exported = tmp_path / "id.der"
    subprocess.run(["certutil", "-L", "-d", nss_db, "-n", "id-cert", "-r", "-o", str(exported)], check=True)
    certutil("-A", "-d", db, "-n", "id-cert", "-t", ",,", "-i", str(exported))
    with pytest.raises(CacMaterialError, match="'id-cert' has no private key"):
        load_cac_material(NICKNAMES, db)


def test_missing_database(tmp_path):
    with pytest.raises(CacMaterialError, match="no NSS database"):
        load_cac_material(NICKNAMES, f"sql:{tmp_path}")
    with pytest.raises(CacMaterialError, match="only sql:"):
        load_cac_material(NICKNAMES, f"dbm:{tmp_path}")


def test_password_protected_database_uses_the_pin(tmp_path):
    db = make_db(tmp_path / "protected", password="4711")
    with pytest.raises(CacMaterialError, match="protected by a password"):
        load_cac_material(NICKNAMES, db)
    with pytest.raises(CacMaterialError, match="wrong database password"):
        CacCard.from_sources(tmp_path / "s1", certs=NICKNAMES, db=db, pin="1234")
    # As under QEMU: the database password is the PIN.
    card = CacCard.from_sources(tmp_path / "s2", certs=NICKNAMES, db=db, pin="4711")
    card.reset()
    assert verify_pin(card, b"4711") == 0x9000
    # Or a separate PIN when the password is no card PIN (e.g. longer than 8).
    card = CacCard.from_sources(tmp_path / "s3", certs=NICKNAMES, db=db, db_password="4711", pin="246810")
    card.reset()
    assert verify_pin(card, b"246810") == 0x9000


def test_second_start_reuses_stored_keys_without_exporting(nss_db, tmp_path, monkeypatch):
    """pk12util costs 45 s per start on a slow board: certificates the state holds are not exported again."""
    from ccidgadget.cards.cac import material
    state = tmp_path / "state"
    first = CacCard.from_sources(state, certs=NICKNAMES, db=nss_db)
    calls = []
    real_run = material._run
    monkeypatch.setattr(material, "_run", lambda argv: calls.append(argv[0]) or real_run(argv))
    second = CacCard.from_sources(state, certs=NICKNAMES, db=nss_db)
    assert not any(c.endswith("pk12util") for c in calls)
    assert [c.cert_der for c in second.credentials] == [c.cert_der for c in first.credentials]
