"""A pcscd with vsmartcard's vpcd driver for integration tests.

`pcscd_with_vpcd()` uses a pcscd that is already running, or starts
`pcscd -f` and stops it afterwards.  It raises PcscdUnavailable with the exact
reason when this machine cannot provide one (not installed, vpcd driver
missing, not allowed to run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

PCSCD = shutil.which("pcscd") or "/usr/sbin/pcscd"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
VPCD_READER = "Virtual PCD 00 00"
VPCD_PORT = 35963


class PcscdUnavailable(RuntimeError):
    pass


def _readers() -> list[str] | None:
    """Reader names, or None when no pcscd answers."""
    from smartcard import scard
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        return None
    try:
        hr, readers = scard.SCardListReaders(ctx, [])
        return list(readers) if hr == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(ctx)


@contextlib.contextmanager
def pcscd_with_vpcd(log_path: Path):
    if not Path(PCSCD).exists():
        raise PcscdUnavailable(f"{PCSCD} not installed (Debian package pcscd)")
    if not VPCD_DRIVER.exists():
        raise PcscdUnavailable(f"{VPCD_DRIVER} missing (Debian package vsmartcard-vpcd)")
    try:
        import smartcard.scard  # noqa: F401
    except ImportError as e:
        raise PcscdUnavailable(f"pyscard not importable: {e}") from None
    readers = _readers()
    if readers is not None:
        if VPCD_READER not in readers:
            raise PcscdUnavailable(f"a pcscd is running without the vpcd reader (readers: {readers})")
        yield None                       # someone else's pcscd: use it, leave it running
        return
    log = open(log_path, "wb")
    proc = subprocess.Popen([PCSCD, "-f", "-d"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise PcscdUnavailable(
                    f"pcscd -f exited with status {proc.returncode}: "
                    + log_path.read_text(errors="replace")[-800:])
            readers = _readers()
            if readers and VPCD_READER in readers:
                break
            if time.monotonic() > deadline:
                raise PcscdUnavailable(f"pcscd started but shows no {VPCD_READER!r} (readers: {readers})")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def ci() -> bool:
    return os.environ.get("CI") == "true"
