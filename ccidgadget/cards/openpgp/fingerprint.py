# SPDX-License-Identifier: GPL-3.0-or-later
"""OpenPGP v4 fingerprints of the card's keys (RFC 4880 §12.2, RFC 6637 §9, GnuPG's EdDSA/Cv25519).

GnuPG computes the fingerprint of a key it generates on (or moves to) the card and writes it
with the creation time (C7-C9, CE-D0).  Keys put on the card offline (`ccidgadget card
generate|import`) get the same two DOs from here, so `gpg --card-status` shows them and GnuPG
can match them to an OpenPGP key made from the card's public keys.

fingerprint = SHA-1(99 ‖ length(2) ‖ public key packet body), the body being
    04 ‖ creation time(4) ‖ algorithm ‖ key material:
    RSA (1):    MPI n, MPI e
    ECDSA (19): OID length, OID, MPI 04‖X‖Y
    EdDSA (22): OID length, OID, MPI 40‖A (the native 32-byte key with GnuPG's 40 prefix)
    ECDH (18):  OID length, OID, MPI point (Cv25519: 40‖native), KDF parameters 03 01 hash cipher
GnuPG picks the ECDH KDF parameters from the curve size (scd/app-openpgp.c ecdh_params):
SHA-256/AES-128 up to 256 bits, SHA-384/AES-192 up to 384, SHA-512/AES-256 above.
"""

from __future__ import annotations

import hashlib

from ..keys import ALGORITHM, EC_ORDER_BITS, CardKey
from .attributes import KeyAttributes
from .constants import ALGORITHM_ID, CURVE_BY_ALGORITHM

#: RFC 4880 §9.4 hash ids and §9.2 cipher ids.
_SHA256, _SHA384, _SHA512 = 8, 9, 10
_AES128, _AES192, _AES256 = 7, 8, 9


def _mpi(data: bytes) -> bytes:
    value = int.from_bytes(data, "big")
    stripped = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return value.bit_length().to_bytes(2, "big") + stripped


def ecdh_kdf_parameters(algorithm: ALGORITHM) -> bytes:
    bits = 256 if algorithm == ALGORITHM.X25519 else EC_ORDER_BITS[algorithm]
    if bits <= 256:
        hash_id, cipher = _SHA256, _AES128
    elif bits <= 384:
        hash_id, cipher = _SHA384, _AES192
    else:
        hash_id, cipher = _SHA512, _AES256
    return bytes([3, 1, hash_id, cipher])


def public_key_packet_body(key: CardKey, attrs: KeyAttributes, created: int) -> bytes:
    head = bytes([4]) + created.to_bytes(4, "big") + bytes([attrs.algorithm_id])
    if attrs.algorithm_id == ALGORITHM_ID.RSA:
        numbers = key.public_key.public_numbers()
        return head + _mpi(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")) \
            + _mpi(numbers.e.to_bytes(4, "big"))
    oid = CURVE_BY_ALGORITHM[key.algorithm].oid
    point = key.public_point()
    if key.algorithm in (ALGORITHM.ED25519, ALGORITHM.X25519):
        point = b"\x40" + point
    body = head + bytes([len(oid)]) + oid + _mpi(point)
    if attrs.algorithm_id == ALGORITHM_ID.ECDH:
        body += ecdh_kdf_parameters(key.algorithm)
    return body


def v4_fingerprint(key: CardKey, attrs: KeyAttributes, created: int) -> bytes:
    body = public_key_packet_body(key, attrs, created)
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).digest()
