# SPDX-License-Identifier: GPL-3.0-or-later
"""RSA-4096 key generation in slot 0 does not stall slot 1 (README, "How it works"), in process.

A real ReaderService with a PIV card in slot 0 and an ISO card in slot 1, driven with CCID
messages by two host threads (tests/service/slot_stall.py judges the timings).  Slot 0's host also
checks what keeps a real host from timing out meanwhile: time extensions (CCID rev 1.1 §6.2.6,
bmCommandStatus 2) arrive while the card works, so slot 0 is never silent for as long as libccid
waits by default before it gives up on a reader.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ccidgadget.cards import pin
from ccidgadget.cards.iso import ISO_APPLET_AID, IsoCard
from ccidgadget.cards.piv import PivCard
from ccidgadget.daemon.service import ReaderService

from .slot_stall import generate_while_slot1_flows
from .test_reader_service import ICC_POWER_ON, XFR_BLOCK, msg, parse

#: libccid's default read timeout (DEFAULT_COM_READ_TIMEOUT, 3 s): a reader silent for longer fails
HOST_READ_TIMEOUT = 3.0
#: short, so that even a fast generation sees some
TIME_EXTENSION_INTERVAL = 0.05
TIME_EXTENSION = 0x80


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


class TwoSlotHost:
    """The USB host side for two slots: per-slot answers, time extensions recorded with their time."""

    def __init__(self, service: ReaderService) -> None:
        self.service = service
        self.answers = {0: asyncio.Queue(), 1: asyncio.Queue()}
        self.seq = {0: 0, 1: 0}
        self.messages: list[tuple[float, int, int]] = []      # (time, slot, bmCommandStatus) of every message

    def send_bulk_in(self, data: bytes) -> None:
        m = parse(data)
        self.messages.append((time.monotonic(), m["slot"], m["status"] & 0xC0))
        if m["status"] & 0xC0 != TIME_EXTENSION:
            self.answers[m["slot"]].put_nowait(m)

    def interrupt_pending(self) -> None:
        while self.service.pop_interrupt() is not None:
            pass

    async def exchange(self, slot: int, message_type: int, data: bytes = b"", level: int = 0) -> dict:
        self.seq[slot] = (self.seq[slot] + 1) & 0xFF
        self.service.bulk_out(msg(message_type, slot, self.seq[slot], data, level=level), transfer_end=True)
        m = await asyncio.wait_for(self.answers[slot].get(), 60)
        assert m["seq"] == self.seq[slot], m
        return m

    async def transmit(self, slot: int, apdu: bytes) -> bytes:
        m = await self.exchange(slot, XFR_BLOCK, apdu)
        data = m["data"]
        while m["chain"] in (0x01, 0x03):                     # response chaining, as libccid does it
            m = await self.exchange(slot, XFR_BLOCK, level=0x10)
            data += m["data"]
        assert m["status"] & 0x40 == 0, m
        return data

    def longest_silence(self, slot: int, start: float, end: float) -> float:
        """Slot's longest time without any message (answer or time extension) within [start, end]."""
        times = [t for t, s, _ in self.messages if s == slot and start <= t <= end]
        edges = [start, *times, end]
        return max(b - a for a, b in zip(edges, edges[1:]))

    def time_extensions(self, slot: int, start: float, end: float) -> int:
        return sum(1 for t, s, st in self.messages if s == slot and st == TIME_EXTENSION and start <= t <= end)


def test_rsa4096_generation_in_slot_0_does_not_stall_slot_1(tmp_path):
    async def main():
        piv, iso = PivCard.from_directory(tmp_path / "piv"), IsoCard()
        service = ReaderService([piv, iso], time_extension_interval=TIME_EXTENSION_INTERVAL)
        host = TwoSlotHost(service)
        await service.start()
        service.attach(host)
        loop = asyncio.get_running_loop()
        try:
            for slot in (0, 1):
                assert (await host.exchange(slot, ICC_POWER_ON))["status"] == 0
            assert (await host.transmit(1, b"\x00\xA4\x04\x00" + bytes([len(ISO_APPLET_AID)]) + ISO_APPLET_AID
                                        + b"\x00"))[-2:] == b"\x90\x00"

            def through(slot):                    # the host threads' view: a blocking transmit
                return lambda apdu: asyncio.run_coroutine_threadsafe(host.transmit(slot, apdu), loop).result(60)

            report = await asyncio.to_thread(generate_while_slot1_flows, through(0), through(1),
                                             bytes.fromhex("0084000008"))
        finally:
            await service.stop()
        return host, report

    host, report = asyncio.run(main())
    print(report.describe())
    report.check()
    for w in report.judged:
        silence = host.longest_silence(0, w.start, w.end)
        extensions = host.time_extensions(0, w.start, w.end)
        print(f"slot 0: {extensions} time extensions, silent at most {silence * 1000:.0f} ms")
        assert silence < HOST_READ_TIMEOUT, f"slot 0 silent {silence:.2f} s during the generation"
        if w.seconds > 3 * TIME_EXTENSION_INTERVAL:
            assert extensions >= 1, f"no time extension in a {w.seconds:.2f} s generation"
