# SPDX-License-Identifier: GPL-3.0-or-later
"""Configuration file parsing and validation: every kind of bad input has a precise message."""

from __future__ import annotations

import grp
import os
import re
from pathlib import Path

import pytest

from ccidgadget import cli
from ccidgadget.daemon import config
from ccidgadget import options
from ccidgadget.daemon.config import CLI_KEYS, ConfigError, apply_cli, load, parse
from ccidgadget.options import DaemonOptions, SlotSpec
from ccidgadget.usb.gadget import ExtraFunction

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "ccidgadget.toml.example"
OWN_GROUP = grp.getgrgid(os.getegid()).gr_name


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, source="test.toml")
    return str(info.value)


# -- good input -----------------------------------------------------------------------
def test_empty_file_is_the_defaults():
    cfg = parse("", source="x")
    assert cfg == DaemonOptions() and cfg.source == "x"
    assert cfg.slots == [SlotSpec()]
    assert cfg.control_socket_path == Path("/run/ccidgadget/control.sock")


def test_missing_default_file_is_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load() == DaemonOptions()


def test_full_file():
    cfg = parse(f"""
[gadget]
identity = "vmware"
pid = 0x0005
manufacturer = "ACME"
product = "Reader"
serial = "42"
udc = "dummy_udc.0"
name = "acme"
max_message_length = 4106

[daemon]
state_dir = "/srv/cards"
runtime_dir = "/run/acme"
log_level = "debug"
control_group = "{OWN_GROUP}"

[[slot]]
engine = "emulated"
type = "cac"
certs = ["a.p12", "b.p12", "c.p12"]
inserted = false

[[slot]]
engine = "passthru"
listen = "[::1]:2001"
allow = ["::1", "192.168.7.0/24"]
stay_attached = true

[[slot]]
engine = "vpcd"

[[slot]]
engine = "pcsc"
reader = "^Yubico"
exclusive = false

[[function]]
kind = "acm"

[[function]]
kind = "ncm"
name = "usb0"
attributes = {{ dev_addr = "02:00:00:00:00:01", qmult = 5 }}
""", source="full.toml")
    ident = cfg.usb_identity
    assert (ident.vid, ident.pid, ident.manufacturer, ident.product, ident.serial) == (0x0E0F, 5, "ACME", "Reader", "42")
    assert cfg.udc == "dummy_udc.0" and cfg.gadget_name == "acme" and cfg.max_message_length == 4106
    assert cfg.state_dir == Path("/srv/cards") and cfg.runtime_dir == Path("/run/acme")
    assert cfg.log_level == "debug" and cfg.control_group == OWN_GROUP
    assert [s.engine for s in cfg.slots] == ["emulated", "passthru", "vpcd", "pcsc"]
    assert cfg.slots[0].type == "cac" and cfg.slots[0].inserted is False and len(cfg.slots[0].certs) == 3
    assert cfg.slots[1].allow == ["::1", "192.168.7.0/24"] and cfg.slots[1].stay_attached
    assert cfg.slots[3].exclusive is False
    assert cfg.functions == [ExtraFunction("acm", "0", {}),
                             ExtraFunction("ncm", "usb0", {"dev_addr": "02:00:00:00:00:01", "qmult": "5"})]
    assert cfg.source == "full.toml"


@pytest.mark.parametrize("text,value", [('vid = 0x1d6b', 0x1D6B), ('vid = "1d6b"', 0x1D6B),
                                        ('vid = "0x1D6B"', 0x1D6B), ('vid = 7531', 7531)])
def test_vid_forms(text, value):
    assert parse(f"[gadget]\n{text}\n").vid == value


def test_example_file_is_valid_and_documents_every_key():
    text = EXAMPLE.read_text()
    parse(text, source=str(EXAMPLE))
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.M))
    every = (set(options.GADGET_KEYS) | set(options.DAEMON_KEYS) | set(options.all_slot_keys())
             | set(options.FUNCTION_KEYS))
    assert every <= documented, f"keys not in the example: {sorted(every - documented)}"


def test_every_cli_option_has_a_key_with_the_same_default():
    parser = cli.daemon_parser()
    options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    options -= {"--help", "--version", "--config"}
    assert options == set(CLI_KEYS), options ^ set(CLI_KEYS)
    # With nothing on the command line the result is the file's (the defaults' here).
    assert apply_cli(DaemonOptions(), cli._given(parser.parse_args([]))) == DaemonOptions()


