"""Command line: `ccidgadget [daemon options]` runs the reader; verbs manage cards and the daemon.

Slot options follow the `--card` they belong to, so a reader reads left to
right:  ccidgadget --card emulated --type piv --card passthru --listen 0.0.0.0:2001

The daemon reads /etc/ccidgadget/ccidgadget.toml (or --config FILE) first;
options given on the command line win, and any --card replaces the file's
slots.  Defaults are the options' (ccidgadget/options.py), so the parser
records only what was actually given, and both go through the same validator.

Verbs on the running daemon (control socket, daemon/control.py):
    ccidgadget status [--json]      ccidgadget insert SLOT     ccidgadget remove SLOT
    ccidgadget reload               ccidgadget check-config    ccidgadget cleanup
    ccidgadget confirm SLOT         ccidgadget deny SLOT       ccidgadget pin SLOT   (presence/cli.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _import_asyncio_without_tls() -> None:
    """asyncio as on a Python built without OpenSSL, when this process is the program (every entry point,
    `-m ccidgadget`, the console script and the package's launcher, comes through here first).

    Nothing here speaks TLS, and asyncio imports ssl only to offer it: libssl and libcrypto, 5 MiB resident
    and a sixth of an ISO card's start under TCG.  `import ssl` works as usual afterwards; only asyncio's
    own TLS support is off, in this process.
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None                      # type: ignore[assignment]   (import ssl: ImportError)
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


_import_asyncio_without_tls()
import asyncio  # noqa: E402

from . import __version__  # noqa: E402
from .engines import EngineError
from .options import (CARD_TYPES, DEFAULT_CARD_TYPE, DEFAULT_GADGET_NAME, DEFAULT_MANUFACTURER, DEFAULT_PRODUCT,
                      DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, ENGINES, LOG_LEVELS, Engine, SlotSpec)
from .usb.gadget import DEFAULT_PRESET, PRESETS, GadgetError

log = logging.getLogger("ccidgadget")

#: Verbs that are not the daemon itself.
VERBS = ("card", "vpcd-card", "vscard-card", "status", "insert", "remove", "reload", "check-config", "cleanup",
         "doctor", "confirm", "deny", "pin")

#: Exit status for a configuration or usage error (argparse uses it too).
EXIT_CONFIG = 2


class _NewSlot(argparse.Action):
    """`--card ENGINE` opens a slot; the slot options after it fill it in."""

    def __call__(self, parser, namespace, value, option_string=None):
        slots = getattr(namespace, "slots", None) or []
        slots.append(SlotSpec(engine=value))
        namespace.slots = slots


class _SlotOption(argparse.Action):
    def __init__(self, *args, slot_field: str, append: bool = False, **kw):
        self.slot_field = slot_field
        self.append_value = append
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, value, option_string=None):
        slots = getattr(namespace, "slots", None)
        if not slots:
            parser.error(f"{option_string} must follow the --card it applies to")
        spec = slots[-1]
        if self.append_value:
            getattr(spec, self.slot_field).append(value)
        else:
            setattr(spec, self.slot_field, value if self.const is None else self.const)
        spec.given = spec.given | {self.slot_field}


