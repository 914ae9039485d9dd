# SPDX-License-Identifier: GPL-3.0-or-later
"""Bulk-OUT AIO blocks cancelled by a SET_INTERFACE are submitted again (usb/function.py)."""

import errno
import types

from ccidgadget.usb.function import _BulkOut


def _endpoint(enabled: bool):
    owner = types.SimpleNamespace(enabled=enabled, service=None)
    cls = type("BulkOutTest", (_BulkOut,), {"owner": owner})
    ep = cls.__new__(cls)
    ep.submitted, ep.released = [], []
    ep._submit = lambda blocks: ep.submitted.extend(blocks)
    ep._release = ep.released.append
    return ep


def test_eshutdown_after_the_enable_was_read_is_resubmitted():
    # SET_INTERFACE: ENABLE (no DISABLE) already processed, then the cancelled read completes
    ep = _endpoint(enabled=True)
    ep._onComplete("block", -errno.ESHUTDOWN, 0)
    assert ep.submitted == ["block"] and ep.released == []


def test_eshutdown_while_disabled_is_parked_for_the_next_enable():
    ep = _endpoint(enabled=False)
    ep._onComplete("block", -errno.ESHUTDOWN, 0)
    assert ep.released == ["block"] and ep.submitted == []
    ep = _endpoint(enabled=False)
    ep._onComplete("block", -errno.EAGAIN, 0)
    assert ep.released == ["block"] and ep.submitted == []
