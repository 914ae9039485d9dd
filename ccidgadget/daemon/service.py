# SPDX-License-Identifier: GPL-3.0-or-later
"""The reader service: the sans-IO CCID core wired to card engines and a USB transport.

This is the only place where the protocol core meets asyncio.  It is transport-agnostic: the FunctionFS
adapter (ccidgadget.usb.function) and the in-process test/benchmark transports both implement `Transport`
and call the `HostSide` methods.

Flow for one XfrBlock:
    transport -> service.bulk_out(bytes) -> Reader.receive_bulk_out
    Reader emits Transmit(slot, token, apdu) -> the card answers at once (transmit_now), or the future it
    returns calls back (transmit_future: a worker thread, a network peer), or a task awaits card.transmit
    -> Reader.card_answer(token, rapdu) -> BulkIn(message) -> transport.send_bulk_in
While a card works, the host is asked for more time (CCID rev 1.1 §6.2.6, bmCommandStatus 2) so its read
timeout never expires; `_Requests` is the one place that knows the outstanding requests and when each is
due for its next time extension.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from ..cards.base import Card, CardAbsent, CardError, CardHardwareError, CardMute
from ..ccid import (TIME_EXTENSION_INTERVAL, BulkIn, Cancel, InterruptPending, PowerOff, PowerOn, Reader,
                    ReaderConfig, Secure, SlotError, Transmit)
from ..ccid.descriptor import ClassDescriptor

if TYPE_CHECKING:
    from ..ccid.secure import PinRequest

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the service sends to the USB side."""

    def send_bulk_in(self, data: bytes) -> None: ...
    def interrupt_pending(self) -> None: ...


class HostSide(Protocol):
    """What a USB function calls on the service (`ReaderService` is one)."""

    @property
    def descriptor(self) -> ClassDescriptor: ...
    def attach(self, transport: Transport | None) -> None: ...
    # `data` may be a view of the transport's buffer, valid only during the call
    def bulk_out(self, data: bytes | memoryview, *, transfer_end: bool = False) -> None: ...
    def control_request(self, request_type: int, request: int, value: int, index: int,
                        length: int) -> bytes | None: ...
    def usb_reset(self) -> None: ...
    def pop_interrupt(self) -> bytes | None: ...


@dataclass
class SlotStats:
    """Counters per slot (never APDU contents)."""

    apdus: int = 0
    power_ons: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: float = 0.0


@dataclass(frozen=True)
class SlotStatus:
    """One slot for `ccidgadget status`: the counters and the engine's own facts (`Card.describe()`)."""

    slot: int
    engine: str
    present: bool
    apdus: int
    power_ons: int
    errors: int
    last_error: str
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.facts)
        out.update(slot=self.slot, engine=self.engine, present=self.present, apdus=self.apdus,
                   power_ons=self.power_ons, errors=self.errors, last_error=self.last_error)
        return out


@dataclass
class _Request:
    slot: int
    #: what works on it: an asyncio task, or the future of the card's command (`Card.transmit_future`)
    task: asyncio.Task | concurrent.futures.Future
    #: loop time at which the host is due its next time extension
    due: float


