"""PC/SC engine against a fake pyscard layer: insert, remove, unplug, replug, pcscd restarts."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ccidgadget.cards.base import CardAbsent, CardMute
from ccidgadget.cards.iso import IsoCard
from ccidgadget.passthrough.pcsc import PcscCard, match_reader

from .aio import run, wait_until
from .fake_scard import FakeSCard

READER = "Gemalto PC Twin Reader 00 00"
ATR = IsoCard().atr()
ATR2 = bytes.fromhex("3b951381018073ff01000b")


async def engine(fake: FakeSCard, pattern: str = "Gemalto*", **kw) -> PcscCard:
    card = PcscCard(pattern, scard=fake, retry_delay=0.05, **kw)
    await card.start()
    return card


def test_match_reader():
    readers = ["Virtual PCD 00 00", "Virtual PCD 00 01", "Yubico YubiKey OTP+FIDO+CCID 01 00"]
    assert match_reader("Virtual PCD 00 01", readers) == "Virtual PCD 00 01"
    assert match_reader("Yubico*", readers) == readers[2]
    assert match_reader("YubiKey", readers) == readers[2]
    assert match_reader("Virtual PCD", readers) == "Virtual PCD 00 00"
    assert match_reader("Nope", readers) is None


def test_insert_transmit_remove():
    async def main():
        fake = FakeSCard()
        fake.plug(READER)
        iso = IsoCard()
        iso.reset()
        fake.answer = iso.process_apdu
        card = await engine(fake)
        changes = []
        card.add_presence_listener(changes.append)
        await wait_until(lambda: card.reader == READER)
        assert not card.present
        with pytest.raises(CardAbsent):
            await card.power_on()
        fake.insert(READER, ATR)
        await wait_until(lambda: card.present)
        assert await card.power_on() == ATR
        assert fake.connects == [(READER, fake.SCARD_SHARE_EXCLUSIVE)]
        assert await card.transmit(bytes.fromhex("00A404000BF06363696467616467657400")) != b""
        assert await card.transmit(bytes.fromhex("00A4000C020102")) == b"\x90\x00"
        big = await card.transmit(bytes.fromhex("00B00000001000"))      # extended, unchanged
        assert big == bytes(i & 0xFF for i in range(4096)) + b"\x90\x00"
        assert fake.transmit_threads and threading.main_thread().name not in fake.transmit_threads
        assert await card.power_on() == ATR                             # a reset this time
        assert fake.reconnects == [fake.SCARD_RESET_CARD]
        fake.remove(READER)
        await wait_until(lambda: not card.present)
        with pytest.raises(CardAbsent):
            await card.transmit(b"\x00\xA4\x00\x0C")
        fake.insert(READER, ATR2)
        await wait_until(lambda: card.present)
        assert await card.power_on() == ATR2
        assert changes == [True, False, True]
        await card.power_off()
        assert fake.disconnects[-1] == fake.SCARD_UNPOWER_CARD
        with pytest.raises(CardMute):
            await card.transmit(b"\x00\xA4\x00\x0C")
        await card.stop()
        assert not card.present
    run(main())


def test_removal_between_watch_and_transmit():
    async def main():
        fake = FakeSCard()
        fake.plug(READER, ATR)
        card = await engine(fake)
        await wait_until(lambda: card.present)
        await card.power_on()
        with fake.cond:                          # removed, and the watcher not told yet
            fake.card_gen[READER] += 1
        with pytest.raises(CardAbsent):
            await card.transmit(b"\x00\xA4\x00\x0C")
        await card.stop()
    run(main())


def test_shared_mode():
    async def main():
        fake = FakeSCard()
        fake.plug(READER, ATR)
        card = await engine(fake, exclusive=False)
        await wait_until(lambda: card.present)
        await card.power_on()
        assert fake.connects == [(READER, fake.SCARD_SHARE_SHARED)]
        await card.power_off()
        assert fake.disconnects == [fake.SCARD_LEAVE_CARD]
        await card.stop()
    run(main())


def test_unplug_and_replug():
    async def main():
        fake = FakeSCard()
        fake.plug("Other Reader 00 00")
        fake.plug(READER, ATR)
        card = await engine(fake)
        await wait_until(lambda: card.present)
        await card.power_on()
        fake.unplug(READER)
        await wait_until(lambda: not card.present and card.reader is None)
        with pytest.raises(CardAbsent):
            await card.power_on()
        fake.plug(READER, ATR2)
        await wait_until(lambda: card.present)
        assert card.reader == READER
        assert await card.power_on() == ATR2
        assert await card.transmit(b"\x00\xA4\x00\x0C") == b"\x90\x00"
        await card.stop()
    run(main())


def test_reader_appears_later():
    async def main():
        fake = FakeSCard()
        card = await engine(fake, pattern="Gemalto")
        await asyncio.sleep(0.2)
        assert not card.present and card.reader is None
        fake.plug(READER, ATR)
        await wait_until(lambda: card.present)
        await card.stop()
    run(main())


def test_pcscd_down_then_up_and_restart():
    async def main():
        fake = FakeSCard()
        fake.plug(READER, ATR)
        fake.service_up = False
        card = await engine(fake)
        await asyncio.sleep(0.2)
        assert not card.present
        fake.set_service(True)
        await wait_until(lambda: card.present)
        await card.power_on()
        fake.set_service(False)                    # pcscd stops
        await wait_until(lambda: not card.present)
        fake.set_service(True)                     # and comes back
        await wait_until(lambda: card.present)
        assert await card.power_on() == ATR
        await card.stop()
    run(main())


def test_stop_cancels_blocking_wait():
    async def main():
        fake = FakeSCard()
        fake.plug(READER, ATR)
        card = await engine(fake, status_wait_ms=600_000)
        await wait_until(lambda: card.present)
        await asyncio.sleep(0.1)                   # watcher now blocked in GetStatusChange
        t0 = asyncio.get_running_loop().time()
        await card.stop()
        assert asyncio.get_running_loop().time() - t0 < 1.0
    run(main())


def test_describe():
    async def main():
        fake = FakeSCard()
        fake.plug(READER, ATR)
        card = await engine(fake)
        await wait_until(lambda: card.present)
        d = card.describe()
        assert d["engine"] == "pcsc" and d["reader"] == READER and d["atr"] == ATR.hex()
        assert d["share"] == "exclusive"
        await card.stop()
    run(main())


def test_card_swapped_between_waits_is_seen():
    async def main():
        fake = FakeSCard()
        fake.plug(READER, ATR)
        card = await engine(fake)
        changes = []
        card.add_presence_listener(changes.append)
        await wait_until(lambda: card.present)
        with fake.cond:                            # out and back in, one wake-up
            fake.readers[READER] = ATR
            fake.card_gen[READER] += 2
            fake.events[READER] += 2
            fake.cond.notify_all()
        await wait_until(lambda: changes[-2:] == [False, True])
        await card.stop()
    run(main())
