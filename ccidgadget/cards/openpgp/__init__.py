# SPDX-License-Identifier: GPL-3.0-or-later
"""The emulated OpenPGP card (OpenPGP smart card application 3.4), for GnuPG, OpenSC and ssh.

`OpenPgpCard.from_directory(path)` is what the daemon uses; docs/openpgp.md describes the card
and docs/card-state-format.md its state on disk.
"""

from .applet import OpenPgpApplet, OpenPgpCard
from .constants import INS, KEY, TAG
from .state import OpenPgpState


def build_card(spec, context) -> OpenPgpCard:
    """`--card emulated --type openpgp` (options.CARD_TYPES): the card in its state directory, made on first use."""
    return OpenPgpCard.from_directory(context.card_dir(spec), inserted=spec.inserted, options=context.vault_options())


__all__ = ["OpenPgpCard", "OpenPgpApplet", "OpenPgpState", "INS", "KEY", "TAG"]
