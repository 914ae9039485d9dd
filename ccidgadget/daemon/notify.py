# SPDX-License-Identifier: GPL-3.0-or-later
"""systemd's notification protocol (sd_notify(3)): READY, STATUS, RELOADING, STOPPING, WATCHDOG.

Notifications go out through a small stdlib sender: one datagram to the
AF_UNIX socket named by $NOTIFY_SOCKET (a leading '@' is the abstract
namespace), sent with MSG_DONTWAIT.  systemd-python's `systemd.daemon.notify`
(sd_notify) sends blocking, and the daemon calls this from its event loop: a
notify socket nobody drains would stall USB and every slot.  systemd-python
still serves the journal (journal.py); its notify is available on request
(`Notifier(use_systemd_python=True)`).  Without $NOTIFY_SOCKET (not started by systemd, or Type= is not
notify) every call is a cheap no-op, so the daemon runs the same anywhere.

The watchdog interval comes from $WATCHDOG_USEC (set by WatchdogSec= in the
unit); the daemon pings at half of it from its asyncio loop, so a wedged loop
stops the pings and systemd restarts the service (sd_watchdog_enabled(3)).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _systemd_daemon():
    """systemd-python's `systemd.daemon` (optional: the `systemd` extra), or None; imported only if asked for."""
    try:
        from systemd import daemon
    except ImportError:                         # pragma: no cover - depends on the installation
        return None
    return daemon


def _stdlib_notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        # MSG_DONTWAIT: a full queue loses one notification rather than stalling the event loop.
        sock.send(state.encode("utf-8"), socket.MSG_DONTWAIT)
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or None when disabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None                             # meant for another process
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1e6 if value > 0 else None


class Notifier:
    """What the daemon tells its service manager.  Never raises: a notification is best effort."""

    def __init__(self, *, use_systemd_python: bool | None = None) -> None:
        if use_systemd_python is None:
            use_systemd_python = False          # see the module docstring: never block the loop
        self._sd_daemon = _systemd_daemon() if use_systemd_python else None
        self.backend = "systemd-python" if self._sd_daemon is not None else "stdlib"
        self.last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def notify(self, state: str) -> bool:
        if not self.enabled:
            return False
        try:
            if self.backend == "systemd-python":
                return bool(self._sd_daemon.notify(state))
            return _stdlib_notify(state)
        except OSError as e:
            log.debug("sd_notify %r failed: %s", state.split("=")[0], e)
            return False

    def ready(self) -> None:
        self.notify("READY=1")

    def status(self, text: str) -> None:
        # STATUS is one line; systemctl status shows it as "Status:".
        text = " ".join(text.split())
        if text != self.last_status:
            self.last_status = text
            self.notify(f"STATUS={text}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        return watchdog_interval() if self.enabled else None
