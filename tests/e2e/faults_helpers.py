# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of tests/e2e/test_faults.py: a raw host-side CCID client, network card clients that can be
SIGKILLed mid-APDU, and daemon resource figures.

The raw client talks to the reader through the kernel's usbfs (``/dev/bus/usb/BBB/DDD``, the same
ioctls libusb uses: USBDEVFS_CLAIMINTERFACE, USBDEVFS_BULK, USBDEVFS_RESET), so loops that
re-enumerate the device hundreds of times need no pcscd restart per round. pcscd holds the
interface while it runs: stop it before opening a ``CcidDevice``.

Only the standard library (ctypes) is used: python3-usb is not installed on the test machines.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

USB_DEVICES = Path("/sys/bus/usb/devices")
CCID_CLASS = "0b"

# --------------------------------------------------------------------------- usbfs ioctls

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


class _BulkTransfer(ctypes.Structure):  # struct usbdevfs_bulktransfer
    _fields_ = [("ep", ctypes.c_uint), ("len", ctypes.c_uint), ("timeout", ctypes.c_uint),
                ("data", ctypes.c_void_p)]


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("U") << 8) | nr


USBDEVFS_BULK = _ioc(3, 2, ctypes.sizeof(_BulkTransfer))
USBDEVFS_CLAIMINTERFACE = _ioc(2, 15, 4)
USBDEVFS_RELEASEINTERFACE = _ioc(2, 16, 4)
USBDEVFS_RESET = _ioc(0, 20, 0)
USBDEVFS_CLEAR_HALT = _ioc(2, 21, 4)


def _ioctl(fd: int, request: int, arg) -> int:
    # ctypes drops the GIL around the call: a thread blocked in a bulk read does not stall the test
    ret = _libc.ioctl(fd, request, arg)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


# --------------------------------------------------------------------------- CCID messages

PC_TO_RDR_ICC_POWER_ON = 0x62
PC_TO_RDR_ICC_POWER_OFF = 0x63
PC_TO_RDR_GET_SLOT_STATUS = 0x65
PC_TO_RDR_XFR_BLOCK = 0x6F
RDR_TO_PC_DATA_BLOCK = 0x80
RDR_TO_PC_SLOT_STATUS = 0x81
RDR_TO_PC_NOTIFY_SLOT_CHANGE = 0x50

ICC_ACTIVE, ICC_INACTIVE, ICC_ABSENT = 0, 1, 2
CMD_OK, CMD_FAILED, CMD_TIME_EXTENSION = 0, 1, 2
ERR_ICC_MUTE = 0xFE

#: A bulk-IN read buffer: a whole 64 KiB message plus header, a multiple of the 512-byte packet.
READ_SIZE = 129 * 512


@dataclass
class Response:
    type: int
    slot: int
    seq: int
    status: int
    error: int
    param: int
    data: bytes

    @property
    def icc(self) -> int:
        return self.status & 0x03

    @property
    def cmd(self) -> int:
        return self.status >> 6

    @property
    def ok(self) -> bool:
        return self.cmd == CMD_OK

    @classmethod
    def parse(cls, raw: bytes) -> "Response":
        if len(raw) < 10:
            raise ProtocolError(f"short CCID message {raw.hex()}")
        mtype, length, slot, seq, status, error, param = struct.unpack_from("<BIBBBBB", raw)
        return cls(mtype, slot, seq, status, error, param, bytes(raw[10:10 + length]))

    def __str__(self) -> str:
        return (f"<{self.type:02x} slot {self.slot} seq {self.seq} status {self.status:02x} "
                f"error {self.error:02x} {len(self.data)} bytes>")


class ProtocolError(AssertionError):
    pass