def _hex16(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hexadecimal number") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 16 bits")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own, with the terminal's width asked of os: argparse imports shutil for it on every
    parser built (and shutil brings bz2, lzma and two shared libraries into every daemon start)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:                      # as shutil.get_terminal_size, then argparse's margin
            try:
                width = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                width = 0
            width = (width or 80) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def daemon_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{name} = {vid:04x}:{pid:04x} ({why})" for name, (vid, pid, why) in PRESETS.items())
    p = argparse.ArgumentParser(
        prog="ccidgadget",
        description="Run a USB CCID smart-card reader with card(s) inside on this board's USB device port. "
                    "Settings come from the configuration file; options given here override it.",
        epilog="Other commands: 'ccidgadget status|insert|remove|reload|check-config|cleanup --help' "
               "(the running daemon, see docs/service.md), 'ccidgadget confirm|deny|pin SLOT' (touch and PIN "
               "entry on the board, docs/presence.md), 'ccidgadget card --help' (provision emulated cards), "
               "'ccidgadget vpcd-card --help' (serve an emulated card to a local pcscd through vsmartcard's vpcd), "
               "'ccidgadget vscard-card --help' (put a card into a QEMU guest's usb-ccid through "
               "ccid-card-passthru), 'ccidgadget doctor' (check the board's set-up, with the fix for each problem).",
        argument_default=argparse.SUPPRESS,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ccidgadget {__version__}")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="configuration file (default /etc/ccidgadget/ccidgadget.toml if it exists)")
    slot = p.add_argument_group("slots (one per --card, in order; the options after a --card apply to it)")
    slot.add_argument("--card", action=_NewSlot, metavar="ENGINE", choices=[e.value for e in Engine],
                      help=f"add a slot backed by ENGINE: {', '.join(e.value for e in Engine)} "
                           f"(default: one emulated slot)")
    slot.add_argument("--type", action=_SlotOption, slot_field="type", choices=list(CARD_TYPES),
                      help=f"emulated card type: {', '.join(CARD_TYPES)} (default {DEFAULT_CARD_TYPE})")
    slot.add_argument("--name", action=_SlotOption, slot_field="name",
                      help="emulated card's state directory name under STATE_DIR/cards (default slotN-TYPE)")
    slot.add_argument("--removed", action=_SlotOption, slot_field="inserted", nargs=0, const=False,
                      help="emulated card starts out of the slot")
    slot.add_argument("--cert", action=_SlotOption, slot_field="certs", append=True,
                      help="CAC: a certificate nickname (with --db) or a PEM/DER/PKCS#12 file; give it three times")
    slot.add_argument("--db", action=_SlotOption, slot_field="db", metavar="sql:DIR",
                      help="CAC: NSS database holding the three certificates and keys")
    slot.add_argument("--pin-file", action=_SlotOption, slot_field="pin_file", metavar="FILE",
                      help="CAC: file holding the card PIN (default 12345678, or the NSS password)")
    slot.add_argument("--db-password-file", action=_SlotOption, slot_field="db_password_file", metavar="FILE",
                      help="CAC: file holding the NSS database password when it is not the PIN")
    listen = " / ".join(f"{info.default_listen[0]}:{info.default_listen[1]}" for info in ENGINES.values()
                        if info.default_listen)
    slot.add_argument("--listen", action=_SlotOption, slot_field="listen", metavar="ADDR:PORT",
                      help=f"passthru/vpcd: address to listen on (default {listen})")
    slot.add_argument("--allow", action=_SlotOption, slot_field="allow", append=True, metavar="ADDR[/BITS]",
                      help="passthru/vpcd: accept clients only from these addresses (repeatable)")
    slot.add_argument("--stay-attached", action=_SlotOption, slot_field="stay_attached", nargs=0, const=True,
                      help="passthru: keep the reader on the bus with an empty slot while no client is connected")
    slot.add_argument("--reader", action=_SlotOption, slot_field="reader", metavar="REGEX",
                      help="pcsc: regular expression naming the local PC/SC reader to relay")
    slot.add_argument("--shared", action=_SlotOption, slot_field="exclusive", nargs=0, const=False,
                      help="pcsc: share the real card with other local applications (default exclusive)")
    usb = p.add_argument_group("USB gadget")
    usb.add_argument("--udc", help="USB device controller to bind (default: the only one in /sys/class/udc)")
    usb.add_argument("--identity", choices=sorted(PRESETS),
                     help=f"VID:PID preset (default {DEFAULT_PRESET}): {presets}")
    usb.add_argument("--vid", type=_hex16, help="USB vendor id in hex (overrides --identity)")
    usb.add_argument("--pid", type=_hex16, help="USB product id in hex (overrides --identity)")
    usb.add_argument("--manufacturer", help=f"manufacturer string (default {DEFAULT_MANUFACTURER})")
    usb.add_argument("--product", help=f"product string (default '{DEFAULT_PRODUCT}')")
    usb.add_argument("--serial", help="serial number string (default: stable per board, from the machine id)")
    usb.add_argument("--gadget-name", dest="gadget_name",
                     help=f"configfs gadget directory name (default {DEFAULT_GADGET_NAME})")
    usb.add_argument("--max-message-length", type=int,
                     help="dwMaxCCIDMessageLength, bytes including the 10-byte header")
    run = p.add_argument_group("daemon")
    run.add_argument("--state-dir", type=Path,
                     help=f"where emulated cards keep their state (default {DEFAULT_STATE_DIR})")
    run.add_argument("--runtime-dir", type=Path,
                     help=f"FunctionFS mount point and control socket (default {DEFAULT_RUNTIME_DIR})")
    run.add_argument("--log-level", choices=LOG_LEVELS,
                     help="log verbosity (default info); APDU contents are never logged")
    run.add_argument("--control-group", metavar="GROUP",
                     help="group allowed to use the control socket (default: root only)")
    return p


def setup_logging(level: str, engine_of=None) -> None:
    from .daemon.journal import setup_logging as _setup
    _setup(level, engine_of=engine_of)


def _given(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "config"}


def load_config(args: argparse.Namespace):
    """The configuration file with the command line applied over it (raises ConfigError)."""
    from .daemon import config
    return config.apply_cli(config.load(getattr(args, "config", None)), _given(args))


def _config_error(e) -> int:
    print(f"ccidgadget: configuration error (nothing was started):\n{e}", file=sys.stderr)
    return EXIT_CONFIG


def run_daemon(argv: list[str]) -> int:
    from .daemon.app import Daemon
    from .daemon.config import ConfigError
    from .daemon.notify import Notifier

    parser = daemon_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as e:
        return _config_error(e)
    except EngineError as e:
        parser.error(str(e))
    daemon = Daemon(cfg, notifier=Notifier(), loader=lambda: load_config(args))   # reload re-reads the same sources
    setup_logging(cfg.log_level, engine_of=daemon.engine_of)
    log.info("ccidgadget %s starting (configuration: %s)", __version__, cfg.source, extra={"event": "start"})
    from .cards.secmem import harden_process
    harden_process()            # no core dump of unlocked card keys (cards/secmem.py)
    try:
        return asyncio.run(daemon.run())
    except (GadgetError, EngineError) as e:
        log.error("%s", e, extra={"event": "failed"})
        return 1


# -- verbs on the running daemon -------------------------------------------------------
def _client_parser(verb: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"ccidgadget {verb}", description=description)
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="configuration file naming the runtime directory (default /etc/ccidgadget/ccidgadget.toml)")
    p.add_argument("--socket", type=Path, metavar="PATH",
                   help="control socket (default RUNTIME_DIR/control.sock, RUNTIME_DIR from the configuration, "
                        "/run/ccidgadget if none)")
    return p