class _Requests:
    """The card requests the host waits on (by the core's token) and their time extensions.

    One timer serves them all: it is armed when a request is outstanding and no timer is, and fires at the
    earliest due time.  Short APDUs, the common case, finish long before it fires, so a stream of them arms
    about one timer per interval instead of one per APDU.
    """

    def __init__(self, interval: float, extend: Callable[[int], None]) -> None:
        self.interval = interval
        self._extend = extend                 # extend(slot): one time extension to the host
        self._by_token: dict[int, _Request] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, token: int, slot: int, task: asyncio.Task | concurrent.futures.Future) -> None:
        loop = asyncio.get_running_loop()
        self._by_token[token] = _Request(slot, task, loop.time() + self.interval)
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.interval, self._tick)

    def end(self, token: int, *, cancel: bool = False) -> bool:
        """The request is over (answered, failed, or with `cancel` its task stopped); False if it already was."""
        request = self._by_token.pop(token, None)
        if request is None:
            return False
        if cancel:
            request.task.cancel()
        return True

    def active(self, token: int) -> bool:
        return token in self._by_token

    def tokens_of(self, slot: int) -> list[int]:
        return [token for token, request in self._by_token.items() if request.slot == slot]

    def cancel_all(self) -> None:
        for token in list(self._by_token):
            self.end(token, cancel=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self._by_token:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request in list(self._by_token.values()):
            if request.due <= now:
                request.due = now + self.interval
                self._extend(request.slot)
        if self._by_token:
            self._timer = loop.call_at(min(r.due for r in self._by_token.values()), self._tick)


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
        self._requests = _Requests(time_extension_interval, self._time_extension)
        self._listeners = [lambda present, slot=slot: self._presence(slot, present) for slot in range(len(cards))]
        #: Told the slot whenever the host drops a command (Abort, bus reset, removal): frees a touch wait.
        self.cancel_listeners: list[Callable[[int], None]] = []
        #: PC_to_RDR_Secure: collects the PIN(s) (current, new) for a request (presence/pinpad.py).
        self.pin_entry: Callable[[int, PinRequest], Awaitable[tuple[str | None, str | None]]] | None = None

    @property
    def descriptor(self) -> ClassDescriptor:
        return self.reader.descriptor

    # -- life cycle ---------------------------------------------------------
    async def start(self) -> None:
        for slot, card in enumerate(self.cards):
            card.add_presence_listener(self._listeners[slot])
            await card.start()
            # A card already present at start-up is announced like an insertion.
            if card.present:
                self.reader.set_card_present(slot, True)
        self._flush()

    async def stop(self) -> None:
        self._requests.cancel_all()
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
        for token in self._requests.tokens_of(slot):
            self._failed(slot, token, CardAbsent("the slot's card engine was replaced"), cancel=True)
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

    # -- HostSide ---------------------------------------------------------------
    def attach(self, transport: Transport | None) -> None:
        """Connect (or with None, disconnect) the USB side."""
        self.transport = transport
        self._flush()
        if transport is not None:
            # Interrupt messages queued while no host was there wait in the core.
            transport.interrupt_pending()

    def bulk_out(self, data: bytes | memoryview, *, transfer_end: bool = False) -> None:
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
        # An answer given at once (`_transmit_now`) queues more events: drain until none are left.
        while events := self.reader.next_events():
            for event in events:
                self._handle(event)

    def _handle(self, event) -> None:
        # (in order of frequency)
        if isinstance(event, BulkIn):
            if self.transport is not None:
                self.transport.send_bulk_in(event.data)
        elif isinstance(event, Transmit):
            if not self._transmit_now(event) and not self._transmit_future(event):
                self._start(event.slot, event.token, lambda e=event: self._transmit(e.slot, e.apdu))
        elif isinstance(event, InterruptPending):
            if self.transport is not None:
                self.transport.interrupt_pending()
        elif isinstance(event, PowerOn):
            self._start(event.slot, event.token, lambda slot=event.slot: self._power_on(slot))
        elif isinstance(event, PowerOff):
            asyncio.get_running_loop().create_task(self._power_off(event.slot))
        elif isinstance(event, Secure):
            self._start(event.slot, event.token, lambda e=event: self._secure(e.slot, e.request))
        elif isinstance(event, Cancel):
            self._requests.end(event.token, cancel=True)
            for listener in self.cancel_listeners:
                listener(event.slot)

    def _start(self, slot: int, token: int, work: Callable[[], Awaitable[bytes]]) -> None:
        # `work` makes the coroutine only when the task runs, so a request
        # cancelled before it starts leaves no un-awaited coroutine behind.
        task = asyncio.get_running_loop().create_task(self._complete(slot, token, work))
        self._requests.add(token, slot, task)

    def _time_extension(self, slot: int) -> None:
        self.reader.time_extension(slot)
        self._flush()

    async def _power_on(self, slot: int) -> bytes:
        atr = await self.cards[slot].power_on()
        self.stats[slot].power_ons += 1
        return atr

    def _transmit_now(self, event: Transmit) -> bool:
        """Answer `event` in this turn of the loop if its card can (`Card.transmit_now`); True if it did."""
        slot = event.slot
        try:
            rapdu = self.cards[slot].transmit_now(event.apdu)
            if rapdu is None:
                return False
            self.stats[slot].apdus += 1
            if len(rapdu) < 2:
                raise CardMute(f"engine returned a {len(rapdu)}-byte response")
        except CardError as e:
            self._failed(slot, event.token, e, outstanding=True)
            return True
        except Exception as e:              # an engine bug: a hardware error, never a dead slot
            log.exception("slot %d: card engine failed", slot)
            self._failed(slot, event.token, CardHardwareError(repr(e)), outstanding=True)
            return True
        self.reader.card_answer(event.token, rapdu)
        return True

    def _transmit_future(self, event: Transmit) -> bool:
        """Start `event` on its card if it gives a future for it (`Card.transmit_future`); True if it did (or
        if the card refused it at once: then it is answered already)."""
        slot, token = event.slot, event.token
        try:
            future = self.cards[slot].transmit_future(event.apdu)
        except CardError as e:
            self._failed(slot, token, e, outstanding=True)
            return True
        except Exception as e:              # an engine bug (or its worker shut down): a hardware error
            log.exception("slot %d: card engine failed", slot)
            self._failed(slot, token, CardHardwareError(repr(e)), outstanding=True)
            return True
        if future is None:
            return False
        self.stats[slot].apdus += 1
        self._requests.add(token, slot, future)
        if isinstance(future, asyncio.Future):
            future.add_done_callback(lambda f: self._future_done(slot, token, f))      # called from the loop
        else:
            loop = asyncio.get_running_loop()
            # called on the worker thread (or here, if cancelled before it started): one hop to the loop
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._future_done, slot, token, f))
        return True

    def _future_done(self, slot: int, token: int, future) -> None:
        if future.cancelled() or not self._requests.active(token):
            return                          # the core cancelled it (abort, reset, removal): nothing to answer
        try:
            rapdu = future.result()
            if len(rapdu) < 2:
                raise CardMute(f"engine returned a {len(rapdu)}-byte response")
        except Exception as e:
            self._conclude(slot, token, error=e)
        else:
            self._conclude(slot, token, rapdu)

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

    async def _complete(self, slot: int, token: int, work: Callable[[], Awaitable[bytes]]) -> None:
        try:
            data = await work()
        except asyncio.CancelledError:
            return                          # the core cancelled it: nothing to answer
        except Exception as e:
            self._conclude(slot, token, error=e)
        else:
            self._conclude(slot, token, data)

    def _conclude(self, slot: int, token: int, data: bytes = b"", *, error: Exception | None = None) -> None:
        """Request `token` ended with `data` or `error`: the host's answer, unless the core dropped it meanwhile."""
        if error is None:
            if self._requests.end(token):
                self.reader.card_answer(token, data)
        elif isinstance(error, CardError):
            self._failed(slot, token, error)
        else:                               # an engine bug: a hardware error, never a dead slot
            log.error("slot %d: card engine failed", slot, exc_info=error)
            self._failed(slot, token, CardHardwareError(repr(error)))
        self._flush()

    def _failed(self, slot: int, token: int, error: CardError, *, cancel: bool = False,
                outstanding: bool = False) -> None:
        """`token` failed with `error`; `outstanding`: it was answered at once and never became a request."""
        outstanding = self._requests.end(token, cancel=cancel) or outstanding
        stats = self.stats[slot]
        stats.errors += 1
        stats.last_error = f"{type(error).__name__}: {error}"
        stats.last_error_at = time.time()
        log.info("slot %d: %s", slot, stats.last_error, extra={"slot": slot, "event": "card-error"})
        if error.slot_error is not None:     # e.g. PIN entry cancelled (0xEF) or timed out (0xF0)
            code = error.slot_error
        elif isinstance(error, CardHardwareError):
            code = SlotError.HW_ERROR
        else:                               # absent and mute both look mute to the host
            code = SlotError.ICC_MUTE
        if outstanding:
            # An engine that lost its card (client gone, card pulled) empties
            # the slot at once: the host sees the removal, not just a mute card.
            self.reader.card_failed(token, code, absent=isinstance(error, CardAbsent))

    # -- status -------------------------------------------------------------
    def slot_status(self, slot: int) -> SlotStatus:
        card, stats = self.cards[slot], self.stats[slot]
        return SlotStatus(slot=slot, engine=str(card.engine), present=card.present, apdus=stats.apdus,
                          power_ons=stats.power_ons, errors=stats.errors, last_error=stats.last_error,
                          facts={k: v for k, v in card.describe().items() if k not in ("engine", "present")})

    def statuses(self) -> list[SlotStatus]:
        return [self.slot_status(slot) for slot in range(len(self.cards))]
