#!/usr/bin/env python3
"""In-process throughput of the CCID core and of the reader service (no USB, no kernel).

1. core: XfrBlock messages/s through Reader.receive_bulk_out -> Transmit event ->
   a trivial card answering 90 00 at once -> card_answer -> BulkIn message.
2. service: the same through ReaderService on an asyncio loop with the small ISO
   card (worker-thread hop per APDU, as every emulated card does).
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccidgadget.ccid import BulkIn, PowerOn, Reader, ReaderConfig, Transmit  # noqa: E402

ATR = bytes.fromhex("3b8a8131fe456363696467616467657498")


def xfr(seq: int, apdu: bytes) -> bytes:
    return struct.pack("<BIBBBBB", 0x6F, len(apdu), 0, seq & 0xFF, 0, 0, 0) + apdu


def bench_core(n: int = 200_000) -> float:
    reader = Reader(ReaderConfig())
    reader.set_card_present(0, True)
    reader.receive_bulk_out(struct.pack("<BIBBBBB", 0x62, 0, 0, 0, 0, 0, 0), transfer_end=True)
    for e in reader.next_events():
        if isinstance(e, PowerOn):
            reader.card_answer(e.token, ATR)
    reader.next_events()
    reader.pop_interrupt()
    apdu = bytes.fromhex("00A4040007A000000308000010")
    messages = [xfr(i, apdu) for i in range(256)]
    ok = b"\x90\x00"
    t0 = time.perf_counter()
    for i in range(n):
        reader.receive_bulk_out(messages[i & 0xFF], transfer_end=True)
        for e in reader.next_events():
            if isinstance(e, Transmit):
                reader.card_answer(e.token, ok)
        for e in reader.next_events():
            assert isinstance(e, BulkIn)
    return n / (time.perf_counter() - t0)


def bench_service(n: int = 5_000) -> tuple[float, float]:
    from ccidgadget.cards.iso import IsoCard
    from ccidgadget.daemon.service import ReaderService

    async def main():
        service = ReaderService([IsoCard()])
        done = asyncio.Event()
        latencies = []

        class T:
            def send_bulk_in(self, data):
                done.set()

            def interrupt_pending(self):
                while service.pop_interrupt():
                    pass

        await service.start()
        service.attach(T())
        service.bulk_out(struct.pack("<BIBBBBB", 0x62, 0, 0, 0, 0, 0, 0), transfer_end=True)
        await done.wait()
        apdu = bytes.fromhex("00CA005A00")
        t0 = time.perf_counter()
        for i in range(n):
            done.clear()
            t = time.perf_counter()
            service.bulk_out(xfr(i, apdu), transfer_end=True)
            await done.wait()
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        await service.stop()
        latencies.sort()
        return n / total, latencies[len(latencies) // 2]

    return asyncio.run(main())


def main() -> None:
    rate = bench_core()
    print(f"core: {rate:,.0f} XfrBlock messages/s (parse -> trivial card -> encode, one thread)")
    rate, median = bench_service()
    print(f"service + ISO card: {rate:,.0f} APDUs/s, median {median * 1e6:.0f} us per XfrBlock "
          "(asyncio loop; this read-only command runs inline, crypto and writes hop to the card thread)")


if __name__ == "__main__":
    main()
