# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel structures the USB adapter exchanges through python-functionfs and python-libaio,
checked against the kernel's fixed layouts on whatever this runs on (tests/test_arm32.py runs it
on 32-bit ARM, where pointers and longs are 4 bytes and the padding of these structures matters).

- ``struct iocb`` and ``struct io_event`` (include/uapi/linux/aio_abi.h) are the same 64 and 32 bytes
  on every architecture: 32-bit pointers and longs are padded to 64 bits, and ``io_event.res`` is an
  ``__s64`` whose low half a 32-bit ``long`` must read as a *signed* value: usb/function.py tells a
  disabled endpoint by ``res == -EAGAIN`` and a shutdown by ``-ESHUTDOWN``.
- ``struct usb_functionfs_event`` (include/uapi/linux/usb/functionfs.h) is 12 bytes, packed: ep0
  reads are split into events by that size.
- The descriptors f_fs parses are packed little-endian whatever the CPU.
"""

from __future__ import annotations

import ctypes
import errno
import struct

import functionfs
import libaio.libaio as libaio_abi
import pytest

from ccidgadget.ccid import ClassDescriptor
from ccidgadget.usb.descriptors import ccid_descriptors

# (offset, size) of each kernel field on a little-endian machine (aio_abi.h; __LITTLE_ENDIAN order:
# aio_key before aio_rw_flags)
IOCB_FIELDS = {"aio_data": (0, 8), "aio_key": (8, 4), "aio_rw_flags": (12, 4), "aio_lio_opcode": (16, 2),
               "aio_reqprio": (18, 2), "aio_fildes": (20, 4), "aio_buf": (24, 8), "aio_nbytes": (32, 8),
               "aio_offset": (40, 8), "aio_flags": (56, 4), "aio_resfd": (60, 4)}
IO_EVENT_FIELDS = {"data": (0, 8), "obj": (8, 8), "res": (16, 8), "res2": (24, 8)}


def _offset(struct_type, *path: str) -> int:
    off, t = 0, struct_type
    for name in path:
        field = getattr(t, name)
        off += field.offset
        t = dict((f[0], f[1]) for f in t._fields_)[name]
    return off


def test_iocb_matches_the_kernel_layout():
    iocb = libaio_abi.iocb
    assert ctypes.sizeof(iocb) == 64
    ours = {"aio_data": _offset(iocb, "data"), "aio_key": _offset(iocb, "key"),
            "aio_rw_flags": _offset(iocb, "aio_rw_flags"), "aio_lio_opcode": _offset(iocb, "aio_lio_opcode"),
            "aio_reqprio": _offset(iocb, "aio_reqprio"), "aio_fildes": _offset(iocb, "aio_fildes"),
            "aio_buf": _offset(iocb, "u", "c", "buf"), "aio_nbytes": _offset(iocb, "u", "c", "nbytes"),
            "aio_offset": _offset(iocb, "u", "c", "offset"), "aio_flags": _offset(iocb, "u", "c", "flags"),
            "aio_resfd": _offset(iocb, "u", "c", "resfd")}
    assert ours == {name: off for name, (off, _) in IOCB_FIELDS.items()}


def test_iocb_fields_land_where_the_kernel_reads_them():
    block = libaio_abi.iocb()
    block.data = 0x11223344
    block.aio_lio_opcode = libaio_abi.IO_CMD_PREAD
    block.aio_fildes = 7
    block.u.c.buf = 0x55667788
    block.u.c.nbytes = 1034
    block.u.c.offset = -1
    block.u.c.flags = 1                  # IOCB_FLAG_RESFD
    block.u.c.resfd = 9
    raw = bytes(ctypes.string_at(ctypes.addressof(block), 64))
    le = {name: int.from_bytes(raw[off:off + size], "little", signed=name == "aio_offset")
          for name, (off, size) in IOCB_FIELDS.items()}
    assert le["aio_data"] == 0x11223344 and le["aio_fildes"] == 7 and le["aio_lio_opcode"] == 0
    assert le["aio_buf"] == 0x55667788 and le["aio_nbytes"] == 1034 and le["aio_offset"] == -1
    assert le["aio_flags"] == 1 and le["aio_resfd"] == 9


@pytest.mark.parametrize("res", [-errno.EAGAIN, -errno.ESHUTDOWN, 0, 1034, 65546])
def test_io_event_res_reads_the_kernels_signed_value(res):
    event = libaio_abi.io_event()
    assert ctypes.sizeof(event) == 32
    assert {n: getattr(libaio_abi.io_event, n).offset for n in IO_EVENT_FIELDS} == \
        {n: off for n, (off, _) in IO_EVENT_FIELDS.items()}
    # what the kernel writes: __u64 data, __u64 obj, __s64 res, __s64 res2
    raw = struct.pack("<QQqq", 0xAB, 0xCD, res, 0)
    ctypes.memmove(ctypes.addressof(event), raw, len(raw))
    assert event.res == res
    assert event.res2 == 0


def test_functionfs_event_is_twelve_packed_bytes():
    assert ctypes.sizeof(functionfs.Event) == 12
    raw = bytes((0xA1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, functionfs.SETUP, 0, 0, 0))
    event = functionfs.Event.from_buffer_copy(raw)
    assert event.type == functionfs.SETUP
    setup = event.u.setup
    assert (setup.bRequestType, setup.bRequest, setup.wValue, setup.wIndex, setup.wLength) == (0xA1, 2, 0, 0, 4)


def test_descriptors_serialise_to_the_same_bytes_on_every_cpu():
    fs, hs, ss = ccid_descriptors(ClassDescriptor())
    blob = b"".join(bytes(functionfs.serialise(d)) for d in fs)
    # interface (9) + CCID class (54) + 3 endpoints (7 each)
    assert len(blob) == 9 + 54 + 3 * 7
    assert blob[9:9 + 54] == ClassDescriptor().to_bytes()
    bulk_in = [bytes(functionfs.serialise(d)) for d in hs][3]
    assert bulk_in[2] & 0x80 and struct.unpack_from("<H", bulk_in, 4)[0] == 512
