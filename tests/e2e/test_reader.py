# SPDX-License-Identifier: GPL-3.0-or-later
"""The CCID reader end to end: the daemon is the USB device, the guest's kernel + pcscd + libccid +
OpenSC + pyscard are the host (issue: the CCID skeleton).

Every test uses Debian's unmodified libccid with the daemon's default USB identity.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from ccidgadget.cards.iso import ISO_APPLET_AID
from ccidgadget.ccid import TIME_EXTENSION_INTERVAL
from ccidgadget.usb.gadget import DEFAULT_PRESET, PRESETS

VID, PID, _ = PRESETS[DEFAULT_PRESET]
ISO = ["--card", "emulated", "--type", "iso"]


def apdu(conn, hexstr: str):
    data, sw1, sw2 = conn.transmit(list(bytes.fromhex(hexstr)))
    return bytes(data), (sw1 << 8) | sw2


def select_iso_applet(conn):
    data, sw = apdu(conn, "00A40400%02X%s00" % (len(ISO_APPLET_AID), ISO_APPLET_AID.hex()))
    assert sw == 0x9000, hex(sw)
    return data


def opensc_reader(run_cmd) -> str:
    """OpenSC's index of our reader (vsmartcard-vpcd adds 'Virtual PCD' readers before it)."""
    out = run_cmd(["opensc-tool", "--list-readers"]).stdout
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+\S+\s+(.*)$", line)
        if m and "ccidgadget" in m.group(2):
            return m.group(1)
    raise AssertionError(f"OpenSC does not list our reader:\n{out}")


def connect(reader):
    conn = reader.createConnection()
    conn.connect()
    return conn


@pytest.fixture
def reader_up(daemon, pcscd, wait_for_reader):
    """Start the daemon with the given args, (re)start pcscd (no udev here), return (daemon, reader)."""
    def up(*args, reader_predicate=lambda name: "ccidgadget" in name):
        d = daemon(*args, "--log-level", "debug")
        d.wait_bound(60)
        pcscd.restart()
        return d, wait_for_reader(reader_predicate, timeout=60)
    return up


def test_enumeration_and_descriptor(daemon, run_cmd):
    d = daemon(*ISO)
    iface = d.wait_bound(60)
    out = run_cmd(["lsusb", "-v", "-d", f"{VID:04x}:{PID:04x}"], check=False).stdout
    assert f"{VID:04x}:{PID:04x}" in out or f"idVendor           0x{VID:04x}" in out, out
    # lsusb decodes the class descriptor ("ChipCard Interface Descriptor") and finds it well formed.
    section = out[out.index("ChipCard Interface Descriptor"):]
    assert "bLength                54" in section, section
    assert "bcdCCID              1.10" in section, section
    assert "Auto IFSD exchange" in section and "Short and extended APDU level exchange" in section, section
    assert "junk" not in out.lower() and "invalid" not in out.lower(), out
    assert (iface / "bNumEndpoints").read_text().strip() == "03"
    assert "ccidgadget CCID reader" in (_usb_device_of(iface) / "product").read_text()


def test_pcscd_reader_atr_short_and_extended_apdus(reader_up, run_cmd):
    from ccidgadget.cards.iso import IsoCard

    d, reader = reader_up(*ISO)
    conn = connect(reader)
    assert bytes(conn.getATR()) == IsoCard().atr()
    select_iso_applet(conn)
    data, sw = apdu(conn, "00A4000C020101")
    assert sw == 0x9000
    data, sw = apdu(conn, "00B0000000")
    assert sw == 0x9000 and data.startswith(b"Hello from ccidgadget")
    # extended Le: a 4 KiB response travels in chained DataBlocks (bChainParameter 1, 3, ..., 2)
    apdu(conn, "00A4000C020102")
    data, sw = apdu(conn, "00B00000001000")
    assert sw == 0x9000 and data == bytes(i & 0xFF for i in range(4096))
    # extended Lc: a 3000-byte command travels in chained XfrBlocks, and reads back
    apdu(conn, "00A4000C020103")
    payload = bytes((i * 7) & 0xFF for i in range(3000))
    _, sw = apdu(conn, "00D6000000%04X%s" % (len(payload), payload.hex()))
    assert sw == 0x9000
    data, sw = apdu(conn, "00B00000000BB8")
    assert sw == 0x9000 and data == payload
    # status words of the small card
    assert apdu(conn, "00CA005A00")[1] == 0x9000
    assert apdu(conn, "00EE000000")[1] == 0x6D00
    assert apdu(conn, "FFB0000000")[1] == 0x6E00
    assert len(apdu(conn, "0084000020")[0]) == 32
    conn.disconnect()
    # OpenSC sees the same reader and card
    index = opensc_reader(run_cmd)
    out = run_cmd(["opensc-tool", "--reader", index, "--atr"]).stdout
    assert IsoCard().atr().hex(":") in out.lower(), out
    out = run_cmd(["opensc-tool", "--reader", index, "--send-apdu", "00:A4:00:0C:02:2F:02",
                   "--send-apdu", "00:B0:00:00:00"]).stdout
    assert "SW1=0x90, SW2=0x00" in out, out


