"""The one card interface every engine implements.

The CCID reader never knows which engine sits behind a slot: it asks for an ATR,
sends APDUs, powers the card off, and listens for presence changes.  Engines
are asyncio-friendly: a slow engine (RSA key generation, a card across the
network, a PC/SC call) awaits without blocking other slots.

Emulated cards are synchronous APDU processors; `EmulatedCard` runs them on a
single worker thread per card, which both keeps the event loop free and
serialises access to the card's state.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
from typing import Callable

from ..options import Engine
from .presence import NO_PRESENCE, UserPresence

log = logging.getLogger(__name__)

PresenceListener = Callable[[bool], None]


class CardSetupError(Exception):
    """A card engine cannot be built: unusable state, bad key material... (the message says which and why)."""


class CardError(Exception):
    """The card cannot answer; the reader turns this into a CCID slot error."""

    #: The bError the host gets, when not the reader's usual one for the kind of error (ICC_MUTE, HW_ERROR)
    slot_error: int | None = None


class CardAbsent(CardError):
    """No card in the slot (removed, client gone, reader unplugged)."""


class CardMute(CardError):
    """A card is there but did not answer (timeout, protocol failure)."""


class CardHardwareError(CardError):
    """The engine failed in a way the host should see as a hardware error."""


class Card(abc.ABC):
    """A card engine behind one slot.

    Contract:
    - `present` says whether a card is in the slot now; engines call
      `_set_present()` when that changes and every listener is told.
    - `power_on()` cold-resets the card and returns its ATR.
    - `transmit(apdu)` sends one complete command APDU (short or extended,
      never chained at the transport level) and returns the complete response
      APDU including SW1 SW2.
    - `power_off()` deactivates the card; transmit after it raises CardMute.
    - Every method may raise CardAbsent, CardMute or CardHardwareError; any
      other exception is a bug in the engine and the reader reports a
      hardware error for it.
    """

    #: The engine's name as configuration, status and the journal spell it (`options.Engine`).
    engine: Engine

    def __init__(self) -> None:
        self._present = False
        self._listeners: list[PresenceListener] = []

    # -- presence -----------------------------------------------------------
    @property
    def present(self) -> bool:
        return self._present

    def add_presence_listener(self, listener: PresenceListener) -> None:
        self._listeners.append(listener)

    def remove_presence_listener(self, listener: PresenceListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _set_present(self, present: bool) -> None:
        if present == self._present:
            return
        self._present = present
        for listener in list(self._listeners):
            try:
                listener(present)
            except Exception:  # a listener's bug must not break the engine
                log.exception("presence listener failed")

    # -- life cycle ---------------------------------------------------------
    async def start(self) -> None:
        """Open sockets, load state, begin watching for presence."""

    async def stop(self) -> None:
        """Release everything `start` took."""

    def describe(self) -> dict:
        """Facts for `ccidgadget status` (never secrets)."""
        return {"engine": self.engine, "present": self.present}

    # -- the card -----------------------------------------------------------
    @abc.abstractmethod
    async def power_on(self) -> bytes:
        """Cold reset; return the ATR."""

    @abc.abstractmethod
    async def power_off(self) -> None:
        """Deactivate the card."""

    @abc.abstractmethod
    async def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU, return the response APDU (data + SW1 SW2)."""

    def transmit_now(self, apdu: bytes) -> bytes | None:
        """The response APDU if the engine has it without waiting for anything, else None (then `transmit`).

        The reader asks this first: an answer computed in microseconds then leaves in the same turn of the
        event loop as the command arrived, with no task and no loop hop (they cost more than the card).
        """
        return None

    def transmit_future(self, apdu: bytes) -> "concurrent.futures.Future[bytes] | asyncio.Future[bytes] | None":
        """The response APDU as a future, if the engine can start the command now: a future its worker
        thread completes (emulated cards) or one it resolves from the loop when the answer arrives (the
        network engines); else None (then `transmit`).  Raises CardError at once for what `transmit` would
        refuse.  Cancelling the future gives the command up, as cancelling `transmit` does.

        The reader service asks this after `transmit_now`: the answer then reaches the host from the future's
        done callback, where a task awaiting `transmit` costs three or four more turns of the loop.
        """
        return None


