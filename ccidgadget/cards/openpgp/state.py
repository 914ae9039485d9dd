# SPDX-License-Identifier: GPL-3.0-or-later
"""The persistent state of an OpenPGP card and its JSON form (docs/card-state-format.md, format 2).

As with PIV, a command that changes the card clones the state, changes the clone, saves it and
only then makes it current, so a failed save leaves the card as it was; PIN counters are the
exception the PIN rules demand (`PinSlot.verify` makes its decrement durable before comparing).

Keys at rest (cards/vault.py), as PIV and CAC keep them: the card's random data key is wrapped
under PW1, PW3 and the resetting code (one scrypt per VERIFY; with the KDF-DO on, the hashes
GnuPG sends are the secrets).  Private keys are sealed to the card's sealing key, whose private
half is under the data key, with the key's identity as associated data (`key_label`: slot,
algorithm attributes, fingerprint, origin), so GENERATE, key import and the offline tools seal
new keys without holding the data key; the PW1/PW3-protected private DOs 0103/0104 are sealed the
same way.  Private keys are turned into stored records in exactly one place,
`KeyEntry.to_record` / `KeyEntry.from_record`.

A state without a vault section (written before keys at rest reached the OpenPGP card: keys as
PKCS#8 PEM) is converted by `from_dict` (`migrated` is then True, the caller saves it): keys
and protected DOs are sealed at once.  PIN records of format 1 hold scrypt's output and get
their wrap at once too; records written by the OpenPGP card before it had a data key hold a
verifier, from which no key can be derived without the PW itself.  Those get their wrap at the
first VERIFY of that PW (`adopt_reference`); until every PW has one, the data key is also kept
sealed to the device key (`interim_data_key`, docs/card-state-format.md "Migration").
"""

from __future__ import annotations

import datetime
import functools
import secrets
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import serialization

from ..device_secret import NO_DEVICE_SECRET, DeviceSecret
from ..keys import CardKey, KeyLoadError, SealedKey, public_key_der
from ..pin import PinSlot
from ..storage import StorageError, b64d, b64e
from ..vault import CardVault, KdfParams, VaultSession
from .attributes import DEFAULT_ATTRIBUTES, KeyAttributes
from .constants import (DEFAULT_PW1, DEFAULT_PW3, DEFAULT_TRIES, KEY, KEY_STATUS, MANUFACTURER, OPENPGP_RID_APP,
                        PW1_MIN_LENGTH, PW3_MIN_LENGTH, PW_MAX_LENGTH, TAG, UIF, VERSION)

STATE_TYPE = "openpgp"
#: "81 01 00": no KDF (§4.3.2), the value of F9 on a fresh card.
KDF_NONE = bytes.fromhex("810100")
PRIVATE_DOS = (TAG.PRIVATE_USE_1, TAG.PRIVATE_USE_2, TAG.PRIVATE_USE_3, TAG.PRIVATE_USE_4)
#: Private DOs read only after PW1 (0103) or PW3 (0104) (§4.4.1): sealed to the card key.
PROTECTED_PRIVATE_DOS = (TAG.PRIVATE_USE_3, TAG.PRIVATE_USE_4)
#: Associated data of the PW records' wraps (cards/vault.py labels).
PW_LABELS = {"pw1": "openpgp/pw1", "pw3": "openpgp/pw3", "rc": "openpgp/rc"}
INTERIM_LABEL = "openpgp/interim-data-key"


