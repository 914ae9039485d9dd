# SPDX-License-Identifier: GPL-3.0-or-later
"""The control socket: protocol against a fake daemon, the CLI verbs, and every way of not reaching it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.ci import in_ci, skip_or_fail

from ccidgadget import cli
from ccidgadget.daemon.control import (EXIT_NO_DAEMON, EXIT_PERMISSION, ControlError, ControlServer, call)

REPO = Path(__file__).resolve().parents[2]


class FakeDaemon:
    """The ControlTarget interface, recording what it was asked."""

    def __init__(self) -> None:
        self.present = [True, False]
        self.reloads = 0

    def status(self) -> dict:
        return {"version": "0.1.0", "pid": 1, "state": "running", "config": "/etc/x.toml",
                "gadget": "/sys/kernel/config/usb_gadget/ccidgadget", "udc": "dummy_udc.0", "bound": True,
                "usb_state": "enabled", "host_connected": True, "enumerations": 1,
                "identity": {"vid": "1209", "pid": "2702", "manufacturer": "m", "product": "p"},
                "functions": ["acm.0"], "uptime_s": 3725.0, "reloads": self.reloads,
                "slots": [{"slot": 0, "engine": "emulated", "type": "piv", "present": self.present[0], "apdus": 7,
                           "power_ons": 1, "errors": 0, "last_error": ""},
                          {"slot": 1, "engine": "passthru", "present": self.present[1], "apdus": 0,
                           "power_ons": 0, "errors": 1, "last_error": "CardMute: timeout",
                           "listen": "127.0.0.1:2001", "client": None}]}

    def _presence(self, slot, present):
        if slot == 1:
            raise ControlError("cannot insert the card of slot 1: it is a passthru slot; ...")
        if not 0 <= slot < 2:
            raise ControlError(f"no slot {slot}: this reader has slots 0..1")
        changed = self.present[slot] != present
        self.present[slot] = present
        return {"slot": slot, "present": present, "changed": changed}

    def insert(self, slot):
        return self._presence(slot, True)

    def remove(self, slot):
        return self._presence(slot, False)

    async def reload(self):
        await asyncio.sleep(0)
        self.reloads += 1
        return {"reenumerated": False, "changed": ["slot 0"], "slots_replaced": [0],
                "message": "slot(s) 0 replaced without re-enumerating"}


def serve(tmp_path, fn, *, group=None, target=None):
    """Run `fn(path, target)` in a thread while the server runs on an event loop."""
    target = target or FakeDaemon()
    path = tmp_path / "control.sock"

    async def main():
        server = ControlServer(target, path, group=group)
        await server.start()
        try:
            return await asyncio.to_thread(fn, path, target)
        finally:
            await server.stop()
    return asyncio.run(main())


def test_status_insert_remove_reload(tmp_path):
    def client(path, fake):
        st = call(path, "status")
        assert st["slots"][0]["apdus"] == 7
        assert call(path, "remove", slot=0) == {"slot": 0, "present": False, "changed": True}
        assert call(path, "remove", slot=0)["changed"] is False
        assert call(path, "insert", slot=0)["present"] is True
        assert call(path, "reload")["slots_replaced"] == [0]
        assert call(path, "ping")["version"]
        return fake.reloads
    assert serve(tmp_path, client) == 1


def test_errors_are_answers_not_disconnects(tmp_path):
    def client(path, fake):
        with pytest.raises(ControlError, match="passthru slot"):
            call(path, "insert", slot=1)
        with pytest.raises(ControlError, match="no slot 5: this reader has slots 0..1"):
            call(path, "remove", slot=5)
        with pytest.raises(ControlError, match="needs \"slot\": an integer"):
            call(path, "insert", slot="zero")
        with pytest.raises(ControlError, match="unknown verb 'explode'; allowed: status, insert"):
            call(path, "explode")
        # raw protocol: several requests on one connection, bad JSON answered
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b'not json\n\n{"verb": "ping"}\n[1]\n')
            f = s.makefile("rb")
            answers = [json.loads(f.readline()) for _ in range(3)]
        assert answers[0]["ok"] is False and "not JSON" in answers[0]["error"]
        assert answers[1]["ok"] is True
        assert answers[2] == {"ok": False, "error": "request must be a JSON object with a \"verb\""}
    serve(tmp_path, client)


def test_internal_error_is_reported_and_server_survives(tmp_path):
    class Broken(FakeDaemon):
        def status(self):
            raise RuntimeError("boom")

    def client(path, fake):
        with pytest.raises(ControlError, match="internal error: RuntimeError: boom"):
            call(path, "status")
        assert call(path, "ping")
    serve(tmp_path, client, target=Broken())


def test_socket_mode_root_only_and_group(tmp_path):
    def mode(path, fake):
        st = path.stat()
        return stat.S_IMODE(st.st_mode), st.st_gid, stat.S_ISSOCK(st.st_mode)
    assert serve(tmp_path, mode) == (0o600, os.getegid(), True)
    import grp
    group = grp.getgrgid(os.getegid()).gr_name
    assert serve(tmp_path, mode, group=group)[:2] == (0o660, os.getegid())


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                                   # a crash leaves the file, nobody listens
    assert serve(tmp_path, lambda p, f: call(p, "ping")["version"])

    async def two():
        first = ControlServer(FakeDaemon(), path)
        await first.start()
        try:
            with pytest.raises(ControlError, match="another ccidgadget is running"):
                await ControlServer(FakeDaemon(), path).start()
        finally:
            await first.stop()
    asyncio.run(two())


def test_no_daemon(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with pytest.raises(ControlError) as e:
        call(path, "status")
    assert str(e.value) == (f"no daemon: {path} does not exist; is ccidgadget running? "
                            f"systemctl status ccidgadget")
    assert e.value.exit_status == EXIT_NO_DAEMON
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    with pytest.raises(ControlError, match="nothing listens on .*left over from a crash"):
        call(path, "status")
    # through the CLI
    path.unlink()
    assert cli.main(["status", "--socket", str(path)]) == EXIT_NO_DAEMON
    assert "no daemon: " in capsys.readouterr().err


def test_runtime_dir_from_the_config(tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[daemon]\nruntime_dir = "{tmp_path}/rt"\n')
    assert cli.main(["reload", "--config", str(conf)]) == EXIT_NO_DAEMON
    assert f"{tmp_path}/rt/control.sock does not exist" in capsys.readouterr().err


def test_cli_verbs(tmp_path, capsys):
    def client(path, fake):
        out = []
        for argv in (["status"], ["status", "--json"], ["remove", "0"], ["insert", "0"], ["insert", "0"],
                     ["reload"], ["insert", "1"]):
            rc = cli.main([*argv, "--socket", str(path)])
            cap = capsys.readouterr()
            out.append((rc, cap.out, cap.err))
        return out
    out = serve(tmp_path, client)
    human = out[0][1]
    assert out[0][0] == 0
    assert "USB      enabled, bound to dummy_udc.0; host connected (1 enumeration(s))" in human
    assert "slot 0   emulated piv  card present 7 APDU(s)" in human
    assert "slot 1   passthru      empty" in human and "last error: CardMute: timeout" in human
    assert "up 1h02m" in human and "also     acm.0" in human
    assert json.loads(out[1][1])["slots"][0]["engine"] == "emulated"
    assert out[2][:2] == (0, "slot 0: empty\n")
    assert out[3][:2] == (0, "slot 0: card present\n")
    assert out[4][:2] == (0, "slot 0: card present (it already was)\n")
    assert out[5][:2] == (0, "slot(s) 0 replaced without re-enumerating\n")
    assert out[6][0] == 1 and "passthru slot" in out[6][2]


def _as_nobody(path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    code = ("import sys; from ccidgadget.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run(["/usr/bin/python3", "-c", code, *argv, "--socket", str(path)],
                          user=65534, group=65534, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd="/")


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3") and not in_ci(),
                    reason="needs /usr/bin/python3 for an unprivileged client (outside CI)")
def test_permission_denied_is_explained():
    """A caller outside the control group gets a message naming the group and the fix."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to create a socket another user cannot use")
    if not os.access(REPO, os.R_OK | os.X_OK) or (os.stat(REPO).st_mode & 0o005) != 0o005:
        skip_or_fail(f"{REPO} is not readable by other users")
    d = Path(tempfile.mkdtemp(prefix="ccidgadget-ctl-"))
    try:
        d.chmod(0o755)

        def client(path, fake):
            return _as_nobody(path, ["status"])
        r = serve(d, client)
        assert r.returncode == EXIT_PERMISSION, r.stderr
        assert "permission denied: " in r.stderr and "root only" in r.stderr and "sudo" in r.stderr
        r = serve(d, client, group="root")
        assert r.returncode == EXIT_PERMISSION, r.stderr
        # a member of the control group gets in
        r = serve(d, client, group="nogroup")
        assert r.returncode == 0, r.stderr
        assert "slot 0" in r.stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_permission_message_names_the_group(tmp_path, monkeypatch):
    path = tmp_path / "control.sock"
    path.write_text("")
    monkeypatch.setattr("ccidgadget.daemon.control._group_of", lambda p: "ccidgadget")

    def refuse(self, address):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(ControlError) as e:
        call(path, "status")
    assert "root and the members of group 'ccidgadget'" in str(e.value)
    assert "usermod -aG ccidgadget $USER" in str(e.value)
    assert e.value.exit_status == EXIT_PERMISSION
