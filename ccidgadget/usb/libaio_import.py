# SPDX-License-Identifier: GPL-3.0-or-later
"""python-libaio imported without running /sbin/ldconfig (import this before functionfs or libaio).

libaio.eventfd asks ``ctypes.util.find_library("c")`` when it is imported, and on Linux that runs
``/sbin/ldconfig -p`` in a child process: a fork and an exec on every daemon start, most of a second
under TCG.  glibc's C library is ``libc.so.6`` on every architecture we run on, so for that one import
the question is answered with it when ``libc.so.6`` loads; anything else is asked as before.
"""

from __future__ import annotations

import ctypes.util
import sys

from ..libc import GLIBC, libc


def _import_libaio() -> None:
    c = libc()
    if "libaio" in sys.modules or c is None or getattr(c, "_name", None) != GLIBC:
        import libaio  # noqa: F401     (not glibc: let find_library look)
        return
    find_library = ctypes.util.find_library
    ctypes.util.find_library = lambda name: GLIBC if name == "c" else find_library(name)
    try:
        import libaio  # noqa: F401
    finally:
        ctypes.util.find_library = find_library


_import_libaio()
