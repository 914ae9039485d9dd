"""The daemon: one asyncio loop running the gadget, the reader and every card.

Start-up order matters on real controllers (dwc2 rejects requests while the
bus is suspended): everything slow (card state, keys, sockets) is ready
before the UDC is bound, so the host never sees a half-made reader.
Teardown runs in reverse: unbind, close FunctionFS, stop the cards, remove
the gadget.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..ccid import ReaderConfig
from ..usb.gadget import ConfigfsGadget, ExtraFunction, Identity
from .engines import SlotSpec, build_card
from .service import ReaderService

log = logging.getLogger(__name__)


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


class Daemon:
    """Owns the gadget, the FunctionFS function and the reader service."""

    def __init__(self, options: DaemonOptions, *, notifier=None) -> None:
        self.options = options
        self.notifier = notifier
        self.gadget: ConfigfsGadget | None = None
        self.function = None
        self.service: ReaderService | None = None
        self.started_at = time.time()
        self.usb_state = "starting"
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    # -- status -------------------------------------------------------------
    def status(self) -> dict:
        fn = self.function
        return {
            "gadget": str(self.gadget.root) if self.gadget else None,
            "udc": self.gadget.udc if self.gadget else None,
            "bound": bool(self.gadget and self.gadget.bound),
            "usb_state": self.usb_state,
            "host_connected": bool(fn and fn.enabled),
            "enumerations": fn.enumerations if fn else 0,
            "uptime_s": round(time.time() - self.started_at, 1),
            "slots": self.service.describe() if self.service else [],
        }

    def _on_usb_state(self, state: str) -> None:
        self.usb_state = state
        self._notify_status()

    def _notify_status(self) -> None:
        if self.notifier is None or self.service is None:
            return
        slots = ", ".join(f"slot {s['slot']} {s['engine']} {'card' if s['present'] else 'empty'}"
                          for s in self.service.describe())
        self.notifier.status(f"USB {self.usb_state}; {slots}")

    # -- run ----------------------------------------------------------------
    async def run(self) -> int:
        from ..usb.function import CCIDFunction       # imports libaio: only where USB is used

        opts = self.options
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)

        cards = [build_card(spec, slot, opts.state_dir) for slot, spec in enumerate(opts.slots)]
        config = ReaderConfig(slots=len(cards))
        if opts.max_message_length:
            config = ReaderConfig(slots=len(cards), max_message_length=opts.max_message_length)
        self.service = ReaderService(cards, config=config)
        for slot, card in enumerate(cards):
            card.add_presence_listener(lambda present: self._notify_status())

        self.gadget = ConfigfsGadget(name=opts.gadget_name, identity=opts.identity, udc=opts.udc,
                                     runtime_dir=opts.runtime_dir, extra_functions=opts.extra_functions)
        mount = self.gadget.create()
        try:
            await self.service.start()
            self.function = CCIDFunction(str(mount), self.service, on_state=self._on_usb_state)
            self.function.__enter__()
            try:
                loop.add_reader(self.function.eventfd.fileno(), self._process_usb_events)
                self.gadget.bind()
                self.usb_state = "bound"
                if self.notifier:
                    self.notifier.ready()
                self._notify_status()
                log.info("reader ready: %d slot(s) on UDC %s", len(cards), self.gadget.udc,
                         extra={"event": "ready"})
                await self._stop.wait()
                log.info("stopping", extra={"event": "stop"})
                if self.notifier:
                    self.notifier.stopping()
            finally:
                self.gadget.unbind()
                loop.remove_reader(self.function.eventfd.fileno())
                self.function.__exit__(None, None, None)
        finally:
            await self.service.stop()
            self.gadget.destroy()
        return 0

    def _process_usb_events(self) -> None:
        try:
            self.function.processEvents()
        except Exception:
            # One bad ep0 exchange (stalled already by python-functionfs) must
            # not take the reader down.
            log.exception("error while handling USB events")
