# SPDX-License-Identifier: GPL-3.0-or-later
"""The C library for ctypes (mount, prctl, mallopt...), found without running /sbin/ldconfig.

``ctypes.util.find_library("c")`` runs ``/sbin/ldconfig -p`` in a child process on Linux: a fork and an
exec at every daemon start for each caller, most of a second under TCG.  glibc's soname is
``libc.so.6`` on every architecture we run on; find_library is asked only where that does not load.
"""

from __future__ import annotations

import ctypes

GLIBC = "libc.so.6"

_libc: ctypes.CDLL | None | bool = None


def libc() -> ctypes.CDLL | None:
    """The C library (with errno), or None if there is none to load."""
    global _libc
    if _libc is None:
        _libc = False
        for name in (GLIBC, None):
            try:
                if name is None:
                    from ctypes.util import find_library    # (shutil, tempfile, bz2, lzma: only here)
                    name = find_library("c")
                _libc = ctypes.CDLL(name, use_errno=True)
                break
            except (OSError, TypeError):         # TypeError: find_library found nothing
                pass
    return _libc or None