class KeyEntry(SealedKey):
    """A private key in one of the three slots and how it got there (DE), sealed at rest.

    `key` is the `CardKey` while the private key is open in memory (just generated or imported,
    or opened with the data key after a VERIFY), otherwise a `LockedCardKey` with the public half,
    which is all GET DATA / GENERATE 81 need.  The sealed record is made once per label and kept,
    so repeated saves write the same bytes.
    """

    __slots__ = ("status", "_label", "_public_b64")

    def __init__(self, key: CardKey | None, status: KEY_STATUS, *, sealed: dict | None = None,
                 label: str | None = None, public_key=None) -> None:
        self.status = KEY_STATUS(status)
        self._label = label                  # what `_sealed` was sealed under
        self._public_b64: tuple | None = None   # (public key, its SubjectPublicKeyInfo in base64)
        super().__init__(key, sealed, public_key)

    def __repr__(self) -> str:
        return f"KeyEntry({self.algorithm.name}, {self.status.name}, {'open' if self._clear else 'sealed'})"

    def private(self, vault: CardVault, session: VaultSession | None, label: str) -> CardKey:
        """The private key; PermissionError while the card is locked, StorageError if it does not open."""
        if self._clear is None:
            self._clear = vault.open_private_key(self._sealed, label, session, self.public_key, self.algorithm)
        return self._clear

    def reopened(self, vault: CardVault, session: VaultSession | None, label: str) -> "KeyEntry":
        """The same key, open and not yet sealed: for a state in which its identity changes."""
        return KeyEntry(self.private(vault, session, label), self.status)

    def forget(self) -> None:
        """Drop the open private key (the card locks); a key not sealed yet stays."""
        if self._sealed is not None:
            self._clear = None

    # -- the stored form: the ONE place a private key is serialised -----------------------------
    def to_record(self, vault: CardVault, label: str) -> dict:
        if self._sealed is None or self._label != label:
            if self._clear is None:
                raise StorageError(f"key {label}: its identity changed while the card was locked")
            self._sealed, self._label = vault.seal(self._clear.to_der(), label), label
        # every save (two per VERIFY) writes every key: its public key is encoded once
        cached = self._public_b64
        if cached is None or cached[0] is not self.public_key:
            cached = self._public_b64 = (self.public_key, b64e(public_key_der(self.public_key)))
        return {"algorithm": self.algorithm.name, "public": cached[1],
                "sealed": dict(self._sealed), "status": self.status.name}

    @classmethod
    def from_record(cls, d: dict, label: str | None) -> "KeyEntry":
        """Inverse of `to_record`; with `label` None a record without a vault (PKCS#8 PEM, to convert)."""
        try:
            status = KEY_STATUS[d["status"]]
            if status == KEY_STATUS.NOT_PRESENT:
                raise StorageError("a stored key cannot be 'not present'")
            if label is None:
                entry = cls(CardKey.from_pem(d["pem"]), status)
                what = "PEM"
            else:
                sealed = dict(d["sealed"])
                if not CardVault.needs_pin(sealed):
                    raise StorageError(f"key {label} is not sealed to the card key")
                entry = cls(None, status, sealed=sealed, label=label,
                            public_key=serialization.load_der_public_key(b64d(d["public"])))
                what = "public key"
            if entry.algorithm.name != d["algorithm"]:
                raise StorageError(f"stored key algorithm does not match its {what}")
            return entry
        except (KeyError, TypeError, ValueError, AttributeError, KeyLoadError) as e:
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"malformed key record: {e!r}") from None


def new_serial() -> int:
    """A random 4-byte serial number, never all zeros or all ones."""
    while True:
        serial = secrets.randbits(32)
        if serial not in (0, 0xFFFFFFFF):
            return serial


