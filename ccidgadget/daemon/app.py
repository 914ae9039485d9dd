# SPDX-License-Identifier: GPL-3.0-or-later
"""The daemon: one asyncio loop running the gadget, the reader, every card and the control socket.

`run()` serves one configuration at a time (`_serve`): build the slots' card engines, start them, bring
up the USB device (usb/device.py: configfs gadget + FunctionFS) and bind it, then wait to be stopped or
re-enumerated; teardown runs in reverse.  Around that:
- the control socket (control.py) starts first, so a second daemon on the same runtime directory stops
  before it touches configfs;
- systemd hears READY=1 once the UDC is bound, STATUS= whenever the USB state or a slot changes, WATCHDOG=1
  from this loop (notify.py);
- reload (control verb or SIGHUP) re-reads the configuration, asks `reload.plan(old, new)` what to do and
  does it: swap slot engines in place while the host stays connected, or re-enumerate with the new
  configuration; a re-enumeration that fails goes back to the previous configuration, and says so.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import __version__
from ..cards.base import Card, EmulatedCard
from ..cards.presence import NO_PRESENCE
from ..ccid import ReaderConfig
from ..engines import CardContext, EngineError, build_card
from ..options import ENGINES, DaemonOptions, SlotSpec
from ..presence.config import BoardConfig
from ..presence.service import BoardService
from ..usb.device import UsbDevice
from ..usb.gadget import GadgetError
from .config import ConfigError
from .control import ControlError, ControlServer
from .journal import set_level
from .service import ReaderService

if TYPE_CHECKING:
    from .reload import ReloadPlan

log = logging.getLogger(__name__)

DeviceFactory = Callable[..., UsbDevice]


@dataclass
class _Reenumeration:
    """A reload that needs the host to enumerate the device again, until the new configuration is up."""

    previous: DaemonOptions
    #: resolved by the run loop once a configuration is bound again: None for the new one, else why it
    #: went back (answered only when the previous configuration serves again, not before)
    done: asyncio.Future
    #: why the new configuration failed, while the previous one is being brought back
    error: str | None = None


class Daemon:
    """Owns the USB device, the reader service and the control socket."""

    def __init__(self, options: DaemonOptions, *, notifier=None,
                 loader: Callable[[], DaemonOptions] | None = None,
                 device_factory: DeviceFactory = UsbDevice) -> None:
        self.options = options
        self.notifier = notifier
        self.loader = loader                   # re-reads the configuration for reload
        self.device_factory = device_factory
        self.device: UsbDevice | None = None
        self.service: ReaderService | None = None
        #: the buttons, keypad and LED (presence/service.py)
        self.board: BoardService | None = None
        self.control: ControlServer | None = None
        self.started_at = time.time()
        self.usb_state = "starting"
        self.state = "starting"
        self.reloads = 0
        self.last_reload: dict | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._reenumeration: _Reenumeration | None = None
        self._reload_lock = asyncio.Lock()
        self._watchdog_task: asyncio.Task | None = None

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- status -------------------------------------------------------------
    def status(self) -> dict:
        device = self.device
        ident = self.options.usb_identity
        slots = []
        for status in (self.service.statuses() if self.service else []):
            info = status.to_json()
            spec = self.options.slots[status.slot] if status.slot < len(self.options.slots) else None
            if spec is not None and spec.card_type is not None:
                info.setdefault("type", spec.type)
            if self.board is not None:
                info["waiting"] = self.board.waiting(status.slot)
            slots.append(info)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state,
            "config": self.options.source,
            "gadget": str(device.root) if device else None,
            "udc": device.udc if device else None,
            "bound": bool(device and device.bound),
            "usb_state": self.usb_state,
            "host_connected": bool(device and device.host_connected),
            "enumerations": device.enumerations if device else 0,
            "identity": {"vid": f"{ident.vid:04x}", "pid": f"{ident.pid:04x}", "manufacturer": ident.manufacturer,
                         "product": ident.product},
            "functions": [f"{f.kind}.{f.name}" for f in self.options.functions],
            "uptime_s": round(time.time() - self.started_at, 1),
            "reloads": self.reloads,
            "slots": slots,
            "presence": self.board.describe() if self.board else None,
        }

    def engine_of(self, slot: int) -> str | None:
        """The journal's ENGINE= field: "emulated-piv", "passthru"..."""
        try:
            return self.options.slots[slot].label
        except (IndexError, TypeError):
            return None

    def _on_usb_state(self, state: str) -> None:
        self.usb_state = state
        self._notify_status()

    def status_line(self) -> str:
        if self.service is None:
            return self.state
        host = "host connected" if self.device is not None and self.device.host_connected else "no host"
        udc = self.device.udc if self.device else "?"
        slots = "; ".join(f"slot {s.slot} {self.engine_of(s.slot) or s.engine}: "
                          f"{'card present' if s.present else 'empty'}, {s.apdus} APDUs"
                          for s in self.service.statuses())
        return f"USB {self.usb_state} on {udc}, {host}; {slots}"

    def _notify_status(self) -> None:
        if self.notifier is None or self.service is None:
            return
        self.notifier.status(self.status_line())

    # -- control verbs --------------------------------------------------------
    def _card(self, slot: int) -> Card:
        if self.service is None:
            raise ControlError("the reader is not running yet")
        count = len(self.service.cards)
        if not isinstance(slot, int) or not 0 <= slot < count:
            raise ControlError(f"no slot {slot}: this reader has slot{'s 0..' if count > 1 else ' '}{count - 1}")
        return self.service.cards[slot]

    def _presence(self, slot: int, present: bool) -> dict:
        card = self._card(slot)
        verb = "insert" if present else "remove"
        if not isinstance(card, EmulatedCard):
            info = ENGINES.get(card.engine)
            why = (info.presence_owner if info and info.presence_owner
                   else "only emulated cards can be inserted and removed from here")
            raise ControlError(f"cannot {verb} the card of slot {slot}: it is a {card.engine} slot; {why}")
        changed = card.present != present
        if changed:
            card.insert() if present else card.remove()
        return {"slot": slot, "present": card.present, "changed": changed}

    def insert(self, slot: int) -> dict:
        return self._presence(slot, True)

    # confirm / deny / pin: the board's people-facing verbs (presence/service.py)
    def _board_call(self, name: str, *args, **kw) -> dict:
        if self.board is None:
            raise ControlError("the reader is not running yet")
        try:
            return getattr(self.board, name)(*args, **kw)
        except (LookupError, ValueError) as e:
            raise ControlError(str(e.args[0] if e.args else e)) from None

    def confirm(self, slot: int, by: str = "the control socket") -> dict:
        return self._board_call("confirm", slot, by)

    def deny(self, slot: int, by: str = "the control socket") -> dict:
        return self._board_call("deny", slot, by)

    def pin(self, slot: int, current: str | None, new: str | None, cancel: bool = False,
            by: str = "the control socket") -> dict:
        return self._board_call("pin", slot, current, new, cancel=cancel, by=by)

    def remove(self, slot: int) -> dict:
        return self._presence(slot, False)

    async def reload(self) -> dict:
        """Re-read the configuration and apply it (the control verb and SIGHUP)."""
        if self.loader is None:
            raise ControlError("this daemon has no configuration to re-read")
        if self.service is None:
            raise ControlError("the reader is still starting; reload again in a moment")
        async with self._reload_lock:
            try:
                new = self.loader()
            except ConfigError as e:
                raise ControlError("the configuration was NOT applied; the reader keeps running as before:\n"
                                   + str(e)) from None
            if self.notifier:
                self.notifier.reloading()
            self.state = "reloading"
            from .reload import plan            # (the planner's dataclasses only when there is a reload)
            try:
                result = await self._execute(plan(self.options, new))
            finally:
                self.state = "running" if not self._stopping else "stopping"
                if self.notifier:
                    self.notifier.ready()
                self._notify_status()
            self.reloads += 1
            self.last_reload = result
            log.info("reload: %s", result["message"], extra={"event": "reload"})
            return result

    async def _execute(self, p: ReloadPlan) -> dict:
        if p.log_level:
            set_level(p.log_level)
        if p.control_group_changed and self.control is not None:
            self.control.apply_permissions(p.options.control_group)
        if p.board_changed:
            await self._restart_board(p.options.board)
        if p.reenumerate:
            await self._reenumerate(p.options)
            message = (f"re-enumerated: {', '.join(p.reenumerate)} changed, which the host only learns by "
                       f"enumerating the device again (the reader disconnected and came back)")
            return {"reenumerated": True, "changed": list(p.reenumerate),
                    "slots_replaced": list(range(len(p.options.slots))),
                    "message": "; ".join((message,) + p.notes)}
        for slot in p.replace:
            await self._replace_slot(slot, p.options)
        self.options = p.options
        message = (f"slot(s) {', '.join(map(str, p.replace))} replaced without re-enumerating" if p.replace
                   else "no slot changed")
        return {"reenumerated": False, "changed": [f"slot {s}" for s in p.replace], "slots_replaced": list(p.replace),
                "message": "; ".join((message,) + p.notes)}

    async def _replace_slot(self, slot: int, new: DaemonOptions) -> None:
        """Swap one slot's card engine while the reader stays on the bus."""
        spec = new.slots[slot]
        try:
            card = build_card(spec, self._context(slot, new))
        except EngineError as e:
            raise ControlError(f"slot {slot} not replaced: cannot build its {spec.engine} card: {e}") from None
        card.add_presence_listener(lambda present: self._notify_status())
        if self.board is not None:
            self.board.attach(slot, card)
        try:
            await self.service.replace_card(slot, card)
        except Exception as e:
            log.error("slot %d: the new %s engine did not start: %s", slot, spec.engine, e,
                      extra={"slot": slot, "event": "reload-failed"})
            raise ControlError(f"slot {slot}: the new {spec.engine} card did not start ({e}); the slot is "
                               f"empty until the next reload or restart") from None
        finally:
            # engine_of() must describe the new engine from here on
            slots = list(self.options.slots)
            slots[slot] = spec
            self.options = self.options.copy()
            self.options.slots = slots
        log.info("slot %d: now %s", slot, spec.label, extra={"slot": slot, "event": "replace"})

    async def _restart_board(self, board: BoardConfig) -> None:
        """New buttons/LED/timeouts without re-enumerating: open waits are refused, cards get the new presence.

        The old sources are released first (a GPIO line or a grabbed input device has one user at a time);
        if the new ones cannot be opened the old configuration comes back and the reload says why.
        """
        old = self.board
        if old is not None:
            self.service.cancel_listeners.remove(old.cancel)
            old.stop()
        self.board = BoardService(board, len(self.service.cards))
        try:
            await self.board.start()
        except OSError as e:
            self.board = BoardService(old.config if old else BoardConfig(), len(self.service.cards))
            try:
                await self.board.start()
            except OSError:
                self.board = BoardService(BoardConfig(), len(self.service.cards))
            self._hook_board(self.service.cards)
            raise ControlError(f"the [presence] configuration was NOT applied: {e}") from None
        self._hook_board(self.service.cards)

    def _hook_board(self, cards: list[Card]) -> None:
        for slot, card in enumerate(cards):
            if isinstance(card, EmulatedCard):
                card.presence = NO_PRESENCE          # until attach() gives it its slot's, if it has one
            self.board.attach(slot, card)
        self.service.cancel_listeners.append(self.board.cancel)
        self.service.pin_entry = self.board.pin_entry if self.board.pinpad is not None else None

    async def _reenumerate(self, new: DaemonOptions) -> None:
        done = asyncio.get_running_loop().create_future()
        self._reenumeration = _Reenumeration(previous=self.options, done=done)
        self.options = new
        self._wake.set()
        error = await done
        if error is not None:
            raise ControlError(error)

    def _reenumeration_over(self, error: str | None) -> None:
        r, self._reenumeration = self._reenumeration, None
        if r is not None and not r.done.done():
            r.done.set_result(error)

    # -- run ----------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        if self.notifier is not None:
            interval = self.notifier.watchdog_interval()
            if interval:
                self._watchdog_task = loop.create_task(self._watchdog(interval))
        try:
            if self.options.control_socket:
                self.control = ControlServer(self, self.options.control_socket_path,
                                             group=self.options.control_group)
                try:
                    await self.control.start()
                except ControlError as e:
                    self.control = None
                    raise GadgetError(str(e)) from None
            while not self._stopping:
                try:
                    await self._serve(self.options)
                except (GadgetError, EngineError, OSError) as e:
                    r = self._reenumeration
                    if r is None or r.error is not None:      # not a reload, or going back failed too
                        raise
                    r.error = (f"re-enumeration with the new configuration failed ({e}); "
                               f"went back to the previous configuration")
                    log.error("%s", r.error, extra={"event": "reload-failed"})
                    self.options = r.previous
        finally:
            self.state = "stopping"
            if self.notifier:
                self.notifier.stopping()
            self._reenumeration_over("the daemon is stopping")
            if self._watchdog_task is not None:
                self._watchdog_task.cancel()
            if self.control is not None:
                await self.control.stop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    def _sighup(self) -> None:
        async def reload():
            try:
                await self.reload()
            except ControlError as e:
                log.error("reload (SIGHUP) failed: %s", e, extra={"event": "reload-failed"})
        asyncio.get_running_loop().create_task(reload())

    async def _watchdog(self, interval: float) -> None:
        # From the loop itself: if the loop hangs, the pings stop and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    @staticmethod
    def _context(slot: int, opts: DaemonOptions) -> CardContext:
        return CardContext(slot=slot, state_dir=opts.state_dir, shared_gadget=opts.shared_gadget, vault=opts.vault)

    async def _build_cards(self, opts: DaemonOptions) -> list[Card]:
        cards: list[Card] = []
        try:
            for slot, spec in enumerate(opts.slots):
                cards.append(build_card(spec, self._context(slot, opts)))
        except BaseException:
            for card in cards:              # built, never started: only their worker pools to release
                await card.stop()
            raise
        return cards

    async def _serve(self, opts: DaemonOptions) -> None:
        """Run the reader with `opts` until a stop or a re-enumeration is asked for."""
        self._wake.clear()
        self.state = "starting"
        cards = await self._build_cards(opts)
        self.board = BoardService(opts.board, len(cards))
        try:
            await self.board.start()
        except OSError as e:
            for card in cards:
                await card.stop()
            raise EngineError(str(e)) from None
        config = ReaderConfig(slots=len(cards), **self.board.reader_features(),
                              **({"max_message_length": opts.max_message_length} if opts.max_message_length else {}))
        self.service = ReaderService(cards, config=config)
        self._hook_board(cards)
        for card in cards:
            card.add_presence_listener(lambda present: self._notify_status())
        try:
            await self.service.start()
            with self.device_factory(opts, self.service, on_state=self._on_usb_state) as device:
                self.device = device
                detachable = self._detachable_reader(cards)
                if detachable is None or detachable.attached:
                    device.bind()
                    self.usb_state = "bound"
                else:
                    # QEMU's passthru scenario: the USB device appears when a
                    # VSCard client adds its reader, and goes when it leaves.
                    self.usb_state = "detached (no VSCard client)"
                if detachable is not None:
                    detachable.add_attach_listener(self._on_attach)
                self.state = "running"
                if self.notifier:
                    self.notifier.ready()
                self._notify_status()
                log.info("reader ready: %d slot(s) on UDC %s", len(cards), device.udc, extra={"event": "ready"})
                # What start-up made lives as long as the reader: out of the collector's way, so that the
                # full collections the APDUs' garbage triggers now and then do not walk it each time.
                gc.freeze()
                if self._reenumeration is not None:
                    self._reenumeration_over(self._reenumeration.error)
                await self._wake.wait()
                if self._stopping:
                    log.info("stopping", extra={"event": "stop"})
                    self.state = "stopping"
                    if self.notifier:
                        self.notifier.stopping()
                else:
                    log.info("re-enumerating with the new configuration", extra={"event": "reenumerate"})
        finally:
            self.device = None
            await self.service.stop()
            self.board.stop()

    @staticmethod
    def _detachable_reader(cards: list[Card]):
        """The single passthru engine that decides when the reader is on the bus, if any."""
        if len(cards) == 1 and hasattr(cards[0], "add_attach_listener"):
            return cards[0]
        return None

    def _on_attach(self, attached: bool) -> None:
        device = self.device
        if device is None:
            return
        try:
            if attached:
                device.bind()
                self.usb_state = "bound"
            else:
                device.unbind()
                self.usb_state = "detached (no VSCard client)"
        except (GadgetError, OSError) as e:
            log.error("could not %s the reader: %s", "attach" if attached else "detach", e,
                      extra={"event": "attach-failed"})
        self._notify_status()


__all__ = ["Daemon", "DaemonOptions", "SlotSpec"]
