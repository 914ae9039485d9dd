# SPDX-License-Identifier: GPL-3.0-or-later
"""Our cards in a QEMU guest through QEMU's own usb-ccid + ccid-card-passthru (issue 14).

The guest of this module has, besides the test bed's usual devices, five QEMU ``usb-ccid`` readers
(Gemalto 08E6:4433) on a hub behind a UHCI controller, each with a ``ccid-card-passthru`` on a
loopback chardev of this machine (tests/e2e/qemu_host.py).  On this machine, outside the guest,
``ccidgadget vscard-card`` connects to them: one process with four ``--connect`` (PIV, CAC from
ccid.rst's NSS database, ISO, and ISO with nothing cut: ``--max-response 0``) and one relaying, with
``--card pcsc``, a real PC/SC reader of this machine (pcscd + vsmartcard-vpcd + ``vpcd-card --type
piv``).  Inside the guest the stock host stack does the rest: uhci_hcd, pcscd, libccid (which knows
QEMU's Gemalto ID), OpenSC, pyscard, openssl.  The guest asks this machine for what must happen there
(start, kill, insert, remove) over its second serial port.

What QEMU 7.2 does, as these tests pin down (docs/qemu.md):
- the usb-ccid devices are on the bus from boot, before any client connects, and stay there when
  the client goes: ReaderAdd/ReaderRemove only fill and empty the slot (ccid.rst's "attach"/"detach"
  are not USB attach and detach in QEMU's code);
- libccid sees a TPDU reader that speaks T=0 only, so the front end shows T=0 ATRs;
- a response longer than 374 bytes never reaches the guest (QEMU drops it); the front end cuts such
  responses and serves the rest through GET RESPONSE, so a 4 KiB extended-Le read works;
- a command is limited by QEMU's 64 KiB bulk-OUT buffer (a 65526-byte APDU at most).

Guest wall time: 113 s on a quiet machine, 241 s beside another guest (budget 6 minutes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from smartcard.CardConnection import CardConnection

from ccidgadget.cards.cac import CAC_LABELS
from ccidgadget.cards.iso import ISO_APPLET_AID
from ccidgadget.cards.iso7816 import make_atr
from ccidgadget.cards.piv.applet import ATR_HISTORICAL as PIV_HISTORICAL
from ccidgadget.frontends.vscard_client import host_atr
from passthrough_helpers import PcscWatch
from piv_helpers import PKCS11_MODULE
from qemu_host import CARDS, LINKS, HostChannel

VM_HOST = "qemu_host"

QEMU_READER = "Gemalto Gemplus USB SmartCard Reader 433-Swap"
PIV_NAME = "Personal Identity Verification Card"
CAC_NAME = "Common Access Card (CAC)"
USB_CCID_MAX_RESPONSE = 374
#: no file cache (the cards change under the same serial); room for a slot per reader (OpenSC's
#: default of 16 virtual slots, 4 per reader, shows only the first 4 of the guest's 7 readers)
OPENSC_CONF = ("app default {\n  framework pkcs15 {\n    use_file_caching = no;\n  }\n}\n"
               "app opensc-pkcs11 {\n  pkcs11 {\n    max_virtual_slots = 64;\n  }\n}\n")


def _run(argv, env=None, check=True, timeout=180, cwd=None, input=None) -> str:
    p = subprocess.run(argv, env=env, cwd=cwd, input=input, stdin=None if input else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    out = p.stdout.decode(errors="replace")
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {' '.join(map(str, argv))}\n{out}")
    return out


def _qemu_devices() -> list[Path]:
    out = []
    for d in Path("/sys/bus/usb/devices").iterdir():
        try:
            if (d / "idVendor").read_text().strip() == "08e6" and (d / "idProduct").read_text().strip() == "4433":
                out.append(d)
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def host():
    ch = HostChannel()
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def guest(host, e2e, tmp_path_factory):
    """uhci_hcd, the five readers in pcscd, and what they showed before any client connected."""
    out = os.environ.get("CCIDGADGET_VM_OUT")
    log_dir = Path(out) / "logs" / "test_qemu_vscard" if out else tmp_path_factory.mktemp("logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("qemu-vscard")
    (work / "opensc.conf").write_text(OPENSC_CONF)
    _run(["modprobe", "-d", os.environ["CCIDGADGET_VM_MODULES"], "-a", "uhci_hcd"])
    e2e.wait_until(lambda: len(_qemu_devices()) == len(LINKS), 30, what=f"{len(LINKS)} QEMU usb-ccid devices")
    pcscd = e2e.PcscdProcess(log_dir / "pcscd.log").start()

    def ours():
        rs = [str(r) for r in e2e.list_readers() if QEMU_READER in str(r)]
        return rs if len(rs) == len(LINKS) else None
    names = e2e.wait_until(ours, 60, what=f"pcscd listing {len(LINKS)} QEMU readers")
    readers = {}
    for name in names:
        m = re.search(r"-1\.(\d)\) \d\d 00$", name)
        assert m, f"cannot tell the hub port from {name!r}"
        readers[LINKS[int(m.group(1)) - 1][0]] = name
    watch = PcscWatch()
    before = {link: watch.state(reader) for link, reader in readers.items()}
    info = host.call("info")
    ns = types.SimpleNamespace(e2e=e2e, host=host, readers=readers, watch=watch, before_client=before, work=work,
                               pcscd=pcscd, info=info, env={**os.environ, "OPENSC_CONF": str(work / "opensc.conf")})
    try:
        yield ns
    finally:
        watch.close()
        pcscd.stop()


@pytest.fixture(scope="module")
def cards(guest):
    """The two vscard-card processes started on this machine, every card in its guest reader."""
    guest.host.call("start", proc="cards")
    guest.host.call("start", proc="relay")
    for link, reader in guest.readers.items():
        assert guest.watch.wait_present(reader, 60), f"{link}: no card in {reader}"
    return guest


def _state(g, link: str) -> int:
    return g.watch.state(g.readers[link])


def _present(g, link: str) -> bool:
    return bool(_state(g, link) & g.watch.s.SCARD_STATE_PRESENT)


def _opensc_index(g, link: str) -> str:
    out = _run(["opensc-tool", "--list-readers"], env=g.env)
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+\S+\s+(.*)$", line)
        if m and m.group(2).strip().endswith(g.readers[link][-20:]):
            return m.group(1)
    raise AssertionError(f"OpenSC does not list {g.readers[link]}:\n{out}")


def _pkcs11_slot(g, link: str) -> str:
    """PKCS#11 slot descriptions are the reader names cut short ("...Interface..."), the same for all
    five readers: OpenSC lists the readers' slots in PC/SC order, which opensc-tool --list-readers shows."""
    index = int(_opensc_index(g, link))
    out = _run(["pkcs11-tool", "--module", PKCS11_MODULE, "--list-slots"], env=g.env)
    slots = re.findall(r"^Slot \d+ \((0x[0-9a-fA-F]+)\): (.*)$", out, re.M)
    assert index < len(slots) and g.readers[link].startswith(slots[index][1].strip().rstrip(".")), out
    return slots[index][0]