def test_card_remove_and_insert_seen_by_pcsc(reader_up, run_cmd):
    from smartcard.scard import (SCARD_S_SUCCESS, SCARD_SCOPE_USER, SCARD_STATE_EMPTY, SCARD_STATE_PRESENT,
                                 SCARD_STATE_UNAWARE, SCardEstablishContext, SCardGetStatusChange,
                                 SCardReleaseContext)

    d, reader = reader_up(*ISO)
    name = str(reader)
    hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
    assert hr == SCARD_S_SUCCESS

    def wait_state(flag, timeout_s=20):
        state = SCARD_STATE_UNAWARE
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hr, states = SCardGetStatusChange(ctx, 1000, [(name, state)])
            if hr == SCARD_S_SUCCESS:
                state = states[0][1] & ~0x2      # drop SCARD_STATE_CHANGED for the next call
                if states[0][1] & flag:
                    return True
        return False

    try:
        assert wait_state(SCARD_STATE_PRESENT)
        run_cmd([sys.executable, "-m", "ccidgadget", "remove", "0"])
        assert wait_state(SCARD_STATE_EMPTY), d.log()
        run_cmd([sys.executable, "-m", "ccidgadget", "insert", "0"])
        assert wait_state(SCARD_STATE_PRESENT), d.log()
    finally:
        SCardReleaseContext(ctx)
    # and the card works after re-insertion
    conn = connect(reader)
    select_iso_applet(conn)
    conn.disconnect()


def test_two_slots_are_two_readers(reader_up, e2e):
    d, _ = reader_up(*ISO, *ISO)
    names = sorted(str(r) for r in e2e.list_readers() if "ccidgadget" in str(r))
    deadline = time.monotonic() + 30
    while len(names) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        names = sorted(str(r) for r in e2e.list_readers() if "ccidgadget" in str(r))
    assert len(names) == 2, names
    assert names[0].endswith(" 00 00") and names[1].endswith(" 00 01"), names
    for r in e2e.list_readers():
        if "ccidgadget" in str(r):
            conn = connect(r)
            select_iso_applet(conn)
            conn.disconnect()


