"""vscard-card (the VSCard client front end) against a fake QEMU written from ccid-card-passthru's
behaviour, and against our own VSCard server engine; the command line; the response fitter."""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path

import pytest

from ccidgadget.cards.base import CardMute
from ccidgadget.cards.iso import ISO_APPLET_AID, IsoCard
from ccidgadget.cards.iso7816 import make_atr
from ccidgadget.frontends import vscard_client
from ccidgadget.frontends.vscard_client import (Link, ResponseFitter, control_socket_path, host_atr, parse_links,
                                                run_vscard_card, serve_links)
from ccidgadget.passthrough.vscard_server import VSCardServerCard

from tests.passthrough.vsc_client import (APDU, ATR, CANNOT_ADD_MORE_READERS, CARD_REMOVE, ERROR, INIT, READER_ADD,
                                      READER_REMOVE, SUCCESS, UNDEFINED_READER, init_payload, msg)
from .aio import run

SELECT_ISO = bytes((0, 0xA4, 4, 0, len(ISO_APPLET_AID))) + ISO_APPLET_AID + b"\x00"
SELECT_LARGE = bytes.fromhex("00A4000C020102")
LARGE = bytes(i & 0xFF for i in range(4096))


class FakeQemu:
    """A chardev socket server with ccid-card-passthru behind it (hw/usb/ccid-card-passthru.c):
    Init answered with Init; ReaderAdd, ReaderRemove, ATR and CardRemove answered with VSC_Error;
    an ATR over 40 bytes or not starting 3B/3F refused with GENERAL_ERROR; APDUs sent on request
    and their answers (VSC_APDU or VSC_Error) queued."""

    def __init__(self, refuse_readers: int = 0) -> None:
        self.log: list[tuple[int, bytes]] = []
        self.answers: asyncio.Queue = asyncio.Queue()
        self.connected = asyncio.Event()
        self.inserted = False
        self.atr = b""
        self.refuse_readers = refuse_readers
        self.server = None
        self.port = 0
        self.writer = None
        self.connections = 0

    async def start(self, port: int = 0) -> "FakeQemu":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def start_unix(self, path: Path) -> "FakeQemu":
        self.server = await asyncio.start_unix_server(self._conn, str(path))
        return self

    async def stop(self) -> None:
        self.server.close()
        if self.writer is not None:
            self.writer.close()
        await self.server.wait_closed()

    def types(self) -> list[int]:
        return [t for t, _ in self.log]

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writer, self.connections = w, self.connections + 1
        self.connected.set()
        try:
            while True:
                t, rid, n = struct.unpack(">III", await r.readexactly(12))
                payload = await r.readexactly(n)
                self.log.append((t, payload))
                if t == INIT:
                    w.write(msg(INIT, init_payload(), UNDEFINED_READER))
                elif t == READER_ADD:
                    if self.refuse_readers:
                        self.refuse_readers -= 1
                        w.write(msg(ERROR, struct.pack(">I", CANNOT_ADD_MORE_READERS), UNDEFINED_READER))
                    else:
                        w.write(msg(ERROR, struct.pack(">I", SUCCESS), 0))
                elif t in (READER_REMOVE, CARD_REMOVE):
                    self.inserted = False
                    w.write(msg(ERROR, struct.pack(">I", SUCCESS), rid))
                elif t == ATR:
                    ok = len(payload) <= 40 and payload[:1] in (b"\x3B", b"\x3F")
                    if ok:
                        self.inserted, self.atr = True, payload
                    w.write(msg(ERROR, struct.pack(">I", SUCCESS if ok else 1), rid))
                elif t in (APDU, ERROR):
                    self.answers.put_nowait((t, payload))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.inserted = False
            self.connected.clear()
            w.close()

    async def transmit(self, apdu: bytes, timeout: float = 5.0) -> bytes:
        self.writer.write(msg(APDU, apdu))
        t, payload = await asyncio.wait_for(self.answers.get(), timeout)
        assert t == APDU, f"VSC_Error {payload.hex()} for {apdu.hex()}"
        return payload


