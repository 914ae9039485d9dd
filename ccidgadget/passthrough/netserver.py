"""What the two listening engines (VSCard, vpcd) share: one TCP client per slot.

Neither protocol authenticates its peer: whoever connects owns the card in
the slot.  So the listener binds to loopback by default, says so loudly when
told to listen elsewhere, can restrict clients to an allow-list of addresses
or networks, and accepts one client at a time.  A client that goes away takes
its card with it: the pending command fails with CardAbsent at once and the
slot empties, ready for the next client.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import ipaddress
import logging
import socket
from typing import Iterable

from .. import options
from ..cards.base import Card, CardAbsent

log = logging.getLogger(__name__)

Address = tuple[str, int]
IPNetwork = options.IPNetwork


def parse_allow(allow: Iterable[str] | None) -> list[IPNetwork] | None:
    """The allow-list (options.parse_allow: the same rules the configuration was checked with); None: anyone."""
    return None if allow is None else options.parse_allow(allow)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                    # a name or "" (all interfaces): assume exposed


def peer_allowed(peer_ip: str, allow: list[IPNetwork] | None) -> bool:
    if allow is None:
        return True
    try:
        addr = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in allow)


class Exclusive:
    """The engine's lock (one exchange with the client at a time), which a caller on the loop can also take
    without waiting (`try_acquire`): the reader's APDU fast path.  Released, it passes to the oldest waiter."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def locked(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        if self._held or self._waiters:
            return False
        self._held = True
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut                       # release() handed the lock over
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()              # handed over as we were cancelled: pass it on
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)        # held on behalf of the waiter from here
                return
        self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc) -> None:
        self.release()


