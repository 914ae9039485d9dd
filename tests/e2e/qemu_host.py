# SPDX-License-Identifier: GPL-3.0-or-later
"""The host side of tests/e2e/test_qemu_vscard.py: QEMU's usb-ccid devices, and the processes that
feed them from this machine.

tests/test_vm.py boots that module's guest with ``qemu_args(out)`` added to QEMU's command line and
runs ``host_command(out)`` on this machine while the guest runs (``testbed.run(qemu_args=...,
host_command=...)``).  The guest gets, on a USB hub behind a UHCI controller, one ``usb-ccid`` +
``ccid-card-passthru`` per entry of ``LINKS``, each on its own loopback chardev
(``-chardev socket,server=on,wait=off`` as QEMU's ccid.rst writes it), and a second serial port
(ttyS1) whose other end is a unix socket of this agent: the guest test asks for what must happen on
the host through it (``HostChannel``: JSON lines, one answer per request).

The agent (``python tests/e2e/qemu_host.py OUT``) prepares the cards natively (a PIV card with an
RSA-2048 key in 9A and a P-256 key in 9C, ccid.rst's NSS database for the CAC card), starts a pcscd
with vsmartcard's vpcd on this machine and ``ccidgadget vpcd-card --type piv`` in its "Virtual PCD
00 00" (the real reader relayed by ``--card pcsc``), and then runs what the guest asks:

    {"op": "start", "proc": "cards"|"relay"}           start the vscard-card process
    {"op": "signal", "proc": P, "sig": "TERM"|"KILL"}  and wait for it to exit
    {"op": "vscard", "link": L, "verb": "insert"|"remove"|"status"}   `vscard-card --connect ... --VERB`
    {"op": "log", "proc": P}                           its log so far
    {"op": "info"}                                     links, ports, PINs, material paths

Nothing is started before the guest asks, so the guest first sees QEMU's readers with no client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: (name, vscard-card options) of each usb-ccid, in hub port order (port 1.1, 1.2, ...).
LINKS = (
    ("piv", ["--type", "piv"]),
    ("cac", ["--type", "cac"]),           # + the NSS database options, added by the agent
    ("iso", ["--type", "iso"]),            # responses cut to usb-ccid's 374 bytes (the default)
    ("raw", ["--type", "iso", "--max-response", "0"]),   # nothing cut: QEMU's own limit shows
    ("relay", ["--card", "pcsc", "--reader", "Virtual PCD 00 00"]),
)
#: the links served by the "cards" process (several --connect in one process); "relay" has its own
CARDS = ("piv", "cac", "iso", "raw")
PIV_PIN = "123456"
CAC_NICKNAMES = ("id-cert", "signing-cert", "encryption-cert")
CONFIG = "qemu-host.json"
GUEST_TTY = "/dev/ttyS1"


# --------------------------------------------------------------------------- QEMU's side


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _control_socket(out: Path) -> Path:
    path = out / "hostctl.sock"
    if len(str(path)) > 100:                   # sun_path holds 108 bytes
        path = Path(tempfile.mkdtemp(prefix="qh-")) / "ctl.sock"
    return path


def qemu_args(out: Path) -> list[str]:
    """The devices of the guest; also records the chosen ports in OUT/qemu-host.json for the agent."""
    out = Path(out)
    ports = dict(zip((name for name, _ in LINKS), free_ports(len(LINKS))))
    control = _control_socket(out)
    (out / CONFIG).write_text(json.dumps({"ports": ports, "control": str(control)}, indent=1))
    args = ["-device", "piix3-usb-uhci,id=uhci", "-device", "usb-hub,bus=uhci.0,port=1"]
    for i, (name, _) in enumerate(LINKS, 1):
        args += ["-chardev", f"socket,id=vsc-{name},host=127.0.0.1,port={ports[name]},server=on,wait=off",
                 "-device", f"usb-ccid,bus=uhci.0,port=1.{i},id=ccid-{name}",
                 "-device", f"ccid-card-passthru,chardev=vsc-{name},bus=ccid-{name}.0"]
    args += ["-chardev", f"socket,id=hostctl,path={control},server=on,wait=off", "-serial", "chardev:hostctl"]
    return args


def host_command(out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), str(out)]


# --------------------------------------------------------------------------- the guest's side


class HostChannel:
    """The guest's end of ttyS1: ``call(op, **args) -> dict`` (raises AssertionError on failure)."""

    def __init__(self, tty: str = GUEST_TTY) -> None:
        import termios
        import tty as ttymod
        self.fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        ttymod.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = termios.B115200
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        termios.tcflush(self.fd, termios.TCIOFLUSH)
        self.buf = b""
        self.seq = 0

    def call(self, op: str, timeout: float = 120, **args) -> dict:
        self.seq += 1
        os.write(self.fd, json.dumps({"op": op, "seq": self.seq, **args}).encode() + b"\n")
        deadline = time.monotonic() + timeout
        import select
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue                    # line noise from before the channel opened
                if answer.get("seq") != self.seq:
                    continue
                if not answer.get("ok"):
                    raise AssertionError(f"host side: {op} {args} failed: {answer.get('error')}")
                return answer
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"host side: no answer to {op} {args} within {timeout} s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.buf += os.read(self.fd, 65536)

    def close(self) -> None:
        os.close(self.fd)


# --------------------------------------------------------------------------- the agent


def _log(msg: str) -> None:
    print(f"[qemu-host {time.strftime('%T')}] {msg}", flush=True)


def _run(argv, **kw) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {' '.join(map(str, argv))}\n{p.stdout}{p.stderr}")
    return p.stdout


