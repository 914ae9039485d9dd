"""A VSCard client for the tests, written from vscard_common.h, not from our codec.

It speaks as libcacard's vscclient does: big-endian 12-byte headers, Init with
the raw "VSCD" magic, ReaderRemove(0) then ReaderAdd, ATR, APDU answers, and
reader id 0 in every header it sends.
"""

from __future__ import annotations

import asyncio
import struct

INIT, ERROR, READER_ADD, READER_REMOVE, ATR, CARD_REMOVE, APDU, FLUSH, FLUSH_COMPLETE = range(1, 10)
SUCCESS, GENERAL_ERROR, CANNOT_ADD_MORE_READERS, CARD_ALREADY_INSERTED = range(4)
UNDEFINED_READER = 0xFFFFFFFF
VERSION_0_0_2 = 2


def msg(mtype: int, payload: bytes = b"", reader_id: int = 0) -> bytes:
    return struct.pack(">III", mtype, reader_id, len(payload)) + payload


def init_payload(version: int = VERSION_0_0_2, magic: bytes = b"VSCD", caps=(0,)) -> bytes:
    return magic + struct.pack(">I", version) + b"".join(struct.pack(">I", c) for c in caps)


class VSCClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, addr) -> "VSCClient":
        r, w = await asyncio.open_connection(*addr)
        return cls(r, w)

    def send(self, mtype: int, payload: bytes = b"", reader_id: int = 0) -> None:
        self.writer.write(msg(mtype, payload, reader_id))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        hdr = await asyncio.wait_for(self.reader.readexactly(12), timeout)
        mtype, rid, length = struct.unpack(">III", hdr)
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return mtype, rid, payload

    async def expect_error(self, code: int, timeout: float = 5.0) -> int:
        mtype, rid, payload = await self.recv(timeout)
        assert mtype == ERROR, (mtype, payload)
        assert struct.unpack(">I", payload)[0] == code, payload.hex()
        return rid

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (EOF or RST) within ``timeout``, whatever it
        sent before; False while it keeps the connection open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(self.reader.read(65536), left):
                    return True
        except ConnectionResetError:
            return True
        except asyncio.TimeoutError:
            pass
        return False

    async def handshake(self, name: bytes = b"Test Reader") -> int:
        """Init, ReaderRemove(0), ReaderAdd as vscclient does; return the reader id given."""
        self.send(INIT, init_payload())
        mtype, rid, payload = await self.recv()
        assert mtype == INIT and rid == UNDEFINED_READER
        assert payload[:4] == b"VSCD" and struct.unpack(">I", payload[4:8])[0] == VERSION_0_0_2
        self.send(READER_REMOVE, reader_id=0)
        await self.expect_error(SUCCESS)
        self.send(READER_ADD, name)
        return await self.expect_error(SUCCESS)

    async def insert(self, atr: bytes) -> None:
        self.send(ATR, atr)
        await self.expect_error(SUCCESS)

    async def serve_apdu(self, answer) -> bytes:
        """Receive one APDU, answer it with answer(apdu); return the APDU."""
        mtype, rid, apdu = await self.recv()
        assert mtype == APDU, mtype
        self.send(APDU, answer(apdu))
        return apdu

    def close(self) -> None:
        self.writer.close()
