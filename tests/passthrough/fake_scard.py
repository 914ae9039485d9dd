"""A stand-in for pyscard's `smartcard.scard` module: readers, cards, pcscd up/down.

Only the calls the PC/SC engine makes, with pcsc-lite's observable behaviour:
SCardGetStatusChange blocks until a state differs from the caller's, the
timeout or SCardCancel; event states carry an event counter in the upper 16
bits; "\\\\?PnP?\\Notification" changes when readers come and go.
"""

from __future__ import annotations

import itertools
import threading

import smartcard.scard as real

PNP = "\\\\?PnP?\\Notification"


class FakeSCard:
    def __init__(self) -> None:
        for name in dir(real):                    # the constants, not the functions
            if name.startswith("SCARD_"):
                setattr(self, name, getattr(real, name))
        self.cond = threading.Condition()
        self.service_up = True
        self.readers: dict[str, bytes | None] = {}
        self.card_gen: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.pnp_events = 0
        self.answer = lambda apdu: b"\x90\x00"
        self.handles: dict[int, tuple[str, int]] = {}
        self.connects: list[tuple[str, int]] = []
        self.disconnects: list[int] = []
        self.reconnects: list[int] = []
        self.transmit_threads: set[str] = set()
        self.cancelled: set[int] = set()
        self._ids = itertools.count(1)

    # -- test controls ---------------------------------------------------------
    def _changed(self, reader: str | None = None, pnp: bool = False) -> None:
        if reader is not None:
            self.events[reader] = self.events.get(reader, 0) + 1
        if pnp:
            self.pnp_events += 1
        self.cond.notify_all()

    def plug(self, reader: str, atr: bytes | None = None) -> None:
        with self.cond:
            self.readers[reader] = atr
            self.card_gen[reader] = self.card_gen.get(reader, 0) + 1
            self._changed(reader, pnp=True)

    def unplug(self, reader: str) -> None:
        with self.cond:
            del self.readers[reader]
            self._changed(reader, pnp=True)

    def insert(self, reader: str, atr: bytes) -> None:
        with self.cond:
            self.readers[reader] = atr
            self.card_gen[reader] += 1
            self._changed(reader)

    def remove(self, reader: str) -> None:
        with self.cond:
            self.readers[reader] = None
            self.card_gen[reader] += 1
            self._changed(reader)

    def set_service(self, up: bool) -> None:
        with self.cond:
            self.service_up = up
            self._changed()

    # -- the PC/SC API -----------------------------------------------------------
    def SCardGetErrorMessage(self, hr):
        return f"fake error {hr:#x}"

    def SCardEstablishContext(self, scope):
        if not self.service_up:
            return self.SCARD_E_NO_SERVICE, 0
        return self.SCARD_S_SUCCESS, next(self._ids)

    def SCardReleaseContext(self, ctx):
        return self.SCARD_S_SUCCESS

    def SCardListReaders(self, ctx, groups):
        with self.cond:
            if not self.service_up:
                return self.SCARD_E_NO_SERVICE, []
            if not self.readers:
                return self.SCARD_E_NO_READERS_AVAILABLE, []
            return self.SCARD_S_SUCCESS, list(self.readers)

    def SCardCancel(self, ctx):
        with self.cond:
            self.cancelled.add(ctx)
            self.cond.notify_all()
        return self.SCARD_S_SUCCESS

    def _state(self, name: str) -> tuple[int, list[int]]:
        if name == PNP:
            return self.pnp_events << 16, []
        if name not in self.readers:
            return self.SCARD_STATE_UNKNOWN, []
        atr = self.readers[name]
        base = self.SCARD_STATE_PRESENT if atr else self.SCARD_STATE_EMPTY
        return (self.events.get(name, 0) << 16) | base, list(atr or b"")

    def SCardGetStatusChange(self, ctx, timeout_ms, states):
        with self.cond:
            for name, _ in states:
                if name != PNP and name not in self.readers:
                    return self.SCARD_E_UNKNOWN_READER, []

            def current():
                if not self.service_up:
                    return self.SCARD_E_NO_SERVICE
                if ctx in self.cancelled:
                    self.cancelled.discard(ctx)
                    return self.SCARD_E_CANCELLED
                out, changed = [], False
                for name, cur in states:
                    ev, atr = self._state(name)
                    if ev != cur & ~self.SCARD_STATE_CHANGED:
                        changed = True
                        ev |= self.SCARD_STATE_CHANGED
                    out.append((name, ev, atr))
                return out if changed else None

            r = self.cond.wait_for(current, timeout_ms / 1000)
            if not r:
                return self.SCARD_E_TIMEOUT, []
            if isinstance(r, int):
                return r, []
            return self.SCARD_S_SUCCESS, r

    def SCardConnect(self, ctx, reader, share, protocols):
        with self.cond:
            if not self.service_up:
                return self.SCARD_E_NO_SERVICE, 0, 0
            if reader not in self.readers:
                return self.SCARD_E_UNKNOWN_READER, 0, 0
            if not self.readers[reader]:
                return self.SCARD_E_NO_SMARTCARD, 0, 0
            h = next(self._ids)
            self.handles[h] = (reader, self.card_gen[reader])
            self.connects.append((reader, share))
            return self.SCARD_S_SUCCESS, h, self.SCARD_PROTOCOL_T1

    def _check_handle(self, h):
        if h not in self.handles:
            return self.SCARD_E_INVALID_HANDLE
        reader, gen = self.handles[h]
        if reader not in self.readers:
            return self.SCARD_E_READER_UNAVAILABLE
        if self.card_gen[reader] != gen or not self.readers[reader]:
            return self.SCARD_W_REMOVED_CARD
        return self.SCARD_S_SUCCESS

    def SCardReconnect(self, h, share, protocols, init):
        with self.cond:
            hr = self._check_handle(h)
            if hr == self.SCARD_S_SUCCESS:
                self.reconnects.append(init)
            return hr, self.SCARD_PROTOCOL_T1

    def SCardStatus(self, h):
        with self.cond:
            hr = self._check_handle(h)
            if hr != self.SCARD_S_SUCCESS:
                return hr, "", 0, 0, []
            reader = self.handles[h][0]
            return hr, reader, self.SCARD_STATE_PRESENT, self.SCARD_PROTOCOL_T1, list(self.readers[reader])

    def SCardTransmit(self, h, protocol, apdu):
        self.transmit_threads.add(threading.current_thread().name)
        with self.cond:
            hr = self._check_handle(h)
        if hr != self.SCARD_S_SUCCESS:
            return hr, []
        return self.SCARD_S_SUCCESS, list(self.answer(bytes(apdu)))

    def SCardDisconnect(self, h, disposition):
        with self.cond:
            self.handles.pop(h, None)
            self.disconnects.append(disposition)
        return self.SCARD_S_SUCCESS
