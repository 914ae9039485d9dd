# SPDX-License-Identifier: GPL-3.0-or-later
"""Events the CCID core hands to its caller (`Reader.next_events()`).

Each event is a small immutable value.  The adapter owns the endpoints and the
card engines; the core only says what must happen next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .secure import PinRequest


@dataclass(frozen=True)
class BulkIn:
    """One complete RDR_to_PC message to write to bulk-IN.

    The adapter adds a zero-length packet itself when ``len(data)`` is a multiple
    of wMaxPacketSize (libccid reads into a 64 KiB buffer and would wait otherwise).
    """

    data: bytes


@dataclass(frozen=True)
class InterruptPending:
    """Something waits in `Reader.pop_interrupt()`; emitted when the queue goes from empty to non-empty."""


@dataclass(frozen=True)
class PowerOn:
    """Cold-reset the card: ``atr = await card.power_on(); reader.card_answer(token, atr)``."""

    slot: int
    token: int


@dataclass(frozen=True)
class PowerOff:
    """Deactivate the card.  The core has already answered the host; nothing comes back."""

    slot: int


@dataclass(frozen=True)
class Transmit:
    """Send one complete command APDU (XfrBlock chaining already undone): ``reader.card_answer(token, rapdu)``."""

    slot: int
    token: int
    apdu: bytes


@dataclass(frozen=True)
class Secure:
    """PC_to_RDR_Secure (§6.1.11): collect the PIN(s), send ``request.build_apdu(...)``, then
    ``reader.card_answer(token, rapdu)``, or ``reader.card_failed(token, PIN_CANCELLED / PIN_TIMEOUT)``."""

    slot: int
    token: int
    request: PinRequest


@dataclass(frozen=True)
class Cancel:
    """The request `token` was dropped (abort, removal, bus reset); a later answer to it is ignored."""

    slot: int
    token: int


Event = Union[BulkIn, InterruptPending, PowerOn, PowerOff, Transmit, Secure, Cancel]
