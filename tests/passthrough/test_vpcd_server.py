"""vpcd server engine (vicc connects to us) against a fake vicc."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ccidgadget.cards.base import CardAbsent, CardHardwareError, CardMute
from ccidgadget.cards.iso import IsoCard
from ccidgadget.passthrough.vpcd_server import VpcdServerCard

from .aio import run, wait_until
from .fake_vicc import VICC_ATR, FakeVicc

SELECT_MF = bytes.fromhex("00A4000C023F00")


async def engine(**kw) -> VpcdServerCard:
    card = VpcdServerCard(listen=("127.0.0.1", 0), **kw)
    await card.start()
    return card


def test_vicc_connect_is_insertion_and_apdus_flow():
    async def main():
        card = await engine()
        changes = []
        card.add_presence_listener(changes.append)
        iso = IsoCard()
        iso.reset()
        vicc = await FakeVicc(card.sockname, atr=iso.atr(), answer=iso.process_apdu).start()
        await wait_until(lambda: card.present)
        assert vicc.log == ["atr"]
        assert await card.power_on() == iso.atr()
        assert vicc.log == ["atr", "on", "atr"]
        assert await card.transmit(SELECT_MF) == b"\x90\x00"
        # SELECT the applet, EF.LARGE, then a 4 KiB extended READ BINARY.
        assert (await card.transmit(bytes.fromhex("00A404000BF06363696467616467657400")))[-2:] == b"\x90\x00"
        assert await card.transmit(bytes.fromhex("00A4000C020102")) == b"\x90\x00"
        r = await card.transmit(bytes.fromhex("00B00000001000"))
        assert r == bytes(i & 0xFF for i in range(4096)) + b"\x90\x00"
        assert await card.power_on() == iso.atr()          # second power on is a reset
        assert vicc.log[-2:] == ["reset", "atr"]
        await card.power_off()
        await asyncio.sleep(0.05)
        assert vicc.log[-1] == "off"
        with pytest.raises(CardMute):
            await card.transmit(SELECT_MF)
        vicc.close()
        await wait_until(lambda: not card.present)
        assert changes == [True, False]
        await card.stop()
    run(main())


def test_disconnect_mid_apdu_then_next_client():
    async def main():
        card = await engine()
        vicc = await FakeVicc(card.sockname).start()
        await wait_until(lambda: card.present)
        await card.power_on()
        vicc.hold.clear()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await asyncio.wait_for(vicc.got_apdu.wait(), 5)
        t0 = asyncio.get_running_loop().time()
        vicc.close()
        with pytest.raises(CardAbsent):
            await task
        assert asyncio.get_running_loop().time() - t0 < 0.5
        assert not card.present
        vicc2 = await FakeVicc(card.sockname, atr=bytes.fromhex("3b00")).start()
        await wait_until(lambda: card.present)
        assert await card.power_on() == b"\x3b\x00"
        assert await card.transmit(SELECT_MF) == b"\x90\x00"
        vicc2.close()
        await card.stop()
    run(main())


def test_empty_atr_is_no_card_until_one_appears():
    async def main():
        card = await engine(absent_poll_interval=0.05)
        vicc = await FakeVicc(card.sockname, atr=b"").start()
        await asyncio.sleep(0.2)
        assert not card.present and vicc.log.count("atr") >= 2
        with pytest.raises(CardAbsent):
            await card.transmit(SELECT_MF)
        vicc.atr = VICC_ATR
        await wait_until(lambda: card.present)
        vicc.close()
        await card.stop()
    run(main())


def test_timeout_is_mute_and_drops_client(caplog):
    async def main():
        card = await engine(response_timeout=0.2)
        vicc = await FakeVicc(card.sockname).start()
        await wait_until(lambda: card.present)
        await card.power_on()
        vicc.hold.clear()
        with pytest.raises(CardMute):
            await card.transmit(SELECT_MF)
        vicc.hold.set()
        await vicc.closed()
        assert not card.present
        assert any("no answer" in r.getMessage() for r in caplog.records)
        await card.stop()
    caplog.set_level(logging.INFO)
    run(main())


def test_unsolicited_message_closes_that_client_only(caplog):
    async def main():
        card = await engine()
        vicc = await FakeVicc(card.sockname).start()
        await wait_until(lambda: card.present)
        vicc.writer.write(b"\x00\x02\x90\x00")
        await vicc.closed()
        await wait_until(lambda: not card.present)
        assert any("unsolicited" in r.getMessage() for r in caplog.records)
        vicc2 = await FakeVicc(card.sockname).start()
        await wait_until(lambda: card.present)
        await card.power_on()
        assert await card.transmit(SELECT_MF) == b"\x90\x00"
        vicc2.close()
        await card.stop()
    caplog.set_level(logging.INFO)
    run(main())


def test_bad_atr_closes_client():
    async def main():
        card = await engine()
        vicc = await FakeVicc(card.sockname, atr=b"\x12\x34\x56").start()
        await vicc.closed()
        assert not card.present
        await card.stop()
    run(main())


def test_second_client_refused(caplog):
    async def main():
        card = await engine()
        vicc = await FakeVicc(card.sockname).start()
        await wait_until(lambda: card.present)
        vicc2 = await FakeVicc(card.sockname).start()
        await vicc2.closed()
        assert vicc2.log == ["eof"]
        assert any("refused client" in r.getMessage() for r in caplog.records)
        await card.power_on()
        assert await card.transmit(SELECT_MF) == b"\x90\x00"
        vicc.close()
        await card.stop()
    caplog.set_level(logging.INFO)
    run(main())


def test_allow_list_and_warning(caplog):
    async def main():
        card = await engine(allow=["10.0.0.0/8"])
        vicc = await FakeVicc(card.sockname).start()
        await vicc.closed()
        assert not card.present
        await card.stop()
        exposed = VpcdServerCard(listen=("0.0.0.0", 0))
        await exposed.start()
        await exposed.stop()
    caplog.set_level(logging.INFO)
    run(main())
    msgs = [r.getMessage() for r in caplog.records]
    assert any("allow-list" in m for m in msgs)
    assert any("no authentication" in m for m in msgs if "0.0.0.0" in m)


def test_commands_the_protocol_cannot_carry():
    async def main():
        card = await engine()
        vicc = await FakeVicc(card.sockname).start()
        await wait_until(lambda: card.present)
        await card.power_on()
        with pytest.raises(CardHardwareError):
            await card.transmit(b"\x00")
        with pytest.raises(CardHardwareError):
            await card.transmit(bytes(0x10000))
        big = bytes([0, 0xD6, 0, 0, 0, 0xFF, 0xF6]) + bytes(0xFFF6) + b"\x00\x00"
        assert len(big) == 0xFFFF
        assert await card.transmit(big) == b"\x90\x00"
        vicc.close()
        await card.stop()
    run(main())


def test_rapdu_too_short_is_mute():
    async def main():
        card = await engine()
        vicc = await FakeVicc(card.sockname, answer=lambda a: b"\x90").start()
        await wait_until(lambda: card.present)
        await card.power_on()
        with pytest.raises(CardMute):
            await card.transmit(SELECT_MF)
        vicc.close()
        await card.stop()
    run(main())
