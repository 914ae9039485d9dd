#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A pinentry for tests: answers gpg-agent's GETPIN from a rules file, never from a person.

gpg-agent runs it (``pinentry-program``) and speaks the Assuan pinentry protocol on stdin/stdout.
The agent's description (SETDESC) and prompt (SETPROMPT) say which PIN scdaemon wants ("Admin
PIN", "New PIN", "Repeat this Reset Code"...).  ``$PINENTRY_RULES`` names a JSON file with a list
of ``[substring, value]`` pairs, tried in order against "<desc> <prompt>" (case-insensitive);
the first match answers; no match cancels, as a person pressing Cancel would, and so does a
GETPIN after SETERROR (the agent asking again: a second identical answer would only loop).  Every request is
appended to ``$PINENTRY_RULES.log`` (descriptions only, never the values).
"""

import json
import os
import sys
import urllib.parse


def _unescape(text: str) -> str:
    return urllib.parse.unquote(text)


def _answer(desc: str, prompt: str):
    path = os.environ.get("PINENTRY_RULES", "")
    try:
        with open(path) as f:
            rules = json.load(f)
    except (OSError, ValueError):
        rules = []
    hay = f"{desc} {prompt}".lower()
    for pattern, value in rules:
        if pattern.lower() in hay:
            return pattern, value
    return None, None


def main() -> int:
    out = sys.stdout
    out.write("OK scripted pinentry ready\n")
    out.flush()
    desc = prompt = ""
    repeat = error = False
    log_path = os.environ.get("PINENTRY_RULES", "/dev/null") + ".log"
    for line in sys.stdin:
        line = line.rstrip("\n")
        cmd, _, arg = line.partition(" ")
        cmd = cmd.upper()
        if cmd == "SETDESC":
            desc = _unescape(arg)
        elif cmd == "SETPROMPT":
            prompt = _unescape(arg)
        elif cmd == "SETREPEAT":
            repeat = True
        elif cmd == "SETERROR":
            error = True
        elif cmd == "GETINFO":
            if arg == "pid":
                out.write(f"D {os.getpid()}\n")
            elif arg == "version":
                out.write("D 1.2.1\n")
            elif arg == "flavor":
                out.write("D scripted\n")
        elif cmd == "GETPIN":
            pattern, value = _answer(desc, prompt)
            if error:
                pattern, value = "(after SETERROR)", None
            with open(log_path, "a") as log:
                log.write(json.dumps({"desc": desc, "prompt": prompt, "rule": pattern}) + "\n")
            if value is None:
                out.write("ERR 83886179 Operation cancelled <Pinentry>\n")
                out.flush()
                desc = prompt = ""
                repeat = error = False
                continue
            if repeat:
                out.write("S PIN_REPEATED\n")
            out.write("D " + urllib.parse.quote(value, safe="") + "\n")
            desc = prompt = ""
            repeat = error = False
        elif cmd == "CONFIRM" or cmd == "MESSAGE":
            pass
        elif cmd == "BYE":
            out.write("OK closing connection\n")
            out.flush()
            return 0
        out.write("OK\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
