"""A 100k-item price file through the real command path vs a bare SQLite executemany of the same rows.

Three pushes of the file as `price.set` commands of 1000 items, handed to the writer as the uplink
does (up to COMMANDS_AHEAD waiting at once, applied in order): into an empty cache (vs a bare
INSERT executemany), the same file again (every item stale), and a newer version of every price
(vs a bare UPDATE executemany): the nightly case.

Run: .venv/bin/python bench/price_file.py [--items 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
from _common import emit, price_items, progress  # type: ignore[import-not-found]

from gateway.bus import Bus
from gateway.commands import CommandResult, Dispatcher, WireEnvelope
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.labels.service import LabelService
from gateway.pricing import PriceSet, PricingService, check_items
from gateway.service import Gateway
from gateway.supervisor import Supervisor
from gateway.uplink import COMMANDS_AHEAD

WIRE = msgspec.json.Decoder(WireEnvelope)

RAW_SCHEMA = (
    "CREATE TABLE products (sku TEXT PRIMARY KEY, gtin TEXT, name TEXT, currency TEXT, price_minor INTEGER, "
    "version INTEGER, updated_ms INTEGER)",
    "CREATE INDEX products_by_gtin ON products (gtin) WHERE gtin IS NOT NULL",
)


def raw_baseline(path: Path, items: list[dict[str, object]]) -> tuple[float, float]:
    """A bare executemany of the same rows: INSERT into an empty table, then UPDATE of every row."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for statement in RAW_SCHEMA:
        conn.execute(statement)
    rows = [
        (i["sku"], i["gtin"], i["name"], i["currency"], round(float(str(i["price"])) * 100), i["version"], 0)
        for i in items
    ]
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    insert = time.perf_counter() - start
    updates = [(r[4] + 1, 2, 1, r[0]) for r in rows]
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("UPDATE products SET price_minor = ?, version = ?, updated_ms = ? WHERE sku = ?", updates)
    conn.execute("COMMIT")
    update = time.perf_counter() - start
    conn.close()
    return insert, update


def raw_decode_and_insert(path: Path, payloads: list[bytes]) -> float:
    """Plain tools from the same JSON commands to the rows: json.loads, tuples, one executemany each.

    No validation at all: what the gateway adds on top of this is checking every field of every item.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for statement in RAW_SCHEMA:
        conn.execute(statement)
    start = time.perf_counter()
    for payload in payloads:
        items = json.loads(payload)["data"]["items"]
        rows = [
            (i["sku"], i["gtin"], i["name"], i["currency"], int(i["price"].replace(".", "")), i["version"], 0)
            for i in items
        ]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def commands(items: list[dict[str, object]], chunk: int, prefix: str) -> list[bytes]:
    return [
        json.dumps({"id": f"{prefix}{n}", "type": "price.set", "data": {"items": items[s : s + chunk]}}).encode()
        for n, s in enumerate(range(0, len(items), chunk))
    ]


async def ours(path: Path, pushes: dict[str, list[bytes]], count: int) -> dict[str, float]:
    config = parse_config(
        {
            "store": {"id": "B1"},
            "state": {"path": str(path)},
            "uplink": {"url": "mqtt://127.0.0.1"},
            "label_stations": [{"id": "sim", "backend": "simulator", "directory": str(path.parent / "labels")}],
        }
    )
    db = StateDB(path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    PricingService(gateway).setup()
    LabelService(gateway).setup()  # every price change asks the label plan which labels show the sku

    async def push(payloads: list[bytes]) -> tuple[float, list[CommandResult]]:
        # as the uplink takes them: at most COMMANDS_AHEAD handed to the writer before their commit
        ahead = asyncio.Semaphore(COMMANDS_AHEAD)

        async def apply(payload: bytes) -> CommandResult:
            async with ahead:
                return await gateway.apply_command(payload, "price.set")

        start = time.perf_counter()
        results = await asyncio.gather(*(apply(payload) for payload in payloads))
        await gateway.bus.drain()
        return time.perf_counter() - start, results

    timed = {}
    for name, expect in (("insert", "applied"), ("stale", "skipped"), ("update", "applied")):
        timed[name], results = await push(pushes[name])
        assert sum(getattr(r, expect) for r in results) == count, results[0]
    await db.close()
    return timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of baseline then ours; medians reported")
    args = parser.parse_args()
    items = price_items(args.items)
    newer = [{**item, "price": str(Decimal(str(item["price"])) + Decimal("0.01")), "version": 2} for item in items]
    pushes = {
        "insert": commands(items, args.chunk, "c"),
        "stale": commands(items, args.chunk, "again-c"),
        "update": commands(newer, args.chunk, "v2-c"),
    }
    # The daemon holds one command at a time; the bench's own 100k input dicts are not walked by the collector.
    del newer
    gc.collect()
    gc.freeze()
    rounds: list[dict[str, float]] = []
    for round_no in range(1, args.repeat + 1):
        # baseline and ours alternate, each on a fresh database: a noisy machine slows both alike
        with tempfile.TemporaryDirectory() as tmp:
            progress(f"round {round_no}/{args.repeat}: raw executemany of {args.items} rows, then the command path...")
            raw_insert, raw_update = raw_baseline(Path(tmp) / "raw.db", items)
            raw_decoded = raw_decode_and_insert(Path(tmp) / "raw-json.db", pushes["insert"])
            timed = asyncio.run(ours(Path(tmp) / "state.db", pushes, args.items))
        rounds.append(
            {
                "raw_insert": raw_insert,
                "raw_update": raw_update,
                "raw_decoded": raw_decoded,
                **timed,
                "ratio_insert": timed["insert"] / raw_insert,
                "ratio_update": timed["update"] / raw_update,
                "ratio_decoded": timed["insert"] / raw_decoded,
            }
        )

    def median(key: str, digits: int = 3) -> float:
        return round(statistics.median(r[key] for r in rounds), digits)

    start = time.perf_counter()
    for payload in pushes["insert"]:
        check_items(PriceSet.wire_decoder.decode(WIRE.decode(payload).data).items)
    validation = time.perf_counter() - start
    emit(
        {
            "bench": "price_file",
            "items": args.items,
            "chunk": args.chunk,
            "rounds": args.repeat,
            "ours_s": median("insert"),
            "ours_items_per_s": round(args.items / median("insert")),
            "raw_executemany_s": median("raw_insert"),
            "raw_items_per_s": round(args.items / median("raw_insert")),
            "ratio_time_ours_over_raw": median("ratio_insert", 2),
            "ratio_each_round": [round(r["ratio_insert"], 2) for r in rounds],
            "target_ratio": 3.0,
            "raw_json_loads_and_executemany_s": median("raw_decoded"),
            "ratio_ours_over_raw_json_loads_and_executemany": median("ratio_decoded", 2),
            "update_push_s": median("update"),
            "raw_executemany_update_s": median("raw_update"),
            "ratio_update_ours_over_raw": median("ratio_update", 2),
            "ratio_update_each_round": [round(r["ratio_update"], 2) for r in rounds],
            "second_push_all_stale_s": median("stale"),
            "of_which_decode_and_checks_s": round(validation, 3),
            "figures": f"medians of {args.repeat} rounds (ratios: median of the per-round ratios)",
            "pragmas": "journal_mode=WAL synchronous=FULL (both)",
            "label_plan": "label selection included (no label shows these skus); rendering: bench/labels.py",
        }
    )


if __name__ == "__main__":
    main()
