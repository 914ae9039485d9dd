"""VSCard client front end: our cards inside QEMU guests, through ccid-card-passthru.

QEMU's smart-card reader `-device usb-ccid` takes its card from
`-device ccid-card-passthru,chardev=ID`, which speaks VSCard over a chardev,
usually a TCP server socket (docs/system/devices/ccid.rst):

    qemu-system-x86_64 ... -chardev socket,id=ccid0,host=127.0.0.1,port=2001,server=on,wait=off \\
        -usb -device usb-ccid -device ccid-card-passthru,chardev=ccid0

`ccidgadget vscard-card --connect 127.0.0.1:2001 --type piv` connects to that
socket as libcacard's `vscclient` would and puts any ccidgadget card in the
guest's reader: an emulated PIV, CAC or ISO card (state under
~/.local/share/ccidgadget, as `vpcd-card`), or with `--card pcsc --reader
REGEX` the card in a PC/SC reader of this machine.  No USB gadget, no root.

One `Link` per `--connect`: it owns one card, connects, runs the VSCard
conversation (`passthrough/vscard.py`, `VSCardClient`: Init, ReaderRemove(0)
+ ReaderAdd, the ATR while the card is in, APDU answers, CardRemove), and
when QEMU goes away (restart, socket closed) reconnects with a growing pause,
logging one line per change of state.  On exit it sends CardRemove and
ReaderRemove, so the guest sees the card leave.

Insert and remove: every link has a control socket of its own, named after
its address (`control_socket_path`); `ccidgadget vscard-card --connect
HOST:PORT --remove` (or `--insert`, `--status`) talks to the running link.

What QEMU's usb-ccid does with all this (measured with QEMU 7.2, docs/qemu.md):
it is one USB device present from boot, whatever the client does; the card
comes and goes in its slot (NotifySlotChange), and a ReaderRemove only
empties the slot.  A client that dies without a word leaves QEMU with the
card "in" and the guest's APDUs unanswered, until a client connects again:
its ReaderRemove(0) clears that.  usb-ccid is TPDU level and answers with at
most 374 bytes (BULK_IN_BUF_SIZE 384 less the DataBlock header); `host_atr`
explains why the guest is shown T=0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..cards.base import Card, CardAbsent, CardError
from ..cards.iso7816 import make_atr
from ..passthrough.atr import historical_bytes, offered_protocols
from ..passthrough import vscard
from ..passthrough.vscard import (Acknowledged, ApduReceived, ClientState, FlushRequested, HostError,
                                  HostInit, ReaderAdded, ReaderRefused, VSCardClient, VSCardProtocolError)
from ..passthrough.vscard_server import VSCARD_DEFAULT_PORT
from .card_options import DEFAULT_USER_STATE_DIR, add_card_arguments, build_card_from_args

log = logging.getLogger(__name__)

#: First and largest pause between connection attempts, in seconds.
RECONNECT_MIN_DELAY = 0.2
RECONNECT_MAX_DELAY = 5.0

#: How long the goodbye (CardRemove, ReaderRemove) may take to leave on exit.
GOODBYE_TIMEOUT = 2.0

#: After this long without an answer to our Init, say that something is wrong.
INIT_WAIT = 5.0

#: Largest response APDU QEMU's usb-ccid delivers to the guest: its bulk-IN
#: buffers are BULK_IN_BUF_SIZE = 384 bytes, less the 10-byte CCID header of
#: RDR_to_PC_DataBlock (CCID rev 1.1 §6.2.1).  Anything longer becomes a
#: failed DataBlock (HW_ERROR), or nothing at all in older QEMUs.
USB_CCID_MAX_RESPONSE = 374

CardFactory = Callable[[argparse.Namespace, int], Card]


def parse_address(text: str) -> tuple[str, int | None]:
    """HOST:PORT (a name, an IPv4 address or a [bracketed] IPv6 address; PORT 1..65535), or
    unix:PATH for a chardev on a unix socket (`-chardev socket,path=PATH,server=on`): (PATH, None)."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise argparse.ArgumentTypeError(f"{text!r}: unix: needs the socket's path")
        return text[5:], None
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(VSCARD_DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be 1..65535 (HOST:PORT, e.g. 127.0.0.1:2001)")
    return host, int(port)


def control_socket_path(host: str, port: int | None, base: Path | None = None) -> Path:
    """Where the link to HOST:PORT (or unix socket HOST, port None) listens for insert/remove/status.

    Under $XDG_RUNTIME_DIR/ccidgadget (the per-user runtime directory systemd
    makes, 0700), else under the state directory; one socket per address, so a
    link is found by the address it connects to, whichever process runs it.
    """
    if base is None:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime) / "ccidgadget" if runtime and Path(runtime).is_dir() else DEFAULT_USER_STATE_DIR / "run"
    where = f"{host}-{port}" if port is not None else f"unix-{host}"
    return Path(base) / f"vscard-{re.sub(r'[^A-Za-z0-9.-]', '_', where)}.sock"


