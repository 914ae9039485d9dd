# SPDX-License-Identifier: GPL-3.0-or-later
"""systemd notifications against a fake NOTIFY_SOCKET, and the daemon's life cycle as systemd sees it.

The daemon-level test replaces the configfs gadget and the FunctionFS function
with fakes, so the whole of Daemon.run (control socket, READY after bind,
STATUS, WATCHDOG cadence, reload with re-enumeration, STOPPING, teardown) runs
on any machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ccidgadget.daemon import app, notify
from ccidgadget.usb import device
from ccidgadget.daemon.app import Daemon, DaemonOptions
from ccidgadget.daemon.control import call
from ccidgadget.options import SlotSpec
from ccidgadget.daemon.notify import Notifier
from ccidgadget.usb.gadget import Identity

BACKENDS = ["stdlib"] + (["systemd-python"] if notify._systemd_daemon() is not None else [])


class FakeNotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, read promptly by a thread (as PID 1 does:
    sd_notify blocks when the socket's queue is full); records (monotonic time, message)."""

    def __init__(self, path: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ccidgadget-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def drain(self) -> list[str]:
        time.sleep(0.06)
        return [m for _, m in self.messages]

    def close(self):
        self._closing.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    fake = FakeNotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield fake
    fake.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ready_status_stopping(notify_socket, backend):
    n = Notifier(use_systemd_python=backend == "systemd-python")
    assert n.backend == backend
    n.ready()
    n.status("USB enabled;\n slot 0  card present")
    n.status("USB enabled; slot 0 card present")        # unchanged: not sent again
    n.reloading()
    n.stopping()
    n.watchdog()
    assert notify_socket.drain() == ["READY=1", "STATUS=USB enabled; slot 0 card present", "RELOADING=1",
                                     "STOPPING=1", "WATCHDOG=1"]


def test_abstract_socket(tmp_path, monkeypatch):
    fake = FakeNotifySocket(tmp_path / "x", abstract=True)
    monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
    Notifier(use_systemd_python=False).ready()
    assert fake.drain() == ["READY=1"]
    fake.close()


def test_without_systemd_everything_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier()
    assert n.notify("READY=1") is False and n.watchdog_interval() is None
    # a socket that went away is not an error either
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert Notifier(use_systemd_python=False).notify("READY=1") is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    for bad in ("0", "x", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert notify.watchdog_interval() is None


# -- the daemon as systemd sees it ---------------------------------------------------------
class FakeGadget:
    created = []

    def __init__(self, *, name, identity, udc, runtime_dir, extra_functions):
        self.name, self.identity, self.udc = name, identity, udc or "dummy_udc.0"
        self.root = Path("/sys/kernel/config/usb_gadget") / name
        self.runtime_dir = Path(runtime_dir)
        self.bound = False
        self.events = []
        FakeGadget.created.append(self)

    def create(self):
        self.events.append("create")
        return self.runtime_dir / "ffs"

    def bind(self):
        self.events.append("bind")
        self.bound = True

    def unbind(self):
        self.events.append("unbind")
        self.bound = False

    def destroy(self):
        self.events.append("destroy")


class FakeFunction:
    def __init__(self, path, service, *, on_state, **kw):
        self.eventfd = os.fdopen(os.eventfd(0), "rb", buffering=0)
        self.enabled = False
        self.enumerations = 0
        self.on_state = on_state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.eventfd.close()

    def processEvents(self):
        pass


def test_daemon_life_cycle_under_systemd(notify_socket, tmp_path, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")        # ping every 50 ms
    monkeypatch.setattr(device, "ConfigfsGadget", FakeGadget)
    import ccidgadget.usb.function as function
    monkeypatch.setattr(function, "CCIDFunction", FakeFunction)
    FakeGadget.created = []
    iso = SlotSpec(engine="emulated", type="iso")
    opts = DaemonOptions(slots=[iso], runtime_dir=tmp_path / "run",
                         state_dir=tmp_path / "state")
    reloaded = DaemonOptions(slots=[iso, iso], runtime_dir=tmp_path / "run",
                             state_dir=tmp_path / "state")
    d = Daemon(opts, notifier=Notifier(), loader=lambda: reloaded)
    sock = tmp_path / "run" / "control.sock"

    async def main():
        task = asyncio.create_task(d.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if "READY=1" in [m for _, m in notify_socket.messages]:
                break
        assert FakeGadget.created[0].events == ["create", "bind"]     # READY only once bound
        st = await asyncio.to_thread(call, sock, "status")
        assert st["state"] == "running" and st["bound"] is True and len(st["slots"]) == 1
        await asyncio.sleep(0.3)
        # reload with another slot count: the gadget is rebuilt and READY comes again
        result = await asyncio.to_thread(call, sock, "reload")
        assert result["reenumerated"] is True and result["changed"] == ["number of slots"]
        assert FakeGadget.created[0].events == ["create", "bind", "unbind", "destroy"]
        assert FakeGadget.created[1].events == ["create", "bind"]
        st = await asyncio.to_thread(call, sock, "status")
        assert len(st["slots"]) == 2 and st["reloads"] == 1
        d.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
    messages = notify_socket.drain()
    assert FakeGadget.created[1].events == ["create", "bind", "unbind", "destroy"]
    assert not sock.exists()
    states = [m for m in messages if not m.startswith("WATCHDOG")]
    assert [m for m in states if not m.startswith("STATUS")][0] == "READY=1", states
    assert any(m.startswith("STATUS=USB bound on dummy_udc.0, no host; slot 0 emulated-iso: card present")
               for m in states), states
    assert "RELOADING=1" in states and states.index("RELOADING=1") < len(states) - 1
    assert states[-1] == "STOPPING=1" or "STOPPING=1" in states
    assert sum(m == "READY=1" for m in states) >= 2
    # WATCHDOG=1 at half of WATCHDOG_USEC, from the loop
    pings = [t for t, m in notify_socket.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 6, len(pings)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    median = sorted(gaps)[len(gaps) // 2]
    assert 0.04 <= median <= 0.08, gaps


def test_second_daemon_on_the_same_runtime_dir_stops_before_configfs(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "ConfigfsGadget", FakeGadget)
    import ccidgadget.usb.function as function
    monkeypatch.setattr(function, "CCIDFunction", FakeFunction)
    FakeGadget.created = []
    opts = DaemonOptions(slots=[SlotSpec(engine="emulated", type="iso")],
                         runtime_dir=tmp_path)

    async def main():
        first = Daemon(opts)
        task = asyncio.create_task(first.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if first.state == "running":
                break
        from ccidgadget.usb.gadget import GadgetError
        with pytest.raises(GadgetError, match="another ccidgadget is running"):
            await Daemon(opts).run()
        assert len(FakeGadget.created) == 1
        first.request_stop()
        await asyncio.wait_for(task, 10)
    asyncio.run(main())
