# SPDX-License-Identifier: GPL-3.0-or-later
"""User presence and the PIN pad end to end (issue 12), with the guest kernel's own devices.

- a button: a virtual input device (uinput, python-evdev) with KEY_ENTER, found by name, and
  a simulated GPIO line (gpio-sim.ko built for the guest kernel by tests/vm/gpio_sim.py,
  pressed by writing its pull to "pull-down": active-low, pull-up, debounced by the kernel);
- the LED: the LED class device the kernel makes for the button's own EV_LED (input-leds:
  /sys/class/leds/inputN::capslock), then after a `reload` a GPIO output on gpio-sim;
- a keypad: a second uinput device with digits, Enter, Backspace and Esc;
- the host: pcscd + libccid (debug log on), yubico-piv-tool, openssl, OpenSC's pkcs11-tool,
  pyscard for exact status words and for FEATURE_VERIFY_PIN_DIRECT (SCardControl).

Two PIV slots: slot 0 holds a key with touch policy ALWAYS (9A) and one with CACHED (9D);
slot 1 keeps serving while slot 0 waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from piv_helpers import PKCS11_MODULE, PivStack

GPIO_SIM_CONFIGFS = Path("/sys/kernel/config/gpio-sim")
BUTTON_NAME = "ccidgadget test button"
KEYPAD_NAME = "ccidgadget test keypad"
TOUCH_TIMEOUT = 20            # a `ccidgadget` CLI process takes several seconds to start under TCG
PIN_TIMEOUT = 8
PIN = "73915824"                    # changed from the default so that it is easy to look for in logs
PIV_AID = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00]
# PC/SC v2 part 10 (reader.h): FEATURE_VERIFY_PIN_DIRECT tag 0x06; CM_IOCTL_GET_FEATURE_REQUEST = SCARD_CTL_CODE(3400)
FEATURE_VERIFY_PIN_DIRECT = 0x06
SCARD_CTL_CODE_3400 = 0x42000000 + 3400


def _modprobe(*names: str) -> None:
    tree = os.environ.get("CCIDGADGET_VM_MODULES")
    subprocess.run(["modprobe", *(["-d", tree] if tree else []), "-a", *names], check=True,
                   capture_output=True, text=True)


class GpioSim:
    """A gpio-sim chip with two lines: 0 the button, 1 the LED."""

    def __init__(self) -> None:
        module = os.environ.get("CCIDGADGET_VM_GPIO_SIM", "")
        if not Path(module).exists():
            why = ""
            failed = Path(module).with_name("gpio-sim.failed")
            if failed.exists():
                why = failed.read_text()[-2000:]
            pytest.fail(f"gpio-sim.ko for the guest kernel is missing ({module!r}); tests/vm/testbed.py prepare "
                        f"builds it: {why}", pytrace=False)
        _modprobe("configfs")
        if not GPIO_SIM_CONFIGFS.exists():
            subprocess.run(["insmod", module], check=True, capture_output=True, text=True)
        self.root = GPIO_SIM_CONFIGFS / "ccidgadget"
        (self.root / "bank0").mkdir(parents=True)
        (self.root / "bank0" / "num_lines").write_text("2")
        (self.root / "bank0" / "label").write_text("ccidgadget-sim")
        (self.root / "live").write_text("1")
        self.device = (self.root / "dev_name").read_text().strip()
        self.chip = (self.root / "bank0" / "chip_name").read_text().strip()
        self.sysfs = Path("/sys/devices/platform") / self.device / self.chip

    def pull(self, line: int, direction: str) -> None:
        (self.sysfs / f"sim_gpio{line}" / "pull").write_text(f"pull-{direction}")

    def value(self, line: int) -> int:
        return int((self.sysfs / f"sim_gpio{line}" / "value").read_text())

    def press(self) -> None:
        self.pull(0, "down")          # active low: the button shorts the line to ground
        time.sleep(0.15)
        self.pull(0, "up")

    def close(self) -> None:
        try:
            (self.root / "live").write_text("0")
            (self.root / "bank0").rmdir()
            self.root.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="module")
def devices():
    import evdev
    from evdev import ecodes as e
    _modprobe("uinput", "evdev")
    sim = GpioSim()
    button = evdev.UInput({e.EV_KEY: [e.KEY_ENTER], e.EV_LED: [e.LED_CAPSL]}, name=BUTTON_NAME)
    keys = [getattr(e, f"KEY_{d}") for d in range(10)] + [e.KEY_ENTER, e.KEY_BACKSPACE, e.KEY_ESC]
    keypad = evdev.UInput({e.EV_KEY: keys}, name=KEYPAD_NAME)
    led = None
    deadline = time.monotonic() + 10
    while led is None and time.monotonic() < deadline:
        for path in Path("/sys/class/leds").glob("input*::capslock"):
            try:
                if (path / "device" / "name").read_text().strip() == BUTTON_NAME:
                    led = path
            except OSError:
                pass
        time.sleep(0.1)
    assert led is not None, sorted(p.name for p in Path("/sys/class/leds").iterdir())
    try:
        yield {"sim": sim, "button": button, "keypad": keypad, "led": led, "ecodes": e}
    finally:
        button.close()
        keypad.close()
        sim.close()


def _config(devices, path: Path, *, led: str) -> Path:
    path.write_text(f"""