def address_text(host: str, port: int | None) -> str:
    return f"{host}:{port}" if port is not None else f"unix:{host}"


def host_atr(atr: bytes) -> bytes:
    """The ATR to show QEMU's guest for a card whose real ATR is `atr`.

    usb-ccid is a TPDU-level reader (dwFeatures 0x10000) whose ccid-card-passthru
    hands the XfrBlock payload to the client unchanged: it only works as long
    as that payload is the APDU itself, i.e. under T=0 (ISO 7816-3 §10), never
    T=1 (whose blocks libccid would build, §11).  QEMU 7.2 advertises T=0 only
    and libccid refuses a card whose ATR offers only T=1 ("Protocol T=1 not
    supported by reader"); newer QEMUs also advertise T=1, and pcscd would then
    pick it for a card that offers both.  So a card whose ATR offers anything
    but T=0 is shown with an ATR offering T=0 only (no interface bytes, ISO
    7816-3 §8.2.3), keeping its historical bytes, which is what middleware
    identifies a card by (§8.2.4).  The card still receives plain APDUs.
    """
    try:
        if offered_protocols(atr) == {0}:
            return atr
        return make_atr(historical_bytes(atr), t0=True, t1=False)
    except ValueError:
        return atr                      # not an ATR: QEMU refuses it, and that gets logged


class ResponseFitter:
    """Cut response APDUs to what the host's reader delivers; hand out the rest through GET RESPONSE.

    QEMU 7.2's usb-ccid silently drops a DataBlock over its bulk-IN buffer (a
    response of more than 374 bytes): the guest's libccid then waits minutes
    for its read timeout (232 s measured).  Under T=0, which the guest uses
    (`host_atr`), ISO 7816-3 §12.2.3 lets a card answer a long case 2/4
    command with part of the data and 61xx, the rest being fetched with
    GET RESPONSE (ISO 7816-4 §7.6.1), and that is what a card behind this
    front end does: a response longer than `limit` goes out as its first
    `limit - 2` data bytes and 61xx (xx = bytes left, 00 for 256 or more),
    and each GET RESPONSE that follows is answered here from the rest, the
    last piece with the card's own status word.  Any other command drops what
    was left, as a card does.  OpenSC, and any middleware that follows 61xx,
    thus reads a 2 KiB object in one extended-Le command; the card never
    sees those GET RESPONSEs.  `limit=0` passes everything through.
    """

    INS_GET_RESPONSE = 0xC0

    def __init__(self, limit: int = USB_CCID_MAX_RESPONSE) -> None:
        if limit and limit < 3:
            raise ValueError("a response limit must leave room for data and SW1 SW2")
        self.limit = limit
        self._rest = b""
        self._sw = b""

    @property
    def pending(self) -> int:
        return len(self._rest)

    def reset(self) -> None:
        self._rest = b""

    def _remaining_sw(self) -> bytes:
        return bytes((0x61, len(self._rest) if len(self._rest) < 256 else 0))

    @staticmethod
    def _get_response_le(apdu: bytes) -> int | None:
        """Ne of a plain GET RESPONSE (P1P2 0000, no data), else None (ISO 7816-4 §5.1)."""
        if len(apdu) < 4 or apdu[1] != ResponseFitter.INS_GET_RESPONSE or apdu[2:4] != b"\0\0":
            return None
        if len(apdu) == 4:
            return 256
        if len(apdu) == 5:
            return apdu[4] or 256
        if len(apdu) == 7 and apdu[4] == 0:
            return int.from_bytes(apdu[5:7], "big") or 65536
        return None

    def intercept(self, apdu: bytes) -> bytes | None:
        """The answer to `apdu` from what is left of a cut response, or None: send it to the card."""
        if not self._rest:
            return None
        le = self._get_response_le(apdu)
        if le is None:
            self._rest = b""
            return None
        chunk = self._rest[:min(le, self.limit - 2)]
        self._rest = self._rest[len(chunk):]
        return chunk + (self._remaining_sw() if self._rest else self._sw)

    def fit(self, rapdu: bytes) -> bytes:
        """`rapdu` if the host can deliver it, else its first part and 61xx."""
        self._rest = b""
        if not self.limit or len(rapdu) <= self.limit or len(rapdu) < 2:
            return rapdu
        n = self.limit - 2
        self._rest, self._sw = rapdu[n:-2], rapdu[-2:]
        return rapdu[:n] + self._remaining_sw()


