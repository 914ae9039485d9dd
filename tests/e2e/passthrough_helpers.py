# SPDX-License-Identifier: GPL-3.0-or-later
"""Peers for the passthrough engines, for the e2e tests and scripts/bench_engines.py.

* `VSCardClient`: a blocking VSCard client written from libcacard's
  ``vscard_common.h`` (not from ``ccidgadget/passthrough/vscard.py``): 12-byte
  big-endian headers ``type, reader_id, length``; VSC_Init carries the magic
  "VSCD", the version (``MAKE_VERSION(0,0,2)`` = 2) and capability words.  A
  thread reads the socket: APDUs go to ``on_apdu`` (which answers, or not),
  every other message waits in a queue for the test.
* `serve_vscard` / `serve_vpcd`: a card process for the benchmark, relaying an
  in-process `IsoCard` to the daemon's VSCard or vpcd listener over loopback
  (the vpcd side plays vicc: 2-byte length, 1-byte control messages
  0 off / 1 on / 2 reset / 4 get-ATR, anything longer is a C-APDU).
* `vicc_command`: the argv that runs vsmartcard's real vicc (Debian 12's
  python3-virtualsmartcard 3.3), through `tests/passthrough/vicc.py`, with a
  one-line Python 3 fix for ``-t cryptoflex`` (its ATR is a ``str``, which
  vicc 3.3 cannot send: "TypeError: can't concat str to bytes").
* `PcscWatch`: waits on SCardGetStatusChange for a reader's card to be present
  or absent.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --------------------------------------------------------------------------- VSCard (vscard_common.h)

VSC_INIT, VSC_ERROR, VSC_READER_ADD, VSC_READER_REMOVE, VSC_ATR, VSC_CARD_REMOVE, VSC_APDU, \
    VSC_FLUSH, VSC_FLUSH_COMPLETE = range(1, 10)
VSC_SUCCESS, VSC_GENERAL_ERROR, VSC_CANNOT_ADD_MORE_READERS, VSC_CARD_ALREADY_INSERTED = range(4)
VSC_UNDEFINED_READER_ID = 0xFFFFFFFF
VSCARD_MAGIC = b"VSCD"
VSCARD_VERSION = (0 << 24) | (0 << 16) | 2          # MAKE_VERSION(0, 0, 2)
HEADER = struct.Struct(">III")


def vsc_frame(mtype: int, payload: bytes = b"", reader_id: int = 0) -> bytes:
    return HEADER.pack(mtype, reader_id, len(payload)) + payload


def vsc_init_payload(version: int = VSCARD_VERSION, magic: bytes = VSCARD_MAGIC) -> bytes:
    return magic + struct.pack(">I", version) + struct.pack(">I", 0)     # one capability word: none


class VSCardClient:
    """One VSCard connection, as vscclient would hold it (blocking, threaded reader)."""

    def __init__(self, addr: tuple[str, int], timeout: float = 30,
                 on_apdu: Callable[[bytes], bytes | None] | None = None) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.settimeout(None)                       # the reader thread blocks in recv
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.on_apdu = on_apdu
        self.apdus: list[bytes] = []                      # every APDU the reader sent us
        self.inbox: queue.Queue = queue.Queue()
        self.eof = threading.Event()                      # the read loop ended, for whatever reason
        self.closed_by_peer = False                       # ... because the daemon closed (EOF or RST)
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(target=self._read_loop, daemon=True, name="vscard-client")
        self.thread.start()

    # -- wire ---------------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while True:
                mtype, rid, length = HEADER.unpack(self._recv_exact(HEADER.size))
                payload = self._recv_exact(length)
                if mtype == VSC_APDU and self.on_apdu is not None:
                    self.apdus.append(payload)
                    answer = self.on_apdu(payload)
                    if answer is not None:
                        self.send(VSC_APDU, answer)
                    continue
                self.inbox.put((mtype, rid, payload))
        except (EOFError, ConnectionResetError):
            self.closed_by_peer = True
        except OSError:                                   # our own close() (or shutdown) ends the loop
            pass
        finally:
            self.eof.set()
            self.inbox.put(None)

    def send(self, mtype: int, payload: bytes = b"", reader_id: int = 0) -> None:
        self.send_raw(vsc_frame(mtype, payload, reader_id))

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def recv(self, timeout: float = 30) -> tuple[int, int, bytes]:
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no VSCard message from the daemon within {timeout} s") from None
        if item is None:
            self.inbox.put(None)
            raise AssertionError("the daemon closed the VSCard connection")
        return item

    def expect(self, mtype: int, timeout: float = 30) -> tuple[int, bytes]:
        got, rid, payload = self.recv(timeout)
        assert got == mtype, f"expected message type {mtype}, got {got} ({payload.hex()})"
        return rid, payload

    def expect_error(self, code: int, timeout: float = 30) -> int:
        """Wait for VSC_Error(code); return its reader id."""
        rid, payload = self.expect(VSC_ERROR, timeout)
        assert len(payload) == 4 and struct.unpack(">I", payload)[0] == code, \
            f"expected error code {code}, got {payload.hex()}"
        return rid

    def wait_closed(self, timeout: float = 30) -> bool:
        """True once the daemon has closed the connection (messages before EOF are ignored); False
        on timeout, or when the loop ended for another reason (our own close, an ``on_apdu`` error)."""
        return self.eof.wait(timeout) and self.closed_by_peer

    # -- the vscclient sequence -------------------------------------------------------
    def init(self) -> bytes:
        """VSC_Init both ways; return the daemon's Init payload."""
        self.send(VSC_INIT, vsc_init_payload())
        rid, payload = self.expect(VSC_INIT)
        assert rid == VSC_UNDEFINED_READER_ID, hex(rid)
        assert payload[:4] == VSCARD_MAGIC, payload.hex()
        assert struct.unpack(">I", payload[4:8])[0] == VSCARD_VERSION, payload.hex()
        return payload

    def add_reader(self, name: bytes = b"e2e VSCard reader") -> int:
        """ReaderRemove(0) as vscclient cleans up, then ReaderAdd; the reader id given."""
        self.send(VSC_READER_REMOVE, reader_id=0)
        self.expect_error(VSC_SUCCESS)
        self.send(VSC_READER_ADD, name)
        rid = self.expect_error(VSC_SUCCESS)
        assert rid != VSC_UNDEFINED_READER_ID
        return rid

    def insert(self, atr: bytes, reader_id: int = 0) -> None:
        self.send(VSC_ATR, atr, reader_id)
        self.expect_error(VSC_SUCCESS)

    def remove_card(self, reader_id: int = 0) -> None:
        self.send(VSC_CARD_REMOVE, reader_id=reader_id)
        self.expect_error(VSC_SUCCESS)

    def remove_reader(self, reader_id: int = 0) -> None:
        self.send(VSC_READER_REMOVE, reader_id=reader_id)
        self.expect_error(VSC_SUCCESS)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)

    def abort(self) -> None:
        """Vanish as a crashed client does: RST, no goodbye."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def __enter__(self) -> "VSCardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iso_card():
    """An emulated ISO card whose `process_apdu` answers synchronously (no event loop)."""
    from ccidgadget.cards.iso import IsoCard
    card = IsoCard()
    card.reset()
    return card


# --------------------------------------------------------------------------- card processes (benchmark)


def _connect_retry(addr: tuple[str, int], timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection(addr, timeout=5)
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def serve_vscard(port: int, host: str = "127.0.0.1", connect_timeout: float = 120) -> None:
    """Process target: a VSCard client whose reader holds an IsoCard; answers inline until EOF."""
    card = iso_card()
    s = _connect_retry((host, port), connect_timeout)

    def recv_exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def recv() -> tuple[int, bytes]:
        t, _, n = HEADER.unpack(recv_exact(HEADER.size))
        return t, recv_exact(n)

    try:
        s.sendall(vsc_frame(VSC_INIT, vsc_init_payload()))
        assert recv()[0] == VSC_INIT
        s.sendall(vsc_frame(VSC_READER_ADD, b"bench VSCard reader"))
        assert recv()[0] == VSC_ERROR
        s.sendall(vsc_frame(VSC_ATR, card.atr()))
        assert recv()[0] == VSC_ERROR
        while True:
            t, payload = recv()
            if t == VSC_APDU:
                s.sendall(vsc_frame(VSC_APDU, card.process_apdu(payload)))
    except (EOFError, OSError):
        pass


def serve_vpcd(port: int, host: str = "127.0.0.1", connect_timeout: float = 120) -> None:
    """Process target: a vicc look-alike holding an IsoCard; answers until EOF."""
    card = iso_card()
    s = _connect_retry((host, port), connect_timeout)

    def recv_exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    try:
        while True:
            (n,) = struct.unpack(">H", recv_exact(2))
            msg = recv_exact(n)
            if n == 1:
                if msg[0] == 4:
                    atr = card.atr()
                    s.sendall(struct.pack(">H", len(atr)) + atr)
                elif msg[0] in (1, 2):
                    card.reset()
                continue
            r = card.process_apdu(msg)
            s.sendall(struct.pack(">H", len(r)) + r)
    except (EOFError, OSError):
        pass


# --------------------------------------------------------------------------- real vicc

#: ATRs of vicc 3.3's card types (iso7816: makeATR(T=1, TA1=0x13); cryptoflex: a fixed T=0 ATR).
VICC_ATR = {"iso7816": bytes.fromhex("3b951381018073ff01000b"),
            "cryptoflex": bytes.fromhex("3be2000040204906")}

#: Runs vicc's script after making CryptoflexOS's str ATR bytes (vicc 3.3 is half ported to Python 3).
VICC_PY3_SHIM = '''\
import runpy, sys
from virtualsmartcard.cards import cryptoflex
_init = cryptoflex.CryptoflexOS.__init__
def __init__(self, *a, **k):
    _init(self, *a, **k)
    if isinstance(self.atr, str):
        self.atr = self.atr.encode("latin-1")
cryptoflex.CryptoflexOS.__init__ = __init__
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
'''


def vicc_command(card_type: str, port: int, shim_dir: Path, host: str = "127.0.0.1") -> list[str]:
    """argv of vsmartcard's vicc emulating `card_type`, connecting to host:port.

    Raises tests.passthrough.vicc.ViccUnavailable when vicc cannot run here."""
    from tests.passthrough.vicc import ensure_vicc
    argv = ensure_vicc()                      # [env, PYTHONPATH=..., python, -u, script]
    shim = Path(shim_dir) / "vicc_py3_shim.py"
    shim.write_text(VICC_PY3_SHIM)
    script = argv[-1]
    return [*argv[:-1], str(shim), script, "-t", card_type, "-H", host, "-P", str(port)]


# --------------------------------------------------------------------------- PC/SC state


class PcscWatch:
    """SCardGetStatusChange on one reader: wait for the card to be present or absent."""

    def __init__(self) -> None:
        from smartcard import scard
        self.s = scard
        hr, self.ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)

    def state(self, reader: str) -> int:
        hr, states = self.s.SCardGetStatusChange(self.ctx, 0, [(reader, self.s.SCARD_STATE_UNAWARE)])
        return states[0][1] if hr == self.s.SCARD_S_SUCCESS else 0

    def wait(self, reader: str, flag: int, timeout: float) -> bool:
        s = self.s
        known = s.SCARD_STATE_UNAWARE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hr, states = s.SCardGetStatusChange(self.ctx, 500, [(reader, known)])
            if hr == s.SCARD_S_SUCCESS:
                event = states[0][1]
                if event & flag:
                    return True
                known = event & ~s.SCARD_STATE_CHANGED
            elif hr != s.SCARD_E_TIMEOUT:
                time.sleep(0.2)
        return False

    def wait_present(self, reader: str, timeout: float = 30) -> bool:
        return self.wait(reader, self.s.SCARD_STATE_PRESENT, timeout)

    def wait_empty(self, reader: str, timeout: float = 30) -> bool:
        return self.wait(reader, self.s.SCARD_STATE_EMPTY, timeout)

    def close(self) -> None:
        self.s.SCardReleaseContext(self.ctx)


def tcp_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


if __name__ == "__main__":          # python tests/e2e/passthrough_helpers.py vscard|vpcd PORT
    {"vscard": serve_vscard, "vpcd": serve_vpcd}[sys.argv[1]](int(sys.argv[2]))
    os._exit(0)
