# SPDX-License-Identifier: GPL-3.0-or-later
"""The configuration file, /etc/ccidgadget/ccidgadget.toml, and its validation.

Layout (etc/ccidgadget.toml.example documents every key):

    [gadget]    identity, vid, pid, manufacturer, product, serial, udc, name, max_message_length
    [daemon]    state_dir, runtime_dir, log_level, control_group
    [[slot]]    engine and the engine's keys (the fields of SlotSpec), one table per slot, in slot order
    [[function]] kind = "acm" | "ncm" | "ecm" | "rndis", name, attributes: kernel functions sharing the gadget
    [presence] [[presence.button]] [pinpad]   touch and PIN entry on the board (presence/config.py)

Every command-line option of the daemon has a key here with the same default
(`CLI_KEYS` is the map, and a test holds the two together); an option given on
the command line wins over the file, and any `--card` on the command line
replaces all of the file's slots.

Validation collects every problem, each as ``FILE: KEY: what is wrong; allowed:
...``, and raises one `ConfigError`; the CLI prints it and exits with status 2.
Nothing here touches configfs: a configuration is known good before the gadget
is built.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ccid.config import DEFAULT_MAX_MESSAGE_LENGTH, MAX_MAX_MESSAGE_LENGTH, MIN_MAX_MESSAGE_LENGTH
from ..ccid.constants import MAX_SLOTS
from ..presence import config as board_config
from ..usb.gadget import DEFAULT_PRESET, KERNEL_FUNCTIONS, PRESETS, ExtraFunction, Identity
from .engines import EMULATED_TYPES, ENGINES, EngineError, SlotSpec, parse_listen

DEFAULT_PATH = Path("/etc/ccidgadget/ccidgadget.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: USB string descriptors hold at most 126 UTF-16 code units (bLength is one byte, USB 2.0 §9.6.7).
MAX_USB_STRING = 126
CONTROL_SOCKET_NAME = "control.sock"

_GADGET_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_CARD_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

GADGET_KEYS = ("identity", "vid", "pid", "manufacturer", "product", "serial", "udc", "name",
               "max_message_length")
DAEMON_KEYS = ("state_dir", "runtime_dir", "log_level", "control_group")
FUNCTION_KEYS = ("kind", "name", "attributes")
#: Keys of a [[slot]] table by engine ("engine" itself is allowed everywhere).
SLOT_KEYS: dict[str, tuple[str, ...]] = {
    "emulated": ("type", "name", "inserted", "certs", "db", "pin_file", "db_password_file"),
    "passthru": ("listen", "allow", "stay_attached"),
    "vpcd": ("listen", "allow"),
    "pcsc": ("reader", "exclusive"),
}
ALL_SLOT_KEYS = ("engine",) + tuple(dict.fromkeys(k for keys in SLOT_KEYS.values() for k in keys))

#: Command-line option -> configuration key.  Slot options map to [[slot]] keys
#: (`--removed` is `inserted = false`, `--shared` is `exclusive = false`).
CLI_KEYS: dict[str, str] = {
    "--card": "slot.engine", "--type": "slot.type", "--name": "slot.name", "--removed": "slot.inserted",
    "--cert": "slot.certs", "--db": "slot.db", "--pin-file": "slot.pin_file",
    "--db-password-file": "slot.db_password_file", "--listen": "slot.listen", "--allow": "slot.allow",
    "--stay-attached": "slot.stay_attached", "--reader": "slot.reader", "--shared": "slot.exclusive",
    "--udc": "gadget.udc", "--identity": "gadget.identity", "--vid": "gadget.vid", "--pid": "gadget.pid",
    "--manufacturer": "gadget.manufacturer", "--product": "gadget.product", "--serial": "gadget.serial",
    "--gadget-name": "gadget.name", "--max-message-length": "gadget.max_message_length",
    "--state-dir": "daemon.state_dir", "--runtime-dir": "daemon.runtime_dir", "--log-level": "daemon.log_level",
    "--control-group": "daemon.control_group",
}


class ConfigError(Exception):
    """The configuration is not usable; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Config:
    """Everything the daemon reads from the file (or the built-in defaults)."""

    identity: str = DEFAULT_PRESET
    vid: int | None = None
    pid: int | None = None
    manufacturer: str = "ccidgadget"
    product: str = "ccidgadget CCID reader"
    serial: str | None = None
    udc: str | None = None
    gadget_name: str = "ccidgadget"
    max_message_length: int | None = None
    state_dir: Path = Path("/var/lib/ccidgadget")
    runtime_dir: Path = Path("/run/ccidgadget")
    log_level: str = "info"
    control_group: str | None = None
    slots: list[SlotSpec] = field(default_factory=lambda: [SlotSpec()])
    functions: list[ExtraFunction] = field(default_factory=list)
    board: board_config.BoardConfig = field(default_factory=board_config.BoardConfig)
    #: Where this came from, for messages: a path or "built-in defaults".
    source: str = "built-in defaults"

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / CONTROL_SOCKET_NAME

    def usb_identity(self) -> Identity:
        vid, pid, _ = PRESETS[self.identity]
        return Identity(vid=self.vid if self.vid is not None else vid,
                        pid=self.pid if self.pid is not None else pid,
                        manufacturer=self.manufacturer, product=self.product, serial=self.serial)

    def to_options(self):
        from .app import DaemonOptions
        return DaemonOptions(slots=[dataclasses.replace(s, allow=list(s.allow), certs=list(s.certs))
                                    for s in self.slots],
                             identity=self.usb_identity(), udc=self.udc, gadget_name=self.gadget_name,
                             state_dir=self.state_dir, runtime_dir=self.runtime_dir,
                             max_message_length=self.max_message_length,
                             extra_functions=[dataclasses.replace(f, attributes=dict(f.attributes))
                                              for f in self.functions],
                             log_level=self.log_level, control_group=self.control_group, board=self.board)


