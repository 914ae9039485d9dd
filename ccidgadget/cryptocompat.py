# SPDX-License-Identifier: GPL-3.0-or-later
"""The `cryptography` APIs that differ between Debian 12's 38.0.4 and current releases: import them from here.

Debian 12 and Raspberry Pi OS bookworm ship python3-cryptography 38.0.4, and PyPI has no wheels of
it for 32-bit ARM (a Pi Zero would have to build it with Rust), so ccidgadget runs on 38.0.4 as well
as on current releases (pyproject: ``cryptography>=38``; ``make test`` runs the unit suite on
Debian's 38.0.4: ``make test-deb12``). Everything not listed here is in 38 already.

When new code needs an API that 38 lacks, add it HERE with the fallback, name the release that
introduced it, and add a case to tests/cards/test_cryptocompat.py; nothing else imports
``cryptography.hazmat.decrepit`` or uses a ``*_utc`` property directly.

- ``TripleDES`` (moved to ``cryptography.hazmat.decrepit`` in 43, to be removed from
  ``ciphers.algorithms``): the decrepit one where it exists, else ``algorithms.TripleDES``.
- ``not_valid_before(cert)``, ``not_valid_after(cert)``: aware UTC datetimes (the ``*_utc``
  properties of 42+, which deprecates the naive ones; on 38 the naive value, UTC by definition).
- ``verify_directly_issued_by(cert, issuer)`` (the method of 40+): on 38 the issuer name is
  compared and the signature checked with the issuer's key (RSA PKCS#1 v1.5, ECDSA, Ed25519,
  Ed448; not RSA-PSS), ``verify_signature_fallback``.

Not available on 38 and deliberately not emulated (do not use them): Argon2id (44), a private
key's ``__copy__`` (42; ``copy.copy`` of a key object fails on 38: keep the key object itself, it
is immutable), ``load_pem_x509_certificates`` (39; split the PEM blocks instead), the X.509
verification API ``PolicyBuilder`` (42), SSH certificates (40).
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

try:                                    # 43 and later
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:                     # 38 .. 42
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]


def _utc(naive: datetime.datetime) -> datetime.datetime:
    return naive.replace(tzinfo=datetime.timezone.utc)


def not_valid_before(cert: x509.Certificate) -> datetime.datetime:
    """The certificate's notBefore as an aware UTC datetime (``not_valid_before_utc`` from 42)."""
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else _utc(cert.not_valid_before)


def not_valid_after(cert: x509.Certificate) -> datetime.datetime:
    """The certificate's notAfter as an aware UTC datetime (``not_valid_after_utc`` from 42)."""
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else _utc(cert.not_valid_after)


def verify_directly_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise ValueError (names differ) or InvalidSignature unless `issuer` signed `cert` (40+: the method)."""
    method = getattr(cert, "verify_directly_issued_by", None)
    if method is not None:
        method(issuer)
    else:
        verify_signature_fallback(cert, issuer)


def verify_signature_fallback(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """What `verify_directly_issued_by` does on 38 (public so the tests run it on every release)."""
    if cert.issuer != issuer.subject:
        raise ValueError("the certificate's issuer is not the issuer certificate's subject")
    key = issuer.public_key()
    signature, tbs = cert.signature, cert.tbs_certificate_bytes
    if isinstance(key, rsa.RSAPublicKey):
        if cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS:
            # RFC 4055 §3.1: the PSS parameters are in the certificate; 38 does not expose them
            raise ValueError("RSASSA-PSS signed certificates need cryptography 40 or later")
        key.verify(signature, tbs, padding.PKCS1v15(), cert.signature_hash_algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, tbs, ec.ECDSA(cert.signature_hash_algorithm))
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, tbs)
    else:
        raise ValueError(f"unsupported issuer key type {type(key).__name__}")