# -- bad input: every message names the file, the key, what is wrong and what is allowed --------
@pytest.mark.parametrize("text,expected", [
    ("[gadget\nvid = 1", r"test\.toml: not valid TOML: .*line 1"),
    ('[gadget]\nvid = "xyz"', r"test\.toml: gadget\.vid: 'xyz' is not a 16-bit hexadecimal number; allowed:"),
    ("[gadget]\nvid = 0x12345", r"gadget\.vid: 0x12345 does not fit in 16 bits; allowed:"),
    ("[gadget]\npid = true", r"gadget\.pid: must be a number, not a boolean"),
    ("[gadget]\nvendor = 1", r"gadget\.vendor: unknown key; allowed in \[gadget\]: identity, vid, pid"),
    ("colour = 'red'", r"test\.toml: colour: unknown key; allowed in the top level: gadget, daemon, slot, function"),
    ('[gadget]\nidentity = "yubico"', r"gadget\.identity: 'yubico' is not allowed; allowed: gemalto, linux, usbarmory, vmware"),
    ("[gadget]\nproduct = 5", r"gadget\.product: must be a string, not an integer \(5\)"),
    ('[gadget]\nproduct = "%s"' % ("x" * 127), r"gadget\.product: is 127 characters long; allowed: at most 126"),
    ('[gadget]\nname = "../x"', r"gadget\.name: '\.\./x' is not allowed; allowed: letters, digits"),
    ("[gadget]\nmax_message_length = 10", r"gadget\.max_message_length: 10 is out of range; allowed: 271\.\.65554"),
    ('[gadget]\nmax_message_length = "big"', r"gadget\.max_message_length: must be an integer, not a string"),
    ('[daemon]\nstate_dir = "cards"', r"daemon\.state_dir: 'cards' is a relative path; allowed: an absolute path"),
    ('[daemon]\nlog_level = "loud"', r"daemon\.log_level: 'loud' is not allowed; allowed: debug, info, warning, error"),
    ('[daemon]\ncontrol_group = "no-such-group-xyz"', r"daemon\.control_group: no group named 'no-such-group-xyz'"),
    ('daemon = 3', r"daemon: must be a table \(\[daemon\]\), not an integer"),
    ("slot = []", r"slot: 0 \[\[slot\]\] tables; allowed: 1\.\.8"),
    ("[[slot]]\n" * 9, r"slot: 9 \[\[slot\]\] tables; allowed: 1\.\.8"),
    ("[slot]\nengine = 'vpcd'", r"slot: must be an array of tables \(\[\[slot\]\] sections\), not a table"),
    ('[[slot]]\nengine = "nfc"', r"slot\[0\]\.engine: 'nfc' is not allowed; allowed: emulated, passthru, vpcd, pcsc"),
    ('[[slot]]\ntype = "yubikey"', r"slot\[0\]\.type: 'yubikey' is not allowed; allowed: piv, cac, iso, openpgp"),
    ('[[slot]]\ntype = "cac"\ncerts = ["a", "b"]', r"slot\[0\]\.certs: a CAC card needs exactly 3 certificates .*got 2"),
    ('[[slot]]\ncerts = ["a", "b", "c"]', r"slot\[0\]\.certs: only a type = \"cac\" card takes certs"),
    ('[[slot]]\ntype = "cac"\ncerts = "a"', r"slot\[0\]\.certs: must be an array of strings"),
    ('[[slot]]\nlisten = "0.0.0.0:1"', r"slot\[0\]\.listen: not used by engine 'emulated'; allowed for emulated: engine, type"),
    ('[[slot]]\ncolour = 1', r"slot\[0\]\.colour: unknown key; allowed in \[\[slot\]\] with engine = 'emulated'"),
    ('[[slot]]\nengine = "passthru"\nlisten = "localhost"', r"slot\[0\]\.listen: listen address 'localhost' must be ADDR:PORT.*allowed:"),
    ('[[slot]]\nengine = "passthru"\nlisten = "1.2.3:2001"', r"slot\[0\]\.listen: .*'1\.2\.3' is not an IP address"),
    ('[[slot]]\nengine = "vpcd"\nlisten = "127.0.0.1:70000"', r"slot\[0\]\.listen: .*port must be 1\.\.65535"),
    ('[[slot]]\nengine = "vpcd"\nallow = ["10.0.0.0/33"]', r"slot\[0\]\.allow: '10\.0\.0\.0/33' is not an IP address or network"),
    ('[[slot]]\nengine = "passthru"\nstay_attached = "yes"', r"slot\[0\]\.stay_attached: must be true or false, not a string"),
    ('[[slot]]\nengine = "pcsc"', r"slot\[0\]\.reader: missing: a pcsc slot needs reader"),
    ('[[slot]]\nengine = "pcsc"\nreader = "(("', r"slot\[0\]\.reader: '\(\(' is not a regular expression"),
    ('[[slot]]\nname = "a/b"', r"slot\[0\]\.name: 'a/b' is not allowed; allowed: a directory name"),
    ('[[function]]\nkind = "hid"', r"function\[0\]\.kind: 'hid' is not allowed; allowed: acm, ncm, ecm, rndis"),
    ('[[function]]\nname = "x"', r"function\[0\]\.kind: missing; allowed: acm, ncm, ecm, rndis"),
    ('[[function]]\nkind = "acm"\n[[function]]\nkind = "acm"', r"function: two functions are acm\.0"),
    ('[[function]]\nkind = "ncm"\nattributes = { dev_addr = [1] }', r"function\[0\]\.attributes\.dev_addr: must be a string or an integer"),
    ('[[function]]\nkind = "ncm"\nmode = 1', r"function\[0\]\.mode: unknown key; allowed in \[\[function\]\]: kind, name, attributes"),
])
def test_bad_input(text, expected):
    message = problems(text)
    assert re.search(expected, message), message
    assert message.startswith("test.toml: ")


