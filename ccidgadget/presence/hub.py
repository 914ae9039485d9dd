# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a card's "did a person confirm this?" meets the buttons, on the daemon's one loop.

A card asks from its worker thread (`SlotPresence.confirm`, the `UserPresence`
of cards/presence.py); the question is handed to the loop, which owns every
source: input-event keys and GPIO lines (their file descriptors are readers of
the loop), the control socket's `confirm`/`deny`, the timer.  The first of
them to answer resolves a `concurrent.futures.Future` the worker waits on.
No source thread ever reaches into a card.

Rules:
- only a press that happens while the wait is open counts (no pressing ahead);
- a press confirms the oldest wait among the slots that button serves;
- `deny`, the timeout and a host abort (CCID Abort, bus reset, card removed:
  the service's Cancel) answer False, which the card turns into 6982;
- an abort that arrives while the card is still computing, before it asks,
  is kept until that command ends on the card's worker (see `abort`), so the
  late question is refused at once instead of blinking for a host that left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..cards.presence import UserPresence

log = logging.getLogger(__name__)

#: Extra seconds a worker waits beyond the timeout before it stops trusting the loop.
WORKER_GRACE = 5.0


@dataclass
class Wait:
    slot: int
    what: str
    started: float
    timeout: float
    future: concurrent.futures.Future
    timer: asyncio.TimerHandle | None = None
    since_wall: float = field(default_factory=time.time)

    def describe(self, now: float) -> dict:
        return {"slot": self.slot, "waits_for": "touch", "what": self.what,
                "since": round(self.since_wall, 1), "remaining_s": round(max(0.0, self.started + self.timeout - now), 1)}


class SlotPresence(UserPresence):
    """The `UserPresence` of one slot's card."""

    def __init__(self, hub: "PresenceHub", slot: int) -> None:
        self.hub = hub
        self.slot = slot
        self._abort = threading.Event()
        #: Runs a callable on the card's worker after the command it runs now (EmulatedCard.run_after_current).
        self.after_current: Callable[[Callable[[], None]], None] | None = None

    @property
    def available(self) -> bool:
        return self.hub.serves(self.slot)

    def confirm(self, what: str) -> bool:
        if not self.available or self._abort.is_set():
            return False
        done: concurrent.futures.Future = concurrent.futures.Future()
        loop = self.hub.loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(self.hub._begin, self, what, done)
        except RuntimeError:                    # the loop is closed: the daemon is stopping
            return False
        try:
            return bool(done.result(timeout=self.hub.timeout + WORKER_GRACE))
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return False

    def abort(self) -> None:
        """The host dropped this slot's command (loop side)."""
        self._abort.set()
        self.hub._resolve(self.slot, False, "cancelled by the host")
        clear = self._abort.clear
        if self.after_current is not None:
            self.after_current(clear)
        else:
            clear()

    @property
    def aborting(self) -> bool:
        return self._abort.is_set()


class PresenceHub:
    """Open touch waits, one per slot at most (a slot runs one command at a time)."""

    def __init__(self, *, timeout: float, slots: set[int] | None) -> None:
        self.timeout = timeout
        self.slots = slots                     # slots with a source; None = every slot
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waits: dict[int, Wait] = {}
        self._slot_presence: dict[int, SlotPresence] = {}
        self.listeners: list[Callable[[], None]] = []   # told when waits open or close (status, LED)
        self.confirmed = 0
        self.denied = 0
        self.timed_out = 0
        self.cancelled = 0

    def serves(self, slot: int) -> bool:
        return self.slots is None or slot in self.slots

    def for_slot(self, slot: int) -> SlotPresence:
        if slot not in self._slot_presence:
            self._slot_presence[slot] = SlotPresence(self, slot)
        return self._slot_presence[slot]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def stop(self) -> None:
        for slot in list(self.waits):
            self._resolve(slot, False, "the daemon is stopping")
        self.loop = None

    # -- loop side --------------------------------------------------------------------
    def _begin(self, presence: SlotPresence, what: str, done: concurrent.futures.Future) -> None:
        slot = presence.slot
        if presence.aborting or self.loop is None:
            done.set_result(False)
            return
        if slot in self.waits:                 # cannot happen (one command per slot); refuse the older
            self._resolve(slot, False, "replaced by a newer request")
        wait = Wait(slot, what, time.monotonic(), self.timeout, done)
        wait.timer = self.loop.call_later(self.timeout, self._resolve, slot, False, "timed out")
        self.waits[slot] = wait
        log.info("slot %d waits for a touch: %s (%.0f s; press the button or 'ccidgadget confirm %d')",
                 slot, what, self.timeout, slot, extra={"slot": slot, "event": "presence-wait"})
        self._changed()

    def _resolve(self, slot: int, confirmed: bool, how: str) -> bool:
        wait = self.waits.pop(slot, None)
        if wait is None:
            return False
        if wait.timer is not None:
            wait.timer.cancel()
        if not wait.future.done():
            wait.future.set_result(confirmed)
        if confirmed:
            self.confirmed += 1
        elif how == "timed out":
            self.timed_out += 1
        elif how.startswith("cancelled"):
            self.cancelled += 1
        else:
            self.denied += 1
        log.info("slot %d: %s %s (%s)", slot, wait.what, "confirmed" if confirmed else "refused", how,
                 extra={"slot": slot, "event": "presence-confirm" if confirmed else "presence-refuse"})
        self._changed()
        return True

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                log.exception("presence listener failed")

    def press(self, source: str, slots: set[int] | None) -> int | None:
        """A button went down: confirm the oldest wait it serves; the slot, or None."""
        candidates = [w for w in self.waits.values() if slots is None or w.slot in slots]
        if not candidates:
            log.debug("%s pressed; nothing waits for it", source)
            return None
        wait = min(candidates, key=lambda w: w.started)
        self._resolve(wait.slot, True, f"by {source}")
        return wait.slot

    def confirm(self, slot: int, by: str) -> bool:
        return self._resolve(slot, True, f"by {by}")

    def deny(self, slot: int, by: str) -> bool:
        return self._resolve(slot, False, f"denied by {by}")

    def cancel(self, slot: int) -> None:
        """The host gave up on the slot's command (Abort, reset, removal)."""
        presence = self._slot_presence.get(slot)
        if presence is not None:
            presence.abort()

    def describe(self) -> list[dict]:
        now = time.monotonic()
        return [w.describe(now) for w in sorted(self.waits.values(), key=lambda w: w.slot)]