async def until(cond, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def linked(card=None, qemu: FakeQemu | None = None, **kw):
    qemu = qemu or await FakeQemu().start()
    card = card or IsoCard()
    await card.start()
    link = Link(card, "127.0.0.1", qemu.port, min_delay=0.01, max_delay=0.05, **kw)
    task = asyncio.create_task(link.run())
    return qemu, card, link, task


async def unlink(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_handshake_atr_and_apdus_as_qemu_sees_them():
    async def main():
        qemu, card, link, task = await linked()
        await until(lambda: qemu.inserted)
        # vscclient's order: Init, ReaderRemove(0) for a reader left behind, ReaderAdd, then the ATR
        assert qemu.types() == [INIT, READER_REMOVE, READER_ADD, ATR]
        assert qemu.log[2][1] == b"ccidgadget"
        assert qemu.atr == host_atr(card.atr()) == make_atr(b"ccidgadget", t0=True, t1=False)
        assert (await qemu.transmit(SELECT_ISO))[-2:] == b"\x90\x00"
        assert link.status().apdus == 1 and link.status().state == "ready"
        await unlink(task)
        # the goodbye: CardRemove, ReaderRemove
        await until(lambda: qemu.types()[-2:] == [CARD_REMOVE, READER_REMOVE])
        await qemu.stop()
    run(main())


def test_long_responses_are_cut_to_374_bytes_and_served_by_get_response():
    async def main():
        qemu, card, link, task = await linked()
        await until(lambda: qemu.inserted)
        await qemu.transmit(SELECT_ISO)
        await qemu.transmit(SELECT_LARGE)
        r = await qemu.transmit(b"\x00\xB0\x00\x00\x00\x10\x00")                 # 4096 bytes, extended Le
        sizes, data = [len(r)], r[:-2]
        while r[-2] == 0x61:
            r = await qemu.transmit(bytes((0, 0xC0, 0, 0, r[-1])))
            sizes.append(len(r))
            data += r[:-2]
        assert r[-2:] == b"\x90\x00" and data == LARGE
        assert sizes[0] == 374 and max(sizes) == 374
        # a short read is the card's own business (256 + SW, no cutting)
        assert await qemu.transmit(b"\x00\xB0\x00\x00\x00") == LARGE[:256] + b"\x90\x00"
        assert link.status().largest_response == 374
        await unlink(task)
        await qemu.stop()
    run(main())


def test_presence_follows_the_card_and_a_failed_command_is_a_vsc_error():
    class Failing(IsoCard):
        def process_apdu(self, apdu):
            if apdu[1] == 0x84:
                raise CardMute("no answer")
            return super().process_apdu(apdu)

    async def main():
        qemu, card, link, task = await linked(Failing())
        await until(lambda: qemu.inserted)
        card.remove()
        await until(lambda: not qemu.inserted)
        assert qemu.types()[-1] == CARD_REMOVE
        card.insert()
        await until(lambda: qemu.inserted)
        qemu.writer.write(msg(APDU, b"\x00\x84\x00\x00\x08"))
        t, payload = await asyncio.wait_for(qemu.answers.get(), 5)
        assert (t, struct.unpack(">I", payload)[0]) == (ERROR, 1)
        assert link.status().errors == 1 and "no answer" in link.status().last_error
        await unlink(task)
        await qemu.stop()
    run(main())


def test_reconnects_with_one_log_line_per_state_change(caplog):
    async def main():
        caplog.set_level(logging.INFO, logger="ccidgadget.frontends.vscard_client")
        qemu, card, link, task = await linked()
        await until(lambda: qemu.inserted)
        port = qemu.port
        await qemu.stop()                              # QEMU quits ...
        await asyncio.sleep(0.5)                       # ... many connection attempts fail meanwhile ...
        qemu2 = await FakeQemu().start(port)           # ... and comes back on the same port
        await until(lambda: qemu2.inserted)
        assert qemu2.types() == [INIT, READER_REMOVE, READER_ADD, ATR]
        assert (await qemu2.transmit(SELECT_ISO))[-2:] == b"\x90\x00"
        await unlink(task)
        await qemu2.stop()
        return port

    port = run(main())
    lines = [r.getMessage() for r in caplog.records if f"127.0.0.1:{port}" in r.getMessage()]
    assert sum("connected; reader added" in m and "dis" not in m for m in lines) == 2, lines
    assert sum("QEMU not reachable" in m for m in lines) == 1, lines
    assert sum("disconnected (QEMU closed the connection)" in m for m in lines) == 1, lines
    assert sum("card inserted" in m for m in lines) == 2 and sum("reader removed" in m for m in lines) == 1, lines


def test_refused_reader_and_protocol_errors_close_and_retry():
    async def main():
        qemu = await FakeQemu(refuse_readers=2).start()
        _, card, link, task = await linked(qemu=qemu)
        await until(lambda: qemu.inserted)
        assert qemu.connections == 3 and link.status().errors == 2
        qemu.writer.write(struct.pack(">III", 77, 0, 0))       # no such message type
        await until(lambda: qemu.connections == 4 and qemu.inserted)
        assert "unknown message type 77" in link.status().last_error
        await unlink(task)
        await qemu.stop()
    run(main())


def test_silent_chardev_is_reported_once(caplog, monkeypatch):
    monkeypatch.setattr(vscard_client, "INIT_WAIT", 0.2)

    async def main():
        caplog.set_level(logging.INFO, logger="ccidgadget.frontends.vscard_client")
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)   # accepts, never answers
        card = IsoCard()
        await card.start()
        link = Link(card, "127.0.0.1", server.sockets[0].getsockname()[1])
        task = asyncio.create_task(link.run())
        await asyncio.sleep(0.6)
        assert link.status().state == "await-init"
        await unlink(task)
        server.close()
    run(main())
    assert sum("has not answered our Init" in r.getMessage() for r in caplog.records) == 1


def test_unix_socket_chardev(tmp_path):
    """-chardev socket,path=PATH,server=on: file permissions instead of an open TCP port."""
    async def main():
        path = tmp_path / "vm1-ccid.sock"
        qemu = await FakeQemu().start_unix(path)
        card = IsoCard()
        await card.start()
        (ns,) = parse_links(["--connect", f"unix:{path}", "--type", "iso"])
        link = Link(card, *ns.connect, min_delay=0.01)
        assert link.name == f"vscard unix:{path}"
        task = asyncio.create_task(link.run())
        await until(lambda: qemu.inserted)
        assert (await qemu.transmit(SELECT_ISO))[-2:] == b"\x90\x00"
        await unlink(task)
        await qemu.stop()
    run(main())
    assert control_socket_path(str(tmp_path / "vm1-ccid.sock"), None).name.startswith("vscard-unix-")


def test_with_our_own_vscard_server_engine():
    """The two halves of the shared codec: `--card passthru` (server) takes a card from vscard-card."""
    async def main():
        server = VSCardServerCard(listen=("127.0.0.1", 0))
        await server.start()
        card = IsoCard()
        await card.start()
        link = Link(card, *server.sockname, min_delay=0.01, max_response=0)
        task = asyncio.create_task(link.run())
        await until(lambda: server.present)
        assert await server.power_on() == host_atr(card.atr())
        assert (await server.transmit(SELECT_ISO))[-2:] == b"\x90\x00"
        await server.transmit(SELECT_LARGE)
        assert await server.transmit(b"\x00\xB0\x00\x00\x00\x00\x00") == LARGE + b"\x90\x00"   # no limit
        card.remove()
        await until(lambda: not server.present)
        await unlink(task)
        await until(lambda: not server.attached)
        await server.stop()
    run(main())


# --------------------------------------------------------------------------- control socket and CLI


def test_insert_remove_status_through_the_control_socket(tmp_path, capsys):
    async def main():
        qemu = await FakeQemu().start()
        card = IsoCard()
        link = Link(card, "127.0.0.1", qemu.port, min_delay=0.01)
        sock = tmp_path / "ctl.sock"
        serving = asyncio.create_task(serve_links([link], [(link, sock)]))
        await until(lambda: qemu.inserted)
        where = ["--connect", f"127.0.0.1:{qemu.port}", "--control", str(sock)]
        assert await asyncio.to_thread(run_vscard_card, [*where, "--remove"]) == 0
        await until(lambda: not qemu.inserted)
        assert await asyncio.to_thread(run_vscard_card, [*where, "--remove"]) == 0
        assert await asyncio.to_thread(run_vscard_card, [*where, "--status"]) == 0
        assert await asyncio.to_thread(run_vscard_card, [*where, "--insert"]) == 0
        await until(lambda: qemu.inserted)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not sock.exists()
        assert await asyncio.to_thread(run_vscard_card, [*where, "--status"]) == 3      # nothing answers now
        await qemu.stop()
    run(main())
    out = capsys.readouterr()
    assert f": empty\n" in out.out and "(it already was)" in out.out and ": card present\n" in out.out
    assert "ready, card absent, emulated; 1 connection(s)" in out.out
    assert "no vscard-card connected to" in out.err


def test_control_socket_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert control_socket_path("127.0.0.1", 2001) == tmp_path / "ccidgadget" / "vscard-127.0.0.1-2001.sock"
    assert control_socket_path("::1", 2001).name == "vscard-__1-2001.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert control_socket_path("h", 1).parent == Path.home() / ".local/share/ccidgadget/run"


def test_parse_links():
    a, b = parse_links(["--state-dir", "/s", "-v", "--connect", "127.0.0.1:2001", "--type", "piv",
                        "--connect=[::1]:2002", "--type", "cac", "--state-dir", "/t"])
    assert (a.connect, a.card_type, str(a.state_dir), a.verbose) == (("127.0.0.1", 2001), "piv", "/s", True)
    assert (b.connect, b.card_type, str(b.state_dir), b.verbose) == (("::1", 2002), "cac", "/t", True)
    assert a.reader_name == "ccidgadget piv" and a.max_response == 374 and a.engine == "emulated"
    (p,) = parse_links(["--connect", "q:3", "--card", "pcsc", "--reader", "Yubico*"])
    assert (p.engine, p.reader, p.reader_name) == ("pcsc", "Yubico*", "ccidgadget pcsc")


@pytest.mark.parametrize("argv, why", [
    ([], "--connect"),
    (["--type", "piv"], "--connect"),
    (["--connect", "h:99999"], "port must be"),
    (["--connect", "unix:"], "needs the socket's path"),
    (["--connect", "h:1", "--connect", "h:1"], "given twice"),
    (["--connect", "h:1", "--card", "pcsc"], "needs --reader"),
    (["--connect", "h:1", "--max-response", "2"], "at least 3"),
    (["--connect", "h:1", "--remove", "--connect", "h:2"], "every --connect"),
    (["--connect", "h:1", "--once", "--connect", "h:2"], "whole process"),
    (["--connect", "h:1", "--type", "openpgp-not-yet"], "invalid choice"),
])
def test_parse_links_errors(argv, why, capsys):
    with pytest.raises(SystemExit) as e:
        parse_links(argv)
    assert e.value.code == 2 and why in capsys.readouterr().err


def test_cac_without_certificates_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"vscard-card: .*a CAC card needs exactly (three|3)"):
        run_vscard_card(["--connect", "127.0.0.1:1", "--type", "cac", "--state-dir", str(tmp_path)])


