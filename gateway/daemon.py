"""The daemon: open the state database, start the services and the uplink, stop cleanly on a signal.

SIGTERM or SIGINT: stop taking commands, let the in-flight publishes get their PUBACK, write what
is queued to the state database, publish the retained `offline` state and exit 0 - all within the
10 s systemd gives (`TimeoutStopSec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from collections.abc import Callable

from gateway import __version__, systemd
from gateway.bus import Bus
from gateway.clock import WallClock, last_recorded
from gateway.commands import Dispatcher
from gateway.config import Config
from gateway.db import StateDB, set_meta
from gateway.instance import InstanceLock
from gateway.labels.service import LabelService
from gateway.orders import OrderService
from gateway.pricing import PricingService
from gateway.printing.service import PrintingService
from gateway.scanning import ScanningService
from gateway.service import Gateway, Service
from gateway.shelves import ShelfService
from gateway.stock import StockService
from gateway.storage import StorageFull
from gateway.supervisor import Supervisor
from gateway.timeutil import rfc3339, utc_now
from gateway.uplink import Uplink

log = logging.getLogger(__name__)

# The domain services, one per concern. Adding a feature is adding a service here. (Their heavy
# libraries - Pillow, python-escpos, biip, bleak - load on first use, not on import. The HTTP server is
# not among them: it is added in `_run` only when the config has an [http] table.)
SERVICES: list[Callable[[Gateway], Service]] = [
    PricingService,
    StockService,
    LabelService,
    PrintingService,
    ScanningService,
    ShelfService,
    OrderService,
]

_STOP_BUDGET_S = 8.0


async def run(config: Config, *, stop: asyncio.Event | None = None) -> int:
    """Run the gateway until `stop` is set or SIGTERM/SIGINT arrives; return the exit code.

    Raises AlreadyRunning (a LockError), before touching the state database, if another gateway runs on it.
    """
    lock = InstanceLock(config.state.path)
    lock.acquire()
    try:
        return await _run(config, stop or asyncio.Event())
    finally:
        lock.release()


async def _run(config: Config, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    db = StateDB(config.state.path)
    await db.start()
    started_at = rfc3339(utc_now())

    def record_start(conn: sqlite3.Connection) -> None:
        set_meta(conn, "daemon.started_at", started_at)
        set_meta(conn, "daemon.version", __version__)
        set_meta(conn, "daemon.state", "running")
        set_meta(conn, "store.id", config.store.id)

    reference = await db.read(last_recorded)  # before this start records anything with the clock it has now
    try:
        await db.write(record_start)
    except StorageFull:
        pass  # a start on a full disk runs degraded (the state database has said so)
    gateway = Gateway(config, db, Bus(), Dispatcher(config.uplink.max_command_bytes), Supervisor(db))
    clock = WallClock(gateway.bus, reference)
    gateway.add_task("clock", clock.watch)
    services = [make(gateway) for make in SERVICES]
    if config.http is not None:
        # aiohttp and the API's models cost about 15 MB and 0.2 s of start: loaded only when [http] asks
        from gateway.http.server import HttpService

        services.append(HttpService(gateway))
    for service in services:
        service.setup()
    uplink = Uplink(config, db, gateway.apply_command, version=__version__, started_at=started_at)
    gateway.metrics.watch_uplink(uplink)

    tasks: list[asyncio.Task[None]] = []
    uplink_task = loop.create_task(gateway.supervisor.supervise("uplink", uplink.run), name="uplink")
    for part in gateway.parts:
        tasks.append(loop.create_task(gateway.supervisor.supervise(part.name, part.run, part.device), name=part.name))
    watchdog = loop.create_task(_watchdog(), name="watchdog")
    log.info(
        "store-gateway %s running for store %s with %s",
        __version__,
        config.store.id,
        ", ".join(s.name for s in services),
    )
    systemd.notify(f"READY=1\nSTATUS=running for store {config.store.id}")

    await stop.wait()
    log.info("stopping: finishing in-flight work")
    systemd.notify("STOPPING=1")
    deadline = loop.time() + _STOP_BUDGET_S
    await uplink.stop()
    for service in services:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service.stop(), max(0.1, deadline - loop.time() - 3))
    try:
        await asyncio.wait_for(asyncio.shield(uplink_task), max(0.1, deadline - loop.time() - 1))
    except TimeoutError:
        log.warning("uplink did not finish in time")
    everything = [*tasks, uplink_task, watchdog]
    for task in everything:
        task.cancel()
    _, stuck = await asyncio.wait(everything, timeout=max(0.5, deadline - loop.time()))
    for task in stuck:  # e.g. a blocking device call in a worker thread; do not wait past the budget
        log.warning("%s did not stop in time; leaving it", task.get_name())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gateway.bus.drain(), max(0.1, deadline - loop.time()))
    await uplink.flush()
    with contextlib.suppress(StorageFull):  # status then says it did not stop cleanly, which is true enough
        await db.write(lambda conn: set_meta(conn, "daemon.state", "stopped"))
    await db.close()
    log.info("stopped")
    return 0


async def _watchdog() -> None:
    """Ping systemd's watchdog while the event loop turns (a stuck loop gets the daemon restarted)."""
    interval = systemd.watchdog_interval_s()
    if interval is None:
        return
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