def ccid_message(mtype: int, slot: int, seq: int, payload: bytes = b"", params: bytes = b"\0\0\0",
                 length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("<BIBB", mtype, n, slot, seq) + params + payload


# --------------------------------------------------------------------------- the device


def find_ccid() -> tuple[Path, Path] | None:
    """(device, interface) sysfs directories of the first USB interface of class 0x0B, or None."""
    for p in sorted(USB_DEVICES.glob("*/bInterfaceClass")):
        try:
            if p.read_text().strip().lower() != CCID_CLASS:
                continue
            iface = p.parent
            dev = USB_DEVICES / iface.name.split(":")[0]
            int((dev / "devnum").read_text())
            return dev, iface
        except (OSError, ValueError):
            continue
    return None


def wait_ccid(timeout: float = 30) -> tuple[Path, Path]:
    deadline = time.monotonic() + timeout
    while True:
        found = find_ccid()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no CCID interface on the host side within {timeout} s")
        time.sleep(0.05)


def usb_device_reset(dev: Path) -> None:
    """USBDEVFS_RESET on the device node: a port reset, the device is configured again."""
    fd = os.open(devnode(dev), os.O_RDWR)
    try:
        _ioctl(fd, USBDEVFS_RESET, None)
    finally:
        os.close(fd)


def devnode(dev: Path) -> str:
    bus = int((dev / "busnum").read_text())
    num = int((dev / "devnum").read_text())
    return f"/dev/bus/usb/{bus:03d}/{num:03d}"


class CcidDevice:
    """The reader seen from the host through usbfs. Not thread-safe: one user per instance."""

    def __init__(self, timeout: float = 30) -> None:
        self.dev, self.iface = wait_ccid(timeout)
        self.ifnum = int((self.iface / "bInterfaceNumber").read_text(), 16)
        self.ep_out = self.ep_in = self.ep_int = None
        deadline = time.monotonic() + timeout
        while self.ep_int is None:                   # sysfs ep_* links appear just after the interface
            for ep in self.iface.glob("ep_*"):
                try:
                    kind = (ep / "type").read_text().strip()
                    direction = (ep / "direction").read_text().strip()
                except OSError:
                    continue
                addr = int(ep.name[3:], 16)
                if kind == "Bulk" and direction == "out":
                    self.ep_out = addr
                elif kind == "Bulk":
                    self.ep_in = addr
                elif kind == "Interrupt":
                    self.ep_int = addr
            if self.ep_int is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no endpoints under {self.iface}")
                time.sleep(0.05)
        self.path = devnode(self.dev)
        self.fd = os.open(self.path, os.O_RDWR)
        try:
            _ioctl(self.fd, USBDEVFS_CLAIMINTERFACE, ctypes.byref(ctypes.c_uint(self.ifnum)))
        except OSError:
            os.close(self.fd)
            raise
        self.seq = 0
        self.stale = 0                               # answers with an unexpected bSeq, skipped
        self._buf = ctypes.create_string_buffer(READ_SIZE)
        self._ibuf = ctypes.create_string_buffer(64)

    def close(self) -> None:
        if self.fd is not None:
            try:
                _ioctl(self.fd, USBDEVFS_RELEASEINTERFACE, ctypes.byref(ctypes.c_uint(self.ifnum)))
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "CcidDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transfers -----------------------------------------------------------------------
    def bulk_out(self, data: bytes, timeout: float = 10) -> int:
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        t = _BulkTransfer(self.ep_out, len(data), int(timeout * 1000), ctypes.cast(buf, ctypes.c_void_p))
        return _ioctl(self.fd, USBDEVFS_BULK, ctypes.byref(t))

    def bulk_in(self, timeout: float = 10) -> bytes:
        t = _BulkTransfer(self.ep_in, READ_SIZE, int(timeout * 1000), ctypes.cast(self._buf, ctypes.c_void_p))
        n = _ioctl(self.fd, USBDEVFS_BULK, ctypes.byref(t))
        return self._buf.raw[:n]

    def interrupt_in(self, timeout: float = 1) -> bytes | None:
        """One interrupt-IN message, or None when there is none within ``timeout``."""
        t = _BulkTransfer(self.ep_int, 64, int(timeout * 1000), ctypes.cast(self._ibuf, ctypes.c_void_p))
        try:
            n = _ioctl(self.fd, USBDEVFS_BULK, ctypes.byref(t))
        except OSError as e:
            if e.errno == errno.ETIMEDOUT:
                return None
            raise
        return self._ibuf.raw[:n]

    # -- CCID ----------------------------------------------------------------------------
    def send(self, mtype: int, slot: int = 0, payload: bytes = b"", params: bytes = b"\0\0\0") -> int:
        self.seq = (self.seq + 1) & 0xFF
        self.bulk_out(ccid_message(mtype, slot, self.seq, payload, params))
        return self.seq

    def receive(self, seq: int, timeout: float = 15) -> Response:
        """The answer with bSeq ``seq`` (time extensions and stale answers skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no CCID answer to bSeq {seq} within {timeout} s")
            try:
                raw = self.bulk_in(min(left, 5))
            except OSError as e:
                if e.errno == errno.ETIMEDOUT:
                    continue
                raise
            if not raw:
                continue                              # a zero-length packet
            r = Response.parse(raw)
            if r.seq != seq:
                self.stale += 1
                continue
            if r.cmd == CMD_TIME_EXTENSION:
                continue
            return r

    def command(self, mtype: int, slot: int = 0, payload: bytes = b"", params: bytes = b"\0\0\0",
                timeout: float = 15) -> Response:
        return self.receive(self.send(mtype, slot, payload, params), timeout)

    def power_on(self, slot: int = 0, timeout: float = 15) -> bytes:
        r = self.command(PC_TO_RDR_ICC_POWER_ON, slot, timeout=timeout)
        if not r.ok or r.type != RDR_TO_PC_DATA_BLOCK:
            raise ProtocolError(f"IccPowerOn on slot {slot} failed: {r}")
        return r.data

    def slot_status(self, slot: int = 0, timeout: float = 15) -> Response:
        return self.command(PC_TO_RDR_GET_SLOT_STATUS, slot, timeout=timeout)

    def xfr(self, apdu: bytes | str, slot: int = 0, timeout: float = 30) -> Response:
        if isinstance(apdu, str):
            apdu = bytes.fromhex(apdu)
        return self.command(PC_TO_RDR_XFR_BLOCK, slot, apdu, timeout=timeout)

    def apdu(self, apdu: bytes | str, slot: int = 0, timeout: float = 30) -> tuple[bytes, int]:
        """(data, SW) of a short/extended APDU; ProtocolError if the reader fails the XfrBlock."""
        r = self.xfr(apdu, slot, timeout)
        if not r.ok or len(r.data) < 2:
            raise ProtocolError(f"XfrBlock on slot {slot} failed: {r}")
        return r.data[:-2], int.from_bytes(r.data[-2:], "big")

    def wait_present(self, slot: int = 0, present: bool = True, timeout: float = 15) -> Response:
        deadline = time.monotonic() + timeout
        while True:
            r = self.slot_status(slot)
            if (r.icc != ICC_ABSENT) == present:
                return r
            if time.monotonic() > deadline:
                raise TimeoutError(f"slot {slot} not {'present' if present else 'empty'} within {timeout} s: {r}")
            time.sleep(0.05)

    def wait_notify(self, slot: int, present: bool, timeout: float = 10) -> bytes:
        """Read NotifySlotChange messages until one reports ``slot`` present/absent; return it."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            msg = self.interrupt_in(0.5)
            if not msg:
                continue
            seen.append(msg.hex())
            if msg[0] != RDR_TO_PC_NOTIFY_SLOT_CHANGE or len(msg) < 2 + slot // 4:
                continue
            bits = msg[1 + slot // 4] >> (2 * (slot % 4))
            if bool(bits & 1) == present:
                return msg
        raise TimeoutError(f"no NotifySlotChange with slot {slot} {'present' if present else 'absent'} "
                           f"within {timeout} s (seen {seen})")


# --------------------------------------------------------------------------- host-side disruptions


def authorize_cycle(dev: Path, pause: float = 0.05) -> None:
    """Deconfigure and configure the device (host-side ``authorized`` 0/1)."""
    (dev / "authorized").write_text("0")
    time.sleep(pause)
    (dev / "authorized").write_text("1")


def driver_rebind(dev: Path, pause: float = 0.05) -> None:
    """Unbind and bind the generic usb device driver: a full re-probe."""
    Path("/sys/bus/usb/drivers/usb/unbind").write_text(dev.name)
    time.sleep(pause)
    Path("/sys/bus/usb/drivers/usb/bind").write_text(dev.name)


# --------------------------------------------------------------------------- process figures


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Figures:
    """before / after / max of a process's VmRSS and fd count."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_before = self.rss_max = self.rss_after = rss_kib(pid)
        self.fd_before = self.fd_max = self.fd_after = fd_count(pid)
        self.samples = 1

    def sample(self) -> None:
        self.rss_after, self.fd_after = rss_kib(self.pid), fd_count(self.pid)
        self.rss_max = max(self.rss_max, self.rss_after)
        self.fd_max = max(self.fd_max, self.fd_after)
        self.samples += 1

    def line(self, what: str) -> str:
        return (f"{what}: VmRSS before {self.rss_before} KiB, after {self.rss_after} KiB "
                f"({self.rss_after - self.rss_before:+d}), max {self.rss_max} KiB; "
                f"fds before {self.fd_before}, after {self.fd_after} ({self.fd_after - self.fd_before:+d}), "
                f"max {self.fd_max}; {self.samples} samples")


def report(line: str) -> None:
    """Append a figure line to $CCIDGADGET_VM_OUT/stability.txt (the host keeps it) and print it."""
    out = os.environ.get("CCIDGADGET_VM_OUT")
    if out:
        with open(Path(out) / "stability.txt", "a") as f:
            f.write(line + "\n")
    print(line, flush=True)


def daemon_status(runtime_dir: Path = Path("/run/ccidgadget"), timeout: float = 30) -> dict:
    """The daemon's status over its control socket (no CLI process to start)."""
    from ccidgadget.daemon.control import call
    return call(runtime_dir / "control.sock", "status", timeout=timeout)


# --------------------------------------------------------------------------- network card clients

VSC_INIT, VSC_ERROR, VSC_READER_ADD, VSC_READER_REMOVE, VSC_ATR, VSC_CARD_REMOVE, VSC_APDU = range(1, 8)
VSC_HEADER = struct.Struct(">III")
CLIENT_ATR = bytes.fromhex("3b951381018073ff01000b")


def vsc_msg(mtype: int, payload: bytes = b"", reader_id: int = 0) -> bytes:
    return VSC_HEADER.pack(mtype, reader_id, len(payload)) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def vsc_recv(sock: socket.socket) -> tuple[int, int, bytes]:
    mtype, rid, length = VSC_HEADER.unpack(recv_exact(sock, 12))
    return mtype, rid, recv_exact(sock, length)


def vsc_expect_success(sock: socket.socket) -> None:
    mtype, _, payload = vsc_recv(sock)
    if mtype != VSC_ERROR or payload != b"\0\0\0\0":
        raise ProtocolError(f"VSCard: expected Error(SUCCESS), got type {mtype} {payload.hex()}")


def vsc_connect(port: int, atr: bytes = CLIENT_ATR, timeout: float = 20, pipelined: bool = False) -> socket.socket:
    """A VSCard client as vscclient speaks: Init, ReaderRemove(0), ReaderAdd, ATR (card inserted).

    ``pipelined``: all four messages in one write, then the four answers (one round trip)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    init = vsc_msg(VSC_INIT, b"VSCD" + struct.pack(">II", 2, 0))
    if pipelined:
        s.sendall(init + vsc_msg(VSC_READER_REMOVE) + vsc_msg(VSC_READER_ADD, b"fault client") + vsc_msg(VSC_ATR, atr))
        if vsc_recv(s)[0] != VSC_INIT:
            raise ProtocolError("VSCard: expected Init")
        for _ in range(3):
            vsc_expect_success(s)
        return s
    s.sendall(init)
    mtype, _, _ = vsc_recv(s)
    if mtype != VSC_INIT:
        raise ProtocolError(f"VSCard: expected Init, got {mtype}")
    s.sendall(vsc_msg(VSC_READER_REMOVE) + vsc_msg(VSC_READER_ADD, b"fault client"))
    vsc_expect_success(s)
    vsc_expect_success(s)
    s.sendall(vsc_msg(VSC_ATR, atr))
    vsc_expect_success(s)
    return s


def vpcd_frame(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def vpcd_connect(port: int, atr: bytes = CLIENT_ATR, timeout: float = 20) -> socket.socket:
    """A vicc: connect, answer the reader's first get-ATR (card present)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        (n,) = struct.unpack(">H", recv_exact(s, 2))
        data = recv_exact(s, n)
        if n == 1 and data[0] == 4:
            s.sendall(vpcd_frame(atr))
            return s


def _serve_vscard(s: socket.socket, answers: int, notify: int) -> None:
    n = 0
    while True:
        mtype, rid, payload = vsc_recv(s)
        if mtype != VSC_APDU:
            continue
        n += 1
        if n > answers:
            os.write(notify, b"P")                     # an APDU is pending here: kill me now
            time.sleep(3600)
        s.sendall(vsc_msg(VSC_APDU, b"\x90\x00", rid))


def _serve_vpcd(s: socket.socket, answers: int, notify: int, atr: bytes) -> None:
    n = 0
    while True:
        (length,) = struct.unpack(">H", recv_exact(s, 2))
        data = recv_exact(s, length)
        if length == 1:
            if data[0] == 4:
                s.sendall(vpcd_frame(atr))
            continue
        n += 1
        if n > answers:
            os.write(notify, b"P")
            time.sleep(3600)
        s.sendall(vpcd_frame(b"\x90\x00"))


class ForkedClient:
    """A network card client in a forked child (no exec: cheap under TCG), killed with SIGKILL.

    The child connects, inserts its card, writes ``R`` to a pipe, answers ``answers`` APDUs with
    9000, and on the next APDU writes ``P`` and stops answering (the APDU stays pending).
    """

    def __init__(self, kind: str, port: int, answers: int = 1, atr: bytes = CLIENT_ATR) -> None:
        assert kind in ("vscard", "vpcd")
        self.kind = kind
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # child: never returns into pytest
            code = 0
            try:
                os.close(r)
                if kind == "vscard":
                    s = vsc_connect(port, atr)
                    s.settimeout(None)
                    os.write(w, b"R")
                    _serve_vscard(s, answers, w)
                else:
                    s = vpcd_connect(port, atr)
                    s.settimeout(None)
                    os.write(w, b"R")
                    _serve_vpcd(s, answers, w, atr)
            except BaseException as e:                 # noqa: BLE001 - report, then leave
                try:
                    os.write(w, b"E" + repr(e).encode()[:200])
                except OSError:
                    pass
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        self.pipe = r

    def wait_for(self, token: bytes, timeout: float = 20) -> None:
        ready, _, _ = select.select([self.pipe], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.kind} client did not report {token!r} within {timeout} s")
        got = os.read(self.pipe, 256)
        if not got.startswith(token):
            raise ProtocolError(f"{self.kind} client: expected {token!r}, got {got!r}")

    def kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None


# --------------------------------------------------------------------------- format 1 card states

def format_1_piv_card(directory: Path, scrypt_n: int = 2 ** 14) -> dict:
    """Write a format 1 PIV state (keys in clear) as ccidgadget wrote it before issue 13
    (tests/cards/v1_states.py); returns its keys and secrets for the checks after a conversion."""
    import sys
    cards_tests = str(Path(__file__).resolve().parents[1] / "cards")
    if cards_tests not in sys.path:
        sys.path.insert(0, cards_tests)
    import v1_states
    made = v1_states.piv_v1(directory, kdf={"name": "scrypt", "n": scrypt_n, "r": 8, "p": 1})
    made.update(pin=v1_states.PIN, puk=v1_states.PUK, mgmt=v1_states.MGMT)
    return made

