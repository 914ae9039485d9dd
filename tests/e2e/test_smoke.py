# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-test of the e2e environment (VM test bed or a dummy_hcd machine); needs no ccidgadget code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GADGET = "ccidgadget-smoke"


def test_udc_and_configfs(udc, e2e):
    assert Path("/sys/class/udc", udc).exists()
    if os.environ.get("CCIDGADGET_VM") == "1":
        assert udc == "dummy_udc.0"
    assert e2e.GADGETS.is_dir()


def test_loopback_is_up(run_cmd):
    out = run_cmd(["ip", "-o", "link", "show", "lo"]).stdout
    assert "UP" in out.split(">")[0], out
    # and 127.0.0.1 is reachable (vpcd/vicc and control sockets depend on it)
    import socket
    srv = socket.create_server(("127.0.0.1", 0))
    with srv, socket.create_connection(srv.getsockname(), timeout=5):
        pass


def test_functionfs_mounts(tmp_path, e2e):
    g = e2e.GADGETS / GADGET
    assert GADGET not in e2e.gadgets()
    mnt = tmp_path / "ffs"
    mnt.mkdir()
    try:
        g.mkdir()
        (g / "idVendor").write_text("0x1d6b\n")
        (g / "idProduct").write_text("0x0104\n")
        (g / "strings/0x409").mkdir()
        (g / "strings/0x409/product").write_text("smoke\n")
        (g / "configs/c.1").mkdir()
        (g / "functions/ffs.smoke").mkdir()
        (g / "configs/c.1/ffs.smoke").symlink_to(g / "functions/ffs.smoke")
        subprocess.run(["mount", "-t", "functionfs", "smoke", str(mnt)], check=True, timeout=30)
        assert (mnt / "ep0").exists()
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    finally:
        subprocess.run(["umount", "-q", str(mnt)], check=False)
        e2e.remove_gadget(GADGET)
    assert GADGET not in e2e.gadgets()


def test_lsusb_sees_dummy_hcd(run_cmd):
    out = run_cmd(["lsusb"]).stdout
    if os.environ.get("CCIDGADGET_VM") == "1":
        assert "1d6b:0002" in out, out  # the dummy_hcd root hub


def test_pcscd_and_pyscard(pcscd, e2e):
    assert e2e.PCSCD_SOCKET.exists()
    assert e2e.list_readers() == []  # no USB reader yet; "Virtual PCD" readers are filtered
    pcscd.restart()
    assert pcscd.running
    assert e2e.list_readers() == []