def _connect(g, link: str):
    from smartcard.System import readers
    reader = next(r for r in readers() if str(r) == g.readers[link])
    conn = reader.createConnection()
    conn.connect()
    return conn


def _close(conn) -> None:
    """Disconnect and release the PC/SC context now (pyscard complains at exit once pcscd is gone)."""
    from smartcard.Exceptions import CardConnectionException
    for step in (conn.disconnect, conn.release):
        try:
            step()
        except CardConnectionException:
            pass


def _tx(conn, apdu: bytes) -> tuple[bytes, int]:
    data, sw1, sw2 = conn.transmit(list(apdu))
    return bytes(data), (sw1 << 8) | sw2


def _select_iso(conn) -> None:
    assert _tx(conn, bytes((0, 0xA4, 4, 0, len(ISO_APPLET_AID))) + ISO_APPLET_AID + b"\x00")[1] == 0x9000


def _read_binary_ext(conn, length: int) -> tuple[bytes, int, list[int]]:
    """READ BINARY with an extended Le, then GET RESPONSE while 61xx: (data, last SW, response sizes)."""
    data, sw = _tx(conn, b"\x00\xB0\x00\x00\x00" + length.to_bytes(2, "big"))
    sizes = [len(data) + 2]
    while sw >> 8 == 0x61:
        more, sw = _tx(conn, bytes((0, 0xC0, 0, 0, sw & 0xFF)))
        sizes.append(len(more) + 2)
        data += more
    return data, sw, sizes


