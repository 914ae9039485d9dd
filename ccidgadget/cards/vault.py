"""Keys at rest: the key hierarchy of an emulated card's state (docs/card-state-format.md, format 2).

    PIN ─scrypt─┐                           ┌─ verifier (compared in constant time)
                ├─ HMAC(device key, ·) = K ─┤
    salt, N,r,p ┘                           └─ KEK ─AES-GCM─▶ wrap of the DATA KEY (one per PIN, PUK...)

    DATA KEY (32 random bytes per card) ─AES-GCM─▶ card sealing key (X25519 private half)
    card sealing key (public half in clear) ◀─ ECIES (X25519 + HKDF + AES-GCM) ─ private keys, PIN-
                                               protected objects, written with or without the PIN
    device key = HKDF(device secret, uid)  ─AES-GCM─▶ what the standards use WITHOUT a PIN: PIV 9E/F9
                                               and PIN-policy-NEVER keys, the PIV management key
    integrity key = HKDF(device secret, uid) ─HMAC─▶ "mac" over the whole document

One scrypt call per VERIFY: its output, mixed with the device key, gives both the verifier
and the key that opens the data key.  Every AES-GCM call carries associated data naming the
card (its random `uid`) and the object (slot, algorithm, policies), so a sealed blob cannot be
moved to another card or given other policies without the open failing.

Without a device secret the device key and the integrity key are computable from the file
itself: the things the standards let a host use without a PIN are then only obfuscated, and
the MAC catches corruption and careless edits, not a deliberate forgery.  The PIN-protected
keys stay protected by the PIN (and its scrypt cost) alone.  `warn_if_unbound` says so in
the log.

Only `cryptography` 38 APIs are used (AESGCM, X25519, HKDF, Scrypt); Argon2id arrived in
cryptography 44, which Debian 12 / Raspberry Pi OS do not have.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .device_secret import NO_DEVICE_SECRET, DeviceSecret, DeviceSecretError
from .secmem import SecretBytes
from .storage import IntegrityError, StorageError

log = logging.getLogger(__name__)

VAULT_FORMAT = "ccidgadget-card/2"
DATA_KEY_LEN = 32
UID_LEN = 16
NONCE_LEN = 12
#: Limits of the scrypt cost a configuration may ask for: 2^10 (1 MiB at r=8) is the least that
#: still costs an attacker memory; 2^22 at r=8 is 4 GiB per guess, more than a board has.
KDF_LOG2_N_RANGE = (10, 22)
KDF_R_RANGE = (1, 32)
KDF_P_RANGE = (1, 16)
KDF_MAX_MEMORY = 1 << 30


def _b64e(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _b64d(text, what: str) -> bytes:
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise StorageError(f"invalid base64 in {what}") from None


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


# -- KDF cost ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KdfParams:
    """scrypt cost of new PIN/PUK wraps (RFC 7914: N CPU/memory cost, r block size, p parallelism)."""

    n: int
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        problems = kdf_problems(self.n, self.r, self.p)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def memory(self) -> int:
        return 128 * self.n * self.r

    def to_dict(self) -> dict:
        return {"name": "scrypt", "n": self.n, "r": self.r, "p": self.p}


def kdf_problems(n: int, r: int, p: int) -> list[str]:
    out = []
    lo, hi = KDF_LOG2_N_RANGE
    if n < 2 or n & (n - 1) or not (1 << lo) <= n <= (1 << hi):
        out.append(f"scrypt N must be a power of two from 2^{lo} to 2^{hi}")
    if not KDF_R_RANGE[0] <= r <= KDF_R_RANGE[1]:
        out.append(f"scrypt r must be {KDF_R_RANGE[0]}..{KDF_R_RANGE[1]}")
    if not KDF_P_RANGE[0] <= p <= KDF_P_RANGE[1]:
        out.append(f"scrypt p must be {KDF_P_RANGE[0]}..{KDF_P_RANGE[1]}")
    if not out and 128 * n * r > KDF_MAX_MEMORY:
        out.append(f"scrypt N*r*128 = {128 * n * r >> 20} MiB per guess; allowed: at most 1024 MiB")
    return out


# -- the daemon-wide options ----------------------------------------------------------------------
@dataclass
class VaultOptions:
    """The [vault] configuration: KDF cost, the device secret, a migration backup."""

    kdf: KdfParams | None = None                # None: pin.SCRYPT_N/R/P (tests lower them)
    device_secret: str = "none"                 # none | file | tpm | rpi-otp
    device_secret_path: str | None = None       # file: the secret; tpm: directory of seal.pub/seal.priv
    tpm_tcti: str | None = None                 # e.g. "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321"
    migration_backup: bool = False              # keep state.json.v1.bak when converting format 1
    _device: DeviceSecret | None = field(default=None, repr=False, compare=False)

    def device(self) -> DeviceSecret:
        """The device secret, read once (a TPM unseal takes a while); DeviceSecretError if unreadable."""
        if self._device is None:
            from . import device_secret
            self._device = device_secret.load(self.device_secret, path=self.device_secret_path,
                                              tcti=self.tpm_tcti)
        return self._device

    @classmethod
    def with_device(cls, device: DeviceSecret, **kw) -> "VaultOptions":
        opts = cls(device_secret=device.kind, **kw)
        opts._device = device
        return opts


DEFAULT_OPTIONS = VaultOptions()

#: [vault] keys of the configuration file (daemon/config.py hands the table to `options_from_table`).
CONFIG_KEYS = ("kdf_log2_n", "kdf_r", "kdf_p", "device_secret", "device_secret_path", "tpm_tcti",
               "migration_backup")


def options_from_table(t: dict, error) -> VaultOptions:
    """VaultOptions from a [vault] table; every problem goes to ``error(key, message)``."""
    from .device_secret import KINDS
    opts = VaultOptions()
    for key in t:
        if key not in CONFIG_KEYS:
            error(f"vault.{key}", f"unknown key; allowed in [vault]: {', '.join(CONFIG_KEYS)}")
    ints = {}
    # Missing keys take the documented defaults (those of pin.SCRYPT_N/R/P: 2^14, 8, 1).
    for key, lo_hi, default in (("kdf_log2_n", KDF_LOG2_N_RANGE, 14), ("kdf_r", KDF_R_RANGE, 8),
                                ("kdf_p", KDF_P_RANGE, 1)):
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo_hi[0] <= value <= lo_hi[1]:
            error(f"vault.{key}", f"{value!r} is not allowed; allowed: an integer {lo_hi[0]}..{lo_hi[1]}")
            value = None
        ints[key] = value
    if None not in ints.values() and any(k in t for k in ("kdf_log2_n", "kdf_r", "kdf_p")):
        problems = kdf_problems(1 << ints["kdf_log2_n"], ints["kdf_r"], ints["kdf_p"])
        for p in problems:
            error("vault.kdf_log2_n", p)
        if not problems:
            opts.kdf = KdfParams(1 << ints["kdf_log2_n"], ints["kdf_r"], ints["kdf_p"])
    kind = t.get("device_secret", "none")
    if kind not in KINDS:
        error("vault.device_secret", f"{kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    else:
        opts.device_secret = kind
    path = t.get("device_secret_path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        error("vault.device_secret_path", f"{path!r} is not allowed; allowed: an absolute path")
    elif path is not None:
        opts.device_secret_path = path
    if opts.device_secret in ("file", "tpm") and opts.device_secret_path is None and kind in KINDS:
        error("vault.device_secret_path", f"missing: device_secret = {kind!r} needs the path of "
                                          + ("the secret file" if kind == "file" else "seal.pub/seal.priv's directory"))
    tcti = t.get("tpm_tcti")
    if tcti is not None and (not isinstance(tcti, str) or not tcti):
        error("vault.tpm_tcti", f"{tcti!r} is not allowed; allowed: a TCTI string such as \"device:/dev/tpmrm0\"")
    elif tcti is not None:
        opts.tpm_tcti = tcti
    backup = t.get("migration_backup", False)
    if not isinstance(backup, bool):
        error("vault.migration_backup", f"must be true or false, not {backup!r}")
    else:
        opts.migration_backup = backup
    return opts


# -- AEAD records ----------------------------------------------------------------------------------
def _aad(uid: bytes, label: str) -> bytes:
    return VAULT_FORMAT.encode() + b"\x00" + uid + b"\x00" + label.encode("utf-8")


def _aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> dict:
    nonce = os.urandom(NONCE_LEN)
    return {"nonce": _b64e(nonce), "ct": _b64e(AESGCM(key).encrypt(nonce, bytes(plaintext), aad))}


def _aead_open(key: bytes, record: dict, aad: bytes, what: str) -> bytes:
    try:
        nonce, ct = _b64d(record["nonce"], what), _b64d(record["ct"], what)
    except (KeyError, TypeError):
        raise StorageError(f"malformed sealed record ({what})") from None
    if len(nonce) != NONCE_LEN:
        raise StorageError(f"malformed sealed record ({what}): nonce is {len(nonce)} bytes")
    try:
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        raise IntegrityError(f"integrity check failed: {what} does not open (tampered, or moved from "
                             "another card or object)") from None


# -- PIN-derived keys (used by pin.PinSlot) --------------------------------------------------------
_VERIFIER_INFO = b"ccidgadget-card/2 verifier"
_KEK_INFO = b"ccidgadget-card/2 kek"


def pin_keys(device: DeviceSecret, scrypt_output: bytes) -> tuple[bytes, bytes]:
    """(verifier, key-encryption key) from one scrypt output, with the device secret mixed in."""
    mix_key = _hkdf(device.value, b"ccidgadget-card/2 device mix", b"kek mix")
    k = hmac.new(mix_key, scrypt_output, hashlib.sha256).digest()
    return (hmac.new(k, _VERIFIER_INFO, hashlib.sha256).digest(),
            hmac.new(k, _KEK_INFO, hashlib.sha256).digest())


def wrap_data_key(kek: bytes, dek: bytes, aad: bytes) -> dict:
    return _aead_seal(kek, dek, aad)


def unwrap_data_key(kek: bytes, record: dict, aad: bytes, what: str) -> bytes:
    dek = _aead_open(kek, record, aad, f"the data key wrap of the {what}")
    if len(dek) != DATA_KEY_LEN:
        raise IntegrityError(f"integrity check failed: the {what} wrap holds {len(dek)} bytes, not a data key")
    return dek


# -- the document MAC (used by storage.CardStore) ---------------------------------------------------
def canonical(document: dict) -> bytes:
    return json.dumps({k: v for k, v in document.items() if k != "mac"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True).encode("ascii")


def document_mac(device: DeviceSecret, document: dict, body: bytes | None = None) -> str:
    """The document's `mac`; `body`: its `canonical()` text when the caller has it already."""
    uid = _document_uid(document)
    key = _hkdf(device.value, uid, b"ccidgadget-card/2 integrity")
    return _b64e(hmac.new(key, canonical(document) if body is None else body, hashlib.sha256).digest())


