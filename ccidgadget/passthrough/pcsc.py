"""PC/SC engine: the card in a reader of this machine's pcscd, through pyscard.

The slot shows whatever card sits in the chosen PC/SC reader: its real ATR,
and every APDU passed through unchanged (short or extended; chaining and
GET RESPONSE are the host's business, as with any reader).

Presence follows the card: a watcher thread blocks in SCardGetStatusChange
on the reader and on the special reader name "\\\\?PnP?\\Notification"
(pcsc-lite and Windows report reader arrival and removal through it), so an
unplugged reader empties the slot and the same reader plugged back fills it
again.  `stop()` interrupts the wait with SCardCancel.  Card operations run
on a second thread with their own PC/SC context, so a long SCardTransmit
neither blocks the event loop nor waits behind the watcher.

All of pyscard is reached through `smartcard.scard` (the thin PC/SC API),
passed in as `scard` so that tests can substitute a fake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import logging
import threading
from typing import Any

from ..cards.base import Card, CardAbsent, CardHardwareError, CardMute
from ..options import Engine

log = logging.getLogger(__name__)

#: The reader name pcsc-lite and WinSCard use for reader add/remove events.
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"

#: Longest single SCardGetStatusChange wait, in milliseconds.  SCardCancel
#: ends it at once on stop; this only bounds how long a missed cancel
#: (a context being replaced at that moment) can delay shutdown.
STATUS_WAIT_MS = 2000

#: Pause after a PC/SC failure (pcscd not running, reader list error) before
#: trying again, in seconds.
RETRY_DELAY = 1.0


def match_reader(pattern: str, readers: list[str]) -> str | None:
    """The reader `pattern` names: exact name, else a shell glob, else a substring.

    PC/SC reader names end in " 00 00"-style indices that change with plug
    order, so "Yubico*" or "Virtual PCD 00 00" both make sense.
    """
    if pattern in readers:
        return pattern
    for name in readers:
        if fnmatch.fnmatchcase(name, pattern):
            return name
    for name in readers:
        if pattern in name:
            return name
    return None


class PcscCard(Card):
    """A slot showing the card of one PC/SC reader."""

    engine = Engine.PCSC

    def __init__(self, reader_pattern: str, exclusive: bool = True, *,
                 scard: Any = None, status_wait_ms: int = STATUS_WAIT_MS,
                 retry_delay: float = RETRY_DELAY) -> None:
        super().__init__()
        if scard is None:
            from smartcard import scard as scard_module   # optional dependency (extra "pcsc")
            scard = scard_module
        self.s = scard
        self.reader_pattern = reader_pattern
        self.exclusive = exclusive
        self.status_wait_ms = status_wait_ms
        self.retry_delay = retry_delay
        self._share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
        self._protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._card_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._watch_future: asyncio.Future | None = None
        self._stopping = threading.Event()
        self._watch_ctx_lock = threading.Lock()
        self._watch_ctx: Any = None
        # Card-thread state (touched only on the card thread).
        self._card_ctx: Any = None
        self._handle: Any = None
        self._protocol = 0
        # Loop-thread state.
        self.reader: str | None = None
        self._atr: bytes | None = None

    # -- life cycle ----------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._watch_pool = concurrent.futures.ThreadPoolExecutor(1, "pcsc-watch")
        self._card_pool = concurrent.futures.ThreadPoolExecutor(1, "pcsc-card")
        self._watch_future = self._loop.run_in_executor(self._watch_pool, self._watch)

    async def stop(self) -> None:
        self._stopping.set()

        def cancel() -> None:
            with self._watch_ctx_lock:
                if self._watch_ctx is not None:
                    self.s.SCardCancel(self._watch_ctx)

        if self._watch_future is not None:
            # An IPC to pcscd: not on the event loop thread.
            await asyncio.get_running_loop().run_in_executor(None, cancel)
        if self._watch_future is not None:
            try:
                await self._watch_future
            except Exception:
                log.exception("PC/SC watcher failed")
            self._watch_future = None
        if self._card_pool is not None:
            await self._run(self._release_card)
            self._card_pool.shutdown(wait=True)
            self._card_pool = None
        if self._watch_pool is not None:
            self._watch_pool.shutdown(wait=True)
            self._watch_pool = None
        self._atr = None
        self._set_present(False)

    def describe(self) -> dict:
        d = super().describe()
        d.update(reader=self.reader, pattern=self.reader_pattern,
                 share="exclusive" if self.exclusive else "shared",
                 atr=self._atr.hex() if self._atr else None)
        return d

    async def _run(self, fn, *args):
        if self._card_pool is None:
            raise CardAbsent("PC/SC engine not started")
        return await asyncio.get_running_loop().run_in_executor(self._card_pool, fn, *args)

    # -- the card -------------------------------------------------------------------------
    async def power_on(self) -> bytes:
        if not self.present or self.reader is None:
            raise CardAbsent(f"no card in PC/SC reader {self.reader or self.reader_pattern!r}")
        atr = await self._run(self._power_on, self.reader)
        return atr

    async def power_off(self) -> None:
        if self._card_pool is not None:
            await self._run(self._release_card)

    async def transmit(self, apdu: bytes) -> bytes:
        if not self.present:
            raise CardAbsent(f"no card in PC/SC reader {self.reader or self.reader_pattern!r}")
        return await self._run(self._transmit, bytes(apdu))

    # -- card thread -------------------------------------------------------------------------
    def _check(self, hr: int, what: str) -> None:
        s = self.s
        if hr == s.SCARD_S_SUCCESS:
            return
        msg = f"{what}: {self._error_text(hr)}"
        if hr in (s.SCARD_E_NO_SERVICE, s.SCARD_E_SERVICE_STOPPED, s.SCARD_E_INVALID_HANDLE):
            self._card_ctx = None             # pcscd went away: start afresh next time
            self._handle = None
            raise CardAbsent(msg)
        if hr in (s.SCARD_W_REMOVED_CARD, s.SCARD_E_NO_SMARTCARD, s.SCARD_E_READER_UNAVAILABLE,
                  s.SCARD_E_UNKNOWN_READER):
            self._handle = None
            raise CardAbsent(msg)
        if hr in (s.SCARD_W_UNRESPONSIVE_CARD, s.SCARD_W_UNPOWERED_CARD, s.SCARD_E_TIMEOUT,
                  s.SCARD_W_RESET_CARD, s.SCARD_E_SHARING_VIOLATION, s.SCARD_E_PROTO_MISMATCH):
            raise CardMute(msg)
        raise CardHardwareError(msg)

    def _error_text(self, hr: int) -> str:
        try:
            return f"{self.s.SCardGetErrorMessage(hr)} (0x{hr & 0xFFFFFFFF:08X})"
        except Exception:
            return f"PC/SC error 0x{hr & 0xFFFFFFFF:08X}"

    def _ensure_card_ctx(self) -> None:
        if self._card_ctx is None:
            hr, ctx = self.s.SCardEstablishContext(self.s.SCARD_SCOPE_USER)
            self._check(hr, "SCardEstablishContext")
            self._card_ctx = ctx

    def _power_on(self, reader: str) -> bytes:
        s = self.s
        self._ensure_card_ctx()
        if self._handle is not None:
            # Power on of a connected card: reset it (warm reset through PC/SC).
            hr, proto = s.SCardReconnect(self._handle, self._share, self._protocols,
                                         s.SCARD_RESET_CARD)
            if hr != s.SCARD_S_SUCCESS:
                self._disconnect(s.SCARD_LEAVE_CARD)
                self._check(hr, "SCardReconnect")
            self._protocol = proto
        else:
            hr, handle, proto = s.SCardConnect(self._card_ctx, reader, self._share, self._protocols)
            self._check(hr, f"SCardConnect({reader!r})")
            self._handle, self._protocol = handle, proto
        hr, _name, _state, _proto, atr = s.SCardStatus(self._handle)
        self._check(hr, "SCardStatus")
        return bytes(atr)

    def _transmit(self, apdu: bytes) -> bytes:
        if self._handle is None:
            raise CardMute("card is not powered")
        hr, response = self.s.SCardTransmit(self._handle, self._protocol, list(apdu))
        if hr == self.s.SCARD_W_RESET_CARD:
            # Another application reset the card (shared mode): its state is
            # gone.  Reacquire the handle and let the host start over.
            self._disconnect(self.s.SCARD_LEAVE_CARD)
        self._check(hr, "SCardTransmit")
        return bytes(response)

    def _disconnect(self, disposition: int) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                self.s.SCardDisconnect(handle, disposition)
            except Exception:
                log.debug("SCardDisconnect failed", exc_info=True)

    def _release_card(self) -> None:
        """Power off: leave the card unpowered if we had it to ourselves."""
        self._disconnect(self.s.SCARD_UNPOWER_CARD if self.exclusive else self.s.SCARD_LEAVE_CARD)

    # -- watcher thread ------------------------------------------------------------------------
    def _post(self, reader: str | None, atr: bytes | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_watch, reader, atr)

    def _on_watch(self, reader: str | None, atr: bytes | None) -> None:
        """Loop thread: the watcher saw `atr` (None: no card) in `reader`."""
        if reader != self.reader:
            log.info("PC/SC: reader %s", f"{reader!r} found" if reader else
                     f"{self.reader!r} gone")
            self.reader = reader
        if atr is None or (self._atr is not None and atr != self._atr):
            if self.present:
                log.info("PC/SC: card removed from %r", self.reader)
                self._atr = None
                self._set_present(False)
                if self._card_pool is not None and not self._stopping.is_set():
                    # The handle is dead; free it so the next power on reconnects.
                    self._card_pool.submit(self._disconnect, self.s.SCARD_LEAVE_CARD)
        if atr is not None and not self.present:
            log.info("PC/SC: card inserted in %r, ATR %s", reader, atr.hex())
            self._atr = atr
            self._set_present(True)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _release_watch_ctx(self) -> None:
        with self._watch_ctx_lock:
            ctx, self._watch_ctx = self._watch_ctx, None
        if ctx is not None:
            try:
                self.s.SCardReleaseContext(ctx)
            except Exception:
                log.debug("SCardReleaseContext failed", exc_info=True)

    def _watch(self) -> None:
        s = self.s
        reader: str | None = None
        reader_state = s.SCARD_STATE_UNAWARE
        pnp_state = s.SCARD_STATE_UNAWARE
        reported: tuple[str | None, bytes | None] | None = None
        service_down_logged = False

        def report(r: str | None, atr: bytes | None) -> None:
            nonlocal reported
            if reported != (r, atr):
                reported = (r, atr)
                self._post(r, atr)

        try:
            while not self._stopping.is_set():
                if self._watch_ctx is None:
                    hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
                    if hr != s.SCARD_S_SUCCESS:
                        if not service_down_logged:
                            log.warning("PC/SC: cannot reach pcscd (%s); retrying", self._error_text(hr))
                            service_down_logged = True
                        report(None, None)
                        self._sleep(self.retry_delay)
                        continue
                    with self._watch_ctx_lock:
                        self._watch_ctx = ctx
                    if self._stopping.is_set():
                        break
                    service_down_logged = False
                    reader, reader_state, pnp_state = None, s.SCARD_STATE_UNAWARE, s.SCARD_STATE_UNAWARE

                if reader is None:
                    hr, readers = s.SCardListReaders(self._watch_ctx, [])
                    if hr == s.SCARD_S_SUCCESS:
                        reader = match_reader(self.reader_pattern, list(readers))
                    elif hr not in (s.SCARD_E_NO_READERS_AVAILABLE,):
                        if hr in (s.SCARD_E_NO_SERVICE, s.SCARD_E_SERVICE_STOPPED,
                                  s.SCARD_E_INVALID_HANDLE):
                            self._release_watch_ctx()
                            continue
                        log.warning("PC/SC: SCardListReaders: %s", self._error_text(hr))
                        self._sleep(self.retry_delay)
                        continue
                    reader_state = s.SCARD_STATE_UNAWARE
                    if reader is None:
                        report(None, None)

                states = [(PNP_NOTIFICATION, pnp_state)]
                if reader is not None:
                    states.append((reader, reader_state))
                hr, new_states = s.SCardGetStatusChange(self._watch_ctx, self.status_wait_ms, states)
                if self._stopping.is_set():
                    break
                if hr in (s.SCARD_E_TIMEOUT, s.SCARD_E_CANCELLED):
                    continue
                if hr in (s.SCARD_E_NO_SERVICE, s.SCARD_E_SERVICE_STOPPED, s.SCARD_E_INVALID_HANDLE):
                    log.warning("PC/SC: lost pcscd (%s)", self._error_text(hr))
                    self._release_watch_ctx()
                    reader = None
                    report(None, None)
                    self._sleep(self.retry_delay)
                    continue
                if hr in (s.SCARD_E_UNKNOWN_READER, s.SCARD_E_READER_UNAVAILABLE):
                    reader = None
                    report(None, None)
                    continue
                if hr != s.SCARD_S_SUCCESS:
                    log.warning("PC/SC: SCardGetStatusChange: %s", self._error_text(hr))
                    self._sleep(self.retry_delay)
                    continue
                pnp_changed = False
                for entry in new_states:
                    name, event = entry[0], entry[1]
                    atr = bytes(entry[2]) if len(entry) > 2 and entry[2] else b""
                    if name == PNP_NOTIFICATION:
                        pnp_changed = bool(event & s.SCARD_STATE_CHANGED) and pnp_state != s.SCARD_STATE_UNAWARE
                        pnp_state = event & ~s.SCARD_STATE_CHANGED
                        continue
                    # pcsc-lite counts card insertions and removals in the upper
                    # 16 bits: a new count with a card present means the card
                    # was swapped between two of our waits.
                    swapped = (reader_state != s.SCARD_STATE_UNAWARE
                               and (event >> 16) != (reader_state >> 16))
                    reader_state = event & ~s.SCARD_STATE_CHANGED
                    if event & (s.SCARD_STATE_UNKNOWN | s.SCARD_STATE_UNAVAILABLE | s.SCARD_STATE_IGNORE):
                        reader = None             # unplugged: wait for it on PnP
                        report(None, None)
                    elif event & s.SCARD_STATE_PRESENT and not event & s.SCARD_STATE_MUTE and atr:
                        if swapped:
                            report(reader, None)
                        report(reader, atr)
                    else:
                        report(reader, None)
                if pnp_changed and reader is not None:
                    # Readers came or went: check ours is still the one matched.
                    hr, readers = s.SCardListReaders(self._watch_ctx, [])
                    if hr != s.SCARD_S_SUCCESS or reader not in readers:
                        reader = None
                        report(None, None)
                if reader is None:
                    # No reader: PnP wakes us on arrival, but not every stack
                    # implements it; never spin.
                    self._sleep(0.1)
        finally:
            self._release_watch_ctx()


def build_card(spec, context) -> PcscCard:
    """The `pcsc` engine of a slot (options.ENGINES)."""
    return PcscCard(spec.reader, exclusive=spec.exclusive)
