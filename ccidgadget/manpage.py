# SPDX-License-Identifier: GPL-3.0-or-later
"""ccidgadget(8), generated from the argparse definitions of the daemon and of every verb (so it never drifts).

``python3 -m ccidgadget.manpage > ccidgadget.8`` (the Debian package does it at build time).

Each verb builds its own parser inside its entry point (cli.py, cli_card.py, doctor.py,
frontends/vpcd_client.py); rather than asking every module to export its parser, the entry point
is called with ``ArgumentParser.parse_args`` replaced by a function that hands the parser back
before anything runs. Whatever a verb's options are, the page shows them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from unittest import mock

from . import __version__, cli

SUMMARY = "a USB CCID smart-card reader, with the card inside, on a Linux board's USB device port"

DESCRIPTION = """\
ccidgadget turns a Linux board with a USB device port (a Raspberry Pi Zero, 4 or 5 in OTG mode, any
board with a UDC, or dummy_hcd on a PC) into a USB smart-card reader with a card inside. The host needs
nothing but its stock CCID driver (libccid and pcscd on Linux; the inbox drivers on Windows and macOS):
it sees a reader, and OpenSC, GnuPG, ssh, browsers and login managers use the card.

Without a verb, ccidgadget is the daemon: it builds a configfs gadget, serves the CCID class through
FunctionFS and routes each slot to a card engine: an emulated card (PIV, CAC, ISO 7816-4; keys in the
state directory) or a passthrough card (a VSCard client such as QEMU's vscclient, vsmartcard's vicc, or a
real card in a PC/SC reader on the board). It runs as root, normally as the systemd service
ccidgadget.service. Settings come from the configuration file; options given on the command line
override it, and any --card replaces all of the file's slots."""

FILES = [
    ("/etc/ccidgadget/ccidgadget.toml", "the configuration (every key is described in ccidgadget.toml.example)"),
    ("/var/lib/ccidgadget", "the emulated cards' state: keys, certificates, PINs (0700 root). Never removed by "
                            "the package: delete it yourself to destroy the keys"),
    ("/run/ccidgadget/control.sock", "the control socket of the running daemon (status, insert, remove, reload)"),
    ("/usr/lib/modules-load.d/ccidgadget.conf", "libcomposite, loaded at boot (make install writes "
                                                 "/etc/modules-load.d/ccidgadget.conf instead). On a Raspberry "
                                                 "Pi, udev loads dwc2 once config.txt has dtoverlay=dwc2"),
    ("ccidgadget.service", "the systemd unit: systemctl enable --now ccidgadget; journalctl -u ccidgadget"),
]

EXIT_STATUS = [
    ("0", "success"),
    ("1", "the daemon could not start or refused the request (the message says why); doctor: a check failed"),
    ("2", "a usage or configuration error; the daemon exits with 2 before touching configfs"),
    ("3", "client verbs: no daemon is running"),
    ("4", "client verbs: permission denied on the control socket"),
]

SEE_ALSO = "pcscd(8), opensc-tool(1), pkcs15-tool(1), pkcs11-tool(1), yubico-piv-tool(1), systemctl(1), journalctl(1)"


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _raise_parser(self, args=None, namespace=None):
    raise _Captured(self)


def capture_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser `ccidgadget ARGV...` would parse its arguments with (nothing else runs)."""
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _raise_parser), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", _raise_parser):
        try:
            cli.main(argv)
        except _Captured as c:
            return c.parser
    raise RuntimeError(f"ccidgadget {' '.join(argv)} did not parse its arguments with argparse")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def verb_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(title, parser) of the daemon and every verb, sub-commands expanded ('card create', ...)."""
    out = [("ccidgadget", capture_parser([]))]
    for verb in cli.VERBS:
        parser = capture_parser([verb])
        subs = _subcommands(parser)
        if verb in subs:                # `card` parses ["card", ...] with a parser one level up
            parser = subs[verb]
            subs = _subcommands(parser)
        out.append((f"ccidgadget {verb}", parser))
        out += [(f"ccidgadget {verb} {name}", sub) for name, sub in subs.items()]
    return out


def roff(text: str) -> str:
    """Escape text for a man page line: backslashes, hyphens of options, leading dots and quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def _actions(parser: argparse.ArgumentParser):
    """(group title, [actions]) in the parser's order, without the sub-command chooser."""
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, argparse._SubParsersAction) and a.help is not argparse.SUPPRESS]
        if actions:
            yield group.title, actions


def _parser_section(title: str, parser: argparse.ArgumentParser, heading: str) -> list[str]:
    fmt = parser._get_formatter()
    lines = [f"{heading} {roff(title)}"]
    usage = fmt._format_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    lines += [".PP", roff(" ".join(usage.split()))]
    if parser.description:
        lines += [".PP", roff(parser.description)]
    for group_title, actions in _actions(parser):
        if group_title not in ("options", "optional arguments", "positional arguments"):
            lines += [".PP", f".I {roff(group_title)}"]
        for action in actions:
            lines += [".TP", f".B {roff(fmt._format_action_invocation(action))}"]
            help_text = fmt._expand_help(action) if action.help else ""
            lines.append(roff(help_text.strip()) if help_text.strip() else "\\&")
    if parser.epilog:
        lines += [".PP", roff(parser.epilog)]
    return lines


def render(date: datetime.date | None = None) -> str:
    if date is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")      # reproducible builds: dpkg sets it
        date = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).date() if epoch
                else datetime.date.today())
    parsers = verb_parsers()
    lines = [
        f'.TH CCIDGADGET 8 "{date.isoformat()}" "ccidgadget {__version__}" "System Administration"',
        ".\\\" generated by python3 -m ccidgadget.manpage from the argparse definitions; do not edit",
        ".SH NAME", f"ccidgadget \\- {roff(SUMMARY)}",
        ".SH SYNOPSIS",
        ".B ccidgadget", "[\\fIoptions\\fR]", ".br",
    ]
    for title, _ in parsers[1:]:
        verb = title.removeprefix("ccidgadget ")
        lines += [".B ccidgadget", f"\\fB{roff(verb)}\\fR [\\fIoptions\\fR]", ".br"]
    lines += [".SH DESCRIPTION"]
    for para in DESCRIPTION.split("\n\n"):
        lines += [".PP", roff(" ".join(para.split()))]
    lines += [".SH OPTIONS"] + _parser_section("ccidgadget", parsers[0][1], ".SS")[1:]
    lines += [".SH COMMANDS"]
    for title, parser in parsers[1:]:
        lines += _parser_section(title, parser, ".SS")
    lines += [".SH FILES"]
    for path, what in FILES:
        lines += [".TP", f".I {roff(path)}", roff(what)]
    lines += [".SH EXIT STATUS"]
    for code, what in EXIT_STATUS:
        lines += [".TP", f".B {code}", roff(what)]
    lines += [".SH SEE ALSO", roff(SEE_ALSO),
              ".PP", roff("/usr/share/doc/ccidgadget/ (service.md: installation, Raspberry Pi set-up, every "
                          "configuration key, the control protocol, the unit's privileges)")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