@dataclass
class LinkStatus:
    """What `ccidgadget vscard-card --status` shows of one link."""
    address: str
    state: str
    card_present: bool
    card_inserted: bool
    connections: int
    apdus: int
    largest_response: int           # the longest response APDU sent to the host, in bytes
    errors: int
    last_error: str | None


class Link:
    """One QEMU chardev at host:port and the card behind it."""

    def __init__(self, card: Card, host: str, port: int | None, *, reader_name: str = "ccidgadget",
                 reconnect: bool = True, max_response: int = USB_CCID_MAX_RESPONSE,
                 min_delay: float = RECONNECT_MIN_DELAY, max_delay: float = RECONNECT_MAX_DELAY) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.reader_name = reader_name
        self.reconnect = reconnect
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.name = f"vscard {address_text(host, port)}"
        self.fitter = ResponseFitter(max_response)
        self.client: VSCardClient | None = None
        self.connections = 0
        self.apdus = 0
        self.largest_response = 0
        self.errors = 0
        self.last_error: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._close_reason: str | None = None

    # -- what the control socket and the logs see ---------------------------------------
    def status(self) -> LinkStatus:
        c = self.client
        return LinkStatus(address_text(self.host, self.port), c.state.value if c else "disconnected", self.card.present,
                          bool(c and c.card_inserted), self.connections, self.apdus, self.largest_response,
                          self.errors, self.last_error)

    def _note_error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text

    # -- the connection loop --------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect, until cancelled (or, without `reconnect`, one connection).

        The pause before the next attempt doubles from `min_delay` to `max_delay`
        while QEMU cannot be reached or a connection ends before the reader was
        added; a connection that worked resets it.
        """
        self.card.add_presence_listener(self._on_presence)
        delay = self.min_delay
        waiting_logged = False
        try:
            while True:
                try:
                    if self.port is None:
                        reader, writer = await asyncio.open_unix_connection(self.host)
                    else:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                except OSError as e:
                    if not self.reconnect:
                        raise
                    if not waiting_logged:
                        log.info("%s: QEMU not reachable (%s); retrying, at most every %.0f s", self.name,
                                 e.strerror or e, self.max_delay)
                        waiting_logged = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
                    continue
                waiting_logged = False
                why, worked = await self._serve(reader, writer)
                log.info("%s: disconnected (%s)%s", self.name, why, "; reconnecting" if self.reconnect else "")
                if not self.reconnect:
                    return
                if worked:
                    delay = self.min_delay
                await asyncio.sleep(delay)
                if not worked:
                    delay = min(delay * 2, self.max_delay)
        finally:
            self.card.remove_presence_listener(self._on_presence)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, bool]:
        """One connection: (why it ended, whether QEMU took our reader)."""
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.connections += 1
        self.client = client = VSCardClient()
        self.fitter.reset()
        self._writer = writer
        self._close_reason = None
        reconciler = asyncio.create_task(self._reconcile(client), name=f"{self.name} presence")
        # QEMU's chardev serves one client at a time; a second one is accepted by the
        # kernel and then hears nothing.  Say so once instead of waiting in silence.
        silent = asyncio.get_running_loop().call_later(INIT_WAIT, self._init_unanswered, client)
        try:
            writer.write(client.initiate())
            quickack = sock is not None and sock.family != socket.AF_UNIX and hasattr(socket, "TCP_QUICKACK")
            while True:
                if quickack:
                    # QEMU writes a message's header and payload with two writes on a socket that
                    # has Nagle on (unless the chardev says nodelay=on): the payload waits for our
                    # ACK of the header, which Linux delays up to 40 ms.  Quick ACKs are not
                    # sticky, so ask again before every read.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                data = await reader.read(65536)
                if not data:
                    return "QEMU closed the connection", client.reader_id != vscard.VSCARD_UNDEFINED_READER_ID
                try:
                    events = client.receive_data(data)
                except VSCardProtocolError as e:
                    self._note_error(str(e))
                    log.warning("%s: QEMU sent what VSCard does not allow (%s); closing", self.name, e)
                    return "protocol error", False
                for event in events:
                    self._on_event(client, event)
                if self._close_reason:
                    return self._close_reason, False
                await writer.drain()
        except (ConnectionError, OSError) as e:
            return f"connection error: {e}", client.reader_id != vscard.VSCARD_UNDEFINED_READER_ID
        except asyncio.CancelledError:
            await self._goodbye(client, writer)
            raise
        finally:
            silent.cancel()
            reconciler.cancel()
            for task in list(self._tasks):
                task.cancel()
            self._writer = None
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()
            with contextlib.suppress(CardError):
                await self.card.power_off()

    def _init_unanswered(self, client: VSCardClient) -> None:
        if client.state is ClientState.AWAIT_INIT:
            log.warning("%s: connected, but QEMU has not answered our Init in %.0f s; is another client "
                        "connected to this chardev? (waiting)", self.name, INIT_WAIT)

    async def _goodbye(self, client: VSCardClient, writer: asyncio.StreamWriter) -> None:
        """On exit: CardRemove and ReaderRemove, so the guest sees the card leave (ccid.rst "kill/quit")."""
        data = client.remove_reader()
        if not data or writer.is_closing():
            return
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), GOODBYE_TIMEOUT)
            log.info("%s: reader removed", self.name)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            log.info("%s: could not send ReaderRemove (QEMU gone)", self.name)

    def _send(self, data: bytes) -> None:
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    # -- what QEMU says ----------------------------------------------------------------
    def _on_event(self, client: VSCardClient, event) -> None:
        if isinstance(event, HostInit):
            log.debug("%s: QEMU speaks VSCard %d.%d.%d", self.name, *vscard.version_tuple(event.version))
            self._send(client.add_reader(self.reader_name))
        elif isinstance(event, ReaderAdded):
            log.info("%s: connected; reader added (id %d)", self.name, event.reader_id)
            self._wake.set()
        elif isinstance(event, ReaderRefused):
            self._note_error(f"reader refused (code {event.code})")
            log.error("%s: QEMU refused the reader (code %d: %s)", self.name, event.code, _code_name(event.code))
            self._close_reason = "reader refused"
        elif isinstance(event, Acknowledged):
            if not event.ok:
                self._note_error(f"{event.request.name} refused (code {event.code})")
                log.warning("%s: QEMU refused our %s (code %d: %s)", self.name, event.request.name,
                            event.code, _code_name(event.code))
        elif isinstance(event, ApduReceived):
            self.apdus += 1
            rest = self.fitter.intercept(event.apdu)
            if rest is not None:
                self._send_answer(client, event.tag, rest)
            else:
                self._spawn(self._answer(client, event), "APDU")
        elif isinstance(event, FlushRequested):
            self._send(client.flush_complete())
        elif isinstance(event, HostError):
            log.info("%s: QEMU sent error %d (%s) answering nothing", self.name, event.code, _code_name(event.code))

    def _spawn(self, coro, what: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.name} {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, client: VSCardClient, event: ApduReceived) -> None:
        try:
            rapdu = await self.card.transmit(event.apdu)
        except CardAbsent:
            self._send(client.fail(event.tag))          # raced a removal; QEMU answers the guest
            return
        except CardError as e:
            self._note_error(f"card failed an APDU: {e}")
            log.warning("%s: the card failed a command (%s); QEMU answers the guest with an error", self.name, e)
            self._send(client.fail(event.tag))
            return
        except Exception as e:                          # an engine bug: answer, log, keep serving
            self._note_error(f"engine error: {type(e).__name__}: {e}")
            log.exception("%s: card engine failed", self.name)
            self._send(client.fail(event.tag))
            return
        if client.state is not ClientState.READY or not client.card_inserted:
            return                                      # abandoned: removed or disconnected meanwhile
        rapdu = self.fitter.fit(rapdu)
        if self.fitter.pending:
            log.debug("%s: response cut to %d bytes; %d more through GET RESPONSE", self.name, len(rapdu),
                      self.fitter.pending)
        if len(rapdu) > client.host_max_payload:
            self._note_error(f"response of {len(rapdu)} bytes exceeds QEMU's input buffer")
            log.warning("%s: a %d-byte response does not fit QEMU's %d-byte input buffer; failed instead",
                        self.name, len(rapdu), client.host_max_payload)
        self._send_answer(client, event.tag, rapdu)

    def _send_answer(self, client: VSCardClient, tag: int, rapdu: bytes) -> None:
        data = client.answer(tag, rapdu)
        if data.startswith(vscard.HEADER.pack(vscard.MsgType.APDU, client.reader_id, len(rapdu))):
            self.largest_response = max(self.largest_response, len(rapdu))
        self._send(data)

    # -- the card -----------------------------------------------------------------------
    def _on_presence(self, present: bool) -> None:
        self._wake.set()

    async def _reconcile(self, client: VSCardClient) -> None:
        """Make QEMU's slot follow the card: ATR when it is in, CardRemove when it is out."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while client.state is ClientState.READY and self.card.present != client.card_inserted:
                self.fitter.reset()
                if not self.card.present:
                    self._send(client.remove())
                    log.info("%s: card removed", self.name)
                    with contextlib.suppress(CardError):
                        await self.card.power_off()
                    continue
                try:
                    atr = await self.card.power_on()
                except CardAbsent:
                    continue                            # gone again meanwhile: look once more
                except CardError as e:
                    self._note_error(f"power on failed: {e}")
                    log.warning("%s: the card did not power on (%s); the slot stays empty", self.name, e)
                    break
                if client.state is not ClientState.READY or not self.card.present:
                    continue
                shown = host_atr(atr)
                self._send(client.insert(shown))
                log.info("%s: card inserted (ATR %s)", self.name, shown.hex())