def test_rsa4096_generation_in_one_slot_does_not_stall_the_other(daemon, log_dir, tmp_path, e2e):
    """README: "RSA-4096 key generation in one slot does not stall another", through USB: pcscd +
    libccid talk to both slots of the reader at once (bMaxCCIDBusySlots = slots, so libccid reports
    TAG_IFD_SLOT_THREAD_SAFE), slot 0 generates RSA-4096 keys on its PIV card while slot 1's ISO
    card answers GET CHALLENGE in a loop (judged by tests/service/slot_stall.py). libccid logs each
    time extension it receives (COMM level, LIBCCID_ifdLogLevel): they keep the host from timing
    out during a generation longer than its read timeout."""
    from tests.service.slot_stall import generate_while_slot1_flows

    d = daemon("--card", "emulated", "--type", "piv", *ISO, "--state-dir", str(tmp_path / "state"))
    d.wait_bound(60)
    pcscd = e2e.PcscdProcess(log_dir / "pcscd-debug.log", args=["--debug"],
                             env={"LIBCCID_ifdLogLevel": "0x0007"})   # critical, info, comm
    pcscd.start()
    try:
        def ours():
            names = sorted(str(r) for r in e2e.list_readers() if "ccidgadget" in str(r))
            return names if len(names) == 2 else None
        slot0, slot1 = e2e.wait_until(ours, 60, what="the two readers of our two slots")
        assert slot0.endswith(" 00 00") and slot1.endswith(" 00 01"), (slot0, slot1)
        readers = {str(r): r for r in e2e.list_readers()}
        conns = [connect(readers[slot0]), connect(readers[slot1])]
        assert apdu(conns[1], "00A40400%02X%s00" % (len(ISO_APPLET_AID), ISO_APPLET_AID.hex()))[1] == 0x9000

        def through(conn):
            def transmit(command: bytes) -> bytes:
                data, sw1, sw2 = conn.transmit(list(command))
                return bytes(data) + bytes((sw1, sw2))
            return transmit

        extensions: list[int] = []
        seen = [len(pcscd.log())]

        def count_time_extensions(window):
            text = pcscd.log()
            extensions.append(text[seen[0]:].count("Time extension requested"))
            seen[0] = len(text)

        report = generate_while_slot1_flows(through(conns[0]), through(conns[1]), bytes.fromhex("0084000008"),
                                            timeout=300, after_generation=count_time_extensions)
        for conn in conns:
            e2e.close_connection(conn)                       # before pcscd goes, not in __del__
    finally:
        pcscd.stop()
    figures = f"{report.describe()}\ntime extensions libccid logged per generation: {extensions}\n"
    print(figures)
    (log_dir / "slot-stall.txt").write_text(figures)
    report.check()
    log = pcscd.log()
    assert "LIBUSB_ERROR_TIMEOUT" not in log, "the host timed out waiting for the reader"
    for w, count in zip(report.windows, extensions):
        # the daemon sends one per TIME_EXTENSION_INTERVAL (1 s) of card work, the first after one interval
        if w.seconds > 2 * TIME_EXTENSION_INTERVAL:
            assert count >= 1, f"{w.describe()}: no time extension reached libccid"
    assert d.running, d.log()


def _usb_device_of(iface: Path) -> Path:
    return Path("/sys/bus/usb/devices") / iface.name.split(":")[0]


def test_survives_host_unbind_rebind_and_pcscd_restart(reader_up, pcscd, e2e, wait_for_reader):
    d, reader = reader_up(*ISO)
    iface = e2e.ccid_interfaces()[0]
    device = _usb_device_of(iface)
    dev_name = device.name
    for round_ in range(3):
        # deauthorise/authorise: the host deconfigures and reconfigures the device
        (device / "authorized").write_text("0")
        time.sleep(0.3)
        (device / "authorized").write_text("1")
        # unbind/bind the usb device driver: a full re-probe
        Path("/sys/bus/usb/drivers/usb/unbind").write_text(dev_name)
        time.sleep(0.3)
        Path("/sys/bus/usb/drivers/usb/bind").write_text(dev_name)
        e2e.wait_until(lambda: e2e.ccid_interfaces(), 20, what="CCID interface back")
        pcscd.restart()
        reader = wait_for_reader(lambda n: "ccidgadget" in n, timeout=60)
        conn = connect(reader)
        select_iso_applet(conn)
        conn.disconnect()
        assert d.running, d.log()
    assert "host enumerated the reader" in d.log()


def test_sigterm_leaves_no_gadget(daemon, e2e):
    before = e2e.gadgets()
    d = daemon(*ISO)
    d.wait_bound(60)
    assert "ccidgadget" in e2e.gadgets()
    assert d.stop() == 0, d.log()
    assert e2e.gadgets() == before - {"ccidgadget"}
    assert not any(fstype == "functionfs" for fstype in
                   (line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()))


def test_stale_gadget_from_a_killed_daemon_is_cleaned_at_start(daemon, e2e):
    d = daemon(*ISO)
    d.wait_bound(60)
    d.kill()                                 # kill -9: nothing cleaned up
    assert "ccidgadget" in e2e.gadgets()
    d2 = daemon(*ISO)
    d2.wait_bound(60)
    assert "removing the gadget a previous run left behind" in d2.log()
    assert d2.stop() == 0
