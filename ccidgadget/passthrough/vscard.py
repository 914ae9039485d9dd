"""The VSCard protocol (QEMU ccid-card-passthru <-> libcacard vscclient), sans I/O.

Wire format, from libcacard `src/vscard_common.h` (protocol version 0.0.2):

- every message starts with a 12-byte header of three big-endian uint32:
  `type`, `reader_id`, `length`; `length` counts the payload only;
- VSC_Init payload: the 4 bytes "VSCD" (built so that they are in this order
  in memory on any host, i.e. *not* byte-swapped), `version` (BE uint32,
  MAKE_VERSION(major, middle, minor) = major << 21 | middle << 10 | minor),
  then capabilities (BE uint32 each; version 0.0.2 sends one, 0);
- VSC_Error payload: one uint32 code.  QEMU sends it big-endian but vscclient
  sends it in host order and neither side swaps what it reads, so a receiver
  should treat the byte order as unknown (`error_code` does);
- VSC_ReaderAdd: optional UTF-8 reader name; VSC_ATR: the raw ATR;
  VSC_APDU: a raw C-APDU (host -> client) or R-APDU (client -> host);
  ReaderRemove, CardRemove, Flush, FlushComplete: no payload.

The "host" is the reader side (QEMU, or ccidgadget's VSCard server engine);
the "client" owns the card (vscclient, spice-gtk).

`VSCardDecoder` turns received bytes into `Message`s and raises
`VSCardProtocolError` for what no compliant peer sends; `encode` and the
`*_message` helpers build the bytes to write.  `VSCardClient` is the client's
half of the conversation (what vscclient does towards QEMU), as a state
machine: bytes in, events out, bytes to write returned by its methods.  No
sockets here: the server engine (`vscard_server.py`), the client front end
(`frontends/vscard_client.py`) and the tests drive it.
"""

from __future__ import annotations

import collections
import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">III")
HEADER_SIZE = HEADER.size                     # 12

#: "VSCD" in wire order (VSCARD_MAGIC is built from the characters, not htonl'd).
VSCARD_MAGIC = b"VSCD"


def make_version(major: int, middle: int, minor: int) -> int:
    """MAKE_VERSION of vscard_common.h: 11 bits major, 11 middle, 10 minor."""
    return (major << 21) | (middle << 10) | minor


def version_tuple(version: int) -> tuple[int, int, int]:
    return version >> 21, (version >> 10) & 0x7FF, version & 0x3FF


#: The version libcacard and QEMU speak (MAKE_VERSION(0, 0, 2)).
VSCARD_VERSION = make_version(0, 0, 2)

VSCARD_UNDEFINED_READER_ID = 0xFFFFFFFF
VSCARD_MINIMAL_READER_ID = 0

#: Largest payload accepted.  The biggest legitimate message is an extended
#: C-APDU: 4 header bytes + 3 (Lc) + 65535 data + 2 (Le) = 65544 (ISO 7816-4
#: §5.1); an R-APDU is at most 65536 + 2.  QEMU's whole input buffer is 64 KiB
#: (VSCARD_IN_SIZE) and it drops the connection beyond that; we allow the one
#: maximal extended APDU and refuse anything larger.
MAX_PAYLOAD = 65544

#: Init payload: magic + version, then zero or more capabilities.
INIT_MIN_PAYLOAD = 8

#: QEMU's ccid-card-passthru collects input in one 64 KiB buffer
#: (VSCARD_IN_SIZE) and drops the connection when a message does not fit, so
#: a client may send it at most this much payload in one message.
QEMU_MAX_PAYLOAD = 64 * 1024 - 12


class MsgType(enum.IntEnum):
    """VSCMsgType."""
    INIT = 1
    ERROR = 2
    READER_ADD = 3
    READER_REMOVE = 4
    ATR = 5
    CARD_REMOVE = 6
    APDU = 7
    FLUSH = 8
    FLUSH_COMPLETE = 9


