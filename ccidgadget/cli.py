"""Command line: `ccidgadget [daemon options]` runs the reader; verbs manage cards and the daemon.

Slot options follow the `--card` they belong to, so a reader reads left to
right:  ccidgadget --card emulated --type piv --card passthru --listen 0.0.0.0:2001
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import __version__
from .daemon.engines import DEFAULT_EMULATED_TYPE, EMULATED_TYPES, ENGINES, EngineError, SlotSpec
from .usb.gadget import DEFAULT_PRESET, PRESETS, GadgetError, Identity

log = logging.getLogger("ccidgadget")

#: Verbs that are not the daemon itself.
VERBS = ("card", "vpcd-card")


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


def _hex16(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hexadecimal number") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 16 bits")
    return value


def daemon_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{name} = {vid:04x}:{pid:04x} ({why})" for name, (vid, pid, why) in PRESETS.items())
    p = argparse.ArgumentParser(
        prog="ccidgadget",
        description="Run a USB CCID smart-card reader with card(s) inside on this board's USB device port.",
        epilog="Other commands: 'ccidgadget card --help' (provision emulated cards), "
               "'ccidgadget vpcd-card --help' (serve an emulated card to a local pcscd through vsmartcard's vpcd).",
    )
    p.add_argument("--version", action="version", version=f"ccidgadget {__version__}")
    slot = p.add_argument_group("slots (one per --card, in order; the options after a --card apply to it)")
    slot.add_argument("--card", action=_NewSlot, metavar="ENGINE", choices=ENGINES,
                      help=f"add a slot backed by ENGINE: {', '.join(ENGINES)} (default: one emulated slot)")
    slot.add_argument("--type", action=_SlotOption, slot_field="type", choices=EMULATED_TYPES,
                      help=f"emulated card type (default {DEFAULT_EMULATED_TYPE})")
    slot.add_argument("--name", action=_SlotOption, slot_field="name",
                      help="emulated card's state directory name under STATE_DIR/cards (default slotN-TYPE)")
    slot.add_argument("--removed", action=_SlotOption, slot_field="inserted", nargs=0, const=False,
                      help="emulated card starts out of the slot")
    slot.add_argument("--cert", action=_SlotOption, slot_field="certs", append=True,
                      help="CAC: a certificate nickname (with --db) or a PEM/DER/PKCS#12 file; give it three times")
    slot.add_argument("--db", action=_SlotOption, slot_field="db", metavar="sql:DIR",
                      help="CAC: NSS database holding the three certificates and keys")
    slot.add_argument("--listen", action=_SlotOption, slot_field="listen", metavar="ADDR:PORT",
                      help="passthru/vpcd: address to listen on (default 127.0.0.1:2001 / 127.0.0.1:35963)")
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
    usb.add_argument("--identity", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                     help=f"VID:PID preset (default {DEFAULT_PRESET}): {presets}")
    usb.add_argument("--vid", type=_hex16, help="USB vendor id in hex (overrides --identity)")
    usb.add_argument("--pid", type=_hex16, help="USB product id in hex (overrides --identity)")
    usb.add_argument("--manufacturer", default="ccidgadget", help="manufacturer string")
    usb.add_argument("--product", default="ccidgadget CCID reader", help="product string")
    usb.add_argument("--serial", help="serial number string (default: stable per board, from the machine id)")
    usb.add_argument("--gadget-name", default="ccidgadget", help="configfs gadget directory name")
    usb.add_argument("--max-message-length", type=int,
                     help="dwMaxCCIDMessageLength, bytes including the 10-byte header")
    run = p.add_argument_group("daemon")
    run.add_argument("--state-dir", type=Path, default=Path("/var/lib/ccidgadget"),
                     help="where emulated cards keep their state (default /var/lib/ccidgadget)")
    run.add_argument("--runtime-dir", type=Path, default=Path("/run/ccidgadget"),
                     help="FunctionFS mount point and control socket (default /run/ccidgadget)")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                     help="log verbosity (default info); APDU contents are never logged")
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def options_from_args(args) -> "DaemonOptions":
    from .daemon.app import DaemonOptions

    slots = args.slots or [SlotSpec()]
    for spec in slots:
        spec.validate()
    vid, pid, _ = PRESETS[args.identity]
    identity = Identity(vid=args.vid if args.vid is not None else vid,
                        pid=args.pid if args.pid is not None else pid,
                        manufacturer=args.manufacturer, product=args.product, serial=args.serial)
    return DaemonOptions(slots=slots, identity=identity, udc=args.udc, gadget_name=args.gadget_name,
                         state_dir=args.state_dir, runtime_dir=args.runtime_dir,
                         max_message_length=args.max_message_length)


def run_daemon(argv: list[str]) -> int:
    from .daemon.app import Daemon

    parser = daemon_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        options = options_from_args(args)
    except EngineError as e:
        parser.error(str(e))
    try:
        return asyncio.run(Daemon(options).run())
    except (GadgetError, EngineError) as e:
        log.error("%s", e)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "card":
        from .cards.provision import main_card
        return main_card(argv[1:])
    if argv and argv[0] == "vpcd-card":
        from .frontends.vpcd_client import main_vpcd_card
        return main_vpcd_card(argv[1:])
    return run_daemon(argv)
