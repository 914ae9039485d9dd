# SPDX-License-Identifier: GPL-3.0-or-later
"""python-libaio imported without running /sbin/ldconfig (import this before functionfs or libaio).

libaio.eventfd asks ``ctypes.util.find_library("c")`` when it is imported, and on Linux that runs
``/sbin/ldconfig -p`` in a child process: a fork and an exec on every daemon start, most of a second
under TCG.  glibc's C library is ``libc.so.6`` on every architecture we run on, so for that one import
the question is answered with it when ``libc.so.6`` loads; anything else is asked as before.

The answer comes from a stand-in for ``ctypes.util`` during that import: the real module imports
shutil, tempfile, random, bz2 and lzma (two more shared libraries) at its top, for nothing the daemon
uses.  The stand-in is gone after the import; ``import ctypes.util`` then gives the real one.
"""

from __future__ import annotations

import sys
import types

from ..libc import GLIBC, libc


def _real_find_library(name: str) -> str | None:
    del sys.modules["ctypes.util"]               # (the stand-in: the real module now)
    from ctypes.util import find_library
    return find_library(name)


def _import_libaio() -> None:
    c = libc()
    if "libaio" in sys.modules or c is None or getattr(c, "_name", None) != GLIBC or "ctypes.util" in sys.modules:
        import libaio  # noqa: F401     (not glibc, or ctypes.util is there anyway: as it is)
        return
    stand_in = types.ModuleType("ctypes.util", "ccidgadget's stand-in while libaio is imported")
    stand_in.find_library = lambda name: GLIBC if name == "c" else _real_find_library(name)  # type: ignore[attr-defined]
    sys.modules["ctypes.util"] = stand_in
    try:
        import libaio  # noqa: F401
    finally:
        if sys.modules.get("ctypes.util") is stand_in:
            del sys.modules["ctypes.util"]


_import_libaio()
