# SPDX-License-Identifier: GPL-3.0-or-later
"""The control socket: `<runtime_dir>/control.sock`, JSON lines over AF_UNIX stream.

Protocol (one request per line, one answer line per request, any number of
requests per connection, UTF-8 JSON objects, lines at most `MAX_LINE` bytes):

    -> {"verb": "status"}
    <- {"ok": true, "result": {...Daemon.status()...}}
    -> {"verb": "insert", "slot": 0}          simulate inserting the card (emulated engines)
    -> {"verb": "remove", "slot": 0}          simulate pulling the card out (emulated engines)
    -> {"verb": "reload"}                     re-read the configuration file and apply it
    -> {"verb": "confirm", "slot": 0}         a person confirms the touch slot 0 waits for
    -> {"verb": "deny", "slot": 0}            refuse it (6982), or cancel slot 0's PIN entry (bError EF)
    -> {"verb": "pin", "slot": 0, "current": "...", "new": "..."}   the PIN(s) slot 0's PIN pad entry
                                              waits for (or "cancel": true); never logged
    -> {"verb": "ping"}                       {"ok": true, "result": {"version": "..."}}
    <- {"ok": false, "error": "what went wrong, for a human"}

Access is the file's: the socket is created 0600 root:root, or 0660
root:<control_group> when the configuration names a group.  The peer's
credentials (SO_PEERCRED) are logged with every state-changing verb.

`VERBS` is the table of requests; the server calls a small interface on the
daemon (`ControlTarget`) through it, so tests drive it with a fake; the client (`call`) turns every way of not reaching the
daemon into a `ControlError` whose message says what to do.
"""

from __future__ import annotations

import asyncio
import grp
import inspect
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import __version__

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
#: Exit statuses of the client verbs.
EXIT_FAILED = 1          # the daemon answered with an error
EXIT_NO_DAEMON = 3       # like systemctl status: not running (or not reachable)
EXIT_PERMISSION = 4      # the caller may not use the socket


class ControlError(Exception):
    """A request failed; the message is for the person at the terminal."""

    def __init__(self, message: str, *, exit_status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class ControlTarget(Protocol):
    """What the control server needs from the daemon."""

    def status(self) -> dict: ...
    def insert(self, slot: int) -> dict: ...
    def remove(self, slot: int) -> dict: ...
    async def reload(self) -> dict: ...
    def confirm(self, slot: int, by: str) -> dict: ...
    def deny(self, slot: int, by: str) -> dict: ...
    def pin(self, slot: int, current: str | None, new: str | None, cancel: bool, by: str) -> dict: ...


@dataclass(frozen=True)
class Verb:
    """One request the socket answers."""

    name: str
    #: request keys it needs, each an integer (a slot number)
    int_args: tuple[str, ...]
    #: logged with the caller's credentials
    changes_state: bool
    #: (target, request, who) -> result, or an awaitable of it; `who` names the caller for the journal
    run: Callable[[ControlTarget, dict, str], Any]


def _pin(target: ControlTarget, request: dict, who: str) -> dict:
    pins = {k: request.get(k) for k in ("current", "new")}
    if any(v is not None and not isinstance(v, str) for v in pins.values()):
        raise ControlError('pin: "current" and "new" must be strings')
    cancel = request.get("cancel", False)
    if not isinstance(cancel, bool):
        raise ControlError('pin: "cancel" must be true or false')
    return target.pin(request["slot"], pins["current"], pins["new"], cancel, who)


VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("status", (), False, lambda target, request, who: target.status()),
    Verb("insert", ("slot",), True, lambda target, request, who: target.insert(request["slot"])),
    Verb("remove", ("slot",), True, lambda target, request, who: target.remove(request["slot"])),
    Verb("reload", (), True, lambda target, request, who: target.reload()),
    Verb("ping", (), False, lambda target, request, who: {"version": __version__, "pid": os.getpid()}),
    Verb("confirm", ("slot",), True, lambda target, request, who: target.confirm(request["slot"], who)),
    Verb("deny", ("slot",), True, lambda target, request, who: target.deny(request["slot"], who)),
    Verb("pin", ("slot",), True, _pin),              # the PINs themselves are never logged
)}


