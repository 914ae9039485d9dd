# SPDX-License-Identifier: GPL-3.0-or-later
"""The persistent state of an OpenPGP card and its JSON form (docs/card-state-format.md).

As with PIV, a command that changes the card clones the state, changes the clone, saves it and
only then makes it current, so a failed save leaves the card as it was; PIN counters are the
exception the PIN rules demand (`PinSlot.verify` makes its decrement durable before comparing).

Private keys are turned into stored records in exactly one place, `key_to_record` /
`key_from_record`, so that encryption of keys at rest can wrap them there.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass, field, replace

from ..keys import CardKey, KeyLoadError
from ..pin import PinSlot
from ..storage import StorageError, b64d, b64e
from .attributes import DEFAULT_ATTRIBUTES, KeyAttributes
from .constants import (DEFAULT_PW1, DEFAULT_PW3, DEFAULT_TRIES, KEY, KEY_STATUS, MANUFACTURER, OPENPGP_RID_APP,
                        PW1_MIN_LENGTH, PW3_MIN_LENGTH, PW_MAX_LENGTH, TAG, UIF, VERSION)

STATE_TYPE = "openpgp"
#: "81 01 00": no KDF (§4.3.2), the value of F9 on a fresh card.
KDF_NONE = bytes.fromhex("810100")
PRIVATE_DOS = (TAG.PRIVATE_USE_1, TAG.PRIVATE_USE_2, TAG.PRIVATE_USE_3, TAG.PRIVATE_USE_4)


@dataclass(frozen=True)
class KeyEntry:
    """A private key in one of the three slots, and how it got there (DE)."""

    key: CardKey
    status: KEY_STATUS


def key_to_record(entry: KeyEntry) -> dict:
    """The stored form of a private key: the ONE place a private key is serialised."""
    return {"algorithm": entry.key.algorithm.name, "pem": entry.key.to_pem().decode("ascii"),
            "status": entry.status.name}


def key_from_record(d: dict) -> KeyEntry:
    """Inverse of `key_to_record`; StorageError if the record is damaged."""
    try:
        key = CardKey.from_pem(d["pem"])
        if key.algorithm.name != d["algorithm"]:
            raise StorageError("stored key algorithm does not match its PEM")
        status = KEY_STATUS[d["status"]]
        if status == KEY_STATUS.NOT_PRESENT:
            raise StorageError("a stored key cannot be 'not present'")
        return KeyEntry(key, status)
    except (KeyError, TypeError, AttributeError, KeyLoadError) as e:
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
    private_dos: dict[int, bytes] = field(default_factory=dict)
    name: bytes = b""
    language: bytes = b""
    salutation: bytes = b""
    url: bytes = b""
    login: bytes = b""
    signature_counter: int = 0
    terminated: bool = False
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))

    def clone(self) -> "OpenPgpState":
        return replace(self, pw1=self.pw1.copy(), pw3=self.pw3.copy(), rc=self.rc.copy() if self.rc else None,
                       attributes=dict(self.attributes), keys=dict(self.keys), fingerprints=dict(self.fingerprints),
                       ca_fingerprints=dict(self.ca_fingerprints), generation_times=dict(self.generation_times),
                       uif=dict(self.uif), certificates=dict(self.certificates), private_dos=dict(self.private_dos))

    # -- construction -------------------------------------------------------
    @classmethod
    def new(cls, *, pw1: str | bytes = DEFAULT_PW1, pw3: str | bytes = DEFAULT_PW3, serial: int | None = None,
            tries: int = DEFAULT_TRIES) -> "OpenPgpState":
        """A card as it leaves the factory (or ACTIVATE FILE after TERMINATE DF)."""
        if serial is None:
            serial = new_serial()
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError("serial must fit in 4 bytes")
        b1, b3 = _pw_bytes(pw1, PW1_MIN_LENGTH), _pw_bytes(pw3, PW3_MIN_LENGTH)
        return cls(serial=serial,
                   pw1=PinSlot.new(b1, max_tries=tries, is_default=b1 == DEFAULT_PW1.encode()),
                   pw3=PinSlot.new(b3, max_tries=tries, is_default=b3 == DEFAULT_PW3.encode()))

    def factory_reset(self) -> "OpenPgpState":
        """Everything back to the defaults; the card keeps its serial number (§7.2.16/17)."""
        return OpenPgpState.new(serial=self.serial)

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

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "type": STATE_TYPE,
            "created": self.created,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "pw1": self.pw1.to_dict(),
            "pw3": self.pw3.to_dict(),
            "rc": self.rc.to_dict() if self.rc else None,
            "pw1_valid_for_several": self.pw1_valid_for_several,
            "kdf": b64e(self.kdf),
            "attributes": {k.name: b64e(a.encode()) for k, a in sorted(self.attributes.items())},
            "keys": {k.name: key_to_record(e) for k, e in sorted(self.keys.items())},
            "fingerprints": {k.name: b64e(v) for k, v in sorted(self.fingerprints.items())},
            "ca_fingerprints": {str(i): b64e(v) for i, v in sorted(self.ca_fingerprints.items())},
            "generation_times": {k.name: t for k, t in sorted(self.generation_times.items())},
            "uif": {k.name: u.name for k, u in sorted(self.uif.items())},
            "certificates": {k.name: b64e(v) for k, v in sorted(self.certificates.items())},
            "private_dos": {f"{t:04X}": b64e(v) for t, v in sorted(self.private_dos.items())},
            "name": b64e(self.name), "language": b64e(self.language), "salutation": b64e(self.salutation),
            "url": b64e(self.url), "login": b64e(self.login),
            "signature_counter": self.signature_counter,
            "terminated": self.terminated,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "OpenPgpState":
        if d.get("type") != STATE_TYPE:
            raise StorageError(f"card state is of type {d.get('type')!r}, not an OpenPGP card")
        try:
            attributes = {KEY[k]: KeyAttributes.parse(b64d(v), KEY[k]) for k, v in d["attributes"].items()}
            keys = {KEY[k]: key_from_record(v) for k, v in d["keys"].items()}
            for k, entry in keys.items():
                if entry.key.algorithm != attributes[k].key_algorithm:
                    raise StorageError(f"the {k.name} key does not match its algorithm attributes")
            private_dos = {int(t, 16): b64d(v) for t, v in d["private_dos"].items()}
            if set(private_dos) - set(PRIVATE_DOS):
                raise StorageError("unknown private DO")
            state = cls(
                serial=int(d["serial"]), manufacturer=int(d["manufacturer"]),
                pw1=PinSlot.from_dict(d["pw1"]), pw3=PinSlot.from_dict(d["pw3"]),
                rc=PinSlot.from_dict(d["rc"]) if d["rc"] is not None else None,
                pw1_valid_for_several=bool(d["pw1_valid_for_several"]), kdf=b64d(d["kdf"]),
                attributes=attributes, keys=keys,
                fingerprints={KEY[k]: b64d(v) for k, v in d["fingerprints"].items()},
                ca_fingerprints={int(i): b64d(v) for i, v in d["ca_fingerprints"].items()},
                generation_times={KEY[k]: int(t) for k, t in d["generation_times"].items()},
                uif={KEY[k]: UIF[u] for k, u in d["uif"].items()},
                certificates={KEY[k]: b64d(v) for k, v in d["certificates"].items()},
                private_dos=private_dos,
                name=b64d(d["name"]), language=b64d(d["language"]), salutation=b64d(d["salutation"]),
                url=b64d(d["url"]), login=b64d(d["login"]),
                signature_counter=int(d["signature_counter"]), terminated=bool(d["terminated"]),
                created=str(d.get("created", "")))
        except StorageError:
            raise
        except Exception as e:   # KeyError, ValueError, ApduError from a damaged attribute...
            raise StorageError(f"malformed OpenPGP card state: {e!r}") from None
        if set(state.attributes) != set(KEY):
            raise StorageError("malformed OpenPGP card state: attributes of every key are needed")
        return state


def _pw_bytes(value: str | bytes, minimum: int) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not minimum <= len(raw) <= PW_MAX_LENGTH:
        raise ValueError(f"a PIN of this kind is {minimum} to {PW_MAX_LENGTH} bytes")
    return raw