def test_all_problems_are_reported_at_once():
    message = problems('[gadget]\nvid = "x"\npid = "y"\n[daemon]\nlog_level = "loud"\n')
    assert len(message.splitlines()) == 3


def test_not_utf8():
    assert "not UTF-8" in str(pytest.raises(ConfigError, parse, b"\xff\xfe", source="b").value)


def test_explicit_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read the configuration: file does not exist"):
        load(tmp_path / "absent.toml")


# -- command line over the file -------------------------------------------------------------
def test_cli_overrides_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[gadget]\nidentity = "vmware"\nproduct = "From file"\n'
                    '[[slot]]\ntype = "iso"\n[[slot]]\nengine = "vpcd"\n')
    args = cli.daemon_parser().parse_args(["--config", str(path), "--product", "From CLI"])
    cfg = cli.load_config(args)
    assert cfg.product == "From CLI" and cfg.identity == "vmware" and len(cfg.slots) == 2
    # --card replaces the file's slots
    args = cli.daemon_parser().parse_args(["--config", str(path), "--card", "emulated", "--type", "piv"])
    assert [(s.engine, s.type) for s in cli.load_config(args).slots] == [("emulated", "piv")]
    # --identity replaces the file's identity and its vid/pid
    path.write_text('[gadget]\nidentity = "vmware"\nvid = 0x1234\n')
    args = cli.daemon_parser().parse_args(["--config", str(path), "--identity", "linux"])
    assert cli.load_config(args).usb_identity.vid == 0x1D6B


def test_cli_slot_rules_are_checked():
    args = cli.daemon_parser().parse_args(["--card", "emulated", "--type", "cac", "--cert", "a"])
    with pytest.raises(ConfigError, match=r"command line: slot 0 \(--card emulated\): --cert: a CAC card needs "
                                          r"exactly 3 certificates"):
        cli.load_config(args)
    args = cli.daemon_parser().parse_args(["--card", "emulated"] * 9)
    with pytest.raises(ConfigError, match=r"command line: --card: 9 slots; allowed: 1\.\.8"):
        cli.load_config(args)


# -- through main(): exit status 2 and the message on stderr, nothing started ------------------
def test_main_exits_2_with_the_message(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text('[gadget]\nvid = "nope"\n[[slot]]\nengine = "nfc"\n')

    def no_daemon(*a, **k):
        raise AssertionError("the daemon must not start with a bad configuration")
    monkeypatch.setattr("ccidgadget.daemon.app.Daemon.run", no_daemon)
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: gadget.vid: 'nope' is not a 16-bit hexadecimal number" in err
    assert f"{path}: slot[0].engine: 'nfc' is not allowed" in err
    assert "nothing was started" in err


def test_main_bad_toml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[[slot]\n")
    assert cli.main(["--config", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "file does not exist" in capsys.readouterr().err


def test_check_config_verb(tmp_path, capsys):
    path = tmp_path / "ok.toml"
    path.write_text('[[slot]]\ntype = "iso"\n[[function]]\nkind = "acm"\n')
    assert cli.main(["check-config", "--config", str(path)]) == 0
    assert "OK: 1209:2702, 1 slot(s): emulated iso; functions: acm.0" in capsys.readouterr().out
    path.write_text('[[slot]]\ntype = "nope"\n')
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert "slot[0].type" in capsys.readouterr().err


def test_bad_cli_value_is_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--vid", "zz"])
    assert e.value.code == 2
    assert "'zz' is not a hexadecimal number" in capsys.readouterr().err
