# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the end-to-end tests.

These tests need a real USB gadget stack: root, configfs at /sys/kernel/config
and a UDC (dummy_hcd). They run inside the QEMU guest of ``tests/vm/testbed.py``
(``tests/test_vm.py`` boots one guest per ``tests/e2e/test_*.py`` module), or
directly on a machine that has ``dummy_hcd`` loaded::

    sudo modprobe dummy_hcd libcomposite usb_f_fs
    sudo .venv/bin/python -m pytest tests/e2e

Fixtures:

``pcscd``            a running ``pcscd -f`` (``.restart()``, ``.stop()``, ``.start()``, ``.log()``).
                     There is no udevd in the guest, so pcscd only sees readers that exist
                     when it starts: bind the gadget first, then ``pcscd.restart()``.
``daemon``           factory ``daemon(*args, env=None) -> DaemonProcess`` running
                     ``python -m ccidgadget *args`` (alias fixture: ``start_daemon``).
``wait_for_reader``  ``wait_for_reader(predicate=None, timeout=30) -> smartcard Reader``.
``run_cmd``          ``run_cmd(cmd, timeout=30, check=True) -> CompletedProcess`` (text).
``udc``              name of the UDC to bind to (``dummy_udc.0`` if present).
``e2e``              namespace of the helpers below (``e2e.remove_gadget(name)``, ``e2e.gadgets()``,
                     ``e2e.list_readers()``, ``e2e.ccid_interfaces()``, ``e2e.GADGETS``, ...), so test
                     modules need not import this conftest.
``log_dir``          where this test's logs go (``$CCIDGADGET_VM_OUT/logs/<test>`` in the guest,
                     so the host can show them).

If the environment is not usable the tests are skipped with the reason, or fail
in CI (``CI`` truthy: tests/ci.py) and they were started by the test bed (``CCIDGADGET_VM=1`` or
``CCIDGADGET_E2E=1``; ``CCIDGADGET_E2E_STRICT=1`` forces failing). A plain host
``pytest`` run in CI therefore skips them instead of failing: they are meant to
run through ``tests/test_vm.py``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

from tests.ci import in_ci

REPO = Path(__file__).resolve().parents[2]
CONFIGFS = Path("/sys/kernel/config")
GADGETS = CONFIGFS / "usb_gadget"
UDC_CLASS = Path("/sys/class/udc")
USB_DEVICES = Path("/sys/bus/usb/devices")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
PCSCD_PIDFILE = Path("/run/pcscd/pcscd.pid")
CCID_CLASS = "0b"
VIRTUAL_PCD = "Virtual PCD"  # vsmartcard-vpcd's readers, never ours


# --------------------------------------------------------------------------- environment


def environment_problem() -> str | None:
    """Why this machine cannot run the e2e tests, or None."""
    if os.geteuid() != 0:
        return "e2e tests need root (configfs gadgets, pcscd)"
    if not any(line.split()[1:3] == [str(CONFIGFS), "configfs"]
               for line in Path("/proc/mounts").read_text().splitlines()):
        return f"configfs is not mounted at {CONFIGFS}"
    if not GADGETS.is_dir():
        return f"{GADGETS} missing (libcomposite not loaded)"
    if not UDC_CLASS.is_dir() or not any(UDC_CLASS.iterdir()):
        return "no USB device controller in /sys/class/udc (modprobe dummy_hcd)"
    return None


def _strict() -> bool:
    if os.environ.get("CCIDGADGET_E2E_STRICT") == "1":
        return True
    in_testbed = os.environ.get("CCIDGADGET_VM") == "1" or os.environ.get("CCIDGADGET_E2E") == "1"
    return in_ci() and in_testbed


@pytest.fixture(scope="session", autouse=True)
def gadget_environment() -> None:
    problem = environment_problem()
    if problem is None:
        return
    msg = f"no USB gadget environment: {problem} (run these through tests/test_vm.py)"
    if _strict():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def udc() -> str:
    names = sorted(p.name for p in UDC_CLASS.iterdir())
    return "dummy_udc.0" if "dummy_udc.0" in names else names[0]


@pytest.fixture
def log_dir(request, tmp_path) -> Path:
    out = os.environ.get("CCIDGADGET_VM_OUT")
    if not out:
        return tmp_path
    d = Path(out) / "logs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- commands


