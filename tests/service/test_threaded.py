# SPDX-License-Identifier: GPL-3.0-or-later
"""Commands an emulated card runs on its worker thread (`Card.transmit_future`): answered through the
worker's future, time-extended while they run, dropped when the host aborts them, and an engine bug is a
hardware error that leaves the slot working."""

from __future__ import annotations

import threading

from ccidgadget.cards.iso import IsoCard
from ccidgadget.daemon.service import ReaderService

from .test_reader_service import ICC_POWER_ON, XFR_BLOCK, ListTransport, exchange, msg, run

SLOW_INS = 0x42            # not in IsoCard.QUICK_INS: runs on the worker


class GatedCard(IsoCard):
    """An ISO card whose INS 42 waits for `gate` on the worker thread; INS 43 is an engine bug."""

    def __init__(self):
        super().__init__(serial="SN1")
        self.gate = threading.Event()
        self.threads: list[str] = []

    def process_apdu(self, apdu: bytes) -> bytes:
        if len(apdu) >= 2 and apdu[1] == SLOW_INS:
            self.threads.append(threading.current_thread().name)
            self.gate.wait(5)
            return b"\x01\x02\x90\x00"
        if len(apdu) >= 2 and apdu[1] == 0x43:
            raise RuntimeError("engine bug")
        return super().process_apdu(apdu)


async def _started(card, **kw):
    service = ReaderService([card], **kw)
    t = ListTransport(service)
    await service.start()
    service.attach(t)
    r = await exchange(t, service, ICC_POWER_ON, seq=0)
    assert r["status"] == 0
    return service, t


def test_a_worker_command_is_answered_from_its_thread_with_time_extensions_meanwhile():
    async def main():
        card = GatedCard()
        service, t = await _started(card, time_extension_interval=0.05)
        service.bulk_out(msg(XFR_BLOCK, seq=1, data=bytes((0, SLOW_INS, 0, 0))), transfer_end=True)
        r = await t.next()
        assert r["status"] == 0x80 and r["seq"] == 1          # time extension while the worker waits
        card.gate.set()
        while r["status"] == 0x80:
            r = await t.next()
        assert r["seq"] == 1 and r["data"] == b"\x01\x02\x90\x00"
        assert card.threads and card.threads[0].startswith("card-") and service.stats[0].apdus == 1
        await service.stop()
    run(main())


def test_an_aborted_worker_command_gets_no_answer_and_the_slot_goes_on():
    async def main():
        card = GatedCard()
        service, t = await _started(card)
        service.bulk_out(msg(XFR_BLOCK, seq=1, data=bytes((0, SLOW_INS, 0, 0))), transfer_end=True)
        service.usb_reset()                                   # the host forgot it: so do we
        card.gate.set()
        service.bulk_out(msg(ICC_POWER_ON, seq=2), transfer_end=True)
        r = await t.next()
        assert r["seq"] == 2 and r["status"] == 0             # the power-on answer, not the dropped one
        r = await exchange(t, service, XFR_BLOCK, seq=3, data=bytes((0, SLOW_INS, 0, 0)))
        assert r["seq"] == 3 and r["data"] == b"\x01\x02\x90\x00"
        assert not t.bulk
        await service.stop()
    run(main())


def test_an_engine_bug_on_the_worker_is_a_hardware_error():
    async def main():
        service, t = await _started(GatedCard())
        r = await exchange(t, service, XFR_BLOCK, seq=1, data=bytes((0, 0x43, 0, 0)))
        assert r["status"] & 0x40 and r["error"] == 0xFB          # failed, HW_ERROR
        assert service.slot_status(0).last_error.startswith("CardHardwareError")
        r = await exchange(t, service, XFR_BLOCK, seq=2, data=bytes((0, 0xCA, 0, 0x5A, 0)))
        assert r["status"] == 0 and r["data"][-2:] in (b"\x90\x00", b"\x6a\x88")
        await service.stop()
    run(main())
