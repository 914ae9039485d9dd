# SPDX-License-Identifier: GPL-3.0-or-later
"""Our USB device for one configuration, as one context object: the configfs gadget, the CCID function on
FunctionFS registered with the event loop, and whether it is bound to the UDC.

    with UsbDevice(options, service, on_state=...) as device:   # gadget built (a crashed run's removed first)
        device.bind()                                           # the host sees the reader
        ...
    # leaving: unbound, FunctionFS closed, gadget removed, in that order

Everything slow (card state, keys, sockets) is ready before `bind()`: on dwc2 (the Raspberry Pi) requests
are rejected while the bus is suspended, so the host must never see a half-made reader.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from .gadget import ConfigfsGadget

if TYPE_CHECKING:
    from ..daemon.service import HostSide
    from ..options import DaemonOptions

log = logging.getLogger(__name__)


class UsbDevice:
    def __init__(self, options: "DaemonOptions", host_side: "HostSide", *,
                 on_state: Callable[[str], None] = lambda state: None) -> None:
        self.options = options
        self.host_side = host_side
        self.on_state = on_state
        self.gadget = ConfigfsGadget(name=options.gadget_name, identity=options.usb_identity, udc=options.udc,
                                     runtime_dir=options.runtime_dir, extra_functions=options.functions)
        self.function = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- facts for status ---------------------------------------------------------
    @property
    def udc(self) -> str | None:
        return self.gadget.udc

    @property
    def root(self):
        return self.gadget.root

    @property
    def bound(self) -> bool:
        return self.gadget.bound

    @property
    def host_connected(self) -> bool:
        return bool(self.function is not None and self.function.enabled)

    @property
    def enumerations(self) -> int:
        return self.function.enumerations if self.function is not None else 0

    # -- life ---------------------------------------------------------------------
    def __enter__(self) -> "UsbDevice":
        from .function import CCIDFunction          # imports libaio: only where USB is used

        mount = self.gadget.create()                # removes what a crashed run left first
        try:
            function = CCIDFunction(str(mount), self.host_side, on_state=self.on_state,
                                    interface_name=self.options.usb_identity.product)
            function.__enter__()
            self.function = function
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.function.eventfd.fileno(), self._process_usb_events)
        except BaseException:
            self._close_function()
            self.gadget.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.gadget.unbind()
        finally:
            self._close_function()
            self.gadget.destroy()

    def _close_function(self) -> None:
        if self.function is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.function.eventfd.fileno())
            self._loop = None
        self.function.__exit__(None, None, None)
        self.function = None

    def bind(self) -> None:
        self.gadget.bind()

    def unbind(self) -> None:
        self.gadget.unbind()

    def _process_usb_events(self) -> None:
        try:
            self.function.processEvents()
        except Exception:
            # One bad ep0 exchange (stalled already by python-functionfs) must not take the reader down.
            log.exception("error while handling USB events")