def run_command(cmd: Sequence[str] | str, timeout: float = 30, check: bool = True, *,
                input: str | None = None, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (argv, or a shell string), capture text output; fail with the output on error."""
    shell = isinstance(cmd, str)
    try:
        p = subprocess.run(cmd, shell=shell, input=input, text=True, capture_output=True,
                           timeout=timeout, env=None if env is None else {**os.environ, **env}, cwd=cwd,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {timeout} s: {cmd}\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}") from None
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {cmd}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


@pytest.fixture
def run_cmd() -> Callable[..., subprocess.CompletedProcess]:
    return run_command


def wait_until(cond: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


# --------------------------------------------------------------------------- configfs


def gadgets() -> set[str]:
    return {p.name for p in GADGETS.iterdir()} if GADGETS.is_dir() else set()


def bound_gadgets() -> dict[str, str]:
    out = {}
    for g in GADGETS.glob("*/UDC"):
        try:
            udc = g.read_text().strip()
        except OSError:
            continue
        if udc:
            out[g.parent.name] = udc
    return out


def ccid_interfaces() -> list[Path]:
    """Host-side USB interfaces with class 0x0B (Smart Card)."""
    found = []
    for p in USB_DEVICES.glob("*/bInterfaceClass"):
        try:
            if p.read_text().strip().lower() == CCID_CLASS:
                found.append(p.parent)
        except OSError:
            pass
    return found


def _functionfs_mounts() -> list[tuple[str, str]]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype = line.split()[:3]
        if fstype == "functionfs":
            out.append((dev, mnt.replace("\\040", " ")))
    return out


def remove_gadget(name: str) -> None:
    """Tear a configfs gadget down completely (unbind, unlink, rmdir; unmount its FunctionFS)."""
    g = GADGETS / name
    if not g.exists():
        return
    udc = g / "UDC"
    if udc.read_text().strip():
        udc.write_text("\n")
    for cfg in (g / "configs").iterdir():
        for entry in cfg.iterdir():
            if entry.is_symlink():
                entry.unlink()
        for s in (cfg / "strings").iterdir():
            s.rmdir()
        cfg.rmdir()
    for entry in (g / "os_desc").iterdir() if (g / "os_desc").is_dir() else ():
        if entry.is_symlink():
            entry.unlink()
    for fn in (g / "functions").iterdir():
        kind, _, instance = fn.name.partition(".")
        if kind == "ffs":
            for dev, mnt in _functionfs_mounts():
                if dev == instance:
                    subprocess.run(["umount", "-l", mnt], check=False)
        fn.rmdir()
    for s in (g / "strings").iterdir():
        s.rmdir()
    g.rmdir()


# --------------------------------------------------------------------------- pcscd


class PcscdProcess:
    """``pcscd -f`` under our control. pcscd sees USB readers present when it starts."""

    def __init__(self, log_path: Path, args: Sequence[str] = (), env: dict | None = None):
        self.log_path = log_path
        self.args = list(args)
        self.env = env                  # added to this process's environment (e.g. LIBCCID_ifdLogLevel)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "PcscdProcess":
        if self.proc is not None and self.proc.poll() is None:
            return self
        if PCSCD_SOCKET.exists() and _socket_alive(PCSCD_SOCKET):
            raise RuntimeError(f"another pcscd is already listening on {PCSCD_SOCKET} "
                               "(stop pcscd.service/pcscd.socket first)")
        for stale in (PCSCD_SOCKET, PCSCD_PIDFILE):
            stale.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- pcscd -f {' '.join(self.args)} at {time.strftime('%T')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(["pcscd", "-f", *self.args], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env=None if self.env is None else {**os.environ, **self.env})
        try:
            wait_until(lambda: self.proc.poll() is not None or _socket_alive(PCSCD_SOCKET),
                       timeout, what="pcscd socket")
        except TimeoutError:
            self.stop()
            raise AssertionError(f"pcscd not ready after {timeout} s\n{self.log()}") from None
        if self.proc.poll() is not None:
            raise AssertionError(f"pcscd exited with {self.proc.returncode}\n{self.log()}")
        return self

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        for stale in (PCSCD_SOCKET, PCSCD_PIDFILE):
            stale.unlink(missing_ok=True)
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def restart(self, timeout: float = 30) -> "PcscdProcess":
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _socket_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def pcscd(log_dir):
    p = PcscdProcess(log_dir / "pcscd.log")
    p.start()
    yield p
    p.stop()


# --------------------------------------------------------------------------- pyscard


def list_readers(include_virtual: bool = False) -> list:
    """pyscard readers, without vsmartcard's "Virtual PCD" ones.

    [] means pcscd answered that it has no reader (pyscard maps SCARD_E_NO_READERS_AVAILABLE to []);
    a pcscd that does not answer or fails is an AssertionError, never "no readers" (which a test
    asserting that a reader is gone would take for success).
    """
    try:
        from smartcard.System import readers  # lazy: only the e2e tests need pyscard
    except ImportError as e:
        raise AssertionError(f"pyscard is not installed for {sys.executable} ({e}); "
                             "use the project venv (.venv/bin/pip install pyscard)") from None
    # pyscard 2.0 (Debian 12's, so the arm64 guest's and a Pi's) keeps one PC/SC context per process and
    # renews it only on SCARD_E_SERVICE_STOPPED: after a pcscd restart the old context lists no reader,
    # ever, or fails with SCARD_E_NO_SERVICE. So a failure or an empty list is asked again on a new context
    # (it costs nothing here; newer pyscard renews by itself); a pcscd that is really gone still fails.
    try:
        rs = readers()
    except Exception:
        rs = None
    if not rs:
        try:
            from smartcard.pcsc.PCSCContext import PCSCContext
            PCSCContext.renewContext()
            rs = readers()
        except Exception as e:   # pyscard's two hierarchies: EstablishContextException, CardServiceNotFound...
            raise AssertionError(f"pcscd failed to list its readers: {type(e).__name__}: {e}") from None
    return [r for r in rs if include_virtual or VIRTUAL_PCD not in str(r)]


def close_connection(conn) -> None:
    """Disconnect a pyscard connection and release its PC/SC context now, before pcscd goes (in
    ``__del__`` it would fail on a stopped pcscd). pyscard 2.0 (Debian 12's: the arm64 guest's) has no
    ``release()``; its context goes with the object."""
    conn.disconnect()
    release = getattr(conn, "release", None)
    if release is not None:
        release()


def find_reader(predicate: Callable[[str], bool] | None = None, timeout: float = 30):
    """Wait for a (non-virtual) reader whose name satisfies ``predicate``; return the pyscard Reader."""
    deadline = time.monotonic() + timeout
    seen: list = []
    while True:
        seen = list_readers()
        for r in seen:
            if predicate is None or predicate(str(r)):
                return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching reader within {timeout} s; readers: {[str(r) for r in seen]}")
        time.sleep(0.2)


@pytest.fixture
def wait_for_reader():
    return find_reader


# --------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """``python -m ccidgadget ...`` running in the background, log captured to a file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict | None = None):
        self.args = [sys.executable, "-m", "ccidgadget", *args]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_bound(self, timeout: float = 30) -> Path:
        """Wait until a gadget is bound to a UDC and the host sees a CCID interface; return it."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise AssertionError(f"ccidgadget exited with {self.proc.returncode} before binding\n{self.log()}")
            ifaces = ccid_interfaces()
            if bound_gadgets() and ifaces:
                return ifaces[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"ccidgadget not bound after {timeout} s (bound gadgets: {bound_gadgets()}, "
                    f"CCID interfaces: {ifaces})\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit status (fails the test if it does not exit)."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"ccidgadget ignored SIGTERM for {timeout} s\n{self.log()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def daemon(log_dir):
    """Factory: ``daemon(*args, env=None) -> DaemonProcess``. Teardown stops all of them and
    checks that no configfs gadget is left behind."""
    before = gadgets()
    started: list[DaemonProcess] = []

    def start_daemon(*args: str, env: dict | None = None) -> DaemonProcess:
        d = DaemonProcess(args, log_dir / f"ccidgadget-{len(started)}.log", env)
        started.append(d)
        return d

    yield start_daemon

    problems = []
    for d in started:
        try:
            d.stop()
        except AssertionError as e:
            problems.append(str(e))
    leftover = gadgets() - before
    for name in leftover:
        try:
            remove_gadget(name)
        except OSError as e:
            problems.append(f"could not remove gadget {name}: {e}")
    if leftover:
        logs = "\n".join(d.log() for d in started)
        problems.append(f"ccidgadget left configfs gadget(s) behind: {sorted(leftover)}\n{logs}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def start_daemon(daemon):
    return daemon


@pytest.fixture(scope="session")
def e2e():
    """The helpers of this conftest, for test modules (``import conftest`` is ambiguous)."""
    import types
    return types.SimpleNamespace(
        CONFIGFS=CONFIGFS, GADGETS=GADGETS, UDC_CLASS=UDC_CLASS, PCSCD_SOCKET=PCSCD_SOCKET,
        environment_problem=environment_problem, run_command=run_command, wait_until=wait_until,
        gadgets=gadgets, bound_gadgets=bound_gadgets, ccid_interfaces=ccid_interfaces,
        remove_gadget=remove_gadget, list_readers=list_readers, find_reader=find_reader,
        close_connection=close_connection,
        PcscdProcess=PcscdProcess, DaemonProcess=DaemonProcess)
