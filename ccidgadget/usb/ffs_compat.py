# SPDX-License-Identifier: GPL-3.0-or-later
"""Where we reach into python-functionfs (0.9.2) internals, and why.  Nothing else in ccidgadget does.

1. Data endpoints are made non-blocking (`set_data_endpoints_nonblocking`, reads the private
   `Function._ep_list`).  f_fs makes io_submit on an endpoint that is not enabled *wait* until it is, and
   the host may disable it (UDC unbind, bus reset) between our last check and a submit; with O_NONBLOCK the
   submit fails with EAGAIN instead of freezing the event loop.  python-functionfs has no option for it.

2. Bulk-OUT completions on a disabled endpoint (`ParkingOutEndpoint` overrides the private
   `EndpointOUTFile._onComplete`).  python-functionfs resubmits every completed OUT block except one that
   ended with ESHUTDOWN; on a non-blocking endpoint the host just disabled, the kernel reports EAGAIN as the
   AIO *completion* (io_submit itself succeeds), so the library would resubmit, get EAGAIN, resubmit... a
   busy loop and a warning storm until the host enables us again.  Once the function knows it is disabled
   we treat EAGAIN as ESHUTDOWN, which parks the block for `onEnable` to submit again; while it still
   thinks it is enabled (the DISABLE not read yet, or superseded by a pending ENABLE) we resubmit, or the
   block could be parked after the ENABLE that should have resubmitted it.  A resubmission that itself
   fails with EAGAIN hands the block back (`_release`) instead of losing it.

3. The other way round: SET_INTERFACE (scdaemon's own CCID driver sends one each time it opens the reader)
   makes f_fs disable and re-enable the endpoints and post an ENABLE without a DISABLE.  The reads it
   cancelled complete with ESHUTDOWN through a workqueue, often *after* that ENABLE was read: parked then,
   nothing would submit them again and every bulk-OUT transfer of the host would time out.  So while the
   function is enabled an ESHUTDOWN completion is resubmitted like any other.

4. Fewer system calls per event-loop wake-up (`LeanEventsFunction.processEvents`, reads the private
   `Function._in_aio_context` / `_out_aio_context` and the name-mangled ep0 reader).  python-functionfs reads
   the eventfd, then calls io_getevents on both AIO contexts and reads ep0 every time: four system calls per
   wake-up, of which two or three find nothing (a bulk-OUT completion leaves the IN context and ep0 empty).
   Under TCG a system call costs a good part of a millisecond, and an APDU is one or two wake-ups.
   - io_getevents is asked with a zero timeout: libaio's io_getevents then looks at the kernel's completion
     ring (mapped in our memory) and returns at once, with no system call, when it is empty.
   - The eventfd counts every signal since it was last read: one per AIO completion and one per ep0 event
     (f_fs signals it in __ffs_event_add).  When every signal read is matched by a completion reaped in
     the same call, ep0 has nothing and is not read.  A completion can be reaped before its own signal is
     read (it completed between the read and io_getevents); the count can then hide an ep0 event, but that
     completion's signal is still pending, so the loop calls us again at once, and that count includes it
     while its completion is gone: ep0 is read then (or, if yet another completion raced the same way, at
     the next call: completions need our submissions, so the race cannot go on), always after the
     completions, the order python-functionfs uses.
   On kernels where python-functionfs polls ep0 through AIO (`quirks_ffs_unsafe_eventfd`) its own
   processEvents runs.

5. Bulk-IN AIO blocks are made once and reused (`ReusingInEndpoint`, sets the private `AIOBlock._iovec`
   length).  python-functionfs builds a new AIOBlock (a dozen ctypes fields, an iovec, a partial) for every
   transfer; here each block keeps its own buffer, the message is copied into it and only the iovec's length
   changes.  That is also how a zero-length packet is sent: python-libaio cannot make an iovec for an empty
   buffer (ValueError), so `submit([bytearray()])` never sent one.
"""