class EmulatedCard(Card):
    """Base for cards computed on the board.

    Subclasses implement the synchronous `atr()`, `reset()` and
    `process_apdu()`.  Commands whose instruction is in `QUICK_INS` (reads
    from memory: SELECT, GET DATA, GET RESPONSE...) run inline on the event
    loop; everything else (crypto, PIN hashing, key generation, anything that
    writes state to disk) runs on this card's own worker thread, so a slow
    operation stalls neither the event loop nor any other slot.  The CCID
    core lets a slot run one command at a time, so the card's state is never
    touched by two threads at once.  The hop to the worker costs about 0.1 ms
    natively and 1.5 ms in the TCG test guest, so it is worth skipping on
    the commands that dominate a session.
    """

    engine = Engine.EMULATED
    #: Instruction bytes that only read in-memory state and finish in microseconds.
    QUICK_INS: frozenset[int] = frozenset()

    def __init__(self, *, inserted: bool = True, presence: UserPresence = NO_PRESENCE) -> None:
        super().__init__()
        #: Asked (from the worker thread) before operations a touch policy guards.
        self.presence = presence
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"card-{type(self).__name__}")
        self._powered = False
        self._inserted_at_start = inserted

    async def start(self) -> None:
        self._set_present(self._inserted_at_start)

    async def stop(self) -> None:
        self._power_lost()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # Simulated insertion/removal (control socket, tests).
    def insert(self) -> None:
        self._set_present(True)

    def remove(self) -> None:
        self._powered = False
        self._set_present(False)
        self._power_lost()

    def _power_lost(self) -> None:
        # Deactivation (ISO 7816-3 §6.4) loses what a card holds in RAM: PIN verified, and with it
        # an unlocked data key (cards/vault.py).  Queued behind any command still running.
        try:
            self._executor.submit(self.reset)
        except RuntimeError:            # executor already shut down
            pass

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def run_after_current(self, fn: Callable[[], None]) -> None:
        """Run `fn` on this card's worker once the command it runs now (if any) has ended.

        The worker is one thread taking jobs in order, so `fn` runs before any
        command submitted later (the presence hub clears an abort with it).
        """
        try:
            self._executor.submit(fn)
        except RuntimeError:        # the worker is shut down: nothing runs on it any more
            fn()

    async def power_on(self) -> bytes:
        if not self.present:
            raise CardAbsent("no card in the slot")
        await self._run(self.reset)
        self._powered = True
        return self.atr()

    async def power_off(self) -> None:
        self._powered = False
        self._power_lost()

    async def transmit(self, apdu: bytes) -> bytes:
        if not self.present:
            raise CardAbsent("no card in the slot")
        if not self._powered:
            raise CardMute("card is not powered")
        apdu = bytes(apdu)
        if len(apdu) >= 2 and apdu[1] in self.QUICK_INS:
            return self.process_apdu(apdu)
        return await self._run(self.process_apdu, apdu)

    def transmit_now(self, apdu: bytes) -> bytes | None:
        # In-memory reads run on the loop; anything else (and every error case) goes through transmit().
        if len(apdu) >= 2 and apdu[1] in self.QUICK_INS and self._powered and self.present:
            return self.process_apdu(bytes(apdu))
        return None

    def transmit_future(self, apdu: bytes) -> "concurrent.futures.Future[bytes]":
        # what transmit() does for a command that is not QUICK_INS (transmit_now answered those)
        if not self.present:
            raise CardAbsent("no card in the slot")
        if not self._powered:
            raise CardMute("card is not powered")
        return self._executor.submit(self.process_apdu, bytes(apdu))

    # -- what a concrete emulated card provides -----------------------------
    @abc.abstractmethod
    def atr(self) -> bytes:
        """The card's answer to reset."""

    def reset(self) -> None:
        """Forget volatile state (selected applet, PIN verified, chaining)."""

    @abc.abstractmethod
    def process_apdu(self, apdu: bytes) -> bytes:
        """One command APDU in, one response APDU out (synchronous)."""
