# SPDX-License-Identifier: GPL-3.0-or-later
"""ccidgadget/cryptocompat.py on whatever `cryptography` runs the suite (38.0.4 in make test-deb12, current in .venv)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.x509.oid import NameOID

from ccidgadget import cryptocompat
from ccidgadget.cryptocompat import TripleDES, not_valid_after, not_valid_before

BEFORE = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
AFTER = datetime.datetime(2034, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, public_key, signing_key) -> x509.Certificate:
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(public_key).serial_number(7).not_valid_before(BEFORE).not_valid_after(AFTER)
            .sign(signing_key, algorithm))


def test_triple_des_known_answer():
    key = bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123")
    enc = Cipher(TripleDES(key), modes.ECB()).encryptor()
    # NIST SP 800-67 Rev.1, example: "The qufck brown fox jump" first block
    assert (enc.update(b"The qufc") + enc.finalize()).hex() == "a826fd8ce53b855f"


def test_validity_is_timezone_aware_utc():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("a", "a", key.public_key(), key)
    assert not_valid_before(cert) == BEFORE and not_valid_before(cert).tzinfo is not None
    assert not_valid_after(cert) == AFTER and not_valid_after(cert).utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize("verify", [cryptocompat.verify_directly_issued_by, cryptocompat.verify_signature_fallback],
                         ids=["installed", "fallback"])
@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_issuer_signature(verify, kind):
    make = {"rsa": lambda: rsa.generate_private_key(65537, 2048), "ec": lambda: ec.generate_private_key(ec.SECP384R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate}[kind]
    ca_key, other_key, leaf_key = make(), make(), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ca", "ca", ca_key.public_key(), ca_key)
    impostor = _cert("ca", "ca", other_key.public_key(), other_key)
    leaf = _cert("leaf", "ca", leaf_key.public_key(), ca_key)
    verify(leaf, ca)
    verify(ca, ca)
    with pytest.raises(InvalidSignature):
        verify(leaf, impostor)
    with pytest.raises(ValueError):
        verify(ca, leaf)          # leaf's subject is not ca's issuer