@dataclass
class OpenPgpState:
    serial: int
    pw1: PinSlot
    pw3: PinSlot
    vault: CardVault
    rc: PinSlot | None = None                       # resetting code; None = not set (counter 0)
    manufacturer: int = MANUFACTURER
    pw1_valid_for_several: bool = True              # C4 byte 1 (§4.4.3.4)
    kdf: bytes = KDF_NONE                            # F9 as written
    attributes: dict[KEY, KeyAttributes] = field(default_factory=lambda: {k: DEFAULT_ATTRIBUTES for k in KEY})
    keys: dict[KEY, KeyEntry] = field(default_factory=dict)
    fingerprints: dict[KEY, bytes] = field(default_factory=dict)
    ca_fingerprints: dict[int, bytes] = field(default_factory=dict)   # 1..3 (CA..CC)
    generation_times: dict[KEY, int] = field(default_factory=dict)
    uif: dict[KEY, UIF] = field(default_factory=dict)
    certificates: dict[KEY, bytes] = field(default_factory=dict)
    private_dos: dict[int, bytes] = field(default_factory=dict)        # 0101, 0102 (readable by anyone)
    sealed_private_dos: dict[int, dict] = field(default_factory=dict)  # 0103, 0104 sealed to the card key
    name: bytes = b""
    language: bytes = b""
    salutation: bytes = b""
    url: bytes = b""
    login: bytes = b""
    signature_counter: int = 0
    terminated: bool = False
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))
    #: A converted card whose PW records do not all wrap the data key yet: the data key sealed to the device key.
    interim_data_key: dict | None = None
    #: scrypt cost of new PW wraps ([vault] kdf_*; None: pin.SCRYPT_N/R/P); not stored.
    kdf_cost: KdfParams | None = field(default=None, compare=False)
    #: True when `from_dict` converted a state without a vault (the caller saves it).
    migrated: bool = field(default=False, compare=False)

    def clone(self) -> "OpenPgpState":
        return replace(self, pw1=self.pw1.copy(), pw3=self.pw3.copy(), rc=self.rc.copy() if self.rc else None,
                       attributes=dict(self.attributes), keys=dict(self.keys), fingerprints=dict(self.fingerprints),
                       ca_fingerprints=dict(self.ca_fingerprints), generation_times=dict(self.generation_times),
                       uif=dict(self.uif), certificates=dict(self.certificates), private_dos=dict(self.private_dos),
                       sealed_private_dos=dict(self.sealed_private_dos), migrated=False)

    # -- construction -------------------------------------------------------
    @classmethod
    def new(cls, *, pw1: str | bytes = DEFAULT_PW1, pw3: str | bytes = DEFAULT_PW3, serial: int | None = None,
            tries: int = DEFAULT_TRIES, device: DeviceSecret = NO_DEVICE_SECRET,
            kdf_cost: KdfParams | None = None) -> "OpenPgpState":
        """A card as it leaves the factory (or ACTIVATE FILE after TERMINATE DF): a new vault, its data
        key wrapped under PW1 and PW3 and then forgotten."""
        if serial is None:
            serial = new_serial()
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError("serial must fit in 4 bytes")
        b1, b3 = _pw_bytes(pw1, PW1_MIN_LENGTH), _pw_bytes(pw3, PW3_MIN_LENGTH)
        vault, dek = CardVault.new(device)
        state = cls(serial=serial, vault=vault, kdf_cost=kdf_cost,
                    pw1=_new_reference(vault, kdf_cost, "pw1", b1, dek, tries, b1 == DEFAULT_PW1.encode()),
                    pw3=_new_reference(vault, kdf_cost, "pw3", b3, dek, tries, b3 == DEFAULT_PW3.encode()))
        del dek
        return state

    def set_reference(self, which: str, value: bytes, dek: bytes, *, is_default: bool = False,
                      max_tries: int | None = None) -> None:
        """New reference data for PW "pw1", "pw3" or "rc", wrapping the data key `dek` (the rest of the
        file is not encrypted again); the retry counter starts full."""
        old = getattr(self, which) or self.pw1            # a new resetting code counts as PW1 does
        tries = max_tries if max_tries is not None else old.max_tries
        setattr(self, which, _new_reference(self.vault, self.kdf_cost, which, value, dek, tries, is_default))

    def factory_reset(self) -> "OpenPgpState":
        """Everything back to the defaults, with a new vault; the card keeps its serial number (§7.2.16/17)."""
        return OpenPgpState.new(serial=self.serial, device=self.vault.device, kdf_cost=self.kdf_cost)

    @property
    def aid(self) -> bytes:
        return (OPENPGP_RID_APP + bytes(VERSION) + self.manufacturer.to_bytes(2, "big")
                + self.serial.to_bytes(4, "big") + b"\x00\x00")

    def key_status(self, key: KEY) -> KEY_STATUS:
        entry = self.keys.get(key)
        return entry.status if entry else KEY_STATUS.NOT_PRESENT

    def forget_key(self, key: KEY) -> None:
        """Remove a key and what described it (attributes change, a new key replaces it)."""
        self.keys.pop(key, None)
        self.fingerprints.pop(key, None)
        self.generation_times.pop(key, None)
        if key == KEY.SIG:
            self.signature_counter = 0

    # -- keys and DOs at rest -----------------------------------------------------
    def key_label(self, key: KEY) -> str:
        return key_label(key, self.attributes[key], self.fingerprints.get(key), self.key_status(key))

    def private_key(self, key: KEY, session: VaultSession | None) -> CardKey:
        """The private key of a slot (KeyError if none; PermissionError while locked)."""
        return self.keys[key].private(self.vault, session, self.key_label(key))

    def set_fingerprint(self, key: KEY, value: bytes | None, session: VaultSession | None) -> None:
        """C7-C9: the key of that slot (if any) is sealed again under its new identity."""
        entry = self.keys.get(key)
        if entry is not None:
            self.keys[key] = entry.reopened(self.vault, session, self.key_label(key))
        if value:
            self.fingerprints[key] = bytes(value)
        else:
            self.fingerprints.pop(key, None)

    @staticmethod
    def private_do_label(tag: int) -> str:
        return f"openpgp/do/{tag:04X}"

    def put_private_do(self, tag: int, value: bytes) -> bool:
        """Store (or with empty `value` delete) a private DO; False if nothing changed."""
        table = self.sealed_private_dos if tag in PROTECTED_PRIVATE_DOS else self.private_dos
        if not value:
            return table.pop(tag, None) is not None
        table[tag] = (self.vault.seal(bytes(value), self.private_do_label(tag)) if tag in PROTECTED_PRIVATE_DOS
                      else bytes(value))
        return True

    def private_do(self, tag: int, session: VaultSession | None) -> bytes:
        if tag in self.sealed_private_dos:
            return self.vault.open(self.sealed_private_dos[tag], self.private_do_label(tag), session)
        return self.private_dos.get(tag, b"")

    # -- a converted card's PW records ---------------------------------------------
    def references(self) -> dict[str, PinSlot]:
        return {name: slot for name, slot in (("pw1", self.pw1), ("pw3", self.pw3), ("rc", self.rc))
                if slot is not None}

    def unwrapped_references(self) -> list[str]:
        """The PW records that do not wrap the data key yet (a converted card before their first VERIFY)."""
        return [name for name, slot in self.references().items() if slot.wrap is None]

    def finish_conversion(self) -> None:
        """Once every PW record wraps the data key, its interim seal goes."""
        if self.interim_data_key is not None and not self.unwrapped_references():
            self.interim_data_key = None

    def adopt_reference(self, which: str, value: bytes) -> tuple["OpenPgpState", bytes]:
        """After `value` matched the PW `which` whose record has no wrap yet: the data key (from its interim
        seal) and a clone in which that record wraps it (a new salt: a second scrypt, once per PW)."""
        if self.interim_data_key is None:
            raise StorageError(f"the {which.upper()} record wraps no data key and none is at hand")
        dek = self.vault.open(self.interim_data_key, INTERIM_LABEL)
        new = self.clone()
        new.set_reference(which, value, dek, is_default=getattr(self, which).is_default)
        new.finish_conversion()
        return new, dek

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "type": STATE_TYPE,
            "created": self.created,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "vault": self.vault.to_dict(),
            "pw1": self.pw1.to_dict(),
            "pw3": self.pw3.to_dict(),
            "rc": self.rc.to_dict() if self.rc else None,
            "pw1_valid_for_several": self.pw1_valid_for_several,
            "kdf": b64e(self.kdf),
            "attributes": {k.name: b64e(a.encode()) for k, a in sorted(self.attributes.items())},
            "keys": {k.name: e.to_record(self.vault, self.key_label(k)) for k, e in sorted(self.keys.items())},
            "fingerprints": {k.name: b64e(v) for k, v in sorted(self.fingerprints.items())},
            "ca_fingerprints": {str(i): b64e(v) for i, v in sorted(self.ca_fingerprints.items())},
            "generation_times": {k.name: t for k, t in sorted(self.generation_times.items())},
            "uif": {k.name: u.name for k, u in sorted(self.uif.items())},
            "certificates": {k.name: b64e(v) for k, v in sorted(self.certificates.items())},
            "private_dos": {f"{t:04X}": b64e(v) for t, v in sorted(self.private_dos.items())},
            "sealed_private_dos": {f"{t:04X}": dict(v) for t, v in sorted(self.sealed_private_dos.items())},
            "name": b64e(self.name), "language": b64e(self.language), "salutation": b64e(self.salutation),
            "url": b64e(self.url), "login": b64e(self.login),
            "signature_counter": self.signature_counter,
            "terminated": self.terminated,
        }
        if self.interim_data_key is not None:
            d["interim_data_key"] = dict(self.interim_data_key)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, device: DeviceSecret = NO_DEVICE_SECRET,
                  kdf_cost: KdfParams | None = None) -> "OpenPgpState":
        """Read format 2, or convert a state without a vault (``migrated`` set; nothing is saved here)."""
        if d.get("type") != STATE_TYPE:
            raise StorageError(f"card state is of type {d.get('type')!r}, not an OpenPGP card")
        converting = "vault" not in d
        try:
            if converting:
                vault, dek = CardVault.new(device)
            else:
                vault, dek = CardVault.from_dict(d["vault"], device), None
            attributes = {KEY[k]: KeyAttributes.parse(b64d(v), KEY[k]) for k, v in d["attributes"].items()}
            fingerprints = {KEY[k]: b64d(v) for k, v in d["fingerprints"].items()}
            state = cls(
                serial=int(d["serial"]), manufacturer=int(d["manufacturer"]), vault=vault,
                pw1=_reference(d["pw1"], vault, "pw1", dek), pw3=_reference(d["pw3"], vault, "pw3", dek),
                rc=_reference(d["rc"], vault, "rc", dek) if d["rc"] is not None else None,
                pw1_valid_for_several=bool(d["pw1_valid_for_several"]), kdf=b64d(d["kdf"]),
                attributes=attributes, fingerprints=fingerprints,
                ca_fingerprints={int(i): b64d(v) for i, v in d["ca_fingerprints"].items()},
                generation_times={KEY[k]: int(t) for k, t in d["generation_times"].items()},
                uif={KEY[k]: UIF[u] for k, u in d["uif"].items()},
                certificates={KEY[k]: b64d(v) for k, v in d["certificates"].items()},
                name=b64d(d["name"]), language=b64d(d["language"]), salutation=b64d(d["salutation"]),
                url=b64d(d["url"]), login=b64d(d["login"]),
                signature_counter=int(d["signature_counter"]), terminated=bool(d["terminated"]),
                created=str(d.get("created", "")), kdf_cost=kdf_cost, migrated=converting)
            if set(state.attributes) != set(KEY):
                raise StorageError("malformed OpenPGP card state: attributes of every key are needed")
            for name, record in d["keys"].items():
                k = KEY[name]
                label = None if converting else key_label(k, attributes[k], fingerprints.get(k),
                                                          KEY_STATUS[record["status"]])
                entry = KeyEntry.from_record(record, label)
                if entry.algorithm != attributes[k].key_algorithm:
                    raise StorageError(f"the {k.name} key does not match its algorithm attributes")
                state.keys[k] = entry
            for t, v in d["private_dos"].items():
                tag = int(t, 16)
                if tag not in PRIVATE_DOS or (not converting and tag in PROTECTED_PRIVATE_DOS):
                    raise StorageError(f"unexpected private DO {t}")
                state.put_private_do(tag, b64d(v))
            for t, v in ({} if converting else d.get("sealed_private_dos", {})).items():
                tag = int(t, 16)
                if tag not in PROTECTED_PRIVATE_DOS or not isinstance(v, dict) or not CardVault.needs_pin(v):
                    raise StorageError(f"unexpected sealed private DO {t}")
                state.sealed_private_dos[tag] = dict(v)
            if converting:
                if state.unwrapped_references():
                    state.interim_data_key = vault.seal(dek, INTERIM_LABEL, without_pin=True)
            else:
                interim = d.get("interim_data_key")
                if interim is not None and (not isinstance(interim, dict) or CardVault.needs_pin(interim)):
                    raise StorageError("malformed interim data key record")
                state.interim_data_key = dict(interim) if interim is not None else None
                if state.unwrapped_references() and state.interim_data_key is None:
                    raise StorageError("malformed OpenPGP card state: a PW record without its data key wrap")
        except StorageError:
            raise
        except Exception as e:   # KeyError, ValueError, ApduError from a damaged attribute...
            raise StorageError(f"malformed OpenPGP card state: {e!r}") from None
        del dek
        return state


