"""FunctionFS adapter: python-functionfs endpoints <-> the reader service.

A thin layer.  It turns ep0 events into `ReaderService` calls, bulk-OUT AIO
completions into `bulk_out(bytes, transfer_end=...)`, and queues bulk-IN and
interrupt-IN transfers.  It is driven from the asyncio loop: the daemon
registers `eventfd` with `loop.add_reader(..., processEvents)`, so every
callback here runs on the loop thread.

Two f_fs facts shape it:
- f_fs never sets `req->zero`: a bulk-IN message whose length is a multiple
  of wMaxPacketSize is followed by an explicit zero-length transfer, or
  libccid's large read would wait for more (USB 2.0 §5.8.3).
- AIO on an endpoint that is not enabled blocks in io_submit, so nothing is
  submitted before ENABLE; the core is reset on ENABLE anyway.  The two
  places where we override python-functionfs for it are in ffs_compat.py.
"""

from __future__ import annotations

import collections
import errno
import logging
from typing import TYPE_CHECKING, Callable

from . import libaio_import  # noqa: F401  (before functionfs: no ldconfig run at start)

import functionfs  # noqa: E402
from functionfs import ch9  # noqa: E402

from .descriptors import ccid_descriptors
from .ffs_compat import (LeanEventsFunction, ParkingOutEndpoint, ReusingInEndpoint,
                         set_data_endpoints_nonblocking)

if TYPE_CHECKING:
    from ..daemon.service import HostSide

log = logging.getLogger(__name__)

# Endpoint indexes in descriptor order (ep0 is 0).
EP_BULK_OUT, EP_BULK_IN, EP_INTERRUPT_IN = 1, 2, 3
#: Bulk-IN transfers in flight before we queue in Python; one per busy slot
#: plus time extensions is far below this.
MAX_BULK_IN_IN_FLIGHT = 16


class _BulkOut(ParkingOutEndpoint):
    owner: "CCIDFunction"

    def endpoint_enabled(self) -> bool:
        return self.owner.enabled

    def onComplete(self, data, status):
        if data is None:
            if status == -errno.EAGAIN:               # endpoint disabled (reset, unbind): see above
                log.debug("bulk-OUT read on a disabled endpoint")
            elif status != -errno.ESHUTDOWN:
                log.warning("bulk-OUT transfer failed: %s", errno.errorcode.get(-status, status))
            return
        # A completion shorter than the AIO buffer ended with a short packet
        # (or ZLP): the host's transfer is over, which lets the core resync.
        # `data` is a view of the AIO buffer, reused once we return: the core keeps copies only.
        buffer_size = len(data.obj) if data.obj is not None else 0
        self.owner.service.bulk_out(data, transfer_end=len(data) < buffer_size)


class _BulkIn(ReusingInEndpoint):
    owner: "CCIDFunction"

    def sent(self, status: int) -> None:
        self.owner._bulk_in_done(status)


class _InterruptIn(functionfs.EndpointINFile):
    owner: "CCIDFunction"

    def onComplete(self, buffer_list, user_data, status):
        self.owner._interrupt_done(status)
        return False

    def onSubmitEAGAIN(self, buffer_list, user_data):
        self.owner._interrupt_busy = False


