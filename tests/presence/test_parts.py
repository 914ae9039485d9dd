# SPDX-License-Identifier: GPL-3.0-or-later
"""The keypad state machine, the [presence]/[pinpad] configuration, the sysfs LED and the GPIO ioctl numbers."""

from __future__ import annotations

import asyncio
import struct

import pytest

from ccidgadget.ccid.secure import parse_secure
from ccidgadget.daemon import config
from ccidgadget.presence import gpio
from ccidgadget.presence.led import Blinker, SysfsLed
from ccidgadget.presence.pinpad import Key, KeypadEntry, Step

from tests.ccid.test_secure import OPENSC_PIV_VERIFY, gnupg_modify, gnupg_verify


def typed(entry: KeypadEntry, keys) -> list[Step]:
    return [entry.key(k) for k in keys]


def test_keypad_verify_with_backspace_and_min_length() -> None:
    e = KeypadEntry(parse_secure(OPENSC_PIV_VERIFY))             # 4..8, Enter validates
    assert typed(e, "123") == [Step.DIGIT] * 3
    assert e.key(Key.ENTER) is Step.IGNORED                      # too short
    assert typed(e, "49") == [Step.DIGIT] * 2
    assert e.key(Key.BACKSPACE) is Step.DIGIT
    assert e.key(Key.ENTER) is Step.DONE
    assert e.result() == ("1234", None)


def test_keypad_ignores_digits_past_the_maximum_and_other_keys() -> None:
    e = KeypadEntry(parse_secure(OPENSC_PIV_VERIFY))
    assert typed(e, "12345678") == [Step.DIGIT] * 8
    assert e.key("9") is Step.IGNORED and e.key("x") is Step.IGNORED
    assert e.key(Key.ENTER) is Step.DONE and e.result() == ("12345678", None)


def test_keypad_max_size_reached_validates_by_itself() -> None:
    e = KeypadEntry(parse_secure(gnupg_verify(6, minlen=6, maxlen=6)))
    assert typed(e, "123456")[-1] is Step.DONE


def test_keypad_modify_asks_current_new_and_again_and_repeats_on_mismatch() -> None:
    e = KeypadEntry(parse_secure(gnupg_modify(0)))              # 6..15
    assert e.prompt == "current"
    typed(e, "123456")
    assert e.key(Key.ENTER) is Step.NEXT and e.prompt == "new"
    typed(e, "654321")
    assert e.key(Key.ENTER) is Step.NEXT and e.prompt == "confirm"
    typed(e, "654322")
    assert e.key(Key.ENTER) is Step.MISMATCH and e.prompt == "new"
    typed(e, "777777")
    e.key(Key.ENTER)
    typed(e, "777777")
    assert e.key(Key.ENTER) is Step.DONE
    assert e.result() == ("123456", "777777")


def test_keypad_cancel_and_timeout_validation() -> None:
    e = KeypadEntry(parse_secure(OPENSC_PIV_VERIFY))
    typed(e, "12")
    assert e.key(Key.CANCEL) is Step.CANCELLED
    e = KeypadEntry(parse_secure(OPENSC_PIV_VERIFY))
    typed(e, "12345")
    assert e.timeout_reached() is Step.IGNORED                   # bEntryValidationCondition 02 only
    timed = bytearray(OPENSC_PIV_VERIFY)
    timed[7] = 0x06
    e = KeypadEntry(parse_secure(bytes(timed)))
    typed(e, "12345")
    assert e.timeout_reached() is Step.DONE and e.result() == ("12345", None)


# -- configuration -------------------------------------------------------------------------------
TOML = """
[[slot]]
type = "piv"
[[slot]]
type = "iso"

[presence]
timeout = 20
led = "ACT"

[[presence.button]]
input = "/dev/input/by-path/platform-button@11-event"
key = "KEY_ENTER"
slots = [0]

[[presence.button]]
gpio = "gpiochip0"
line = 17
debounce_ms = 30

[pinpad]
keypad = "USB Keypad"
timeout = 40
"""


