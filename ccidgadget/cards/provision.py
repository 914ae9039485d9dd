"""Offline provisioning of a PIV card directory: plain functions, no argparse, no printing.

`ccidgadget card create|import|generate|show|change-pin` (ccidgadget/cli_card.py) calls these
for a PIV card, and those of cards/openpgp/provision.py for an OpenPGP card (`stored_card_type`
says which a directory holds).  They edit the card directory directly: stop the daemon (or remove
the card from its slot) first, or the daemon's next save overwrites the change.  PINs, PUKs and
management keys are never logged or returned.

`vault_options_from_config` reads the daemon's configuration for its ``[vault]`` keys: the device
secret a card is bound to and the scrypt cost of new PIN wraps.  Keys imported or generated offline
are sealed to the card key without the PIN, as the card itself does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..cryptocompat import not_valid_after
from .iso7816 import ApduError
from .keys import ALGORITHM, PIV_ALGORITHMS, CardKey, KeyLoadError, load_key_and_cert
from .pin import piv_pad
from .piv import objects
from .piv.applet import PivCard, public_key_template  # noqa: F401  (re-exported for tools)
from .piv.constants import (DEFAULT_MANAGEMENT_ALGORITHM, DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, DEFAULT_PUK,
                            KEY_SLOTS, MANAGEMENT_ALGORITHM, OBJECT_ID, ORIGIN, PIN_POLICY, SLOT, TOUCH_POLICY,
                            certificate_object_for, default_pin_policy)
from .piv.state import SlotKey
from .device_secret import DeviceSecretError
from .storage import CardStore, StorageError
from .vault import DEFAULT_OPTIONS, KdfParams, VaultOptions

log = logging.getLogger(__name__)


class ProvisionError(Exception):
    """A provisioning command failed; the message is for the user."""


# -- helpers ------------------------------------------------------------------

def parse_slot(text: str) -> int:
    try:
        slot = int(text, 16)
    except ValueError:
        raise ProvisionError(f"slot must be hexadecimal (9a, 9c, 9d, 9e, 82..95), not {text!r}") from None
    if slot not in KEY_SLOTS:
        raise ProvisionError(f"{text} is not a PIV key slot")
    return slot


def parse_algorithm(text: str) -> ALGORITHM:
    try:
        alg = ALGORITHM[text.upper()]
        if alg in PIV_ALGORITHMS:
            return alg
    except KeyError:
        pass
    names = ", ".join(a.cli_name for a in PIV_ALGORITHMS)
    raise ProvisionError(f"unknown algorithm {text!r} (one of {names})") from None


def parse_management_algorithm(text: str) -> MANAGEMENT_ALGORITHM:
    aliases = {"3des": "TDES", "tdes": "TDES", "aes128": "AES128", "aes192": "AES192", "aes256": "AES256"}
    try:
        return MANAGEMENT_ALGORITHM[aliases.get(text.lower(), text.upper())]
    except KeyError:
        raise ProvisionError(f"unknown management key algorithm {text!r} (3des, aes128, aes192, aes256)") from None


def parse_subject(text: str) -> x509.Name:
    """"/CN=a/O=b" (OpenSSL style, as yubico-piv-tool takes) or an RFC 4514 string "CN=a,O=b"."""
    try:
        if text.startswith("/"):
            parts = [p for p in text.split("/") if p]
            return x509.Name.from_rfc4514_string(",".join(reversed(parts)))
        return x509.Name.from_rfc4514_string(text)
    except ValueError as e:
        raise ProvisionError(f"bad subject {text!r}: {e}") from None


def _store(directory: Path, options: VaultOptions) -> CardStore:
    try:
        return CardStore(Path(directory), options.device())
    except DeviceSecretError as e:
        raise ProvisionError(str(e)) from None


def _open(directory: Path, options: VaultOptions = DEFAULT_OPTIONS) -> PivCard:
    store = _store(directory, options)
    if not store.exists():
        raise ProvisionError(f"no card in {directory} (create one with `ccidgadget card create`)")
    try:
        return PivCard.open(store, inserted=False, options=options)
    except StorageError as e:
        raise ProvisionError(str(e)) from None


def _save(card: PivCard, new_state) -> None:
    try:
        card.store.save(new_state.to_dict())
    except StorageError as e:
        raise ProvisionError(str(e)) from None
    card.state = new_state


# -- commands -----------------------------------------------------------------

def create_card(directory: Path, *, pin: str = DEFAULT_PIN, puk: str = DEFAULT_PUK,
                mgmt_key: bytes = DEFAULT_MANAGEMENT_KEY,
                mgmt_alg: MANAGEMENT_ALGORITHM = DEFAULT_MANAGEMENT_ALGORITHM,
                serial: int | None = None, options: VaultOptions = DEFAULT_OPTIONS) -> PivCard:
    try:
        return PivCard.create(_store(directory, options), pin=pin, puk=puk, mgmt_key=mgmt_key,
                              mgmt_alg=mgmt_alg, serial=serial, inserted=False, options=options)
    except FileExistsError as e:
        raise ProvisionError(str(e)) from None
    except (ValueError, StorageError) as e:
        raise ProvisionError(str(e)) from None


def _policies(slot: int, pin_policy: PIN_POLICY | None, touch: TOUCH_POLICY | None):
    return (pin_policy if pin_policy not in (None, PIN_POLICY.DEFAULT) else default_pin_policy(slot),
            touch if touch not in (None, TOUCH_POLICY.DEFAULT) else TOUCH_POLICY.NEVER)


def import_key(directory: Path, slot: int, path: Path, *, password: str | None = None,
               pin_policy: PIN_POLICY | None = None, touch_policy: TOUCH_POLICY | None = None,
               options: VaultOptions = DEFAULT_OPTIONS) -> SlotKey:
    """Put a key (and its certificate, if the file has one) into `slot`."""
    card = _open(directory, options)
    try:
        bundle = load_key_and_cert(path, password)
    except KeyLoadError as e:
        raise ProvisionError(str(e)) from None
    if bundle.key.algorithm not in PIV_ALGORITHMS:
        raise ProvisionError(f"a PIV card cannot hold a {bundle.key.algorithm.cli_name} key")
    new = card.state.clone()
    pp, tp = _policies(slot, pin_policy, touch_policy)
    entry = SlotKey(bundle.key, pp, tp, ORIGIN.IMPORTED)
    new.keys[slot] = entry
    if bundle.certificate is not None:
        der = bundle.certificate.public_bytes(serialization.Encoding.DER)
        new.objects[certificate_object_for(slot)] = objects.make_certificate_object(der)
    _save(card, new)
    return entry


def generate_key(directory: Path, slot: int, algorithm: ALGORITHM, *, subject: str | None = None,
                 csr_out: Path | None = None, days: int = 365, pin_policy: PIN_POLICY | None = None,
                 touch_policy: TOUCH_POLICY | None = None, options: VaultOptions = DEFAULT_OPTIONS) -> SlotKey:
    """Generate a key in `slot`; store a self-signed certificate, or write a CSR to `csr_out`."""
    card = _open(directory, options)
    name = parse_subject(subject or f"/CN=ccidgadget {slot:02x}")
    if algorithm == ALGORITHM.X25519 and (csr_out is not None or subject is not None):
        raise ProvisionError("an X25519 key cannot sign a certificate or CSR (omit --subject/--csr)")
    key = CardKey.generate(algorithm)
    new = card.state.clone()
    pp, tp = _policies(slot, pin_policy, touch_policy)
    entry = SlotKey(key, pp, tp, ORIGIN.GENERATED)
    new.keys[slot] = entry
    if algorithm != ALGORITHM.X25519:
        if csr_out is not None:
            csr = objects.certificate_request(key, name)
            try:
                Path(csr_out).write_bytes(csr.public_bytes(serialization.Encoding.PEM))
            except OSError as e:
                raise ProvisionError(f"cannot write {csr_out}: {e.strerror or e}") from None
        else:
            cert = objects.self_signed_certificate(key, name, days)
            new.objects[certificate_object_for(slot)] = objects.make_certificate_object(
                cert.public_bytes(serialization.Encoding.DER))
    _save(card, new)
    return entry


def show_card(directory: Path, options: VaultOptions = DEFAULT_OPTIONS) -> dict:
    """What is on the card (no secrets: no PIN, PUK, management key or private key)."""
    card = _open(directory, options)
    s = card.state
    slots = {}
    for slot in sorted(set(s.keys) | {sl for sl in KEY_SLOTS if certificate_object_for(sl) in s.objects}):
        info: dict = {}
        entry = s.keys.get(slot)
        if entry is not None:
            info.update(algorithm=entry.key.algorithm.cli_name, pin_policy=entry.pin_policy.name.lower(),
                        touch_policy=entry.touch_policy.name.lower(), origin=entry.origin.name.lower())
        cert = objects.parse_certificate_object(s.objects.get(certificate_object_for(slot), b""))
        if cert is not None:
            info.update(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                        not_after=not_valid_after(cert).isoformat())
        slots[f"{slot:02x}"] = info
    return {
        "type": "piv", "directory": str(card.store.directory), "serial": s.serial, "created": s.created,
        "pin": {"tries_left": s.pin.tries_left, "max_tries": s.pin.max_tries, "default": s.pin.is_default},
        "puk": {"tries_left": s.puk.tries_left, "max_tries": s.puk.max_tries, "default": s.puk.is_default},
        "management_key": {"algorithm": s.management.algorithm.name.lower(), "default": s.management.is_default},
        "slots": slots,
        "objects": sorted(f"{t:X}" for t in s.objects),
    }


def change_pin(directory: Path, old: str, new: str, *, which: str = "pin",
               options: VaultOptions = DEFAULT_OPTIONS) -> None:
    """Offline CHANGE REFERENCE DATA: the old value is checked with the retry counter, as on the card.

    The data key the old value opens is wrapped under the new one (nothing else changes)."""
    card = _open(directory, options)
    try:
        old_block, new_block = piv_pad(old), piv_pad(new)
    except ValueError as e:
        raise ProvisionError(str(e)) from None
    slot = card.state.pin if which == "pin" else card.state.puk
    try:
        dek = slot.verify(old_block, lambda: card.store.save(card.state.to_dict()), which.upper())
    except ApduError as e:
        if e.sw == 0x6983:
            raise ProvisionError(f"the {which.upper()} is blocked") from None
        raise ProvisionError(f"wrong {which.upper()}, {e.sw & 0x0F} tries left") from None
    except StorageError as e:
        raise ProvisionError(str(e)) from None
    new_state = card.state.clone()
    target = new_state.pin if which == "pin" else new_state.puk
    target.set(new_block, is_default=new_block == piv_pad(DEFAULT_PIN if which == "pin" else DEFAULT_PUK), dek=dek)
    _save(card, new_state)


# -- what a directory holds, and the configuration --------------------------------------------------

def stored_card_type(directory: Path) -> str | None:
    """The card type a directory's state records ("piv", "openpgp"...), None when it cannot be read.

    Only which code opens the card is decided here: opening it checks the state (permissions, MAC,
    device secret) as the daemon does."""
    store = CardStore(Path(directory))
    try:
        with open(store.path, "rb") as f:
            return json.load(f).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def vault_options_from_config(config: Path | None, kdf_log2_n: int | None = None) -> VaultOptions:
    """The [vault] keys of the configuration file `config` (None: the default file if it exists), with
    the scrypt cost N = 2^`kdf_log2_n` over them when given."""
    from ..daemon import config as daemon_config
    try:
        cfg = daemon_config.load(config)
    except daemon_config.ConfigError as e:
        raise ProvisionError(f"configuration: {e}") from None
    options = cfg.vault or DEFAULT_OPTIONS
    if kdf_log2_n is not None:
        try:
            kdf = KdfParams(1 << kdf_log2_n, *(((options.kdf.r, options.kdf.p)) if options.kdf else ()))
        except ValueError as e:
            raise ProvisionError(f"--kdf-log2-n {kdf_log2_n}: {e}") from None
        options = VaultOptions(kdf=kdf, device_secret=options.device_secret,
                               device_secret_path=options.device_secret_path, tpm_tcti=options.tpm_tcti,
                               migration_backup=options.migration_backup)
    return options


__all__ = ["create_card", "import_key", "generate_key", "show_card", "change_pin", "stored_card_type",
           "vault_options_from_config", "ProvisionError", "parse_slot", "parse_algorithm",
           "parse_management_algorithm", "parse_subject", "SLOT", "OBJECT_ID"]
