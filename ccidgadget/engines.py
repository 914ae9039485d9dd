# SPDX-License-Identifier: GPL-3.0-or-later
"""The card factory: from a `SlotSpec` to a running engine's `Card`.

The daemon, ``ccidgadget vpcd-card`` and every other front end build their cards here, so a card type
registered in `options.CARD_TYPES` is available everywhere.  The builder of an engine or card type is
imported only when a slot uses it (see options.py).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cards.base import Card, CardSetupError
from .options import CARD_TYPES, ENGINES, Engine, SlotSpec, slot_problems

log = logging.getLogger(__name__)


class EngineError(Exception):
    """A slot cannot be built as specified (the message says why and what is allowed)."""


@dataclass(frozen=True)
class CardContext:
    """What a builder may know about where its card lives."""

    slot: int
    state_dir: Path
    #: Other slots or functions share the USB device: a VSCard reader cannot come and go with its client
    #: (QEMU's detach-on-ReaderRemove needs a gadget of its own), it stays attached with an empty slot.
    shared_gadget: bool = False
    #: emulated cards' keys at rest ([vault]: cards.vault.VaultOptions); None: the defaults
    vault: object | None = None

    def vault_options(self):
        from .cards.vault import DEFAULT_OPTIONS
        return self.vault or DEFAULT_OPTIONS

    def card_dir(self, spec: SlotSpec) -> Path:
        """An emulated card's state directory: STATE_DIR/cards/NAME (default slotN-TYPE)."""
        return Path(self.state_dir) / "cards" / (spec.name or f"slot{self.slot}-{spec.type}")

    @staticmethod
    def read_secret(path: str | None, what: str) -> str | None:
        """A PIN or password from a file (0600): never from the command line, where `ps` shows it."""
        if path is None:
            return None
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as e:
            raise EngineError(f"{what} {path}: {e.strerror}") from None


Builder = Callable[[SlotSpec, CardContext], Card]


def builder_for(spec: SlotSpec) -> Builder:
    info = ENGINES[spec.engine]
    target = info.builder if spec.engine is not Engine.EMULATED else CARD_TYPES[spec.type].builder
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_card(spec: SlotSpec, context: CardContext) -> Card:
    """Construct the engine of one slot; EngineError says why it cannot be (bad spec, unusable state...)."""
    problems = slot_problems(spec)
    if problems:
        raise EngineError("; ".join(f"{p.key}: {p.message}" for p in problems))
    try:
        return builder_for(spec)(spec, context)
    except CardSetupError as e:
        raise EngineError(f"slot {context.slot} ({spec.label}): {e}") from None
