"""A pcscd with vsmartcard's vpcd driver for integration tests.

`pcscd_with_vpcd()` uses a pcscd that is already running, or starts
`pcscd -f` and stops it afterwards.  It raises PcscdUnavailable with the exact
reason when this machine cannot provide one (not installed, vpcd driver
missing, not allowed to run).
"""

from __future__ import annotations

import contextlib
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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_vpcd_reader(proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise PcscdUnavailable(f"{' '.join(proc.args)} exited with status {proc.returncode}: "
                                   + log_path.read_text(errors="replace")[-800:])
        readers = _readers()
        if readers and VPCD_READER in readers:
            return
        if time.monotonic() > deadline:
            raise PcscdUnavailable(f"pcscd started but shows no {VPCD_READER!r} after {timeout} s "
                                   f"(readers: {readers})")
        time.sleep(0.1)


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
        _wait_for_vpcd_reader(proc, log_path, 15)
        yield proc
    finally:
        _stop(proc)
        log.close()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_pcscd_with_vpcd(directory: Path, port: int, timeout: float = 20):
    """``pcscd -f -c DIR`` whose only reader is a vpcd on ``port`` ("Virtual PCD 00 00"); stopped after.

    The reader.conf.d is written into ``directory`` (pcscd wants an absolute path), the log goes to
    ``directory/pcscd.log``.  Raises PcscdUnavailable with the reason when this cannot be had (not
    installed, another pcscd owns /run/pcscd, pcscd exits or never shows the reader).
    """
    if not Path(PCSCD).exists():
        raise PcscdUnavailable(f"{PCSCD} not installed (Debian package pcscd)")
    if not VPCD_DRIVER.exists():
        raise PcscdUnavailable(f"{VPCD_DRIVER} missing (Debian package vsmartcard-vpcd)")
    if _readers() is not None:
        raise PcscdUnavailable("another pcscd is running (it owns /run/pcscd)")
    conf = Path(directory).resolve() / "reader.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "vpcd").write_text(f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:04X}\n'
                               f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:04X}\n")
    log_path = conf.parent / "pcscd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PCSCD, "-f", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        _wait_for_vpcd_reader(proc, log_path, timeout)
        yield proc
    finally:
        _stop(proc)
