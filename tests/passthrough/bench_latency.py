"""Added latency per APDU of the network engines over loopback (a benchmark, not a test).

    .venv/bin/python tests/passthrough/bench_latency.py [-n 2000] [--apdu-size 5]

For each engine a minimal peer runs in its own process (blocking sockets,
written from the protocol description) and answers every command at once
with 90 00, so what is measured is the engine plus the TCP loopback round
trip: the latency a network card adds to each APDU before the card itself
does any work.  Each engine is timed twice: with that peer in Python and
with scripts/min_peer.c, the peer in C (no interpreter on the other side).
`card.transmit()` is timed from the event loop, as the CCID reader will call
it.  The emulated ISO card's own transmit and the floors of any asyncio
relay (a 12-byte round trip to a C echo peer, from C and from asyncio) are
printed for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import min_peer  # noqa: E402

from ccidgadget.cards.iso import IsoCard  # noqa: E402
from ccidgadget.passthrough.vpcd_server import VpcdServerCard  # noqa: E402
from ccidgadget.passthrough.vscard_server import VSCardServerCard  # noqa: E402

ATR = bytes.fromhex("3b951381018073ff01000b")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def vscard_peer(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(t: int, payload: bytes = b"") -> None:
        s.sendall(struct.pack(">III", t, 0, len(payload)) + payload)

    def recv():
        t, rid, n = struct.unpack(">III", _recv_exact(s, 12))
        return t, _recv_exact(s, n)

    send(1, b"VSCD" + struct.pack(">II", 2, 0))        # Init
    recv()
    send(3)                                             # ReaderAdd
    recv()
    send(5, ATR)                                        # ATR
    recv()
    try:
        while True:
            t, _ = recv()
            if t == 7:
                send(7, b"\x90\x00")
    except (EOFError, OSError):
        pass


def vpcd_peer(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            (n,) = struct.unpack(">H", _recv_exact(s, 2))
            msg = _recv_exact(s, n)
            if n == 1:
                if msg == b"\x04":
                    s.sendall(struct.pack(">H", len(ATR)) + ATR)
                continue
            s.sendall(b"\x00\x02\x90\x00")
    except (EOFError, OSError):
        pass


def c_peer(exe: Path, protocol: str, port: int) -> None:
    subprocess.run([str(exe), protocol, str(port), ATR.hex()], check=False)


async def measure(card, apdu: bytes, n: int) -> list[float]:
    await card.power_on()
    for _ in range(50):                                  # warm up
        await card.transmit(apdu)
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await card.transmit(apdu)
        out.append(clock() - t0)
    return out


async def network_engine(card, peer, apdu: bytes, n: int) -> list[float]:
    await card.start()
    proc = multiprocessing.Process(target=peer, args=(card.sockname[1],), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 10
        while not card.present:
            if time.monotonic() > deadline:
                raise RuntimeError("peer did not insert its card")
            await asyncio.sleep(0.01)
        return await measure(card, apdu, n)
    finally:
        await card.stop()
        proc.join(5)


def summary(name: str, samples: list[float]) -> str:
    us = sorted(x * 1e6 for x in samples)
    p90 = us[int(0.9 * (len(us) - 1))]
    return (f"{name:<34} median {statistics.median(us):8.1f} us   p90 {p90:8.1f} us   "
            f"max {us[-1]:8.1f} us   (n={len(us)})")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="APDUs per engine")
    ap.add_argument("--apdu-size", type=int, default=5, help="command APDU length in bytes")
    a = ap.parse_args()
    if a.apdu_size <= 5:
        apdu = b"\x00\xCA\x00\x5A\x00"[:max(4, a.apdu_size)]       # GET DATA, case 1/2
    else:
        lc = min(a.apdu_size - 5, 255)
        apdu = b"\x00\xDA\x01\x01" + bytes([lc]) + bytes(lc)           # PUT DATA, case 3
    print(f"{a.n} APDUs of {len(apdu)} bytes, Python {sys.version.split()[0]}")
    exe = min_peer.build(Path(tempfile.mkdtemp(prefix="ccidgadget-min-peer-")))
    for name, engine, peer, protocol in (("VSCard", VSCardServerCard, vscard_peer, "vscard"),
                                         ("vpcd", VpcdServerCard, vpcd_peer, "vpcd")):
        samples = await network_engine(engine(listen=("127.0.0.1", 0)), peer, apdu, a.n)
        print(summary(f"{name} server engine, Python peer", samples))
        samples = await network_engine(engine(listen=("127.0.0.1", 0)), partial(c_peer, exe, protocol), apdu, a.n)
        print(summary(f"{name} server engine, C peer", samples))
    iso = IsoCard()
    await iso.start()
    print(summary("emulated IsoCard (for comparison)", await measure(iso, b"\x00\xCA\x00\x5A\x00", a.n)))
    await iso.stop()
    echo = subprocess.Popen([str(exe), "echo", "35993"])
    try:
        time.sleep(0.2)
        floors = await asyncio.get_running_loop().run_in_executor(None, min_peer.rtt_floors, exe, 35993, a.n)
    finally:
        echo.terminate()
        echo.wait()
    for name, (median, p90) in floors.items():
        print(f"{'floor: 12-byte round trip, ' + name:<34} median {median * 1e3:8.1f} us   p90 {p90 * 1e3:8.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
