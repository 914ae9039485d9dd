"""The daemon: one asyncio loop running the gadget, the reader, every card and the control socket.

Start-up order matters on real controllers (dwc2 rejects requests while the
bus is suspended): everything slow (card state, keys, sockets) is ready
before the UDC is bound, so the host never sees a half-made reader.
Teardown runs in reverse: unbind, close FunctionFS, stop the cards, remove
the gadget.

Around that core:
- the control socket (control.py) starts first, so a second daemon on the
  same runtime directory stops before it touches configfs;
- a gadget a crashed run left behind is removed before ours is built
  (ConfigfsGadget.create -> cleanup_stale, which also unmounts a stale
  FunctionFS mount of our instance);
- systemd hears READY=1 once the UDC is bound, STATUS= whenever the USB
  state or a slot changes, WATCHDOG=1 from this loop (notify.py);
- reload (control verb or SIGHUP) applies a changed configuration: slot
  engines and cards are swapped in place while the host stays connected;
  a change of identity, UDC, functions or slot count rebuilds the gadget
  (the host sees the reader go and come back).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from ..cards.base import Card, EmulatedCard
from ..cards.presence import NO_PRESENCE
from ..ccid import ReaderConfig
from ..presence.config import BoardConfig
from ..presence.service import BoardService
from ..usb.gadget import ConfigfsGadget, ExtraFunction, GadgetError, Identity
from .control import ControlError, ControlServer
from .engines import EngineError, SlotSpec, build_card
from .service import ReaderService

log = logging.getLogger(__name__)

CONTROL_SOCKET_NAME = "control.sock"


@dataclass
class DaemonOptions:
    slots: list[SlotSpec] = field(default_factory=lambda: [SlotSpec()])
    identity: Identity | None = None
    udc: str | None = None
    gadget_name: str = "ccidgadget"
    state_dir: Path = Path("/var/lib/ccidgadget")
    runtime_dir: Path = Path("/run/ccidgadget")
    max_message_length: int | None = None
    extra_functions: list[ExtraFunction] = field(default_factory=list)
    log_level: str = "info"
    control_group: str | None = None         # None: the control socket is root-only (0600)
    control_socket: bool = True              # False: no control socket (embedding, tests)
    board: BoardConfig = field(default_factory=BoardConfig)   # [presence], [pinpad]: buttons, keypad, LED

    @property
    def shared_gadget(self) -> bool:
        """More than our one slot on the USB device: no slot may take the device off the bus."""
        return len(self.slots) > 1 or bool(self.extra_functions)

    def gadget_key(self) -> tuple:
        """Everything that, when changed, needs the host to enumerate the gadget again."""
        return (self.identity, self.udc, self.gadget_name, self.max_message_length,
                tuple((f.kind, f.name, tuple(sorted(f.attributes.items()))) for f in self.extra_functions),
                len(self.slots), self.board.pinpad)     # the PIN pad is in the descriptor (bPINSupport)


#: Why a slot's card cannot be inserted or removed from here, by engine.
_PRESENCE_OWNER = {
    "passthru": "its card is present while a VSCard client (QEMU's vscclient) is connected with a card; "
                "remove it on the client side",
    "vpcd": "its card is present while a vpcd client (vicc, or 'ccidgadget vpcd-card') is connected; "
            "stop the client to remove it",
    "pcsc": "it relays a real card: pull the card out of the PC/SC reader",
}


class Daemon:
    """Owns the gadget, the FunctionFS function, the reader service and the control socket."""

    def __init__(self, options: DaemonOptions, *, notifier=None,
                 loader: Callable[[], DaemonOptions] | None = None) -> None:
        self.options = options
        self.notifier = notifier
        self.loader = loader                   # re-reads the configuration for reload
        self.config_source: str | None = None
        self.gadget: ConfigfsGadget | None = None
        self.function = None
        self.service: ReaderService | None = None
        self.board: BoardService | None = None
        self.control: ControlServer | None = None
        self.started_at = time.time()
        self.usb_state = "starting"
        self.state = "starting"
        self.reloads = 0
        self.last_reload: dict | None = None
        self._stop = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._reenumerate = False
        self._reenumerated: asyncio.Future | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._watchdog_task: asyncio.Task | None = None

    def request_stop(self) -> None:
        self._stopping = True
        self._stop.set()
        if self._wake is not None:
            self._wake.set()

    # -- status -------------------------------------------------------------
    def status(self) -> dict:
        fn = self.function
        ident = self.options.identity
        slots = self.service.describe() if self.service else []
        for info in slots:
            spec = self.options.slots[info["slot"]] if info["slot"] < len(self.options.slots) else None
            if spec is not None and spec.engine == "emulated":
                info.setdefault("type", spec.type)
            if self.board is not None:
                info["waiting"] = self.board.waiting(info["slot"])
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state,
            "config": self.config_source,
            "gadget": str(self.gadget.root) if self.gadget else None,
            "udc": self.gadget.udc if self.gadget else None,
            "bound": bool(self.gadget and self.gadget.bound),
            "usb_state": self.usb_state,
            "host_connected": bool(fn and fn.enabled),
            "enumerations": fn.enumerations if fn else 0,
            "identity": ({"vid": f"{ident.vid:04x}", "pid": f"{ident.pid:04x}", "manufacturer": ident.manufacturer,
                          "product": ident.product} if ident else None),
            "functions": [f"{f.kind}.{f.name}" for f in self.options.extra_functions],
            "uptime_s": round(time.time() - self.started_at, 1),
            "reloads": self.reloads,
            "slots": slots,
            "presence": self.board.describe() if self.board else None,
        }

    def engine_of(self, slot: int) -> str | None:
        """For the journal's ENGINE= field."""
        try:
            spec = self.options.slots[slot]
        except (IndexError, TypeError):
            return None
        return f"emulated-{spec.type}" if spec.engine == "emulated" else spec.engine

    def _on_usb_state(self, state: str) -> None:
        self.usb_state = state
        self._notify_status()

    def status_line(self) -> str:
        if self.service is None:
            return f"{self.state}"
        host = "host connected" if self.function is not None and self.function.enabled else "no host"
        udc = self.gadget.udc if self.gadget else "?"
        slots = "; ".join(f"slot {s['slot']} {self.engine_of(s['slot']) or s['engine']}: "
                          f"{'card present' if s['present'] else 'empty'}, {s['apdus']} APDUs"
                          for s in self.service.describe())
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
            why = _PRESENCE_OWNER.get(card.engine, "only emulated cards can be inserted and removed from here")
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
        from .config import ConfigError

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
            try:
                result = await self.apply(new)
            finally:
                self.state = "running" if not self._stopping else "stopping"
                if self.notifier:
                    self.notifier.ready()
                self._notify_status()
            self.reloads += 1
            self.last_reload = result
            log.info("reload: %s", result["message"], extra={"event": "reload"})
            return result

    async def apply(self, new: DaemonOptions) -> dict:
        old = self.options
        notes: list[str] = []
        if new.runtime_dir != old.runtime_dir:
            notes.append(f"runtime_dir stays {old.runtime_dir} until the next restart")
            new = dataclasses.replace(new, runtime_dir=old.runtime_dir)
        if new.log_level != old.log_level:
            from .journal import set_level
            set_level(new.log_level)
            notes.append(f"log level {new.log_level}")
        if new.control_group != old.control_group and self.control is not None:
            self.control.apply_permissions(new.control_group)
            notes.append(f"control socket group {new.control_group or 'root only'}")
        if new.board != old.board and new.gadget_key() == old.gadget_key():
            await self._restart_board(new.board)
            notes.append("presence sources restarted")
        if new.gadget_key() != old.gadget_key():
            what = [name for name, a, b in (
                ("identity", old.identity, new.identity), ("udc", old.udc, new.udc),
                ("gadget name", old.gadget_name, new.gadget_name),
                ("max_message_length", old.max_message_length, new.max_message_length),
                ("functions", old.gadget_key()[4], new.gadget_key()[4]),
                ("number of slots", len(old.slots), len(new.slots)),
                ("pinpad", old.board.pinpad, new.board.pinpad)) if a != b]
            await self._reenumerate_with(new)
            message = (f"re-enumerated: {', '.join(what)} changed, which the host only learns by enumerating "
                       f"the device again (the reader disconnected and came back)")
            return {"reenumerated": True, "changed": what, "slots_replaced": list(range(len(new.slots))),
                    "message": "; ".join([message] + notes)}
        replaced = []
        state_dir_changed = new.state_dir != old.state_dir
        for slot, (a, b) in enumerate(zip(old.slots, new.slots)):
            if a != b or (state_dir_changed and b.engine == "emulated"):
                await self._replace_slot(slot, b, new.state_dir)
                replaced.append(slot)
        self.options = new
        if replaced:
            message = f"slot(s) {', '.join(map(str, replaced))} replaced without re-enumerating"
        else:
            message = "no slot changed"
        return {"reenumerated": False, "changed": [f"slot {s}" for s in replaced], "slots_replaced": replaced,
                "message": "; ".join([message] + notes)}

    async def _replace_slot(self, slot: int, spec: SlotSpec, state_dir: Path) -> None:
        """Swap one slot's card engine while the reader stays on the bus."""
        try:
            card = build_card(spec, slot, state_dir, shared_gadget=self.options.shared_gadget)
        except Exception as e:
            raise ControlError(f"slot {slot} not replaced: cannot build its {spec.engine} card: {e}") from None
        service = self.service
        card.add_presence_listener(lambda present: self._notify_status())
        if self.board is not None:
            self.board.attach(slot, card)
        try:
            await service.replace_card(slot, card)
        except Exception as e:
            log.error("slot %d: the new %s engine did not start: %s", slot, spec.engine, e,
                      extra={"slot": slot, "event": "reload-failed"})
            raise ControlError(f"slot {slot}: the new {spec.engine} card did not start ({e}); the slot is "
                               f"empty until the next reload or restart") from None
        finally:
            # engine_of() must describe the new engine from here on
            slots = list(self.options.slots)
            slots[slot] = spec
            self.options = dataclasses.replace(self.options, slots=slots)
        log.info("slot %d: now %s", slot, self.engine_of(slot), extra={"slot": slot, "event": "replace"})

    async def _restart_board(self, board: BoardConfig) -> None:
        """New buttons/LED/timeouts without re-enumerating: open waits are refused, cards get the new presence.

        The old sources are released first (a GPIO line or a grabbed input device has one user at a time).
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

    def _hook_board(self, cards) -> None:
        for slot, card in enumerate(cards):
            if isinstance(card, EmulatedCard):
                card.presence = NO_PRESENCE          # until attach() gives it its slot's, if it has one
            self.board.attach(slot, card)
        self.service.cancel_listeners.append(self.board.cancel)
        self.service.pin_entry = self.board.pin_entry if self.board.pinpad is not None else None

    async def _reenumerate_with(self, new: DaemonOptions) -> None:
        loop = asyncio.get_running_loop()
        self._previous_options = self.options
        self.options = new
        self._reenumerated = loop.create_future()
        self._reenumerate = True
        self._wake.set()
        error = await self._reenumerated
        if error is not None:
            raise ControlError(error)

    # -- run ----------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        if self._stop.is_set():
            self._wake.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        if self.notifier is not None:
            interval = self.notifier.watchdog_interval()
            if interval:
                self._watchdog_task = loop.create_task(self._watchdog(interval))
        try:
            if self.options.control_socket:
                self.control = ControlServer(self, self.options.runtime_dir / CONTROL_SOCKET_NAME,
                                             group=self.options.control_group)
                try:
                    await self.control.start()
                except ControlError as e:
                    self.control = None
                    raise GadgetError(str(e)) from None
            while True:
                self._reenumerate = False
                try:
                    await self._run_gadget()
                except (GadgetError, EngineError, OSError) as e:
                    if self._reenumerated is None or self._reenumerated.done():
                        raise
                    # A re-enumeration with the new configuration failed: go back to the old one.
                    message = (f"re-enumeration with the new configuration failed ({e}); "
                               f"went back to the previous configuration")
                    log.error("%s", message, extra={"event": "reload-failed"})
                    self._reenumerated.set_result(message)
                    self.options = self._previous_options
                    self._reenumerate = True
                if not self._reenumerate or self._stopping:
                    break
                self._wake.clear()
        finally:
            self.state = "stopping"
            if self.notifier:
                self.notifier.stopping()
            if self._reenumerated is not None and not self._reenumerated.done():
                self._reenumerated.set_result("the daemon is stopping")
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

    async def _run_gadget(self) -> None:
        from ..usb.function import CCIDFunction       # imports libaio: only where USB is used

        opts = self.options
        loop = asyncio.get_running_loop()
        self.state = "starting"
        cards = [build_card(spec, slot, opts.state_dir, shared_gadget=opts.shared_gadget)
                 for slot, spec in enumerate(opts.slots)]
        self.board = BoardService(opts.board, len(cards))
        try:
            await self.board.start()
        except OSError as e:
            for card in cards:
                await card.stop()
            raise EngineError(str(e)) from None
        features = self.board.reader_features()
        config = ReaderConfig(slots=len(cards), **features)
        if opts.max_message_length:
            config = ReaderConfig(slots=len(cards), max_message_length=opts.max_message_length, **features)
        self.service = ReaderService(cards, config=config)
        self._hook_board(cards)
        for slot, card in enumerate(cards):
            card.add_presence_listener(lambda present: self._notify_status())

        self.gadget = ConfigfsGadget(name=opts.gadget_name, identity=opts.identity, udc=opts.udc,
                                     runtime_dir=opts.runtime_dir, extra_functions=opts.extra_functions)
        try:
            mount = self.gadget.create()        # removes what a crashed run left first
        except BaseException:
            for card in cards:
                try:
                    await card.stop()
                except Exception:
                    pass
            raise
        try:
            await self.service.start()
            self.function = CCIDFunction(str(mount), self.service, on_state=self._on_usb_state,
                                         interface_name=self.options.identity.product)
            self.function.__enter__()
            try:
                loop.add_reader(self.function.eventfd.fileno(), self._process_usb_events)
                detachable = self._detachable_reader(cards)
                if detachable is None or detachable.attached:
                    self.gadget.bind()
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
                log.info("reader ready: %d slot(s) on UDC %s", len(cards), self.gadget.udc,
                         extra={"event": "ready"})
                if self._reenumerated is not None and not self._reenumerated.done():
                    self._reenumerated.set_result(None)
                await self._wake.wait()
                if self._stopping:
                    log.info("stopping", extra={"event": "stop"})
                    self.state = "stopping"
                    if self.notifier:
                        self.notifier.stopping()
                else:
                    log.info("re-enumerating with the new configuration", extra={"event": "reenumerate"})
            finally:
                self.gadget.unbind()
                loop.remove_reader(self.function.eventfd.fileno())
                self.function.__exit__(None, None, None)
                self.function = None
        finally:
            await self.service.stop()
            self.board.stop()
            self.gadget.destroy()

    @staticmethod
    def _detachable_reader(cards):
        """The single passthru engine that decides when the reader is on the bus, if any."""
        if len(cards) == 1 and hasattr(cards[0], "add_attach_listener"):
            return cards[0]
        return None

    def _on_attach(self, attached: bool) -> None:
        gadget = self.gadget
        if gadget is None:
            return
        try:
            if attached:
                gadget.bind()
                self.usb_state = "bound"
            else:
                gadget.unbind()
                self.usb_state = "detached (no VSCard client)"
        except (GadgetError, OSError) as e:
            log.error("could not %s the reader: %s", "attach" if attached else "detach", e,
                      extra={"event": "attach-failed"})
        self._notify_status()

    def _process_usb_events(self) -> None:
        try:
            self.function.processEvents()
        except Exception:
            # One bad ep0 exchange (stalled already by python-functionfs) must
            # not take the reader down.
            log.exception("error while handling USB events")