[[slot]]
type = "piv"
[[slot]]
type = "piv"

[presence]
timeout = {TOUCH_TIMEOUT}
{led}

[[presence.button]]
input = "{BUTTON_NAME}"
key = "KEY_ENTER"
# not grabbed: a grab stops the kernel's input-leds from setting the device's own LED, our LED here
grab = false

[[presence.button]]
gpio = "ccidgadget-sim"
line = 0
active_low = true
bias = "pull-up"
debounce_ms = 10

[pinpad]
keypad = "{KEYPAD_NAME}"
max_timeout = {PIN_TIMEOUT}
""")
    return path


class Stack(PivStack):
    """PivStack with a configuration file, a debug pcscd (libccid logs every frame) and control verbs."""

    def __init__(self, e2e, base: Path, log_dir: Path, config: Path) -> None:
        self.config = config
        self.runtime = base / "run"
        super().__init__(e2e, state_dir=base / "state", work=base / "work", log_dir=log_dir,
                         daemon_args=("--config", str(config), "--runtime-dir", str(self.runtime)))
        self.pcscd = e2e.PcscdProcess(self.log_dir / "pcscd.log", args=["--debug"])

    def ctl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60):
        return self.run([sys.executable, "-m", "ccidgadget", *args, "--socket", str(self.runtime / "control.sock")],
                        check=check, input=input, timeout=timeout)

    def status(self) -> dict:
        """Through the control socket from this process: a `ccidgadget status` process takes ~2 s under TCG."""
        from ccidgadget.daemon.control import call
        return call(self.runtime / "control.sock", "status", timeout=30)

    def wait_for(self, slot: int, kind: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = self.status()["slots"][slot].get("waiting")
            if waiting and waiting["waits_for"] == kind:
                return waiting
            time.sleep(0.1)
        raise AssertionError(f"slot {slot} did not wait for {kind}\n{self.daemon.log()[-3000:]}")

    def background(self, argv) -> subprocess.Popen:
        return subprocess.Popen(list(argv), cwd=self.work, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, e2e, devices):
    os.environ["LIBCCID_ifdLogLevel"] = "0x0007"       # libccid: critical, info and every frame (COMM)
    out = os.environ.get("CCIDGADGET_VM_OUT")
    log_dir = Path(out) / "logs" / "test_presence" if out else tmp_path_factory.mktemp("presence-logs")
    base = tmp_path_factory.mktemp("presence")
    config = _config(devices, base / "ccidgadget.toml", led=f'led = "{devices["led"]}"')
    s = Stack(e2e, base, log_dir, config)
    try:
        s.start()
        yield s
    finally:
        # pyscard releases its PC/SC context in __del__: let that happen while pcscd still runs
        # (raising there later trips CPython 3.11's "AST constructor recursion depth mismatch")
        import gc
        gc.collect()
        problems = s.close()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def _readers(stack) -> list:
    return sorted((r for r in stack.e2e.list_readers() if "ccidgadget" in str(r)), key=str)


def _connect(stack, slot: int):
    from smartcard.System import readers  # noqa: F401
    conn = _readers(stack)[slot].createConnection()
    conn.connect()
    return conn


def _apdu(conn, apdu) -> tuple[bytes, int]:
    data, sw1, sw2 = conn.transmit(list(apdu))
    while sw1 == 0x61:
        more, sw1, sw2 = conn.transmit([0x00, 0xC0, 0x00, 0x00, sw2])
        data += more
    return bytes(data), sw1 << 8 | sw2


def _sign_apdu(slot: int, digest: bytes = hashlib.sha256(b"presence").digest()) -> list[int]:
    body = [0x82, 0x00, 0x81, len(digest), *digest]
    return [0x00, 0x87, 0x11, slot, len(body) + 2, 0x7C, len(body), *body, 0x00]


def _press_when_waiting(stack, slot: int, press) -> threading.Thread:
    def run():
        stack.wait_for(slot, "touch")
        press()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _tap(device, code) -> None:
    from evdev import ecodes as e
    device.write(e.EV_KEY, code, 1)
    device.syn()
    device.write(e.EV_KEY, code, 0)
    device.syn()


# -- set-up: PIN, keys with touch policies -------------------------------------------------------------
def test_provision_keys_with_touch_policies(stack):
    stack.piv("-a", "change-pin", "-P", "123456", "-N", PIN)
    stack.pin = PIN
    out = stack.piv("-a", "generate", "-s", "9a", "-A", "ECCP256", "--touch-policy=always", "--pin-policy=never",
                    "-o", "9a.pem", mgm=True)
    assert out.returncode == 0
    stack.piv("-a", "generate", "-s", "9d", "-A", "ECCP256", "--touch-policy=cached", "--pin-policy=never",
              "-o", "9d.pem", mgm=True)
    meta = json.loads(stack.ctl("status", "--json").stdout)
    assert meta["presence"]["touch"]["timeout_s"] == TOUCH_TIMEOUT
    kinds = sorted(s["kind"] for s in meta["presence"]["touch"]["sources"])
    assert kinds == ["control", "gpio", "input"], meta["presence"]
    assert all(s.get("open", True) for s in meta["presence"]["touch"]["sources"]), meta["presence"]


class _Signed:
    def __init__(self, sw: int) -> None:
        self.returncode = 0 if sw == 0x9000 else sw
        self.stdout = f"SW {sw:04X}"


def _sign_with_tool(stack, slot_hex: str, name: str) -> _Signed:
    """GENERAL AUTHENTICATE through pcscd/libccid (yubico-piv-tool 2.2.0 has no plain 'sign' action and
    'test-signature' wants a certificate); the DER signature goes to NAME.sig for openssl."""
    data = b"data to sign " + name.encode()
    stack.file(name).write_bytes(data)
    conn = _connect(stack, 0)
    try:
        assert _apdu(conn, [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID])[1] == 0x9000
        out, sw = _apdu(conn, _sign_apdu(int(slot_hex, 16), hashlib.sha256(data).digest()))
    finally:
        conn.disconnect()
    if sw == 0x9000:
        # 7C L 82 L <DER signature>
        assert out[0] == 0x7C and out[2] == 0x82, out.hex()
        stack.file(name + ".sig").write_bytes(out[4:4 + out[3]] if out[3] < 0x80 else out[5:5 + out[4]])
    return _Signed(sw)


def _verify_sig(stack, slot_hex: str, name: str) -> None:
    stack.run(["openssl", "dgst", "-sha256", "-verify", f"{slot_hex}.pem", "-signature", name + ".sig", name])


# -- touch: a key press, a GPIO press, the control socket -----------------------------------------------
def test_uinput_key_press_confirms_and_the_led_blinks(stack, devices):
    led = devices["led"] / "brightness"
    seen = set()

    def press():
        for _ in range(12):                          # ~1.2 s of the LED class device while the wait is open
            seen.add(led.read_text().strip())
            time.sleep(0.1)
        _tap(devices["button"], devices["ecodes"].KEY_ENTER)

    t = _press_when_waiting(stack, 0, press)
    p = _sign_with_tool(stack, "9a", "m1")
    t.join(10)
    assert p.returncode == 0, p.stdout
    _verify_sig(stack, "9a", "m1")
    assert seen == {"0", "1"}, seen                   # blinked
    assert led.read_text().strip() == "0"             # and was given back
    assert "confirmed (by key KEY_ENTER on ccidgadget test button)" in stack.daemon.log()


def test_gpio_line_press_confirms(stack, devices):
    t = _press_when_waiting(stack, 0, devices["sim"].press)
    p = _sign_with_tool(stack, "9a", "m2")
    t.join(10)
    assert p.returncode == 0, p.stdout
    _verify_sig(stack, "9a", "m2")
    assert "confirmed (by GPIO ccidgadget-sim line 0)" in stack.daemon.log()


def test_control_confirm_while_the_other_slot_serves(stack):
    served = []

    def other_slot_then_confirm():
        stack.wait_for(0, "touch")
        conn = _connect(stack, 1)
        served.append(_apdu(conn, [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID])[1])
        conn.disconnect()
        assert stack.status()["slots"][0]["waiting"]["what"] == "PIV slot 9A ECDSA signature"
        stack.ctl("confirm", "0")

    t = threading.Thread(target=other_slot_then_confirm, daemon=True)
    t.start()
    p = _sign_with_tool(stack, "9a", "m3")
    t.join(20)
    assert p.returncode == 0, p.stdout
    assert served == [0x9000]


def test_deny_and_timeout_answer_6982_and_libccid_waits(stack):
    conn = _connect(stack, 0)
    assert _apdu(conn, [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID])[1] == 0x9000
    t = _press_when_waiting(stack, 0, lambda: stack.ctl("deny", "0"))
    assert _apdu(conn, _sign_apdu(0x9A))[1] == 0x6982
    t.join(10)
    start = time.monotonic()
    data, sw = _apdu(conn, _sign_apdu(0x9A))                     # nobody comes: the timeout
    waited = time.monotonic() - start
    assert sw == 0x6982 and waited >= TOUCH_TIMEOUT - 0.5, (sw, waited)
    # libccid's read timeout after the ATR (IFDHSetProtocolParameters logs it, ~3.8 s for our T=1 ATR):
    # it waited the whole touch timeout and got the card's answer because of the time extensions.
    # (libccid logs no frames of a multi-slot reader, so the extensions themselves are not in its log.)
    timeouts = [int(ms) for ms in re.findall(r"IFDHSetProtocolParameters\(\) Timeout: (\d+) ms", stack.pcscd.log())]
    assert timeouts and max(timeouts) < TOUCH_TIMEOUT * 1000 / 2, timeouts
    conn.disconnect()
    log = stack.daemon.log()
    assert "refused (denied by the control socket" in log and "refused (timed out)" in log


def test_cached_touch_counts_for_the_next_signature(stack):
    t = _press_when_waiting(stack, 0, lambda: stack.ctl("confirm", "0"))
    assert _sign_with_tool(stack, "9d", "c1").returncode == 0
    t.join(10)
    before = stack.daemon.log().count("waits for a touch")
    p = _sign_with_tool(stack, "9d", "c2")                        # within 15 s: no touch asked
    assert p.returncode == 0, p.stdout
    _verify_sig(stack, "9d", "c2")
    assert stack.daemon.log().count("waits for a touch") == before


def test_card_removal_cancels_the_wait(stack):
    conn = _connect(stack, 0)
    _apdu(conn, [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID])
    result = []
    t = threading.Thread(target=lambda: result.append(_try(lambda: _apdu(conn, _sign_apdu(0x9A)))), daemon=True)
    t.start()
    stack.wait_for(0, "touch")
    stack.ctl("remove", "0")
    t.join(10)
    assert not t.is_alive()
    # release the handle of the removed card now: pyscard's __del__ raising later, once pcscd is
    # gone, trips CPython 3.11 ("AST constructor recursion depth mismatch") in pytest's summary
    _try(conn.disconnect)
    del conn
    assert stack.status()["slots"][0]["waiting"] is None
    assert "cancelled by the host" in stack.daemon.log()
    stack.ctl("insert", "0")
    deadline = time.monotonic() + 30
    while isinstance(_try(lambda: _connect(stack, 0).disconnect()), Exception):
        assert time.monotonic() < deadline, "the card did not come back"
        time.sleep(0.3)
    # the worker is free: a signature with a press works again
    t = _press_when_waiting(stack, 0, lambda: stack.ctl("confirm", "0"))
    assert _sign_with_tool(stack, "9a", "m4").returncode == 0
    t.join(10)


def _try(fn):
    try:
        return fn()
    except Exception as e:        # the removed card: pyscard raises
        return e


# -- the PIN pad -----------------------------------------------------------------------------------------
def _type(stack, device, keys) -> None:
    e = __import__("evdev").ecodes
    names = {"\n": e.KEY_ENTER, "\b": e.KEY_BACKSPACE, "\x1b": e.KEY_ESC}
    for ch in keys:
        _tap(device, names.get(ch) or getattr(e, f"KEY_{ch}"))
        time.sleep(0.05)


def _tries_left(stack) -> int:
    conn = _connect(stack, 0)
    _apdu(conn, [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID])
    # the card stays verified from the last login (pcscd keeps it powered): VERIFY P1=FF forgets that
    assert _apdu(conn, [0x00, 0x20, 0xFF, 0x80])[1] == 0x9000
    sw = _apdu(conn, [0x00, 0x20, 0x00, 0x80])[1]
    conn.disconnect()
    assert sw >> 4 == 0x63C, hex(sw)
    return sw & 0x0F


def _login(stack) -> subprocess.Popen:
    return stack.background(["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", stack.pkcs11_slot, "--login",
                             "--list-objects", "--type", "privkey"])


def test_pkcs11_login_on_the_keypad(stack, devices):
    p = _login(stack)
    w = stack.wait_for(0, "pin")
    assert (w["operation"], w["entries"]) == ("verify", ["current"]), w
    _type(stack, devices["keypad"], PIN[:3] + "9\b" + PIN[3:] + "\n")
    out, _ = p.communicate(timeout=60)
    # C_Login succeeded (a wrong PIN fails with CKR_PIN_INCORRECT, the next test); keys without
    # certificates are not PKCS#11 objects for OpenSC's PIV driver, so the list itself is empty.
    assert p.returncode == 0, out
    assert "CKR_" not in out, out
    assert stack.daemon.log().count("slot 0: PIN entered") == 1


def test_wrong_pin_on_the_keypad_decrements_the_counter(stack, devices):
    before = _tries_left(stack)
    p = _login(stack)
    stack.wait_for(0, "pin")
    _type(stack, devices["keypad"], "00000000\n")
    out, _ = p.communicate(timeout=60)
    assert p.returncode != 0 and "CKR_PIN_INCORRECT" in out, out
    assert _tries_left(stack) == before - 1


def test_pin_through_ccidgadget_pin(stack):
    p = _login(stack)
    entered = stack.ctl("pin", "0", "--stdin", "--wait", "30", input=PIN + "\n")
    assert "PIN passed to the card" in entered.stdout
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out


def _verify_pin_direct(stack):
    """FEATURE_VERIFY_PIN_DIRECT through pcscd/libccid, the structure OpenSC builds for PIV."""
    import struct
    conn = _connect(stack, 0)
    _apdu(conn, [0x00, 0xA4, 0x04, 0x00, len(PIV_AID), *PIV_AID])
    features = conn.control(SCARD_CTL_CODE_3400, [])
    ioctl = None
    for i in range(0, len(features), 6):
        if features[i] == FEATURE_VERIFY_PIN_DIRECT:
            ioctl = int.from_bytes(bytes(features[i + 2:i + 6]), "big")
    assert ioctl, features
    apdu = bytes([0x00, 0x20, 0x00, 0x80, 0x08]) + b"\xff" * 8
    structure = (bytes([30, 30, 0x82, 0x08, 0x00]) + struct.pack("<H", 4 << 8 | 8) + bytes([0x02, 0x00])
                 + struct.pack("<H", 0x0409) + b"\x00\x00\x00\x00" + struct.pack("<I", len(apdu)) + apdu)
    return conn, ioctl, list(structure)


def test_keypad_escape_is_6401_and_the_timeout_6400(stack, devices):
    conn, ioctl, structure = _verify_pin_direct(stack)
    t = threading.Thread(target=lambda: (stack.wait_for(0, "pin"), _type(stack, devices["keypad"], "12\x1b")),
                         daemon=True)
    t.start()
    assert bytes(conn.control(ioctl, structure)) == b"\x64\x01"           # libccid: bError EF -> 6401
    t.join(10)
    start = time.monotonic()
    assert bytes(conn.control(ioctl, structure)) == b"\x64\x00"           # bError F0 -> 6400
    assert time.monotonic() - start >= PIN_TIMEOUT - 0.5
    conn.disconnect()


def test_the_pin_never_reaches_a_log(stack):
    pin_hex = " ".join(f"{b:02X}" for b in PIN.encode())
    pcscd_log = stack.pcscd.log()
    # libccid logs the FEATURE_VERIFY_PIN_DIRECT request it turns into PC_to_RDR_Secure: the template
    assert "ControlCode: 0x42330006" in pcscd_log and "Control TxBuffer: " in pcscd_log
    for text, name in ((pcscd_log, "pcscd"), (stack.daemon.log(), "ccidgadget")):
        assert PIN not in text, name
        assert pin_hex not in text.upper() and pin_hex.replace(" ", "") not in text.upper().replace(" ", ""), name


def test_reload_switches_the_led_to_a_gpio_line(stack, devices):
    sim = devices["sim"]
    _config(devices, stack.config, led='led_gpio = "ccidgadget-sim:1"')
    out = stack.ctl("reload").stdout
    assert "presence sources restarted" in out, out
    values = set()

    def watch_then_confirm():
        stack.wait_for(0, "touch")
        for _ in range(12):
            values.add(sim.value(1))
            time.sleep(0.1)
        # in-process: the CLI's own confirm is test_control_confirm_while_the_other_slot_serves
        from ccidgadget.daemon.control import call
        call(stack.runtime / "control.sock", "confirm", slot=0)

    t = threading.Thread(target=watch_then_confirm, daemon=True)
    t.start()
    assert _sign_with_tool(stack, "9a", "m5").returncode == 0
    t.join(20)
    assert values == {0, 1}, values
    assert sim.value(1) == 0
