# SPDX-License-Identifier: GPL-3.0-or-later
"""PIN entry on the board for PC_to_RDR_Secure (CCID §6.1.11).

The CCID core parses the host's structure (ccid/secure.py) and emits a
`Secure` event; the reader service awaits `PinPad.collect(slot, request)`,
which returns the PIN(s) a person entered, and builds and sends the APDU.
Two ways in, both on the daemon's loop:

- a keypad (an input-event device: digits, Enter, Backspace, Esc = cancel),
  driven through the pure `KeypadEntry` state machine;
- the control socket, `ccidgadget pin SLOT`: the command reads the PIN(s) on
  the board's own terminal without echo and sends them over the root-only
  socket (`submit`).

The outcome is a PIN, `PinEntryError(PIN_CANCELLED)` (Esc, `ccidgadget pin
--cancel`, `ccidgadget deny`) or `PinEntryError(PIN_TIMEOUT)`: libccid turns
bError 0xEF / 0xF0 into SW 6401 / 6400 for the host.  A host abort cancels
the waiting task.  PINs live in these objects only until the APDU is built;
nothing here logs one.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..cards.base import CardError
from ..ccid.constants import SlotError
from ..ccid.secure import EntryValidation, PinRequest

log = logging.getLogger(__name__)

PROMPTS = {"current": "the current PIN", "new": "the new PIN", "confirm": "the new PIN again"}


class PinEntryError(CardError):
    """The entry ended without a PIN; `slot_error` is the bError the host gets."""

    def __init__(self, slot_error: SlotError, message: str) -> None:
        super().__init__(message)
        self.slot_error = slot_error


class Key(enum.Enum):
    ENTER = "enter"
    BACKSPACE = "backspace"
    CANCEL = "cancel"


class Step(enum.Enum):
    """What one key press did (for the journal and the LED; never which digit)."""

    DIGIT = "digit"
    IGNORED = "ignored"          # too many digits, Enter with too few, Backspace on nothing
    NEXT = "next"                # one entry done, the next prompt begins
    MISMATCH = "mismatch"        # the two new PINs differ: both asked again
    DONE = "done"
    CANCELLED = "cancelled"


class KeypadEntry:
    """Digits from a keypad into the entries `request.prompts()` asks for (pure)."""

    def __init__(self, request: PinRequest) -> None:
        self.request = request
        self.prompts = request.prompts()
        self.values: dict[str, str] = {}
        self._digits: list[str] = []
        self.index = 0

    @property
    def prompt(self) -> str:
        return self.prompts[self.index]

    @property
    def typed(self) -> int:
        return len(self._digits)

    def key(self, key: str | Key) -> Step:
        request = self.request
        if key is Key.CANCEL:
            self._digits.clear()
            return Step.CANCELLED
        if key is Key.BACKSPACE:
            if not self._digits:
                return Step.IGNORED
            self._digits.pop()
            return Step.DIGIT
        if key is Key.ENTER:
            if EntryValidation.VALIDATION_KEY not in request.validation or len(self._digits) < request.min_digits:
                return Step.IGNORED
            return self._finish_entry()
        if not (isinstance(key, str) and len(key) == 1 and key.isdigit()):
            return Step.IGNORED
        if len(self._digits) >= request.max_digits:
            return Step.IGNORED
        self._digits.append(key)
        if len(self._digits) == request.max_digits and EntryValidation.MAX_SIZE_REACHED in request.validation:
            return self._finish_entry()
        return Step.DIGIT

    def timeout_reached(self) -> Step:
        """bEntryValidationCondition 04: the timeout validates what was typed, if it is enough."""
        if EntryValidation.TIMEOUT in self.request.validation and self.index == len(self.prompts) - 1 \
                and len(self._digits) >= self.request.min_digits:
            return self._finish_entry()
        return Step.IGNORED

    def _finish_entry(self) -> Step:
        value = "".join(self._digits)
        self._digits.clear()
        name = self.prompt
        if name == "confirm" and value != self.values["new"]:
            del self.values["new"]
            self.index = self.prompts.index("new")
            return Step.MISMATCH
        self.values[name] = value
        self.index += 1
        return Step.DONE if self.index == len(self.prompts) else Step.NEXT

    def result(self) -> tuple[str | None, str | None]:
        return self.values.get("current"), self.values.get("new")


@dataclass
class PendingEntry:
    slot: int
    request: PinRequest
    timeout: float
    future: asyncio.Future
    keypad: KeypadEntry
    started: float = field(default_factory=time.monotonic)
    since_wall: float = field(default_factory=time.time)

    def describe(self, now: float) -> dict:
        d = {"slot": self.slot, "waits_for": "pin", "prompt": self.keypad.prompt, "typed": self.keypad.typed,
             "since": round(self.since_wall, 1), "remaining_s": round(max(0.0, self.started + self.timeout - now), 1)}
        d.update(self.request.describe())
        d["timeout_s"] = self.timeout
        return d


class PinPad:
    """Pending PIN entries, one per slot at most; the keypad serves the oldest."""

    def __init__(self, *, default_timeout: float, max_timeout: float, keypad: bool, slots: set[int] | None) -> None:
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.has_keypad = keypad
        self.slots = slots
        self.entries: dict[int, PendingEntry] = {}
        self.listeners: list[Callable[[], None]] = []
        self.completed = 0
        self.cancelled = 0
        self.timed_out = 0

    def serves(self, slot: int) -> bool:
        return self.slots is None or slot in self.slots

    def timeout_for(self, request: PinRequest) -> float:
        """bTimeOut (0: our default), never more than the configured maximum."""
        return float(min(request.timeout or self.default_timeout, self.max_timeout))

    async def collect(self, slot: int, request: PinRequest) -> tuple[str | None, str | None]:
        if not self.serves(slot):
            raise PinEntryError(SlotError.CMD_NOT_SUPPORTED, f"slot {slot} has no PIN pad")
        if slot in self.entries:
            raise PinEntryError(SlotError.CMD_SLOT_BUSY, f"slot {slot} already waits for a PIN")
        loop = asyncio.get_running_loop()
        timeout = self.timeout_for(request)
        entry = PendingEntry(slot, request, timeout, loop.create_future(), KeypadEntry(request))
        self.entries[slot] = entry
        where = "type it on the keypad or run" if self.has_keypad else "run"
        log.info("slot %d waits for a PIN (%s, INS %02X, %d..%d characters, %s; %.0f s): %s 'ccidgadget pin %d'",
                 slot, request.operation.name.lower(), request.apdu[1], request.min_digits, request.max_digits,
                 ", ".join(PROMPTS[p] for p in entry.keypad.prompts), timeout, where, slot,
                 extra={"slot": slot, "event": "pin-wait"})
        self._changed()
        try:
            try:
                result = await asyncio.wait_for(asyncio.shield(entry.future), timeout)
            except asyncio.TimeoutError:
                if entry.keypad.timeout_reached() is Step.DONE:
                    result = entry.keypad.result()
                else:
                    self.timed_out += 1
                    log.info("slot %d: PIN entry timed out", slot, extra={"slot": slot, "event": "pin-timeout"})
                    raise PinEntryError(SlotError.PIN_TIMEOUT, "PIN entry timed out") from None
            if isinstance(result, PinEntryError):
                raise result
            self.completed += 1
            log.info("slot %d: PIN entered", slot, extra={"slot": slot, "event": "pin-entered"})
            return result
        except asyncio.CancelledError:
            log.info("slot %d: PIN entry cancelled by the host", slot, extra={"slot": slot, "event": "pin-abort"})
            raise
        finally:
            if self.entries.get(slot) is entry:
                del self.entries[slot]
            if not entry.future.done():
                entry.future.cancel()
            self._changed()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                log.exception("PIN pad listener failed")

    # -- the keypad ---------------------------------------------------------------------
    def key(self, key: str | Key, source: str = "keypad") -> Step | None:
        if not self.entries:
            return None
        entry = min(self.entries.values(), key=lambda e: e.started)
        before = entry.keypad.prompt
        step = entry.keypad.key(key)
        if step is Step.CANCELLED:
            self._finish(entry, PinEntryError(SlotError.PIN_CANCELLED, f"PIN entry cancelled on the {source}"))
        elif step is Step.DONE:
            self._finish(entry, entry.keypad.result())
        elif step is Step.NEXT:
            log.info("slot %d: %s entered; now %s", entry.slot, PROMPTS[before], PROMPTS[entry.keypad.prompt],
                     extra={"slot": entry.slot, "event": "pin-next"})
            self._changed()
        elif step is Step.MISMATCH:
            log.info("slot %d: the two new PINs differ; enter the new PIN again", entry.slot,
                     extra={"slot": entry.slot, "event": "pin-mismatch"})
            self._changed()
        return step

    def _finish(self, entry: PendingEntry, result) -> None:
        if isinstance(result, PinEntryError) and result.slot_error == SlotError.PIN_CANCELLED:
            self.cancelled += 1
            log.info("slot %d: %s", entry.slot, result, extra={"slot": entry.slot, "event": "pin-cancel"})
        if not entry.future.done():
            entry.future.set_result(result)

    # -- the control socket --------------------------------------------------------------
    def waiting(self, slot: int) -> PendingEntry:
        entry = self.entries.get(slot)
        if entry is None:
            raise LookupError(f"slot {slot} does not wait for a PIN")
        return entry

    def submit(self, slot: int, current: str | None, new: str | None) -> None:
        """PINs from `ccidgadget pin`; ValueError (never naming the PIN) if they do not fit."""
        entry = self.waiting(slot)
        request = entry.request
        for name, value in (("current", current), ("new", new)):
            wanted = (name == "current" and request.wants_current) or (name == "new" and request.wants_new)
            if wanted and value is None:
                raise ValueError(f"slot {slot} wants {PROMPTS[name]} as well")
            if not wanted and value is not None:
                raise ValueError(f"slot {slot} does not want {PROMPTS[name]} ({request.operation.name.lower()})")
            if wanted:
                problem = request.check_pin(value)
                if problem:
                    raise ValueError(f"{PROMPTS[name]}: {problem}")
        self._finish(entry, (current, new))

    def cancel(self, slot: int, by: str) -> bool:
        entry = self.entries.get(slot)
        if entry is None:
            return False
        self._finish(entry, PinEntryError(SlotError.PIN_CANCELLED, f"PIN entry cancelled by {by}"))
        return True

    def describe(self) -> list[dict]:
        now = time.monotonic()
        return [e.describe(now) for e in sorted(self.entries.values(), key=lambda e: e.slot)]
