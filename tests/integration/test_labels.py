"""Price integrity end to end: head office changes prices, every label is confirmed or reported failed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker

STATIONS = """
[[label_stations]]
id = "aisle-1"
backend = "simulator"
directory = "{dir}/aisle-1"
confirm_delay_s = 0.05
max_in_flight = 64

[[label_stations]]
id = "aisle-2"
backend = "simulator"
directory = "{dir}/aisle-2"
confirm_delay_s = 0.05
failure_rate = 0.10
max_in_flight = 64
retries = 3
"""


def gtin(n: int) -> str:
    body = f"376{n:09d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


async def test_thousand_labels_three_waves_one_lossy_station(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="esl1", extra=STATIONS.format(dir=tmp_path))
    skus = [f"P{n:04d}" for n in range(500)]
    async with head_office(mosquitto, "esl1") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        items = [
            {"sku": s, "price": "1.00", "currency": "EUR", "gtin": gtin(n), "name": f"Article {n}", "version": 1}
            for n, s in enumerate(skus)
        ]
        assert (await hq.command("price.set", {"items": items}))["applied"] == 500
        labels = [{"label": f"{s}-a", "sku": s, "station": "aisle-1"} for s in skus]
        labels += [{"label": f"{s}-b", "sku": s, "station": "aisle-2"} for s in skus]
        assert (await hq.command("label.assign", {"items": labels}))["applied"] == 1000
        # three waves in quick succession, without waiting for the labels
        for version, price in ((2, "1.10"), (3, "1.20"), (4, "1.30")):
            wave = [{**i, "price": price, "version": version} for i in items]
            await hq.send("price.set", {"items": wave})
        await hq.count(lambda e: e.get("type") == "command_result" and e["data"]["type"] == "price.set", 4)
        db = tmp_path / "state.db"
        for _ in range(600):
            conn = sqlite3.connect(db)
            busy = conn.execute("SELECT count(*) FROM labels WHERE state IN ('pending', 'sent')").fetchone()[0]
            conn.close()
            if busy == 0:
                break
            await asyncio.sleep(0.1)
        assert busy == 0, f"{busy} labels still in flight"
        await asyncio.sleep(0.3)  # let the last label events reach head office
        events = [e["data"] for e in hq.events if e["type"] == "label"]
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT l.station, l.label, l.state, l.confirmed_hash, l.wanted_hash, l.confirmed_version, p.version, "
        "l.confirmed_price FROM labels l JOIN products p ON p.sku = l.sku"
    ).fetchall()
    conn.close()
    assert len(rows) == 1000
    failed = {(r[0], r[1]) for r in rows if r[2] == "failed"}
    for _station, label, state, confirmed, wanted, confirmed_version, version, price in rows:
        if state == "failed":
            continue
        assert state == "confirmed", (label, state)
        assert confirmed == wanted and confirmed_version == version == 4 and price == "1.30", label
    # every failed label was reported to head office; none shows an older price without being flagged
    reported_failed = {(e["station"], e["label"]) for e in events if e["status"] == "failed"}
    assert failed <= reported_failed
    assert all(k[0] == "aisle-2" for k in failed), "only the lossy station may fail labels"
    last_confirmed = {}
    for event in events:
        if event["status"] == "confirmed":
            last_confirmed[(event["station"], event["label"])] = event["price"]
    assert all(price == "1.30" for key, price in last_confirmed.items() if key not in failed)
    # coalescing: far fewer sends than 1000 labels x 4 prices
    sends = sum(1 for e in events if e["status"] == "sent")
    assert sends < 3000, sends
    assert len(list((tmp_path / "aisle-1").glob("*.png"))) == 500


async def test_unchanged_render_is_not_sent_again(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="esl2", extra=STATIONS.format(dir=tmp_path))
    async with head_office(mosquitto, "esl2") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        item = {"sku": "S", "price": "2.00", "currency": "EUR", "name": "Sel fin", "version": 1}
        await hq.command("price.set", {"items": [item]})
        await hq.command("label.assign", {"items": [{"label": "s-1", "sku": "S", "station": "aisle-1"}]})
        await hq.wait_for(lambda e: e.get("type") == "label" and e["data"]["status"] == "confirmed")
        # a new version with the same visible content: nothing to send
        await hq.command("price.set", {"items": [{**item, "version": 2}]})
        await asyncio.sleep(0.5)
        sent = [e for e in hq.events if e["type"] == "label" and e["data"]["status"] == "sent"]
        assert len(sent) == 1