class ErrorCode(enum.IntEnum):
    """VSCErrorCode (CARD_ALREAY_INSERTED is spelled this way in the header)."""
    SUCCESS = 0
    GENERAL_ERROR = 1
    CANNOT_ADD_MORE_READERS = 2
    CARD_ALREADY_INSERTED = 3


class VSCardProtocolError(Exception):
    """The peer sent something no VSCard implementation sends; drop it."""


@dataclass(frozen=True)
class Message:
    type: MsgType
    reader_id: int
    payload: bytes = b""


@dataclass(frozen=True)
class Init:
    version: int
    capabilities: tuple[int, ...]

    @property
    def major(self) -> int:
        return version_tuple(self.version)[0]


def encode(msg_type: int, reader_id: int, payload: bytes = b"") -> bytes:
    """One complete message, header and payload, ready for a single write."""
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("payload too long")
    return HEADER.pack(int(msg_type), reader_id & 0xFFFFFFFF, len(payload)) + payload


def init_message(reader_id: int = VSCARD_UNDEFINED_READER_ID, *,
                 version: int = VSCARD_VERSION, capabilities: tuple[int, ...] = (0,)) -> bytes:
    """VSC_Init; QEMU sends it with the undefined reader id."""
    payload = VSCARD_MAGIC + struct.pack(f">I{len(capabilities)}I", version, *capabilities)
    return encode(MsgType.INIT, reader_id, payload)


def error_message(reader_id: int, code: int) -> bytes:
    """VSC_Error with the code big-endian, as QEMU sends it."""
    return encode(MsgType.ERROR, reader_id, struct.pack(">I", int(code)))


def parse_init(payload: bytes) -> Init:
    """Check magic and shape of a VSC_Init payload (vscard_common.h VSCMsgInit)."""
    if len(payload) < INIT_MIN_PAYLOAD:
        raise VSCardProtocolError(f"Init payload of {len(payload)} bytes is truncated")
    if len(payload) % 4:
        raise VSCardProtocolError(f"Init payload of {len(payload)} bytes is not whole uint32s")
    if payload[:4] != VSCARD_MAGIC:
        raise VSCardProtocolError(f"Init magic {payload[:4]!r} is not {VSCARD_MAGIC!r}")
    version, = struct.unpack_from(">I", payload, 4)
    caps = struct.unpack_from(f">{(len(payload) - 8) // 4}I", payload, 8)
    return Init(version, tuple(caps))


def error_code(payload: bytes) -> int:
    """The code of a VSC_Error, whichever byte order the sender used.

    A code is tiny (0..3), so a value that only makes sense byte-swapped is
    taken swapped (vscclient writes host order, QEMU big-endian).
    """
    if len(payload) < 4:
        raise VSCardProtocolError(f"Error payload of {len(payload)} bytes is truncated")
    big = int.from_bytes(payload[:4], "big")
    little = int.from_bytes(payload[:4], "little")
    return big if big <= 0xFFFF or little > 0xFFFF else little


