"""Private keys held by emulated cards, and loading them from PEM, DER and PKCS#12.

`CardKey` wraps a `cryptography` private key with the operations smart cards
expose, each taking exactly what the card receives on the wire:

- `sign_raw_rsa` / `decrypt_raw_rsa`: the RSA private operation on a block the
  host already padded (PIV GENERAL AUTHENTICATE, CAC SIGN/DECRYPT).
  `cryptography` has no raw RSA, so it is computed here from the private
  numbers with the CRT, **blinded** (random message blinding r^e·c and random
  exponent blinding d_p + k·(p−1)) because Python's `pow` is not constant
  time, and checked with the public exponent before release (a faulty CRT
  result would leak a factor of n).
- `sign_ecdsa`: the host hashes; the card signs the hash (DER signature;
  `sign_ecdsa_raw` gives r‖s as the OpenPGP card returns it).
- `ecdh`, `x25519`: key agreement with the peer's public key.
- `sign_ed25519`: PureEdDSA over the whole message (as YubiKey 5.7 does).

Key types are named by their PIV algorithm identifiers (SP 800-78-4 table
6-2; E0/E1 are Yubico's for Ed25519/X25519), which other cards reuse as a
plain key-type tag.  The curves only the OpenPGP card offers (P-521,
brainpool, secp256k1) have no PIV identifier: their values lie above 0xFF,
so no PIV byte can name them, and `PIV_ALGORITHMS` is what a PIV card takes.
"""

from __future__ import annotations

import enum
import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.serialization import pkcs12


class ALGORITHM(enum.IntEnum):
    """Asymmetric key algorithm identifiers (SP 800-78-4 table 6-2 + Yubico E0/E1)."""

    RSA1024 = 0x06
    RSA2048 = 0x07
    RSA3072 = 0x05
    RSA4096 = 0x16
    ECCP256 = 0x11
    ECCP384 = 0x14
    ED25519 = 0xE0
    X25519 = 0xE1
    # No PIV identifier (OpenPGP card 3.4 §4.4.3.10 curves): outside the byte range on purpose.
    ECCP521 = 0x100
    BRAINPOOLP256R1 = 0x101
    BRAINPOOLP384R1 = 0x102
    BRAINPOOLP512R1 = 0x103
    SECP256K1 = 0x104

    @property
    def is_rsa(self) -> bool:
        return self in RSA_BITS

    @property
    def is_ec(self) -> bool:
        return self in EC_CURVES

    @property
    def cli_name(self) -> str:
        return self.name.lower()


RSA_BITS = {ALGORITHM.RSA1024: 1024, ALGORITHM.RSA2048: 2048, ALGORITHM.RSA3072: 3072, ALGORITHM.RSA4096: 4096}
EC_CURVES = {ALGORITHM.ECCP256: ec.SECP256R1, ALGORITHM.ECCP384: ec.SECP384R1, ALGORITHM.ECCP521: ec.SECP521R1,
             ALGORITHM.BRAINPOOLP256R1: ec.BrainpoolP256R1, ALGORITHM.BRAINPOOLP384R1: ec.BrainpoolP384R1,
             ALGORITHM.BRAINPOOLP512R1: ec.BrainpoolP512R1, ALGORITHM.SECP256K1: ec.SECP256K1}
EC_FIELD_BYTES = {ALGORITHM.ECCP256: 32, ALGORITHM.ECCP384: 48, ALGORITHM.ECCP521: 66,
                  ALGORITHM.BRAINPOOLP256R1: 32, ALGORITHM.BRAINPOOLP384R1: 48, ALGORITHM.BRAINPOOLP512R1: 64,
                  ALGORITHM.SECP256K1: 32}
#: Bit length of each curve's group order n (FIPS 186-4 §6.4 truncates a hash to it).
EC_ORDER_BITS = {ALGORITHM.ECCP256: 256, ALGORITHM.ECCP384: 384, ALGORITHM.ECCP521: 521,
                 ALGORITHM.BRAINPOOLP256R1: 256, ALGORITHM.BRAINPOOLP384R1: 384, ALGORITHM.BRAINPOOLP512R1: 512,
                 ALGORITHM.SECP256K1: 256}
#: What a PIV card can hold (SP 800-78-4 table 6-2 + Yubico E0/E1).
PIV_ALGORITHMS = tuple(a for a in ALGORITHM if a <= 0xFF)
_PREHASH_BY_LEN = {32: hashes.SHA256, 48: hashes.SHA384, 64: hashes.SHA512}
#: Longest hash the card signs: SHA-512.
MAX_ECDSA_HASH = 64
RSA_PUBLIC_EXPONENT = 65537
#: Bits of the random multiple of (p−1) added to the CRT exponents.
EXPONENT_BLINDING_BITS = 64


