# SPDX-License-Identifier: GPL-3.0-or-later
"""Feedback: an LED that blinks while the board waits for a person.

Two kinds of LED, one `Led` interface (`on()`, `off()`, `restore()`):

- the sysfs LED class (Documentation/leds/leds-class.rst): /sys/class/leds/NAME
  with `brightness` and `trigger`.  On a Raspberry Pi the green ACT LED is
  `ACT` (`led0` on older kernels) and normally follows SD-card activity
  (trigger `mmc0` or `actpwr`); while we blink it its trigger is `none`, and
  the trigger it had is put back afterwards.
- a GPIO line driven as an output (an LED on a header pin), see gpio.py.

The blinking runs on the daemon's asyncio loop (`Blinker`), so it costs no
thread and stops the moment the last wait ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path


log = logging.getLogger(__name__)

SYSFS_LEDS = Path("/sys/class/leds")
#: Half periods of the blink patterns, seconds: fast for a touch, slower for a PIN.
BLINK_TOUCH = 0.25
BLINK_PIN = 0.6


class Led:
    name = "led"

    def on(self) -> None: ...
    def off(self) -> None: ...
    def restore(self) -> None:
        """Give the LED back as it was before we touched it."""
    def close(self) -> None:
        self.restore()


class SysfsLed(Led):
    """/sys/class/leds/NAME (or any directory with brightness and trigger files, e.g. in tests)."""

    def __init__(self, name_or_path: str | Path) -> None:
        path = Path(name_or_path)
        self.path = path if path.is_absolute() else SYSFS_LEDS / path
        self.name = self.path.name
        if not (self.path / "brightness").exists():
            raise OSError(f"no LED {self.path} (its brightness file is missing; ls {SYSFS_LEDS} lists the LEDs)")
        try:
            self.max = int((self.path / "max_brightness").read_text().strip() or 1)
        except (OSError, ValueError):
            self.max = 1
        self._saved_trigger: str | None = None
        self._saved_brightness: str | None = None

    def _take(self) -> None:
        if self._saved_brightness is not None:
            return
        self._saved_brightness = (self.path / "brightness").read_text().strip()
        trigger = self.path / "trigger"
        if trigger.exists():
            # "none [mmc0] timer ...": the selected one is in brackets.
            found = re.search(r"\[([^\]]+)\]", trigger.read_text())
            self._saved_trigger = found.group(1) if found else None
            if self._saved_trigger not in (None, "none"):
                trigger.write_text("none")

    def _write(self, value: int) -> None:
        try:
            self._take()
            (self.path / "brightness").write_text(str(value))
        except OSError as e:
            log.warning("LED %s: %s", self.path, e)

    def on(self) -> None:
        self._write(self.max)

    def off(self) -> None:
        self._write(0)

    def restore(self) -> None:
        if self._saved_brightness is None:
            return
        try:
            if self._saved_trigger not in (None, "none"):
                (self.path / "trigger").write_text(self._saved_trigger)
            else:
                (self.path / "brightness").write_text(self._saved_brightness)
        except OSError as e:
            log.warning("LED %s not restored: %s", self.path, e)
        self._saved_trigger = self._saved_brightness = None


class GpioLed(Led):
    """An LED on a GPIO line, requested as an output (off) for the daemon's lifetime."""

    def __init__(self, chip: str, line: int, *, active_low: bool = False) -> None:
        from .gpio import GpioLine          # only a board with a GPIO LED loads the GPIO uAPI
        self.line = GpioLine(chip, line, output=True, active_low=active_low, consumer="ccidgadget-led")
        self.name = f"{self.line.chip}:{line}"

    def on(self) -> None:
        self.line.set(True)

    def off(self) -> None:
        self.line.set(False)

    def restore(self) -> None:
        self.off()

    def close(self) -> None:
        try:
            self.off()
        finally:
            self.line.close()


class Blinker:
    """Blinks `led` while something waits; `update(kind)` with 'touch', 'pin' or None."""

    def __init__(self, led: Led | None) -> None:
        self.led = led
        self.kind: str | None = None
        self._lit = False
        self._timer: asyncio.TimerHandle | None = None

    def update(self, kind: str | None) -> None:
        if self.led is None or kind == self.kind:
            return
        self.kind = kind
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if kind is None:
            self._lit = False
            self.led.restore()
            return
        self._toggle()

    def _toggle(self) -> None:
        self._lit = not self._lit
        (self.led.on if self._lit else self.led.off)()
        half = BLINK_TOUCH if self.kind == "touch" else BLINK_PIN
        self._timer = asyncio.get_running_loop().call_later(half, self._toggle)

    def close(self) -> None:
        self.update(None)
        if self.led is not None:
            self.led.close()
