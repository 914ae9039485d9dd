# SPDX-License-Identifier: GPL-3.0-or-later
"""The passthrough card engines end to end (issue 5): the card lives in a peer process, the daemon is
the USB device, and the guest's kernel + pcscd + libccid + pyscard are the USB host.

- vpcd: vsmartcard's real ``vicc`` (iso7816, and cryptoflex) connects to ``--card vpcd``;
- pcsc: vsmartcard-vpcd + vicc make a PC/SC reader "Virtual PCD 00 00" in the guest's pcscd, and
  ``--card pcsc`` relays it to the USB side, a second reader of the same pcscd;
- VSCard: a client written from vscard_common.h (passthrough_helpers.VSCardClient) drives
  ``--card passthru``: the reader appears on ReaderAdd and goes on ReaderRemove / disconnect (QEMU's
  ccid.rst passthrough scenario), or stays on the bus with ``--stay-attached``.

There is no udev in the guest: pcscd only finds USB readers that exist when it starts, so every test
restarts pcscd after the reader is on the bus.  pcscd's own vpcd driver listens on 35963/35964, so
our vpcd engine listens on VPCD_PORT.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import threading
import time

import pytest

from ccidgadget.cards.iso import ISO_APPLET_AID
from passthrough_helpers import (HEADER, VICC_ATR, VSC_APDU, VSC_ATR, VSC_CANNOT_ADD_MORE_READERS,
                                 VSC_ERROR, VSC_FLUSH, VSC_FLUSH_COMPLETE, VSC_GENERAL_ERROR, VSC_INIT,
                                 VSC_READER_ADD, PcscWatch, VSCardClient, iso_card, tcp_listening,
                                 vicc_command, vsc_frame, vsc_init_payload)

VSCARD_PORT = 2001                 # the engine's default (QEMU's ccid.rst examples)
VPCD_PORT = 35990                  # not 35963/35964: pcscd's vpcd driver listens there in the guest
PCSCD_VPCD_PORT = 35963            # vsmartcard-vpcd's first reader, "Virtual PCD 00 00"
VIRTUAL_PCD_0 = "Virtual PCD 00 00"
SELECT_APPLET = "00A40400%02X%s00" % (len(ISO_APPLET_AID), ISO_APPLET_AID.hex().upper())
SELECT_MF_NO_FCI = "00A4000C023F00"      # vicc 3.3 crashes answering a plain SELECT MF (FCP under Python 3)


def ours(name: str) -> bool:
    return "ccidgadget" in name


def apdu(conn, hexstr: str) -> tuple[bytes, int]:
    data, sw1, sw2 = conn.transmit(list(bytes.fromhex(hexstr)))
    return bytes(data), (sw1 << 8) | sw2


def connect(reader):
    conn = reader.createConnection()
    conn.connect()
    return conn


def close(conn) -> None:
    """Disconnect and release the PC/SC context now (pyscard otherwise complains at exit after
    pcscd has been restarted)."""
    from smartcard.Exceptions import CardConnectionException
    for step in (conn.disconnect, conn.release):
        try:
            step()
        except CardConnectionException:
            pass


def wait_log(d, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, d.log()):
        assert d.running, f"ccidgadget exited with {d.returncode}\n{d.log()}"
        assert time.monotonic() < deadline, f"{pattern!r} not logged within {timeout} s\n{d.log()}"
        time.sleep(0.2)


@pytest.fixture
def watch():
    w = None

    def get() -> PcscWatch:          # after pcscd (re)started: a context does not survive a restart
        nonlocal w
        if w is not None:
            w.close()
        w = PcscWatch()
        return w
    yield get
    if w is not None:
        try:
            w.close()
        except Exception:
            pass


@pytest.fixture
def vicc(log_dir, tmp_path):
    """Factory: vicc(card_type, port) -> Popen of vsmartcard's vicc; killed at teardown."""
    from tests.passthrough.vicc import ViccUnavailable
    procs: list[subprocess.Popen] = []

    def start(card_type: str, port: int) -> subprocess.Popen:
        try:
            argv = vicc_command(card_type, port, tmp_path)
        except ViccUnavailable as e:
            pytest.fail(f"vicc unavailable: {e} (build .cache/vicc-venv on the host first: "
                        "python tests/passthrough/vicc.py)", pytrace=False)
        log = open(log_dir / f"vicc-{len(procs)}-{card_type}.log", "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(10)


# --------------------------------------------------------------------------- vpcd engine + real vicc


def test_vpcd_engine_with_real_vicc(daemon, pcscd, wait_for_reader, watch, vicc, log_dir):
    d = daemon("--card", "vpcd", "--listen", f"127.0.0.1:{VPCD_PORT}", "--log-level", "debug")
    d.wait_bound(60)            # vpcd: the reader is on the bus from the start, slot empty
    pcscd.restart()
    name = str(wait_for_reader(ours, timeout=60))
    w = watch()
    assert w.wait_empty(name, 30), "our reader should be empty before vicc connects"

    v = vicc("iso7816", VPCD_PORT)
    assert w.wait_present(name, 120), f"vicc's card never arrived\n{d.log()}"
    conn = connect(wait_for_reader(ours))
    assert bytes(conn.getATR()) == VICC_ATR["iso7816"]
    assert apdu(conn, SELECT_MF_NO_FCI) == (b"", 0x9000)
    challenge, sw = apdu(conn, "0084000008")
    assert sw == 0x9000 and len(challenge) == 8
    assert apdu(conn, "0084000008")[0] != challenge
    close(conn)

    # killing vicc removes the card; a new vicc inserts it again
    kill(v)
    assert w.wait_empty(name, 30), d.log()
    v = vicc("iso7816", VPCD_PORT)
    assert w.wait_present(name, 120), d.log()
    conn = connect(wait_for_reader(ours))
    assert bytes(conn.getATR()) == VICC_ATR["iso7816"]
    assert apdu(conn, SELECT_MF_NO_FCI)[1] == 0x9000
    close(conn)
    kill(v)
    assert w.wait_empty(name, 30), d.log()

    # another card type: a Schlumberger Cryptoflex (T=0, CLA C0, GET RESPONSE with exact Le)
    v = vicc("cryptoflex", VPCD_PORT)
    assert w.wait_present(name, 120), d.log()
    conn = connect(wait_for_reader(ours))
    assert bytes(conn.getATR()) == VICC_ATR["cryptoflex"]
    data, sw = apdu(conn, "C0A40000023F00")
    assert sw == 0x610E, hex(sw)
    data, sw = apdu(conn, "C0C000000E")
    assert sw == 0x9000 and len(data) == 14 and data[4:6] == b"\x3f\x00", data.hex()
    data, sw = apdu(conn, "C084000008")
    assert sw == 0x9000 and len(data) == 8
    close(conn)
    kill(v)
    assert w.wait_empty(name, 30), d.log()
    assert d.running
    assert "vpcd: card inserted, ATR 3be2000040204906" in d.log()


# --------------------------------------------------------------------------- pcsc engine


def test_pcsc_engine_relays_a_local_reader(daemon, pcscd, e2e, wait_for_reader, watch, vicc):
    d = daemon("--card", "pcsc", "--reader", VIRTUAL_PCD_0, "--log-level", "debug")
    d.wait_bound(60)
    # the engine reconnects to the restarted pcscd by itself
    pcscd.restart()
    name = str(wait_for_reader(ours, timeout=60))
    e2e.wait_until(lambda: any(VIRTUAL_PCD_0 == str(r) for r in e2e.list_readers(include_virtual=True)),
                   30, what=f"{VIRTUAL_PCD_0} in pcscd")
    e2e.wait_until(lambda: tcp_listening(PCSCD_VPCD_PORT), 30, what="pcscd's vpcd listening")
    w = watch()
    assert w.wait_empty(name, 30)

    # vicc is the card in pcscd's "Virtual PCD 00 00"; the daemon relays it to our USB reader
    v = vicc("iso7816", PCSCD_VPCD_PORT)
    assert w.wait_present(name, 120), f"the relayed card never arrived\n{d.log()}"
    wait_log(d, r"PC/SC: card inserted in 'Virtual PCD 00 00', ATR 3b951381018073ff01000b", 10)
    conn = connect(wait_for_reader(ours))
    assert bytes(conn.getATR()) == VICC_ATR["iso7816"]
    assert apdu(conn, SELECT_MF_NO_FCI) == (b"", 0x9000)
    first, sw = apdu(conn, "0084000008")           # vicc answers GET CHALLENGE with 8 bytes, whatever Le
    assert sw == 0x9000 and len(first) == 8
    assert apdu(conn, "0084000008")[0] != first
    # the daemon holds the relayed reader exclusively (the default)
    from smartcard.Exceptions import CardConnectionException
    direct = next(r for r in e2e.list_readers(include_virtual=True) if str(r) == VIRTUAL_PCD_0)
    direct_conn = direct.createConnection()
    with pytest.raises(CardConnectionException):
        direct_conn.connect()
    close(direct_conn)
    close(conn)

    # the real card goes: our slot empties
    kill(v)
    assert w.wait_empty(name, 30), d.log()
    assert d.running


# --------------------------------------------------------------------------- VSCard engine


class DaemonHungAfterDetach(AssertionError):
    """The daemon stopped serving after it unbound its gadget.

    It used to: a reply submitted on the bulk-IN endpoint the host had just
    disabled blocked in io_submit (fixed by non-blocking endpoint files)."""


def assert_still_serving(d, e2e, timeout: float = 20) -> None:
    """A new VSCard client gets its Init answered; otherwise kill the hung daemon (it ignores SIGTERM),
    tidy its gadget away so that the fixture's teardown stays clean, and raise DaemonHungAfterDetach."""
    try:
        with VSCardClient(("127.0.0.1", VSCARD_PORT), timeout=timeout) as probe:
            probe.send(VSC_INIT, vsc_init_payload())
            probe.expect(VSC_INIT, timeout)
        return
    except (AssertionError, OSError) as e:
        problem = e
    log = d.log()
    d.kill()
    for name in e2e.gadgets():
        e2e.remove_gadget(name)
    raise DaemonHungAfterDetach(f"the daemon stopped serving after unbinding its gadget ({problem})\n{log}")



def test_vscard_reader_comes_and_goes_with_its_client(daemon, pcscd, e2e, wait_for_reader, watch):
    from smartcard.Exceptions import CardConnectionException

    d = daemon("--card", "passthru", "--log-level", "debug")         # default 127.0.0.1:2001
    wait_log(d, r"reader ready", 60)
    # QEMU's passthrough scenario: no client, no reader on the bus
    assert "ccidgadget" in e2e.gadgets()
    assert not e2e.bound_gadgets() and not e2e.ccid_interfaces()
    e2e.wait_until(lambda: tcp_listening(VSCARD_PORT), 10, what="VSCard listener")

    card = iso_card()
    client = VSCardClient(("127.0.0.1", VSCARD_PORT), on_apdu=card.process_apdu)
    client.init()
    time.sleep(1)
    assert not e2e.ccid_interfaces(), "Init alone must not attach the reader"
    rid = client.add_reader(b"e2e reader")
    e2e.wait_until(e2e.ccid_interfaces, 30, what="CCID interface after ReaderAdd")
    assert e2e.bound_gadgets()
    pcscd.restart()
    name = str(wait_for_reader(ours, timeout=60))
    w = watch()
    assert w.wait_empty(name, 20), "a reader without an ATR is empty"

    # ATR: card present; APDUs relayed both ways
    client.insert(card.atr(), rid)
    assert w.wait_present(name, 30), d.log()
    conn = connect(wait_for_reader(ours))
    assert bytes(conn.getATR()) == card.atr()
    sent = [SELECT_APPLET, "00A4000C020101", "00B0000000", "00A4000C020102", "00B00000001000",
            "00CA005A00"]
    answers = [apdu(conn, a) for a in sent]
    assert [a.hex().upper() for a in client.apdus] == sent          # what the host sent, unchanged
    assert all(sw == 0x9000 for _, sw in answers), answers
    assert answers[2][0].startswith(b"Hello from ccidgadget")
    assert answers[4][0] == bytes(i & 0xFF for i in range(4096))    # a 4 KiB answer in one VSC_APDU
    payload = bytes((i * 7) & 0xFF for i in range(3000))            # a 3000-byte command
    assert apdu(conn, "00A4000C020103")[1] == 0x9000
    assert apdu(conn, "00D6000000%04X%s" % (len(payload), payload.hex()))[1] == 0x9000
    assert client.apdus[-1][7:] == payload
    assert apdu(conn, "00B00000000BB8") == (payload, 0x9000)

    # the client's reader fails an APDU (VSC_Error): the host's transmit fails, nothing hangs
    def fail(apdu_bytes: bytes):
        client.send(VSC_ERROR, struct.pack(">I", VSC_GENERAL_ERROR), rid)
        return None
    client.on_apdu = fail
    t0 = time.monotonic()
    with pytest.raises(CardConnectionException):
        apdu(conn, "00CA005A00")
    assert time.monotonic() - t0 < 15
    client.on_apdu = card.process_apdu
    close(conn)
    conn = connect(wait_for_reader(ours))
    assert apdu(conn, SELECT_APPLET)[1] == 0x9000, "the card works again after a failed APDU"

    # refusals that keep the connection: a second reader, an ATR that is not one
    client.send(VSC_READER_ADD, b"second reader")
    client.expect_error(VSC_CANNOT_ADD_MORE_READERS)
    client.send(VSC_ATR, b"\x00\x01\x02", rid)
    client.expect_error(VSC_GENERAL_ERROR)
    client.send(VSC_FLUSH, reader_id=rid)
    client.expect(VSC_FLUSH_COMPLETE)
    assert apdu(conn, "00CA005A00")[1] == 0x9000, "still the same card"
    close(conn)

    # CardRemove: empty slot, reader still there
    client.remove_card(rid)
    assert w.wait_empty(name, 30), d.log()
    assert e2e.ccid_interfaces()
    client.insert(card.atr(), rid)
    assert w.wait_present(name, 30), d.log()

    # ReaderRemove: the USB device goes away, and the daemon carries on
    client.remove_reader(rid)
    e2e.wait_until(lambda: not e2e.ccid_interfaces(), 30, what="CCID interface gone after ReaderRemove")
    assert not e2e.bound_gadgets()
    client.close()
    assert_still_serving(d, e2e)
    pcscd.restart()
    time.sleep(2)
    assert not any(ours(str(r)) for r in e2e.list_readers()), "pcscd still lists our reader"

    # the next client brings it back; quitting without ReaderRemove takes it away again
    with VSCardClient(("127.0.0.1", VSCARD_PORT), on_apdu=card.process_apdu) as client:
        client.init()
        rid = client.add_reader()
        e2e.wait_until(e2e.ccid_interfaces, 30, what="CCID interface for the second client")
        client.insert(card.atr(), rid)
        pcscd.restart()
        conn = connect(wait_for_reader(ours, timeout=60))
        assert apdu(conn, SELECT_APPLET)[1] == 0x9000
        close(conn)
    e2e.wait_until(lambda: not e2e.ccid_interfaces(), 30, what="CCID interface gone after the client quit")
    assert_still_serving(d, e2e)
    log = d.log()
    assert "VSCard: reader attached" in log and "VSCard: reader detached" in log


MALFORMED = {
    "APDU before Init": vsc_frame(VSC_APDU, bytes.fromhex("00A4000C023F00")),
    "bad Init magic": vsc_frame(VSC_INIT, vsc_init_payload(magic=b"QEMU")),
    "truncated Init": vsc_frame(VSC_INIT, b"VSCD"),
    "unknown message type": vsc_frame(VSC_INIT, vsc_init_payload()) + vsc_frame(42, b"?"),
    "oversize payload": vsc_frame(VSC_INIT, vsc_init_payload()) + HEADER.pack(VSC_APDU, 0, 0x01000000),
    "truncated Error": vsc_frame(VSC_INIT, vsc_init_payload()) + vsc_frame(VSC_ERROR, b"\x00"),
    "APDU answer nobody asked for": vsc_frame(VSC_INIT, vsc_init_payload()) + vsc_frame(VSC_APDU, b"\x90\x00"),
}


def test_vscard_stay_attached_malformed_frames_and_vanishing_client(daemon, pcscd, e2e, wait_for_reader,
                                                                    watch):
    from smartcard.Exceptions import CardConnectionException

    d = daemon("--card", "passthru", "--listen", f"127.0.0.1:{VSCARD_PORT}", "--stay-attached",
               "--log-level", "debug")
    d.wait_bound(60)                    # on the bus before any client, with an empty slot
    pcscd.restart()
    name = str(wait_for_reader(ours, timeout=60))
    w = watch()
    assert w.wait_empty(name, 30)

    # malformed frames: that connection is closed with a logged reason, nothing else changes
    for what, data in MALFORMED.items():
        with VSCardClient(("127.0.0.1", VSCARD_PORT)) as bad:
            bad.send_raw(data)
            assert bad.wait_closed(30), f"{what}: connection not closed"
        assert d.running, d.log()
    closed = re.findall(r"VSCard: closing client \S+: (.*)", d.log())
    assert len(closed) == len(MALFORMED), closed
    # an incompatible major version gets GENERAL_ERROR, then the door
    with VSCardClient(("127.0.0.1", VSCARD_PORT)) as bad:
        bad.send(VSC_INIT, vsc_init_payload(version=1 << 24))
        bad.expect_error(VSC_GENERAL_ERROR)
        assert bad.wait_closed(30)
    assert e2e.ccid_interfaces() and name in [str(r) for r in e2e.list_readers()]

    # the next client works
    card = iso_card()
    client = VSCardClient(("127.0.0.1", VSCARD_PORT), on_apdu=card.process_apdu)
    client.init()
    rid = client.add_reader()
    client.insert(card.atr(), rid)
    assert w.wait_present(name, 30), d.log()
    conn = connect(wait_for_reader(ours))
    assert apdu(conn, SELECT_APPLET)[1] == 0x9000

    # one client per reader: a second one gets CANNOT_ADD_MORE_READERS and is closed
    with VSCardClient(("127.0.0.1", VSCARD_PORT)) as second:
        assert second.expect_error(VSC_CANNOT_ADD_MORE_READERS) == 0xFFFFFFFF
        assert second.wait_closed(30)
    assert apdu(conn, "00CA005A00")[1] == 0x9000

    # the client vanishes while the host waits for an APDU: the APDU fails and the card is gone, at once
    got = threading.Event()

    def hold(apdu_bytes: bytes):
        got.set()
        return None                       # never answered
    client.on_apdu = hold
    vanished_at: list[float] = []

    def vanish():
        if got.wait(60):
            time.sleep(0.5)               # the host is now waiting in SCardTransmit
            vanished_at.append(time.monotonic())
            client.abort()
    killer = threading.Thread(target=vanish)
    killer.start()
    with pytest.raises(CardConnectionException):
        apdu(conn, "00CA005A00")
    failed_at = time.monotonic()
    killer.join(10)
    assert vanished_at, "the APDU never reached the client"
    assert failed_at - vanished_at[0] < 10, f"the host waited {failed_at - vanished_at[0]:.1f} s"
    assert w.wait_empty(name, 20), d.log()
    close(conn)
    assert d.running and e2e.ccid_interfaces(), "stay-attached: the reader stays"

    # and the next client works again; CardRemove and ReaderRemove leave an empty reader
    with VSCardClient(("127.0.0.1", VSCARD_PORT), on_apdu=card.process_apdu) as client:
        client.init()
        rid = client.add_reader()
        client.insert(card.atr(), rid)
        assert w.wait_present(name, 30), d.log()
        conn = connect(wait_for_reader(ours))
        assert bytes(conn.getATR()) == card.atr()
        assert apdu(conn, SELECT_APPLET)[1] == 0x9000
        close(conn)
        client.remove_card(rid)
        assert w.wait_empty(name, 30)
        client.remove_reader(rid)
        time.sleep(1)
        assert e2e.ccid_interfaces() and e2e.bound_gadgets()
    assert d.running
    assert os.path.exists("/sys/kernel/config/usb_gadget/ccidgadget")
