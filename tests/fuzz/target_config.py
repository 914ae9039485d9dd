# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzz target `config`: the TOML configuration loader (`ccidgadget.daemon.config.parse`).

Two input forms, chosen by the first byte:

- odd: the rest is the file's bytes as they are (arbitrary TOML text, or not
  TOML at all, or not UTF-8);
- even: the rest is a program that builds a TOML *document* from the keys the
  loader knows (and some it does not), with values of every TOML type and
  strings made of input bytes (read as Latin-1, so any byte is a character),
  which is written out as TOML text.  This reaches the validation code far
  more often than mutated text does.

The loader must return a `Config` or raise `ConfigError` (with at least one
problem line), nothing else; and a configuration it accepts must also pass
`apply_cli` with no options given (what the daemon does next).
"""

from __future__ import annotations

import json

from ccidgadget import options
from ccidgadget.daemon import config

from .harness import Finding, Input, Target, register

SECTIONS = {
    "gadget": options.GADGET_KEYS,
    "daemon": options.DAEMON_KEYS,
    "slot": options.all_slot_keys(),
    "function": options.FUNCTION_KEYS,
}
STRINGS = ["piv", "cac", "iso", "emulated", "passthru", "vpcd", "pcsc", "acm", "ncm", "ecm", "rndis", "debug",
           "info", "127.0.0.1:2001", "[::1]:35963", "0.0.0.0:2001", "localhost:1", "192.168.7.0/24", "::1",
           "/var/lib/ccidgadget", "/run/x", "relative", "generic", "yubikey", "1209", "0x1209", "Gemalto.*",
           "root", "sql:/etc/pki/nssdb", "dev_addr", "card-1", ""]


def toml_key(key: str) -> str:
    return json.dumps(key)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, str):
        return json.dumps(value)               # \uXXXX escapes are TOML basic-string escapes too
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


class Builder:
    def __init__(self, inp: Input) -> None:
        self.inp = inp

    def string(self) -> str:
        b = self.inp.byte()
        base = STRINGS[b % len(STRINGS)] if b & 0x80 else ""
        extra = self.inp.take(self.inp.byte() % 24).decode("latin-1") if b & 0x40 else ""
        cut = self.inp.byte() % (len(base) + 1) if b & 0x20 else len(base)
        return base[:cut] + extra

    def value(self, depth: int = 0):
        kind = self.inp.byte() % 9
        if kind <= 2:
            return self.string()
        if kind == 3:
            return self.inp.byte() & 1 == 1
        if kind == 4:
            n = int.from_bytes(self.inp.take(self.inp.byte() % 9), "big", signed=True)
            return n
        if kind == 5:
            return self.inp.u16()
        if kind == 6:
            return self.inp.u16() / 7.0
        if kind == 7 and depth < 3:
            return [self.value(depth + 1) for _ in range(self.inp.byte() % 4)]
        if kind == 8 and depth < 3:
            return {self.key(None): self.value(depth + 1) for _ in range(self.inp.byte() % 4)}
        return self.string()

    def key(self, known) -> str:
        b = self.inp.byte()
        if known and b & 0x80:
            return known[b % len(known)]
        return self.string() or "k"

    def table(self, known) -> dict:
        return {self.key(known): self.value() for _ in range(self.inp.byte() % 8)}

    def document(self) -> str:
        lines = []
        for _ in range(self.inp.byte() % 8):
            b = self.inp.byte()
            section = list(SECTIONS)[b % 4] if b & 0x80 else self.key(None)
            known = SECTIONS.get(section, ())
            table = self.table(known)
            if b & 0x40 and section == "slot" and self.inp.byte() & 1:
                table["engine"] = STRINGS[4 + self.inp.byte() % 4]
            if b & 0x20:          # as a value rather than a table
                lines.append(f"{toml_key(section)} = {toml_value(self.value())}")
                continue
            header = f"[[{toml_key(section)}]]" if section in ("slot", "function") or b & 0x10 else f"[{toml_key(section)}]"
            lines.append(header)
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"


def run(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        text: bytes | str = data[1:]
    else:
        text = Builder(Input(data[1:])).document()
    try:
        cfg = config.parse(text, source="fuzz.toml")
    except config.ConfigError as e:
        if not e.problems or not all(isinstance(p, str) and p for p in e.problems):
            raise Finding(f"ConfigError without problem lines: {e.problems!r}") from None
        return
    try:
        config.apply_cli(cfg, {})
        cfg.usb_identity
    except config.ConfigError as e:
        raise Finding(f"parse() accepted a configuration that apply_cli() refuses: {e}") from e


def seeds() -> dict[str, bytes]:
    example = (options.Path(__file__).resolve().parents[2] / "etc" / "ccidgadget.toml.example")
    out = {
        "text-minimal": b"\x01[gadget]\nidentity = \"generic\"\n[[slot]]\nengine = \"emulated\"\ntype = \"piv\"\n",
        "text-slots": b"\x01[[slot]]\nengine = \"passthru\"\nlisten = \"127.0.0.1:2001\"\nallow = [\"::1\"]\n"
                      b"[[slot]]\nengine = \"vpcd\"\nlisten = \"[::1]:35963\"\n[[slot]]\nengine = \"pcsc\"\n"
                      b"reader = \"Gemalto.*\"\nexclusive = false\n[[function]]\nkind = \"acm\"\n",
        "text-bad": b"\x01[gadget]\nvid = 0x12345\npid = \"xyz\"\n[daemon]\nstate_dir = \"rel\"\nlog_level = 3\n",
        "doc-slot": bytes([0x00, 3, 0xC2, 0x41, 0x01, 3, 0x83, 0, 0x80 | 11, 0, 0x84, 0, 0x80 | 15, 0]),
        "doc-gadget": bytes([0x00, 2, 0x80, 3, 0x80, 0, 0x80 | 19, 0x81, 5, 0x12, 0x34, 0x80, 1, 0x80 | 12]),
    }
    if example.exists():
        out["text-example"] = b"\x01" + example.read_bytes()
    return out


register(Target("config", lambda: run, seeds, max_len=4096, bounded_runs=4000))
