"""scripts/min_peer.c, the benchmarks' C peer, against our two network engines and its own echo/rtt
modes: a broken peer would leave bench_engines' -min slots empty or its floors wrong."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ccidgadget.cards.iso import IsoCard
from ccidgadget.passthrough.vpcd_server import VpcdServerCard
from ccidgadget.passthrough.vscard_server import VSCardServerCard

from .aio import run, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import min_peer  # noqa: E402

ATR = IsoCard().atr()


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    return min_peer.build(tmp_path_factory.mktemp("min_peer"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("engine, protocol", [(VSCardServerCard, "vscard"), (VpcdServerCard, "vpcd")])
def test_engine_with_the_c_peer(exe, engine, protocol):
    async def main():
        card = engine(listen=("127.0.0.1", 0))
        await card.start()
        peer = await asyncio.create_subprocess_exec(str(exe), protocol, str(card.sockname[1]), ATR.hex())
        try:
            await wait_until(lambda: card.present, timeout=10)
            assert await card.power_on() == ATR
            for apdu in (bytes.fromhex("00CA005A00"), bytes.fromhex("00A4040005A000000001"), bytes(300)):
                assert await card.transmit_future(bytes(apdu)) == b"\x90\x00"
            await card.stop()
            assert await asyncio.wait_for(peer.wait(), 10) == 0      # our close ends the peer
        finally:
            if peer.returncode is None:
                peer.kill()
                await peer.wait()
    run(main())


def test_rtt_floors(exe):
    port = free_port()
    echo = subprocess.Popen([str(exe), "echo", str(port)])
    try:
        floors = min_peer.rtt_floors(exe, port, 50)         # rtt waits for the echo peer to listen
        assert set(floors) == {"C <-> C", "asyncio <-> C"}
        for median, p90 in floors.values():
            assert 0 < median <= p90 < 1000
    finally:
        echo.terminate()
        echo.wait(10)
