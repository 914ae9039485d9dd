# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the security checks."""

from __future__ import annotations

import pytest

from ccidgadget.cards import pin as pin_module
from ccidgadget.cards.cac.material import CacCredential
from ccidgadget.cards.keys import CardKey


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


@pytest.fixture(scope="module")
def cac_credentials():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    creds = []
    for i in range(3):
        key = rsa.generate_private_key(65537, 1024)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sec {i}")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(i + 1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
                .sign(key, hashes.SHA256()))
        creds.append(CacCredential(cert, CardKey(key), f"cert{i}"))
    return creds
