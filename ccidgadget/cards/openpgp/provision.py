# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline provisioning of an OpenPGP card directory: plain functions, no argparse, no printing.

`ccidgadget card create|import|generate|show|change-pin|reset` (ccidgadget/cli_card.py) calls these
for a card of type openpgp.  They edit the card directory directly: stop the daemon (or remove
the card from its slot) first, or the daemon's next save overwrites the change.  PINs are never
logged or returned.

A key put on the card here gets a creation time and the OpenPGP v4 fingerprint GnuPG would
compute for it (fingerprint.py), so `gpg --card-status` lists it; docs/openpgp.md says how to
make an OpenPGP certificate around such keys.

Keys at rest: `options` (the [vault] configuration) names the device secret the card is bound to
and the scrypt cost of new PW wraps.  Keys generated or imported here are sealed to the card key
without any PIN, as GENERATE does on the card; `change_pin` rewraps the data key.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ..iso7816 import ApduError
from ..keys import ALGORITHM, CardKey, KeyLoadError, load_key_and_cert
from ..device_secret import DeviceSecretError
from ..storage import CardStore, StorageError
from ..tlv import parse_dict
from ..vault import DEFAULT_OPTIONS, VaultOptions
from .applet import OpenPgpCard, kdf_hash_length
from .attributes import KeyAttributes
from .constants import (CURVE_BY_NAME, DEFAULT_PW1, DEFAULT_PW3, KDF_HASH, KDF_TAG, KEY, KEY_STATUS,
                        PW1_MIN_LENGTH, PW3_MIN_LENGTH, PW_MAX_LENGTH, UIF)
from .fingerprint import v4_fingerprint
from .state import KeyEntry, OpenPgpState

STATE_TYPE = "openpgp"


class OpenPgpProvisionError(Exception):
    """A provisioning step failed; the message is for the user."""


def parse_key_slot(text: str) -> KEY:
    names = {"sig": KEY.SIG, "signature": KEY.SIG, "1": KEY.SIG, "dec": KEY.DEC, "encryption": KEY.DEC,
             "decryption": KEY.DEC, "2": KEY.DEC, "aut": KEY.AUT, "authentication": KEY.AUT, "3": KEY.AUT}
    try:
        return names[text.lower()]
    except KeyError:
        raise OpenPgpProvisionError(f"an OpenPGP key slot is sig, dec or aut, not {text!r}") from None


def algorithm_names() -> list[str]:
    return ["rsa2048", "rsa3072", "rsa4096"] + list(CURVE_BY_NAME)


def parse_algorithm(text: str) -> ALGORITHM:
    t = text.lower()
    if t in ("rsa2048", "rsa3072", "rsa4096"):
        return ALGORITHM[t.upper()]
    curve = CURVE_BY_NAME.get(t) or {"x25519": CURVE_BY_NAME["cv25519"], "p256": CURVE_BY_NAME["nistp256"],
                                     "p384": CURVE_BY_NAME["nistp384"], "p521": CURVE_BY_NAME["nistp521"]}.get(t)
    if curve is None:
        raise OpenPgpProvisionError(f"unknown algorithm {text!r} (one of {', '.join(algorithm_names())})")
    return curve.algorithm


def _open(directory: Path, options: VaultOptions = DEFAULT_OPTIONS) -> OpenPgpCard:
    """The card in `directory`, opened (and converted if need be) with the [vault] options."""
    try:
        store = CardStore(Path(directory), options.device())
        if store.exists():
            return OpenPgpCard.open(store, inserted=False, options=options)
    except (StorageError, DeviceSecretError) as e:
        raise OpenPgpProvisionError(str(e)) from None
    raise OpenPgpProvisionError(f"no card in {directory} (create one with `ccidgadget card create --type openpgp`)")


def _save(card: OpenPgpCard, state: OpenPgpState) -> None:
    state.finish_conversion()
    try:
        card.store.save(state.to_dict())
    except StorageError as e:
        raise OpenPgpProvisionError(str(e)) from None
    card.state = state


