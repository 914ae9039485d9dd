"""End to end through the real pcscd: an IsoCard served by our vpcd client front
end to vsmartcard's vpcd driver, read back by the PC/SC engine.

    IsoCard -> serve_card_to_vpcd -> TCP 35963 -> pcscd + libifdvpcd
            -> "Virtual PCD 00 00" -> PcscCard (pyscard)
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.ci import skip_or_fail

from ccidgadget.cards.iso import IsoCard
from ccidgadget.frontends.vpcd_client import serve_card_to_vpcd
from ccidgadget.passthrough.pcsc import PcscCard

from .aio import run, wait_until
from .pcscd import VPCD_PORT, VPCD_READER, PcscdUnavailable, pcscd_with_vpcd

SELECT_APPLET = bytes.fromhex("00A404000BF06363696467616467657400")
SELECT_LARGE = bytes.fromhex("00A4000C020102")
READ_4K_EXTENDED = bytes.fromhex("00B00000001000")      # Le = 4096, extended (ISO 7816-4 §5.1)


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory):
    try:
        with pcscd_with_vpcd(tmp_path_factory.mktemp("pcscd") / "pcscd.log") as proc:
            yield proc
    except PcscdUnavailable as e:
        skip_or_fail(f"pcscd with vpcd unavailable: {e}")


def _vpcd_port_free_for_a_card() -> bool:
    """vpcd accepts one card per port; another test's card would take ours."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", VPCD_PORT)) == 0


def test_iso_card_through_vpcd_and_pcsc(pcscd):
    assert _vpcd_port_free_for_a_card(), "vpcd is not listening on 35963"

    async def main():
        iso = IsoCard()
        await iso.start()
        front = asyncio.create_task(serve_card_to_vpcd(iso, "127.0.0.1", VPCD_PORT))
        card = PcscCard(reader_pattern=VPCD_READER, exclusive=True)
        await card.start()
        try:
            await wait_until(lambda: card.present, timeout=20)
            assert await card.power_on() == iso.atr()
            r = await card.transmit(SELECT_APPLET)
            assert r[-2:] == b"\x90\x00", r.hex()
            assert await card.transmit(SELECT_LARGE) == b"\x90\x00"
            r = await card.transmit(READ_4K_EXTENDED)
            assert r == bytes(i & 0xFF for i in range(4096)) + b"\x90\x00"
            # Removal and re-insertion of the served card reach PC/SC.
            iso.remove()
            await wait_until(lambda: not card.present, timeout=20)
            iso.insert()
            await wait_until(lambda: card.present, timeout=20)
            assert await card.power_on() == iso.atr()
            assert (await card.transmit(SELECT_APPLET))[-2:] == b"\x90\x00"
        finally:
            await card.stop()
            front.cancel()
            try:
                await front
            except asyncio.CancelledError:
                pass
            await iso.stop()
    run(main(), timeout=90)
