# SPDX-License-Identifier: GPL-3.0-or-later
"""systemd/ccidgadget.service: `systemd-analyze verify` accepts it, and it keeps its promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.ci import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "ccidgadget.service"
INSTALLED_BIN = "/opt/ccidgadget/venv/bin/ccidgadget"


def _analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        skip_or_fail("systemd-analyze is not installed (Debian package 'systemd')")
    return exe


def _unit_with_stub(tmp_path: Path) -> Path:
    """The unit with its executable pointed at a stub: verify checks that ExecStart= exists."""
    stub = tmp_path / "ccidgadget"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "ccidgadget.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(stub)))
    return unit


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_systemd_analyze_verify(tmp_path):
    exe = _analyze()
    r = subprocess.run([exe, "verify", str(_unit_with_stub(tmp_path))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # verify prints warnings about our unit (unknown keys, bad values) without failing: none allowed
    assert "ccidgadget.service" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_security_exposure(tmp_path):
    exe = _analyze()
    r = subprocess.run([exe, "security", "--offline=true", str(_unit_with_stub(tmp_path))],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for ccidgadget\.service: ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 and m is None:
        skip_or_fail(f"this systemd-analyze has no offline security analysis: {r.stderr.strip()[:200]}")
    assert m and float(m.group(1)) <= 3.5, r.stdout[-2000:]


def test_promises():
    s = settings()
    assert s["Type"] == ["notify"] and s["WatchdogSec"] and s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]              # configuration errors: no restart loop
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert s[key] == ["ccidgadget"]
    assert s["ExecStart"] == [INSTALLED_BIN]
    assert s["ExecReload"] == [f"{INSTALLED_BIN} reload"]
    assert s["ExecStopPost"] == [f"-{INSTALLED_BIN} cleanup"]
    assert set(s["CapabilityBoundingSet"][0].split()) == {"CAP_SYS_ADMIN", "CAP_CHOWN"}
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] == ["/sys/kernel/config"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectHome"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert "@mount" in s["SystemCallFilter"][0]
    assert "ProtectKernelTunables" not in s                     # it would make /sys read-only
    # every capability granted is explained in a comment
    text = UNIT.read_text()
    for cap in s["CapabilityBoundingSet"][0].split():
        assert re.search(rf"^# {cap}\s+\S", text, re.M), cap
