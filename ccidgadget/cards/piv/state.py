"""The persistent state of a PIV card and its JSON form (docs/card-state-format.md).

`PivState` is replaced, never edited in place, by commands that change it:
the applet clones it, changes the clone, saves the clone and only then swaps
it in, so a failed save leaves the card exactly as it was.  (PIN counters are
the exception the PIN rules demand: `PinSlot.verify` persists its own
decrement before comparing.)
"""

from __future__ import annotations

import datetime
import hmac
import secrets
from dataclasses import dataclass, field, replace

from ..keys import ALGORITHM, CardKey, KeyLoadError
from ..pin import PinSlot, piv_pad
from ..storage import StorageError, b64d, b64e
from .constants import (DEFAULT_MANAGEMENT_ALGORITHM, DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, DEFAULT_PUK,
                        DEFAULT_TRIES, MANAGEMENT_ALGORITHM, OBJECT_ID, ORIGIN, PIN_POLICY, SLOT, TOUCH_POLICY,
                        certificate_object_for)
from . import objects

STATE_TYPE = "piv"
#: YubiKey-like 8-digit serial numbers, so tools that print them look normal.
SERIAL_RANGE = (10_000_000, 99_999_999)


@dataclass(frozen=True)
class SlotKey:
    """A private key in a slot with the policies it was generated/imported with."""

    key: CardKey
    pin_policy: PIN_POLICY
    touch_policy: TOUCH_POLICY
    origin: ORIGIN

    def to_dict(self) -> dict:
        return {"algorithm": self.key.algorithm.name, "pem": self.key.to_pem().decode("ascii"),
                "pin_policy": self.pin_policy.name, "touch_policy": self.touch_policy.name,
                "origin": self.origin.name}

    @classmethod
    def from_dict(cls, d: dict) -> "SlotKey":
        try:
            key = CardKey.from_pem(d["pem"])
            if key.algorithm != ALGORITHM[d["algorithm"]]:
                raise StorageError("stored key algorithm does not match its PEM")
            return cls(key, PIN_POLICY[d["pin_policy"]], TOUCH_POLICY[d["touch_policy"]], ORIGIN[d["origin"]])
        except (KeyError, TypeError, KeyLoadError) as e:
            raise StorageError(f"malformed key record: {e!r}") from None


@dataclass(frozen=True)
class ManagementKey:
    """The card management key (slot 9B)."""

    algorithm: MANAGEMENT_ALGORITHM
    key: bytes
    touch_policy: TOUCH_POLICY = TOUCH_POLICY.NEVER

    @property
    def is_default(self) -> bool:
        return hmac.compare_digest(self.key, DEFAULT_MANAGEMENT_KEY)

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm.name, "key": b64e(self.key), "touch_policy": self.touch_policy.name}

    @classmethod
    def from_dict(cls, d: dict) -> "ManagementKey":
        try:
            alg = MANAGEMENT_ALGORITHM[d["algorithm"]]
            key = b64d(d["key"])
            if len(key) != alg.key_length:
                raise StorageError("management key length does not match its algorithm")
            return cls(alg, key, TOUCH_POLICY[d.get("touch_policy", "NEVER")])
        except (KeyError, TypeError) as e:
            raise StorageError(f"malformed management key record: {e!r}") from None


def check_management_key(algorithm: int, key: bytes) -> ManagementKey:
    """Validate a (algorithm, key) pair; ValueError with a user message if wrong."""
    try:
        alg = MANAGEMENT_ALGORITHM(algorithm)
    except ValueError:
        raise ValueError(f"unknown management key algorithm {algorithm:#04x}") from None
    if len(key) != alg.key_length:
        raise ValueError(f"a {alg.name} management key is {alg.key_length} bytes")
    return ManagementKey(alg, bytes(key))