class VSCardDecoder:
    """Bytes in, `Message`s out.

    After a `VSCardProtocolError` the decoder stays broken (`error` is set)
    and the connection must be closed: VSCard has no way to resynchronise.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.error: str | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet a whole message (a truncated tail)."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> list[Message]:
        if self.error is not None:
            raise VSCardProtocolError(self.error)
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER_SIZE:
            msg_type, reader_id, length = HEADER.unpack_from(self._buf)
            try:
                if length > self.max_payload:
                    raise VSCardProtocolError(
                        f"message length {length} exceeds the maximum {self.max_payload}")
                try:
                    kind = MsgType(msg_type)
                except ValueError:
                    raise VSCardProtocolError(f"unknown message type {msg_type}") from None
            except VSCardProtocolError as e:
                self.error = str(e)
                raise
            if len(self._buf) < HEADER_SIZE + length:
                break
            payload = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])
            del self._buf[:HEADER_SIZE + length]
            out.append(Message(kind, reader_id, payload))
        return out


# -- the client's side (vscclient towards QEMU) -----------------------------------------------

class ClientState(enum.Enum):
    """Where a `VSCardClient` is in the conversation (the table is `VSCardClient._ALLOWED`)."""
    IDLE = "idle"                    # nothing sent yet
    AWAIT_INIT = "await-init"        # our Init sent, the host's not yet received
    CONNECTED = "connected"          # Init exchanged: a reader may be added
    AWAIT_READER = "await-reader"    # ReaderAdd sent, its Error reply not yet received
    READY = "ready"                  # the host accepted our reader: cards, APDUs
    REFUSED = "refused"              # the host has no room for our reader
    CLOSING = "closing"              # ReaderRemove sent: nothing more to say
    ERROR = "error"                  # the host broke the protocol; close the connection


@dataclass(frozen=True)
class HostInit:
    """The host's VSC_Init: the handshake is done, `add_reader` may be called."""
    version: int
    capabilities: tuple[int, ...]


@dataclass(frozen=True)
class ReaderAdded:
    """The host accepted the reader (VSC_Error SUCCESS) under `reader_id`."""
    reader_id: int


@dataclass(frozen=True)
class ReaderRefused:
    """The host refused the reader (CANNOT_ADD_MORE_READERS, or another code)."""
    code: int


@dataclass(frozen=True)
class Acknowledged:
    """The host's VSC_Error answer to one of our ReaderRemove, ATR or CardRemove.

    QEMU answers all three; `code` other than SUCCESS means it refused
    (GENERAL_ERROR for an ATR longer than 40 bytes or not shaped like one).
    """
    request: MsgType
    code: int

    @property
    def ok(self) -> bool:
        return self.code == ErrorCode.SUCCESS


@dataclass(frozen=True)
class ApduReceived:
    """A command APDU from the host; answer it with `answer(tag, ...)` or `fail(tag)`."""
    apdu: bytes
    tag: int


@dataclass(frozen=True)
class FlushRequested:
    """VSC_Flush (QEMU never sends it); `flush_complete()` is the answer."""


@dataclass(frozen=True)
class HostError:
    """A VSC_Error that answers nothing we sent (logged, nothing else to do)."""
    code: int


ClientEvent = HostInit | ReaderAdded | ReaderRefused | Acknowledged | ApduReceived | FlushRequested | HostError


