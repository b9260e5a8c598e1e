"""A scheduled price's labels are rendered ahead and sent at the instant, not rendered then."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.bus import Bus
from gateway.commands import Dispatcher
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.labels.service import LabelService
from gateway.pricing import PricesChanged, PricingService, apply_due
from gateway.service import Gateway
from gateway.supervisor import Supervisor
from gateway.timeutil import rfc3339


async def test_scheduled_price_labels_are_rendered_ahead(tmp_path: Path) -> None:
    config = parse_config({
        "store": {"id": "S"}, "state": {"path": str(tmp_path / "s.db")}, "uplink": {"url": "mqtt://127.0.0.1:9"},
        "label_stations": [{"id": "sim", "backend": "simulator", "directory": str(tmp_path / "labels")}],
    })  # fmt: skip
    db = StateDB(config.state.path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    PricingService(gateway).setup()
    labels = LabelService(gateway)
    labels.setup()

    async def send(name: str, data: dict[str, object]) -> None:
        payload = json.dumps({"id": f"{name}-{len(data)}-{datetime.now().timestamp()}", "type": name, "data": data})
        result = await gateway.apply_command(payload.encode(), name)
        assert result.status == "applied", result.errors
        await gateway.bus.drain()

    item = {"sku": "A1", "price": "2.00", "currency": "EUR", "name": "Sucre 1 kg", "version": 1}
    await send("price.set", {"items": [item]})
    owner = asyncio.create_task(labels.run_station("sim"))  # the station's owner learns the label's display
    await send("label.assign", {"items": [{"label": "a1", "sku": "A1", "station": "sim"}]})
    for _ in range(100):
        if await db.read(lambda conn: conn.execute("SELECT width FROM labels WHERE label = 'a1'").fetchone()[0]):
            break
        await asyncio.sleep(0.05)
    await gateway.bus.drain()
    owner.cancel()  # from here the queue is looked at, not sent
    await asyncio.gather(owner, return_exceptions=True)
    at = datetime.now(UTC) + timedelta(hours=3)
    await send("price.set", {"items": [{**item, "price": "1.75", "version": 2, "valid_from": rfc3339(at)}]})
    assert ("sim", "a1", 2) in labels.prerendered
    ahead = labels.prerendered[("sim", "a1", 2)]
    changed = await db.write(lambda conn: apply_due(conn, at))
    assert changed == ["A1"]
    gateway.bus.publish(PricesChanged(tuple(changed)))
    await gateway.bus.drain()
    assert labels.prerender_hits == 1
    wanted = await db.read(lambda conn: conn.execute("SELECT wanted_hash, wanted_price FROM labels").fetchone())
    assert tuple(wanted) == (ahead.content_hash, "1.75")
    assert labels.queues["sim"].waiting["a1"][1] == ahead.content_hash
    await asyncio.sleep(0)
    await db.close()
