# SPDX-License-Identifier: GPL-3.0-or-later
"""scripts/min_peer.c, the cheapest peer a passthrough engine can have: built on demand, and the two
round-trip floors it gives (see that file and bench_engines.py)."""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("min_peer.c")


def build(directory: Path) -> Path:
    """The peer compiled into directory (once: the source is read-only during a bench)."""
    exe = directory / "min_peer"
    if not exe.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE)], check=True)
    return exe


def pct(values, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def rtt_floors(exe: Path, port: int, n: int) -> dict[str, tuple[float, float]]:
    """(median, p90) in ms of n round trips of 12 bytes to the C echo peer (`min_peer echo`) on port:
    from C, and from an asyncio Protocol as our network engines use."""
    out = subprocess.run([str(exe), "rtt", str(port), str(n)],
                         check=True, capture_output=True, text=True).stdout.split()
    floors = {"C <-> C": (float(out[0]) / 1e3, float(out[1]) / 1e3)}

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = 0
            self.waiter: asyncio.Future | None = None

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= 12 and self.waiter is not None and not self.waiter.done():
                self.got -= 12
                self.waiter.set_result(None)

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times, message = [], bytes(12)
        for _ in range(n):
            t = time.perf_counter()
            client.waiter = loop.create_future()
            transport.write(message)
            await client.waiter
            times.append(time.perf_counter() - t)
        transport.close()
        return times

    ms = [x * 1e3 for x in asyncio.run(run())]
    floors["asyncio <-> C"] = (statistics.median(ms), pct(ms, 0.9))
    return floors
