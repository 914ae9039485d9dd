"""The network engines' fast path (`transmit_future`, what the reader service uses): the client's answer
resolves the future, answers stay matched, a timeout is a mute card and drops the client with one timer
for a stream of APDUs, a cancelled future drops the client, a busy engine says None, and the engine's
lock (`netserver.Exclusive`) is handed from one holder to the next."""

from __future__ import annotations

import asyncio

import pytest

from ccidgadget.cards.base import CardAbsent, CardMute
from ccidgadget.passthrough.netserver import Exclusive

from .aio import run, wait_until
from .test_vscard_server import SELECT_MF, client_with_card, echo_9000, engine
from .vsc_client import APDU


def test_answers_resolve_the_futures_in_order():
    async def main():
        card = await engine(reader_id=3)
        c = await client_with_card(card)
        await card.power_on()
        for i in range(20):
            fut = card.transmit_future(bytes([0, 0xCA, 0, i]))
            await c.serve_apdu(lambda a: a[3:4] + b"\x90\x00")
            assert await fut == bytes([i, 0x90, 0x00])
        await card.stop()
    run(main())


def test_one_deadline_timer_for_a_stream_and_a_timeout_is_mute():
    async def main():
        card = await engine(apdu_timeout=0.3)
        c = await client_with_card(card)
        await card.power_on()
        timers = set()
        for _ in range(5):
            fut = card.transmit_future(SELECT_MF)
            timers.add(id(card._deadline_timer))
            await c.serve_apdu(echo_9000)
            assert await fut == b"\x00\xA4\x90\x00"
        assert len(timers) == 1                        # armed once, not per APDU
        fut = card.transmit_future(SELECT_MF)
        assert (await c.recv())[0] == APDU             # ...and never answered
        with pytest.raises(CardMute):
            await fut
        assert await c.closed()
        assert not card.present
        await card.stop()
    run(main())


def test_a_cancelled_future_drops_the_client_and_frees_the_engine():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        await card.power_on()
        fut = card.transmit_future(SELECT_MF)
        assert card.transmit_future(SELECT_MF) is None   # busy: one exchange at a time
        fut.cancel()
        assert await c.closed()
        await wait_until(lambda: not card._lock.locked())
        with pytest.raises(CardAbsent):
            card.transmit_future(SELECT_MF)
        await card.stop()
    run(main())


def test_exclusive_hands_over_to_waiters_in_order_and_skips_cancelled_ones():
    async def main():
        lock, order = Exclusive(), []
        assert lock.try_acquire() and not lock.try_acquire()

        async def user(name):
            async with lock:
                order.append(name)
        first = asyncio.create_task(user("first"))
        gone = asyncio.create_task(user("gone"))
        last = asyncio.create_task(user("last"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        lock.release()
        await asyncio.gather(first, last)
        assert order == ["first", "last"] and not lock.locked()
        assert gone.cancelled()
    run(main())


def test_vpcd_futures_carry_apdus_and_refuse_what_vpcd_cannot_frame():
    from ccidgadget.cards.base import CardHardwareError
    from ccidgadget.cards.iso import IsoCard

    from .fake_vicc import FakeVicc
    from .test_vpcd_server import engine as vpcd_engine

    async def main():
        card = await vpcd_engine()
        iso = IsoCard()
        iso.reset()
        vicc = await FakeVicc(card.sockname, atr=iso.atr(), answer=iso.process_apdu).start()
        await wait_until(lambda: card.present)
        await card.power_on()
        assert await card.transmit_future(SELECT_MF) == b"\x90\x00"
        assert await card.transmit_future(bytes.fromhex("00A404000BF06363696467616467657400")) != b""
        with pytest.raises(CardHardwareError):
            card.transmit_future(b"\x00")                 # one byte would be read as a control code
        vicc.close()
        await wait_until(lambda: not card.present)
        with pytest.raises(CardAbsent):
            card.transmit_future(SELECT_MF)
        await card.stop()
    run(main())