class VSCardClient:
    """The client (card owner) side of VSCard, as libcacard's vscclient plays it, without I/O.

    The conversation, from QEMU's docs/system/devices/ccid.rst and
    `hw/usb/ccid-card-passthru.c`:

    1. we send Init (`initiate`); the host answers with its Init (QEMU also
       sends one unprompted when the device is realized, which a client that
       connected before that sees first: the second is ignored);
    2. `add_reader`: ReaderRemove(0) first, as vscclient does, so a reader
       left behind by a client that died is removed (the guest sees its card
       go), then ReaderAdd; the host answers each with VSC_Error, SUCCESS
       carrying the reader id to use (QEMU: 0) or CANNOT_ADD_MORE_READERS;
    3. `insert(atr)` sends the ATR (the card is in), `remove()` CardRemove;
       both are answered with VSC_Error;
    4. the host's APDUs come as `ApduReceived`; each gets exactly one answer,
       `answer` (VSC_APDU) or `fail` (VSC_Error, which QEMU turns into a failed
       empty DataBlock for the guest).  An APDU outstanding when the card is
       removed is abandoned: QEMU has already answered the guest with an empty
       block, so a late answer must not be sent (`answer` returns b"");
    5. `remove_reader()` on exit: CardRemove if a card is in, then ReaderRemove.

    Every VSC_Error from the host answers the oldest of our requests that
    expects one (QEMU handles messages in order).  What the host sends and no
    host should (bad magic, an APDU before the reader exists, ...) raises
    `VSCardProtocolError` and leaves the client in ERROR.
    """

    #: Which host messages each state accepts (others are a protocol error).
    _ALLOWED: dict[ClientState, frozenset[MsgType]] = {
        ClientState.IDLE: frozenset(),
        ClientState.AWAIT_INIT: frozenset({MsgType.INIT, MsgType.ERROR}),
        ClientState.CONNECTED: frozenset({MsgType.INIT, MsgType.ERROR, MsgType.FLUSH}),
        ClientState.AWAIT_READER: frozenset({MsgType.INIT, MsgType.ERROR, MsgType.FLUSH}),
        ClientState.READY: frozenset({MsgType.INIT, MsgType.ERROR, MsgType.APDU, MsgType.FLUSH}),
        ClientState.REFUSED: frozenset({MsgType.INIT, MsgType.ERROR, MsgType.FLUSH}),
        # After ReaderRemove the host may still deliver what crossed it on the wire.
        ClientState.CLOSING: frozenset({MsgType.INIT, MsgType.ERROR, MsgType.APDU, MsgType.FLUSH}),
        ClientState.ERROR: frozenset(),
    }

    def __init__(self, *, max_payload: int = MAX_PAYLOAD, host_max_payload: int = QEMU_MAX_PAYLOAD) -> None:
        self.state = ClientState.IDLE
        self.reader_id = VSCARD_UNDEFINED_READER_ID
        self.card_inserted = False
        self.host_version: int | None = None
        #: Largest payload the host takes in one message (QEMU: 64 KiB less the header).
        self.host_max_payload = host_max_payload
        self._decoder = VSCardDecoder(max_payload)
        self._awaiting: collections.deque[MsgType] = collections.deque()
        self._next_tag = 0
        self._outstanding: int | None = None

    # -- bytes in -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the host; return what they mean, in order."""
        if self.state is ClientState.ERROR:
            raise VSCardProtocolError("the connection already failed")
        try:
            messages = self._decoder.receive_data(data)
            return [event for msg in messages for event in self._handle(msg)]
        except VSCardProtocolError:
            self.state = ClientState.ERROR
            raise

    def _handle(self, msg: Message) -> list[ClientEvent]:
        if msg.type not in self._ALLOWED[self.state]:
            raise VSCardProtocolError(f"host sent {msg.type.name} while the client is {self.state.value}")
        if msg.type is MsgType.INIT:
            init = parse_init(msg.payload)
            if self.state is not ClientState.AWAIT_INIT:
                return []                      # QEMU's unprompted Init plus its answer to ours
            if init.major != version_tuple(VSCARD_VERSION)[0]:
                raise VSCardProtocolError("host speaks VSCard %d.%d.%d, incompatible with %d.%d.%d"
                                          % (version_tuple(init.version) + version_tuple(VSCARD_VERSION)))
            self.host_version = init.version
            self.state = ClientState.CONNECTED
            return [HostInit(init.version, init.capabilities)]
        if msg.type is MsgType.ERROR:
            return self._on_error(msg)
        if msg.type is MsgType.FLUSH:
            return [FlushRequested()]
        # APDU
        if self.state is ClientState.CLOSING or not self.card_inserted:
            # Crossed our CardRemove/ReaderRemove on the wire: QEMU has already
            # answered the guest.  Nothing to do with it.
            return []
        if self._outstanding is not None:
            raise VSCardProtocolError("host sent an APDU before the previous one was answered")
        self._next_tag += 1
        self._outstanding = self._next_tag
        return [ApduReceived(msg.payload, self._next_tag)]

    def _on_error(self, msg: Message) -> list[ClientEvent]:
        code = error_code(msg.payload)
        if not self._awaiting:
            return [HostError(code)]
        request = self._awaiting.popleft()
        if request is not MsgType.READER_ADD:
            return [Acknowledged(request, code)]
        if code == ErrorCode.SUCCESS and msg.reader_id != VSCARD_UNDEFINED_READER_ID:
            self.reader_id = msg.reader_id
            self.state = ClientState.READY
            return [ReaderAdded(msg.reader_id)]
        self.state = ClientState.REFUSED
        return [ReaderRefused(code if code != ErrorCode.SUCCESS else ErrorCode.GENERAL_ERROR)]

    # -- bytes out ------------------------------------------------------------------------
    def _require(self, *states: ClientState, what: str) -> None:
        if self.state not in states:
            raise RuntimeError(f"{what} while the VSCard client is {self.state.value}")

    def initiate(self, capabilities: tuple[int, ...] = (0,)) -> bytes:
        """Our VSC_Init (vscclient writes reader id 0 in every header; so do we)."""
        self._require(ClientState.IDLE, what="Init")
        self.state = ClientState.AWAIT_INIT
        return init_message(VSCARD_MINIMAL_READER_ID, capabilities=capabilities)

    def add_reader(self, name: str = "") -> bytes:
        """ReaderRemove(0), then ReaderAdd with `name` (UTF-8, may be empty)."""
        self._require(ClientState.CONNECTED, what="ReaderAdd")
        self._awaiting += (MsgType.READER_REMOVE, MsgType.READER_ADD)
        self.state = ClientState.AWAIT_READER
        return (encode(MsgType.READER_REMOVE, VSCARD_MINIMAL_READER_ID)
                + encode(MsgType.READER_ADD, VSCARD_UNDEFINED_READER_ID, name.encode()))

    def insert(self, atr: bytes) -> bytes:
        """VSC_ATR: the card is in (a second ATR while in is a re-insertion to the host)."""
        self._require(ClientState.READY, what="ATR")
        self.card_inserted = True
        self._outstanding = None
        self._awaiting.append(MsgType.ATR)
        return encode(MsgType.ATR, self.reader_id, bytes(atr))

    def remove(self) -> bytes:
        """VSC_CardRemove; abandons the outstanding APDU (QEMU answers the guest itself)."""
        self._require(ClientState.READY, what="CardRemove")
        self.card_inserted = False
        self._outstanding = None
        self._awaiting.append(MsgType.CARD_REMOVE)
        return encode(MsgType.CARD_REMOVE, self.reader_id)

    def answer(self, tag: int, rapdu: bytes) -> bytes:
        """VSC_APDU answering `tag`; b"" when that APDU was abandoned meanwhile.

        An answer larger than the host's input buffer (`host_max_payload`)
        would make QEMU drop the connection: it is failed instead.
        """
        if tag != self._outstanding or self.state is not ClientState.READY:
            return b""
        if len(rapdu) > self.host_max_payload:
            return self.fail(tag)
        self._outstanding = None
        return encode(MsgType.APDU, self.reader_id, bytes(rapdu))

    def fail(self, tag: int, code: int = ErrorCode.GENERAL_ERROR) -> bytes:
        """VSC_Error for the APDU `tag`: the card could not answer it."""
        if tag != self._outstanding or self.state is not ClientState.READY:
            return b""
        self._outstanding = None
        return error_message(self.reader_id, code)

    def flush_complete(self) -> bytes:
        return encode(MsgType.FLUSH_COMPLETE, self.reader_id if self.state is ClientState.READY
                      else VSCARD_MINIMAL_READER_ID)

    def remove_reader(self) -> bytes:
        """On the way out: CardRemove if a card is in, then ReaderRemove (vscclient's "exit")."""
        if self.state is not ClientState.READY:
            self.state = ClientState.CLOSING
            return b""
        out = self.remove() if self.card_inserted else b""
        self._awaiting.append(MsgType.READER_REMOVE)
        self.state = ClientState.CLOSING
        return out + encode(MsgType.READER_REMOVE, self.reader_id)