class Agent:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        cfg = json.loads((self.out / CONFIG).read_text())
        self.ports: dict[str, int] = cfg["ports"]
        self.control = Path(cfg["control"])
        self.work = Path(tempfile.mkdtemp(prefix="qemu-host-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.work / "run"), "PYTHONUNBUFFERED": "1"}
        (self.work / "run").mkdir(mode=0o700)
        self.material: dict = {}

    # -- material ----------------------------------------------------------------------
    def prepare(self) -> None:
        sys.path.insert(0, str(REPO / "tests" / "e2e"))
        from cac_helpers import build_nss_db
        ccid = [sys.executable, "-m", "ccidgadget"]
        state = self.work / "state"
        piv_dir = state / "cards" / "slot0-piv"            # the first --connect's card (build_card's name)
        _run([*ccid, "card", "create", "--dir", str(piv_dir)], cwd=REPO, env=self.env)
        _run([*ccid, "card", "generate", "--dir", str(piv_dir), "--slot", "9a", "--algorithm", "rsa2048",
              "--subject", "/CN=qemu guest 9a"], cwd=REPO, env=self.env)
        _run([*ccid, "card", "generate", "--dir", str(piv_dir), "--slot", "9c", "--algorithm", "eccp256",
              "--subject", "/CN=qemu guest 9c"], cwd=REPO, env=self.env)
        db = build_nss_db(self.work / "fake-smartcard")
        ca = self.out / "fake-smartcard-ca.cer"
        _run(["certutil", "-L", "-r", "-d", db, "-o", str(ca), "-n", "fake-smartcard-ca"])
        # the guest sees the results directory at $CCIDGADGET_VM_OUT: name files relative to it
        self.material = {"state": str(state), "db": db, "ca_cer": ca.name, "piv_pin": PIV_PIN}
        _log(f"material ready in {self.work}")

    def link_args(self, name: str) -> list[str]:
        opts = dict(LINKS)[name]
        if name == "cac":
            opts = [*opts, "--db", self.material["db"], *sum((["--cert", n] for n in CAC_NICKNAMES), [])]
        return ["--connect", f"127.0.0.1:{self.ports[name]}", *opts]

    # -- processes ---------------------------------------------------------------------
    def argv(self, proc: str) -> list[str]:
        base = [sys.executable, "-m", "ccidgadget", "vscard-card", "--state-dir", self.material["state"]]
        links = CARDS if proc == "cards" else ("relay",)
        return base + sum((self.link_args(n) for n in links), [])

    def start(self, proc: str) -> dict:
        if proc in self.procs and self.procs[proc].poll() is None:
            raise RuntimeError(f"{proc} is already running")
        log = self.logs.setdefault(proc, self.out / f"host-{proc}.log")
        with open(log, "ab") as f:
            f.write(f"--- start at {time.strftime('%T')}\n".encode())
            f.flush()
            self.procs[proc] = subprocess.Popen(self.argv(proc), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                                stdout=f, stderr=subprocess.STDOUT)
        _log(f"started {proc} (pid {self.procs[proc].pid})")
        return {"pid": self.procs[proc].pid}

    def signal(self, proc: str, sig: str) -> dict:
        p = self.procs[proc]
        p.send_signal(getattr(signal, f"SIG{sig}"))
        rc = p.wait(30)
        _log(f"{proc} exited with {rc} after SIG{sig}")
        return {"returncode": rc}

    def vscard(self, link: str, verb: str) -> dict:
        p = subprocess.run([sys.executable, "-m", "ccidgadget", "vscard-card", "--connect",
                            f"127.0.0.1:{self.ports[link]}", f"--{verb}"], cwd=REPO, env=self.env,
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        return {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "info":
            return {"ports": self.ports, "links": [n for n, _ in LINKS], "material": self.material}
        if op == "start":
            return self.start(req["proc"])
        if op == "signal":
            return self.signal(req["proc"], req["sig"])
        if op == "vscard":
            return self.vscard(req["link"], req["verb"])
        if op == "log":
            return {"text": self.logs[req["proc"]].read_text(errors="replace")}
        raise RuntimeError(f"unknown op {op!r}")

    # -- the channel -------------------------------------------------------------------
    def serve(self) -> None:
        deadline = time.monotonic() + 60
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(str(self.control))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        _log("connected to the guest's ttyS1")
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                _log("QEMU closed ttyS1")
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    req = json.loads(line)
                except ValueError:
                    continue
                _log(f"guest asks {req}")
                try:
                    answer = {"ok": True, **self.handle(req)}
                except Exception as e:
                    answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                answer["seq"] = req.get("seq")
                sock.sendall(json.dumps(answer).encode() + b"\n")

    def stop(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main(out: str) -> int:
    sys.path.insert(0, str(REPO))
    from tests.passthrough.pcscd import pcscd_with_vpcd
    agent = Agent(Path(out))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    vpcd_card = None
    try:
        agent.prepare()
        with pcscd_with_vpcd(agent.out / "host-pcscd.log"):
            # the real PC/SC reader the relay link shows the guest: a PIV card in pcscd's vpcd reader
            with open(agent.out / "host-vpcd-card.log", "wb") as log:
                vpcd_card = subprocess.Popen(
                    [sys.executable, "-m", "ccidgadget", "vpcd-card", "--type", "piv", "--state-dir",
                     str(agent.work / "relayed")], cwd=REPO, env=agent.env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT)
            agent.serve()
    finally:
        agent.stop()
        if vpcd_card is not None and vpcd_card.poll() is None:
            vpcd_card.terminate()
            vpcd_card.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