def _events(g, link: str) -> int:
    """pcsc-lite's count of card events on the reader (upper 16 bits of dwEventState)."""
    return _state(g, link) >> 16


# --------------------------------------------------------------------------- the readers, no client yet


def test_readers_are_on_the_bus_before_any_client(guest):
    """QEMU attaches usb-ccid at boot (not on ReaderAdd as ccid.rst draws it): five empty readers."""
    s = guest.watch.s
    for link, state in guest.before_client.items():
        assert state & s.SCARD_STATE_EMPTY and not state & s.SCARD_STATE_PRESENT, (link, hex(state))


# --------------------------------------------------------------------------- the cards


def test_opensc_names_the_cards(cards):
    for link, name in (("piv", PIV_NAME), ("cac", CAC_NAME), ("relay", PIV_NAME)):
        out = _run(["opensc-tool", "--reader", _opensc_index(cards, link), "-n"], env=cards.env)
        assert name in out, (link, out)


def test_atrs_offer_t0_with_the_cards_historical_bytes(cards):
    piv_t0 = host_atr(make_atr(PIV_HISTORICAL))
    assert piv_t0 == make_atr(PIV_HISTORICAL, t0=True, t1=False)
    for link in ("piv", "relay"):
        conn = _connect(cards, link)
        try:
            assert bytes(conn.getATR()) == piv_t0, (link, bytes(conn.getATR()).hex())
            assert conn.getProtocol() == CardConnection.T0_protocol
        finally:
            _close(conn)


def test_piv_pkcs11_tool_test_login(cards):
    slot = _pkcs11_slot(cards, "piv")
    out = _run(["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", slot, "--login", "--pin",
                cards.info["material"]["piv_pin"], "--test"], env=cards.env, timeout=300)
    assert "No errors" in out, out
    for mech in ("RSA-X-509", "RSA-PKCS", "SHA256-RSA-PKCS"):
        assert re.search(rf"^\s+{mech}: OK", out, re.M), out


def test_piv_signature_verifies_with_openssl(cards):
    w, env, slot = cards.work, cards.env, _pkcs11_slot(cards, "piv")
    p11 = ["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", slot]
    (w / "data").write_bytes(os.urandom(700))
    _run([*p11, "--read-object", "--type", "cert", "--id", "01", "-o", str(w / "9a.der")], env=env)
    _run(["openssl", "x509", "-inform", "der", "-in", str(w / "9a.der"), "-pubkey", "-noout", "-out",
          str(w / "9a.pub")])
    _run([*p11, "--login", "--pin", cards.info["material"]["piv_pin"], "--sign", "-m", "SHA256-RSA-PKCS",
          "--id", "01", "-i", str(w / "data"), "-o", str(w / "sig")], env=env)
    out = _run(["openssl", "dgst", "-sha256", "-verify", str(w / "9a.pub"), "-signature", str(w / "sig"),
                str(w / "data")])
    assert "Verified OK" in out, out
    # and the certificate is the one made on the host (a 2048-bit RSA key, as provisioned)
    text = _run(["openssl", "x509", "-inform", "der", "-in", str(w / "9a.der"), "-noout", "-subject", "-text"])
    assert "CN = qemu guest 9a" in text and "(2048 bit)" in text, text


def test_cac_lists_its_three_certificates(cards):
    slot = _pkcs11_slot(cards, "cac")
    out = _run(["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", slot, "--list-objects", "--type", "cert"],
               env=cards.env, timeout=300)
    assert out.count("Certificate Object") == 3, out
    for label in CAC_LABELS:
        assert label in out, (label, out)
    for cn in ("John Doe", "John Doe (signing)", "John Doe (encryption)"):
        assert f"CN={cn}" in out.replace(" = ", "=") or cn in out, (cn, out)
    # issued by ccid.rst's CA, whose certificate the host exported (certutil's CA has no
    # basicConstraints, which openssl verify insists on: check the signature itself)
    _run(["pkcs11-tool", "--module", PKCS11_MODULE, "--slot", slot, "--read-object", "--type", "cert",
          "--label", CAC_LABELS[0], "-o", str(cards.work / "cac-id.der")], env=cards.env)
    ca = x509.load_der_x509_certificate((Path(os.environ["CCIDGADGET_VM_OUT"])
                                         / cards.info["material"]["ca_cer"]).read_bytes())
    cert = x509.load_der_x509_certificate((cards.work / "cac-id.der").read_bytes())
    assert cert.issuer == ca.subject, cert.issuer
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                           cert.signature_hash_algorithm)