@dataclass
class PivState:
    serial: int
    objects: dict[int, bytes]
    keys: dict[int, SlotKey]
    pin: PinSlot
    puk: PinSlot
    management: ManagementKey
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))

    def clone(self) -> "PivState":
        return replace(self, objects=dict(self.objects), keys=dict(self.keys),
                       pin=self.pin.copy(), puk=self.puk.copy())

    # -- construction -------------------------------------------------------
    @classmethod
    def new(cls, *, pin: str | bytes = DEFAULT_PIN, puk: str | bytes = DEFAULT_PUK,
            mgmt_key: bytes = DEFAULT_MANAGEMENT_KEY,
            mgmt_alg: int = DEFAULT_MANAGEMENT_ALGORITHM, serial: int | None = None,
            pin_tries: int = DEFAULT_TRIES, puk_tries: int = DEFAULT_TRIES,
            attestation: tuple[SlotKey, bytes] | None = None) -> "PivState":
        """A freshly created card: objects, PIN/PUK, management key and an attestation key + CA cert."""
        management = check_management_key(mgmt_alg, mgmt_key)
        if serial is None:
            serial = SERIAL_RANGE[0] + secrets.randbelow(SERIAL_RANGE[1] - SERIAL_RANGE[0])
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError("serial must fit in 4 bytes")
        padded_pin, padded_puk = piv_pad(pin), piv_pad(puk)
        state = cls(serial=serial, objects={}, keys={},
                    pin=PinSlot.new(padded_pin, max_tries=pin_tries, is_default=padded_pin == piv_pad(DEFAULT_PIN)),
                    puk=PinSlot.new(padded_puk, max_tries=puk_tries, is_default=padded_puk == piv_pad(DEFAULT_PUK)),
                    management=management)
        state.install_default_objects()
        if attestation is None:
            key = CardKey.generate(ALGORITHM.ECCP256)
            cert = objects.make_attestation_ca(key, serial)
            from cryptography.hazmat.primitives.serialization import Encoding
            attestation = (SlotKey(key, PIN_POLICY.NEVER, TOUCH_POLICY.NEVER, ORIGIN.GENERATED),
                           objects.make_certificate_object(cert.public_bytes(Encoding.DER)))
        state.keys[SLOT.ATTESTATION] = attestation[0]
        state.objects[OBJECT_ID.YUBICO_ATTESTATION] = attestation[1]
        return state

    def install_default_objects(self) -> None:
        """CHUID (random GUID, expiry in 10 years) and CCC (random card id)."""
        expires = datetime.date.today().replace(year=datetime.date.today().year + 10, day=1)
        self.objects[OBJECT_ID.CHUID] = objects.make_chuid(objects.new_guid(), expires)
        self.objects[OBJECT_ID.CARD_CAPABILITY_CONTAINER] = objects.make_ccc(secrets.token_bytes(14))

    def certificate_object(self, slot: int) -> bytes | None:
        return self.objects.get(certificate_object_for(slot))

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "type": STATE_TYPE,
            "created": self.created,
            "serial": self.serial,
            "pin": self.pin.to_dict(),
            "puk": self.puk.to_dict(),
            "management_key": self.management.to_dict(),
            "keys": {f"{slot:02X}": k.to_dict() for slot, k in sorted(self.keys.items())},
            "objects": {f"{tag:X}": b64e(v) for tag, v in sorted(self.objects.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PivState":
        if d.get("type") != STATE_TYPE:
            raise StorageError(f"card state is of type {d.get('type')!r}, not a PIV card")
        try:
            return cls(serial=int(d["serial"]),
                       objects={int(tag, 16): b64d(v) for tag, v in d["objects"].items()},
                       keys={int(slot, 16): SlotKey.from_dict(k) for slot, k in d["keys"].items()},
                       pin=PinSlot.from_dict(d["pin"]), puk=PinSlot.from_dict(d["puk"]),
                       management=ManagementKey.from_dict(d["management_key"]),
                       created=str(d.get("created", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StorageError(f"malformed PIV card state: {e!r}") from None
