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
"""

from __future__ import annotations

import errno
import fcntl
import os

import functionfs


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
