# SPDX-License-Identifier: GPL-3.0-or-later
"""Input-event devices (evdev) as sources: a button that is a key, and a keypad.

Any button the kernel exposes as a key works: on a Raspberry Pi one line in
config.txt, `dtoverlay=gpio-key,gpio=17,active_low=1,gpio_pull=up,keycode=28`,
makes GPIO 17 an Enter key; a USB keypad or a HAT's joystick is the same.  We
read it with python-evdev (Debian python3-evdev, PyPI evdev); its file
descriptor is a reader of the daemon's asyncio loop.

The device is grabbed (EVIOCGRAB) by default: a PIN typed on a keypad must
not also land on the board's console, and a button's Enter should not press
Enter in a login prompt.  A device that goes away (USB keypad unplugged) is
looked for again every `REOPEN_INTERVAL` seconds; meanwhile status says so.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Callable

log = logging.getLogger(__name__)

REOPEN_INTERVAL = 2.0

KeyListener = Callable[[int, int], None]          # (key code, value: 1 down, 0 up, 2 repeat)


def evdev_module():
    try:
        import evdev
    except ImportError:
        raise OSError(errno.ENOENT, "python-evdev is not installed (apt install python3-evdev, or "
                                    "pip install evdev): input-event buttons and keypads need it") from None
    return evdev


def key_code(name_or_code: str | int) -> int:
    """'KEY_ENTER' or 28 -> 28 (linux/input-event-codes.h names, as python-evdev knows them)."""
    if isinstance(name_or_code, int):
        return name_or_code
    ecodes = evdev_module().ecodes
    code = ecodes.ecodes.get(name_or_code)
    if code is None or not (name_or_code.startswith("KEY_") or name_or_code.startswith("BTN_")):
        raise ValueError(f"{name_or_code!r} is not a key name such as KEY_ENTER or BTN_0")
    return code


def keypad_keys() -> dict[int, str]:
    """Key codes of a keypad -> '0'..'9', 'enter', 'backspace', 'cancel'."""
    e = evdev_module().ecodes
    out = {getattr(e, f"KEY_{d}"): str(d) for d in range(10)}
    out.update({getattr(e, f"KEY_KP{d}"): str(d) for d in range(10)})
    out.update({e.KEY_ENTER: "enter", e.KEY_KPENTER: "enter", e.KEY_BACKSPACE: "backspace",
                e.KEY_ESC: "cancel"})
    return out


class InputKeys:
    """One input device, opened by path (/dev/input/event0, /dev/input/by-path/...) or by device name."""

    def __init__(self, device: str, *, grab: bool = True) -> None:
        self.device = device
        self.grab = grab
        self.listeners: list[KeyListener] = []
        self.dev = None
        self.path: str | None = None
        self.problem: str | None = "not opened yet"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._warned = False

    def describe(self) -> dict:
        return {"device": self.device, "path": self.path, "open": self.dev is not None, "problem": self.problem}

    def _find(self) -> str:
        evdev = evdev_module()
        if self.device.startswith("/"):
            return self.device
        for path in evdev.list_devices():
            try:
                dev = evdev.InputDevice(path)
            except OSError:
                continue
            try:
                if dev.name == self.device:
                    return path
            finally:
                dev.close()
        raise OSError(errno.ENODEV, f"no input device named {self.device!r} (evtest lists them)")

    def open(self) -> None:
        evdev = evdev_module()
        path = self._find()
        dev = evdev.InputDevice(path)
        try:
            if self.grab:
                dev.grab()
        except OSError as e:
            dev.close()
            raise OSError(e.errno, f"{path}: cannot grab it ({e.strerror}): another program holds it") from None
        self.dev, self.path, self.problem = dev, path, None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open now and raise if that fails (so a bad configuration is found at start-up)."""
        self._loop = loop
        self.open()
        loop.add_reader(self.dev.fd, self._readable)
        log.info("input device %s (%s) ready", self.device, self.path, extra={"event": "presence-source"})

    def stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        self._close()
        self._loop = None

    def _close(self) -> None:
        if self.dev is None:
            return
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.dev.fd)
            except (ValueError, OSError):
                pass
        try:
            self.dev.close()
        except OSError:
            pass
        self.dev = None

    def _readable(self) -> None:
        try:
            events = list(self.dev.read())
        except BlockingIOError:
            return
        except OSError as e:
            self._lost(e)
            return
        key = evdev_module().ecodes.EV_KEY
        for event in events:
            if event.type != key:
                continue
            for listener in list(self.listeners):
                try:
                    listener(event.code, event.value)
                except Exception:
                    log.exception("key listener failed")

    def _lost(self, error: OSError) -> None:
        self.problem = f"lost: {error.strerror or error}"
        log.warning("input device %s went away (%s); looking for it every %.0f s", self.device,
                    error.strerror or error, REOPEN_INTERVAL, extra={"event": "presence-source-lost"})
        self._close()
        self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        if self._loop is not None:
            self._reopen = self._loop.call_later(REOPEN_INTERVAL, self._try_reopen)

    def _try_reopen(self) -> None:
        self._reopen = None
        try:
            self.open()
        except OSError as e:
            self.problem = f"absent: {e.strerror or e}"
            self._schedule_reopen()
            return
        self._loop.add_reader(self.dev.fd, self._readable)
        log.info("input device %s (%s) is back", self.device, self.path, extra={"event": "presence-source"})
