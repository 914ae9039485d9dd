"""vpcd client front end against a fake vpcd written from the protocol description."""

from __future__ import annotations

import asyncio
import struct

import pytest

from ccidgadget.cards.iso import IsoCard
from ccidgadget.frontends import vpcd_client
from ccidgadget.frontends.vpcd_client import main_vpcd_card, serve_card_to_vpcd

from .aio import run

OFF, ON, RESET, GET_ATR = b"\x00", b"\x01", b"\x02", b"\x04"


class FakeVpcd:
    """Listens like vpcd; each accepted card connection is queued."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue = asyncio.Queue()
        self.server = None
        self.port = 0

    async def start(self, port: int = 0) -> "FakeVpcd":
        self.server = await asyncio.start_server(
            lambda r, w: self.conns.put_nowait((r, w)), "127.0.0.1", port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def accept(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.conns.get(), timeout)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def send(w, payload: bytes) -> None:
    w.write(struct.pack(">H", len(payload)) + payload)
    await w.drain()


async def recv(r, timeout: float = 5.0) -> bytes:
    (n,) = struct.unpack(">H", await asyncio.wait_for(r.readexactly(2), timeout))
    return await asyncio.wait_for(r.readexactly(n), timeout)


async def ask(r, w, payload: bytes) -> bytes:
    await send(w, payload)
    return await recv(r)


async def eof(r, timeout: float = 5.0) -> bool:
    return await asyncio.wait_for(r.read(), timeout) == b""


def test_answers_vpcd_like_vicc():
    async def main():
        vpcd = await FakeVpcd().start()
        card = IsoCard()
        await card.start()
        task = asyncio.create_task(serve_card_to_vpcd(card, "127.0.0.1", vpcd.port))
        r, w = await vpcd.accept()
        # pcscd polls presence with get ATR: first answer powers the card on once.
        assert await ask(r, w, GET_ATR) == card.atr()
        assert await ask(r, w, GET_ATR) == card.atr()
        await send(w, ON)
        assert await ask(r, w, GET_ATR) == card.atr()
        assert (await ask(r, w, bytes.fromhex("00A404000BF06363696467616467657400")))[-2:] == b"\x90\x00"
        assert await ask(r, w, bytes.fromhex("00A4000C020102")) == b"\x90\x00"
        big = await ask(r, w, bytes.fromhex("00B00000001000"))       # extended Le 4096
        assert big == bytes(i & 0xFF for i in range(4096)) + b"\x90\x00"
        await send(w, RESET)
        assert await ask(r, w, bytes.fromhex("00B00000001000")) == b"\x69\x86"  # applet deselected
        await send(w, OFF)
        # A card engine that is powered off fails the APDU: vpcd needs an answer anyway.
        assert await ask(r, w, bytes.fromhex("0084000008")) == b"\x6F\x00"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eof(r)
        await card.stop()
        await vpcd.stop()
    run(main())


def test_card_removal_disconnects_and_insertion_reconnects():
    async def main():
        vpcd = await FakeVpcd().start()
        card = IsoCard(inserted=False)
        await card.start()
        task = asyncio.create_task(serve_card_to_vpcd(card, "127.0.0.1", vpcd.port))
        await asyncio.sleep(0.3)
        assert vpcd.conns.empty()                  # no card, no connection
        card.insert()
        r, w = await vpcd.accept()
        assert await ask(r, w, GET_ATR) == card.atr()
        card.remove()
        assert await eof(r)                        # vpcd sees the reader empty
        card.insert()
        r, w = await vpcd.accept()
        assert await ask(r, w, GET_ATR) == card.atr()
        task.cancel()
        await card.stop()
        await vpcd.stop()
    run(main())


def test_reconnects_when_vpcd_restarts():
    async def main():
        vpcd = await FakeVpcd().start()
        port = vpcd.port
        card = IsoCard()
        await card.start()
        task = asyncio.create_task(serve_card_to_vpcd(card, "127.0.0.1", port))
        r, w = await vpcd.accept()
        assert await ask(r, w, GET_ATR) == card.atr()
        w.close()
        await vpcd.stop()                           # pcscd goes away ...
        await asyncio.sleep(0.5)
        vpcd = await FakeVpcd().start(port)         # ... and comes back
        r, w = await vpcd.accept(timeout=10)
        assert await ask(r, w, GET_ATR) == card.atr()
        task.cancel()
        await card.stop()
        await vpcd.stop()
    run(main())


def test_no_reconnect_mode():
    async def main():
        card = IsoCard()
        await card.start()
        vpcd = await FakeVpcd().start()
        port = vpcd.port
        task = asyncio.create_task(serve_card_to_vpcd(card, "127.0.0.1", port, reconnect=False))
        r, w = await vpcd.accept()
        w.close()
        await asyncio.wait_for(task, 5)             # returns when the connection ends
        await vpcd.stop()
        with pytest.raises(OSError):
            await serve_card_to_vpcd(card, "127.0.0.1", port, reconnect=False)
        await card.stop()
    run(main())


def test_empty_atr_when_absent_then_disconnect():
    async def main():
        vpcd = await FakeVpcd().start()
        card = IsoCard()
        await card.start()
        task = asyncio.create_task(serve_card_to_vpcd(card, "127.0.0.1", vpcd.port))
        r, w = await vpcd.accept()
        # Make the card absent without a presence event reaching us first.
        card._present = False
        assert await ask(r, w, GET_ATR) == b""
        assert await eof(r)
        task.cancel()
        await card.stop()
        await vpcd.stop()
    run(main())


def test_command_line(monkeypatch):
    seen = {}

    async def fake_serve(card, host, port, *, reconnect):
        seen.update(card=card, host=host, port=port, reconnect=reconnect)

    monkeypatch.setattr(vpcd_client, "serve_card_to_vpcd", fake_serve)
    assert main_vpcd_card(["--type", "iso", "--port", "35964", "--once"]) == 0
    assert isinstance(seen["card"], IsoCard)
    assert (seen["host"], seen["port"], seen["reconnect"]) == ("127.0.0.1", 35964, False)
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    vpcd_client.add_vpcd_card_subcommand(sub, lambda args: IsoCard())
    args = parser.parse_args(["vpcd-card", "--type", "piv", "--host", "::1"])
    assert args.card_type == "piv" and args.host == "::1" and args.func(args) == 0
    with pytest.raises(SystemExit, match="a CAC card needs exactly 3 certificates"):
        main_vpcd_card(["--type", "cac"])           # a CAC card needs its three certificates


def test_command_line_builds_a_persistent_piv_card(monkeypatch, tmp_path):
    seen = {}

    async def fake_serve(card, host, port, *, reconnect):
        seen["card"] = card

    monkeypatch.setattr(vpcd_client, "serve_card_to_vpcd", fake_serve)
    assert main_vpcd_card(["--type", "piv", "--state-dir", str(tmp_path), "--once"]) == 0
    assert type(seen["card"]).__name__ == "PivCard"
    assert (tmp_path / "cards" / "slot0-piv").is_dir()


def test_config_gives_the_vault_options(monkeypatch, tmp_path):
    """A card bound to a device secret opens with `--config` naming that secret, and only with it."""
    from ccidgadget.cards import pin
    from ccidgadget.cards.device_secret import create_file_secret
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)
    seen = {}

    async def fake_serve(card, host, port, *, reconnect):
        seen["card"] = card

    monkeypatch.setattr(vpcd_client, "serve_card_to_vpcd", fake_serve)
    secret = tmp_path / "device.key"
    create_file_secret(secret)
    conf = tmp_path / "ccidgadget.toml"
    conf.write_text(f'[vault]\ndevice_secret = "file"\ndevice_secret_path = "{secret}"\nkdf_log2_n = 10\n')
    state = ["--state-dir", str(tmp_path / "state"), "--once"]
    for card_type in ("openpgp", "piv"):
        assert main_vpcd_card(["--type", card_type, "--config", str(conf), *state]) == 0
        card = seen.pop("card")
        assert card.state.vault.device.kind == "file"
        doc = card.store.load()
        assert doc["vault"]["device"]["kind"] == "file"
        assert doc["pw1" if card_type == "openpgp" else "pin"]["kdf"]["n"] == 1024
        assert main_vpcd_card(["--type", card_type, "--config", str(conf), *state]) == 0    # opens again
        assert seen.pop("card").state.vault.uid == card.state.vault.uid
        # without the configuration (and none at the default path) the card is refused, precisely
        monkeypatch.setattr("ccidgadget.options.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
        with pytest.raises(SystemExit, match="bound to device secret 'file'"):
            main_vpcd_card(["--type", card_type, *state])
        monkeypatch.undo()
        monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)
        monkeypatch.setattr(vpcd_client, "serve_card_to_vpcd", fake_serve)
    with pytest.raises(SystemExit, match="configuration: .*absent.toml.* does not exist"):
        main_vpcd_card(["--type", "openpgp", "--config", str(tmp_path / "absent.toml"), *state])
