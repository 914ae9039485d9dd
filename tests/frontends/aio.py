"""Running coroutines from plain pytest tests (no pytest-asyncio needed)."""

from __future__ import annotations

import asyncio

TEST_TIMEOUT = 30.0


def run(coro, timeout: float = TEST_TIMEOUT):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())
