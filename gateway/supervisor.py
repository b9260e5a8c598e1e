"""Runs every long-lived part of the daemon as a named task and restarts what fails, with backoff.

A driver that crashes is logged once with its traceback, reported as a `device` event with
status `error`, and started again after a capped, jittered exponential delay; it never takes the
daemon down. A part that ran healthy for a while starts again from the shortest delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import devices
from gateway.db import StateDB

log = logging.getLogger(__name__)

_HEALTHY_AFTER_S = 60.0


@dataclass(frozen=True)
class Device:
    """The device a supervised part drives, for `device` events."""

    id: str
    kind: str


class Supervisor:
    """Restart-with-backoff for the daemon's tasks."""

    def __init__(self, db: StateDB, *, first_delay_s: float = 1.0, max_delay_s: float = 60.0) -> None:
        self.db = db
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.restarts: dict[str, int] = {}

    async def supervise(self, name: str, part: Callable[[], Awaitable[None]], device: Device | None = None) -> None:
        """Run `part()` until it returns; restart it whenever it raises."""
        delay = self.first_delay_s
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await part()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                count = self.restarts.get(name, 0) + 1
                self.restarts[name] = count
                if loop.time() - started > _HEALTHY_AFTER_S:
                    delay = self.first_delay_s
                if count == 1 or delay == self.first_delay_s:
                    log.exception("%s failed; restarting in %.1f s", name, delay)
                else:
                    log.warning("%s failed again (%s: %s); restarting in %.1f s", name, type(exc).__name__, exc, delay)
                if device is not None:
                    await self._report(device, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self.max_delay_s)

    async def _report(self, device: Device, detail: str) -> None:
        try:
            await self.db.write(lambda conn: devices.report(conn, device.id, device.kind, "error", detail[:200]))
        except Exception:
            log.exception("could not record the failure of %s", device.id)
