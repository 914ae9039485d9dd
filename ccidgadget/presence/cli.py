# SPDX-License-Identifier: GPL-3.0-or-later
"""`ccidgadget confirm SLOT`, `deny SLOT` and `pin SLOT`: a person at the board answers a card's question.

`pin` asks the daemon what slot SLOT waits for (status), reads each PIN on
this terminal without echo (getpass reads /dev/tty), checks its length and,
for a new PIN entered twice, that both entries agree, and sends them over
the control socket (root or control_group only, like every verb).  Ctrl-C
cancels the entry: the host gets bError 0xEF (libccid: SW 6401).  `--stdin`
reads one line per entry from standard input instead, for scripts.
"""

from __future__ import annotations

import getpass
import sys
import time

PROMPTS = {"current": "current PIN", "new": "new PIN", "confirm": "new PIN again"}


def format_wait(wait: dict) -> str:
    """One line for `ccidgadget status`."""
    if wait.get("waits_for") == "touch":
        return f"a touch for {wait.get('what')} ({wait.get('remaining_s', 0):.0f} s left)"
    entries = ", ".join(PROMPTS.get(e, e) for e in wait.get("entries", []))
    return (f"a PIN ({wait.get('operation')}, INS {wait.get('ins')}, {wait.get('min')}..{wait.get('max')} "
            f"characters: {entries}; now {PROMPTS.get(wait.get('prompt'), wait.get('prompt'))}, "
            f"{wait.get('remaining_s', 0):.0f} s left)")


class _Aborted(Exception):
    pass


def _read(prompt: str, stdin: bool) -> str:
    if stdin:
        line = sys.stdin.readline()
        if not line:
            raise _Aborted("end of input")
        return line.rstrip("\r\n")
    try:
        return getpass.getpass(f"{prompt}: ")
    except EOFError:
        raise _Aborted("end of input") from None


def _wait_for_pin(call, path, slot: int, wait_s: float) -> dict:
    from ..daemon.control import ControlError
    deadline = time.monotonic() + wait_s
    while True:
        status = call(path, "status")
        slots = status.get("slots", [])
        if not 0 <= slot < len(slots):
            raise ControlError(f"no slot {slot}: this reader has {len(slots)} slot(s)")
        waiting = slots[slot].get("waiting")
        if waiting and waiting.get("waits_for") == "pin":
            return waiting
        if time.monotonic() >= deadline:
            raise ControlError(f"slot {slot} does not wait for a PIN" + (f" (waited {wait_s:.0f} s)" if wait_s else ""))
        time.sleep(0.2)


def _collect(wait: dict, stdin: bool) -> tuple[str | None, str | None]:
    entries = wait.get("entries", [])
    lo, hi = wait.get("min", 1), wait.get("max", 255)
    values: dict[str, str] = {}

    def ask(name: str) -> str:
        while True:
            value = _read(f"slot {wait['slot']}: {PROMPTS[name]} ({lo}..{hi} characters)", stdin)
            if lo <= len(value) <= hi:
                return value
            if stdin:
                raise _Aborted(f"the {PROMPTS[name]} must have {lo}..{hi} characters")
            print(f"{lo}..{hi} characters, please", file=sys.stderr)

    if "current" in entries:
        values["current"] = ask("current")
    if "new" in entries:
        while True:
            values["new"] = ask("new")
            if "confirm" not in entries or ask("confirm") == values["new"]:
                break
            if stdin:
                raise _Aborted("the two new PINs differ")
            print("the two new PINs differ; again", file=sys.stderr)
    return values.get("current"), values.get("new")


def main_board_verb(verb: str, argv: list[str], client_parser, socket_path) -> int:
    from ..daemon.control import ControlError, call

    descriptions = {
        "confirm": "Confirm the operation a card in SLOT waits for (as a touch of its button would).",
        "deny": "Refuse the touch SLOT waits for (the host gets 6982), or cancel its PIN entry (SW 6401).",
        "pin": "Type the PIN that SLOT's PIN pad entry waits for on this terminal (no echo); Ctrl-C cancels.",
    }
    p = client_parser(verb, descriptions[verb])
    p.add_argument("slot", type=int, metavar="SLOT", help="slot number, from 0 (as 'ccidgadget status' shows)")
    if verb == "pin":
        p.add_argument("--cancel", action="store_true", help="cancel the entry (the host gets SW 6401)")
        p.add_argument("--stdin", action="store_true", help="read each PIN as one line of standard input")
        p.add_argument("--wait", type=float, default=0.0, metavar="S",
                       help="wait up to S seconds for the slot to ask for a PIN (default: it must ask already)")
    args = p.parse_args(argv)
    path = socket_path(args)
    try:
        if verb in ("confirm", "deny"):
            result = call(path, verb, slot=args.slot)
            what = "confirmed" if verb == "confirm" else f"{result.get('denied')} refused"
            print(f"slot {result['slot']}: {what}")
            return 0
        if args.cancel:
            call(path, "pin", slot=args.slot, cancel=True)
            print(f"slot {args.slot}: PIN entry cancelled")
            return 0
        wait = _wait_for_pin(call, path, args.slot, args.wait)
        try:
            current, new = _collect(wait, args.stdin)
        except (_Aborted, KeyboardInterrupt) as e:
            call(path, "pin", slot=args.slot, cancel=True)
            reason = str(e) if isinstance(e, _Aborted) else "interrupted"
            print(f"\nccidgadget pin: {reason}; the PIN entry was cancelled", file=sys.stderr)
            return 1
        call(path, "pin", slot=args.slot, current=current, new=new)
        print(f"slot {args.slot}: PIN passed to the card")
    except ControlError as e:
        print(f"ccidgadget {verb}: {e}", file=sys.stderr)
        return e.exit_status
    return 0