# --------------------------------------------------------------------------- insert, remove


def test_remove_and_insert_from_our_side_reach_scardgetstatuschange(cards):
    host, reader = cards.host, cards.readers["piv"]
    r = host.call("vscard", link="piv", verb="remove")
    assert r["returncode"] == 0 and "empty" in r["stdout"], r
    t = time.monotonic()
    assert cards.watch.wait_empty(reader, 20), "the guest did not see the PIV card go"
    removed_after = time.monotonic() - t
    assert _present(cards, "cac"), "removing the PIV card touched the CAC reader"
    r = host.call("vscard", link="piv", verb="insert")
    assert r["returncode"] == 0 and "card present" in r["stdout"], r
    assert cards.watch.wait_present(reader, 20), "the guest did not see the PIV card come back"
    out = _run(["opensc-tool", "--reader", _opensc_index(cards, "piv"), "-n"], env=cards.env)
    assert PIV_NAME in out, out
    status = host.call("vscard", link="piv", verb="status")["stdout"]
    assert "ready, card present (in the guest slot)" in status, status
    # a relayed card follows its own reader: remove refuses with the reason
    r = host.call("vscard", link="relay", verb="remove")
    assert r["returncode"] != 0 and "follows its own reader" in r["stderr"], r
    print(f"removal seen by the guest {removed_after:.2f} s after the remove command returned")


# --------------------------------------------------------------------------- sizes through usb-ccid


def test_extended_responses_come_through_get_response(cards):
    conn = _connect(cards, "iso")
    try:
        _select_iso(conn)
        assert _tx(conn, bytes.fromhex("00A4000C020102"))[1] == 0x9000       # EF.LARGE, 4096 bytes 00 01 ..
        pattern = bytes(i & 0xFF for i in range(4096))
        data, sw = _tx(conn, bytes.fromhex("00B0000000"))                    # short Le: 256 + SW
        assert (sw, data) == (0x9000, pattern[:256])
        for n, pieces in ((372, [374]), (373, [374, 3]), (2048, None), (4096, None)):
            data, sw, sizes = _read_binary_ext(conn, n)
            assert sw == 0x9000 and data == pattern[:n], (n, hex(sw), len(data))
            assert max(sizes) <= USB_CCID_MAX_RESPONSE, (n, sizes)
            if pieces:
                assert sizes == pieces, (n, sizes)
        # commands: one XfrBlock carries them; QEMU's bulk-OUT buffer is 64 KiB
        assert _tx(conn, bytes.fromhex("00A4000C020103"))[1] == 0x9000       # EF.SCRATCH, 65535 bytes
        for n in (4096, 65519):
            blob = os.urandom(n)
            assert _tx(conn, b"\x00\xD6\x00\x00\x00" + n.to_bytes(2, "big") + blob)[1] == 0x9000, n
            data, sw, _ = _read_binary_ext(conn, n)
            assert sw == 0x9000 and data == blob, n
        from smartcard.Exceptions import CardConnectionException
        with pytest.raises(CardConnectionException):
            _tx(conn, b"\x00\xD6\x00\x00\x00" + (65520).to_bytes(2, "big") + bytes(65520))
        assert _tx(conn, bytes.fromhex("00A4000C020102"))[1] == 0x9000       # and the reader carries on
    finally:
        _close(conn)
    status = cards.host.call("vscard", link="iso", verb="status")["stdout"]
    assert f"longest response {USB_CCID_MAX_RESPONSE} bytes" in status, status


# --------------------------------------------------------------------------- our process goes and comes back


def test_sigterm_empties_the_slots_and_a_restart_fills_them(cards):
    host = cards.host
    assert host.call("signal", proc="cards", sig="TERM")["returncode"] == 0
    for link in CARDS:
        assert cards.watch.wait_empty(cards.readers[link], 20), f"{link} still has a card after SIGTERM"
    # QEMU keeps the usb-ccid devices on the bus: the readers stay, empty
    assert len(_qemu_devices()) == len(LINKS)
    assert _present(cards, "relay")
    host.call("start", proc="cards")
    for link in CARDS:
        assert cards.watch.wait_present(cards.readers[link], 60), f"{link}: no card after the restart"
    out = _run(["opensc-tool", "--reader", _opensc_index(cards, "cac"), "-n"], env=cards.env)
    assert CAC_NAME in out, out


