"""PIN and PUK reference data with retry counters, shared by every emulated card.

A `PinSlot` stores a salted scrypt-derived verifier of the reference data
(never the PIN itself), the tries left, the maximum and the card's data key
wrapped under a key derived by the same scrypt call (format 2, cards/vault.py).  `verify()` follows the rule smart
cards use against tearing attacks: the decremented counter is made durable
*before* the comparison, and restored only after a match, so pulling the
power while a wrong PIN is being checked never gives a free try.

PINs and PUKs never reach a log at any level: nothing in this module formats
a candidate or a reference value.

PIV rules (SP 800-73-4 §2.4.3, YubiKey practice): PIN and PUK are 6 to 8
bytes, sent padded with FF to exactly 8 bytes.  The hash is computed over the
padded 8-byte form, which is what VERIFY compares.
"""

from __future__ import annotations

import copy
import hmac
import os
from typing import Callable

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import vault
from .device_secret import NO_DEVICE_SECRET, DeviceSecret
from .iso7816 import SW, ApduError, verify_failed
from .storage import StorageError, b64d, b64e

#: scrypt cost for new hashes (n=2^14, r=8: 16 MiB, ~40 ms on a 2020 x86 core,
#: a few hundred ms on a Cortex-A7).  Stored per hash, so changing it only
#: affects hashes made afterwards.  Tests lower it.
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_LEN = 16
HASH_LEN = 32

PIV_PIN_MIN = 6
PIV_PIN_MAX = 8
PIV_PAD = 0xFF
MAX_TRIES_LIMIT = 15       # 63Cx can report at most 15 (ISO 7816-4 §5.6)

Persist = Callable[[], None]