# --------------------------------------------------------------------------- ATR and response fitting


def test_host_atr_offers_t0():
    t1_only = make_atr(b"ccidgadget")                                          # 3B 8A 81 31 FE ...
    assert host_atr(t1_only) == bytes.fromhex("3B0A") + b"ccidgadget"
    assert host_atr(make_atr(b"hist", t0=True, t1=True)) == bytes.fromhex("3B04") + b"hist"
    cac = bytes.fromhex("3B7A18000073667465206364313434")                      # T=0 only: unchanged
    assert host_atr(cac) == cac
    yubikey = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
    assert host_atr(yubikey) == bytes.fromhex("3B0D") + bytes.fromhex("8073C021C057597562694B6579")   # TCK 40 dropped
    assert host_atr(b"\x3B") == b"\x3B"                                        # not an ATR: QEMU refuses it


def test_response_fitter():
    f = ResponseFitter(374)
    whole = bytes(range(256)) * 4 + b"\x62\x82"                                # data + a warning SW
    first = f.fit(whole)
    assert len(first) == 374 and first[-2:] == b"\x61\x00" and f.pending == 1024 - 372
    assert f.intercept(b"\x00\xC0\x00\x00\x10") == whole[372:388] + b"\x61\x00"   # Le 16
    assert f.intercept(b"\x00\xC0\x00\x00\x00\x02\x00") == whole[388:760] + b"\x61\x00"   # ext Le: 372 at most
    rest = f.intercept(b"\x00\xC0\x00\x00\x00")
    assert rest == whole[760:1016] + b"\x61\x08"
    assert f.intercept(b"\x00\xC0\x00\x00") == whole[1016:1024] + b"\x62\x82"   # the card's own SW, last
    assert f.intercept(b"\x00\xC0\x00\x00\x00") is None                         # nothing left: to the card
    f.fit(whole)
    assert f.intercept(b"\x00\xA4\x04\x00\x00") is None and f.pending == 0     # another command drops the rest
    f.fit(whole)
    assert f.intercept(b"\x00\xC0\x01\x00\x00") is None and f.pending == 0     # not a plain GET RESPONSE
    assert f.fit(b"\x90\x00") == b"\x90\x00" and f.fit(bytes(372) + b"\x90\x00") == bytes(372) + b"\x90\x00"
    assert ResponseFitter(0).fit(whole) == whole
    with pytest.raises(ValueError):
        ResponseFitter(2)
