"""A 100k-item price file through the real command path vs a bare SQLite executemany of the same rows.

Run: .venv/bin/python bench/price_file.py [--items 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from _common import emit, price_items, progress  # type: ignore[import-not-found]

from gateway.bus import Bus
from gateway.commands import Dispatcher
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.pricing import PriceSet, PricingService
from gateway.service import Gateway
from gateway.supervisor import Supervisor


def raw_baseline(path: Path, items: list[dict[str, object]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE products (sku TEXT PRIMARY KEY, gtin TEXT, name TEXT, currency TEXT, price_minor INTEGER, "
        "version INTEGER, updated_ms INTEGER)"
    )
    conn.execute("CREATE INDEX products_by_gtin ON products (gtin) WHERE gtin IS NOT NULL")
    rows = [
        (i["sku"], i["gtin"], i["name"], i["currency"], round(float(str(i["price"])) * 100), i["version"], 0)
        for i in items
    ]
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


async def ours(path: Path, items: list[dict[str, object]], chunk: int) -> tuple[float, float, int]:
    config = parse_config({"store": {"id": "B1"}, "state": {"path": str(path)}, "uplink": {"url": "mqtt://127.0.0.1"}})
    db = StateDB(path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    PricingService(gateway).setup()
    payloads = [
        json.dumps({"id": f"c{n}", "type": "price.set", "data": {"items": items[s : s + chunk]}}).encode()
        for n, s in enumerate(range(0, len(items), chunk))
    ]
    start = time.perf_counter()
    results = await asyncio.gather(*(gateway.apply_command(p, "price.set") for p in payloads))
    first = time.perf_counter() - start
    applied = sum(r.applied for r in results)
    again = [p.replace(b'"id": "c', b'"id": "again-c') for p in payloads]
    start = time.perf_counter()
    results = await asyncio.gather(*(gateway.apply_command(p, "price.set") for p in again))
    second = time.perf_counter() - start
    assert sum(r.skipped for r in results) == len(items)
    await db.close()
    return first, second, applied


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    items = price_items(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"raw executemany of {args.items} rows...")
        raw = raw_baseline(Path(tmp) / "raw.db", items)
        progress(f"price.set commands of {args.chunk} items through Dispatcher and the group-committing writer...")
        first, second, applied = asyncio.run(ours(Path(tmp) / "state.db", items, args.chunk))
    assert applied == args.items
    start = time.perf_counter()
    for s in range(0, len(items), args.chunk):
        PriceSet.model_validate(json.loads(json.dumps({"items": items[s : s + args.chunk]})))
    validation = time.perf_counter() - start
    emit(
        {
            "bench": "price_file",
            "items": args.items,
            "chunk": args.chunk,
            "ours_s": round(first, 3),
            "ours_items_per_s": round(args.items / first),
            "raw_executemany_s": round(raw, 3),
            "raw_items_per_s": round(args.items / raw),
            "ratio_time_ours_over_raw": round(first / raw, 2),
            "target_ratio": 3.0,
            "second_push_all_stale_s": round(second, 3),
            "of_which_json_and_validation_s": round(validation, 3),
            "pragmas": "journal_mode=WAL synchronous=FULL (both)",
            "label_plan": "measured by bench/labels.py (the plan of a 50k-sku price change)",
        }
    )


if __name__ == "__main__":
    main()