def _document_uid(document: dict) -> bytes:
    try:
        uid = _b64d(document["vault"]["uid"], "the card uid")
    except (KeyError, TypeError):
        raise IntegrityError("integrity check failed: the state has no vault section (uid)") from None
    if len(uid) != UID_LEN:
        raise IntegrityError("integrity check failed: the card uid is not 16 bytes")
    return uid


def check_document(device: DeviceSecret, document: dict, path) -> None:
    """Refuse a format-2 document whose device binding or MAC does not match (precise messages)."""
    vault = document.get("vault")
    if not isinstance(vault, dict):
        raise IntegrityError(f"{path}: integrity check failed: no vault section in a format 2 state")
    bound = vault.get("device", {}).get("kind", "none") if isinstance(vault.get("device"), dict) else None
    check = vault.get("device", {}).get("check") if isinstance(vault.get("device"), dict) else None
    if bound is None:
        raise IntegrityError(f"{path}: integrity check failed: malformed device binding")
    if bound != device.kind or (bound != "none" and check != device.fingerprint):
        raise StorageError(f"{path} is bound to device secret {bound!r}"
                           + (f" ({check})" if bound != "none" else "")
                           + f"; this daemon is configured with {device.describe()}. Configure [vault] "
                             "device_secret as when the card was created (the card cannot be opened otherwise)")
    mac = document.get("mac")
    if not isinstance(mac, str):
        raise IntegrityError(f"{path}: integrity check failed: the state has no MAC")
    if not hmac.compare_digest(mac, document_mac(device, document)):
        raise IntegrityError(f"{path}: integrity check failed: the MAC does not match the content "
                             "(the file was modified outside ccidgadget, or is corrupt); refusing to use it")