class CCIDFunction(LeanEventsFunction):
    """The CCID interface of the gadget, backed by a ReaderService."""

    def __init__(self, path: str, service: "HostSide", *, interface_name: str = "CCID",
                 on_state: Callable[[str], None] | None = None) -> None:
        fs, hs, ss = ccid_descriptors(service.descriptor)
        super().__init__(path, fs_list=fs, hs_list=hs, ss_list=ss,
                         lang_dict={0x0409: [interface_name]})
        self.service = service
        self.on_state = on_state or (lambda state: None)
        self.enabled = False
        self.bound = False
        self.suspended = False
        self.enumerations = 0
        self._bulk_in_max_packet = 512
        self._bulk_in_in_flight = 0
        self._bulk_in_queue: collections.deque[bytes] = collections.deque()
        self._interrupt_busy = False

    def __enter__(self):
        super().__enter__()
        # Data endpoints non-blocking (ffs_compat.py says why).
        set_data_endpoints_nonblocking(self)
        return self

    def getEndpointClass(self, is_in, descriptor):
        address = descriptor.bEndpointAddress
        attributes = descriptor.bmAttributes & ch9.USB_ENDPOINT_XFERTYPE_MASK
        if not is_in:
            base = _BulkOut
        elif attributes == ch9.USB_ENDPOINT_XFER_INT:
            base = _InterruptIn
        else:
            base = _BulkIn
        owner = self
        return type(f"{base.__name__}_{address:02x}", (base,), {"owner": owner})

    # -- ep0 events ---------------------------------------------------------
    def onBind(self):
        self.bound = True
        log.info("gadget bound to the UDC", extra={"event": "bind"})
        self.on_state("bound")

    def onUnbind(self):
        self.bound = False
        self._disable()
        log.info("gadget unbound", extra={"event": "unbind"})
        self.on_state("unbound")

    def onEnable(self):
        if self.enabled:
            # An ENABLE that replaces a DISABLE we never saw (f_fs coalesces
            # them): answers queued for the previous host session must not
            # reach the new one.
            self._bulk_in_queue.clear()
        super().onEnable()                   # submits the bulk-OUT AIO blocks
        self.enabled = True
        self.suspended = False
        self.enumerations += 1
        try:
            self._bulk_in_max_packet = self.getEndpoint(EP_BULK_IN).getDescriptor().wMaxPacketSize
        except OSError:
            log.debug("could not read the bulk-IN descriptor; assuming 512-byte packets")
        log.info("host enumerated the reader (bulk wMaxPacketSize %d)", self._bulk_in_max_packet,
                 extra={"event": "enable"})
        self.service.attach(self)
        self.service.usb_reset()
        # The core reports every slot's state after a reset; its interrupt
        # queue may have filled while we were disabled, so start the pipe.
        self.interrupt_pending()
        self.on_state("enabled")

    def onDisable(self):
        self._disable()
        log.info("host disabled the reader (reset or disconnect)", extra={"event": "disable"})
        self.on_state("disabled")

    def onSuspend(self):
        self.suspended = True
        log.debug("bus suspended")

    def onResume(self):
        self.suspended = False
        log.debug("bus resumed")

    def _disable(self):
        if self.enabled:
            self.enabled = False
            self.service.attach(None)
            self.service.usb_reset()
        self._bulk_in_queue.clear()
        self._bulk_in_in_flight = 0
        self._interrupt_busy = False

    def onSetup(self, request_type, request, value, index, length):
        if (request_type & ch9.USB_TYPE_MASK) == ch9.USB_TYPE_CLASS and \
                (request_type & ch9.USB_RECIP_MASK) == ch9.USB_RECIP_INTERFACE:
            answer = self.service.control_request(request_type, request, value, index, length)
            if answer is None:
                self.ep0.halt(request_type)
            elif request_type & ch9.USB_DIR_IN:
                self.ep0.write(answer[:length])
            else:
                self.ep0.read(0)              # status stage of a no-data OUT request
            return
        super().onSetup(request_type, request, value, index, length)

    # -- Transport for ReaderService -----------------------------------------
    def send_bulk_in(self, data: bytes) -> None:
        if not self.enabled:
            return                            # the host is gone; the core was reset
        self._queue_bulk_in(data)
        if len(data) % self._bulk_in_max_packet == 0:
            self._queue_bulk_in(b"")          # explicit ZLP, see module docstring

    def interrupt_pending(self) -> None:
        if not self.enabled or self._interrupt_busy:
            return
        message = self.service.pop_interrupt()
        if message is None:
            return
        self._interrupt_busy = True
        self.getEndpoint(EP_INTERRUPT_IN).submit([bytearray(message)])

    # -- IN completions ---------------------------------------------------------
    def _queue_bulk_in(self, data: bytes) -> None:
        if self._bulk_in_in_flight >= MAX_BULK_IN_IN_FLIGHT or self._bulk_in_queue:
            self._bulk_in_queue.append(data)          # in order, after what waits already
            return
        if self.getEndpoint(EP_BULK_IN).send(data):
            self._bulk_in_in_flight += 1
        else:
            self._bulk_in_queue.appendleft(data)       # no room in the kernel now: after the next completion

    def _bulk_in_done(self, status: int) -> None:
        if status == -errno.EAGAIN:
            # submitted as the host disabled the endpoint: an answer for a session that is gone
            log.debug("bulk-IN transfer on a disabled endpoint dropped")
        elif status < 0 and status != -errno.ESHUTDOWN:
            log.warning("bulk-IN transfer failed: %s", errno.errorcode.get(-status, status))
        if not self.enabled:
            return
        self._bulk_in_in_flight = max(0, self._bulk_in_in_flight - 1)
        endpoint = self.getEndpoint(EP_BULK_IN)
        while self._bulk_in_queue and self._bulk_in_in_flight < MAX_BULK_IN_IN_FLIGHT:
            if not endpoint.send(self._bulk_in_queue[0]):
                break
            self._bulk_in_queue.popleft()
            self._bulk_in_in_flight += 1

    def _interrupt_done(self, status: int) -> None:
        self._interrupt_busy = False
        if status < 0 and status != -errno.ESHUTDOWN:
            log.debug("interrupt-IN transfer failed: %s", errno.errorcode.get(-status, status))
        if self.enabled:
            self.interrupt_pending()
