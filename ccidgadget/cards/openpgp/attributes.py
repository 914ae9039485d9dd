# SPDX-License-Identifier: GPL-3.0-or-later
"""Algorithm attributes C1-C3 (OpenPGP card 3.4 §4.4.3.10) and the algorithm information FA (§4.4.3.11).

RSA:  01 | modulus bits (2) | public exponent bits (2) | import format
ECC:  12 (ECDH) / 13 (ECDSA) / 16 (EdDSA) | curve OID | [FF: import with public key]

Which combinations a key slot takes: the signature and authentication keys sign (RSA, ECDSA on a
Weierstrass curve, EdDSA on Ed25519), the decryption key deciphers (RSA, ECDH on a Weierstrass
curve or Cv25519).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..iso7816 import SW, ApduError
from ..keys import ALGORITHM, RSA_BITS
from ..tlv import tlv
from .constants import (ALGORITHM_ID, CURVE_BY_ALGORITHM, CURVE_BY_OID, CURVES, ECC_IMPORT_WITH_PUBLIC_KEY, KEY,
                        RSA_EXPONENT_BITS, RSA_IMPORT_FORMAT, RSA_SIZES, Curve)

_RSA_BY_BITS = {bits: alg for alg, bits in RSA_BITS.items()}


@dataclass(frozen=True)
class KeyAttributes:
    """One decoded C1/C2/C3 value."""

    algorithm_id: ALGORITHM_ID
    rsa_bits: int = 0
    rsa_exponent_bits: int = 0
    rsa_import_format: RSA_IMPORT_FORMAT = RSA_IMPORT_FORMAT.STANDARD
    curve: Curve | None = None
    ecc_import_with_public_key: bool = False

    @property
    def key_algorithm(self) -> ALGORITHM:
        """The keys.ALGORITHM of a key with these attributes."""
        if self.algorithm_id == ALGORITHM_ID.RSA:
            return _RSA_BY_BITS[self.rsa_bits]
        return self.curve.algorithm

    def encode(self) -> bytes:
        # Frozen: encoded once (every state save and every key label encodes the three of them).
        try:
            return self.__dict__["_encoded"]
        except KeyError:
            pass
        if self.algorithm_id == ALGORITHM_ID.RSA:
            encoded = (bytes([ALGORITHM_ID.RSA]) + self.rsa_bits.to_bytes(2, "big")
                       + self.rsa_exponent_bits.to_bytes(2, "big") + bytes([self.rsa_import_format]))
        else:
            tail = bytes([ECC_IMPORT_WITH_PUBLIC_KEY]) if self.ecc_import_with_public_key else b""
            encoded = bytes([self.algorithm_id]) + self.curve.oid + tail
        self.__dict__["_encoded"] = encoded    # (not a field: equality, hash and repr ignore it)
        return encoded

    def describe(self) -> str:
        if self.algorithm_id == ALGORITHM_ID.RSA:
            return f"rsa{self.rsa_bits}"
        return self.curve.name

    # -- construction -------------------------------------------------------
    @classmethod
    def rsa(cls, bits: int, import_format: RSA_IMPORT_FORMAT = RSA_IMPORT_FORMAT.STANDARD) -> "KeyAttributes":
        return cls(ALGORITHM_ID.RSA, rsa_bits=bits, rsa_exponent_bits=RSA_EXPONENT_BITS,
                   rsa_import_format=import_format)

    @classmethod
    def for_algorithm(cls, key: KEY, algorithm: ALGORITHM) -> "KeyAttributes":
        """The attributes a key of `algorithm` gets in slot `key` (offline provisioning)."""
        if algorithm.is_rsa:
            attrs = cls.rsa(RSA_BITS[algorithm])
        else:
            curve = CURVE_BY_ALGORITHM.get(algorithm)
            if curve is None:
                raise ValueError(f"the OpenPGP card has no {algorithm.cli_name} keys")
            if algorithm == ALGORITHM.ED25519:
                alg_id = ALGORITHM_ID.EDDSA
            elif algorithm == ALGORITHM.X25519 or key == KEY.DEC:
                alg_id = ALGORITHM_ID.ECDH
            else:
                alg_id = ALGORITHM_ID.ECDSA
            attrs = cls(alg_id, curve=curve)
        attrs.check_slot(key)
        return attrs

    @classmethod
    def parse(cls, data: bytes, key: KEY) -> "KeyAttributes":
        """Decode and check attributes written for `key`; ApduError 6A80 if the card cannot do them."""
        data = bytes(data)
        if not data:
            raise ApduError(SW.WRONG_DATA, "empty algorithm attributes")
        try:
            alg_id = ALGORITHM_ID(data[0])
        except ValueError:
            raise ApduError(SW.WRONG_DATA, f"unknown algorithm id {data[0]:02X}") from None
        if alg_id == ALGORITHM_ID.RSA:
            if len(data) != 6:
                raise ApduError(SW.WRONG_DATA, "RSA attributes are 6 bytes")
            bits = int.from_bytes(data[1:3], "big")
            e_bits = int.from_bytes(data[3:5], "big")
            if bits not in RSA_SIZES:
                raise ApduError(SW.WRONG_DATA, f"RSA-{bits} is not offered")
            # e = 65537 needs 17 bits; GnuPG writes 32 and right-justifies e in that many bytes.
            if not 17 <= e_bits <= 32:
                raise ApduError(SW.WRONG_DATA, "public exponent length not supported")
            try:
                fmt = RSA_IMPORT_FORMAT(data[5])
            except ValueError:
                raise ApduError(SW.WRONG_DATA, "unknown RSA import format") from None
            attrs = cls(alg_id, rsa_bits=bits, rsa_exponent_bits=e_bits, rsa_import_format=fmt)
        else:
            oid, with_public = data[1:], False
            if oid and oid[-1] == ECC_IMPORT_WITH_PUBLIC_KEY:
                oid, with_public = oid[:-1], True
            curve = CURVE_BY_OID.get(oid)
            if curve is None:
                raise ApduError(SW.WRONG_DATA, "curve not offered")
            attrs = cls(alg_id, curve=curve, ecc_import_with_public_key=with_public)
        try:
            attrs.check_slot(key)
        except ValueError as e:
            raise ApduError(SW.WRONG_DATA, str(e)) from None
        return attrs

    def check_slot(self, key: KEY) -> None:
        """ValueError unless a key of this kind can live in slot `key`."""
        if self.algorithm_id == ALGORITHM_ID.RSA:
            return
        alg = self.curve.algorithm
        if key == KEY.DEC:
            ok = self.algorithm_id == ALGORITHM_ID.ECDH and alg != ALGORITHM.ED25519
        elif self.algorithm_id == ALGORITHM_ID.EDDSA:
            ok = alg == ALGORITHM.ED25519
        else:
            ok = self.algorithm_id == ALGORITHM_ID.ECDSA and alg not in (ALGORITHM.ED25519, ALGORITHM.X25519)
        if not ok:
            raise ValueError(f"{self.algorithm_id.name} on {self.curve.name} cannot be the {key.name} key")


DEFAULT_ATTRIBUTES = KeyAttributes.rsa(2048)


def supported_attributes(key: KEY) -> list[KeyAttributes]:
    """Every attribute value slot `key` accepts (for FA), RSA first."""
    out = [KeyAttributes.rsa(bits) for bits in RSA_SIZES]
    for curve in CURVES:
        for alg_id in (ALGORITHM_ID.ECDSA, ALGORITHM_ID.EDDSA, ALGORITHM_ID.ECDH):
            attrs = KeyAttributes(alg_id, curve=curve)
            try:
                attrs.check_slot(key)
            except ValueError:
                continue
            out.append(attrs)
    return out


def algorithm_information() -> bytes:
    """The value of FA: one C1/C2/C3 DO per attribute value the card accepts (§4.4.3.11)."""
    return b"".join(tlv(key.attributes_tag, a.encode()) for key in KEY for a in supported_attributes(key))