# -- the per-card vault -----------------------------------------------------------------------------
class CardVault:
    """One card's uid, device binding and sealing key pair (public half in clear)."""

    def __init__(self, uid: bytes, device: DeviceSecret, card_public: bytes, card_private: dict) -> None:
        self.uid = uid
        self.device = device
        self.card_public = card_public
        self.card_private = card_private
        self._device_key = _hkdf(device.value, uid, b"ccidgadget-card/2 device-sealed")

    def __repr__(self) -> str:
        return f"CardVault(uid={self.uid.hex()}, {self.device.describe()})"

    @classmethod
    def new(cls, device: DeviceSecret = NO_DEVICE_SECRET) -> tuple["CardVault", bytes]:
        """A new vault and its data key (the caller wraps it under each PIN, then forgets it)."""
        uid = os.urandom(UID_LEN)
        dek = os.urandom(DATA_KEY_LEN)
        private = x25519.X25519PrivateKey.generate()
        raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        sealed = _aead_seal(dek, raw, _aad(uid, "card-sealing-key"))
        return cls(uid, device, public, sealed), dek

    def aad(self, label: str) -> bytes:
        return _aad(self.uid, label)

    # -- sealing ------------------------------------------------------------------------------------
    def seal(self, plaintext: bytes, label: str, *, without_pin: bool = False) -> dict:
        """Seal to the card key (opened after VERIFY), or with `without_pin` to the device key."""
        if without_pin:
            return {"by": "device", **_aead_seal(self._device_key, plaintext, self.aad(label))}
        ephemeral = x25519.X25519PrivateKey.generate()
        eph_pub = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(self.card_public))
        key = _hkdf(shared, eph_pub + self.card_public, b"ccidgadget-card/2 sealed to card")
        return {"by": "card", "eph": _b64e(eph_pub), **_aead_seal(key, plaintext, self.aad(label))}

    @staticmethod
    def needs_pin(record: dict) -> bool:
        return record.get("by") != "device"

    def open(self, record: dict, label: str, session: "VaultSession | None" = None) -> bytes:
        by = record.get("by") if isinstance(record, dict) else None
        if by == "device":
            return _aead_open(self._device_key, record, self.aad(label), label)
        if by == "card":
            if session is None:
                raise PermissionError("the card is locked")
            return session.open_for_card(record, label)
        raise StorageError(f"malformed sealed record ({label}): sealed by {by!r}")

    def open_private_key(self, record: dict, label: str, session: "VaultSession | None", public_key, algorithm):
        """A sealed private key (PKCS#8 DER) as a keys.CardKey, checked against its public half;
        PermissionError while the card is locked, StorageError if it is not the key it should be."""
        from .keys import CardKey, KeyLoadError
        der = self.open(record, label, session)
        try:
            key = CardKey(serialization.load_der_private_key(der, None), algorithm)
        except (ValueError, KeyLoadError) as e:
            raise StorageError(f"sealed key {label} does not hold a {algorithm.name} key: {e}") from None
        if not key.matches(public_key):
            raise StorageError(f"sealed key {label} does not match its public key")
        return key

    def open_session(self, dek: bytes) -> "VaultSession":
        return VaultSession(self, dek)

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        device = {"kind": self.device.kind}
        if self.device.kind != "none":
            device["check"] = self.device.fingerprint
        return {"format": VAULT_FORMAT, "uid": _b64e(self.uid), "device": device,
                "card_public": _b64e(self.card_public), "card_private": dict(self.card_private)}

    @classmethod
    def from_dict(cls, d: dict, device: DeviceSecret) -> "CardVault":
        try:
            if d.get("format") != VAULT_FORMAT:
                raise StorageError(f"unknown vault format {d.get('format')!r}")
            uid, public = _b64d(d["uid"], "the card uid"), _b64d(d["card_public"], "the card public key")
            if len(uid) != UID_LEN or len(public) != 32:
                raise StorageError("malformed vault: uid or card public key has the wrong length")
            return cls(uid, device, public, dict(d["card_private"]))
        except (KeyError, TypeError, AttributeError) as e:
            raise StorageError(f"malformed vault section: {e!r}") from None


