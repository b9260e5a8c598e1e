"""What every domain service gets, and the shape it has (one extension per concern).

A service registers its commands with the dispatcher, subscribes to signals and serves requests on
the bus, and adds its long-running tasks (one per device, usually) to the supervisor. Services talk
to each other only through the state database, bus signals and typed requests (`gateway.domain`),
never by importing each other: the import-linter contracts in pyproject.toml check it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar
from zoneinfo import ZoneInfo

from gateway.bus import Bus
from gateway.commands import CommandResult, Dispatcher
from gateway.config import Config
from gateway.db import StateDB
from gateway.metrics import Metrics
from gateway.supervisor import Device, Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class LongRunningPart:
    """A service's long-running coroutine (a device's loop, a timer), supervised and restarted on failure."""

    name: str
    run: Callable[[], Awaitable[None]]
    device: Device | None = None


@dataclass
class WriteTransaction:
    """A writer job's transaction as `Bus.ask` sees it: the connection and the signals to send after commit."""

    conn: sqlite3.Connection
    signals: list[object] = field(default_factory=list)

    def after_commit(self, signal: object) -> None:
        self.signals.append(signal)


@dataclass
class Gateway:
    """The running daemon's shared parts, handed to every service."""

    config: Config
    db: StateDB
    bus: Bus
    dispatcher: Dispatcher
    supervisor: Supervisor
    parts: list[LongRunningPart] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.config.store.timezone)

    def add_task(self, name: str, part: Callable[[], Awaitable[None]], device: Device | None = None) -> None:
        """A long-running part, started by the daemon and restarted by the supervisor if it fails."""
        self.parts.append(LongRunningPart(name, part, device))

    async def write(self, job: Callable[[sqlite3.Connection], T], *signals: object) -> T:
        """Commit `job`, then publish `signals` on the bus."""
        result = await self.db.write(job)
        for signal in signals:
            self.bus.publish(signal)
        return result

    async def transact(self, job: Callable[[WriteTransaction], T]) -> T:
        """Commit `job`, which may `bus.ask` other services for work in the same transaction; then signal."""
        runs: list[WriteTransaction] = []

        def run(conn: sqlite3.Connection) -> T:
            runs.append(WriteTransaction(conn))  # the writer may run a job again: only the last run committed
            return job(runs[-1])

        result = await self.db.write(run)
        for signal in runs[-1].signals:
            self.bus.publish(signal)
        return result

    async def apply_command(self, payload: bytes, name: str | None, redelivered: bool = False) -> CommandResult:
        """The one path of every command: validate, apply, answer, in one transaction; then signal.

        Each command is logged once, at INFO, when committed: id, type, outcome and milliseconds.
        """
        started = time.perf_counter()
        # not counted as lost on a full disk: the uplink applies it again once space returns
        result = await self.db.write(
            lambda conn: self.dispatcher.handle(conn, payload, name, redelivered=redelivered), what=None
        )
        if not result.answered:
            log.info("command %s offered again by the broker: answered before, acknowledged", result.command_id)
            return result
        for signal in result.signals:
            self.bus.publish(signal)
        elapsed = time.perf_counter() - started
        known_type = result.type if result.type in self.dispatcher.supported else "unknown"  # HQ's typos: one label
        self.metrics.commands.labels(known_type, result.status).inc()
        self.metrics.command_seconds.observe(elapsed)
        first_error = f" ({result.errors[0].field}: {result.errors[0].message})" if result.errors else ""
        log.info(
            "command %s %s: %s, %d applied, %d skipped%s (%.0f ms)",
            result.command_id or "(no id)",
            result.type or name or "(no type)",
            result.status,
            result.applied,
            result.skipped,
            first_error[:200],
            elapsed * 1000,
        )
        return result


class Service:
    """Base of the domain services; subclasses override `setup` and, if needed, `stop`."""

    name = "service"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def setup(self) -> None:
        """Register commands, bus subscriptions and tasks. Runs before anything starts."""

    async def stop(self) -> None:
        """Finish in-flight work at shutdown (called before tasks are cancelled)."""
