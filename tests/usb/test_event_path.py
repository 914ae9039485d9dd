# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-APDU USB path (usb/ffs_compat.py 4. and 5., usb/function.py): reused bulk-IN blocks, zero-length
packets, and a wake-up that reads ep0 only when the eventfd counted more than the completions it reaped."""

import collections
import ctypes
import errno
import types

import pytest

from ccidgadget.usb.ffs_compat import LeanEventsFunction, ReusingInEndpoint
from ccidgadget.usb.function import EP_BULK_IN, MAX_BULK_IN_IN_FLIGHT, CCIDFunction


class _InEndpoint(ReusingInEndpoint):
    def fileno(self):
        return 0


def _in_endpoint(fail_with: int | None = None):
    ep = _InEndpoint.__new__(_InEndpoint)
    ep._eventfd = None
    ep._free, ep._by_block = [], {}
    ep.submitted, ep.statuses = [], []

    def submit(blocks):
        if fail_with is not None:
            raise OSError(fail_with, "submit")
        ep.submitted.extend(blocks)
    ep._submit = submit
    ep.sent = ep.statuses.append
    return ep


def _kernel_view(block) -> bytes:
    """What io_submit hands the kernel: the bytes the iocb's iovec points at."""
    iocb = block._iocb
    assert iocb.u.c.nbytes == 1                             # one iovec
    iov = block._iovec[0]
    return ctypes.string_at(iov.iov_base, iov.iov_len) if iov.iov_len else b""


def test_blocks_are_reused_and_carry_exactly_the_message():
    ep = _in_endpoint()
    assert ep.send(b"\x80\x02\x00\x00\x00\x00\x01\x00\x00\x00\x90\x00")
    first = ep.submitted[-1]
    assert _kernel_view(first) == b"\x80\x02\x00\x00\x00\x00\x01\x00\x00\x00\x90\x00"
    first.onCompletion(first, 12, 12)
    assert ep.statuses == [12]
    assert ep.send(b"abc")
    assert ep.submitted[-1] is first and _kernel_view(first) == b"abc"     # same block, new length


def test_a_zero_length_packet_is_a_transfer_of_no_bytes():
    # python-libaio cannot build an iovec for an empty buffer: submit([bytearray()]) raised ValueError
    ep = _in_endpoint()
    assert ep.send(b"")
    assert ep.submitted[-1]._iovec[0].iov_len == 0


def test_a_message_bigger_than_the_block_grows_it():
    ep = _in_endpoint()
    ep.send(b"x")
    block = ep.submitted[-1]
    block.onCompletion(block, 1, 1)
    big = bytes(range(256)) * 20                             # 5120 bytes, over BLOCK_SIZE
    ep.send(big)
    assert ep.submitted[-1] is block and _kernel_view(block) == big


def test_eagain_keeps_the_block_and_says_so():
    ep = _in_endpoint(fail_with=errno.EAGAIN)
    assert ep.send(b"abc") is False
    assert len(ep._free) == 1
    ep = _in_endpoint(fail_with=errno.EIO)
    with pytest.raises(OSError):
        ep.send(b"abc")


# --------------------------------------------------------------------------- CCIDFunction's bulk-IN queue


class _FakeIn:
    def __init__(self):
        self.sent, self.room = [], True

    def send(self, data):
        if not self.room:
            return False
        self.sent.append(bytes(data))
        return True


def _function(max_packet=512):
    f = CCIDFunction.__new__(CCIDFunction)
    ep = _FakeIn()
    f._ep_list = [None, None, ep, None]
    f.enabled = True
    f._bulk_in_max_packet = max_packet
    f._bulk_in_in_flight = 0
    f._bulk_in_queue = collections.deque()
    return f, ep


def test_a_message_of_whole_packets_is_followed_by_a_zlp():
    f, ep = _function()
    f.send_bulk_in(b"\x80" + bytes(511))
    f.send_bulk_in(b"\x80" + bytes(100))
    assert [len(m) for m in ep.sent] == [512, 0, 101]
    assert f._bulk_in_in_flight == 3


def test_queued_answers_keep_their_order():
    f, ep = _function()
    ep.room = False                                        # the kernel has no room (EAGAIN)
    f.send_bulk_in(b"first")
    ep.room = True
    f.send_bulk_in(b"second")                              # must not overtake "first"
    assert ep.sent == []
    f._bulk_in_in_flight = 1
    f._bulk_in_done(5)                                     # a completion drains the queue in order
    assert ep.sent == [b"first", b"second"]
    f._bulk_in_in_flight = MAX_BULK_IN_IN_FLIGHT
    f.send_bulk_in(b"third")
    assert ep.sent[-1] == b"second" and list(f._bulk_in_queue) == [b"third"]
    assert f.getEndpoint(EP_BULK_IN) is ep


# --------------------------------------------------------------------------- one wake-up


class _Context:
    def __init__(self, batches):
        self.batches = list(batches)
        self.calls = []

    def getEvents(self, min_nr=1, nr=None, timeout=None):
        self.calls.append((min_nr, timeout))
        return self.batches.pop(0) if self.batches else []


def _lean(counts, in_batches=(), out_batches=()):
    f = LeanEventsFunction.__new__(LeanEventsFunction)
    f._Function__quirks_ffs_unsafe_eventfd = False
    counts = list(counts)
    f._eventfd = types.SimpleNamespace(read=lambda: counts.pop(0))
    f._in_aio_context = _Context(in_batches)
    f._out_aio_context = _Context(out_batches)
    f.ep0_reads = 0

    def ep0():
        f.ep0_reads += 1
    f._Function__real_processEndpoint0Events = ep0
    return f


def test_a_completion_alone_does_not_read_ep0():
    f = _lean([1], out_batches=[["bulk-out"]])
    f.processEvents()
    assert f.ep0_reads == 0
    assert f._in_aio_context.calls == [(0, 0)] and f._out_aio_context.calls == [(0, 0)]   # zero timeout


def test_a_signal_without_its_completion_reads_ep0():
    f = _lean([2], out_batches=[["bulk-out"]])            # one completion + one ep0 event
    f.processEvents()
    assert f.ep0_reads == 1


def test_an_ep0_event_hidden_by_an_early_completion_is_read_on_the_next_wake_up():
    # signals read: an ep0 event and completion A; reaped: A and B (B completed after the read); B's
    # signal is still pending, so the loop calls again: then the count exceeds what is reaped
    f = _lean([2, 1], in_batches=[["B"]], out_batches=[["A"]])
    f.processEvents()
    assert f.ep0_reads == 0
    f.processEvents()
    assert f.ep0_reads == 1


def test_nothing_signalled_reads_nothing():
    f = _lean([None])
    f.processEvents()
    assert f.ep0_reads == 0 and f._in_aio_context.calls == []


def test_a_failing_completion_handler_still_reads_ep0():
    f = _lean([1])

    def boom(*_a, **_k):
        raise RuntimeError("handler")
    f._out_aio_context.getEvents = boom
    with pytest.raises(RuntimeError):
        f.processEvents()
    assert f.ep0_reads == 1
