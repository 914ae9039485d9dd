"""The reader service: the sans-IO CCID core wired to card engines and a USB transport.

This is the only place where the protocol core meets asyncio.  It is
transport-agnostic: the FunctionFS adapter (ccidgadget.usb.function) and the
in-process test/benchmark transport both implement `Transport`.

Flow for one XfrBlock:
    transport -> service.bulk_out(bytes) -> Reader.receive_bulk_out
    Reader emits Transmit(slot, token, apdu) -> a task awaits card.transmit
    -> Reader.card_answer(token, rapdu) -> BulkIn(message) -> transport.send_bulk_in
While a card works, a per-slot timer asks the core for time extensions so the
host's read timeout never expires (CCID rev 1.1 §6.2.6, bmCommandStatus 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from ..cards.base import Card, CardAbsent, CardError, CardHardwareError, CardMute
from ..ccid import (TIME_EXTENSION_INTERVAL, BulkIn, Cancel, InterruptPending, PowerOff, PowerOn, Reader,
                    ReaderConfig, Secure, SlotError, Transmit)
from ..ccid.secure import PinRequest

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send_bulk_in(self, data: bytes) -> None: ...
    def interrupt_pending(self) -> None: ...


@dataclass
class SlotStats:
    """What `ccidgadget status` shows per slot (never APDU contents)."""

    apdus: int = 0
    power_ons: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: float = 0.0


@dataclass
class _Pending:
    task: asyncio.Task
    timer: asyncio.TimerHandle | None = None
    started: float = field(default_factory=time.monotonic)


class ReaderService:
    """Runs one CCID reader: a `Reader` core, one card per slot, one transport."""

    def __init__(self, cards: list[Card], *, config: ReaderConfig | None = None,
                 time_extension_interval: float = TIME_EXTENSION_INTERVAL) -> None:
        if not cards:
            raise ValueError("a reader needs at least one slot")
        self.cards = list(cards)
        self.reader = Reader(config or ReaderConfig(slots=len(cards)))
        self.transport: Transport | None = None
        self.stats = [SlotStats() for _ in cards]
        self.time_extension_interval = time_extension_interval
        self._pending: dict[int, tuple[int, _Pending]] = {}   # token -> (slot, pending)
        self._listeners = []
        #: Told the slot whenever the host drops a command (Abort, bus reset, removal): frees a touch wait.
        self.cancel_listeners: list[Callable[[int], None]] = []
        #: PC_to_RDR_Secure: collects the PIN(s) (current, new) for a request (presence/pinpad.py).
        self.pin_entry: Callable[[int, PinRequest], Awaitable[tuple[str | None, str | None]]] | None = None

    # -- life cycle ---------------------------------------------------------
    async def start(self) -> None:
        self._listeners = [lambda present, slot=slot: self._presence(slot, present)
                           for slot in range(len(self.cards))]
        for slot, card in enumerate(self.cards):
            card.add_presence_listener(self._listeners[slot])
            await card.start()
            # A card already present at start-up is announced like an insertion.
            if card.present:
                self.reader.set_card_present(slot, True)
        self._flush()

    async def stop(self) -> None:
        for token, (_, pending) in list(self._pending.items()):
            pending.task.cancel()
            if pending.timer:
                pending.timer.cancel()
        self._pending.clear()
        for card in self.cards:
            try:
                await card.stop()
            except Exception:
                log.exception("stopping a card engine failed")

    async def replace_card(self, slot: int, card: Card) -> None:
        """Swap one slot's engine while the reader stays on the bus (configuration reload).

        The host sees the old card leave; whatever it had in flight fails as
        'card absent'.  The new engine's card, if present, is then inserted.
        """
        old = self.cards[slot]
        old.remove_presence_listener(self._listeners[slot])
        self._presence(slot, False)
        for token, (pending_slot, pending) in list(self._pending.items()):
            if pending_slot == slot:
                pending.task.cancel()
                self._failed(slot, token, CardAbsent("the slot's card engine was replaced"))
        self._flush()
        try:
            await old.stop()
        except Exception:
            log.exception("slot %d: stopping the old card engine failed", slot)
        self.cards[slot] = card
        self.stats[slot] = SlotStats()
        card.add_presence_listener(self._listeners[slot])
        await card.start()
        if card.present:
            self._presence(slot, True)

    def attach(self, transport: Transport | None) -> None:
        """Connect (or with None, disconnect) the USB side."""
        self.transport = transport
        self._flush()
        if transport is not None:
            # Interrupt messages queued while no host was there wait in the core.
            transport.interrupt_pending()

    # -- from the USB side ----------------------------------------------------
    def bulk_out(self, data: bytes, *, transfer_end: bool = False) -> None:
        self.reader.receive_bulk_out(data, transfer_end=transfer_end)
        self._flush()

    def control_request(self, request_type: int, request: int, value: int, index: int,
                        length: int) -> bytes | None:
        answer = self.reader.control_request(request_type, request, value, index, length)
        self._flush()
        return answer

    def usb_reset(self) -> None:
        """Bus reset, disable, unbind: the host forgot everything; so do we."""
        self.reader.reset()
        self._flush()

    def pop_interrupt(self) -> bytes | None:
        return self.reader.pop_interrupt()

    # -- from the card side ---------------------------------------------------
    def _presence(self, slot: int, present: bool) -> None:
        log.info("slot %d: card %s", slot, "inserted" if present else "removed",
                 extra={"slot": slot, "event": "insert" if present else "remove"})
        self.reader.set_card_present(slot, present)
        self._flush()

    # -- the event pump -----------------------------------------------------
    def _flush(self) -> None:
        for event in self.reader.next_events():
            if isinstance(event, BulkIn):
                if self.transport is not None:
                    self.transport.send_bulk_in(event.data)
            elif isinstance(event, InterruptPending):
                if self.transport is not None:
                    self.transport.interrupt_pending()
            elif isinstance(event, PowerOn):
                self._start(event.slot, event.token, lambda slot=event.slot: self._power_on(slot))
            elif isinstance(event, Transmit):
                self._start(event.slot, event.token,
                            lambda e=event: self._transmit(e.slot, e.apdu))
            elif isinstance(event, PowerOff):
                asyncio.get_running_loop().create_task(self._power_off(event.slot))
            elif isinstance(event, Secure):
                self._start(event.slot, event.token, lambda e=event: self._secure(e.slot, e.request))
            elif isinstance(event, Cancel):
                entry = self._pending.pop(event.token, None)
                if entry is not None:
                    _, pending = entry
                    pending.task.cancel()
                    if pending.timer:
                        pending.timer.cancel()
                for listener in self.cancel_listeners:
                    listener(event.slot)

    def _start(self, slot: int, token: int, work) -> None:
        # `work` makes the coroutine only when the task runs, so a request
        # cancelled before it starts leaves no un-awaited coroutine behind.
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._complete(slot, token, work))
        pending = _Pending(task)
        self._pending[token] = (slot, pending)
        pending.timer = loop.call_later(self.time_extension_interval, self._time_extension, token)

    def _time_extension(self, token: int) -> None:
        entry = self._pending.get(token)
        if entry is None:
            return
        slot, pending = entry
        self.reader.time_extension(slot)
        pending.timer = asyncio.get_running_loop().call_later(
            self.time_extension_interval, self._time_extension, token)
        self._flush()

    async def _power_on(self, slot: int) -> bytes:
        atr = await self.cards[slot].power_on()
        self.stats[slot].power_ons += 1
        return atr

    async def _transmit(self, slot: int, apdu: bytes) -> bytes:
        self.stats[slot].apdus += 1
        rapdu = await self.cards[slot].transmit(apdu)
        if len(rapdu) < 2:
            raise CardMute(f"engine returned a {len(rapdu)}-byte response")
        return rapdu

    async def _secure(self, slot: int, request: PinRequest) -> bytes:
        # §6.1.11: the PIN comes from the board, the APDU is built as the host's structure says.
        if self.pin_entry is None:
            raise CardHardwareError("PC_to_RDR_Secure without a PIN pad")
        current, new = await self.pin_entry(slot, request)
        return await self._transmit(slot, request.build_apdu(current, new))

    async def _power_off(self, slot: int) -> None:
        try:
            await self.cards[slot].power_off()
        except CardError:
            pass  # the host already has its answer; a failing power-off changes nothing
        except Exception:
            log.exception("slot %d: power off failed", slot)

    async def _complete(self, slot: int, token: int, work) -> None:
        try:
            try:
                data = await work()
            except asyncio.CancelledError:
                return
            except CardError as e:
                self._failed(slot, token, e)
            except Exception as e:          # an engine bug: a hardware error, never a dead slot
                log.exception("slot %d: card engine failed", slot)
                self._failed(slot, token, CardHardwareError(repr(e)))
            else:
                if self._pending.pop(token, None) is not None:
                    self.reader.card_answer(token, data)
        finally:
            entry = self._pending.pop(token, None)
            if entry is not None and entry[1].timer:
                entry[1].timer.cancel()
            self._flush()

    def _failed(self, slot: int, token: int, error: CardError) -> None:
        entry = self._pending.pop(token, None)
        if entry is not None and entry[1].timer:
            entry[1].timer.cancel()
        stats = self.stats[slot]
        stats.errors += 1
        stats.last_error = f"{type(error).__name__}: {error}"
        stats.last_error_at = time.time()
        log.info("slot %d: %s", slot, stats.last_error, extra={"slot": slot, "event": "card-error"})
        if getattr(error, "slot_error", None) is not None:    # PIN entry cancelled / timed out
            code = error.slot_error
        elif isinstance(error, CardHardwareError):
            code = SlotError.HW_ERROR
        else:                               # absent and mute both look mute to the host
            code = SlotError.ICC_MUTE
        if entry is not None:
            # An engine that lost its card (client gone, card pulled) empties
            # the slot at once: the host sees the removal, not just a mute card.
            self.reader.card_failed(token, code, absent=isinstance(error, CardAbsent))

    # -- status -------------------------------------------------------------
    def describe(self) -> list[dict]:
        out = []
        for slot, card in enumerate(self.cards):
            info = dict(card.describe())
            info.update(slot=slot, apdus=self.stats[slot].apdus, power_ons=self.stats[slot].power_ons,
                        errors=self.stats[slot].errors, last_error=self.stats[slot].last_error)
            out.append(info)
        return out
