"""Shelf sensors on the in-store broker (a real mosquitto), through the gateway to head office."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt

from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker

SHELF = """
[local_mqtt]
url = "{url}"

[[sensors]]
id = "shelf-a1"
backend = "mqtt"
topic = "sensors/shelf-a1"
expected_interval_s = 1.5

[[shelves]]
sensor = "shelf-a1"
sku = "A1"
unit_weight_g = 400
capacity = 12
low = 3
"""


async def test_weights_to_shelf_events_replenishment_and_silence(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="shelf1", extra=SHELF.format(url=mosquitto.url))
    async with head_office(mosquitto, "shelf1") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        await hq.command("stock.set", {"items": [{"sku": "A1", "on_hand": 20, "version": 1}]})
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sensor:
            await asyncio.sleep(0.3)

            async def weigh(grams: float, times: int = 6) -> None:
                for _ in range(times):
                    await sensor.publish("sensors/shelf-a1", json.dumps({"weight_g": grams}).encode())
                    await asyncio.sleep(0.02)

            await weigh(12 * 400 + 3)
            first = await hq.wait_for(lambda e: e.get("type") == "shelf")
            assert first["data"] == {"sensor": "shelf-a1", "sku": "A1", "units": 12, "level": "ok"}
            await sensor.publish("sensors/shelf-a1", b"not json")  # dropped with a log line
            await weigh(2 * 400 - 4)
            alert = await hq.wait_for(lambda e: e.get("type") == "replenishment")
            assert alert["data"]["status"] == "needed" and alert["data"]["level"] == "low"
            assert alert["data"]["to_bring"] == 10 and alert["data"]["back_store_available"] == 20
            await weigh(12 * 400)
            await hq.wait_for(lambda e: e.get("type") == "replenishment" and e["data"]["status"] == "restored")
            # then the sensor falls silent
            offline = await hq.wait_for(
                lambda e: (
                    e.get("type") == "device" and e["data"]["device"] == "shelf-a1" and e["data"]["status"] == "offline"
                ),
                timeout=10,
            )
            assert "silent" in offline["data"]["detail"]
        shelves = [e["data"]["units"] for e in hq.events if e["type"] == "shelf"]
        assert shelves == [12, 2, 12]


async def test_head_office_sets_a_shelf_slot(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="shelf2", extra=SHELF.format(url=mosquitto.url))
    async with head_office(mosquitto, "shelf2") as hq:
        async with running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            slot = {"sensor": "shelf-a1", "sku": "A1", "unit_weight_g": 750, "tare_g": 100, "capacity": 8, "low": 2}
            assert (await hq.command("shelf.set", {"items": [slot]}))["status"] == "applied"
            bad = await hq.command("shelf.set", {"items": [{**slot, "sensor": "nope"}, {**slot, "low": 9}]})
            assert [e["field"] for e in bad["errors"]] == ["data.items[0].sensor", "data.items[1].low"]
        async with running_gateway(config):  # kept across a restart
            await hq.wait_for(lambda s: s.get("state") == "online" and s["started_at"] != hq.states[0]["started_at"])
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sensor:
                await asyncio.sleep(0.3)
                for _ in range(6):
                    await sensor.publish("sensors/shelf-a1", json.dumps({"weight_g": 100 + 5 * 750}).encode())
                    await asyncio.sleep(0.02)
                shelf = await hq.wait_for(lambda e: e.get("type") == "shelf")
                assert shelf["data"] == {"sensor": "shelf-a1", "sku": "A1", "units": 5, "level": "ok"}
