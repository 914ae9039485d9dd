"""The persistent state of a PIV card and its JSON form (docs/card-state-format.md, format 2).

`PivState` is replaced, never edited in place, by commands that change it:
the applet clones it, changes the clone, saves the clone and only then swaps
it in, so a failed save leaves the card exactly as it was.  (PIN counters are
the exception the PIN rules demand: `PinSlot.verify` persists its own
decrement before comparing.)

Secrets at rest (cards/vault.py): private keys are sealed to the card's
sealing key (opened once the PIN is verified) or, when the standard lets a
host use them without a PIN (PIN policy NEVER: 9E, F9), to the device key;
the management key (used without a PIN) is sealed to the device key;
PIN-protected objects (SP 800-73-4 Part 1 table 3: printed information,
biometrics) are sealed to the card key.  The card key's private half is under
the data key, which the PIN and the PUK wrap.  A format 1 state is converted
by `from_dict` (`migrated` is then True): the PIN records' scrypt outputs
become wraps, so no PIN is needed for the conversion.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hmac
import os
import secrets
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import serialization

from ..device_secret import NO_DEVICE_SECRET, DeviceSecret
from ..keys import ALGORITHM, CardKey, KeyLoadError, SealedKey
from ..pin import PinSlot, piv_pad
from ..storage import StorageError, b64d, b64e
from ..vault import CardVault, KdfParams, VaultSession
from .constants import (DEFAULT_MANAGEMENT_ALGORITHM, DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, DEFAULT_PUK,
                        DEFAULT_TRIES, MANAGEMENT_ALGORITHM, OBJECT_ID, ORIGIN, PIN_POLICY, PIN_PROTECTED_OBJECTS,
                        SLOT, TOUCH_POLICY, certificate_object_for)
from . import objects

STATE_TYPE = "piv"
#: YubiKey-like 8-digit serial numbers, so tools that print them look normal.
SERIAL_RANGE = (10_000_000, 99_999_999)
PIN_LABEL, PUK_LABEL = "piv/pin", "piv/puk"


class SlotKey(SealedKey):
    """A private key in a slot with the policies it was generated/imported with.

    `key` is the private key when it is open in memory (always for keys used
    without a PIN; for the others only while the card is unlocked), otherwise
    a `LockedCardKey` with the public half.  The sealed form is made once
    (`sealed_for`) and then kept, so repeated saves write the same bytes.
    """

    __slots__ = ("pin_policy", "touch_policy", "origin", "key_id", "_public_b64")

    def __init__(self, key: CardKey | None, pin_policy: PIN_POLICY, touch_policy: TOUCH_POLICY, origin: ORIGIN,
                 *, sealed: dict | None = None, public_key=None, key_id: str | None = None) -> None:
        self.pin_policy = PIN_POLICY(pin_policy)
        self.touch_policy = TOUCH_POLICY(touch_policy)
        self.origin = ORIGIN(origin)
        self.key_id = key_id or os.urandom(8).hex()
        self._public_b64: tuple | None = None       # (public_key, its SubjectPublicKeyInfo in base64): to_dict
        super().__init__(key, sealed, public_key)

    def __repr__(self) -> str:
        return f"SlotKey({self.algorithm.name}, {self.pin_policy.name}, {self.origin.name})"

    @property
    def needs_pin(self) -> bool:
        return self.pin_policy != PIN_POLICY.NEVER

    @property
    def label(self) -> str:
        # The policies are associated data: changing them in the file makes the key unopenable.
        return (f"piv/key/{self.key_id};{self.algorithm.name};pin={self.pin_policy.name};"
                f"touch={self.touch_policy.name};origin={self.origin.name}")

    def private(self, vault: CardVault, session: VaultSession | None) -> CardKey:
        """The private key; PermissionError while the card is locked (for a PIN-protected key)."""
        if self._clear is None:
            self._clear = vault.open_private_key(self._sealed, self.label, session, self.public_key, self.algorithm)
        return self._clear

    def forget(self) -> None:
        """Drop the open private key of a PIN-protected key (the card locks)."""
        if self.needs_pin and self._sealed is not None:
            self._clear = None

    def sealed_for(self, vault: CardVault) -> dict:
        if self._sealed is None:
            self._sealed = vault.seal(self._clear.to_der(), self.label, without_pin=not self.needs_pin)
        return self._sealed

    def to_dict(self, vault: CardVault) -> dict:
        # every save writes every key: its public key is encoded once (the same key object each time)
        cached = self._public_b64
        if cached is None or cached[0] is not self.public_key:
            cached = self._public_b64 = (self.public_key, b64e(self.public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)))
        return {"algorithm": self.algorithm.name, "public": cached[1], "key_id": self.key_id,
                "sealed": self.sealed_for(vault), "pin_policy": self.pin_policy.name,
                "touch_policy": self.touch_policy.name, "origin": self.origin.name}

    @classmethod
    def from_dict(cls, d: dict, vault: CardVault | None) -> "SlotKey":
        """Format 2 (`vault` given) or format 1 (PKCS#8 PEM in clear, `vault` None)."""
        try:
            policies = (PIN_POLICY[d["pin_policy"]], TOUCH_POLICY[d["touch_policy"]], ORIGIN[d["origin"]])
            if vault is None:
                key = CardKey.from_pem(d["pem"])
                if key.algorithm != ALGORITHM[d["algorithm"]]:
                    raise StorageError("stored key algorithm does not match its PEM")
                return cls(key, *policies)
            public = serialization.load_der_public_key(b64d(d["public"]))
            entry = cls(None, *policies, sealed=dict(d["sealed"]), public_key=public, key_id=str(d["key_id"]))
            if entry.algorithm != ALGORITHM[d["algorithm"]]:
                raise StorageError("stored key algorithm does not match its public key")
            if entry.needs_pin != CardVault.needs_pin(entry._sealed):
                raise StorageError(f"key {entry.key_id}: its PIN policy does not match how it is sealed")
            if not entry.needs_pin:
                entry.private(vault, None)       # opened now: a tampered key is refused at start
            return entry
        except (KeyError, TypeError, ValueError, KeyLoadError) as e:
            raise StorageError(f"malformed key record: {e!r}") from None


@dataclass(frozen=True)
class ManagementKey:
    """The card management key (slot 9B); sealed to the device key (it is used without a PIN)."""

    algorithm: MANAGEMENT_ALGORITHM
    key: bytes = field(repr=False)
    touch_policy: TOUCH_POLICY = TOUCH_POLICY.NEVER
    _sealed: list = field(default_factory=list, repr=False, compare=False)   # [record], made once

    LABEL = "piv/management-key"

    @property
    def is_default(self) -> bool:
        return hmac.compare_digest(self.key, DEFAULT_MANAGEMENT_KEY)

    def _label(self) -> str:
        return f"{self.LABEL};{self.algorithm.name}"

    def to_dict(self, vault: CardVault) -> dict:
        if not self._sealed:
            self._sealed.append(vault.seal(self.key, self._label(), without_pin=True))
        return {"algorithm": self.algorithm.name, "sealed": self._sealed[0], "touch_policy": self.touch_policy.name}

    @classmethod
    def from_dict(cls, d: dict, vault: CardVault | None) -> "ManagementKey":
        try:
            alg = MANAGEMENT_ALGORITHM[d["algorithm"]]
            touch = TOUCH_POLICY[d.get("touch_policy", "NEVER")]
            if vault is None:
                key, sealed = b64d(d["key"]), []
            else:
                sealed = [dict(d["sealed"])]
                key = vault.open(sealed[0], f"{cls.LABEL};{alg.name}")
            if len(key) != alg.key_length:
                raise StorageError("management key length does not match its algorithm")
            return cls(alg, key, touch, sealed)
        except (KeyError, TypeError, AttributeError) as e:
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
    vault: CardVault
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))
    #: PIN-protected objects, sealed to the card key: tag -> record.
    sealed_objects: dict[int, dict] = field(default_factory=dict)
    #: True when `from_dict` converted a format 1 document (the caller saves it).
    migrated: bool = field(default=False, compare=False)

    def clone(self) -> "PivState":
        return replace(self, objects=dict(self.objects), keys=dict(self.keys), sealed_objects=dict(self.sealed_objects),
                       pin=self.pin.copy(), puk=self.puk.copy(), migrated=False)

    # -- construction -------------------------------------------------------
    @classmethod
    def new(cls, *, pin: str | bytes = DEFAULT_PIN, puk: str | bytes = DEFAULT_PUK,
            mgmt_key: bytes = DEFAULT_MANAGEMENT_KEY,
            mgmt_alg: int = DEFAULT_MANAGEMENT_ALGORITHM, serial: int | None = None,
            pin_tries: int = DEFAULT_TRIES, puk_tries: int = DEFAULT_TRIES,
            attestation: tuple[SlotKey, bytes] | None = None, device: DeviceSecret = NO_DEVICE_SECRET,
            kdf: KdfParams | None = None) -> "PivState":
        """A freshly created card: objects, PIN/PUK, management key and an attestation key + CA cert."""
        management = check_management_key(mgmt_alg, mgmt_key)
        if serial is None:
            serial = SERIAL_RANGE[0] + secrets.randbelow(SERIAL_RANGE[1] - SERIAL_RANGE[0])
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError("serial must fit in 4 bytes")
        padded_pin, padded_puk = piv_pad(pin), piv_pad(puk)
        vault, dek = CardVault.new(device)
        kdf_dict = kdf.to_dict() if kdf is not None else None
        # The PUK's scrypt in a second thread while the PIN's runs here (the KDF releases the GIL): a fresh
        # card's start waits for one KDF instead of two on a board with more than one core.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ccidgadget-kdf") as pool:
            puk_slot = pool.submit(PinSlot.new, padded_puk, max_tries=puk_tries,
                                   is_default=padded_puk == piv_pad(DEFAULT_PUK), device=device,
                                   aad=vault.aad(PUK_LABEL), dek=dek, kdf=kdf_dict)
            pin_slot = PinSlot.new(padded_pin, max_tries=pin_tries, is_default=padded_pin == piv_pad(DEFAULT_PIN),
                                   device=device, aad=vault.aad(PIN_LABEL), dek=dek, kdf=kdf_dict)
            state = cls(serial=serial, objects={}, keys={}, pin=pin_slot, puk=puk_slot.result(),
                        management=management, vault=vault)
        del dek
        state.pin.next_kdf = state.puk.next_kdf = kdf_dict
        state.install_default_objects()
        if attestation is None:
            key = CardKey.generate(ALGORITHM.ECCP256)
            cert = objects.make_attestation_ca(key, serial)
            attestation = (SlotKey(key, PIN_POLICY.NEVER, TOUCH_POLICY.NEVER, ORIGIN.GENERATED),
                           objects.make_certificate_object(cert.public_bytes(serialization.Encoding.DER)))
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

    # -- objects --------------------------------------------------------------
    @staticmethod
    def object_label(tag: int) -> str:
        return f"piv/object/{tag:06X}"

    def put_object(self, tag: int, content: bytes) -> None:
        """Store (or with empty `content` delete) an object; PIN-protected ones are sealed to the card key."""
        self.objects.pop(tag, None)
        self.sealed_objects.pop(tag, None)
        if not content:
            return
        if tag in PIN_PROTECTED_OBJECTS:
            self.sealed_objects[tag] = self.vault.seal(content, self.object_label(tag))
        else:
            self.objects[tag] = content

    def has_object(self, tag: int) -> bool:
        return tag in self.objects or tag in self.sealed_objects

    def object_content(self, tag: int, session: VaultSession | None) -> bytes | None:
        if tag in self.sealed_objects:
            return self.vault.open(self.sealed_objects[tag], self.object_label(tag), session)
        return self.objects.get(tag)

    def objects_size(self) -> int:
        # AES-GCM adds its 16-byte tag to the content.
        return sum(len(v) for v in self.objects.values()) + sum(
            len(b64d(r["ct"])) - 16 for r in self.sealed_objects.values())

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "type": STATE_TYPE,
            "created": self.created,
            "serial": self.serial,
            "vault": self.vault.to_dict(),
            "pin": self.pin.to_dict(),
            "puk": self.puk.to_dict(),
            "management_key": self.management.to_dict(self.vault),
            "keys": {f"{slot:02X}": k.to_dict(self.vault) for slot, k in sorted(self.keys.items())},
            "objects": {f"{tag:X}": b64e(v) for tag, v in sorted(self.objects.items())},
            "sealed_objects": {f"{tag:X}": dict(v) for tag, v in sorted(self.sealed_objects.items())},
        }

    @classmethod
    def from_dict(cls, d: dict, *, device: DeviceSecret = NO_DEVICE_SECRET,
                  kdf: KdfParams | None = None) -> "PivState":
        """Read format 2, or convert format 1 (``migrated`` set; nothing is saved here)."""
        if d.get("type") != STATE_TYPE:
            raise StorageError(f"card state is of type {d.get('type')!r}, not a PIV card")
        try:
            if d.get("version", 2) == 1:
                return cls._from_v1(d, device, kdf)
            vault = CardVault.from_dict(d["vault"], device)
            state = cls(serial=int(d["serial"]),
                        objects={int(tag, 16): b64d(v) for tag, v in d["objects"].items()},
                        keys={int(slot, 16): SlotKey.from_dict(k, vault) for slot, k in d["keys"].items()},
                        pin=PinSlot.from_dict(d["pin"], device=device, aad=vault.aad(PIN_LABEL)),
                        puk=PinSlot.from_dict(d["puk"], device=device, aad=vault.aad(PUK_LABEL)),
                        management=ManagementKey.from_dict(d["management_key"], vault), vault=vault,
                        created=str(d.get("created", "")),
                        sealed_objects={int(tag, 16): dict(v) for tag, v in d.get("sealed_objects", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StorageError(f"malformed PIV card state: {e!r}") from None
        if state.pin.legacy or state.puk.legacy or state.pin.wrap is None or state.puk.wrap is None:
            raise StorageError("malformed PIV card state: a format 2 PIN/PUK record without its data key wrap")
        state.pin.next_kdf = state.puk.next_kdf = kdf.to_dict() if kdf is not None else None
        return state

    @classmethod
    def _from_v1(cls, d: dict, device: DeviceSecret, kdf: KdfParams | None) -> "PivState":
        vault, dek = CardVault.new(device)
        pin = PinSlot.from_dict(d["pin"], device=device, aad=vault.aad(PIN_LABEL))
        puk = PinSlot.from_dict(d["puk"], device=device, aad=vault.aad(PUK_LABEL))
        for slot in (pin, puk):
            slot.upgrade(dek)
            slot.next_kdf = kdf.to_dict() if kdf is not None else None
        state = cls(serial=int(d["serial"]), objects={},
                    keys={int(slot, 16): SlotKey.from_dict(k, None) for slot, k in d["keys"].items()},
                    pin=pin, puk=puk, management=ManagementKey.from_dict(d["management_key"], None), vault=vault,
                    created=str(d.get("created", "")), migrated=True)
        for tag, v in d["objects"].items():
            state.put_object(int(tag, 16), b64d(v))
        return state
