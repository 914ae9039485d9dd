# SPDX-License-Identifier: GPL-3.0-or-later
"""User presence as a card sees it: one question, "did a person confirm this?".

A card that guards an operation with a touch (PIV touch policy, OpenPGP UIF
D6-D8) asks the `UserPresence` it was given.  Emulated cards run their
cryptography on their own worker thread (`EmulatedCard`), so `confirm()` is
called there and may block; the answer comes from the event loop, where the
presence sources (an input-event key, a GPIO line, `ccidgadget confirm SLOT`)
deliver their events.  While it blocks, the reader keeps the host waiting with
CCID time extensions and the other slots keep working.

`NO_PRESENCE` is what a card has when no source is configured: it says so
(`available` is False, so a card can tell the host "no button", e.g. OpenPGP
7F74) and refuses every confirmation, which the card answers with "security
status not satisfied" (6982).
"""

from __future__ import annotations

import abc


class UserPresence(abc.ABC):
    """Where a card asks a person to confirm an operation."""

    @property
    @abc.abstractmethod
    def available(self) -> bool:
        """A source of confirmations (button, GPIO line, control socket) is configured."""

    @abc.abstractmethod
    def confirm(self, what: str) -> bool:
        """Wait for a person; True if they confirmed, False on deny, timeout or host abort.

        `what` names the operation for the journal and `status` ("PIV 9A sign",
        "OpenPGP decipher"); it never contains key material or a PIN.
        """


class _NoPresence(UserPresence):
    @property
    def available(self) -> bool:
        return False

    def confirm(self, what: str) -> bool:
        return False


#: The presence of a card with no source configured.
NO_PRESENCE: UserPresence = _NoPresence()
