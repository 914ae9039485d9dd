# SPDX-License-Identifier: GPL-3.0-or-later
"""The board's people-facing parts, as the daemon runs them: buttons, keypad, LED, waits.

`BoardService` is built from the [presence] and [pinpad] configuration and
lives as long as the gadget: `start(loop)` opens the input devices and GPIO
lines (each a reader of the loop), `attach(slot, card)` gives an emulated
card its `UserPresence`, the reader service calls `cancel(slot)` when the
host drops a command and `pin_entry(slot, request)` for PC_to_RDR_Secure, and
the control socket's verbs land in `confirm`, `deny` and `pin`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..cards.base import Card, EmulatedCard
from .config import BoardConfig, ButtonSpec
from .led import Blinker

# The hub, the PIN pad (and the CCID core's PIN structures) and the input devices are imported only by a
# configuration that has them: a board without buttons starts without their modules.
if TYPE_CHECKING:
    from ..ccid.secure import PinRequest
    from .hub import PresenceHub
    from .inputkeys import InputKeys
    from .led import Led
    from .pinpad import PinPad

log = logging.getLogger(__name__)

#: bPINSupport (CCID §5.1): 0x01 PIN verification, 0x02 PIN modification.
PIN_SUPPORT_VERIFY_MODIFY = 0x03
#: wLcdLayout (CCID §5.1): the board drives no display.  Hosts then ask for no
#: messages (OpenSC: bNumberMessage 0); the prompts go to the journal instead.
LCD_LAYOUT_NONE = 0x0000

_KEYPAD_WORDS = ("enter", "backspace", "cancel")     # the pinpad.Key named by the word


class BoardError(OSError):
    """A configured button, keypad or LED cannot be used (the message says which)."""


class _GpioButton:
    def __init__(self, spec: ButtonSpec, hub: PresenceHub) -> None:
        from .gpio import EdgeEvent, GpioLine
        self.spec = spec
        self.hub = hub
        self._rising = EdgeEvent.RISING_EDGE
        self.line = GpioLine(spec.gpio, spec.line, active_low=spec.active_low, bias=spec.bias,
                             debounce_us=spec.debounce_ms * 1000, edges=True, consumer="ccidgadget-button")
        self.presses = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.line.fd, self._readable)
        self._loop = loop

    def _readable(self) -> None:
        for edge, _timestamp in self.line.read_events():
            if edge == self._rising:         # inactive -> active: the button went down
                self.presses += 1
                self.hub.press(self.spec.label, set(self.spec.slots) if self.spec.slots else None)

    def stop(self) -> None:
        if self.line.fd >= 0:
            self._loop.remove_reader(self.line.fd)
        self.line.close()

    def describe(self) -> dict:
        return {"kind": "gpio", "chip": self.line.chip, "line": self.spec.line, "active_low": self.spec.active_low,
                "debounce_ms": self.spec.debounce_ms, "slots": list(self.spec.slots) if self.spec.slots else "all",
                "presses": self.presses}


class BoardService:
    def __init__(self, config: BoardConfig, slot_count: int) -> None:
        self.config = config
        self.slot_count = slot_count
        presence = config.presence
        self.hub: PresenceHub | None = None
        if presence is not None:
            from .hub import PresenceHub
            self.hub = PresenceHub(timeout=presence.timeout,
                                   slots=set(presence.slots) if presence.slots else None)
            self.hub.listeners.append(self._update_led)
        pin = config.pinpad
        self.pinpad: PinPad | None = None
        if pin.enabled:
            from .pinpad import PinPad
            self.pinpad = PinPad(default_timeout=pin.timeout, max_timeout=pin.max_timeout,
                                 keypad=pin.keypad is not None, slots=set(pin.slots) if pin.slots else None)
            self.pinpad.listeners.append(self._update_led)
        self.blinker = Blinker(None)
        self._inputs: dict[str, InputKeys] = {}
        self._gpio_buttons: list[_GpioButton] = []
        self._key_buttons: list[tuple[ButtonSpec, int]] = []
        self._keypad_map: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            self._start(loop)
        except BaseException:
            self.stop()
            raise

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        presence = self.config.presence
        if self.hub is not None:
            self.hub.start(loop)
            self.blinker = Blinker(self._make_led(presence))
            for spec in presence.buttons:
                if spec.input is not None:
                    from .inputkeys import key_code
                    try:
                        code = key_code(spec.key)
                    except ValueError as e:
                        raise BoardError(f"presence button {spec.label}: {e}") from None
                    self._key_buttons.append((spec, code))
                    self._input(spec.input, spec.grab)
                else:
                    try:
                        button = _GpioButton(spec, self.hub)
                    except OSError as e:
                        raise BoardError(f"presence button {spec.label}: {e}") from None
                    button.start(loop)
                    self._gpio_buttons.append(button)
        if self.pinpad is not None and self.config.pinpad.keypad:
            from .inputkeys import keypad_keys
            self._keypad_map = keypad_keys()
            self._input(self.config.pinpad.keypad, self.config.pinpad.grab)
        for device, keys in self._inputs.items():
            keys.listeners.append(lambda code, value, device=device: self._key(device, code, value))
            try:
                keys.start(loop)
            except OSError as e:
                # A USB keypad may come later (or udev makes its by-path link late): keep looking.
                keys.problem = f"absent: {e.strerror or e}"
                log.warning("input device %s not there (%s); looking for it every few seconds", keys.device,
                            e.strerror or e, extra={"event": "presence-source-lost"})
                keys._schedule_reopen()
        if self.hub is not None:
            log.info("presence: %s; touch timeout %.0f s", ", ".join(self._source_names()) or "none",
                     presence.timeout, extra={"event": "presence"})
        if self.pinpad is not None:
            log.info("PIN pad on for slot(s) %s: %s", self._slot_text(self.config.pinpad.slots),
                     f"keypad {self.config.pinpad.keypad} and 'ccidgadget pin'" if self.config.pinpad.keypad
                     else "'ccidgadget pin'", extra={"event": "pinpad"})

    def _make_led(self, presence) -> Led | None:
        from .led import GpioLed, SysfsLed
        try:
            if presence.led:
                return SysfsLed(presence.led)
            if presence.led_gpio:
                chip, line = presence.led_gpio
                return GpioLed(chip, line, active_low=presence.led_active_low)
        except OSError as e:
            raise BoardError(f"presence LED: {e}") from None
        return None

    def _input(self, device: str, grab: bool) -> None:
        if device not in self._inputs:
            from .inputkeys import InputKeys
            self._inputs[device] = InputKeys(device, grab=grab)

    def stop(self) -> None:
        for keys in self._inputs.values():
            keys.stop()
        for button in self._gpio_buttons:
            button.stop()
        self._gpio_buttons.clear()
        if self.hub is not None:
            self.hub.stop()
        self.blinker.close()

    def _source_names(self) -> list[str]:
        names = [spec.label for spec in self.config.presence.buttons] if self.config.presence else []
        if self.config.presence and self.config.presence.control:
            names.append("'ccidgadget confirm/deny SLOT'")
        return names

    def _slot_text(self, slots) -> str:
        return ", ".join(map(str, slots)) if slots else "all"

    # -- what the reader and the cards see --------------------------------------------------
    def reader_features(self) -> dict:
        """ReaderConfig keyword arguments: bPINSupport and wLcdLayout."""
        if self.pinpad is None:
            return {}
        return {"pin_support": PIN_SUPPORT_VERIFY_MODIFY, "lcd_layout": LCD_LAYOUT_NONE}

    def attach(self, slot: int, card: Card) -> None:
        """Give an emulated card the presence of its slot (others have no touch policy)."""
        if self.hub is None or not isinstance(card, EmulatedCard) or not self.hub.serves(slot):
            return
        presence = self.hub.for_slot(slot)
        presence.after_current = card.run_after_current
        card.presence = presence

    def cancel(self, slot: int) -> None:
        """The host dropped slot's command (the service's Cancel): free a worker waiting for a touch."""
        if self.hub is not None:
            self.hub.cancel(slot)

    async def pin_entry(self, slot: int, request: PinRequest) -> tuple[str | None, str | None]:
        return await self.pinpad.collect(slot, request)

    # -- sources -------------------------------------------------------------------------------
    def _key(self, device: str, code: int, value: int) -> None:
        if value != 1:                      # key down only; releases and auto-repeat do nothing
            return
        if (self.pinpad is not None and device == self.config.pinpad.keypad and self.pinpad.entries
                and code in self._keypad_map):
            from .pinpad import Key
            word = self._keypad_map[code]
            self.pinpad.key(Key(word) if word in _KEYPAD_WORDS else word)
            return
        for spec, button_code in self._key_buttons:
            if spec.input == device and code == button_code:
                self.hub.press(spec.label, set(spec.slots) if spec.slots else None)
                return

    def _update_led(self) -> None:
        if self.hub is not None and self.hub.waits:
            kind = "touch"
        elif self.pinpad is not None and self.pinpad.entries:
            kind = "pin"
        else:
            kind = None
        if self._loop is not None:
            self.blinker.update(kind)

    # -- control socket ---------------------------------------------------------------------------
    def _check_slot(self, slot: int) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.slot_count:
            raise LookupError(f"no slot {slot}: this reader has slots 0..{self.slot_count - 1}")

    def confirm(self, slot: int, by: str) -> dict:
        self._check_slot(slot)
        if self.hub is None or not self.config.presence.control:
            raise LookupError("confirmations from the control socket are off ([presence] control = false, "
                              "or no [presence] table)")
        if not self.hub.confirm(slot, by):
            raise LookupError(f"slot {slot} does not wait for a touch")
        return {"slot": slot, "confirmed": True}

    def deny(self, slot: int, by: str) -> dict:
        """Refuse slot's touch wait, or cancel its PIN entry."""
        self._check_slot(slot)
        if self.hub is not None and self.hub.deny(slot, by):
            return {"slot": slot, "denied": "touch"}
        if self.pinpad is not None and self.pinpad.cancel(slot, by):
            return {"slot": slot, "denied": "pin"}
        raise LookupError(f"slot {slot} waits for neither a touch nor a PIN")

    def pin(self, slot: int, current: str | None, new: str | None, *, cancel: bool, by: str) -> dict:
        self._check_slot(slot)
        if self.pinpad is None:
            raise LookupError("the PIN pad is off (no [pinpad] table in the configuration)")
        if cancel:
            if not self.pinpad.cancel(slot, by):
                raise LookupError(f"slot {slot} does not wait for a PIN")
            return {"slot": slot, "cancelled": True}
        self.pinpad.submit(slot, current, new)
        return {"slot": slot, "entered": True}

    # -- status ---------------------------------------------------------------------------------
    def waiting(self, slot: int) -> dict | None:
        for entry in self.describe_waits():
            if entry["slot"] == slot:
                return entry
        return None

    def describe_waits(self) -> list[dict]:
        out = self.hub.describe() if self.hub is not None else []
        if self.pinpad is not None:
            out += self.pinpad.describe()
        return out

    def describe(self) -> dict:
        presence = self.config.presence
        sources = []
        if presence is not None:
            for spec, code in self._key_buttons:
                info = dict(self._inputs[spec.input].describe(), kind="input", key=spec.key, code=code,
                            slots=list(spec.slots) if spec.slots else "all")
                sources.append(info)
            sources += [b.describe() for b in self._gpio_buttons]
            if presence.control:
                sources.append({"kind": "control", "verbs": ["confirm", "deny"]})
        out = {
            "touch": None if self.hub is None else {
                "timeout_s": presence.timeout, "slots": list(presence.slots) if presence.slots else "all",
                "sources": sources, "led": self.blinker.led.name if self.blinker.led else None,
                "confirmed": self.hub.confirmed, "denied": self.hub.denied, "timed_out": self.hub.timed_out,
                "cancelled": self.hub.cancelled},
            "pinpad": None if self.pinpad is None else {
                "slots": list(self.config.pinpad.slots) if self.config.pinpad.slots else "all",
                "keypad": self._inputs[self.config.pinpad.keypad].describe() if self.config.pinpad.keypad else None,
                "timeout_s": self.config.pinpad.timeout, "max_timeout_s": self.config.pinpad.max_timeout,
                "entered": self.pinpad.completed, "cancelled": self.pinpad.cancelled,
                "timed_out": self.pinpad.timed_out},
            "waiting": self.describe_waits(),
        }
        return out