def _socket_path(args) -> Path:
    from .daemon.config import peek_runtime_dir
    from .options import CONTROL_SOCKET_NAME
    if args.socket:
        return args.socket
    return peek_runtime_dir(args.config) / CONTROL_SOCKET_NAME


def format_status(st: dict) -> str:
    """`ccidgadget status` for a person."""
    up = int(st.get("uptime_s", 0))
    uptime = f"{up // 3600}h{up % 3600 // 60:02d}m" if up >= 3600 else f"{up // 60}m{up % 60:02d}s"
    ident = st.get("identity") or {}
    lines = [f"ccidgadget {st.get('version', '?')} (pid {st.get('pid', '?')}): {st.get('state', '?')}, "
             f"up {uptime}, configuration {st.get('config') or 'command line'}"]
    lines.append(f"  gadget   {st.get('gadget') or '-'} "
                 f"({ident.get('vid', '????')}:{ident.get('pid', '????')} {ident.get('product', '')!r})")
    usb = f"{st.get('usb_state')}, {'bound to ' + str(st.get('udc')) if st.get('bound') else 'not bound'}"
    host = "connected" if st.get("host_connected") else "not connected"
    lines.append(f"  USB      {usb}; host {host} ({st.get('enumerations', 0)} enumeration(s))")
    if st.get("functions"):
        lines.append(f"  also     {', '.join(st['functions'])}")
    for s in st.get("slots", []):
        engine = s.get("engine", "?") + (f" {s['type']}" if s.get("type") else "")
        card = "card present" if s.get("present") else "empty"
        extra = ""
        if s.get("listen"):
            extra += f", listening on {s['listen']}"
        if s.get("client"):
            extra += f", client {s['client']}"
        if s.get("reader"):
            extra += f", reader {s['reader']!r}"
        lines.append(f"  slot {s.get('slot')}   {engine:<13} {card:<12} {s.get('apdus', 0)} APDU(s), "
                     f"{s.get('power_ons', 0)} power-on(s), {s.get('errors', 0)} error(s){extra}")
        if s.get("last_error"):
            lines.append(f"           last error: {s['last_error']}")
        if s.get("waiting"):
            from .presence.cli import format_wait
            lines.append(f"           waiting: {format_wait(s['waiting'])}")
    return "\n".join(lines)


