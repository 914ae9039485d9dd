# SPDX-License-Identifier: GPL-3.0-or-later
"""Composite gadgets and the configuration file end to end (issue 6).

- ``[[function]] kind = "acm"`` (and ``"ncm"``) in the file passed with ``--config``: the CCID
  interface and the kernel functions enumerate together on the guest's host side; bytes go both
  ways between /dev/ttyGS0 (board) and /dev/ttyACM0 (host), and the reader answers APDUs through
  pcscd + libccid + pyscard.
- Another gadget owning the UDC: ccidgadget refuses, names it, exits non-zero and leaves it alone.
- ``ccidgadget reload``: a slot's card type changed in the file swaps the card without
  re-enumeration (same USB device number on the host); a changed slot count re-enumerates.
- A re-enumeration that fails for real (a UDC that does not exist; a function attribute the kernel
  refuses while the new gadget is half built) is reported by ``ccidgadget reload`` (exit 1), and
  the previous configuration serves again: ``status --json`` shows it, the host sees the reader
  come back with the old slots, and their cards answer.

The guest loads only dummy_hcd, libcomposite and usb_f_fs; the function drivers of both sides
are loaded here from the test bed's module tree.
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import time
import tty
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CCIDGADGET = [sys.executable, "-m", "ccidgadget"]
OUR_READER = "ccidgadget"

#: gadget side (usb_f_*) and host side (cdc_*) drivers
MODULES = ("usb_f_acm", "usb_f_ncm", "cdc_acm", "cdc_ncm")


def modprobe(run_cmd, *names: str) -> None:
    tree = os.environ.get("CCIDGADGET_VM_MODULES")
    args = ["modprobe", *(["-d", tree] if tree else []), "-a", *names]
    run_cmd(args, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def function_modules(e2e):
    modprobe(e2e.run_command, *MODULES)


def write_config(path: Path, *, slots=("iso",), functions=(), udc: str | None = None) -> Path:
    lines = ["[daemon]", 'log_level = "debug"', f'state_dir = "{path.parent / "state"}"', ""]
    if udc is not None:
        lines += ["[gadget]", f'udc = "{udc}"', ""]
    for t in slots:
        lines += ["[[slot]]", 'engine = "emulated"', f'type = "{t}"', ""]
    for kind, name, attrs in functions:
        lines += ["[[function]]", f'kind = "{kind}"', f'name = "{name}"']
        if attrs:
            lines.append("attributes = { " + ", ".join(f'{k} = "{v}"' for k, v in attrs.items()) + " }")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def usb_device_of(iface: Path) -> Path:
    # /sys/bus/usb/devices/1-1:1.0 -> the device 1-1
    return iface.resolve().parent


def host_interfaces(dev: Path) -> dict[str, str]:
    """interface directory name -> 'class/driver' for a host-side USB device."""
    out = {}
    for iface in sorted(dev.glob(f"{dev.name}:*")):
        cls = (iface / "bInterfaceClass").read_text().strip()
        drv = iface / "driver"
        out[iface.name] = f"{cls}/{drv.resolve().name if drv.exists() else '-'}"
    return out


def transmit(conn, hexstr: str):
    data, sw1, sw2 = conn.transmit(list(bytes.fromhex(hexstr)))
    return bytes(data), (sw1 << 8) | sw2


def select_aid(reader, aid: bytes) -> bytes:
    conn = reader.createConnection()
    conn.connect()
    try:
        data, sw = transmit(conn, "00A40400%02X%s00" % (len(aid), aid.hex()))
        assert sw == 0x9000, hex(sw)
        return bytes(conn.getATR())
    finally:
        conn.disconnect()


def select_iso(reader) -> bytes:
    from ccidgadget.cards.iso import ISO_APPLET_AID
    return select_aid(reader, ISO_APPLET_AID)


def open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIOFLUSH)
    return fd


def read_exactly(fd: int, n: int, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                buf += os.read(fd, n - len(buf))
            except BlockingIOError:
                pass
    return buf


def write_all(fd: int, data: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while data:
        assert time.monotonic() < deadline, "tty write timed out"
        _, w, _ = select.select([], [fd], [], 1)
        if w:
            data = data[os.write(fd, data):]


def wait_path(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)


# --------------------------------------------------------------------------- composite


def test_ccid_acm_ncm_composite_enumerates_and_both_work(tmp_path, daemon, pcscd, wait_for_reader, run_cmd, e2e):
    conf = write_config(tmp_path / "ccidgadget.toml", functions=[
        ("acm", "0", {}),
        ("ncm", "usb0", {"dev_addr": "02:cc:1d:00:00:01", "host_addr": "02:cc:1d:00:00:02"}),
    ])
    run_cmd([*CCIDGADGET, "check-config", "--config", str(conf)], cwd=REPO)
    d = daemon("--config", str(conf))
    iface = d.wait_bound(90)
    dev = usb_device_of(iface)
    # the host enumerated ONE device with the three functions, each bound to its driver
    e2e.wait_until(lambda: sum("/-" not in v for v in host_interfaces(dev).values()) >= 3, 30,
                   what="host drivers bound")
    ifaces = host_interfaces(dev)
    classes = sorted(v for v in ifaces.values())
    print("host interfaces:", ifaces)
    assert any(v.startswith("0b/") for v in classes), ifaces                      # CCID (usbfs: pcscd)
    assert any(v == "02/cdc_acm" for v in classes), ifaces                        # ACM control
    assert any(v == "02/cdc_ncm" for v in classes), ifaces                        # NCM control
    gadget = e2e.GADGETS / "ccidgadget"
    assert sorted(p.name for p in (gadget / "configs" / "c.1").iterdir() if p.is_symlink()) == \
        ["acm.0", "ffs.ccidgadget", "ncm.usb0"]

    # ncm: the board's interface (usb0-like, the MAC we configured) and the host's cdc_ncm netdev
    board_if = (gadget / "functions" / "ncm.usb0" / "ifname").read_text().strip()
    assert (Path("/sys/class/net") / board_if / "address").read_text().strip() == "02:cc:1d:00:00:01"
    # cdc_ncm registers its netdev after the interfaces are bound: wait for it
    host_nets = e2e.wait_until(lambda: [p.name for p in Path("/sys/class/net").iterdir()
                                        if (p / "device" / "driver").exists()
                                        and (p / "device" / "driver").resolve().name == "cdc_ncm"], 30,
                               what="the host's cdc_ncm netdev")
    assert (Path("/sys/class/net") / host_nets[0] / "address").read_text().strip() == "02:cc:1d:00:00:02"

    # acm: bytes both ways between the board's /dev/ttyGS0 and the host's /dev/ttyACM0
    acm_port = int((gadget / "functions" / "acm.0" / "port_num").read_text())
    board_tty, host_tty = f"/dev/ttyGS{acm_port}", "/dev/ttyACM0"
    wait_path(host_tty, 30)
    wait_path(board_tty, 30)
    gs = open_raw(board_tty)
    acm = open_raw(host_tty)
    try:
        time.sleep(0.5)
        to_board = bytes(range(256)) * 4 + b"host->board\n"
        write_all(acm, to_board)
        got = read_exactly(gs, len(to_board), 30)
        assert got == to_board, (len(got), got[:64])
        to_host = b"board->host " + os.urandom(500).hex().encode()
        write_all(gs, to_host)
        got = read_exactly(acm, len(to_host), 30)
        assert got == to_host, (len(got), got[:64])
    finally:
        os.close(acm)
        os.close(gs)

    # and the reader, on the same device: pcscd + libccid + pyscard
    pcscd.restart()
    reader = wait_for_reader(lambda name: OUR_READER in name, timeout=60)
    select_iso(reader)
    st = e2e.run_command([*CCIDGADGET, "status", "--json"], cwd=REPO).stdout
    assert '"acm.0"' in st and '"ncm.usb0"' in st, st


# --------------------------------------------------------------------------- someone else's gadget


@pytest.fixture
def other_gadget(e2e, udc):
    """A serial gadget made by hand (as g_serial or a Pi Zero set-up would), bound to the UDC."""
    g = e2e.GADGETS / "board-serial"
    g.mkdir()
    try:
        (g / "idVendor").write_text("0x1d6b")
        (g / "idProduct").write_text("0x0104")
        (g / "strings/0x409").mkdir(parents=True)
        (g / "strings/0x409/product").write_text("board serial console")
        (g / "configs/c.1").mkdir(parents=True)
        (g / "functions/acm.console").mkdir(parents=True)
        os.symlink(g / "functions/acm.console", g / "configs/c.1/acm.console")
        (g / "UDC").write_text(udc)
        # wait for the host's enumeration (the kernel fills in bcdUSB/bMaxPacketSize0 then)
        e2e.wait_until(lambda: any((d / "idProduct").read_text().strip() == "0104"
                                   for d in Path("/sys/bus/usb/devices").glob("*-*")
                                   if (d / "idProduct").exists()), 30, what="host enumerates board-serial")
        e2e.wait_until(lambda: (g / "bMaxPacketSize0").read_text().strip() != "0x00", 10, what="enumerated")
        yield g
    finally:
        e2e.remove_gadget(g.name)


def test_refuses_a_udc_owned_by_another_gadget_and_leaves_it_alone(other_gadget, tmp_path, daemon, e2e, udc):
    before = {p.name: p.read_text() for p in other_gadget.iterdir() if p.is_file()}
    host_before = sorted(p.name for p in Path("/sys/bus/usb/devices").iterdir())
    conf = write_config(tmp_path / "ccidgadget.toml", functions=[("acm", "0", {})])
    d = daemon("--config", str(conf))
    e2e.wait_until(lambda: not d.running, 90, what="ccidgadget exits")
    log = d.log()
    assert d.returncode not in (0, None), (d.returncode, log)
    assert f"UDC {udc} is in use by the gadget {other_gadget}" in log, log
    # not touched: still bound, same attributes, same function link; no gadget of ours
    assert (other_gadget / "UDC").read_text().strip() == udc
    assert {p.name: p.read_text() for p in other_gadget.iterdir() if p.is_file()} == before
    assert (other_gadget / "configs/c.1/acm.console").is_symlink()
    assert e2e.gadgets() == {"board-serial"}
    assert sorted(p.name for p in Path("/sys/bus/usb/devices").iterdir()) == host_before


# --------------------------------------------------------------------------- reload


def devnum(iface: Path) -> tuple[int, int]:
    dev = usb_device_of(iface)
    return int((dev / "busnum").read_text()), int((dev / "devnum").read_text())


def test_reload_card_type_in_place_and_slot_count_reenumerates(tmp_path, daemon, pcscd, wait_for_reader,
                                                               run_cmd, e2e):
    from ccidgadget.cards.iso import IsoCard
    from ccidgadget.cards.piv.constants import PIV_AID

    conf = write_config(tmp_path / "ccidgadget.toml", slots=("iso",), functions=[("acm", "0", {})])
    d = daemon("--config", str(conf))
    iface = d.wait_bound(90)
    number = devnum(iface)
    pcscd.restart()
    reader = wait_for_reader(lambda name: OUR_READER in name, timeout=60)
    assert select_iso(reader) == IsoCard().atr()

    # only the card type of slot 0 changes: replaced in place, the host keeps its device
    write_config(conf, slots=("piv",), functions=[("acm", "0", {})])
    out = run_cmd([*CCIDGADGET, "reload", "--config", str(conf)], timeout=120, cwd=REPO).stdout
    assert "slot(s) 0 replaced without re-enumerating" in out, out
    assert e2e.ccid_interfaces() and devnum(e2e.ccid_interfaces()[0]) == number
    # same pcscd, same reader: the new card answers (the PIV applet, not the ISO one)
    deadline = time.monotonic() + 60
    while True:
        try:
            atr = select_aid(reader, PIV_AID)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert atr != IsoCard().atr()
    assert devnum(e2e.ccid_interfaces()[0]) == number
    st = e2e.run_command([*CCIDGADGET, "status", "--json"], cwd=REPO).stdout
    assert '"type": "piv"' in st and '"reloads": 1' in st, st

    # a second slot: the host must enumerate again (a new device number)
    write_config(conf, slots=("piv", "iso"), functions=[("acm", "0", {})])
    out = run_cmd([*CCIDGADGET, "reload", "--config", str(conf)], timeout=180, cwd=REPO).stdout
    assert "re-enumerated" in out and "number of slots" in out, out
    def new_device():
        found = [devnum(i) for i in e2e.ccid_interfaces()]
        return found if found and number not in found else None

    found = e2e.wait_until(new_device, 60, what=f"the CCID interface back with a device number other than {number}")
    print(f"USB device {number} -> {found}")
    assert d.running, d.log()
    pcscd.restart()
    e2e.wait_until(lambda: len([r for r in e2e.list_readers() if OUR_READER in str(r)]) == 2, 60,
                   what="two readers of ours")


def status(e2e) -> dict:
    return json.loads(e2e.run_command([*CCIDGADGET, "status", "--json"], cwd=REPO).stdout)


def test_failed_reenumeration_restores_the_previous_configuration(tmp_path, daemon, pcscd, wait_for_reader,
                                                                   run_cmd, e2e, udc):
    from ccidgadget.cards.iso import IsoCard
    from ccidgadget.cards.piv.constants import PIV_AID

    old = dict(slots=("iso", "piv"), functions=[("acm", "0", {})])
    conf = write_config(tmp_path / "ccidgadget.toml", **old)
    d = daemon("--config", str(conf))
    d.wait_bound(90)
    before = status(e2e)
    assert [(s["slot"], s["type"]) for s in before["slots"]] == [(0, "iso"), (1, "piv")], before

    def serves_the_old_configuration(number_before):
        # the control socket: running again, on the old gadget, with the old slots and functions
        st = e2e.wait_until(lambda: (lambda st: st if st["state"] == "running" and st["bound"] else None)(
            status(e2e)), 90, what="the daemon running and bound again")
        assert st["udc"] == udc and st["functions"] == ["acm.0"], st
        assert [(s["slot"], s["engine"], s["type"], s["present"]) for s in st["slots"]] == \
            [(0, "emulated", "iso", True), (1, "emulated", "piv", True)], st
        assert st["reloads"] == before["reloads"], st           # nothing was applied
        # the host: the reader came back (enumerated again) with both slots, and the cards answer
        found = e2e.wait_until(lambda: [devnum(i) for i in e2e.ccid_interfaces()] or None, 60,
                               what="the CCID interface back")
        assert number_before not in found, (number_before, found)
        pcscd.restart()
        names = e2e.wait_until(lambda: sorted(str(r) for r in e2e.list_readers() if OUR_READER in str(r))
                               if len([r for r in e2e.list_readers() if OUR_READER in str(r)]) == 2 else None,
                               60, what="two readers of ours")
        readers = {str(r): r for r in e2e.list_readers()}
        assert select_iso(readers[names[0]]) == IsoCard().atr()
        assert select_aid(readers[names[1]], PIV_AID) != IsoCard().atr()
        assert d.running, d.log()
        return found[0]

    pcscd.restart()
    wait_for_reader(lambda name: OUR_READER in name, timeout=60)
    number = devnum(e2e.ccid_interfaces()[0])
    # 1. a UDC that does not exist: refused by the new gadget's preflight, before configfs is touched
    write_config(conf, **old, udc="nope.0")
    p = run_cmd([*CCIDGADGET, "reload", "--config", str(conf)], timeout=180, check=False, cwd=REPO)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "re-enumeration with the new configuration failed" in p.stderr, p.stderr
    assert f"no UDC named 'nope.0'; available: {udc}" in p.stderr, p.stderr
    assert "went back to the previous configuration" in p.stderr, p.stderr
    number = serves_the_old_configuration(number)

    # 2. the kernel refuses the new gadget half-way: u_ether takes no broadcast address as the board's
    # MAC (dev_addr: EINVAL), after the gadget directory and its functions were made
    write_config(conf, slots=old["slots"],
                 functions=[("acm", "0", {}), ("ncm", "usb0", {"dev_addr": "ff:ff:ff:ff:ff:ff"})])
    p = run_cmd([*CCIDGADGET, "reload", "--config", str(conf)], timeout=180, check=False, cwd=REPO)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "re-enumeration with the new configuration failed" in p.stderr, p.stderr
    assert "Invalid argument" in p.stderr and "went back to the previous configuration" in p.stderr, p.stderr
    serves_the_old_configuration(number)
    assert "ncm.usb0" not in {p.name for p in (e2e.GADGETS / "ccidgadget" / "functions").iterdir()}
    assert d.log().count("went back to the previous configuration") == 2, d.log()
