"""vpcd server engine: vicc connects to us.

We play the part of vsmartcard's vpcd (the pcscd driver): we listen, a virtual
card such as `vicc -t iso7816 -H 127.0.0.1 -P 35963` connects, and the card
it emulates sits in our slot.  We speak first, as vpcd does: control codes
(power off/on, reset, get ATR) and C-APDUs; the card answers get ATR and
APDUs.  Wire format: `vpcd_protocol.py`.

Not to be confused with the vpcd *client front end*
(`ccidgadget/frontends/vpcd_client.py`), which runs the other way round: it
connects to the real vpcd inside pcscd and offers one of our cards to it.

Presence is "a client is connected and its get-ATR answer is not empty", the
rule vpcd's `vicc_present` applies.  vicc has no message for removing its
card: it disconnects.  A card that does not answer within `response_timeout`
is reported mute and its client dropped, since a late answer would be taken
for the answer to the next command.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from ..cards.base import CardAbsent, CardHardwareError, CardMute
from ..options import Engine
from .atr import atr_problem
from .netserver import Address, ClientConnection, TcpCardServer
from .vpcd_protocol import (CTRL_LEN, MAX_MESSAGE, VPCD_DEFAULT_PORT, Ctrl, VpcdFramer,
                            ctrl_frame, frame)

log = logging.getLogger(__name__)

#: Seconds a card may take to answer get ATR or an APDU.  vpcd itself waits
#: forever (blocking recv); a dead vicc must not hang a slot that long.
VPCD_RESPONSE_TIMEOUT = 30.0

#: While a client is connected but has no card (empty ATR), ask again this often.
VPCD_ABSENT_POLL_INTERVAL = 1.0


class VpcdServerCard(TcpCardServer):
    """A slot whose card is a vicc (or any vpcd-protocol card) that connects to us."""

    engine = Engine.VPCD
    protocol_name = "vpcd"
    default_port = VPCD_DEFAULT_PORT

    def __init__(self, listen: Address = ("127.0.0.1", VPCD_DEFAULT_PORT),
                 allow: Iterable[str] | None = None, *,
                 response_timeout: float | None = VPCD_RESPONSE_TIMEOUT,
                 absent_poll_interval: float = VPCD_ABSENT_POLL_INTERVAL) -> None:
        super().__init__(listen, allow)
        self.response_timeout = response_timeout
        self.absent_poll_interval = absent_poll_interval
        self._framer: VpcdFramer | None = None
        self._atr: bytes | None = None
        self._probe_task: asyncio.Task | None = None

    def describe(self) -> dict:
        d = super().describe()
        d["atr"] = self._atr.hex() if self._atr else None
        return d

    # -- card ---------------------------------------------------------------------
    async def power_on(self) -> bytes:
        async with self._lock:
            if self._client is None:
                raise CardAbsent("no vicc connected")
            # vpcd's IFDHPowerICC: power up (or reset a powered card), then get
            # the ATR.  Both in one write; only the ATR is answered.
            code = Ctrl.RESET if self._powered else Ctrl.ON
            conn = self._client
            atr = await self._request(ctrl_frame(code) + ctrl_frame(Ctrl.ATR), "power on",
                                      self.response_timeout)
            if self._client is not conn:
                # answered, then gone before we resumed (see _probe)
                raise CardAbsent("vicc disconnected")
            if not self._accept_atr(atr):
                raise CardAbsent("vicc has no card")
            self._powered = True
            return atr

    async def power_off(self) -> None:
        self._powered = False
        async with self._lock:
            if self._client is not None:
                self._client.write(ctrl_frame(Ctrl.OFF))

    def _check_command(self, apdu: bytes) -> None:
        if len(apdu) == CTRL_LEN or len(apdu) > MAX_MESSAGE:
            # A 1-byte message would be read as a control code; more than
            # 65535 bytes do not fit the 16-bit length.
            raise CardHardwareError(f"a {len(apdu)}-byte command cannot be carried by vpcd")
        if not self.present:
            raise CardAbsent("no card in the vpcd slot")
        if not self._powered:
            raise CardMute("card is not powered")

    async def transmit(self, apdu: bytes) -> bytes:
        self._check_command(apdu)
        async with self._lock:
            rapdu = await self._request(frame(bytes(apdu)), "APDU", self.response_timeout)
        if len(rapdu) < 2:
            raise CardMute(f"vicc answered with {len(rapdu)} bytes, not an R-APDU")
        return rapdu

    def transmit_future(self, apdu: bytes) -> asyncio.Future | None:
        # transmit() without the task: vicc's answer resolves the future (None while another exchange runs);
        # an answer under 2 bytes is refused by the reader service as a mute card
        self._check_command(apdu)
        return self._request_future(frame(bytes(apdu)), "APDU", self.response_timeout)

    def _timeout_error(self, what: str, timeout: float | None) -> Exception:
        return CardMute(f"vicc did not answer the {what} within {timeout} s")

    # -- presence ------------------------------------------------------------------
    def _accept_atr(self, atr: bytes) -> bool:
        """Update presence from a get-ATR answer; True if a card is there."""
        if not atr:
            self._atr = None
            self._powered = False
            self._set_present(False)
            return False
        problem = atr_problem(atr)
        if problem is not None:
            if self._client is not None:
                self._drop(self._client, f"bad ATR {atr.hex()}: {problem}")
            return False
        if self._atr is not None and atr != self._atr and self.present:
            self._set_present(False)            # a different card: show a removal first
        if self._atr != atr:
            log.info("vpcd: card inserted, ATR %s", atr.hex())
        self._atr = atr
        self._set_present(True)
        return True

    async def _probe(self, conn: ClientConnection) -> None:
        """Ask a new client for its ATR until it has a card (or goes)."""
        try:
            while self._client is conn and not self.present:
                async with self._lock:
                    if self._client is not conn:
                        return
                    atr = await self._request(ctrl_frame(Ctrl.ATR), "get ATR",
                                              self.response_timeout)
                    if self._client is not conn:
                        # The client answered and disconnected before this task resumed: its
                        # ATR must not mark the (now empty) slot present. (On Python 3.11
                        # wait_for returns the result and swallows the cancel from
                        # _client_disconnected when both happen in the same loop turn.)
                        return
                    if self._accept_atr(atr):
                        return
                await asyncio.sleep(self.absent_poll_interval)
        except (CardAbsent, CardMute) as e:
            log.debug("vpcd: probe ended: %s", e)

    # -- TcpCardServer hooks -------------------------------------------------------------
    def _client_connected(self, conn: ClientConnection) -> None:
        self._framer = VpcdFramer()
        self._powered = False
        self._probe_task = asyncio.get_running_loop().create_task(self._probe(conn))

    def _client_disconnected(self, conn: ClientConnection) -> None:
        self._framer = None
        self._atr = None
        self._powered = False
        task, self._probe_task = self._probe_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self._set_present(False)

    def _client_data(self, conn: ClientConnection, data: bytes) -> None:
        assert self._framer is not None
        for message in self._framer.receive_data(data):
            if conn.closed:
                return
            if not self._resolve_pending(message):
                self._drop(conn, f"unsolicited {len(message)}-byte message (the reader speaks first)")
                return

    async def stop(self) -> None:
        await super().stop()
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()


def build_card(spec, context) -> VpcdServerCard:
    """The `vpcd` engine of a slot (options.ENGINES)."""
    return VpcdServerCard(listen=spec.listen_address(), allow=spec.allow or None)
