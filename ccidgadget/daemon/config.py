# SPDX-License-Identifier: GPL-3.0-or-later
"""The configuration file, /etc/ccidgadget/ccidgadget.toml, and the command line applied over it.

Layout (etc/ccidgadget.toml.example documents every key):

    [gadget]    identity, vid, pid, manufacturer, product, serial, udc, name, max_message_length
    [daemon]    state_dir, runtime_dir, log_level, control_group
    [[slot]]    engine and the engine's keys (the fields of options.SlotSpec), one table per slot, in slot order
    [[function]] kind = "acm" | "ncm" | "ecm" | "rndis", name, attributes: kernel functions sharing the gadget
    [presence] [[presence.button]] [pinpad]   touch and PIN entry on the board (presence/config.py)
    [vault]     kdf_log2_n, kdf_r, kdf_p, device_secret, device_secret_path, tpm_tcti, migration_backup
                (emulated cards' keys at rest; validated by cards/vault.py `options_from_table`)

The result is an `options.DaemonOptions`, whose defaults are the built-in ones.  This module checks what
only a file can get wrong (unknown keys, value types, TOML itself); the rules on values (allowed names,
ranges, keys an engine does not use, CAC's three certificates...) are `options.option_problems()`, the
same code the command line goes through.  Every problem is reported, each as ``FILE: KEY: what is wrong;
allowed: ...``, in one `ConfigError`; the CLI prints it and exits with status 2.  Nothing here touches
configfs: a configuration is known good before the gadget is built.

An option given on the command line wins over the file; any `--card` replaces all of the file's slots.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..options import (CLI_KEYS, DAEMON_KEYS, DEFAULT_CONFIG_PATH, DEFAULT_RUNTIME_DIR, FUNCTION_KEYS, GADGET_KEYS,
                       OPTION_OF_KEY, DaemonOptions, Engine, Problem, SlotSpec, all_slot_keys, option_problems,
                       slot_keys)
from ..presence import config as board_config
from ..usb.gadget import ExtraFunction

__all__ = ["CLI_KEYS", "DEFAULT_CONFIG_PATH", "ConfigError", "DaemonOptions", "load", "parse", "apply_cli",
           "peek_runtime_dir"]


class ConfigError(Exception):
    """The configuration is not usable; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# -- reading ----------------------------------------------------------------------
