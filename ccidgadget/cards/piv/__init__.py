"""The emulated PIV card (NIST SP 800-73-4 with the Yubico extensions).

`PivCard.from_directory(path)` is what the daemon uses; `PivCard.create()` /
`PivCard.open()` take a `CardStore`.  See docs/card-state-format.md for the
state on disk and the choices made (ATR, version reported, touch policy).
"""

from .applet import PivApplet, PivCard
from .constants import (ALGORITHM, INS, MANAGEMENT_ALGORITHM, OBJECT_ID, PIN_POLICY, PIV_AID, SLOT,
                        TOUCH_POLICY)
from .state import PivState


def build_card(spec, context) -> PivCard:
    """`--card emulated --type piv` (options.CARD_TYPES): the card in its state directory, made on first use."""
    return PivCard.from_directory(context.card_dir(spec), inserted=spec.inserted, options=context.vault_options())


__all__ = ["PivCard", "PivApplet", "PivState", "ALGORITHM", "INS", "MANAGEMENT_ALGORITHM", "OBJECT_ID",
           "PIN_POLICY", "PIV_AID", "SLOT", "TOUCH_POLICY"]