# -- reading ----------------------------------------------------------------------
def load(path: Path | str | None = None) -> Config:
    """Read and validate a configuration file.

    `path` None means the default path, which may be absent (built-in
    defaults then); a path given explicitly must exist.
    """
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_PATH
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not explicit:
            return Config()
        raise ConfigError([f"{path}: cannot read the configuration: file does not exist"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the configuration: {e.strerror}"]) from None
    return parse(raw, source=str(path))


def parse(raw: bytes | str, *, source: str = "<config>") -> Config:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError([f"{source}: not UTF-8 text (byte {e.start}); a TOML file must be UTF-8"]) from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None
    except RecursionError:      # tomllib recurses per nested array/table: "a = [[[[..." x 1000
        raise ConfigError([f"{source}: not valid TOML: arrays or tables nested too deeply"]) from None
    return _Validator(source).config(data)


def peek_runtime_dir(path: Path | str | None = None) -> Path:
    """The runtime directory a configuration names, for the client verbs.

    Lenient on purpose: `ccidgadget reload` must find the daemon even when the
    file on disk has just been broken (the daemon then reports why).
    """
    try:
        data = tomllib.loads(Path(path or DEFAULT_PATH).read_text())
        value = data.get("daemon", {}).get("runtime_dir")
        if isinstance(value, str) and value.startswith("/"):
            return Path(value)
    except (OSError, ValueError, AttributeError):
        pass
    return Config.runtime_dir


# -- validation -------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def error(self, key: str, what: str) -> None:
        self.problems.append(f"{self.source}: {key}: {what}")

    def unknown_keys(self, where: str, table: dict, allowed, prefix: str) -> None:
        for key in table:
            if key not in allowed:
                self.error(f"{prefix}{key}", f"unknown key; allowed in {where}: {', '.join(allowed)}")

    # value checkers: return the value, or None after recording a problem
    def string(self, key: str, value: Any, *, choices=None, max_len: int | None = None,
               pattern: re.Pattern | None = None, pattern_text: str = "") -> str | None:
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {_type_name(value)} ({value!r})")
            return None
        if choices is not None and value not in choices:
            self.error(key, f"{value!r} is not allowed; allowed: {', '.join(choices)}")
            return None
        if not value and choices is None:
            self.error(key, "must not be empty")
            return None
        if max_len is not None and len(value) > max_len:
            self.error(key, f"is {len(value)} characters long; allowed: at most {max_len}")
            return None
        if pattern is not None and not pattern.match(value):
            self.error(key, f"{value!r} is not allowed; allowed: {pattern_text}")
            return None
        return value

    def boolean(self, key: str, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {_type_name(value)} ({value!r})")
            return None
        return value

    def integer(self, key: str, value: Any, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, not {_type_name(value)} ({value!r}); allowed: {lo}..{hi}")
            return None
        if not lo <= value <= hi:
            self.error(key, f"{value} is out of range; allowed: {lo}..{hi}")
            return None
        return value

    def usb_id(self, key: str, value: Any) -> int | None:
        allowed = "a 16-bit number: 0x1209 (TOML hex integer), or a string of 1-4 hex digits such as \"1209\""
        if isinstance(value, str):
            text = value[2:] if value.lower().startswith("0x") else value
            if not re.fullmatch(r"[0-9A-Fa-f]{1,4}", text):
                self.error(key, f"{value!r} is not a 16-bit hexadecimal number; allowed: {allowed}")
                return None
            return int(text, 16)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be a number, not {_type_name(value)} ({value!r}); allowed: {allowed}")
            return None
        if not 0 <= value <= 0xFFFF:
            self.error(key, f"{value:#x} does not fit in 16 bits; allowed: {allowed}")
            return None
        return value

    def abs_path(self, key: str, value: Any) -> Path | None:
        if self.string(key, value) is None:
            return None
        if not value.startswith("/"):
            self.error(key, f"{value!r} is a relative path; allowed: an absolute path such as /var/lib/ccidgadget")
            return None
        return Path(value)

    def string_list(self, key: str, value: Any) -> list[str] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"must be an array of strings, not {value!r}")
            return None
        return list(value)

    def table(self, key: str, value: Any) -> dict | None:
        if not isinstance(value, dict):
            self.error(key, f"must be a table ([{key}]), not {_type_name(value)}")
            return None
        return value

    def array_of_tables(self, key: str, value: Any) -> list[dict] | None:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error(key, f"must be an array of tables ([[{key}]] sections), not {_type_name(value)}")
            return None
        return value

    # -- sections -------------------------------------------------------------
    def config(self, data: dict) -> Config:
        cfg = Config(source=self.source)
        self.unknown_keys("the top level", data, ("gadget", "daemon", "slot", "function", "presence", "pinpad"), "")
        gadget = self.table("gadget", data.get("gadget", {}))
        if gadget is not None:
            self.gadget(cfg, gadget)
        daemon = self.table("daemon", data.get("daemon", {}))
        if daemon is not None:
            self.daemon(cfg, daemon)
        if "slot" in data:
            slots = self.array_of_tables("slot", data["slot"])
            if slots is not None:
                if not 1 <= len(slots) <= MAX_SLOTS:
                    self.error("slot", f"{len(slots)} [[slot]] tables; allowed: 1..{MAX_SLOTS} slots "
                                       f"(CCID bMaxSlotIndex), or none for one emulated PIV slot")
                cfg.slots = [self.slot(i, t) for i, t in enumerate(slots)]
        if "function" in data:
            functions = self.array_of_tables("function", data["function"])
            if functions is not None:
                cfg.functions = [f for f in (self.function(i, t) for i, t in enumerate(functions)) if f]
                seen = set()
                for f in cfg.functions:
                    if (f.kind, f.name) in seen:
                        self.error("function", f"two functions are {f.kind}.{f.name}; allowed: each kind and "
                                                f"name once (give the second a different name)")
                    seen.add((f.kind, f.name))
        cfg.board, problems = board_config.parse(data.get("presence"), data.get("pinpad"), source=self.source,
                                                 slot_count=len(cfg.slots))
        self.problems += problems
        if self.problems:
            raise ConfigError(self.problems)
        return cfg

    def gadget(self, cfg: Config, t: dict) -> None:
        self.unknown_keys("[gadget]", t, GADGET_KEYS, "gadget.")
        if "identity" in t:
            cfg.identity = self.string("gadget.identity", t["identity"], choices=sorted(PRESETS)) or cfg.identity
        for key in ("vid", "pid"):
            if key in t:
                setattr(cfg, key, self.usb_id(f"gadget.{key}", t[key]))
        for key in ("manufacturer", "product", "serial"):
            if key in t:
                value = self.string(f"gadget.{key}", t[key], max_len=MAX_USB_STRING)
                if value is not None:
                    setattr(cfg, key, value)
        if "udc" in t:
            cfg.udc = self.string("gadget.udc", t["udc"])
        if "name" in t:
            cfg.gadget_name = self.string("gadget.name", t["name"], pattern=_GADGET_NAME_RE,
                                          pattern_text="letters, digits, '_', '.', '-' (a configfs directory "
                                                       "name, at most 64 characters)") or cfg.gadget_name
        if "max_message_length" in t:
            cfg.max_message_length = self.integer("gadget.max_message_length", t["max_message_length"],
                                                  MIN_MAX_MESSAGE_LENGTH, MAX_MAX_MESSAGE_LENGTH)

    def daemon(self, cfg: Config, t: dict) -> None:
        self.unknown_keys("[daemon]", t, DAEMON_KEYS, "daemon.")
        for key in ("state_dir", "runtime_dir"):
            if key in t:
                value = self.abs_path(f"daemon.{key}", t[key])
                if value is not None:
                    setattr(cfg, key, value)
        if "log_level" in t:
            cfg.log_level = self.string("daemon.log_level", t["log_level"], choices=LOG_LEVELS) or cfg.log_level
        if "control_group" in t:
            cfg.control_group = self.group("daemon.control_group", t["control_group"])

    def group(self, key: str, value: Any) -> str | None:
        if self.string(key, value) is None:
            return None
        try:
            grp.getgrnam(value)
        except (KeyError, ValueError):      # ValueError: a NUL in the name (found by fuzzing)
            self.error(key, f"no group named {value!r} on this system; allowed: an existing group "
                            f"(create it with 'groupadd {value}') or no key for root only")
            return None
        return value

    def slot(self, index: int, t: dict) -> SlotSpec:
        prefix = f"slot[{index}]."
        spec = SlotSpec()
        engine = t.get("engine", "emulated")
        if self.string(prefix + "engine", engine, choices=ENGINES) is None:
            self.unknown_keys("[[slot]]", t, ALL_SLOT_KEYS, prefix)
            return spec
        spec.engine = engine
        allowed = ("engine",) + SLOT_KEYS[engine]
        for key in t:
            if key not in allowed:
                if key in ALL_SLOT_KEYS:
                    self.error(prefix + key, f"not used by engine {engine!r}; allowed for {engine}: "
                                             f"{', '.join(allowed)}")
                else:
                    self.error(prefix + key, f"unknown key; allowed in [[slot]] with engine = {engine!r}: "
                                             f"{', '.join(allowed)}")
        before = len(self.problems)
        if "type" in t:
            spec.type = self.string(prefix + "type", t["type"], choices=EMULATED_TYPES) or spec.type
        if "name" in t:
            spec.name = self.string(prefix + "name", t["name"], pattern=_CARD_NAME_RE,
                                    pattern_text="a directory name of letters, digits, '_', '.', '-'")
        for key in ("inserted", "stay_attached", "exclusive"):
            if key in t:
                value = self.boolean(prefix + key, t[key])
                if value is not None:
                    setattr(spec, key, value)
        if "certs" in t:
            spec.certs = self.string_list(prefix + "certs", t["certs"]) or []
        if "db" in t:
            spec.db = self.string(prefix + "db", t["db"])
        for key in ("pin_file", "db_password_file"):
            if key in t:
                setattr(spec, key, self.string(prefix + key, t[key]))
        if "listen" in t and self.string(prefix + "listen", t["listen"]) is not None:
            try:
                parse_listen(t["listen"])
                spec.listen = t["listen"]
            except EngineError as e:
                self.error(prefix + "listen", f"{e}; allowed: IPv4 or [IPv6] address and port 1..65535, "
                                              f"e.g. \"127.0.0.1:2001\" or \"[::1]:2001\"")
        if "allow" in t:
            items = self.string_list(prefix + "allow", t["allow"]) or []
            for item in items:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    self.error(prefix + "allow", f"{item!r} is not an IP address or network; allowed: "
                                                 f"addresses or networks such as \"192.168.7.0/24\", \"::1\"")
            spec.allow = items
        if "reader" in t and self.string(prefix + "reader", t["reader"]) is not None:
            try:
                re.compile(t["reader"])
                spec.reader = t["reader"]
            except (re.error, OverflowError, RecursionError) as e:     # "a{4294967296}": OverflowError
                self.error(prefix + "reader", f"{t['reader']!r} is not a regular expression: {e}")
        if len(self.problems) > before:
            return spec
        # Rules between keys.
        if engine == "emulated":
            if spec.type == "cac" and len(spec.certs) != 3:
                self.error(prefix + "certs", f"a CAC card needs exactly 3 certificates (the PKI applets ID, "
                                             f"signature, encryption); got {len(spec.certs)}")
            elif spec.type != "cac" and "certs" in t:
                self.error(prefix + "certs", f"only a type = \"cac\" card takes certs (this slot is "
                                             f"{spec.type!r}); PIV and ISO cards keep their keys in the state "
                                             f"directory")
            for key in ("db", "pin_file", "db_password_file"):
                if getattr(spec, key) is not None and spec.type != "cac":
                    self.error(prefix + key, f"only a type = \"cac\" card takes {key} (this slot is {spec.type!r})")
        if engine == "pcsc" and not spec.reader:
            self.error(prefix + "reader", "missing: a pcsc slot needs reader = \"REGEX\" naming the PC/SC "
                                          "reader to relay")
        try:
            spec.validate()
        except EngineError as e:        # anything SlotSpec knows that we did not check above
            if len(self.problems) == before:
                self.error(f"slot[{index}]", str(e))
        return spec

    def function(self, index: int, t: dict) -> ExtraFunction | None:
        prefix = f"function[{index}]."
        self.unknown_keys("[[function]]", t, FUNCTION_KEYS, prefix)
        if "kind" not in t:
            self.error(prefix + "kind", f"missing; allowed: {', '.join(KERNEL_FUNCTIONS)}")
            return None
        kind = self.string(prefix + "kind", t["kind"], choices=KERNEL_FUNCTIONS)
        name = "0"
        if "name" in t:
            name = self.string(prefix + "name", t["name"], pattern=_FUNCTION_NAME_RE,
                               pattern_text="letters, digits and '_' (the configfs instance name)")
        attributes: dict[str, str] = {}
        if "attributes" in t:
            table = self.table(prefix + "attributes", t["attributes"]) or {}
            for key, value in table.items():
                if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
                    self.error(f"{prefix}attributes.{key}", "not a configfs attribute name; allowed: lower-case "
                                                            "letters, digits, '_' (e.g. dev_addr, host_addr)")
                elif isinstance(value, bool) or not isinstance(value, (str, int)):
                    self.error(f"{prefix}attributes.{key}", f"must be a string or an integer, not "
                                                            f"{_type_name(value)}")
                else:
                    attributes[key] = str(value)
        if kind is None or name is None:
            return None
        return ExtraFunction(kind=kind, name=name, attributes=attributes)


# -- command line over configuration ----------------------------------------------
def apply_cli(cfg: Config, given: dict[str, Any]) -> Config:
    """Return `cfg` with the options given on the command line applied over it.

    `given` maps argparse destinations to values, for options actually given.
    `--card` replaces every slot of the file; `--identity` replaces the file's
    identity, vid and pid together (a preset names both ids).
    """
    cfg = dataclasses.replace(cfg)
    if "identity" in given:
        cfg.identity, cfg.vid, cfg.pid = given["identity"], None, None
    simple = {"vid": "vid", "pid": "pid", "manufacturer": "manufacturer", "product": "product",
              "serial": "serial", "udc": "udc", "gadget_name": "gadget_name",
              "max_message_length": "max_message_length", "state_dir": "state_dir",
              "runtime_dir": "runtime_dir", "log_level": "log_level", "control_group": "control_group"}
    for dest, attr in simple.items():
        if dest in given:
            setattr(cfg, attr, given[dest])
    if given.get("slots"):
        cfg.slots = list(given["slots"])
    problems = []
    if not 1 <= len(cfg.slots) <= MAX_SLOTS:
        problems.append(f"command line: {len(cfg.slots)} --card options; allowed: 1..{MAX_SLOTS} slots")
    for i, spec in enumerate(cfg.slots):
        try:
            spec.validate()
        except EngineError as e:
            problems.append(f"command line: slot {i} (--card {spec.engine}): {e}")
    if cfg.max_message_length is not None and not (
            MIN_MAX_MESSAGE_LENGTH <= cfg.max_message_length <= MAX_MAX_MESSAGE_LENGTH):
        problems.append(f"command line: --max-message-length {cfg.max_message_length}: allowed "
                        f"{MIN_MAX_MESSAGE_LENGTH}..{MAX_MAX_MESSAGE_LENGTH} "
                        f"(default {DEFAULT_MAX_MESSAGE_LENGTH})")
    if "control_group" in given and given["control_group"]:
        try:
            grp.getgrnam(given["control_group"])
        except KeyError:
            problems.append(f"command line: --control-group: no group named {given['control_group']!r}")
    if problems:
        raise ConfigError(problems)
    return cfg