from __future__ import annotations

import errno
import fcntl
import os

import functionfs
import libaio


def set_data_endpoints_nonblocking(function: functionfs.Function) -> None:
    for endpoint in function._ep_list[1:]:        # [0] is ep0, which python-functionfs handles itself
        fcntl.fcntl(endpoint, fcntl.F_SETFL, fcntl.fcntl(endpoint, fcntl.F_GETFL) | os.O_NONBLOCK)


class ParkingOutEndpoint(functionfs.EndpointOUTFile):
    """An OUT endpoint whose blocks wait for the next ENABLE instead of spinning while disabled (see 2.)."""

    def endpoint_enabled(self) -> bool:
        """Whether the function believes the host has this endpoint enabled (subclasses say)."""
        raise NotImplementedError

    def _onComplete(self, aio_block, res, res2):
        enabled = self.endpoint_enabled()
        if res == -errno.EAGAIN and not enabled:
            res = -errno.ESHUTDOWN
        elif res == -errno.ESHUTDOWN and enabled:          # (3.)
            res = -errno.EAGAIN
        try:
            super()._onComplete(aio_block, res, res2)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            self._release(aio_block)


class LeanEventsFunction(functionfs.Function):
    """A Function whose `processEvents` makes only the system calls that find something (see 4.)."""

    def processEvents(self):
        if self._Function__quirks_ffs_unsafe_eventfd:
            return super().processEvents()
        signalled = self._eventfd.read() or 0           # None: nothing since the last read (EAGAIN)
        reaped = 0
        if signalled:
            try:
                reaped = len(self._in_aio_context.getEvents(0, timeout=0))
                if self._out_aio_context is not None:
                    reaped += len(self._out_aio_context.getEvents(0, timeout=0))
            except BaseException:
                # a completion handler failed: the count means nothing now, ep0 may hold events
                self._Function__real_processEndpoint0Events()
                raise
        if signalled > reaped:
            self._Function__real_processEndpoint0Events()


class ReusingInEndpoint(functionfs.EndpointINFile):
    """An IN endpoint that sends byte strings from AIO blocks it makes once and reuses (see 5.).

    `send(data)` queues one transfer of `data` (b"" is a zero-length packet); on completion
    `sent(status)` is called; if the kernel has no room `send` returns False and nothing is queued.
    """

    #: a new block's buffer size (a bigger message grows the block that carries it)
    BLOCK_SIZE = 1024

    def __init__(self, path, submit, eventfd):
        super().__init__(path, submit, eventfd)
        self._free: list[tuple[libaio.AIOBlock, bytearray, object]] = []
        self._by_block: dict[int, tuple[libaio.AIOBlock, bytearray, object]] = {}

    def sent(self, status: int) -> None:
        """A transfer ended: `status` is the byte count, or a negative errno."""

    def _block(self, size: int):
        entry = self._free.pop() if self._free else None
        if entry is not None and len(entry[1]) >= size:
            return entry
        buffer = bytearray(max(size, self.BLOCK_SIZE if entry is None else size))
        if entry is None:
            block = libaio.AIOBlock(mode=libaio.AIOBLOCK_MODE_WRITE, target_file=self, buffer_list=(buffer,),
                                    offset=0, eventfd=self._eventfd, onCompletion=self._completed)
        else:
            block = entry[0]
            block.buffer_list = (buffer,)
        entry = (block, buffer, block._iovec[0])
        self._by_block[id(block)] = entry
        return entry

    def send(self, data: bytes) -> bool:
        n = len(data)
        entry = self._block(n)
        block, buffer, iovec = entry
        buffer[:n] = data
        iovec.iov_len = n
        try:
            self._submit((block,))
        except OSError as exc:
            self._free.append(entry)
            if exc.errno != errno.EAGAIN:
                raise
            return False
        return True

    def _completed(self, block, res, res2) -> None:
        self._free.append(self._by_block[id(block)])
        self.sent(res)
