"""Ten minutes of work with 100k products: resident memory under 80 MB and flat over the last five.

The real process, a real mosquitto: head office sends a 500-item price.set and 50 stock.adjust
every half second (as bench/startup.py does), a price-check kiosk on a pty scans known codes and
reads each answer. Memory is read from /proc every 10 s. Slow: run with `-m slow`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.commands import Dispatcher
from gateway.db import StateDB
from gateway.pricing import PriceSet, handle_price_set
from gateway.topics import store_command_topic
from tests.peers.hq import GatewayProcess, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.pty_scanner import PtyScanner

STORE = "soak"
PRODUCTS = 100_000
MINUTES = 10.0
LIMIT_MB = 80.0


def gtin13(n: int) -> str:
    body = f"376{n:09d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def items(count: int, version: int, offset: int = 0) -> list[dict[str, object]]:
    rng = random.Random(version)
    return [
        {
            "sku": f"SKU{n:06d}",
            "price": f"{rng.randint(50, 99999) / 100:.2f}",
            "currency": "EUR",
            "gtin": gtin13(n),
            "name": f"Produit n°{n} 500 g",
            "version": version,
        }
        for n in range(offset, offset + count)
    ]


def seed(path: Path) -> None:
    """100k products in the state database, through the real dispatcher."""
    db = StateDB(path)
    dispatcher = Dispatcher()
    dispatcher.register("price.set", PriceSet, handle_price_set)
    for n, start in enumerate(range(0, PRODUCTS, 5000)):
        payload = json.dumps({"id": f"seed{n}", "type": "price.set", "data": {"items": items(5000, 1, start)}})
        db.transaction(functools.partial(dispatcher.handle, payload=payload.encode(), topic_name="price.set"))
    db.close_sync()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.timeout(int(MINUTES * 60) + 300)
async def test_ten_minutes_with_100k_products_stay_under_80_mb_and_flat(
    own_mosquitto: MosquittoBroker, tmp_path: Path, gateway_process: Callable[[Path], GatewayProcess]
) -> None:
    kiosk = PtyScanner(tmp_path, "kiosk")
    extra = f'[[scanners]]\nid = "kiosk"\nport = "{kiosk.path}"\nmode = "price_check"\n\n[logging]\nlevel = "WARNING"\n'
    config_path = write_config(tmp_path, own_mosquitto, store=STORE, extra=extra)
    seed(tmp_path / "state.db")
    gateway = gateway_process(config_path).start()
    assert gateway.process is not None
    samples: list[tuple[float, float]] = []
    answered = 0
    try:
        async with head_office(own_mosquitto, STORE, client_id="hq-soak") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s, timeout=30)
            started = time.monotonic()
            next_sample = started
            version = 2
            rng = random.Random(3)
            while (now := time.monotonic()) - started < MINUTES * 60:
                if now >= next_sample:
                    samples.append((now - started, rss_mb(gateway.process.pid)))
                    next_sample += 10
                command = {"id": f"p{version}", "type": "price.set", "data": {"items": items(500, version)}}
                await hq.send_raw(store_command_topic("retail", STORE, "price.set"), json.dumps(command).encode())
                for _ in range(50):
                    await hq.send(
                        "stock.adjust", {"sku": f"SKU{rng.randrange(PRODUCTS):06d}", "delta": 1, "reason": "receive"}
                    )
                version += 1
                kiosk.scan(gtin13(rng.randrange(PRODUCTS)))
                if await asyncio.to_thread(kiosk.read_line):
                    answered += 1
                hq.events.clear()  # head office keeps nothing: the test measures the gateway
                await asyncio.sleep(0.5)
            samples.append((time.monotonic() - started, rss_mb(gateway.process.pid)))
        assert gateway.terminate() == 0, gateway.log[-3000:]
    finally:
        kiosk.close()
    last_five = [mb for at, mb in samples if at >= (MINUTES - 5) * 60]
    figures = {
        "minutes": MINUTES,
        "products": PRODUCTS,
        "price_commands": version - 2,
        "scans_answered": answered,
        "rss_mb_first": samples[0][1],
        "rss_mb_max": max(mb for _, mb in samples),
        "rss_mb_last5_min": min(last_five),
        "rss_mb_last5_max": max(last_five),
    }
    (tmp_path / "soak.json").write_text(json.dumps(figures))
    print(json.dumps(figures))
    assert figures["rss_mb_max"] < LIMIT_MB, figures
    assert figures["rss_mb_last5_max"] - figures["rss_mb_last5_min"] < 4.0, figures
    assert answered > 0, figures