def _code_name(code: int) -> str:
    try:
        return vscard.ErrorCode(code).name
    except ValueError:
        return "unknown"


# -- the control socket of one link -------------------------------------------------------

class _LinkControl:
    """`daemon/control.ControlTarget` for one link: its card is slot 0."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def status(self) -> dict:
        st = self.link.status()
        return {**st.__dict__, "card": self.link.card.describe(), "pid": os.getpid()}

    def _emulated(self, slot: int):
        from ..daemon.control import ControlError
        if slot != 0:
            raise ControlError(f"this link has one card, slot 0 (not {slot})")
        card = self.link.card
        if not hasattr(card, "insert"):
            raise ControlError(f"the {card.engine} card follows its own reader; it cannot be inserted or removed here")
        return card

    def insert(self, slot: int) -> dict:
        card = self._emulated(slot)
        changed = not card.present
        card.insert()
        return {"slot": 0, "present": card.present, "changed": changed}

    def remove(self, slot: int) -> dict:
        card = self._emulated(slot)
        changed = card.present
        card.remove()
        return {"slot": 0, "present": card.present, "changed": changed}

    async def reload(self) -> dict:
        from ..daemon.control import ControlError
        raise ControlError("vscard-card has no configuration to reload")


# -- command line ------------------------------------------------------------------------

_DESCRIPTION = ("Put a ccidgadget card into a QEMU guest: connect to the chardev of QEMU's ccid-card-passthru "
                "(-chardev socket,...,server=on -device usb-ccid -device ccid-card-passthru,chardev=...) as "
                "libcacard's vscclient would. Give --connect once per VM (or per usb-ccid); the card options "
                "after a --connect describe its card. With --insert, --remove or --status it asks the running "
                "vscard-card connected to that address instead (see docs/qemu.md).")

_EPILOG = ("examples:\n"
           "  ccidgadget vscard-card --connect 127.0.0.1:2001 --type piv\n"
           "  ccidgadget vscard-card --connect 127.0.0.1:2001 --type piv --connect 127.0.0.1:2002 --type cac "
           "--db sql:$HOME/fake-smartcard --cert id-cert --cert signing-cert --cert encryption-cert\n"
           "  ccidgadget vscard-card --connect 127.0.0.1:2003 --card pcsc --reader 'Yubico*'\n"
           "  ccidgadget vscard-card --connect 127.0.0.1:2001 --remove")

def _link_parser(prog: str, *, add_help: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, add_help=add_help, description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", metavar="HOST:PORT", type=parse_address, required=True,
                   help="QEMU's chardev socket: 127.0.0.1:2001, or unix:PATH for -chardev socket,path=PATH; "
                        "repeat for more cards")
    add_card_arguments(p, engines=("emulated", "pcsc"))
    p.add_argument("--reader-name", default=None,
                   help="name sent with VSC_ReaderAdd (QEMU ignores it; default 'ccidgadget TYPE')")
    p.add_argument("--max-response", type=int, default=USB_CCID_MAX_RESPONSE, metavar="BYTES",
                   help="largest response APDU the host delivers; longer ones are cut and the rest served "
                        "through GET RESPONSE (default %(default)s, QEMU usb-ccid's limit; 0: no limit)")
    p.add_argument("--control", type=Path, metavar="PATH",
                   help="this link's control socket (default $XDG_RUNTIME_DIR/ccidgadget/vscard-HOST-PORT.sock)")
    verbs = p.add_mutually_exclusive_group()
    verbs.add_argument("--insert", dest="verb", action="store_const", const="insert",
                       help="insert the emulated card of the running vscard-card connected to HOST:PORT")
    verbs.add_argument("--remove", dest="verb", action="store_const", const="remove",
                       help="remove it (the guest sees the slot empty)")
    verbs.add_argument("--status", dest="verb", action="store_const", const="status",
                       help="show the running link: connection state, card, APDUs, errors")
    p.add_argument("--once", action="store_true", help="exit when the first connection ends (no reconnecting)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (APDU contents are never logged)")
    return p


def _split(argv: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Options before the first --connect, and one argument list per --connect (it and what follows)."""
    head: list[str] = []
    segments: list[list[str]] = []
    for arg in argv:
        if arg == "--connect" or arg.startswith("--connect="):
            segments.append([arg])
        elif segments:
            segments[-1].append(arg)
        else:
            head.append(arg)
    return head, segments