def create_card(directory: Path, *, pw1: str = DEFAULT_PW1, pw3: str = DEFAULT_PW3,
                serial: int | None = None, options: VaultOptions = DEFAULT_OPTIONS) -> OpenPgpCard:
    _check_pin(pw1, PW1_MIN_LENGTH, "PIN (PW1)")
    _check_pin(pw3, PW3_MIN_LENGTH, "admin PIN (PW3)")
    try:
        return OpenPgpCard.create(CardStore(Path(directory), options.device()), pw1=pw1, pw3=pw3, serial=serial,
                                  inserted=False, options=options)
    except (FileExistsError, ValueError, StorageError, DeviceSecretError) as e:
        raise OpenPgpProvisionError(str(e)) from None


def _check_pin(value: str, minimum: int, what: str) -> None:
    if not minimum <= len(value.encode("utf-8")) <= PW_MAX_LENGTH:
        raise OpenPgpProvisionError(f"the {what} is {minimum} to {PW_MAX_LENGTH} bytes")


def _install(card: OpenPgpCard, key: KEY, card_key: CardKey, status: KEY_STATUS, created: int | None) -> dict:
    try:
        attrs = KeyAttributes.for_algorithm(key, card_key.algorithm)
    except ValueError as e:
        raise OpenPgpProvisionError(str(e)) from None
    created = int(time.time()) if created is None else int(created)
    new = card.state.clone()
    new.attributes[key] = attrs
    new.forget_key(key)
    new.keys[key] = KeyEntry(card_key, status)
    new.generation_times[key] = created
    new.fingerprints[key] = v4_fingerprint(card_key, attrs, created)
    _save(card, new)
    return {"slot": key.name.lower(), "algorithm": attrs.describe(), "created": created,
            "fingerprint": new.fingerprints[key].hex().upper()}


def generate_key(directory: Path, key: KEY, algorithm: ALGORITHM, *, created: int | None = None,
                 options: VaultOptions = DEFAULT_OPTIONS) -> dict:
    """Generate a key in slot `key` with the attributes `algorithm` implies (sealed without a PIN)."""
    card = _open(directory, options)
    return _install(card, key, CardKey.generate(algorithm), KEY_STATUS.GENERATED, created)


def import_key(directory: Path, key: KEY, path: Path, *, password: str | None = None,
               created: int | None = None, options: VaultOptions = DEFAULT_OPTIONS) -> dict:
    """Put a private key from PEM, DER or PKCS#12 into slot `key` (a certificate in the file is ignored)."""
    card = _open(directory, options)
    try:
        bundle = load_key_and_cert(path, password)
    except KeyLoadError as e:
        raise OpenPgpProvisionError(str(e)) from None
    return _install(card, key, bundle.key, KEY_STATUS.IMPORTED, created)


def show_card(directory: Path, options: VaultOptions = DEFAULT_OPTIONS) -> dict:
    """What is on the card (no PINs, no private keys)."""
    card = _open(directory, options)
    s = card.state
    keys = {}
    for key in KEY:
        info = {"attributes": s.attributes[key].describe(), "status": s.key_status(key).name.lower()}
        if key in s.fingerprints:
            info["fingerprint"] = s.fingerprints[key].hex().upper()
        if key in s.generation_times:
            info["created"] = s.generation_times[key]
        if s.uif.get(key, UIF.DISABLED) != UIF.DISABLED:
            info["uif"] = s.uif[key].name.lower()
        keys[key.name.lower()] = info
    return {
        "type": STATE_TYPE, "directory": str(card.store.directory), "created": s.created,
        "aid": s.aid.hex().upper(), "serial": f"{s.serial:08X}",
        "pw1": {"tries_left": s.pw1.tries_left, "max_tries": s.pw1.max_tries, "default": s.pw1.is_default},
        "pw3": {"tries_left": s.pw3.tries_left, "max_tries": s.pw3.max_tries, "default": s.pw3.is_default},
        "reset_code": {"set": s.rc is not None, "tries_left": s.rc.tries_left if s.rc else 0},
        "kdf": kdf_hash_length(s.kdf) is not None,
        "signature_counter": s.signature_counter,
        "pw1_valid_for_several_signatures": s.pw1_valid_for_several,
        "terminated": s.terminated,
        "device_secret": s.vault.device.kind,
        # a converted card: the PWs whose records do not wrap the data key until their first VERIFY
        "conversion_pending": s.unwrapped_references(),
        "keys": keys,
    }


