"""Drain a driver's endless async iterator into a queue for the length of a test block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.asynccontextmanager
async def collecting(source: AsyncIterator[T], settle_s: float = 0.0) -> AsyncIterator[asyncio.Queue[T]]:
    """Items of `source` land in the queue while the block runs; the source is cancelled after."""
    queue: asyncio.Queue[T] = asyncio.Queue()

    async def pump() -> None:
        async for item in source:
            queue.put_nowait(item)

    task = asyncio.create_task(pump())
    await asyncio.sleep(settle_s)
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
