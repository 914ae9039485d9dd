"""PIN and PUK reference data with retry counters, shared by every emulated card.

A `PinSlot` stores a salted scrypt hash of the reference data (never the PIN
itself), the tries left and the maximum.  `verify()` follows the rule smart
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


class PinSlot:
    """One piece of reference data (PIN, PUK...) with its retry counter.

    `value` given to `set()` / `verify()` is the exact byte string the card
    compares (for PIV: the 8-byte padded block).  `length` is the length of
    the reference data: the OpenPGP card needs it to split CHANGE REFERENCE
    DATA's "old ‖ new" (OpenPGP card 3.4 §7.2.3), so it is kept beside the hash.
    """

    def __init__(self, *, max_tries: int, tries_left: int, salt: bytes, digest: bytes,
                 kdf: dict | None = None, is_default: bool = False, length: int | None = None) -> None:
        if not 1 <= max_tries <= MAX_TRIES_LIMIT:
            raise ValueError(f"max tries must be 1..{MAX_TRIES_LIMIT}")
        self.max_tries = max_tries
        self.tries_left = max(0, min(tries_left, max_tries))
        self._salt = salt
        self._digest = digest
        self._kdf = dict(kdf or {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P})
        self.is_default = is_default
        self.length = length

    # -- construction -------------------------------------------------------
    @classmethod
    def new(cls, value: bytes, *, max_tries: int = 3, is_default: bool = False) -> "PinSlot":
        slot = cls(max_tries=max_tries, tries_left=max_tries, salt=b"", digest=b"")
        slot.set(value, is_default=is_default)
        return slot

    def set(self, value: bytes, *, is_default: bool = False) -> None:
        """Replace the reference data and reset the counter (caller persists)."""
        self._kdf = {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
        self._salt = os.urandom(SALT_LEN)
        self._digest = self._hash(value)
        self.tries_left = self.max_tries
        self.is_default = is_default
        self.length = len(value)

    def copy(self) -> "PinSlot":
        return copy.copy(self)

    def _hash(self, value: bytes) -> bytes:
        k = self._kdf
        return _kdf(bytes(value), self._salt, k["n"], k["r"], k["p"])

    # -- state --------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        return self.tries_left == 0

    def matches(self, value: bytes) -> bool:
        """Constant-time comparison without touching the counter (offline tools only)."""
        return hmac.compare_digest(self._hash(value), self._digest)

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
    def verify(self, candidate: bytes, persist: Persist) -> None:
        """Check `candidate`; return on success, raise ApduError 63Cx / 6983 otherwise.

        Order (tearing-safe): refuse if blocked; decrement and `persist()`;
        compare in constant time; on a match restore the counter and
        `persist()` again.  A StorageError from the first persist restores
        the in-memory counter and propagates (no comparison was made); from
        the second, the in-memory counter stays at the durable, decremented
        value and the error propagates.
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
        if hmac.compare_digest(self._hash(candidate), self._digest):
            if self.tries_left != self.max_tries:
                self.tries_left = self.max_tries
                try:
                    persist()
                except StorageError:
                    self.tries_left = before - 1
                    raise
            return
        # The failure that uses the last try answers 63C0 (as YubiKeys do);
        # later attempts get 6983.
        raise verify_failed(self.tries_left)

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"kdf": dict(self._kdf), "salt": b64e(self._salt), "hash": b64e(self._digest),
             "tries_left": self.tries_left, "max_tries": self.max_tries, "is_default": self.is_default}
        if self.length is not None:
            d["length"] = self.length
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PinSlot":
        try:
            kdf = d["kdf"]
            if kdf.get("name") != "scrypt":
                raise StorageError(f"unknown PIN hash {kdf.get('name')!r}")
            return cls(max_tries=int(d["max_tries"]), tries_left=int(d["tries_left"]),
                       salt=b64d(d["salt"]), digest=b64d(d["hash"]),
                       kdf={"name": "scrypt", "n": int(kdf["n"]), "r": int(kdf["r"]), "p": int(kdf["p"])},
                       is_default=bool(d.get("is_default", False)),
                       length=int(d["length"]) if "length" in d else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StorageError(f"malformed PIN record: {e!r}") from None