# -- server --------------------------------------------------------------------------
def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
        return f"pid {pid} uid {uid} gid {gid}"
    except (OSError, AttributeError):
        return "unknown peer"


class ControlServer:
    def __init__(self, target: ControlTarget, path: Path | str, *, group: str | None = None) -> None:
        self.target = target
        self.path = Path(path)
        self.group = group
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ControlError(f"another ccidgadget is running: {self.path} answers. Stop it first "
                                   f"(systemctl stop ccidgadget), or give this one another --runtime-dir")
            self.path.unlink()                          # left behind by a crash
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)                     # no window in which others could connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        self.apply_permissions(self.group)
        sock.listen(16)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        log.info("control socket %s (%s)", self.path, self._mode_text(), extra={"event": "control"})

    def apply_permissions(self, group: str | None) -> None:
        """0600 root-only, or 0660 with the group; also used when a reload changes the group."""
        self.group = group
        gid = grp.getgrnam(group).gr_gid if group else os.getegid()
        os.chown(self.path, os.geteuid(), gid)
        os.chmod(self.path, 0o660 if group else 0o600)

    def _mode_text(self) -> str:
        return f"0660 group {self.group}" if self.group else "0600 owner only"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                answer = await self.handle(line, peer)
                await self._send(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, answer: dict) -> None:
        writer.write(json.dumps(answer, default=str).encode() + b"\n")
        await writer.drain()

    async def handle(self, line: bytes, peer: str = "test") -> dict:
        """One request line in, one answer object out."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"request is not JSON: {e}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object with a \"verb\""}
        verb = VERBS.get(request.get("verb"))
        if verb is None:
            return {"ok": False, "error": f"unknown verb {request.get('verb')!r}; allowed: {', '.join(VERBS)}"}
        for arg in verb.int_args:
            value = request.get(arg)
            if isinstance(value, bool) or not isinstance(value, int):
                return {"ok": False, "error": f"{verb.name} needs \"{arg}\": an integer {arg} number"}
        if verb.changes_state:
            log.info("control: %s%s by %s", verb.name, "".join(f" {a} {request[a]}" for a in verb.int_args), peer,
                     extra={"event": f"control-{verb.name}"})
        try:
            result = verb.run(self.target, request, f"the control socket ({peer})")
            if inspect.isawaitable(result):
                result = await result
            return {"ok": True, "result": result}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:                           # a bug: answer, log, keep serving
            log.exception("control verb %s failed", verb.name)
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


# -- client --------------------------------------------------------------------------
NOT_RUNNING_HINT = "is ccidgadget running? systemctl status ccidgadget"


def _group_of(path: Path) -> str:
    try:
        gid = path.stat().st_gid
    except OSError:
        return "?"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def call(path: Path | str, verb: str, *, timeout: float = 60.0, **args: Any) -> Any:
    """Send one request; return its result or raise ControlError."""
    path = Path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no daemon: {path} does not exist; {NOT_RUNNING_HINT}",
                               exit_status=EXIT_NO_DAEMON) from None
        except PermissionError:
            group = _group_of(path)
            who = ("root only (set control_group in /etc/ccidgadget/ccidgadget.toml to share it)"
                   if group == "root" else f"root and the members of group {group!r}")
            raise ControlError(f"permission denied: {path} is open to {who}; run with sudo"
                               + ("" if group == "root" else f" or add yourself to {group!r}"
                                                             f" (usermod -aG {group} $USER, then log in again)"),
                               exit_status=EXIT_PERMISSION) from None
        except ConnectionRefusedError:
            raise ControlError(f"no daemon: nothing listens on {path} (left over from a crash?); "
                               f"{NOT_RUNNING_HINT}", exit_status=EXIT_NO_DAEMON) from None
        except OSError as e:
            raise ControlError(f"cannot reach the daemon at {path}: {e.strerror or e}",
                               exit_status=EXIT_NO_DAEMON) from None
        request = dict(args, verb=verb)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"the daemon did not answer {verb!r} within {timeout:.0f} s") from None
            if not chunk:
                raise ControlError(f"the daemon closed the connection without answering {verb!r}")
            buf += chunk
    finally:
        sock.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ControlError(f"the daemon sent something that is not JSON: {buf[:80]!r}") from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "the daemon reported an unspecified error")
    return answer.get("result")
