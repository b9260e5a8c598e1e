"""What every domain service gets, and the shape it has (one extension per concern).

A service registers its commands with the dispatcher, subscribes to signals on the bus, and adds
its long-running tasks (one per device, usually) to the supervisor. Services talk to each other
only through the state database and bus signals, never by calling each other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar
from zoneinfo import ZoneInfo

from gateway.bus import Bus
from gateway.commands import CommandResult, Dispatcher
from gateway.config import Config
from gateway.db import StateDB
from gateway.supervisor import Device, Supervisor

T = TypeVar("T")


@dataclass
class Task:
    name: str
    part: Callable[[], Awaitable[None]]
    device: Device | None = None


@dataclass
class Gateway:
    """The running daemon's shared parts, handed to every service."""

    config: Config
    db: StateDB
    bus: Bus
    dispatcher: Dispatcher
    supervisor: Supervisor
    tasks: list[Task] = field(default_factory=list)

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.config.store.timezone)

    def add_task(self, name: str, part: Callable[[], Awaitable[None]], device: Device | None = None) -> None:
        """A long-running part, started by the daemon and restarted by the supervisor if it fails."""
        self.tasks.append(Task(name, part, device))

    async def write(self, job: Callable[[sqlite3.Connection], T], *signals: object) -> T:
        """Commit `job`, then publish `signals` on the bus."""
        result = await self.db.write(job)
        for signal in signals:
            self.bus.publish(signal)
        return result

    async def apply_command(self, payload: bytes, name: str | None) -> CommandResult:
        """The one path of every command: validate, apply, answer, in one transaction; then signal."""
        result = await self.db.write(lambda conn: self.dispatcher.handle(conn, payload, name))
        for signal in result.signals:
            self.bus.publish(signal)
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
