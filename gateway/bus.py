"""A small typed in-process bus: services announce facts and ask for work, and never import each other.

Signals: "prices changed" is published by pricing after its transaction commits; the label planner
subscribes to it. Subscribers are coroutines run as tasks; a failing subscriber is logged and does
not stop the publisher or the other subscribers.

Requests (`gateway.domain.Request`): one service asks another for work - print this document, light
these labels - and exactly one service, the owner, serves each request type. A request is answered
inside the asker's open transaction, on the writer thread: the owner only validates and writes rows
(the writer's contract, see `gateway.db`), and names the signals that wake its own tasks once the
transaction commits.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from gateway.domain import Request
from gateway.storage import StorageFull

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")
Q = TypeVar("Q", bound=Request[Any])
Subscriber = Callable[[Any], Awaitable[None]]


class Transaction(Protocol):
    """What a request's owner gets: the asker's open transaction and a way to signal after it commits."""

    @property
    def conn(self) -> sqlite3.Connection: ...

    def after_commit(self, signal: object) -> None: ...


class NoOwner(LookupError):
    """A request nobody serves: a wiring mistake of ours (the owning service is not in the daemon's list)."""


class Bus:
    """Publish/subscribe by signal type."""

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Subscriber]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()
        self._owners: dict[type, Callable[[Transaction, Any], Any]] = {}

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

    def serve(self, request_type: type[Q], owner: Callable[[Transaction, Q], Any]) -> None:
        """Make `owner` the one handler of `request_type` (at setup, before anything runs)."""
        if request_type in self._owners:
            raise ValueError(f"{request_type.__name__} is already served by {self._owners[request_type]!r}")
        self._owners[request_type] = owner

    def ask(self, tx: Transaction, request: Request[R]) -> R:
        """Have the owner of `request`'s type do it in `tx` (the caller's transaction); return its answer."""
        owner = self._owners.get(type(request))
        if owner is None:
            raise NoOwner(f"no service serves {type(request).__name__}")
        result: R = owner(tx, request)
        return result

    async def _run(self, callback: Subscriber, signal: object) -> None:
        try:
            await callback(signal)
        except StorageFull:  # counted by the state database and reported once space returns
            log.debug("subscriber %s: the disk is full", getattr(callback, "__qualname__", callback))
        except Exception:
            log.exception("subscriber %s failed on %s", getattr(callback, "__qualname__", callback), signal)

    async def drain(self) -> None:
        """Wait for subscribers still running (used at shutdown and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