def parse_links(argv: Sequence[str], prog: str = "ccidgadget vscard-card") -> list[argparse.Namespace]:
    """One namespace per --connect.  Exits with a usage error like argparse.

    Card options before the first --connect apply to every --connect (a
    common --state-dir, -v); options after a --connect apply to it and
    override those.
    """
    full = _link_parser(prog, add_help=True)
    head, segments = _split(argv)
    if not segments:
        full.parse_args(list(argv))                   # --help, or "the following arguments are required"
        full.error("--connect HOST:PORT is required")
    links = [full.parse_args(seg[:2] + head + seg[2:]) if seg[0] == "--connect" else
             full.parse_args(seg[:1] + head + seg[1:]) for seg in segments]
    seen: set[tuple[str, int]] = set()
    for ns in links:
        where = f"--connect {address_text(*ns.connect)}"
        if ns.connect in seen:
            full.error(f"{where} given twice")
        seen.add(ns.connect)
        if ns.max_response and ns.max_response < 3:
            full.error(f"{where}: --max-response {ns.max_response}: at least 3 (data and SW1 SW2), "
                       "or 0 for no limit")
        if ns.engine == "pcsc" and not ns.reader:
            full.error(f"{where}: --card pcsc needs --reader REGEX")
        if ns.reader_name is None:
            ns.reader_name = f"ccidgadget {ns.card_type if ns.engine == 'emulated' else 'pcsc'}"
    if len({ns.verb for ns in links}) > 1:
        full.error("--insert/--remove/--status apply to every --connect given, or to none")
    if len({ns.once for ns in links}) > 1 or len({ns.verbose for ns in links}) > 1:
        full.error("--once and -v apply to the whole process: give them before the first --connect")
    return links


