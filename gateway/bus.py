"""A small typed in-process event bus: services announce facts, others react, neither imports the other.

"Prices changed" is published by pricing after its transaction commits; the label planner
subscribes to it. Subscribers are coroutines run as tasks; a failing subscriber is logged and
does not stop the publisher or the other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

S = TypeVar("S")
Subscriber = Callable[[Any], Awaitable[None]]


class Bus:
    """Publish/subscribe by signal type."""

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Subscriber]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, signal_type: type[S], callback: Callable[[S], Awaitable[None]]) -> None:
        self._subscribers[signal_type].append(callback)

    def publish(self, signal: object) -> None:
        """Hand `signal` to every subscriber of its type (each in its own task)."""
        for callback in self._subscribers.get(type(signal), ()):
            task = asyncio.get_running_loop().create_task(
                self._run(callback, signal), name=f"bus:{type(signal).__name__}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, callback: Subscriber, signal: object) -> None:
        try:
            await callback(signal)
        except Exception:
            log.exception("subscriber %s failed on %s", getattr(callback, "__qualname__", callback), signal)

    async def drain(self) -> None:
        """Wait for subscribers still running (used at shutdown and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