def test_configuration_tables() -> None:
    cfg = config.parse(TOML, source="t.toml")
    p = cfg.board.presence
    assert p.timeout == 20 and p.led == "ACT" and p.control
    a, b = p.buttons
    assert (a.input, a.key, a.slots) == ("/dev/input/by-path/platform-button@11-event", "KEY_ENTER", (0,))
    assert (b.gpio, b.line, b.active_low, b.bias, b.debounce_ms, b.slots) == ("gpiochip0", 17, True, "pull-up", 30,
                                                                              None)
    assert cfg.board.pinpad.enabled and cfg.board.pinpad.keypad == "USB Keypad" and cfg.board.pinpad.timeout == 40
    assert cfg.copy().board == cfg.board
    assert config.parse("", source="t").board.presence is None
    assert not config.parse("", source="t").board.pinpad.enabled


@pytest.mark.parametrize("text, message", [
    ("[presence]\ntimeout = 0", "presence.timeout: 0: allowed a number of seconds 1..120"),
    ("[presence]\ncontrol = false", "presence: no source"),
    ("[presence]\nslots = [3]", "presence.slots: no slot 3"),
    ("[presence]\nbogus = 1", "presence.bogus: unknown key"),
    ("[[presence.button]]\ninput = '/dev/input/event0'\nline = 3", "presence.button[0].line: only for a GPIO button"),
    ("[[presence.button]]\ngpio = 'gpiochip0'", "presence.button[0].line: missing"),
    ("[[presence.button]]\ngpio = 'gpiochip0'\ninput = 'x'", "exactly one of them"),
    ("[[presence.button]]\ngpio = 'gpiochip0'\nline = 2\nbias = 'up'", "bias: 'up': allowed pull-up"),
    ("[[presence.button]]\ninput = 'x'\nkey = 'ENTER'", "allowed a key name such as"),
    ("[presence]\nled = 'ACT'\nled_gpio = 'gpiochip0:4'", "not both"),
    ("[presence]\nled_gpio = 'gpiochip0'", "allowed \"CHIP:LINE\""),
    ("[pinpad]\nmax_timeout = 300", "pinpad.max_timeout: 300: allowed a number of seconds 1..255"),
    ("[pinpad]\nenabled = 'yes'", "pinpad.enabled: must be true or false"),
])
def test_configuration_errors(text, message) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, source="t.toml")
    assert message in str(e.value), str(e.value)
    assert str(e.value).startswith("t.toml: ")


# -- the sysfs LED ------------------------------------------------------------------------------------
def test_sysfs_led_blinks_and_gives_the_trigger_back(tmp_path) -> None:
    led_dir = tmp_path / "ACT"
    led_dir.mkdir()
    (led_dir / "brightness").write_text("0\n")
    (led_dir / "max_brightness").write_text("255\n")
    (led_dir / "trigger").write_text("none timer [mmc0] heartbeat\n")
    led = SysfsLed(led_dir)

    async def main():
        blinker = Blinker(led)
        blinker.update("touch")
        seen = set()
        for _ in range(20):
            seen.add((led_dir / "brightness").read_text())
            await asyncio.sleep(0.05)
        assert seen == {"255", "0"}
        assert (led_dir / "trigger").read_text() == "none"
        blinker.update(None)
        assert (led_dir / "trigger").read_text() == "mmc0"
    asyncio.run(main())
    with pytest.raises(OSError, match="no LED"):
        SysfsLed(tmp_path / "nothing")


def test_gpio_uapi_v2_numbers() -> None:
    # include/uapi/linux/gpio.h: _IOWR(0xB4, 0x07, struct gpio_v2_line_request) with sizeof 592
    assert gpio.GPIO_V2_GET_LINE_IOCTL == 0xC250B407
    assert gpio.GPIO_GET_CHIPINFO_IOCTL == 0x8044B401
    assert gpio.GPIO_V2_LINE_SET_VALUES_IOCTL == 0xC010B40F
    event = struct.pack("<QIIII24x", 123, 1, 17, 1, 1)
    assert gpio.LINE_EVENT.unpack(event)[:2] == (123, gpio.EdgeEvent.RISING_EDGE)


def test_example_file_documents_every_presence_key() -> None:
    import re
    from ccidgadget.presence import config as board
    text = (config.Path(__file__).resolve().parents[2] / "etc" / "ccidgadget.toml.example").read_text()
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.M))
    every = (set(board.PRESENCE_KEYS) - {"button"}) | set(board.BUTTON_KEYS) | set(board.PINPAD_KEYS)
    assert every <= documented, sorted(every - documented)
