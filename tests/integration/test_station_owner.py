"""One owner per label station: restarted a hundred times, it leaves no socket, task or memory behind."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import sqlite3
from pathlib import Path

import pytest

from gateway.bus import Bus
from gateway.commands import Dispatcher
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.labels.service import LabelService
from gateway.pricing import PricingService
from gateway.service import Gateway
from gateway.supervisor import Supervisor
from tests.peers.oepl_ap import FakeAccessPoint


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_failing_station_restarted_100_times_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    config = parse_config({
        "store": {"id": "S"}, "state": {"path": str(tmp_path / "s.db")}, "uplink": {"url": "mqtt://127.0.0.1:9"},
        "label_stations": [{"id": "ap", "backend": "openepaperlink", "url": f"http://127.0.0.1:{port}"}],
    })  # fmt: skip
    db = StateDB(config.state.path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    labels = LabelService(gateway)
    labels.setup()
    caplog.set_level(logging.WARNING)

    async def restarts(count: int) -> None:
        for _ in range(count):  # the access point is down: each start fails, as under the supervisor
            with pytest.raises(OSError):
                await labels.run_station("ap")

    async def up_and_cancelled(ap: FakeAccessPoint, count: int) -> None:
        for _ in range(count):  # up, its websocket open, then the owner is cancelled (a restart, a stop)
            owner = asyncio.create_task(labels.run_station("ap"))
            for _ in range(100):
                if ap.sockets:
                    break
                await asyncio.sleep(0.01)
            assert ap.sockets, "the owner opened the station's websocket"
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)

    await restarts(10)  # warm-up: imports, pools, caches
    ap = await FakeAccessPoint().start(port)
    await up_and_cancelled(ap, 3)
    await ap.stop()
    gc.collect()
    fds, tasks, rss = open_fds(), len(asyncio.all_tasks()), rss_kb()

    await restarts(100)
    ap = await FakeAccessPoint().start(port)
    await up_and_cancelled(ap, 20)
    await ap.stop()
    await asyncio.sleep(0.1)
    gc.collect()

    assert open_fds() <= fds, "no socket left open"
    assert len(asyncio.all_tasks()) <= tasks, "no task left running"
    assert rss_kb() - rss < 4096, "no memory kept per restart"
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
    await db.close()


async def test_the_owner_learns_every_new_labels_display_and_plans_it(tmp_path: Path) -> None:
    config = parse_config({
        "store": {"id": "S"}, "state": {"path": str(tmp_path / "s.db")}, "uplink": {"url": "mqtt://127.0.0.1:9"},
        "label_stations": [{"id": "sim", "backend": "simulator", "directory": str(tmp_path / "labels"),
                            "confirm_delay_s": 0.01}],
    })  # fmt: skip
    db = StateDB(config.state.path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    PricingService(gateway).setup()
    labels = LabelService(gateway)
    labels.setup()
    owner = asyncio.create_task(labels.run_station("sim"))
    items = [{"sku": f"S{i}", "price": "1.00", "currency": "EUR", "version": 1} for i in range(1500)]
    await gateway.apply_command(json.dumps({"id": "p", "type": "price.set", "data": {"items": items}}).encode(), None)
    assign = [{"label": f"L{i}", "sku": f"S{i}", "station": "sim"} for i in range(1500)]
    result = await gateway.apply_command(
        json.dumps({"id": "a", "type": "label.assign", "data": {"items": assign}}).encode(), None
    )
    assert result.status == "applied"

    def states(conn: sqlite3.Connection) -> dict[str, int]:
        rows = conn.execute("SELECT state, count(*) FROM labels WHERE width IS NOT NULL GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    for _ in range(600):
        if (await db.read(states)).get("confirmed") == 1500:
            break
        await asyncio.sleep(0.05)
    assert await db.read(states) == {"confirmed": 1500}  # every display read (more than a queue's worth) and shown
    assert len(list((tmp_path / "labels").glob("L*.png"))) == 1500
    owner.cancel()
    await asyncio.gather(owner, return_exceptions=True)
    await db.close()