@functools.lru_cache(maxsize=256)   # pure, and made for every key at every state save
def key_label(key: KEY, attributes: KeyAttributes, fingerprint: bytes | None, status: KEY_STATUS) -> str:
    """The identity a key is sealed with (associated data): slot, algorithm attributes, fingerprint
    (C7-C9, zeros while none is written) and origin (DE).  Any of them changed in the file and the
    key no longer opens."""
    return (f"openpgp/key/{key.name};{attributes.encode().hex().upper()};"
            f"{(fingerprint or bytes(20)).hex().upper()};{KEY_STATUS(status).name}")


def _new_reference(vault: CardVault, kdf_cost: KdfParams | None, which: str, value: bytes, dek: bytes,
                   max_tries: int, is_default: bool) -> PinSlot:
    kdf = kdf_cost.to_dict() if kdf_cost is not None else None
    slot = PinSlot.new(value, max_tries=max_tries, is_default=is_default, device=vault.device,
                       aad=vault.aad(PW_LABELS[which]), dek=dek, kdf=kdf)
    slot.next_kdf = kdf
    return slot


def _reference(d: dict, vault: CardVault, which: str, dek: bytes | None) -> PinSlot:
    """A PW record of a format 2 state (`dek` None) or of a state being converted (`dek`: its new data key)."""
    aad = vault.aad(PW_LABELS[which])
    slot = PinSlot.from_dict(d, device=vault.device, aad=aad)
    if slot.legacy:
        if dek is None:
            raise StorageError(f"malformed OpenPGP card state: a format 1 {which.upper()} record in format 2")
        slot.upgrade(dek)                     # format 1: scrypt's output is at hand, no PW needed
    elif slot.wrap is None:
        # Written before the card had a data key: the verifier was derived without a device secret, and the
        # record gets its wrap at the first VERIFY of this PW (adopt_reference).
        slot = PinSlot.from_dict(d, device=NO_DEVICE_SECRET, aad=aad)
    return slot


def _pw_bytes(value: str | bytes, minimum: int) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not minimum <= len(raw) <= PW_MAX_LENGTH:
        raise ValueError(f"a PIN of this kind is {minimum} to {PW_MAX_LENGTH} bytes")
    return raw
