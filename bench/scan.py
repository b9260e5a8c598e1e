"""Scan to answer: 100k products in the cache, 10k price checks through a pseudo-terminal, end to end.

The daemon runs as its own process with a price-check scanner on a pty and NO reachable head office
(the answers come from the local cache). Latency is from the last byte of a code written to the
reply line read back. Baseline: the same lookups as bare indexed SQLite queries.

Run: .venv/bin/python bench/scan.py [--scans 10000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import select
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit, price_items, progress  # type: ignore[import-not-found]

from gateway.commands import Dispatcher
from gateway.db import StateDB
from gateway.pricing import PriceSet, handle_price_set
from tests.peers.pty_scanner import PtyScanner


def seed(path: Path, items: list[dict[str, object]]) -> None:
    db = StateDB(path)
    dispatcher = Dispatcher()
    dispatcher.register("price.set", PriceSet, handle_price_set)
    for n, start in enumerate(range(0, len(items), 5000)):
        payload = json.dumps({"id": f"seed{n}", "type": "price.set", "data": {"items": items[start : start + 5000]}})
        db.transaction(functools.partial(dispatcher.handle, payload=payload.encode(), topic_name="price.set"))
    db.close_sync()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=10_000)
    args = parser.parse_args()
    items = price_items(100_000)
    rng = random.Random(3)
    codes = [str(rng.choice(items)["gtin"]) for _ in range(args.scans)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        progress("seeding 100k products...")
        seed(workdir / "state.db", items)
        device = PtyScanner(workdir, "kiosk")
        config = workdir / "gateway.toml"
        config.write_text(
            f'[store]\nid = "B1"\n[state]\npath = "{workdir / "state.db"}"\n'
            '[uplink]\nurl = "mqtt://127.0.0.1:9"\n[logging]\nlevel = "ERROR"\n'
            f'[[scanners]]\nid = "kiosk"\nport = "{device.path}"\nmode = "price_check"\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)
            device.scan(codes[0])
            device.read_line(10)  # warm up: the port is open and answering
            progress(f"{args.scans} scans...")
            latencies = []
            for code in codes:
                device.send(code.encode() + b"\r")
                start = time.perf_counter()
                buffer = b""
                while b"\n" not in buffer:
                    ready, _, _ = select.select([device.master], [], [], 5)
                    if not ready:
                        raise TimeoutError("no answer")
                    buffer += os.read(device.master, 4096)
                latencies.append(time.perf_counter() - start)
                if b"unknown" in buffer:
                    raise RuntimeError(f"{code} not found")
        finally:
            proc.terminate()
            proc.wait(15)
            device.close()
        conn = sqlite3.connect(workdir / "state.db")
        raw = []
        for code in codes:
            start = time.perf_counter()
            conn.execute("SELECT sku, name, price_minor, currency FROM products WHERE gtin = ?", (code,)).fetchone()
            raw.append(time.perf_counter() - start)
        conn.close()
    ms = 1000
    emit(
        {
            "bench": "scan",
            "products": 100_000,
            "scans": args.scans,
            "head_office": "unreachable (answers from the local cache)",
            "p50_ms": round(statistics.median(latencies) * ms, 3),
            "p99_ms": round(percentile(latencies, 0.99) * ms, 3),
            "max_ms": round(max(latencies) * ms, 3),
            "raw_sqlite_lookup_p50_ms": round(statistics.median(raw) * ms, 4),
            "raw_sqlite_lookup_p99_ms": round(percentile(raw, 0.99) * ms, 4),
            "target_p99_ms": 5.0,
        }
    )


if __name__ == "__main__":
    main()
