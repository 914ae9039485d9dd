"""VSCard server engine against a client written from the protocol header."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from ccidgadget.cards.base import CardAbsent, CardMute
from ccidgadget.cards.iso import IsoCard
from ccidgadget.passthrough.vscard_server import VSCardServerCard

from .aio import run, wait_until
from .vsc_client import (APDU, ATR, CANNOT_ADD_MORE_READERS, CARD_REMOVE, ERROR, FLUSH,
                         FLUSH_COMPLETE, GENERAL_ERROR, INIT, READER_ADD, READER_REMOVE, SUCCESS,
                         UNDEFINED_READER, VSCClient, init_payload, msg)

ATR_ISO = IsoCard().atr()
SELECT_MF = bytes.fromhex("00A4000C023F00")


async def engine(**kw) -> VSCardServerCard:
    card = VSCardServerCard(listen=("127.0.0.1", 0), **kw)
    await card.start()
    return card


async def client_with_card(card: VSCardServerCard, atr: bytes = ATR_ISO) -> VSCClient:
    c = await VSCClient.connect(card.sockname)
    await c.handshake()
    await c.insert(atr)
    await wait_until(lambda: card.present)
    return c


def echo_9000(apdu: bytes) -> bytes:
    return apdu[:2] + b"\x90\x00"


def test_handshake_reader_add_and_atr_insert():
    async def main():
        changes, attach = [], []
        card = await engine(reader_id=5, attach_callback=attach.append)
        card.add_presence_listener(changes.append)
        assert not card.attached and not card.present
        c = await VSCClient.connect(card.sockname)
        assert await c.handshake() == 5
        await wait_until(lambda: card.attached)
        assert attach == [True] and not card.present
        with pytest.raises(CardAbsent):
            await card.power_on()
        await c.insert(ATR_ISO)
        assert card.present and changes == [True]
        assert await card.power_on() == ATR_ISO
        assert card.describe()["reader_name"] == "Test Reader"
        c.close()
        await wait_until(lambda: not card.attached)
        assert changes == [True, False] and attach == [True, False]
        await card.stop()
    run(main())


def test_apdu_round_trip_with_reader_id():
    async def main():
        card = await engine(reader_id=3)
        c = await client_with_card(card)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        mtype, rid, apdu = await c.recv()
        assert (mtype, rid, apdu) == (APDU, 3, SELECT_MF)
        c.send(APDU, b"\x90\x00")                 # vscclient: reader id 0 in the header
        assert await task == b"\x90\x00"
        for i in range(20):                        # answers stay matched to commands
            t = asyncio.create_task(card.transmit(bytes([0, 0xCA, 0, i])))
            await c.serve_apdu(lambda a: a[3:4] + b"\x90\x00")
            assert await t == bytes([i, 0x90, 0x00])
        await card.stop()
    run(main())


def test_extended_apdu_of_maximum_size():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        await card.power_on()
        big = bytes([0x00, 0xD6, 0x00, 0x00, 0x00, 0xFF, 0xFF]) + bytes(65535) + b"\x00\x00"
        task = asyncio.create_task(card.transmit(big))
        assert await c.serve_apdu(lambda a: bytes(65536) + b"\x90\x00") == big
        assert len(await task) == 65538
        await card.stop()
    run(main())


def test_transmit_needs_power_on():
    async def main():
        card = await engine()
        await client_with_card(card)
        with pytest.raises(CardMute):
            await card.transmit(SELECT_MF)
        await card.stop()
    run(main())


def test_card_remove_fails_pending_apdu():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        assert (await c.recv())[0] == APDU
        c.send(CARD_REMOVE)
        await c.expect_error(SUCCESS)
        with pytest.raises(CardAbsent):
            await task
        assert not card.present and card.attached
        # The late answer to the abandoned APDU is discarded, not fatal.
        c.send(APDU, b"\x90\x00")
        await c.insert(ATR_ISO)
        assert card.present
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c.serve_apdu(echo_9000)
        assert await task == b"\x00\xA4\x90\x00"
        await card.stop()
    run(main())


def test_client_error_fails_apdu_as_mute():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c.recv()
        c.send(ERROR, struct.pack("<I", 5))        # vscclient: host byte order
        with pytest.raises(CardMute):
            await task
        assert card.present
        await card.stop()
    run(main())


def test_bad_atr_is_refused_without_closing():
    async def main():
        card = await engine()
        c = await VSCClient.connect(card.sockname)
        await c.handshake()
        for bad in (b"\x3A\x00", b"\x3B\x95\x13", bytes([0x3B]) + bytes(40)):
            c.send(ATR, bad)
            await c.expect_error(GENERAL_ERROR)
        assert not card.present
        await c.insert(ATR_ISO)
        assert card.present
        await card.stop()
    run(main())


def test_second_reader_refused():
    async def main():
        card = await engine()
        c = await VSCClient.connect(card.sockname)
        await c.handshake()
        c.send(READER_ADD, b"another")
        assert await c.expect_error(CANNOT_ADD_MORE_READERS) == UNDEFINED_READER
        await card.stop()
    run(main())


def test_reader_remove_detaches_and_removes_card():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        c.send(READER_REMOVE)
        await c.expect_error(SUCCESS)
        assert not card.present and not card.attached
        c.send(READER_ADD)
        await c.expect_error(SUCCESS)
        assert card.attached
        await card.stop()
    run(main())


def test_stay_attached():
    async def main():
        attach = []
        card = await engine(stay_attached=True, attach_callback=attach.append)
        assert card.attached
        c = await client_with_card(card)
        c.close()
        await wait_until(lambda: not card.present)
        assert card.attached and attach == []
        await card.stop()
    run(main())


def test_flush_both_ways():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        c.send(FLUSH)
        mtype, _, payload = await c.recv()
        assert (mtype, payload) == (FLUSH_COMPLETE, b"")
        task = asyncio.create_task(card.flush())
        mtype, rid, _ = await c.recv()
        assert mtype == FLUSH and rid == 0
        c.send(FLUSH_COMPLETE)
        await task
        await card.stop()
    run(main())


MALFORMED = {
    "oversize length": msg(APDU, b"") [:8] + struct.pack(">I", 65545),
    "unknown type": msg(42, b"x"),
    "type zero": msg(0),
    "truncated init": msg(INIT, b"VSCD\x00\x00"),
    "init not whole words": msg(INIT, init_payload() + b"\x00"),
    "bad magic": msg(INIT, init_payload(magic=b"DCSV")),
    "apdu before init": msg(APDU, b"\x90\x00"),
    "incompatible major version": msg(INIT, init_payload(version=1 << 21)),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_closes_only_that_connection(name, caplog):
    async def main():
        card = await engine()
        c = await VSCClient.connect(card.sockname)
        c.send_raw(MALFORMED[name])
        assert await c.closed()
        assert any("closing client" in r.getMessage() for r in caplog.records)
        # Nothing else disturbed: the next client works.
        c2 = await client_with_card(card)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c2.serve_apdu(echo_9000)
        assert await task == b"\x00\xA4\x90\x00"
        await card.stop()
    caplog.set_level(logging.INFO)
    run(main())


def test_malformed_after_handshake_and_unsolicited_apdu():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        c.send(APDU, b"\x90\x00")                  # nothing outstanding
        assert await c.closed()
        await wait_until(lambda: not card.present)
        c = await client_with_card(card)
        c.send_raw(msg(APDU)[:4] + b"\x00\x00\x00\x00\xff\xff\xff\xff")
        assert await c.closed()
        await card.stop()
    run(main())


def test_truncated_message_then_disconnect():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        c.send_raw(msg(APDU, b"\x90\x00\x01\x02")[:14])
        await asyncio.sleep(0.05)
        assert card.present
        c.close()
        await wait_until(lambda: not card.present)
        await client_with_card(card)
        await card.stop()
    run(main())


def test_second_client_refused(caplog):
    async def main():
        card = await engine()
        c1 = await client_with_card(card)
        c2 = await VSCClient.connect(card.sockname)
        assert await c2.expect_error(CANNOT_ADD_MORE_READERS) == UNDEFINED_READER
        assert await c2.closed()
        assert any("refused client" in r.getMessage() for r in caplog.records)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c1.serve_apdu(echo_9000)
        assert await task == b"\x00\xA4\x90\x00"
        await card.stop()
    caplog.set_level(logging.INFO)
    run(main())


def test_disconnect_mid_apdu_then_next_client():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c.recv()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        c.writer.transport.abort()
        with pytest.raises(CardAbsent):
            await task
        assert loop.time() - t0 < 0.5
        assert not card.present and not card.attached
        with pytest.raises(CardAbsent):
            await card.transmit(SELECT_MF)
        c2 = await client_with_card(card, atr=bytes.fromhex("3b951381018073ff01000b"))
        assert await card.power_on() == bytes.fromhex("3b951381018073ff01000b")
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c2.serve_apdu(echo_9000)
        assert await task == b"\x00\xA4\x90\x00"
        await card.stop()
    run(main())


def test_apdu_timeout_is_mute_and_drops_client():
    async def main():
        card = await engine(apdu_timeout=0.2)
        c = await client_with_card(card)
        await card.power_on()
        with pytest.raises(CardMute):
            await card.transmit(SELECT_MF)
        assert await c.closed()
        assert not card.present
        await card.stop()
    run(main())


def test_allow_list_refuses_others(caplog):
    async def main():
        card = await engine(allow=["192.0.2.0/24"])
        c = await VSCClient.connect(card.sockname)
        c.send(INIT, init_payload())
        assert await c.closed()
        assert not card.attached
        assert any("allow-list" in r.getMessage() for r in caplog.records)
        await card.stop()
        card = await engine(allow=["127.0.0.0/8", "::1"])
        c = await client_with_card(card)
        assert card.present
        await card.stop()
    caplog.set_level(logging.INFO)
    run(main())


def test_non_loopback_listen_warns(caplog):
    async def main():
        card = VSCardServerCard(listen=("0.0.0.0", 0))
        await card.start()
        await card.stop()
        quiet = VSCardServerCard(listen=("127.0.0.1", 0))
        await quiet.start()
        await quiet.stop()
    caplog.set_level(logging.WARNING)
    run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no authentication" in warnings[0].getMessage()


def test_stop_with_client_connected():
    async def main():
        card = await engine()
        c = await client_with_card(card)
        await card.power_on()
        task = asyncio.create_task(card.transmit(SELECT_MF))
        await c.recv()
        await card.stop()
        with pytest.raises(CardAbsent):
            await task
        assert await c.closed()
        assert not card.present
    run(main())


def test_reader_add_before_init_closes():
    async def main():
        card = await engine()
        c = await VSCClient.connect(card.sockname)
        c.send(READER_ADD)
        assert await c.closed()
        assert not card.attached
        await card.stop()
    run(main())
