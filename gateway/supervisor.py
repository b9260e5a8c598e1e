"""Runs every long-lived part of the daemon as a named task and restarts what fails, with backoff.

A device that fails is recorded with status `error` and a detail naming its address and the
reason (`devices.report` logs that once, and once again when the device is back online), and its
part is started again after a capped, jittered exponential delay; it never takes the daemon down.
The retries are logged at DEBUG only. A traceback is logged only at DEBUG, or at ERROR when the
exception is not a device's (a bug of ours). A part that ran healthy for a while starts again
from the shortest delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from drivers.errors import reason
from gateway import devices
from gateway.db import StateDB
from gateway.storage import StorageFull

log = logging.getLogger(__name__)

_HEALTHY_AFTER_S = 60.0


# Exceptions of these libraries (and of our drivers) are what devices and networks do, not bugs.
_DEVICE_LIBRARIES = ("drivers", "aiohttp", "aiomqtt", "paho", "serial", "escpos", "usb", "bleak", "dbus_fast")


def is_device_error(error: BaseException) -> bool:
    """True for what a device, a network or a radio does (no traceback needed), False for a bug."""
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    return type(error).__module__.split(".")[0] in _DEVICE_LIBRARIES


def _only_full_disk(error: BaseException) -> bool:
    """True if `error` is a full disk, also as every exception of a task group's group."""
    if isinstance(error, BaseExceptionGroup):
        return all(_only_full_disk(inner) for inner in error.exceptions)
    return isinstance(error, StorageFull)


@dataclass(frozen=True)
class Device:
    """The device a supervised part drives, for `device` events."""

    id: str
    kind: str
    address: str = ""  # where it is: a URL, a serial port; named in every failure line


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
                if _only_full_disk(exc):
                    # not the part's fault, nor its device's: start it again once the disk has room
                    log.debug("%s stopped: the disk is full; starting it again when space returns", name)
                    await self.db.writable()
                    continue
                count = self.restarts.get(name, 0) + 1
                self.restarts[name] = count
                if loop.time() - started > _HEALTHY_AFTER_S:
                    delay = self.first_delay_s
                first = count == 1 or delay == self.first_delay_s
                if first and not is_device_error(exc):
                    log.exception("%s failed (a bug: please report this traceback); restarting in %.1f s", name, delay)
                elif first and device is None:  # a device's failure is logged by devices.report, once
                    log.warning("%s failed: %s; restarting with backoff", name, reason(exc))
                else:
                    log.debug("%s failed (%s); restarting in %.1f s", name, exc, delay, exc_info=True)
                if device is not None:
                    await self._report(device, reason(exc))
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self.max_delay_s)

    async def _report(self, device: Device, detail: str) -> None:
        if self.db.full is not None:
            return  # nothing can be written; the device's failure is in the log
        try:
            await self.db.write(
                lambda conn: devices.report(conn, device.id, device.kind, "error", detail[:200], device.address)
            )
        except Exception:
            log.exception("could not record the failure of %s", device.id)
