"""The card options every front end shares, and the one way they become a card.

`vpcd-card` and `vscard-card` offer the same cards as the daemon's slots: the
options below describe one card, `card_spec` turns them into the daemon's
`SlotSpec`, and `build_card_from_args` builds it with the daemon's own
`build_card`, so a front end never constructs an engine itself.  The list of
emulated types is the daemon's (`EMULATED_TYPES`): a card type added there is
offered by every front end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cards.base import Card
from ..engines import CardContext, EngineError, build_card
from ..options import CARD_TYPES as _CARD_TYPES
from ..options import DEFAULT_CARD_TYPE, DEFAULT_CONFIG_PATH, SlotSpec

#: The emulated card types a front end offers: the daemon's (options.CARD_TYPES).
CARD_TYPES: tuple[str, ...] = tuple(_CARD_TYPES)

#: Where an ordinary user's cards keep their state (cards/NAME below it).
DEFAULT_USER_STATE_DIR = Path.home() / ".local/share/ccidgadget"


def add_card_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                       card_types: tuple[str, ...] | None = None, *,
                       engines: tuple[str, ...] = ("emulated",),
                       state_dir: bool = True) -> None:
    """--type, --name, --cert, --db, --pin-file, --db-password-file, --config [, --card, --reader, --shared]
    [, --state-dir].

    With more than one engine, `--card ENGINE` chooses (default the first),
    `--reader REGEX` names the PC/SC reader of `--card pcsc` and `--shared`
    leaves that card to other applications too.
    """
    card_types = tuple(card_types or CARD_TYPES)
    default = DEFAULT_CARD_TYPE if DEFAULT_CARD_TYPE in card_types else card_types[0]
    p.add_argument("--type", dest="card_type", choices=card_types, default=default,
                   help="card to emulate (default %(default)s)")
    if len(engines) > 1:
        p.add_argument("--card", dest="engine", choices=engines, default=engines[0],
                       help="where the card comes from: emulated here, or pcsc, the card in a PC/SC reader of "
                            "this machine (default %(default)s)")
        p.add_argument("--reader", metavar="REGEX",
                       help="pcsc: the PC/SC reader to relay (exact name, shell glob or substring)")
        p.add_argument("--shared", dest="exclusive", action="store_false",
                       help="pcsc: share the real card with other applications of this machine "
                            "(default: exclusive while relayed)")
    else:
        p.set_defaults(engine=engines[0], reader=None, exclusive=True)
    if state_dir:
        p.add_argument("--state-dir", type=Path, default=DEFAULT_USER_STATE_DIR,
                       help="where the emulated card keeps its state, in cards/NAME (default %(default)s)")
    p.add_argument("--name", help="the card's directory name under STATE_DIR/cards (default slot0-TYPE)")
    p.add_argument("--cert", dest="certs", action="append",
                   help="CAC: certificate nickname (with --db) or PEM/DER/PKCS#12 file; three times")
    p.add_argument("--db", metavar="sql:DIR", help="CAC: NSS database holding the three certificates")
    p.add_argument("--pin-file", metavar="FILE",
                   help="CAC: file holding the card PIN (default 12345678, or the NSS password)")
    p.add_argument("--db-password-file", metavar="FILE",
                   help="CAC: file holding the NSS database password when it is not the PIN")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"configuration whose [vault] keys apply: the device secret a card is bound to, the KDF "
                        f"cost (default: {DEFAULT_CONFIG_PATH} if it exists)")


def card_spec(args: argparse.Namespace) -> SlotSpec:
    """The daemon's slot description of the card the options name."""
    return SlotSpec(engine=args.engine, type=args.card_type, name=args.name, certs=list(args.certs or ()),
                    db=args.db, pin_file=args.pin_file, db_password_file=args.db_password_file,
                    reader=args.reader, exclusive=args.exclusive)


def build_card_from_args(args: argparse.Namespace, prog: str, slot: int = 0) -> Card:
    """The card, built as the daemon builds slot `slot`'s (a bad combination exits with the reason)."""
    try:
        return build_card(card_spec(args), CardContext(slot=slot, state_dir=args.state_dir,
                                                       vault=vault_options(args, prog)))
    except EngineError as e:
        raise SystemExit(f"{prog}: {e}") from None


def vault_options(args: argparse.Namespace, prog: str):
    """[vault] of the configuration file, read as `ccidgadget card` reads it (None: the defaults)."""
    if getattr(args, "config", None) is None and not DEFAULT_CONFIG_PATH.exists():
        return None                     # nothing to read (and no need to load the provisioning code)
    from ..cards.provision import ProvisionError, vault_options_from_config
    try:
        return vault_options_from_config(getattr(args, "config", None))
    except ProvisionError as e:
        raise SystemExit(f"{prog}: {e}") from None