def run_client_verb(verb: str, argv: list[str]) -> int:
    from .daemon.control import ControlError, call

    descriptions = {
        "status": "Show the running daemon: gadget, USB state, host connection, every slot.",
        "insert": "Simulate inserting the card of an emulated slot.",
        "remove": "Simulate pulling the card out of an emulated slot.",
        "reload": "Re-read the configuration file and apply it. Slot changes apply in place; a changed "
                  "identity, UDC, function list or slot count re-enumerates the gadget. (Also: SIGHUP.)",
    }
    p = _client_parser(verb, descriptions[verb])
    if verb == "status":
        p.add_argument("--json", action="store_true", help="machine-readable output")
    if verb in ("insert", "remove"):
        p.add_argument("slot", type=int, metavar="SLOT", help="slot number, from 0 (as 'ccidgadget status' shows)")
    args = p.parse_args(argv)
    path = _socket_path(args)
    try:
        if verb == "status":
            result = call(path, "status")
            print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_status(result))
        elif verb in ("insert", "remove"):
            result = call(path, verb, slot=args.slot)
            state = "card present" if result["present"] else "empty"
            print(f"slot {result['slot']}: {state}" + ("" if result["changed"] else f" (it already was)"))
        else:
            result = call(path, "reload")
            print(result["message"])
    except ControlError as e:
        print(f"ccidgadget {verb}: {e}", file=sys.stderr)
        return e.exit_status
    return 0


def run_check_config(argv: list[str]) -> int:
    from .daemon import config

    p = argparse.ArgumentParser(prog="ccidgadget check-config",
                                description="Validate the configuration file; exit status 2 if it is not usable.")
    p.add_argument("--config", type=Path, metavar="FILE", help="default /etc/ccidgadget/ccidgadget.toml")
    args = p.parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        return _config_error(e)
    ident = cfg.usb_identity
    slots = ", ".join(f"{s.engine}" + (f" {s.type}" if s.engine == "emulated" else "") for s in cfg.slots)
    print(f"{cfg.source}: OK: {ident.vid:04x}:{ident.pid:04x}, {len(cfg.slots)} slot(s): {slots}"
          + (f"; functions: {', '.join(f.kind + '.' + f.name for f in cfg.functions)}" if cfg.functions else ""))
    return 0


def run_cleanup(argv: list[str]) -> int:
    """Remove the gadget a crashed daemon left behind (the unit's ExecStopPost)."""
    from .daemon import config
    from .daemon.control import _answers
    from .usb.gadget import CONFIGFS, ConfigfsGadget

    p = argparse.ArgumentParser(prog="ccidgadget cleanup",
                                description="Remove the configfs gadget and FunctionFS mount a stopped or crashed "
                                            "daemon left behind. Refuses while the daemon is running.")
    p.add_argument("--config", type=Path, metavar="FILE", help="default /etc/ccidgadget/ccidgadget.toml")
    args = p.parse_args(argv)
    setup_logging("info")
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        # The file may have been broken after the gadget was made: clean up by the defaults' names.
        log.warning("configuration not usable, cleaning up with default names: %s", e)
        cfg = config.DaemonOptions()
    sock = cfg.control_socket_path
    if sock.exists() and _answers(sock):
        print(f"ccidgadget cleanup: the daemon is running ({sock} answers); stop it first", file=sys.stderr)
        return 1
    if not (CONFIGFS / "usb_gadget").is_dir():
        return 0
    gadget = ConfigfsGadget(name=cfg.gadget_name, identity=cfg.usb_identity, runtime_dir=cfg.runtime_dir)
    try:
        gadget.cleanup_stale()
    except (GadgetError, OSError) as e:
        log.error("cleanup failed: %s", e)
        return 1
    try:
        sock.unlink()
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "card":
        from .cli_card import main_card
        return main_card(argv[1:])
    if argv and argv[0] == "vpcd-card":
        from .frontends.vpcd_client import main_vpcd_card
        return main_vpcd_card(argv[1:])
    if argv and argv[0] == "vscard-card":
        from .frontends.vscard_client import main_vscard_card
        return main_vscard_card(argv[1:])
    if argv and argv[0] in ("status", "insert", "remove", "reload"):
        return run_client_verb(argv[0], argv[1:])
    if argv and argv[0] in ("confirm", "deny", "pin"):
        from .presence.cli import main_board_verb
        return main_board_verb(argv[0], argv[1:], _client_parser, _socket_path)
    if argv and argv[0] == "check-config":
        return run_check_config(argv[1:])
    if argv and argv[0] == "cleanup":
        return run_cleanup(argv[1:])
    if argv and argv[0] == "doctor":
        from .doctor import main_doctor
        return main_doctor(argv[1:])
    return run_daemon(argv)