class KeyLoadError(ValueError):
    """A key or certificate file could not be used (message is for the user)."""


#: Concrete key class -> its family ("rsa", "ec", ALGORITHM.ED25519 / X25519, or None: unsupported).
#: isinstance against cryptography's abstract classes goes through ABCMeta once per class, not per key
#: (every key opened from the vault, every public key compared, asks).
_FAMILY: dict[type, object] = {}


def _family(cls: type):
    if issubclass(cls, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    if issubclass(cls, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ec"
    if issubclass(cls, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ALGORITHM.ED25519
    if issubclass(cls, (x25519.X25519PrivateKey, x25519.X25519PublicKey)):
        return ALGORITHM.X25519
    return None


def algorithm_of(key) -> ALGORITHM:
    """The algorithm identifier of a cryptography private or public key; KeyLoadError if unsupported."""
    cls = key.__class__
    try:
        family = _FAMILY[cls]
    except KeyError:
        family = _FAMILY[cls] = _family(cls)
    if family == "rsa":
        for alg, bits in RSA_BITS.items():
            if key.key_size == bits:
                return alg
        raise KeyLoadError(f"RSA-{key.key_size} is not supported (use 1024, 2048, 3072 or 4096 bits)")
    if family == "ec":
        for alg, curve in EC_CURVES.items():
            if isinstance(key.curve, curve):
                return alg
        raise KeyLoadError(f"elliptic curve {key.curve.name} is not supported (use P-256, P-384, P-521, "
                           "brainpoolP256r1/P384r1/P512r1 or secp256k1)")
    if family is not None:
        return family
    raise KeyLoadError(f"{type(key).__name__.lstrip('_')} keys are not supported")


def public_key_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CardKey:
    """A private key in a card slot."""

    __slots__ = ("private_key", "algorithm", "_rsa", "_pem")

    def __init__(self, private_key, algorithm: ALGORITHM | int | None = None) -> None:
        actual = algorithm_of(private_key)
        if algorithm is not None and ALGORITHM(algorithm) != actual:
            raise KeyLoadError(f"key is {actual.name}, not {ALGORITHM(algorithm).name}")
        self.private_key = private_key
        self.algorithm = actual
        self._rsa = private_key.private_numbers() if actual.is_rsa else None
        self._pem: bytes | None = None

    def __repr__(self) -> str:
        return f"CardKey({self.algorithm.name})"

    # -- construction -------------------------------------------------------
    @classmethod
    def generate(cls, algorithm: ALGORITHM | int) -> "CardKey":
        alg = ALGORITHM(algorithm)
        if alg.is_rsa:
            key = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, RSA_BITS[alg])
        elif alg.is_ec:
            key = ec.generate_private_key(EC_CURVES[alg]())
        elif alg == ALGORITHM.ED25519:
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            key = x25519.X25519PrivateKey.generate()
        return cls(key, alg)

    def to_der(self) -> bytes:
        """Unencrypted PKCS#8 DER: what cards/vault.py seals."""
        return self.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (for export by tools; card states hold keys sealed, cards/vault.py)."""
        if self._pem is None:
            self._pem = self.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return self._pem

    @classmethod
    def from_pem(cls, data: bytes | str, password: bytes | None = None) -> "CardKey":
        if isinstance(data, str):
            data = data.encode("ascii")
        try:
            key = serialization.load_pem_private_key(data, password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise KeyLoadError(f"cannot load private key: {e}") from None
        card_key = cls(key)
        if password is None:
            card_key._pem = bytes(data)
        return card_key

    # -- public part --------------------------------------------------------
    @property
    def public_key(self):
        return self.private_key.public_key()

    @property
    def key_size(self) -> int:
        if self.algorithm.is_rsa:
            return RSA_BITS[self.algorithm]
        if self.algorithm.is_ec:
            return EC_ORDER_BITS[self.algorithm]
        return 256

    def public_point(self) -> bytes:
        """EC: the uncompressed point 04‖X‖Y; 25519: the raw 32 bytes."""
        if self.algorithm.is_ec:
            return self.public_key.public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
        if self.algorithm in (ALGORITHM.ED25519, ALGORITHM.X25519):
            return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        raise TypeError("RSA keys have no point")

    def matches(self, public_key) -> bool:
        """True if `public_key` (e.g. a certificate's) is this key's public half."""
        try:
            return public_key_der(public_key) == public_key_der(self.public_key)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            return False

    # -- RSA ----------------------------------------------------------------
    def _rsa_private(self, block: bytes) -> bytes:
        if self._rsa is None:
            raise TypeError(f"{self.algorithm.name} key cannot do RSA")
        numbers = self._rsa
        n, e = numbers.public_numbers.n, numbers.public_numbers.e
        size = (n.bit_length() + 7) // 8
        if len(block) != size:
            raise ValueError(f"RSA input must be {size} bytes")
        c = int.from_bytes(block, "big")
        if c >= n:
            raise ValueError("RSA input is not smaller than the modulus")
        p, q = numbers.p, numbers.q
        # Message blinding: work on c·r^e, unblind with r^-1 (r random, invertible mod n).
        while True:
            r = secrets.randbelow(n - 3) + 2
            try:
                r_inv = pow(r, -1, n)
                break
            except ValueError:      # r shares a factor with n: astronomically unlikely
                continue
        blinded = (c * pow(r, e, n)) % n
        # Exponent blinding: d_p + k·(p−1) ≡ d_p (mod p−1) with fresh random k.
        dp = numbers.dmp1 + secrets.randbits(EXPONENT_BLINDING_BITS) * (p - 1)
        dq = numbers.dmq1 + secrets.randbits(EXPONENT_BLINDING_BITS) * (q - 1)
        m1 = pow(blinded % p, dp, p)
        m2 = pow(blinded % q, dq, q)
        h = (numbers.iqmp * (m1 - m2)) % p
        m = ((m2 + h * q) * r_inv) % n
        if pow(m, e, n) != c:       # fault check before anything leaves the card
            raise RuntimeError("RSA CRT result failed verification")
        return m.to_bytes(size, "big")

    def sign_raw_rsa(self, block: bytes) -> bytes:
        """Raw RSA private operation on a host-padded block of modulus length.

        A block that is an EMSA-PKCS1-v1_5 encoding (RFC 8017 §9.2) of a
        DigestInfo for SHA-1/SHA-2 — nearly every signature hosts ask for —
        is signed by OpenSSL (constant time, ~10x faster); the result is the
        same bytes, since PKCS#1 v1.5 signatures are deterministic.  Anything
        else (PSS-encoded blocks, raw TLS 1.0 MD5+SHA1, ...) takes the blinded
        CRT path.
        """
        if self._rsa is not None:
            prehashed = _pkcs1_digest_info(block)
            if prehashed is not None:
                algorithm, digest = prehashed
                return self.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
        return self._rsa_private(block)

    def decrypt_raw_rsa(self, block: bytes) -> bytes:
        """Raw RSA decryption of a ciphertext block (the host removes the padding)."""
        return self._rsa_private(block)

    # -- ECC ----------------------------------------------------------------
    def sign_ecdsa(self, digest: bytes) -> bytes:
        """ECDSA over a hash the host computed; returns DER SEQUENCE{r, s}.

        The hash becomes the integer of its leftmost n bits, n the bit
        length of the group order (FIPS 186-4 §6.4): longer hashes are
        truncated, shorter ones are the same integer left-padded with
        zeros.  That integer is handed to OpenSSL as a "prehashed" value of
        the largest standard size that OpenSSL will not truncate again.
        """
        if not self.algorithm.is_ec:
            raise TypeError(f"{self.algorithm.name} key cannot do ECDSA")
        if not digest or len(digest) > MAX_ECDSA_HASH:
            raise ValueError(f"hash must be 1..{MAX_ECDSA_HASH} bytes")
        order_bits = EC_ORDER_BITS[self.algorithm]
        e = int.from_bytes(digest, "big") >> max(0, 8 * len(digest) - order_bits)
        size = max(n for n in _PREHASH_BY_LEN if 8 * n <= order_bits)
        return self.private_key.sign(e.to_bytes(size, "big"), ec.ECDSA(utils.Prehashed(_PREHASH_BY_LEN[size]())))

    def sign_ecdsa_raw(self, digest: bytes) -> bytes:
        """ECDSA as r‖s, each left-padded to the field size (OpenPGP card 3.4 §7.2.10)."""
        r, s = utils.decode_dss_signature(self.sign_ecdsa(digest))
        size = EC_FIELD_BYTES[self.algorithm]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def ecdh(self, peer_point: bytes) -> bytes:
        """ECDH with the peer's uncompressed point; returns the shared X coordinate."""
        if not self.algorithm.is_ec:
            raise TypeError(f"{self.algorithm.name} key cannot do ECDH")
        size = EC_FIELD_BYTES[self.algorithm]
        if len(peer_point) != 1 + 2 * size or peer_point[0] != 0x04:
            raise ValueError("peer key must be an uncompressed point on the key's curve")
        peer = ec.EllipticCurvePublicKey.from_encoded_point(EC_CURVES[self.algorithm](), bytes(peer_point))
        return self.private_key.exchange(ec.ECDH(), peer)

    # -- 25519 --------------------------------------------------------------
    def sign_ed25519(self, message: bytes) -> bytes:
        if self.algorithm != ALGORITHM.ED25519:
            raise TypeError(f"{self.algorithm.name} key cannot do Ed25519")
        return self.private_key.sign(bytes(message))

    def x25519(self, peer: bytes) -> bytes:
        if self.algorithm != ALGORITHM.X25519:
            raise TypeError(f"{self.algorithm.name} key cannot do X25519")
        if len(peer) != 32:
            raise ValueError("X25519 public key must be 32 bytes")
        return self.private_key.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(peer)))


class LockedCardKey:
    """The public half of a sealed private key: all a locked card can use (metadata, attestation)."""

    __slots__ = ("public_key", "algorithm")

    def __init__(self, public_key) -> None:
        self.public_key = public_key
        self.algorithm = algorithm_of(public_key)

    def __repr__(self) -> str:
        return f"LockedCardKey({self.algorithm.name})"

    key_size = CardKey.key_size
    public_point = CardKey.public_point
    matches = CardKey.matches


class SealedKey:
    """A card's private key kept sealed at rest (cards/vault.py): `_sealed` is its record, `_clear` the
    `CardKey` while it is open in memory; `key` is that, or a `LockedCardKey` with the public half."""

    __slots__ = ("public_key", "algorithm", "_clear", "_sealed")

    def __init__(self, key: "CardKey | None", sealed: dict | None, public_key) -> None:
        self._clear = key
        self._sealed = sealed
        self.public_key = key.public_key if key is not None else public_key
        self.algorithm = key.algorithm if key is not None else LockedCardKey(public_key).algorithm

    @property
    def key(self):
        return self._clear if self._clear is not None else LockedCardKey(self.public_key)


#: DER DigestInfo prefixes (RFC 8017 §9.2 note 1) by hash.
_DIGEST_INFO_PREFIXES = {
    bytes.fromhex("3021300906052b0e03021a05000414"): hashes.SHA1,
    bytes.fromhex("302d300d06096086480165030402040500041c"): hashes.SHA224,
    bytes.fromhex("3031300d060960864801650304020105000420"): hashes.SHA256,
    bytes.fromhex("3041300d060960864801650304020205000430"): hashes.SHA384,
    bytes.fromhex("3051300d060960864801650304020305000440"): hashes.SHA512,
}


def _pkcs1_digest_info(block: bytes):
    """(hash algorithm, digest) if `block` is 00 01 FF.. 00 DigestInfo with ≥ 8 FF bytes, else None."""
    if len(block) < 11 or block[:2] != b"\x00\x01":
        return None
    sep = block.find(b"\x00", 2)
    if sep < 10 or block[2:sep] != b"\xff" * (sep - 2):
        return None
    info = block[sep + 1:]
    for prefix, algorithm in _DIGEST_INFO_PREFIXES.items():
        if info.startswith(prefix) and len(info) == len(prefix) + algorithm.digest_size:
            return algorithm(), info[len(prefix):]
    return None


def rsa_key_from_primes(p: int, q: int, e: int = RSA_PUBLIC_EXPONENT, *, dp: int | None = None,
                        dq: int | None = None, qinv: int | None = None) -> "rsa.RSAPrivateKey":
    """The RSA private key with primes p, q and public exponent e (card key import).

    The CRT values a host sent along (PIV FE, OpenPGP 7F48 tags 94-96) must be the ones p, q
    and e imply; ValueError otherwise, or when p, q, e do not make an RSA key.
    """
    if p < 3 or q < 3 or p == q or e < 3 or e % 2 == 0:
        raise ValueError("not an RSA key")
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    d = pow(e, -1, lam)             # ValueError if e is not invertible
    want = (d % (p - 1), d % (q - 1), pow(q, -1, p))
    for given, expected in zip((dp, dq, qinv), want):
        if given is not None and given != expected:
            raise ValueError("CRT components do not match the primes")
    return rsa.RSAPrivateNumbers(p, q, d, want[0], want[1], want[2], rsa.RSAPublicNumbers(e, p * q)).private_key()


# -- loading keys and certificates from files --------------------------------

@dataclass
class KeyBundle:
    """What a key/certificate file held: the key, its certificate, the rest of the chain."""

    key: CardKey | None
    certificate: x509.Certificate | None
    chain: list[x509.Certificate] = field(default_factory=list)


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)
_PEM_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None or isinstance(password, bytes):
        return password
    return password.encode("utf-8")


