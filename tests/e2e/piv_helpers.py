# SPDX-License-Identifier: GPL-3.0-or-later
"""The PIV card end to end: one daemon + pcscd shared by the tests of a module, and thin wrappers
around Debian's unmodified host tools (OpenSC, yubico-piv-tool, openssl, ssh).

Used by tests/e2e/test_piv.py and scripts/bench_piv.py. Imports only the standard library and
the e2e conftest helpers it is given, so it also works outside pytest.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]


def _opensc_pkcs11_module() -> str:
    """OpenSC's PKCS#11 module in Debian's multiarch directory of this machine's architecture
    (/usr/lib/aarch64-linux-gnu/ in the arm64 guest, /usr/lib/x86_64-linux-gnu/ on a PC)."""
    triplet = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    path = Path("/usr/lib", triplet, "opensc-pkcs11.so")
    if not path.exists():
        found = sorted(Path("/usr/lib").glob("*-linux-gnu*/opensc-pkcs11.so"))
        path = found[0] if found else path
    return str(path)


PKCS11_MODULE = _opensc_pkcs11_module()
#: yubico-piv-tool -r: a substring of the reader name (the vpcd "Virtual PCD" readers come first)
READER_MATCH = "ccidgadget"
DEFAULT_PIN = "123456"
DEFAULT_PUK = "12345678"
DEFAULT_MGM_KEY = "010203040506070801020304050607080102030405060708"
#: OpenSC caches card files by serial number; our virtual cards change under the same serial
OPENSC_CONF = "app default {\n  framework pkcs15 {\n    use_file_caching = no;\n  }\n}\n"


class ToolError(AssertionError):
    pass


class PivStack:
    """``ccidgadget --card emulated`` (a PIV card) bound to the UDC, pcscd seeing it, tool wrappers.

    ``e2e`` is the namespace of tests/e2e/conftest.py (DaemonProcess, PcscdProcess, find_reader...).
    Every tool runs in ``work`` (files the tests exchange with the tools) with ``OPENSC_CONF``
    pointing at a configuration without file caching.
    """

    def __init__(self, e2e, state_dir: Path, work: Path, log_dir: Path,
                 daemon_args: Sequence[str] = ("--card", "emulated")):
        self.e2e = e2e
        self.state_dir = Path(state_dir)
        self.work = Path(work)
        self.log_dir = Path(log_dir)
        self.daemon_args = list(daemon_args)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        conf = self.work / "opensc.conf"
        conf.write_text(OPENSC_CONF)
        self.env = {**os.environ, "OPENSC_CONF": str(conf)}
        self.daemons: list = []
        self.daemon = None
        self.pcscd = e2e.PcscdProcess(self.log_dir / "pcscd.log")
        self.gadgets_before = e2e.gadgets()
        self.reader = None  # pyscard Reader
        self.opensc_index = ""  # opensc-tool/pkcs15-tool --reader
        self.pkcs11_slot = ""  # pkcs11-tool --slot
        self.pin, self.puk, self.mgm_key = DEFAULT_PIN, DEFAULT_PUK, DEFAULT_MGM_KEY

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "PivStack":
        d = self.e2e.DaemonProcess([*self.daemon_args, "--state-dir", str(self.state_dir), "--log-level", "info"],
                                   self.log_dir / f"ccidgadget-{len(self.daemons)}.log")
        self.daemons.append(d)
        self.daemon = d
        d.wait_bound(timeout)
        # no udev in the guest: pcscd only sees the USB readers present when it starts
        self.pcscd.restart()
        self.reader = self.e2e.find_reader(lambda name: READER_MATCH in name, timeout=timeout)
        self._wait_card_present(timeout)
        self.opensc_index = self._opensc_index()
        self.pkcs11_slot = self._pkcs11_slot()
        return self

    def stop_daemon(self) -> int:
        rc = self.daemon.stop()
        return rc

    def restart_daemon(self, timeout: float = 60) -> None:
        """Stop the daemon (SIGTERM), start a new one on the same state directory, restart pcscd."""
        rc = self.stop_daemon()
        if rc != 0:
            raise AssertionError(f"ccidgadget exited with {rc} on SIGTERM\n{self.daemon.log()}")
        self.start(timeout)

    def close(self) -> list[str]:
        problems = []
        self.pcscd.stop()
        for d in self.daemons:
            try:
                d.stop()
            except AssertionError as e:
                problems.append(str(e))
        leftover = self.e2e.gadgets() - self.gadgets_before
        for name in leftover:
            try:
                self.e2e.remove_gadget(name)
            except OSError as e:
                problems.append(f"could not remove gadget {name}: {e}")
        if leftover:
            problems.append(f"ccidgadget left configfs gadget(s) behind: {sorted(leftover)}")
        return problems

    def _wait_card_present(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(["opensc-tool", "--list-readers"], check=False).stdout
            if any(READER_MATCH in line and re.match(r"\s*\d+\s+Yes\b", line) for line in out.splitlines()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no card in our reader after {timeout} s:\n{out}\n{self.daemon.log()}")
            time.sleep(0.3)

    def _opensc_index(self) -> str:
        """OpenSC's index of our reader (vsmartcard-vpcd's 'Virtual PCD' readers come before it)."""
        out = self.run(["opensc-tool", "--list-readers"]).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\d+)\s+\S+\s+(.*)$", line)
            if m and READER_MATCH in m.group(2):
                return m.group(1)
        raise AssertionError(f"OpenSC does not list our reader:\n{out}")

    def _pkcs11_slot(self) -> str:
        out = self.run(["pkcs11-tool", "--module", PKCS11_MODULE, "--list-slots"]).stdout
        for line in out.splitlines():
            m = re.match(r"Slot \d+ \((0x[0-9a-fA-F]+)\): (.*)$", line)
            if m and READER_MATCH in m.group(2):
                return m.group(1)
        raise AssertionError(f"no PKCS#11 slot for our reader:\n{out}")

    # -- tools -----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 120,
            input: str | bytes | None = None, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a tool in ``work`` (or ``cwd``); stdout and stderr together in ``.stdout`` (text)."""
        try:
            p = subprocess.run(list(argv), cwd=cwd or self.work, env={**self.env, **(env or {})},
                               input=input.encode() if isinstance(input, str) else input,
                               stdin=None if input is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ToolError(f"timed out after {timeout} s: {' '.join(argv)}\n{e.stdout!r}") from None
        p.stdout = p.stdout.decode(errors="replace")
        if check and p.returncode != 0:
            daemon_tail = "\n".join(self.daemon.log().splitlines()[-15:]) if self.daemon else ""
            raise ToolError(f"exit {p.returncode}: {' '.join(argv)}\n{p.stdout}\n--- daemon log tail ---\n{daemon_tail}")
        return p

    def piv(self, *args: str, check: bool = True, mgm: bool = False) -> subprocess.CompletedProcess:
        """yubico-piv-tool on our reader; ``mgm=True`` passes the current management key."""
        argv = ["yubico-piv-tool", "-r", READER_MATCH]
        if mgm:
            argv.append(f"-k{self.mgm_key}")
        return self.run([*argv, *args], check=check)

    def p11(self, *args: str, check: bool = True, login: bool = False) -> subprocess.CompletedProcess:
        """pkcs11-tool with OpenSC's module on our reader's slot."""
        argv = ["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", self.pkcs11_slot]
        if login:
            argv += ["--login", "--pin", self.pin]
        return self.run([*argv, *args], check=check)

    def opensc(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """opensc-tool / pkcs15-tool on our reader."""
        return self.run([tool, "--reader", self.opensc_index, *args], check=check)

    def file(self, name: str) -> Path:
        return self.work / name


def python() -> str:
    return sys.executable
