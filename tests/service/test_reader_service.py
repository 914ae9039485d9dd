# SPDX-License-Identifier: GPL-3.0-or-later
"""The reader service: CCID core + card engines + a transport, on a real asyncio loop.

The transport is a list; messages are built with struct (CCID rev 1.1 §6),
so this checks the glue the daemon runs, without a kernel.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from ccidgadget.cards.base import Card, CardAbsent
from ccidgadget.cards.iso import ISO_APPLET_AID, IsoCard
from ccidgadget.daemon.service import ReaderService

XFR_BLOCK, ICC_POWER_ON, GET_SLOT_STATUS = 0x6F, 0x62, 0x65


def msg(message_type, slot=0, seq=0, data=b"", b7=0, level=0):
    return struct.pack("<BIBBBBB", message_type, len(data), slot, seq, b7, level & 0xFF, level >> 8) + data


class ListTransport:
    def __init__(self, service):
        self.service = service
        self.bulk: list[bytes] = []
        self.interrupts: list[bytes] = []
        self.arrived = asyncio.Event()

    def send_bulk_in(self, data):
        self.bulk.append(bytes(data))
        self.arrived.set()

    def interrupt_pending(self):
        while (m := self.service.pop_interrupt()) is not None:
            self.interrupts.append(m)

    async def next(self, timeout=5.0):
        while not self.bulk:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
        return parse(self.bulk.pop(0))


def parse(raw):
    mtype, length, slot, seq, status, error, b9 = struct.unpack("<BIBBBBB", raw[:10])
    return dict(type=mtype, slot=slot, seq=seq, status=status, error=error, chain=b9, data=raw[10:])


async def exchange(t, service, message_type, slot=0, seq=0, data=b"", level=0):
    service.bulk_out(msg(message_type, slot, seq, data, level=level), transfer_end=True)
    while True:
        r = await t.next()
        if r["status"] & 0xC0 != 0x80:      # skip time extensions
            return r


async def transmit(t, service, apdu, slot=0, seq=1):
    """XfrBlock with response chaining (wLevelParameter 0x10) like libccid."""
    r = await exchange(t, service, XFR_BLOCK, slot, seq, apdu)
    data = r["data"]
    while r["chain"] in (0x01, 0x03):
        r = await exchange(t, service, XFR_BLOCK, slot, seq, b"", level=0x10)
        data += r["data"]
    return r, data


def run(coro):
    return asyncio.run(coro)


def test_power_on_select_and_read_through_chaining():
    async def main():
        card = IsoCard(serial="SN1")
        service = ReaderService([card])
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        assert t.interrupts and t.interrupts[0][0] == 0x50 and t.interrupts[0][1] & 0x01
        r = await exchange(t, service, ICC_POWER_ON, seq=0)
        assert r["type"] == 0x80 and r["status"] == 0 and r["data"] == card.atr()
        r, data = await transmit(t, service, b"\x00\xA4\x04\x00" + bytes([len(ISO_APPLET_AID)]) + ISO_APPLET_AID)
        assert data[-2:] == b"\x90\x00"
        r, data = await transmit(t, service, bytes.fromhex("00A4000C020102"))
        assert data == b"\x90\x00"
        # 4 KiB extended read: the response is larger than dwMaxCCIDMessageLength.
        r, data = await transmit(t, service, bytes.fromhex("00B00000001000"))
        assert data[-2:] == b"\x90\x00" and data[:-2] == bytes(i & 0xFF for i in range(4096))
        assert service.stats[0].apdus == 3
        await service.stop()
    run(main())


class SlowCard(Card):
    engine = "slow"

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    async def start(self):
        self._set_present(True)

    async def power_on(self):
        return IsoCard().atr()

    async def power_off(self):
        pass

    async def transmit(self, apdu):
        await asyncio.sleep(self.delay)
        return b"\x90\x00"


def test_time_extension_while_card_is_slow_and_other_slot_not_blocked():
    async def main():
        slow, fast = SlowCard(0.35), IsoCard()
        service = ReaderService([slow, fast], time_extension_interval=0.1)
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        for slot in (0, 1):
            await exchange(t, service, ICC_POWER_ON, slot=slot, seq=slot)
        service.bulk_out(msg(XFR_BLOCK, 0, 7, b"\x00\x00\x00\x00"), transfer_end=True)
        # The fast slot answers while slot 0 is still working.
        r = await exchange(t, service, GET_SLOT_STATUS, slot=1, seq=8)
        assert r["slot"] == 1 and r["status"] == 0
        seen_extension = False
        while True:
            r = await t.next()
            if r["status"] == 0x80:
                assert r["seq"] == 7 and r["error"] == 1
                seen_extension = True
                continue
            break
        assert seen_extension and r["seq"] == 7 and r["data"] == b"\x90\x00"
        await service.stop()
    run(main())


class VanishingCard(SlowCard):
    async def transmit(self, apdu):
        self._set_present(False)
        raise CardAbsent("client went away")


def test_engine_losing_the_card_mid_apdu_empties_the_slot():
    async def main():
        card = VanishingCard(0)
        service = ReaderService([card])
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        t.interrupts.clear()
        await exchange(t, service, ICC_POWER_ON)
        r = await exchange(t, service, XFR_BLOCK, seq=2, data=b"\x00\xA4\x00\x00")
        assert r["status"] == 0x42 and r["error"] == 0xFE        # failed, card absent, ICC_MUTE
        assert t.interrupts and t.interrupts[-1][1] & 0x03 == 0x02   # changed, not present
        r = await exchange(t, service, GET_SLOT_STATUS, seq=3)
        assert r["status"] == 0x02
        assert service.slot_status(0).last_error.startswith("CardAbsent")
        await service.stop()
    run(main())


class BrokenCard(SlowCard):
    async def transmit(self, apdu):
        raise RuntimeError("engine bug")


def test_engine_bug_becomes_hardware_error_and_slot_keeps_working():
    async def main():
        service = ReaderService([BrokenCard(0)])
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        await exchange(t, service, ICC_POWER_ON)
        r = await exchange(t, service, XFR_BLOCK, seq=2, data=b"\x00\x00\x00\x00")
        assert r["status"] & 0x40 and r["error"] == 0xFB
        r = await exchange(t, service, GET_SLOT_STATUS, seq=3)
        assert r["status"] == 0x00
        await service.stop()
    run(main())


def test_usb_reset_cancels_pending_work_and_late_answer_is_dropped():
    async def main():
        service = ReaderService([SlowCard(0.2)])
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        await exchange(t, service, ICC_POWER_ON)
        service.bulk_out(msg(XFR_BLOCK, 0, 5, b"\x00\x00\x00\x00"), transfer_end=True)
        service.usb_reset()
        await asyncio.sleep(0.3)
        assert all(parse(m)["seq"] != 5 or parse(m)["status"] & 0x40 for m in t.bulk)
        t.bulk.clear()
        r = await exchange(t, service, GET_SLOT_STATUS, seq=6)
        assert r["seq"] == 6
        await service.stop()
    run(main())


def test_insert_and_remove_are_notified():
    async def main():
        card = IsoCard(inserted=False)
        service = ReaderService([card])
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        t.interrupts.clear()
        card.insert()
        card.remove()
        card.insert()
        assert t.interrupts, "a NotifySlotChange must be sent"
        assert t.interrupts[-1][1] & 0x01 == 0x01
        await service.stop()
    run(main())


@pytest.mark.parametrize("slots", [1, 3])
def test_statuses_list_every_slot(slots):
    async def main():
        service = ReaderService([IsoCard() for _ in range(slots)])
        await service.start()
        info = service.statuses()
        assert [s.slot for s in info] == list(range(slots))
        assert all(s.engine == "emulated" and s.present for s in info)
        assert info[0].to_json()["engine"] == "emulated" and info[0].to_json()["apdus"] == 0
        await service.stop()
    run(main())


def test_replace_card_swaps_the_engine_and_the_host_sees_remove_then_insert():
    async def main():
        old, new = SlowCard(1.0), IsoCard(serial="NEW")
        service = ReaderService([old])
        t = ListTransport(service)
        await service.start()
        service.attach(t)
        await exchange(t, service, ICC_POWER_ON)
        service.bulk_out(msg(XFR_BLOCK, 0, 4, b"\x00\x00\x00\x00"), transfer_end=True)
        t.interrupts.clear()
        await service.replace_card(0, new)
        r = await t.next()
        assert r["seq"] == 4 and r["status"] & 0x40            # the APDU in flight failed
        assert [m[1] & 0x03 for m in t.interrupts][-1] == 0x03   # changed + present (new card)
        old._set_present(False)                                   # the old engine no longer reaches the reader
        r = await exchange(t, service, ICC_POWER_ON, seq=5)
        assert r["data"] == new.atr()
        assert service.stats[0].apdus == 0
        await service.stop()
    run(main())
