# SPDX-License-Identifier: GPL-3.0-or-later
"""The [presence] and [pinpad] tables of ccidgadget.toml (etc/ccidgadget.toml.example documents them).

    [presence]              touch: timeout, slots, control, led / led_gpio, led_active_low
    [[presence.button]]     input + key (+ grab)   or   gpio + line (+ active_low, bias, debounce_ms); slots
    [pinpad]                enabled, slots, keypad (+ grab), timeout, max_timeout

No [presence] table: no button; cards refuse what a touch policy guards (6982).
No [pinpad] table (or enabled = false): bPINSupport 0, PC_to_RDR_Secure unsupported.

`parse` returns the configuration and the problems, each "FILE: KEY: what is
wrong; allowed: ...", as the rest of daemon/config.py does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT = 15.0          # YubiKey's touch timeout; the issue asks for 15-30 s
MAX_TIMEOUT = 120.0
DEFAULT_PIN_TIMEOUT = 30.0      # what OpenSC sends as bTimeOut, for hosts that send 0
DEFAULT_PIN_MAX_TIMEOUT = 120.0
MAX_DEBOUNCE_MS = 1000

PRESENCE_KEYS = ("timeout", "slots", "control", "led", "led_gpio", "led_active_low", "button")
BUTTON_KEYS = ("input", "key", "grab", "gpio", "line", "active_low", "bias", "debounce_ms", "slots")
PINPAD_KEYS = ("enabled", "slots", "keypad", "grab", "timeout", "max_timeout")
BIASES = ("pull-up", "pull-down", "disabled", "as-is")


@dataclass(frozen=True)
class ButtonSpec:
    input: str | None = None         # evdev device path or name
    key: str | int = "KEY_ENTER"
    grab: bool = True
    gpio: str | None = None          # GPIO chip: gpiochip0, /dev/gpiochip0 or its label
    line: int | None = None
    active_low: bool = True          # a button to ground with a pull-up, the usual wiring
    bias: str = "pull-up"
    debounce_ms: int = 20
    slots: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        if self.input is not None:
            return f"key {self.key} on {self.input}"
        return f"GPIO {self.gpio} line {self.line}"


@dataclass(frozen=True)
class PresenceConfig:
    timeout: float = DEFAULT_TIMEOUT
    slots: tuple[int, ...] | None = None
    control: bool = True
    led: str | None = None
    led_gpio: tuple[str, int] | None = None
    led_active_low: bool = False
    buttons: tuple[ButtonSpec, ...] = ()


@dataclass(frozen=True)
class PinpadConfig:
    enabled: bool = False
    slots: tuple[int, ...] | None = None
    keypad: str | None = None
    grab: bool = True
    timeout: float = DEFAULT_PIN_TIMEOUT
    max_timeout: float = DEFAULT_PIN_MAX_TIMEOUT


@dataclass(frozen=True)
class BoardConfig:
    """What the daemon needs: touch (None: no [presence]) and the PIN pad."""

    presence: PresenceConfig | None = None
    pinpad: PinpadConfig = field(default_factory=PinpadConfig)


class _Checker:
    def __init__(self, source: str, slot_count: int) -> None:
        self.source = source
        self.slot_count = slot_count
        self.problems: list[str] = []

    def error(self, key: str, what: str) -> None:
        self.problems.append(f"{self.source}: {key}: {what}")

    def table(self, key: str, value: Any, allowed: tuple[str, ...]) -> dict | None:
        if not isinstance(value, dict):
            self.error(key, f"must be a table ([{key}]), not {type(value).__name__}")
            return None
        for k in value:
            if k not in allowed:
                self.error(f"{key}.{k}", f"unknown key; allowed in [{key}]: {', '.join(allowed)}")
        return value

    def boolean(self, key: str, value: Any, default: bool) -> bool:
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {value!r}")
            return default
        return value

    def number(self, key: str, value: Any, lo: float, hi: float, default: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            self.error(key, f"{value!r}: allowed a number of seconds {lo:g}..{hi:g}")
            return default
        return float(value)

    def integer(self, key: str, value: Any, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.error(key, f"{value!r}: allowed an integer {lo}..{hi}")
            return None
        return value

    def string(self, key: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value or "\0" in value:
            self.error(key, f"must be a non-empty string, not {value!r}")
            return None
        return value

    def slots(self, key: str, value: Any) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, int)
                                                           for v in value):
            self.error(key, f"must be a non-empty array of slot numbers, not {value!r}")
            return None
        bad = [v for v in value if not 0 <= v < self.slot_count]
        if bad:
            self.error(key, f"no slot {bad[0]}: this reader has slots 0..{self.slot_count - 1}")
            return None
        return tuple(sorted(set(value)))

    def gpio_line(self, key: str, value: Any) -> tuple[str, int] | None:
        if isinstance(value, str):
            chip, sep, line = value.rpartition(":")
            if sep and chip and line.isascii() and line.isdigit():
                return chip, int(line)
        self.error(key, f"{value!r}: allowed \"CHIP:LINE\", e.g. \"gpiochip0:27\"")
        return None

    def key_name(self, key: str, value: Any) -> str | int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 0x300:
            return value
        if isinstance(value, str) and re.fullmatch(r"(KEY|BTN)_[A-Z0-9_]+", value):
            return value
        self.error(key, f"{value!r}: allowed a key name such as \"KEY_ENTER\" or a key code 1..767")
        return None


def parse(presence: Any, pinpad: Any, *, source: str, slot_count: int) -> tuple[BoardConfig, list[str]]:
    c = _Checker(source, slot_count)
    board = BoardConfig(presence=None if presence is None else _presence(c, presence),
                        pinpad=PinpadConfig() if pinpad is None else _pinpad(c, pinpad))
    return board, c.problems


def _presence(c: _Checker, value: Any) -> PresenceConfig | None:
    t = c.table("presence", value, PRESENCE_KEYS)
    if t is None:
        return None
    cfg: dict[str, Any] = {}
    if "timeout" in t:
        cfg["timeout"] = c.number("presence.timeout", t["timeout"], 1, MAX_TIMEOUT, DEFAULT_TIMEOUT)
    if "slots" in t:
        cfg["slots"] = c.slots("presence.slots", t["slots"])
    if "control" in t:
        cfg["control"] = c.boolean("presence.control", t["control"], True)
    if "led" in t:
        cfg["led"] = c.string("presence.led", t["led"])
    if "led_gpio" in t:
        cfg["led_gpio"] = c.gpio_line("presence.led_gpio", t["led_gpio"])
    if "led" in t and "led_gpio" in t:
        c.error("presence.led_gpio", "give led (a sysfs LED) or led_gpio (a GPIO line), not both")
    if "led_active_low" in t:
        cfg["led_active_low"] = c.boolean("presence.led_active_low", t["led_active_low"], False)
    buttons: list[ButtonSpec] = []
    if "button" in t:
        items = t["button"]
        if not isinstance(items, list) or not all(isinstance(b, dict) for b in items):
            c.error("presence.button", "must be an array of tables ([[presence.button]] sections)")
        else:
            buttons = [b for b in (_button(c, i, b, cfg.get("slots")) for i, b in enumerate(items)) if b]
    cfg["buttons"] = tuple(buttons)
    result = PresenceConfig(**cfg)
    if not result.buttons and not result.control:
        c.error("presence", "no source: add a [[presence.button]] or leave control = true "
                            "('ccidgadget confirm SLOT')")
    return result


def _button(c: _Checker, index: int, t: dict, presence_slots) -> ButtonSpec | None:
    prefix = f"presence.button[{index}]"
    for k in t:
        if k not in BUTTON_KEYS:
            c.error(f"{prefix}.{k}", f"unknown key; allowed in [[presence.button]]: {', '.join(BUTTON_KEYS)}")
    kind = [k for k in ("input", "gpio") if k in t]
    if len(kind) != 1:
        c.error(prefix, "give input = \"/dev/input/...\" (an input-event key) or gpio = \"gpiochip0\" with "
                        "line = N (a GPIO line), exactly one of them")
        return None
    spec: dict[str, Any] = {}
    if kind == ["input"]:
        spec["input"] = c.string(f"{prefix}.input", t["input"])
        if "key" in t:
            spec["key"] = c.key_name(f"{prefix}.key", t["key"])
        for k in ("gpio", "line", "active_low", "bias", "debounce_ms"):
            if k in t:
                c.error(f"{prefix}.{k}", "only for a GPIO button (gpio = ...)")
    else:
        spec["gpio"] = c.string(f"{prefix}.gpio", t["gpio"])
        if "line" not in t:
            c.error(f"{prefix}.line", "missing: the line (offset) on the chip, e.g. 17 for the Pi's GPIO17")
        else:
            spec["line"] = c.integer(f"{prefix}.line", t["line"], 0, 1023)
        if "active_low" in t:
            spec["active_low"] = c.boolean(f"{prefix}.active_low", t["active_low"], True)
        if "bias" in t:
            if t["bias"] not in BIASES:
                c.error(f"{prefix}.bias", f"{t['bias']!r}: allowed {', '.join(BIASES)}")
            else:
                spec["bias"] = t["bias"]
        if "debounce_ms" in t:
            spec["debounce_ms"] = c.integer(f"{prefix}.debounce_ms", t["debounce_ms"], 0, MAX_DEBOUNCE_MS)
        for k in ("key",):
            if k in t:
                c.error(f"{prefix}.{k}", "only for an input-event button (input = ...)")
    if "grab" in t:
        spec["grab"] = c.boolean(f"{prefix}.grab", t["grab"], True)
    if "slots" in t:
        spec["slots"] = c.slots(f"{prefix}.slots", t["slots"])
        if spec["slots"] and presence_slots and set(spec["slots"]) - set(presence_slots):
            c.error(f"{prefix}.slots", f"slot(s) {sorted(set(spec['slots']) - set(presence_slots))} are not in "
                                       f"presence.slots {list(presence_slots)}")
    if any(v is None for k, v in spec.items() if k not in ("slots",)):
        return None
    return ButtonSpec(**spec)


def _pinpad(c: _Checker, value: Any) -> PinpadConfig:
    t = c.table("pinpad", value, PINPAD_KEYS)
    if t is None:
        return PinpadConfig()
    cfg: dict[str, Any] = {"enabled": True}
    if "enabled" in t:
        cfg["enabled"] = c.boolean("pinpad.enabled", t["enabled"], False)
    if "slots" in t:
        cfg["slots"] = c.slots("pinpad.slots", t["slots"])
    if "keypad" in t:
        cfg["keypad"] = c.string("pinpad.keypad", t["keypad"])
    if "grab" in t:
        cfg["grab"] = c.boolean("pinpad.grab", t["grab"], True)
    if "timeout" in t:
        cfg["timeout"] = c.number("pinpad.timeout", t["timeout"], 1, 255, DEFAULT_PIN_TIMEOUT)
    if "max_timeout" in t:
        cfg["max_timeout"] = c.number("pinpad.max_timeout", t["max_timeout"], 1, 255, DEFAULT_PIN_MAX_TIMEOUT)
    return PinpadConfig(**cfg)       # max_timeout caps the default too (PinPad.timeout_for)
