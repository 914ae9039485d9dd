"""`ccidgadget card ...`: create and provision emulated PIV and OpenPGP cards offline.

Each command is a function (for tests and other front ends) plus an argparse
sub-command registered by `add_card_subcommands(subparsers)`; the CLI calls
`args.func(args)`, which returns the exit status.

These commands edit the card directory directly: stop the daemon (or remove
the card from its slot) first, or the daemon's next save overwrites the
change.  PINs, PUKs and management keys are never logged or printed.

They read the daemon's configuration (``--config``, default
/etc/ccidgadget/ccidgadget.toml when it exists) for its ``[vault]`` keys: the
device secret a card is bound to and the scrypt cost of new PIN wraps
(``--kdf-log2-n`` overrides it).  Keys imported or generated offline are
sealed to the card key without the PIN, as the card itself does.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
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


# -- argparse -------------------------------------------------------------------

def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise ProvisionError(f"expected a value on standard input ({prompt.strip()})")
    return line.rstrip("\r\n")


def _print_show(info: dict) -> None:
    print(f"PIV card {info['serial']} in {info['directory']} (created {info['created']})")
    for name in ("pin", "puk"):
        p = info[name]
        print(f"  {name.upper()}: {p['tries_left']}/{p['max_tries']} tries left"
              + (" (DEFAULT value)" if p["default"] else ""))
    m = info["management_key"]
    print(f"  management key: {m['algorithm']}" + (" (DEFAULT value: change it)" if m["default"] else ""))
    for slot, s in info["slots"].items():
        desc = ", ".join(f"{k}={v}" for k, v in s.items())
        print(f"  slot {slot}: {desc}")
    print(f"  objects: {' '.join(info['objects'])}")


def _cmd(fn):
    def run(args) -> int:
        from .openpgp.provision import OpenPgpProvisionError
        try:
            if fn.__name__ in _OPENPGP and _is_openpgp(args):     # a card verb on an OpenPGP card
                _OPENPGP[fn.__name__](args)
            else:
                fn(args)
            return 0
        except (ProvisionError, OpenPgpProvisionError) as e:
            print(f"ccidgadget card: {e}", file=sys.stderr)
            return 1
    return run


def vault_options(args) -> VaultOptions:
    """The [vault] keys of the configuration (``--config``), with ``--kdf-log2-n`` over them."""
    from ..daemon import config as daemon_config
    try:
        cfg = daemon_config.load(getattr(args, "config", None))
    except daemon_config.ConfigError as e:
        raise ProvisionError(f"configuration: {e}") from None
    options = cfg.vault or DEFAULT_OPTIONS
    log2_n = getattr(args, "kdf_log2_n", None)
    if log2_n is not None:
        try:
            kdf = KdfParams(1 << log2_n, *(((options.kdf.r, options.kdf.p)) if options.kdf else ()))
        except ValueError as e:
            raise ProvisionError(f"--kdf-log2-n {log2_n}: {e}") from None
        options = VaultOptions(kdf=kdf, device_secret=options.device_secret,
                               device_secret_path=options.device_secret_path, tpm_tcti=options.tpm_tcti,
                               migration_backup=options.migration_backup)
    return options


# -- OpenPGP cards: the logic is in cards/openpgp/provision.py, here only its command line ---------

def _is_openpgp(args) -> bool:
    if getattr(args, "type", None):
        return args.type == "openpgp"
    # Only which code opens the card is decided here: opening it checks the state (permissions, MAC,
    # device secret) as the daemon does.
    store = CardStore(Path(args.dir))
    try:
        with open(store.path, "rb") as f:
            return json.load(f).get("type") == "openpgp"
    except (OSError, ValueError, AttributeError):
        return False


def _openpgp_create(args) -> None:
    from .openpgp import provision as pgp
    card = pgp.create_card(args.dir, pw1=args.pin or pgp.DEFAULT_PW1, pw3=args.admin_pin or pgp.DEFAULT_PW3,
                           serial=args.serial, options=vault_options(args))
    print(f"created OpenPGP card {card.state.serial:08X} in {args.dir}")


def _openpgp_import(args) -> None:
    from .openpgp import provision as pgp
    info = pgp.import_key(args.dir, pgp.parse_key_slot(args.slot), Path(args.file), password=args.password,
                          options=vault_options(args))
    print(f"imported {info['algorithm']} key into {info['slot']}, fingerprint {info['fingerprint']}")


def _openpgp_generate(args) -> None:
    from .openpgp import provision as pgp
    info = pgp.generate_key(args.dir, pgp.parse_key_slot(args.slot), pgp.parse_algorithm(args.algorithm),
                            options=vault_options(args))
    print(f"generated {info['algorithm']} key in {info['slot']}, fingerprint {info['fingerprint']}")


def _openpgp_show(args) -> None:
    from .openpgp import provision as pgp
    info = pgp.show_card(args.dir, vault_options(args))
    if args.json:
        import json
        print(json.dumps(info, indent=2))
        return
    print(f"OpenPGP card {info['serial']} in {info['directory']} (created {info['created']})")
    for name, label in (("pw1", "PIN (PW1)"), ("pw3", "admin PIN (PW3)")):
        p = info[name]
        print(f"  {label}: {p['tries_left']}/{p['max_tries']} tries left" + (" (DEFAULT value)" if p["default"] else ""))
    rc = info["reset_code"]
    print(f"  resetting code: " + (f"{rc['tries_left']} tries left" if rc["set"] else "not set"))
    print(f"  KDF: {'on' if info['kdf'] else 'off'}; signatures made: {info['signature_counter']}; "
          f"device secret: {info['device_secret']}")
    if info["conversion_pending"]:
        print("  converted from a state without keys at rest: the data key is also sealed to the device key "
              f"until {', '.join(n.upper() for n in info['conversion_pending'])} are verified once")
    for slot, k in info["keys"].items():
        print(f"  {slot}: " + ", ".join(f"{a}={v}" for a, v in k.items()))


def _openpgp_change_pin(args) -> None:
    from .openpgp import provision as pgp
    which = "pw3" if args.admin else "pw1"
    what = "admin PIN" if args.admin else "PIN"
    old = args.old if args.old is not None else _read_secret(f"current {what}: ")
    new = args.new if args.new is not None else _read_secret(f"new {what}: ")
    pgp.change_pin(args.dir, old, new, which=which, options=vault_options(args))
    print(f"{what} changed")


def _reset(args) -> None:
    raise ProvisionError("only OpenPGP cards have `card reset` (a PIV card is reset with yubico-piv-tool -a reset)")


def _openpgp_reset(args) -> None:
    from .openpgp import provision as pgp
    info = pgp.reset_card(args.dir, vault_options(args))
    print(f"OpenPGP card {info['serial']} reset to factory defaults (PIN 123456, admin PIN 12345678)")


_OPENPGP = {"_create": _openpgp_create, "_import": _openpgp_import, "_generate": _openpgp_generate,
            "_show": _openpgp_show, "_change_pin": _openpgp_change_pin, "_reset": _openpgp_reset}


@_cmd
def _create(args) -> None:
    key = bytes.fromhex(args.mgmt_key) if args.mgmt_key else DEFAULT_MANAGEMENT_KEY
    card = create_card(args.dir, pin=args.pin or DEFAULT_PIN, puk=args.puk or DEFAULT_PUK, mgmt_key=key,
                       mgmt_alg=parse_management_algorithm(args.mgmt_alg), serial=args.serial,
                       options=vault_options(args))
    print(f"created PIV card {card.state.serial} in {args.dir}")


@_cmd
def _import(args) -> None:
    entry = import_key(args.dir, parse_slot(args.slot), Path(args.file), password=args.password,
                       pin_policy=PIN_POLICY[args.pin_policy.upper()] if args.pin_policy else None,
                       touch_policy=TOUCH_POLICY[args.touch_policy.upper()] if args.touch_policy else None,
                       options=vault_options(args))
    print(f"imported {entry.key.algorithm.cli_name} key into slot {args.slot}")


@_cmd
def _generate(args) -> None:
    entry = generate_key(args.dir, parse_slot(args.slot), parse_algorithm(args.algorithm), subject=args.subject,
                         csr_out=Path(args.csr) if args.csr else None, days=args.days,
                         pin_policy=PIN_POLICY[args.pin_policy.upper()] if args.pin_policy else None,
                         touch_policy=TOUCH_POLICY[args.touch_policy.upper()] if args.touch_policy else None,
                         options=vault_options(args))
    print(f"generated {entry.key.algorithm.cli_name} key in slot {args.slot}"
          + (f"; CSR written to {args.csr}" if args.csr else "; self-signed certificate stored"))


@_cmd
def _show(args) -> None:
    info = show_card(args.dir, vault_options(args))
    if args.json:
        import json
        print(json.dumps(info, indent=2))
    else:
        _print_show(info)


@_cmd
def _change_pin(args) -> None:
    which = "puk" if args.puk else "pin"
    old = args.old if args.old is not None else _read_secret(f"current {which.upper()}: ")
    new = args.new if args.new is not None else _read_secret(f"new {which.upper()}: ")
    change_pin(args.dir, old, new, which=which, options=vault_options(args))
    print(f"{which.upper()} changed")


@_cmd
def _new_device_secret(args) -> None:
    from .device_secret import create_file_secret
    try:
        secret = create_file_secret(args.file)
    except (OSError, DeviceSecretError) as e:
        raise ProvisionError(f"{args.file}: {getattr(e, 'strerror', None) or e}") from None
    print(f"device secret written to {args.file} ({secret.fingerprint}); configure [vault] device_secret = "
          f"\"file\", device_secret_path = \"{args.file}\" before creating cards")


@_cmd
def _tpm_seal(args) -> None:
    from .device_secret import tpm_seal
    try:
        secret = tpm_seal(args.dir, tcti=args.tcti)
    except DeviceSecretError as e:
        raise ProvisionError(str(e)) from None
    print(f"TPM-sealed device secret in {args.dir} ({secret.fingerprint}); configure [vault] device_secret = "
          f"\"tpm\", device_secret_path = \"{args.dir}\" before creating cards")


def add_card_subcommands(subparsers) -> argparse.ArgumentParser:
    """Register `card create|import|generate|show|change-pin|reset` under the CLI's subparsers."""
    card = subparsers.add_parser("card", help="create and provision emulated cards (offline)",
                                 description=__doc__.split("\n\n")[0])
    sub = card.add_subparsers(dest="card_command", required=True, metavar="COMMAND")
    policies = [p.name.lower() for p in PIN_POLICY], [t.name.lower() for t in TOUCH_POLICY]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="configuration whose [vault] keys apply (default: "
                                                    "/etc/ccidgadget/ccidgadget.toml if it exists)")
    kdf = argparse.ArgumentParser(add_help=False)
    kdf.add_argument("--kdf-log2-n", type=int, metavar="L",
                     help="scrypt cost of the new PIN/PUK wraps: N = 2^L (default: [vault] kdf_log2_n, 14)")

    p = sub.add_parser("create", help="create a PIV or OpenPGP card directory", parents=[common, kdf])
    p.add_argument("--dir", type=Path, required=True, help="card state directory (created, mode 0700)")
    p.add_argument("--type", choices=("piv", "openpgp"), default="piv", help="card type (default piv)")
    p.add_argument("--admin-pin", help="OpenPGP: initial admin PIN (PW3), 8+ characters (default 12345678)")
    p.add_argument("--pin", help=f"initial PIN, 6-8 characters (default {DEFAULT_PIN})")
    p.add_argument("--puk", help=f"initial PUK, 6-8 characters (default {DEFAULT_PUK})")
    p.add_argument("--mgmt-key", help="management key in hex (default: the well-known default key)")
    p.add_argument("--mgmt-alg", default="3des", help="3des (default), aes128, aes192 or aes256")
    p.add_argument("--serial", type=int, help="card serial number (default: random 8 digits)")
    p.set_defaults(func=_create)

    p = sub.add_parser("import", help="import a key (+ certificate) from PEM, DER or PKCS#12", parents=[common])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--slot", required=True, help="PIV: 9a, 9c, 9d, 9e or 82..95; OpenPGP: sig, dec or aut")
    p.add_argument("file")
    p.add_argument("--password", help="password of an encrypted key or PKCS#12 file")
    p.add_argument("--pin-policy", choices=policies[0])
    p.add_argument("--touch-policy", choices=policies[1])
    p.set_defaults(func=_import)

    p = sub.add_parser("generate", help="generate a key with a self-signed certificate or a CSR", parents=[common])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--slot", required=True)
    p.add_argument("--algorithm", required=True,
                   help="PIV: " + ", ".join(a.cli_name for a in PIV_ALGORITHMS)
                   + "; OpenPGP: rsa2048, rsa3072, rsa4096, nistp256/384/521, brainpoolP256r1/384r1/512r1, "
                   "secp256k1, ed25519, cv25519")
    p.add_argument("--subject", help='certificate subject, "/CN=name/O=org" or "CN=name,O=org"')
    p.add_argument("--csr", metavar="OUT", help="write a PEM CSR here instead of storing a self-signed certificate")
    p.add_argument("--days", type=int, default=365, help="validity of the self-signed certificate")
    p.add_argument("--pin-policy", choices=policies[0])
    p.add_argument("--touch-policy", choices=policies[1])
    p.set_defaults(func=_generate)

    p = sub.add_parser("show", help="show the card (no secrets)", parents=[common])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    p = sub.add_parser("change-pin", help="change the PIN (or PUK) offline; values from stdin unless given", parents=[common, kdf])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--puk", action="store_true", help="PIV: change the PUK instead of the PIN")
    p.add_argument("--admin", action="store_true", help="OpenPGP: change the admin PIN (PW3) instead of PW1")
    p.add_argument("--old", help="current value (prefer standard input: options show in `ps`)")
    p.add_argument("--new", help="new value")
    p.set_defaults(func=_change_pin)

    p = sub.add_parser("new-device-secret", help="write a new random device secret file (mode 0600)")
    p.add_argument("--file", type=Path, required=True, help="where to write it (outside the state directory)")
    p.set_defaults(func=_new_device_secret)

    p = sub.add_parser("tpm-seal", help="seal a new random device secret with this board's TPM 2.0")
    p.add_argument("--dir", type=Path, required=True, help="directory for seal.pub and seal.priv")
    p.add_argument("--tcti", help="TPM2TOOLS_TCTI (default: tpm2-tools' own, /dev/tpmrm0)")
    p.set_defaults(func=_tpm_seal)

    p = sub.add_parser("reset", help="OpenPGP: factory reset (keys, PINs and data objects erased)",
                       parents=[common, kdf])
    p.add_argument("--dir", type=Path, required=True)
    p.set_defaults(func=_cmd(_reset))
    return card


__all__ = ["add_card_subcommands", "create_card", "import_key", "generate_key", "show_card", "change_pin",
           "ProvisionError", "parse_slot", "parse_algorithm", "parse_subject", "SLOT", "OBJECT_ID"]


def main_card(argv: list[str]) -> int:
    """`ccidgadget card COMMAND ...` as the CLI dispatches it."""
    parser = argparse.ArgumentParser(prog="ccidgadget")
    add_card_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["card", *argv])
    return args.func(args)
