"""Running coroutines from plain pytest tests (no pytest-asyncio needed)."""

from __future__ import annotations

import asyncio

#: No single test may hang the suite longer than this.
TEST_TIMEOUT = 30.0


def run(coro, timeout: float = TEST_TIMEOUT):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