class ClientConnection(asyncio.Protocol):
    """One accepted TCP connection; forwards everything to its server engine."""

    def __init__(self, server: "TcpCardServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer: str = "?"
        self.closed = False
        self.close_reason: str | None = None

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peername[0]}:{peername[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # One APDU per message and a peer waiting for it: never let Nagle
            # hold a small frame back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server._connection_made(self, peername[0])

    def data_received(self, data: bytes) -> None:
        if not self.closed:
            self.server._data_received(self, data)

    def connection_lost(self, exc) -> None:
        was_closed = self.closed
        self.closed = True
        self.server._connection_lost(self, exc, self.close_reason if was_closed else None)

    # helpers
    def write(self, data: bytes) -> None:
        """Write one whole frame in one call (no per-APDU buffering)."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self.transport is not None:
            self.transport.close()


class TcpCardServer(Card, metaclass=abc.ABCMeta):
    """A card engine that listens for the one client that provides its card."""

    protocol_name = "tcp"
    default_port = 0

    def __init__(self, listen: Address | None = None,
                 allow: Iterable[str] | None = None) -> None:
        super().__init__()
        self.listen = tuple(listen) if listen is not None else ("127.0.0.1", self.default_port)
        self.allow = parse_allow(allow)
        self._server: asyncio.base_events.Server | None = None
        self._client: ClientConnection | None = None
        self._pending: asyncio.Future | None = None
        self._pending_what = ""
        self._lock = Exclusive()
        self._powered = False
        # the fast path's timeout: one timer for as long as requests keep coming, not one per APDU
        self._deadline = 0.0
        self._deadline_timeout: float | None = None
        self._deadline_future: asyncio.Future | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None

    # -- life cycle -----------------------------------------------------------
    async def start(self) -> None:
        host, port = self.listen
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host or None, port, reuse_address=True)
        log.info("%s engine listening on %s", self.protocol_name, self.sockname)
        if not is_loopback_host(host):
            log.warning("%s engine listens on %s, not loopback: the %s protocol has no "
                        "authentication, anyone who can connect provides the card%s",
                        self.protocol_name, host or "all interfaces", self.protocol_name,
                        "" if self.allow else " (no allow-list set)")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._client is not None:
            client = self._client
            client.close("engine stopping")
            self._client_gone(client, "engine stopping")

    @property
    def sockname(self) -> Address | None:
        """The bound address (tells tests which port 0 became)."""
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[:2]

    @property
    def client_address(self) -> str | None:
        return self._client.peer if self._client is not None else None

    def describe(self) -> dict:
        d = super().describe()
        d.update(listen=f"{self.listen[0]}:{self.listen[1]}", client=self.client_address)
        return d

    # -- connection events (called by ClientConnection) -----------------------
    def _connection_made(self, conn: ClientConnection, peer_ip: str) -> None:
        if not peer_allowed(peer_ip, self.allow):
            log.warning("%s: refused client %s: not in the allow-list", self.protocol_name, conn.peer)
            conn.close("not in the allow-list")
            return
        if self._client is not None:
            log.warning("%s: refused client %s: the slot already has client %s",
                        self.protocol_name, conn.peer, self._client.peer)
            self._refuse_busy(conn)
            conn.close("slot busy")
            return
        log.info("%s: client %s connected", self.protocol_name, conn.peer)
        self._client = conn
        self._client_connected(conn)

    def _data_received(self, conn: ClientConnection, data: bytes) -> None:
        if conn is not self._client:
            return
        try:
            self._client_data(conn, data)
        except Exception as e:            # a bug must cost this client, not the daemon
            log.exception("%s: error handling data from %s", self.protocol_name, conn.peer)
            self._drop(conn, f"internal error: {e}")

    def _connection_lost(self, conn: ClientConnection, exc, reason: str | None) -> None:
        if conn is not self._client:
            return
        self._client_gone(conn, reason or (f"connection lost: {exc}" if exc else "client disconnected"))

    def _drop(self, conn: ClientConnection, reason: str) -> None:
        """Close a client for a protocol violation (logged once, with the reason)."""
        if conn.closed:
            return
        log.warning("%s: closing client %s: %s", self.protocol_name, conn.peer, reason)
        conn.close(reason)
        if conn is self._client:
            self._client_gone(conn, reason)

    def _client_gone(self, conn: ClientConnection, reason: str) -> None:
        if conn is not self._client:
            return
        self._client = None
        log.info("%s: client %s gone (%s)", self.protocol_name, conn.peer, reason)
        self._fail_pending(CardAbsent(f"{self.protocol_name} client gone: {reason}"))
        self._powered = False
        self._client_disconnected(conn)

    # -- one outstanding request ---------------------------------------------
    def _fail_pending(self, exc: Exception) -> None:
        fut, self._pending = self._pending, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _resolve_pending(self, value) -> bool:
        fut, self._pending = self._pending, None
        if fut is None or fut.done():
            return False
        fut.set_result(value)
        return True

    async def _request(self, frame: bytes, what: str, timeout: float | None):
        """Write `frame` and wait for the one answer; caller holds `self._lock`."""
        conn = self._client
        if conn is None:
            raise CardAbsent(f"no {self.protocol_name} client")
        fut = asyncio.get_running_loop().create_future()
        self._pending, self._pending_what = fut, what
        conn.write(frame)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            if self._pending is fut:
                self._pending = None
            self._on_timeout(conn, what, timeout)
            raise self._timeout_error(what, timeout) from None
        except asyncio.CancelledError:
            # The caller gave up (CCID Abort, daemon stopping): an answer
            # arriving later would be matched to the next command, so the
            # stream is out of step.  Drop the client.
            if self._pending is fut:
                self._pending = None
                self._drop(conn, f"{what} cancelled while outstanding")
            raise

    def _request_future(self, frame: bytes, what: str, timeout: float | None) -> asyncio.Future | None:
        """Write `frame` now and return the future of its one answer (no task, no wait_for); None if the
        engine is busy with another exchange (then `_request` queues behind it).  The caller must not hold
        the lock: the future holds it until it is done.  Cancelling the future drops the client, as
        cancelling `_request` does."""
        if not self._lock.try_acquire():
            return None
        conn = self._client
        if conn is None:
            self._lock.release()
            raise CardAbsent(f"no {self.protocol_name} client")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending, self._pending_what = fut, what
        fut.add_done_callback(lambda f: self._future_done(f, conn, what))
        if timeout is not None:
            self._deadline, self._deadline_timeout, self._deadline_future = loop.time() + timeout, timeout, fut
            if self._deadline_timer is None:
                self._deadline_timer = loop.call_at(self._deadline, self._check_deadline)
        conn.write(frame)
        return fut

    def _future_done(self, fut: asyncio.Future, conn: ClientConnection, what: str) -> None:
        self._lock.release()
        if fut.cancelled() and self._pending is fut:
            # the caller gave up (CCID Abort, reset): a late answer would be matched to the next command
            self._pending = None
            self._drop(conn, f"{what} cancelled while outstanding")

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        fut = self._pending
        if fut is None or fut.done() or fut is not self._deadline_future:
            return                          # nothing outstanding, or a `_request` (it has its own wait_for)
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:     # a later request: its own deadline
            self._deadline_timer = loop.call_at(self._deadline, self._check_deadline)
            return
        what, timeout = self._pending_what, self._deadline_timeout
        self._pending = None
        if self._client is not None:
            self._on_timeout(self._client, what, timeout)
        fut.set_exception(self._timeout_error(what, timeout))

    def _on_timeout(self, conn: ClientConnection, what: str, timeout: float | None) -> None:
        self._drop(conn, f"no answer to {what} within {timeout} s")

    @abc.abstractmethod
    def _timeout_error(self, what: str, timeout: float | None) -> Exception: ...

    # -- protocol hooks ---------------------------------------------------------
    def _refuse_busy(self, conn: ClientConnection) -> None:
        """Say something polite to a second client before it is closed."""

    @abc.abstractmethod
    def _client_connected(self, conn: ClientConnection) -> None: ...

    @abc.abstractmethod
    def _client_data(self, conn: ClientConnection, data: bytes) -> None: ...

    @abc.abstractmethod
    def _client_disconnected(self, conn: ClientConnection) -> None: ...