def s2k_iterated_salted(secret: bytes, salt: bytes, count: int, hash_name: str) -> bytes:
    """RFC 4880 §3.7.1.3: hash `count` bytes of salt‖secret repeated (at least one copy)."""
    data = salt + secret
    total = max(count, len(data))
    full, rest = divmod(total, len(data))
    h = hashlib.new(hash_name)
    for _ in range(full):
        h.update(data)
    h.update(data[:rest])
    return h.digest()


def _reference_value(state: OpenPgpState, pin: str, which: str) -> bytes:
    """What the card compares: the PIN, or with KDF-DO the hash GnuPG would send (§4.3.2)."""
    raw = pin.encode("utf-8")
    if kdf_hash_length(state.kdf) is None:
        return raw
    tags = parse_dict(state.kdf)
    salt = tags[KDF_TAG.SALT_PW3] if which == "pw3" and KDF_TAG.SALT_PW3 in tags else tags[KDF_TAG.SALT_PW1]
    hash_alg = KDF_HASH(tags[KDF_TAG.HASH_ALGORITHM][0])
    return s2k_iterated_salted(raw, salt, int.from_bytes(tags[KDF_TAG.ITERATION_COUNT], "big"),
                               "sha256" if hash_alg == KDF_HASH.SHA256 else "sha512")


def change_pin(directory: Path, old: str, new: str, *, which: str = "pw1",
               options: VaultOptions = DEFAULT_OPTIONS) -> None:
    """Offline CHANGE REFERENCE DATA: the old value is checked with the retry counter, as on the card,
    and opens the data key, which the new value then wraps (nothing else is encrypted again)."""
    if which not in ("pw1", "pw3"):
        raise OpenPgpProvisionError("which must be pw1 or pw3")
    _check_pin(new, PW3_MIN_LENGTH if which == "pw3" else PW1_MIN_LENGTH, "new " + which.upper())
    card = _open(directory, options)
    slot = card.state.pw3 if which == "pw3" else card.state.pw1
    old_value = _reference_value(card.state, old, which)
    try:
        dek = slot.verify(old_value, lambda: card.store.save(card.state.to_dict()), which.upper())
        state = card.state.clone()
        if dek is None:                     # a converted card's record without its wrap yet
            state, dek = card.state.adopt_reference(which, old_value)
    except ApduError as e:
        if e.sw == 0x6983:
            raise OpenPgpProvisionError(f"{which.upper()} is blocked") from None
        raise OpenPgpProvisionError(f"wrong {which.upper()}, {e.sw & 0x0F} tries left") from None
    except StorageError as e:
        raise OpenPgpProvisionError(str(e)) from None
    state.set_reference(which, _reference_value(state, new, which), dek,
                        is_default=new == (DEFAULT_PW3 if which == "pw3" else DEFAULT_PW1))
    _save(card, state)


def reset_card(directory: Path, options: VaultOptions = DEFAULT_OPTIONS) -> dict:
    """Factory reset (what TERMINATE DF + ACTIVATE FILE do): keys, PINs and data objects erased, a new vault."""
    card = _open(directory, options)
    _save(card, card.state.factory_reset())
    return show_card(directory, options)


__all__ = ["OpenPgpProvisionError", "create_card", "generate_key", "import_key", "show_card", "change_pin",
           "reset_card", "parse_key_slot", "parse_algorithm", "algorithm_names", "s2k_iterated_salted"]
