"""A vicc for the tests, written from vsmartcard's protocol description.

Connects to a vpcd (our server engine), answers get-ATR with its ATR and every
C-APDU with `answer(apdu)`; power off/on/reset are recorded, never answered.
"""

from __future__ import annotations

import asyncio
import struct

VICC_ATR = bytes.fromhex("3b951381018073ff01000b")


class FakeVicc:
    def __init__(self, addr, atr: bytes = VICC_ATR, answer=None) -> None:
        self.addr = addr
        self.atr = atr
        self.answer = answer or (lambda apdu: b"\x90\x00")
        self.log: list[str] = []
        self.apdus: list[bytes] = []
        self.hold = asyncio.Event()           # cleared: stop answering APDUs
        self.hold.set()
        self.got_apdu = asyncio.Event()
        self.reader = self.writer = None
        self.task: asyncio.Task | None = None

    async def start(self) -> "FakeVicc":
        self.reader, self.writer = await asyncio.open_connection(*self.addr)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            while True:
                (n,) = struct.unpack(">H", await self.reader.readexactly(2))
                data = await self.reader.readexactly(n)
                if n == 1:
                    code = data[0]
                    self.log.append({0: "off", 1: "on", 2: "reset", 4: "atr"}.get(code, f"?{code}"))
                    if code == 4:
                        self.writer.write(struct.pack(">H", len(self.atr)) + self.atr)
                    continue
                self.apdus.append(data)
                self.got_apdu.set()
                await self.hold.wait()
                r = self.answer(data)
                self.writer.write(struct.pack(">H", len(r)) + r)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.log.append("eof")

    async def closed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()