def load(path: Path | str | None = None) -> DaemonOptions:
    """Read and validate a configuration file.

    `path` None means the default path, which may be absent (built-in
    defaults then); a path given explicitly must exist.
    """
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_CONFIG_PATH
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not explicit:
            return DaemonOptions()
        raise ConfigError([f"{path}: cannot read the configuration: file does not exist"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the configuration: {e.strerror}"]) from None
    return parse(raw, source=str(path))


def parse(raw: bytes | str, *, source: str = "<config>") -> DaemonOptions:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError([f"{source}: not UTF-8 text (byte {e.start}); a TOML file must be UTF-8"]) from None
    import tomllib                  # (and datetime: only where there is a file to read)
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None
    except RecursionError:      # tomllib recurses per nested array/table: "a = [[[[..." x 1000
        raise ConfigError([f"{source}: not valid TOML: arrays or tables nested too deeply"]) from None
    return _Reader(source).options(data)


def peek_runtime_dir(path: Path | str | None = None) -> Path:
    """The runtime directory a configuration names, for the client verbs.

    Lenient on purpose: `ccidgadget reload` must find the daemon even when the
    file on disk has just been broken (the daemon then reports why).
    """
    import tomllib
    try:
        data = tomllib.loads(Path(path or DEFAULT_CONFIG_PATH).read_text())
        value = data.get("daemon", {}).get("runtime_dir")
        if isinstance(value, str) and value.startswith("/"):
            return Path(value)
    except (OSError, ValueError, AttributeError):
        pass
    return DEFAULT_RUNTIME_DIR


# -- the file's shape: keys and value types -----------------------------------------------
def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


#: DaemonOptions attribute of each [gadget]/[daemon] key, where the names differ
_ATTRIBUTE = {"gadget.name": "gadget_name"}


class _Reader:
    """Turns the TOML document into DaemonOptions, recording every problem of shape and type."""

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
    def string(self, key: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {_type_name(value)} ({value!r})")
            return None
        return value

    def boolean(self, key: str, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {_type_name(value)} ({value!r})")
            return None
        return value

    def integer(self, key: str, value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, not {_type_name(value)} ({value!r})")
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

    def path(self, key: str, value: Any) -> Path | None:
        return None if self.string(key, value) is None else Path(value)

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

    #: value checker of each key
    _GADGET = {"identity": string, "vid": usb_id, "pid": usb_id, "manufacturer": string, "product": string,
               "serial": string, "udc": string, "name": string, "max_message_length": integer}
    _DAEMON = {"state_dir": path, "runtime_dir": path, "log_level": string, "control_group": string}
    _SLOT = {"type": string, "name": string, "inserted": boolean, "listen": string, "allow": string_list,
             "stay_attached": boolean, "reader": string, "exclusive": boolean, "certs": string_list,
             "db": string, "pin_file": string, "db_password_file": string}

    # -- sections -------------------------------------------------------------
    def options(self, data: dict) -> DaemonOptions:
        opts = DaemonOptions(source=self.source)
        self.unknown_keys("the top level", data, ("gadget", "daemon", "slot", "function", "vault",
                                                   "presence", "pinpad"), "")
        for section, keys, checkers in (("gadget", GADGET_KEYS, self._GADGET), ("daemon", DAEMON_KEYS, self._DAEMON)):
            table = self.table(section, data.get(section, {}))
            if table is None:
                continue
            self.unknown_keys(f"[{section}]", table, keys, f"{section}.")
            for key, check in checkers.items():
                if key in table:
                    value = check(self, f"{section}.{key}", table[key])
                    if value is not None:
                        setattr(opts, _ATTRIBUTE.get(f"{section}.{key}", key), value)
        if "vault" in data:
            vault = self.table("vault", data["vault"])
            if vault is not None:
                from ..cards.vault import options_from_table     # cryptography: only for a [vault] table
                opts.vault = options_from_table(vault, self.error)
        if "slot" in data:
            slots = self.array_of_tables("slot", data["slot"])
            if slots is not None:
                opts.slots = [self.slot(i, t) for i, t in enumerate(slots)]
        if "function" in data:
            functions = self.array_of_tables("function", data["function"])
            if functions is not None:
                opts.functions = [f for f in (self.function(i, t) for i, t in enumerate(functions)) if f]
        opts.board, problems = board_config.parse(data.get("presence"), data.get("pinpad"), source=self.source,
                                                  slot_count=len(opts.slots))
        self.problems += problems
        # The rules on values: a value of the wrong type was not set, so it raises no second problem here.
        self.problems += [f"{self.source}: {p.key}: {p.message}" for p in _file_problems(opts)]
        if self.problems:
            raise ConfigError(self.problems)
        return opts

    def slot(self, index: int, t: dict) -> SlotSpec:
        prefix = f"slot[{index}]."
        spec = SlotSpec()
        if "engine" in t:
            if self.string(prefix + "engine", t["engine"]) is None:
                return spec
            spec = SlotSpec(engine=t["engine"])
        known = all_slot_keys()
        allowed = slot_keys(spec.engine) if isinstance(spec.engine, Engine) else known
        where = f"[[slot]] with engine = {str(spec.engine)!r}" if isinstance(spec.engine, Engine) else "[[slot]]"
        for key in t:
            if key not in known:
                self.error(prefix + key, f"unknown key; allowed in {where}: {', '.join(allowed)}")
        for key, check in self._SLOT.items():
            if key in t:
                value = check(self, prefix + key, t[key])
                if value is not None:
                    setattr(spec, key, value)
        spec.given = frozenset(k for k in t if k != "engine" and k in known)
        return spec

    def function(self, index: int, t: dict) -> ExtraFunction | None:
        prefix = f"function[{index}]."
        self.unknown_keys("[[function]]", t, FUNCTION_KEYS, prefix)
        if "kind" not in t:
            self.error(prefix + "kind", "missing; allowed: acm, ncm, ecm, rndis")
            return None
        kind = self.string(prefix + "kind", t["kind"])
        name = self.string(prefix + "name", t["name"]) if "name" in t else "0"
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


def _file_problems(opts: DaemonOptions) -> list[Problem]:
    """option_problems() in the file's words (a slot is a `[[slot]]` table)."""
    return [Problem(p.key, p.message.replace(" slots; allowed:", " [[slot]] tables; allowed:"))
            if p.key == "slot" else p for p in option_problems(opts)]


# -- command line over configuration ----------------------------------------------
def apply_cli(opts: DaemonOptions, given: dict[str, Any]) -> DaemonOptions:
    """Return `opts` with the options given on the command line applied over it.

    `given` maps argparse destinations (DaemonOptions attribute names, and
    "slots") to values, for options actually given.  `--card` replaces every
    slot of the file; `--identity` replaces the file's identity, vid and pid
    together (a preset names both ids).
    """
    opts = opts.copy()
    if "identity" in given:
        opts.identity, opts.vid, opts.pid = given["identity"], None, None
    for dest, value in given.items():
        if dest not in ("identity", "slots"):
            setattr(opts, dest, value)
    if given.get("slots"):
        opts.slots = list(given["slots"])
    problems = [_cli_problem(p, opts) for p in option_problems(opts)]
    if problems:
        raise ConfigError(problems)
    return opts


def _cli_problem(p: Problem, opts: DaemonOptions) -> str:
    m = re.fullmatch(r"slot\[(\d+)\]\.(\w+)", p.key)
    if m:
        index, key = int(m.group(1)), m.group(2)
        option = OPTION_OF_KEY.get(f"slot.{key}", key)
        return f"command line: slot {index} (--card {opts.slots[index].engine}): {option}: {p.message}"
    return f"command line: {OPTION_OF_KEY.get(p.key, p.key)}: {p.message}"