class VaultSession:
    """An unlocked card: the data key (in a SecretBytes page) and the card sealing key."""

    def __init__(self, vault: CardVault, dek: bytes) -> None:
        self.vault = vault
        raw = _aead_open(dek, vault.card_private, vault.aad("card-sealing-key"), "the card sealing key")
        self._dek = SecretBytes(dek)
        self._private = x25519.X25519PrivateKey.from_private_bytes(raw)

    def __repr__(self) -> str:
        return f"VaultSession({self.vault.uid.hex()}, {'closed' if self.closed else 'open'})"

    @property
    def closed(self) -> bool:
        return self._private is None

    def data_key(self) -> bytes:
        if self.closed:
            raise PermissionError("the card is locked")
        return self._dek.value()

    def open_for_card(self, record: dict, label: str) -> bytes:
        if self.closed:
            raise PermissionError("the card is locked")
        eph_pub = _b64d(record.get("eph", ""), label)
        if len(eph_pub) != 32:
            raise StorageError(f"malformed sealed record ({label}): ephemeral key length")
        try:
            shared = self._private.exchange(x25519.X25519PublicKey.from_public_bytes(eph_pub))
        except ValueError:                     # an all-zero shared secret: a forged ephemeral key
            raise IntegrityError(f"integrity check failed: {label} has an invalid ephemeral key") from None
        key = _hkdf(shared, eph_pub + self.vault.card_public, b"ccidgadget-card/2 sealed to card")
        return _aead_open(key, record, self.vault.aad(label), label)

    def close(self) -> None:
        self._dek.wipe()
        self._private = None


def save_migrated(store, document: dict, options: VaultOptions, what: str) -> None:
    """Write a converted format 1 state: one atomic rename, after a backup if the user asked for one."""
    if options.migration_backup:
        backup = store.backup_before_migration()
        log.warning("%s: format 1 state (keys in clear) kept as %s at your request; delete it once the "
                    "converted card works", what, backup)
    store.save(document)
    log.warning("%s: state converted from format 1 (keys in clear) to format 2 (keys sealed); the old clear "
             "text may survive on the medium's unused blocks", what)


def warn_if_unbound(device: DeviceSecret, what: str) -> None:
    if device.kind == "none":
        log.warning("%s: no device secret configured ([vault] device_secret): the keys it uses without a PIN "
                    "(and a PIV management key) are only obfuscated at rest, and its PIN alone protects the "
                    "others against a copy of the state directory", what)


__all__ = ["CardVault", "VaultSession", "VaultOptions", "KdfParams", "DEFAULT_OPTIONS", "DeviceSecretError",
           "pin_keys", "wrap_data_key", "unwrap_data_key", "document_mac", "check_document", "warn_if_unbound",
           "save_migrated", "options_from_table", "CONFIG_KEYS"]