def default_card_factory(args: argparse.Namespace, index: int) -> Card:
    return build_card_from_args(args, "vscard-card", slot=index)


def _control_path(ns: argparse.Namespace) -> Path:
    return ns.control or control_socket_path(*ns.connect)


def _run_verb(links: list[argparse.Namespace]) -> int:
    from ..daemon.control import ControlError, call
    status = 0
    for ns in links:
        path = _control_path(ns)
        where = address_text(*ns.connect)
        try:
            result = call(path, ns.verb, **({} if ns.verb == "status" else {"slot": 0}), timeout=10)
        except ControlError as e:
            text = str(e)
            if "no daemon" in text:
                text = f"no vscard-card connected to {where} answers on {path}"
            print(f"vscard-card {where}: {text}", file=sys.stderr)
            status = status or e.exit_status
            continue
        if ns.verb == "status":
            card = result.get("card", {})
            print(f"{where}: {result['state']}, card {'present' if result['card_present'] else 'absent'}"
                  f"{' (in the guest slot)' if result['card_inserted'] else ''}, {card.get('engine', '?')}; "
                  f"{result['connections']} connection(s), {result['apdus']} APDU(s) (longest response "
                  f"{result['largest_response']} bytes), {result['errors']} error(s)"
                  + (f"; last error: {result['last_error']}" if result.get("last_error") else ""))
        else:
            state = "card present" if result["present"] else "empty"
            print(f"{where}: {state}" + ("" if result["changed"] else " (it already was)"))
    return status


