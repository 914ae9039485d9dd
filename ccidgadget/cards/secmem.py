"""Keeping unlocked data keys out of core dumps and swap, as far as Python lets us.

What this module does (Linux; each step is best effort and reported by `protections()`):

- `harden_process()`: ``prctl(PR_SET_DUMPABLE, 0)`` — no core dump of the daemon, and no
  ptrace attach or /proc/<pid>/mem read by non-root users; and glibc's mmap threshold fixed at
  its default (``mallopt(M_MMAP_THRESHOLD)``), so that scrypt's 16 MiB working memory (PIN and
  PUK derivation) is unmapped when freed instead of staying in the heap: glibc otherwise raises
  the threshold after the first such block, the next one comes from the heap and stays in the
  daemon's RSS (16 MiB of a 56 MiB PIV daemon) holding what scrypt left in it;
- `SecretBytes`: the data key of an unlocked card lives in its own anonymous page,
  ``madvise(MADV_DONTDUMP)`` (left out of any core dump even if dumps are re-enabled) and
  ``mlock`` (never written to swap), zeroed when the card locks.

What Python cannot promise: the key is handed to `cryptography` as a ``bytes`` object for
every AES-GCM call, and OpenSSL expands it into its own key schedule; those copies live in
ordinary heap memory until the allocator reuses it.  The PIN or PUK a host sends arrives as
``bytes`` in the APDU and is not wiped either.  A process that can read the daemon's memory
(root, a kernel exploit, a cold-boot attack on the RAM) gets the keys of unlocked cards.
"""

from __future__ import annotations

import ctypes
import logging
import mmap

from ..libc import libc

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
#: mallopt(3) parameter; setting it also turns off glibc's dynamic threshold
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024           # glibc's default
PAGE = mmap.PAGESIZE

def _c():
    return libc()


_state = {"dumpable_off": False, "mlock": None, "dontdump": None, "mmap_threshold": None}


def harden_process() -> bool:
    """prctl(PR_SET_DUMPABLE, 0) and the fixed mmap threshold; True when the prctl took effect."""
    libc = _c()
    if libc is None:
        return False
    try:
        _state["mmap_threshold"] = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    except AttributeError:          # not glibc
        pass
    try:
        ok = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except AttributeError:          # not Linux
        return False
    if not ok:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d): a core dump may contain unlocked card keys",
                    ctypes.get_errno())
    _state["dumpable_off"] = ok
    return ok


def protections() -> dict:
    """What was achieved so far: {"dumpable_off": bool, "mlock": bool|None, "dontdump": bool|None}."""
    return dict(_state)


class SecretBytes:
    """A short secret in its own page: not dumped, not swapped (where allowed), zeroed by `wipe()`."""

    __slots__ = ("_map", "_len")

    def __init__(self, value: bytes) -> None:
        if len(value) > PAGE:
            raise ValueError("secret too long for one page")
        self._map = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._len = len(value)
        self._protect()
        self._map[:self._len] = value

    def _protect(self) -> None:
        dontdump = getattr(mmap, "MADV_DONTDUMP", None)
        if dontdump is not None:
            try:
                self._map.madvise(dontdump)
                _state["dontdump"] = True
            except OSError:
                _state["dontdump"] = False
        libc = _c()
        if libc is not None:
            address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
            ok = libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(PAGE)) == 0
            if _state["mlock"] is None and not ok:
                log.info("mlock of a card data key failed (errno %d, RLIMIT_MEMLOCK?): it may be swapped out",
                         ctypes.get_errno())
            _state["mlock"] = ok

    def __repr__(self) -> str:            # never the value
        return f"SecretBytes({self._len} bytes{'' if not self.wiped else ', wiped'})"

    @property
    def wiped(self) -> bool:
        return self._map.closed

    def value(self) -> bytes:
        """A transient copy for one cryptographic call (see the module note)."""
        if self._map.closed:
            raise ValueError("secret already wiped")
        return self._map[:self._len]

    def wipe(self) -> None:
        if self._map.closed:
            return
        self._map[:] = bytes(PAGE)
        libc = _c()
        if libc is not None:
            address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
            libc.munlock(ctypes.c_void_p(address), ctypes.c_size_t(PAGE))
        self._map.close()

    def __del__(self) -> None:
        try:
            self.wipe()
        except Exception:   # noqa: BLE001 - interpreter shutdown
            pass