def _load_private(loader, data: bytes, password: bytes | None, what: str):
    try:
        return loader(data, password)
    except TypeError as e:
        # cryptography: "Password was not given but private key is encrypted"
        # or "Password was given but private key is not encrypted".
        if "not given" in str(e):
            raise KeyLoadError(f"{what}: the private key is encrypted; give its password") from None
        if "not encrypted" in str(e):
            return loader(data, None)
        raise KeyLoadError(f"{what}: {e}") from None
    except ValueError as e:
        if password is not None:
            raise KeyLoadError(f"{what}: wrong password or corrupt private key") from None
        raise KeyLoadError(f"{what}: cannot parse the private key ({e})") from None
    except UnsupportedAlgorithm as e:
        raise KeyLoadError(f"{what}: unsupported key type ({e})") from None


def load_key_and_cert(path: Path | str, password: str | bytes | None = None, *,
                      require_key: bool = True) -> KeyBundle:
    """Load a private key and its certificate chain from PEM, DER or PKCS#12.

    PEM files may hold any number of blocks (key and certificates, in any
    order); DER is a single private key (PKCS#8 / PKCS#1 / SEC1) or a single
    certificate; PKCS#12 (.p12/.pfx) holds both.  The certificate whose
    public key matches the private key is returned as `certificate`, the
    others as `chain`.  Raises KeyLoadError with a message for the user.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyLoadError(f"cannot read {path}: {e.strerror or e}") from None
    pw = _password_bytes(password)
    private = None
    certs: list[x509.Certificate] = []

    blocks = list(_PEM_BLOCK.finditer(data))
    if blocks:
        for m in blocks:
            label, block = m.group(1), m.group(0)
            if label in _PEM_KEY_LABELS:
                if private is not None:
                    raise KeyLoadError(f"{path}: more than one private key")
                private = _load_private(serialization.load_pem_private_key, block, pw, str(path))
            elif label in (b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"):
                try:
                    certs.append(x509.load_pem_x509_certificate(block.replace(b"TRUSTED ", b"")))
                except ValueError as e:
                    raise KeyLoadError(f"{path}: bad certificate ({e})") from None
    else:
        loaded = False
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, pw)
            private, certs, loaded = key, ([cert] if cert else []) + list(extra or []), True
        except TypeError:
            pass
        except ValueError as e:
            if _looks_like_pkcs12(data):
                raise KeyLoadError(f"{path}: cannot open the PKCS#12 file: wrong password or corrupt file") from None
        if not loaded:
            try:
                certs = [x509.load_der_x509_certificate(data)]
                loaded = True
            except ValueError:
                pass
        if not loaded:
            private = _load_private(serialization.load_der_private_key, data, pw, str(path))

    if private is None and require_key:
        raise KeyLoadError(f"{path}: no private key in the file")
    card_key = CardKey(private) if private is not None else None
    if card_key is None:
        return KeyBundle(None, certs[0] if certs else None, certs[1:])
    match = next((c for c in certs if card_key.matches(c.public_key())), None)
    if certs and match is None:
        raise KeyLoadError(f"{path}: no certificate in the file matches the private key")
    return KeyBundle(card_key, match, [c for c in certs if c is not match])


def _looks_like_pkcs12(data: bytes) -> bool:
    # PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo, ... }
    return len(data) > 8 and data[0] == 0x30 and b"\x02\x01\x03\x30" in data[:12]


def check_certificate_matches(key: CardKey, cert: x509.Certificate) -> None:
    if not key.matches(cert.public_key()):
        raise KeyLoadError("the certificate does not belong to the key")


__all__ = ["ALGORITHM", "PIV_ALGORITHMS", "CardKey", "LockedCardKey", "KeyBundle", "rsa_key_from_primes", "KeyLoadError",
           "algorithm_of", "load_key_and_cert",
           "check_certificate_matches", "public_key_der"]
