"""vpcd server engine with the real vsmartcard vicc (Debian python3-virtualsmartcard)."""

from __future__ import annotations

import asyncio

import pytest

from tests.ci import skip_or_fail

from ccidgadget.passthrough.vpcd_server import VpcdServerCard

from .aio import run, wait_until
from .vicc import ViccUnavailable, ensure_vicc

#: vicc -t iso7816 builds its ATR with makeATR(T=1, direct convention, TA1=0x13).
VICC_ISO7816_ATR = bytes.fromhex("3b951381018073ff01000b")


@pytest.fixture(scope="module")
def vicc_argv():
    try:
        return ensure_vicc()
    except ViccUnavailable as e:
        skip_or_fail(f"vicc unavailable: {e}")


async def start_vicc(argv, port):
    return await asyncio.create_subprocess_exec(
        *argv, "-t", "iso7816", "-H", "127.0.0.1", "-P", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def test_real_vicc_insert_apdu_kill_restart(vicc_argv):
    async def main():
        card = VpcdServerCard(listen=("127.0.0.1", 0))
        await card.start()
        port = card.sockname[1]
        proc = await start_vicc(vicc_argv, port)
        try:
            await wait_until(lambda: card.present, timeout=30)
            assert await card.power_on() == VICC_ISO7816_ATR
            # SELECT MF, no FCI (vicc 3.3 crashes building an FCP under Python 3),
            # then GET CHALLENGE for 8 bytes.
            assert await card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"
            r = await card.transmit(bytes.fromhex("0084000008"))
            assert len(r) == 10 and r[-2:] == b"\x90\x00"
            proc.kill()
            await proc.wait()
            await wait_until(lambda: not card.present, timeout=5)
            proc = await start_vicc(vicc_argv, port)
            await wait_until(lambda: card.present, timeout=30)
            assert await card.power_on() == VICC_ISO7816_ATR
            assert await card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await card.stop()
    run(main(), timeout=90)