def piv_pad(value: bytes | str) -> bytes:
    """Return the 8-byte FF-padded PIV form of a 6–8 byte PIN/PUK; ValueError if invalid."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not PIV_PIN_MIN <= len(raw) <= PIV_PIN_MAX:
        raise ValueError(f"a PIV PIN/PUK is {PIV_PIN_MIN} to {PIV_PIN_MAX} bytes")
    if PIV_PAD in raw:
        raise ValueError("a PIV PIN/PUK cannot contain the padding byte FF")
    return raw + bytes([PIV_PAD]) * (PIV_PIN_MAX - len(raw))


def piv_check_padded(block: bytes) -> bytes:
    """Validate an 8-byte FF-padded block from the host; ApduError 6A80 if malformed."""
    if len(block) != PIV_PIN_MAX:
        raise ApduError(SW.WRONG_DATA, "PIN block is not 8 bytes")
    stripped = block.rstrip(bytes([PIV_PAD]))
    if len(stripped) < PIV_PIN_MIN or PIV_PAD in stripped:
        raise ApduError(SW.WRONG_DATA, "PIN block has a bad length or padding")
    return block


def _kdf(value: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=HASH_LEN, n=n, r=r, p=p).derive(value)


def default_kdf() -> dict:
    return {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}


class PinSlot:
    """One piece of reference data (PIN, PUK...) with its retry counter and its wrap of the data key.

    `value` given to `set()` / `verify()` is the exact byte string the card
    compares (for PIV: the 8-byte padded block).  `length` is the length of
    the reference data: the OpenPGP card needs it to split CHANGE REFERENCE
    DATA's "old ‖ new" (OpenPGP card 3.4 §7.2.3), so it is kept beside the verifier.

    Format 2 (cards/vault.py): one scrypt call gives S; ``vault.pin_keys(device, S)``
    gives the *verifier* (stored, compared with `hmac.compare_digest`) and the
    key-encryption key that opens `wrap`, the card's data key sealed with
    AES-GCM.  `verify()` returns that data key, so a VERIFY costs one KDF.
    A slot read from format 1 (`legacy`) holds S itself as its hash; `upgrade()`
    turns it into a verifier and a wrap without knowing the PIN, and S is gone.
    """

    def __init__(self, *, max_tries: int, tries_left: int, salt: bytes, digest: bytes,
                 kdf: dict | None = None, is_default: bool = False, wrap: dict | None = None,
                 legacy: bool = False, device: DeviceSecret = NO_DEVICE_SECRET, aad: bytes = b"",
                 length: int | None = None) -> None:
        if not 1 <= max_tries <= MAX_TRIES_LIMIT:
            raise ValueError(f"max tries must be 1..{MAX_TRIES_LIMIT}")
        self.max_tries = max_tries
        self.tries_left = max(0, min(tries_left, max_tries))
        self._salt = salt
        self._digest = digest            # the verifier (format 2) or scrypt's output (format 1)
        self._kdf = dict(kdf or default_kdf())
        self.is_default = is_default
        self.wrap = wrap
        self.legacy = legacy
        #: Device secret mixed into the derivation, and the AES-GCM associated data of the wrap.
        self.device = device
        self.aad = aad
        self._pending_kek: bytes | None = None   # from the last set(), until a data key is wrapped
        #: scrypt cost for the next set() (the configured [vault] cost); None: SCRYPT_N/R/P.
        self.next_kdf: dict | None = None
        self.length = length

    # -- construction -------------------------------------------------------
    @classmethod
    def new(cls, value: bytes, *, max_tries: int = 3, is_default: bool = False,
            device: DeviceSecret = NO_DEVICE_SECRET, aad: bytes = b"", dek: bytes | None = None,
            kdf: dict | None = None) -> "PinSlot":
        slot = cls(max_tries=max_tries, tries_left=max_tries, salt=b"", digest=b"", device=device, aad=aad)
        slot.set(value, is_default=is_default, dek=dek, kdf=kdf)
        return slot

    def set(self, value: bytes, *, is_default: bool = False, dek: bytes | None = None,
            kdf: dict | None = None) -> None:
        """Replace the reference data and reset the counter (caller persists).

        With `dek` the data key is wrapped under the new value at once; without,
        the key-encryption key is kept until `wrap_data_key()` (one KDF either way).
        """
        self._kdf = dict(kdf or self.next_kdf or default_kdf())
        self._salt = os.urandom(SALT_LEN)
        verifier, kek = self._keys(value)
        self._digest = verifier
        self.legacy = False
        self.wrap = None
        self._pending_kek = kek
        if dek is not None:
            self.wrap_data_key(dek)
        self.tries_left = self.max_tries
        self.is_default = is_default
        self.length = len(value)

    def wrap_data_key(self, dek: bytes) -> None:
        """Wrap `dek` under the key derived by the last `set()`."""
        if self._pending_kek is None:
            raise ValueError("no key-encryption key at hand: set() the value first")
        self.wrap = vault.wrap_data_key(self._pending_kek, dek, self.aad)
        self._pending_kek = None

    def upgrade(self, dek: bytes) -> None:
        """Format 1 -> 2: the stored scrypt output becomes a verifier and a wrap of `dek`."""
        if not self.legacy:
            raise ValueError("not a format 1 PIN record")
        verifier, kek = vault.pin_keys(self.device, self._digest)
        self._digest = verifier
        self.wrap = vault.wrap_data_key(kek, dek, self.aad)
        self.legacy = False

    def copy(self) -> "PinSlot":
        return copy.copy(self)

    def _scrypt(self, value: bytes) -> bytes:
        k = self._kdf
        return _kdf(bytes(value), self._salt, k["n"], k["r"], k["p"])

    def _keys(self, value: bytes) -> tuple[bytes, bytes | None]:
        """(what is compared with the stored digest, the KEK or None): one KDF call."""
        s = self._scrypt(value)
        if self.legacy:
            return s, None
        return vault.pin_keys(self.device, s)

    # -- state --------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        return self.tries_left == 0

    def matches(self, value: bytes) -> bool:
        """Constant-time comparison without touching the counter (offline tools only)."""
        return hmac.compare_digest(self._keys(value)[0], self._digest)

    def set_max_tries(self, max_tries: int) -> None:
        """Change the maximum and reset the counter to it (caller persists)."""
        if not 1 <= max_tries <= MAX_TRIES_LIMIT:
            raise ValueError(f"max tries must be 1..{MAX_TRIES_LIMIT}")
        self.max_tries = max_tries
        self.tries_left = max_tries

    def status_error(self) -> ApduError | None:
        """None when tries remain; 6983 when blocked (for an empty VERIFY)."""
        return ApduError(SW.AUTH_METHOD_BLOCKED) if self.blocked else None

    # -- verification -------------------------------------------------------
    def verify(self, candidate: bytes, persist: Persist, what: str = "PIN") -> bytes | None:
        """Check `candidate`; return the unwrapped data key (None if this slot wraps none).

        Order (tearing-safe): refuse if blocked; decrement and `persist()`;
        derive (one KDF) and compare in constant time; on a match open the
        wrap, restore the counter and `persist()` again.  A StorageError from
        the first persist restores the in-memory counter and propagates (no
        comparison was made); from the second, the in-memory counter stays at
        the durable, decremented value and the error propagates.  A wrap that
        does not open after the verifier matched is an IntegrityError (the
        counter stays decremented): the record was tampered with.
        """
        if self.blocked:
            raise ApduError(SW.AUTH_METHOD_BLOCKED)
        before = self.tries_left
        self.tries_left = before - 1
        try:
            persist()
        except StorageError:
            self.tries_left = before
            raise
        compared, kek = self._keys(candidate)
        if hmac.compare_digest(compared, self._digest):
            dek = None
            if self.wrap is not None:
                dek = vault.unwrap_data_key(kek, self.wrap, self.aad, what)
            if self.tries_left != self.max_tries:
                self.tries_left = self.max_tries
                try:
                    persist()
                except StorageError:
                    self.tries_left = before - 1
                    raise
            return dek
        # The failure that uses the last try answers 63C0 (as YubiKeys do);
        # later attempts get 6983.
        raise verify_failed(self.tries_left)

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        if self.legacy:
            # Saving scrypt's output next to sealed keys would hand out the key that opens them.
            raise StorageError("a format 1 PIN record must be upgraded before it is saved")
        d = {"kdf": dict(self._kdf), "salt": b64e(self._salt), "verifier": b64e(self._digest),
             "tries_left": self.tries_left, "max_tries": self.max_tries, "is_default": self.is_default}
        if self.wrap is not None:
            d["wrap"] = dict(self.wrap)
        if self.length is not None:
            d["length"] = self.length
        return d

    @classmethod
    def from_dict(cls, d: dict, *, device: DeviceSecret = NO_DEVICE_SECRET, aad: bytes = b"") -> "PinSlot":
        """A format 2 record ("verifier", "wrap") or a format 1 one ("hash": a legacy slot)."""
        try:
            kdf = d["kdf"]
            if kdf.get("name") != "scrypt":
                raise StorageError(f"unknown PIN hash {kdf.get('name')!r}")
            legacy = "verifier" not in d
            wrap = d.get("wrap")
            if wrap is not None and not isinstance(wrap, dict):
                raise StorageError("malformed PIN record: wrap is not an object")
            return cls(max_tries=int(d["max_tries"]), tries_left=int(d["tries_left"]),
                       salt=b64d(d["salt"]), digest=b64d(d["hash"] if legacy else d["verifier"]),
                       kdf={"name": "scrypt", "n": int(kdf["n"]), "r": int(kdf["r"]), "p": int(kdf["p"])},
                       is_default=bool(d.get("is_default", False)), wrap=None if legacy else wrap,
                       legacy=legacy, device=device, aad=aad,
                       length=int(d["length"]) if "length" in d else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StorageError(f"malformed PIN record: {e!r}") from None
