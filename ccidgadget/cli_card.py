"""`ccidgadget card ...`: create and provision emulated PIV and OpenPGP cards offline.

The command line of the provisioning functions (cards/provision.py for PIV,
cards/openpgp/provision.py for OpenPGP): `add_card_subcommands(subparsers)`
registers the argparse sub-commands; the CLI calls `args.func(args)`, which
returns the exit status.  Here are only parsing, prompting and printing.

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
import sys
from pathlib import Path

from .cards.device_secret import DeviceSecretError
from .cards.keys import PIV_ALGORITHMS
from .cards.piv.constants import DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, DEFAULT_PUK, PIN_POLICY, TOUCH_POLICY
from .cards.provision import (ProvisionError, change_pin, create_card, generate_key, import_key, parse_algorithm,
                              parse_management_algorithm, parse_slot, show_card, stored_card_type,
                              vault_options_from_config)
from .cards.vault import VaultOptions


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


def _cmd(fn, openpgp=None):
    """`fn` as a verb: a provisioning error is its message and exit status 1; `openpgp` runs instead of
    `fn` when the card in --dir (or --type) is an OpenPGP card."""
    def run(args) -> int:
        from .cards.openpgp.provision import OpenPgpProvisionError
        try:
            (openpgp if openpgp is not None and _is_openpgp(args) else fn)(args)
            return 0
        except (ProvisionError, OpenPgpProvisionError) as e:
            print(f"ccidgadget card: {e}", file=sys.stderr)
            return 1
    return run


def _verb(openpgp=None):
    """@_verb(openpgp=f): `_cmd(fn, f)` as a decorator."""
    return lambda fn: _cmd(fn, openpgp)


def vault_options(args) -> VaultOptions:
    """The [vault] keys of the configuration (``--config``), with ``--kdf-log2-n`` over them."""
    return vault_options_from_config(getattr(args, "config", None), getattr(args, "kdf_log2_n", None))


# -- OpenPGP cards: the logic is in cards/openpgp/provision.py, here only its command line ---------

def _is_openpgp(args) -> bool:
    if getattr(args, "type", None):
        return args.type == "openpgp"
    return stored_card_type(args.dir) == "openpgp"


def _openpgp_create(args) -> None:
    from .cards.openpgp import provision as pgp
    card = pgp.create_card(args.dir, pw1=args.pin or pgp.DEFAULT_PW1, pw3=args.admin_pin or pgp.DEFAULT_PW3,
                           serial=args.serial, options=vault_options(args))
    print(f"created OpenPGP card {card.state.serial:08X} in {args.dir}")


def _openpgp_import(args) -> None:
    from .cards.openpgp import provision as pgp
    info = pgp.import_key(args.dir, pgp.parse_key_slot(args.slot), Path(args.file), password=args.password,
                          options=vault_options(args))
    print(f"imported {info['algorithm']} key into {info['slot']}, fingerprint {info['fingerprint']}")


def _openpgp_generate(args) -> None:
    from .cards.openpgp import provision as pgp
    info = pgp.generate_key(args.dir, pgp.parse_key_slot(args.slot), pgp.parse_algorithm(args.algorithm),
                            options=vault_options(args))
    print(f"generated {info['algorithm']} key in {info['slot']}, fingerprint {info['fingerprint']}")


def _openpgp_show(args) -> None:
    from .cards.openpgp import provision as pgp
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
    from .cards.openpgp import provision as pgp
    which = "pw3" if args.admin else "pw1"
    what = "admin PIN" if args.admin else "PIN"
    old = args.old if args.old is not None else _read_secret(f"current {what}: ")
    new = args.new if args.new is not None else _read_secret(f"new {what}: ")
    pgp.change_pin(args.dir, old, new, which=which, options=vault_options(args))
    print(f"{what} changed")


def _reset(args) -> None:
    raise ProvisionError("only OpenPGP cards have `card reset` (a PIV card is reset with yubico-piv-tool -a reset)")


def _openpgp_reset(args) -> None:
    from .cards.openpgp import provision as pgp
    info = pgp.reset_card(args.dir, vault_options(args))
    print(f"OpenPGP card {info['serial']} reset to factory defaults (PIN 123456, admin PIN 12345678)")


@_verb(openpgp=_openpgp_create)
def _create(args) -> None:
    key = bytes.fromhex(args.mgmt_key) if args.mgmt_key else DEFAULT_MANAGEMENT_KEY
    card = create_card(args.dir, pin=args.pin or DEFAULT_PIN, puk=args.puk or DEFAULT_PUK, mgmt_key=key,
                       mgmt_alg=parse_management_algorithm(args.mgmt_alg), serial=args.serial,
                       options=vault_options(args))
    print(f"created PIV card {card.state.serial} in {args.dir}")


@_verb(openpgp=_openpgp_import)
def _import(args) -> None:
    entry = import_key(args.dir, parse_slot(args.slot), Path(args.file), password=args.password,
                       pin_policy=PIN_POLICY[args.pin_policy.upper()] if args.pin_policy else None,
                       touch_policy=TOUCH_POLICY[args.touch_policy.upper()] if args.touch_policy else None,
                       options=vault_options(args))
    print(f"imported {entry.key.algorithm.cli_name} key into slot {args.slot}")


@_verb(openpgp=_openpgp_generate)
def _generate(args) -> None:
    entry = generate_key(args.dir, parse_slot(args.slot), parse_algorithm(args.algorithm), subject=args.subject,
                         csr_out=Path(args.csr) if args.csr else None, days=args.days,
                         pin_policy=PIN_POLICY[args.pin_policy.upper()] if args.pin_policy else None,
                         touch_policy=TOUCH_POLICY[args.touch_policy.upper()] if args.touch_policy else None,
                         options=vault_options(args))
    print(f"generated {entry.key.algorithm.cli_name} key in slot {args.slot}"
          + (f"; CSR written to {args.csr}" if args.csr else "; self-signed certificate stored"))


@_verb(openpgp=_openpgp_show)
def _show(args) -> None:
    info = show_card(args.dir, vault_options(args))
    if args.json:
        import json
        print(json.dumps(info, indent=2))
    else:
        _print_show(info)


@_verb(openpgp=_openpgp_change_pin)
def _change_pin(args) -> None:
    which = "puk" if args.puk else "pin"
    old = args.old if args.old is not None else _read_secret(f"current {which.upper()}: ")
    new = args.new if args.new is not None else _read_secret(f"new {which.upper()}: ")
    change_pin(args.dir, old, new, which=which, options=vault_options(args))
    print(f"{which.upper()} changed")


@_verb()
def _new_device_secret(args) -> None:
    from .cards.device_secret import create_file_secret
    try:
        secret = create_file_secret(args.file)
    except (OSError, DeviceSecretError) as e:
        raise ProvisionError(f"{args.file}: {getattr(e, 'strerror', None) or e}") from None
    print(f"device secret written to {args.file} ({secret.fingerprint}); configure [vault] device_secret = "
          f"\"file\", device_secret_path = \"{args.file}\" before creating cards")


@_verb()
def _tpm_seal(args) -> None:
    from .cards.device_secret import tpm_seal
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
    p.set_defaults(func=_cmd(_reset, _openpgp_reset))
    return card


__all__ = ["add_card_subcommands", "main_card", "vault_options"]


def main_card(argv: list[str]) -> int:
    """`ccidgadget card COMMAND ...` as the CLI dispatches it."""
    parser = argparse.ArgumentParser(prog="ccidgadget")
    add_card_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["card", *argv])
    return args.func(args)