def test_sigkill_leaves_a_stale_card_that_the_restart_replaces(cards):
    """Killed without a word, the client leaves QEMU with the card "in" (an APDU now would wait for
    libccid's timeout); the next client's ReaderRemove(0) takes it out and its ATR puts the card
    back, milliseconds apart: QEMU's NotifySlotChange folds the two into one "changed" report, so
    the guest sees a card throughout, and a working one again after the restart."""
    host = cards.host
    events = _events(cards, "piv")
    assert host.call("signal", proc="cards", sig="KILL")["returncode"] == -9
    time.sleep(2)
    assert _present(cards, "piv") and _events(cards, "piv") == events, "QEMU emptied the slot by itself?"
    host.call("start", proc="cards")
    cards.e2e.wait_until(lambda: "card inserted" in host.call("log", proc="cards")["text"].rsplit("--- start", 1)[1],
                         30, what="the restarted vscard-card inserting its cards")
    out = _run(["opensc-tool", "--reader", _opensc_index(cards, "piv"), "-n"], env=cards.env)
    assert PIV_NAME in out, out
    assert _present(cards, "piv")


def test_one_log_line_per_state_change(cards):
    log = cards.host.call("log", proc="cards")["text"]
    starts = log.count("--- start at")
    assert starts == 3, log
    for link in CARDS:
        port = cards.info["ports"][link]
        lines = [line for line in log.splitlines() if f"vscard 127.0.0.1:{port}:" in line]
        connected = [line for line in lines if "connected; reader added" in line and "dis" not in line]
        assert len(connected) == starts, (link, lines)
        assert sum("card inserted" in line for line in lines) >= starts, (link, lines)
        assert len(lines) < 20, (link, lines)
    assert log.count("reader removed") == len(CARDS), log          # the SIGTERM's goodbye, once per link


# --------------------------------------------------------------------------- QEMU's own limit


def test_without_cutting_a_response_over_374_bytes_never_reaches_the_guest(cards):
    """``--max-response 0``: QEMU 7.2 drops a DataBlock over its 384-byte bulk-IN buffer and the
    guest's libccid waits minutes for it; a newer QEMU fails it.  Either way the guest never gets
    the data.  Even removing the card does not end the wait: QEMU answers the outstanding command
    with an empty block, then clears its bulk-IN queue (ccid_reset) before the guest reads it.  So
    the over-long read runs in a process of its own, which is killed (pcscd's reader stays stuck)."""
    conn = _connect(cards, "raw")
    _select_iso(conn)
    assert _tx(conn, bytes.fromhex("00A4000C020102"))[1] == 0x9000
    data, sw = _tx(conn, b"\x00\xB0\x00\x00\x00" + (372).to_bytes(2, "big"))
    assert sw == 0x9000 and len(data) == 372              # 374 bytes with SW1 SW2: the most that passes
    _close(conn)
    script = (
        "import sys\nfrom smartcard.System import readers\n"
        f"c = next(r for r in readers() if str(r) == {cards.readers['raw']!r}).createConnection()\n"
        "c.connect()\n"
        f"c.transmit(list({bytes((0, 0xA4, 4, 0, len(ISO_APPLET_AID))) + ISO_APPLET_AID + bytes(1)!r}))\n"
        "c.transmit(list(bytes.fromhex('00A4000C020102')))\n"
        "try:\n    d, s1, s2 = c.transmit(list(bytes.fromhex('00B0000000') + (373).to_bytes(2, 'big')))\n"
        "    print('ANSWER', len(d), hex(s1), hex(s2), flush=True)\n"
        "except Exception as e:\n    print('ERROR', e, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=10)
        waited = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        waited = True
    out = out.decode(errors="replace")
    assert "ANSWER 373" not in out, out
    assert waited or "ERROR" in out, out
    status = cards.host.call("vscard", link="raw", verb="status")["stdout"]
    assert "longest response 375 bytes" in status, status
    print(f"375-byte response: {'no answer in 10 s (dropped)' if waited else out.strip()}")