async def serve_links(links: list[Link], controls: list[tuple[Link, Path]]) -> None:
    """Start the cards and the control sockets, run every link until cancelled, then clean up."""
    from ..daemon.control import ControlServer
    servers: list = []
    started: list[Card] = []
    try:
        for link in links:
            await link.card.start()
            started.append(link.card)
        for link, path in controls:
            server = ControlServer(_LinkControl(link), path)
            await server.start()
            servers.append(server)
        await asyncio.gather(*(link.run() for link in links))
    finally:
        for server in servers:
            await server.stop()
        for card in started:
            with contextlib.suppress(Exception):
                await card.stop()


def run_vscard_card(argv: Sequence[str], card_factory: CardFactory | None = None) -> int:
    namespaces = parse_links(argv)
    logging.basicConfig(level=logging.DEBUG if namespaces[0].verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if namespaces[0].verb:
        return _run_verb(namespaces)
    factory = card_factory or default_card_factory
    links = [Link(factory(ns, i), *ns.connect, reader_name=ns.reader_name, reconnect=not ns.once,
                  max_response=ns.max_response) for i, ns in enumerate(namespaces)]
    controls = [(link, _control_path(ns)) for link, ns in zip(links, namespaces)]

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_links(links, controls)

    from ..daemon.control import ControlError
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except ControlError as e:
        log.error("vscard-card: %s", e)
        return 1
    except OSError as e:
        log.error("vscard-card: %s", e)
        return 1
    return 0


def main_vscard_card(argv: list[str] | None = None) -> int:
    """`ccidgadget vscard-card ...` (also `python -m ccidgadget.frontends.vscard_client`)."""
    return run_vscard_card(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main_vscard_card())
