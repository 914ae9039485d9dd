"""VSCard server engine: a card from vscclient / spice, as QEMU ccid-card-passthru takes it.

We play QEMU's part (the VSCard "host"): we listen, a client such as
libcacard's `vscclient <host> <port>` connects, announces itself with
VSC_Init, adds a reader, then inserts a card by sending its ATR.  Every APDU
the USB host sends to our slot goes to the client as VSC_APDU, and its
VSC_APDU answer comes back.  Wire format: `vscard.py`.

Behaviour taken from QEMU `hw/usb/ccid-card-passthru.c` and libcacard
`vscclient.c`:

- We answer the client's Init with our Init (reader id 0xFFFFFFFF).  We do not
  send Init unprompted: vscclient reacts to every Init by removing reader 0
  and starting its reader thread, so a second Init would add its reader twice.
- vscclient first sends ReaderRemove(0) to clean up after an unclean exit;
  it gets Error(SUCCESS) like any ReaderRemove.
- ReaderAdd is answered with Error(SUCCESS) carrying the reader id the client
  must use from now on (`reader_id`, QEMU's VSCARD_MINIMAL_READER_ID = 0), or
  Error(CANNOT_ADD_MORE_READERS) with the undefined reader id: one reader per
  slot.
- ATR inserts the card (answered Error(SUCCESS), or GENERAL_ERROR for an ATR
  that is not one); CardRemove removes it (Error(SUCCESS)).
- VSC_Error from the client while an APDU is outstanding means the client's
  reader failed it (vscclient sends this when vreader_xfr_bytes fails).
- vscclient stops reading on any message type other than Init, Error, APDU
  and Flush, so we never send it anything else.
- vscclient writes reader id 0 in every header whatever its reader's id is,
  so reader ids in client messages are not checked.

The CCID reader is meant to exist only while a client has added a reader
(QEMU docs/ccid.rst, passthrough: the guest sees the device appear on
ReaderAdd and go on ReaderRemove).  `attached` and `add_attach_listener`
expose that; the daemon binds and unbinds the UDC when this slot is alone on
its gadget.  With `stay_attached=True` the reader is always there and the
slot is simply empty while no client is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from ..cards.base import CardAbsent, CardMute
from ..options import Engine
from .atr import atr_problem
from .netserver import Address, ClientConnection, TcpCardServer
from .vscard import (VSCARD_UNDEFINED_READER_ID, VSCARD_VERSION, ErrorCode, Message, MsgType,
                     VSCardDecoder, VSCardProtocolError, encode, error_code, error_message,
                     init_message, parse_init, version_tuple)

log = logging.getLogger(__name__)

AttachListener = Callable[[bool], None]

#: TCP port of the examples in QEMU's docs/ccid.rst (`-chardev socket,port=2001`).
VSCARD_DEFAULT_PORT = 2001

#: How long an APDU may stay unanswered before the client is dropped.  A real
#: card behind vscclient may take tens of seconds for on-card RSA key
#: generation, so this is generous; the USB host gets time extensions meanwhile.
VSCARD_APDU_TIMEOUT = 120.0

#: How long `flush()` waits for FlushComplete.
VSCARD_FLUSH_TIMEOUT = 5.0


class VSCardServerCard(TcpCardServer):
    """A slot whose card is provided by a VSCard client (vscclient, spice-gtk)."""

    engine = Engine.PASSTHRU
    protocol_name = "VSCard"
    default_port = VSCARD_DEFAULT_PORT

    def __init__(self, listen: Address = ("127.0.0.1", VSCARD_DEFAULT_PORT),
                 allow: Iterable[str] | None = None, reader_id: int = 0,
                 attach_callback: AttachListener | None = None, *,
                 stay_attached: bool = False,
                 apdu_timeout: float | None = VSCARD_APDU_TIMEOUT) -> None:
        super().__init__(listen, allow)
        if not 0 <= reader_id < VSCARD_UNDEFINED_READER_ID:
            raise ValueError("reader_id must be a uint32 other than 0xFFFFFFFF")
        self.reader_id = reader_id
        self.stay_attached = stay_attached
        self.apdu_timeout = apdu_timeout
        self._attach_listeners: list[AttachListener] = []
        if attach_callback is not None:
            self._attach_listeners.append(attach_callback)
        self._decoder: VSCardDecoder | None = None
        self._init_done = False
        self._reader_added = False
        self._reader_name = ""
        self._atr: bytes | None = None
        self._attached = stay_attached
        self._flush_waiters: list[asyncio.Future] = []
        self._stale_answers = 0

    # -- attach (reader visible to the USB host) ---------------------------------
    @property
    def attached(self) -> bool:
        """True while the USB host should see a reader for this slot."""
        return self._attached

    def add_attach_listener(self, listener: AttachListener) -> None:
        self._attach_listeners.append(listener)

    def remove_attach_listener(self, listener: AttachListener) -> None:
        if listener in self._attach_listeners:
            self._attach_listeners.remove(listener)

    def _update_attached(self) -> None:
        attached = self.stay_attached or self._reader_added
        if attached == self._attached:
            return
        self._attached = attached
        log.info("VSCard: reader %s", "attached" if attached else "detached")
        for listener in list(self._attach_listeners):
            try:
                listener(attached)
            except Exception:
                log.exception("attach listener failed")

    def describe(self) -> dict:
        d = super().describe()
        d.update(attached=self.attached, reader_name=self._reader_name or None,
                 atr=self._atr.hex() if self._atr else None)
        return d

    # -- card -----------------------------------------------------------------------
    async def power_on(self) -> bytes:
        # VSCard has no power message: the client powered its card before it
        # sent the ATR (vscclient: vreader_power_on, then VSC_ATR), and QEMU's
        # passthru answers IccPowerOn from the stored ATR too.
        if not self.present or self._atr is None:
            raise CardAbsent("no card in the VSCard slot")
        self._powered = True
        return self._atr

    async def power_off(self) -> None:
        self._powered = False

    async def transmit(self, apdu: bytes) -> bytes:
        if not self.present:
            raise CardAbsent("no card in the VSCard slot")
        if not self._powered:
            raise CardMute("card is not powered")
        async with self._lock:
            if not self.present or self._client is None:
                raise CardAbsent("no card in the VSCard slot")
            return await self._request(encode(MsgType.APDU, self.reader_id, bytes(apdu)),
                                       "APDU", self.apdu_timeout)

    def transmit_future(self, apdu: bytes) -> asyncio.Future | None:
        # transmit() without the task: the client's answer resolves the future (None while a flush runs)
        if not self.present or self._client is None:
            raise CardAbsent("no card in the VSCard slot")
        if not self._powered:
            raise CardMute("card is not powered")
        return self._request_future(encode(MsgType.APDU, self.reader_id, bytes(apdu)), "APDU", self.apdu_timeout)

    def _timeout_error(self, what: str, timeout: float | None) -> Exception:
        return CardMute(f"VSCard client did not answer the {what} within {timeout} s")

    async def flush(self, timeout: float = VSCARD_FLUSH_TIMEOUT) -> None:
        """Send VSC_Flush and wait for FlushComplete (QEMU itself never sends it)."""
        conn = self._client
        if conn is None or not self._init_done:
            raise CardAbsent("no VSCard client")
        fut = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        conn.write(encode(MsgType.FLUSH, self.reader_id))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise CardMute("VSCard client did not complete the flush") from None
        finally:
            if fut in self._flush_waiters:
                self._flush_waiters.remove(fut)

    # -- presence ----------------------------------------------------------------------
    def _insert(self, atr: bytes) -> None:
        if self.present:
            # A second ATR is a re-insertion or a reset on the client's side:
            # show the host a removal first so it powers the card up again.
            self._remove("card re-inserted")
        self._atr = atr
        self._set_present(True)

    def _remove(self, why: str) -> None:
        if self._pending is not None and not self._pending.done():
            # The client may still answer the APDU it was given before the
            # removal; that answer belongs to no one and is discarded.
            self._stale_answers += 1
        self._fail_pending(CardAbsent(f"VSCard card removed ({why})"))
        self._atr = None
        self._powered = False
        self._set_present(False)

    # -- TcpCardServer hooks ----------------------------------------------------------------
    def _refuse_busy(self, conn: ClientConnection) -> None:
        conn.write(error_message(VSCARD_UNDEFINED_READER_ID, ErrorCode.CANNOT_ADD_MORE_READERS))

    def _client_connected(self, conn: ClientConnection) -> None:
        self._decoder = VSCardDecoder()
        self._init_done = False
        self._stale_answers = 0

    def _client_disconnected(self, conn: ClientConnection) -> None:
        self._remove("client gone")
        self._decoder = None
        self._init_done = False
        self._reader_added = False
        self._reader_name = ""
        for fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(CardAbsent("VSCard client gone"))
        self._update_attached()

    def _client_data(self, conn: ClientConnection, data: bytes) -> None:
        assert self._decoder is not None
        try:
            messages = self._decoder.receive_data(data)
        except VSCardProtocolError as e:
            self._drop(conn, f"malformed message: {e}")
            return
        for msg in messages:
            if conn.closed:
                return
            try:
                self._handle(conn, msg)
            except VSCardProtocolError as e:
                self._drop(conn, str(e))
                return

    # -- messages ----------------------------------------------------------------------------
    def _handle(self, conn: ClientConnection, msg: Message) -> None:
        if not self._init_done:
            if msg.type is not MsgType.INIT:
                raise VSCardProtocolError(f"{msg.type.name} before Init")
            init = parse_init(msg.payload)
            if init.major != version_tuple(VSCARD_VERSION)[0]:
                conn.write(error_message(VSCARD_UNDEFINED_READER_ID, ErrorCode.GENERAL_ERROR))
                raise VSCardProtocolError(
                    "client speaks VSCard %d.%d.%d, incompatible with %d.%d.%d"
                    % (version_tuple(init.version) + version_tuple(VSCARD_VERSION)))
            if init.version != VSCARD_VERSION:
                log.info("VSCard: client version %d.%d.%d, ours %d.%d.%d",
                         *version_tuple(init.version), *version_tuple(VSCARD_VERSION))
            self._init_done = True
            conn.write(init_message())
            return

        handler = {
            MsgType.INIT: self._on_init_again,
            MsgType.READER_ADD: self._on_reader_add,
            MsgType.READER_REMOVE: self._on_reader_remove,
            MsgType.ATR: self._on_atr,
            MsgType.CARD_REMOVE: self._on_card_remove,
            MsgType.APDU: self._on_apdu,
            MsgType.ERROR: self._on_error,
            MsgType.FLUSH: self._on_flush,
            MsgType.FLUSH_COMPLETE: self._on_flush_complete,
        }[msg.type]
        handler(conn, msg)

    def _on_init_again(self, conn: ClientConnection, msg: Message) -> None:
        parse_init(msg.payload)
        log.warning("VSCard: client %s sent Init again; ignored", conn.peer)

    def _on_reader_add(self, conn: ClientConnection, msg: Message) -> None:
        if self._reader_added:
            log.warning("VSCard: client %s tried to add a second reader; refused", conn.peer)
            conn.write(error_message(VSCARD_UNDEFINED_READER_ID, ErrorCode.CANNOT_ADD_MORE_READERS))
            return
        self._reader_added = True
        self._reader_name = msg.payload.decode("utf-8", "replace").rstrip("\0")
        log.info("VSCard: client %s added reader %r as id %d", conn.peer, self._reader_name,
                 self.reader_id)
        conn.write(error_message(self.reader_id, ErrorCode.SUCCESS))
        self._update_attached()

    def _on_reader_remove(self, conn: ClientConnection, msg: Message) -> None:
        if self._reader_added:
            log.info("VSCard: client %s removed its reader", conn.peer)
            self._remove("reader removed")
            self._reader_added = False
            self._reader_name = ""
        conn.write(error_message(msg.reader_id, ErrorCode.SUCCESS))
        self._update_attached()

    def _on_atr(self, conn: ClientConnection, msg: Message) -> None:
        if not self._reader_added:
            log.warning("VSCard: client %s sent an ATR with no reader added; refused", conn.peer)
            conn.write(error_message(msg.reader_id, ErrorCode.GENERAL_ERROR))
            return
        problem = atr_problem(msg.payload)
        if problem is not None:
            log.warning("VSCard: client %s sent a bad ATR %s: %s", conn.peer,
                        msg.payload.hex(), problem)
            conn.write(error_message(msg.reader_id, ErrorCode.GENERAL_ERROR))
            return
        log.info("VSCard: card inserted, ATR %s", msg.payload.hex())
        self._insert(msg.payload)
        conn.write(error_message(msg.reader_id, ErrorCode.SUCCESS))

    def _on_card_remove(self, conn: ClientConnection, msg: Message) -> None:
        if self.present:
            log.info("VSCard: card removed")
        self._remove("card removed by the client")
        conn.write(error_message(msg.reader_id, ErrorCode.SUCCESS))

    def _on_apdu(self, conn: ClientConnection, msg: Message) -> None:
        if self._resolve_pending(msg.payload):
            return
        if self._stale_answers:
            self._stale_answers -= 1
            log.info("VSCard: discarded the answer to an APDU abandoned at card removal")
            return
        raise VSCardProtocolError("APDU response with no APDU outstanding")

    def _on_error(self, conn: ClientConnection, msg: Message) -> None:
        code = error_code(msg.payload)
        if self._pending is not None and not self._pending.done():
            log.warning("VSCard: client %s failed the APDU with error %d", conn.peer, code)
            self._fail_pending(CardMute(f"VSCard client error {code}"))
        elif self._stale_answers:
            self._stale_answers -= 1
        else:
            log.info("VSCard: client %s sent error %d", conn.peer, code)

    def _on_flush(self, conn: ClientConnection, msg: Message) -> None:
        # Nothing of the client's is outstanding on our side: complete at once.
        conn.write(encode(MsgType.FLUSH_COMPLETE, msg.reader_id))

    def _on_flush_complete(self, conn: ClientConnection, msg: Message) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def build_card(spec, context) -> VSCardServerCard:
    """The `passthru` engine of a slot (options.ENGINES)."""
    return VSCardServerCard(listen=spec.listen_address(), allow=spec.allow or None,
                            stay_attached=spec.stay_attached or context.shared_gadget)
