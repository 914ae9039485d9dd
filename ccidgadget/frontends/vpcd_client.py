"""vpcd client front end: we connect to pcscd's vpcd driver as a card.

vsmartcard's vpcd (Debian `vsmartcard-vpcd`) is a pcscd reader driver that
listens on 127.0.0.1:35963 (reader "Virtual PCD 00 00"; 35964 is "... 00 01")
and waits for a virtual card to connect, as `vicc` does.  This front end
plays vicc with any ccidgadget card engine: every PC/SC application on this
machine then sees our card, with no USB and no gadget.  It is the quickest
way to try an emulated card with OpenSC, and how the card engines are tested
without a USB host.

Not to be confused with the vpcd *server engine*
(`ccidgadget/passthrough/vpcd_server.py`), which runs the other way round:
it listens, and a vicc connects to us to fill one of our reader slots.

The reader speaks first; we answer (`vpcd_protocol.py`):
- power off -> `card.power_off()`; power on / reset -> `card.power_on()`
  (no answer on the wire);
- get ATR -> the ATR of the last power on (powering the card on first if
  it never was: the Card interface has no other way to learn the ATR); an
  empty answer says "no card", after which vpcd closes the connection;
- anything else -> `card.transmit()`, answered with the R-APDU.

vpcd asks for the ATR every time pcscd polls for presence, so that answer
must come from the cache, never from a new reset.  While the card is absent
we stay disconnected (vpcd shows an empty reader) and connect again on
insertion; when pcscd restarts we reconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from typing import Callable

from ..cards.base import Card, CardAbsent, CardError
from ..passthrough.vpcd_protocol import VPCD_DEFAULT_PORT, Ctrl, VpcdFramer, frame, is_ctrl
from .card_options import add_card_arguments, build_card_from_args

log = logging.getLogger(__name__)

#: First and largest pause between connection attempts, in seconds.
RECONNECT_MIN_DELAY = 0.2
RECONNECT_MAX_DELAY = 5.0

#: Status word for a command our card engine failed to answer (ISO 7816-4
#: §5.6: 6F00 "no precise diagnosis").  vpcd has no error message and would
#: wait forever for an answer.
SW_NO_PRECISE_DIAGNOSIS = b"\x6F\x00"

CardFactory = Callable[[argparse.Namespace], Card]


class _Session:
    """One connection to vpcd: answers its messages in order."""

    def __init__(self, card: Card, writer: asyncio.StreamWriter) -> None:
        self.card = card
        self.writer = writer
        self.atr: bytes | None = None

    async def power_on(self) -> bytes:
        self.atr = await self.card.power_on()
        return self.atr

    async def handle(self, message: bytes) -> bool:
        """Answer one message; False when the connection should end."""
        if is_ctrl(message):
            code = message[0]
            if code == Ctrl.OFF:
                await self.card.power_off()
            elif code in (Ctrl.ON, Ctrl.RESET):
                await self.power_on()
            elif code == Ctrl.ATR:
                if not self.card.present:
                    self.writer.write(frame(b""))
                    return False
                atr = self.atr if self.atr is not None else await self.power_on()
                self.writer.write(frame(atr))
            else:
                log.warning("vpcd client: unknown control code %02X ignored", code)
            return True
        try:
            rapdu = await self.card.transmit(message)
        except CardAbsent:
            log.info("vpcd client: card absent while transmitting; disconnecting")
            return False
        except CardError as e:
            log.warning("vpcd client: card failed the command (%s); answering 6F00", e)
            rapdu = SW_NO_PRECISE_DIAGNOSIS
        self.writer.write(frame(rapdu))
        return True


async def _serve_connection(card: Card, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> str:
    """Answer vpcd until it hangs up or the card goes; return why we stopped."""
    session = _Session(card, writer)
    framer = VpcdFramer()
    while True:
        data = await reader.read(65536 + 2)
        if not data:
            return "vpcd closed the connection" if card.present else "card removed"
        for message in framer.receive_data(data):
            try:
                keep = await session.handle(message)
            except CardAbsent:
                return "card absent"
            except CardError as e:
                # Power on/off failed: vpcd expects no answer, so carry on;
                # its next get ATR reports what we have.
                log.warning("vpcd client: card error on control message: %s", e)
                keep = True
            if not keep:
                await writer.drain()
                return "card absent"
        await writer.drain()


async def serve_card_to_vpcd(card: Card, host: str = "127.0.0.1", port: int = VPCD_DEFAULT_PORT,
                             *, reconnect: bool = True) -> None:
    """Offer `card` to the vpcd driver at host:port until cancelled.

    With `reconnect=False` it returns after the first connection ends (or
    raises OSError when vpcd cannot be reached).  The card is not started or
    stopped here: that is the caller's business.
    """
    present = asyncio.Event()
    current: list[asyncio.StreamWriter] = []

    def on_presence(is_present: bool) -> None:
        if is_present:
            present.set()
            return
        present.clear()
        for writer in current:              # card removed: vpcd sees the reader empty
            writer.close()

    on_presence(card.present)
    card.add_presence_listener(on_presence)
    delay = RECONNECT_MIN_DELAY
    try:
        while True:
            await present.wait()
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as e:
                if not reconnect:
                    raise
                log.debug("vpcd client: cannot connect to %s:%d (%s); retrying in %.1f s",
                          host, port, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("vpcd client: connected to vpcd at %s:%d", host, port)
            delay = RECONNECT_MIN_DELAY
            current.append(writer)
            try:
                why = await _serve_connection(card, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                why = f"connection error: {e}"
            finally:
                current.remove(writer)
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionError, OSError):
                    pass
                try:
                    await card.power_off()
                except CardError:
                    pass
            log.info("vpcd client: disconnected from %s:%d (%s)", host, port, why)
            if not reconnect:
                return
            # vpcd restarting or a card just removed: do not spin.
            await asyncio.sleep(RECONNECT_MIN_DELAY)
    finally:
        card.remove_presence_listener(on_presence)


# -- command line ------------------------------------------------------------------------

def default_card_factory(args: argparse.Namespace) -> Card:
    """The emulated card the options name, built as the daemon builds a slot's card, with the [vault]
    keys of ``--config``."""
    return build_card_from_args(args, "vpcd-card")


def _add_arguments(p: argparse.ArgumentParser, card_types: tuple[str, ...] | None) -> None:
    add_card_arguments(p, card_types)
    p.add_argument("--host", default="127.0.0.1", help="where vpcd listens (default %(default)s)")
    p.add_argument("--port", type=int, default=VPCD_DEFAULT_PORT,
                   help="vpcd port: 35963 is reader 'Virtual PCD 00 00', 35964 '... 00 01'")
    p.add_argument("--once", action="store_true", help="exit when the first connection ends")


_DESCRIPTION = ("Connect to the vpcd driver of pcscd (package vsmartcard-vpcd) as a virtual "
                "card, so PC/SC applications on this machine see the card without any USB. "
                "(Not to be confused with the daemon's '--card vpcd' engine, where vsmartcard's "
                "vicc connects to ccidgadget.)")


def add_vpcd_card_subcommand(subparsers, card_factory: CardFactory | None = None,
                             card_types: tuple[str, ...] | None = None):
    """`ccidgadget vpcd-card --type piv|iso|cac|openpgp [--host H] [--port P] [--once] [card options]`.

    Sets `func` on the parsed namespace: `args.func(args)` runs until
    interrupted and returns an exit status.
    """
    p = subparsers.add_parser(
        "vpcd-card", help="serve an emulated card to pcscd through vsmartcard's vpcd driver",
        description=_DESCRIPTION)
    _add_arguments(p, card_types)
    factory = card_factory or default_card_factory
    p.set_defaults(func=lambda args: run_vpcd_card(args, factory))
    return p


def run_vpcd_card(args: argparse.Namespace, card_factory: CardFactory) -> int:
    card = card_factory(args)

    async def main() -> None:
        await card.start()
        try:
            await serve_card_to_vpcd(card, args.host, args.port, reconnect=not args.once)
        finally:
            await card.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as e:
        log.error("vpcd-card: cannot reach vpcd at %s:%d: %s", args.host, args.port, e)
        return 1
    return 0


def main_vpcd_card(argv: list[str] | None = None, card_factory: CardFactory | None = None,
                   card_types: tuple[str, ...] | None = None) -> int:
    """`ccidgadget vpcd-card ...` (also `python -m ccidgadget.frontends.vpcd_client`)."""
    parser = argparse.ArgumentParser(prog="ccidgadget vpcd-card", description=_DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true")
    _add_arguments(parser, card_types)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_vpcd_card(args, card_factory or default_card_factory)


if __name__ == "__main__":
    raise SystemExit(main_vpcd_card())
