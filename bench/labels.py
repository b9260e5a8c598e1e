"""Label rendering speed at 296x128 on one core, and the label plan time of a 50k-sku price change.

Baseline for rendering: Pillow alone drawing the same price text on a blank image of the same size.
Run: .venv/bin/python bench/labels.py [--renders 2000] [--skus 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
from pathlib import Path

from _common import emit, price_items, progress  # type: ignore[import-not-found]
from PIL import Image, ImageDraw

from gateway.bus import Bus
from gateway.commands import Dispatcher
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.labels import plan
from gateway.labels.render import BOLD, DisplaySpec, LabelContent, font, render
from gateway.labels.service import LabelService
from gateway.money import display
from gateway.pricing import PricingService
from gateway.service import Gateway
from gateway.supervisor import Supervisor


def render_rate(count: int) -> tuple[float, float]:
    spec = DisplaySpec(296, 128)
    contents = [
        LabelContent(f"S{i}", f"Produit d'épicerie n°{i} 500 g", 100 + i, "EUR", gtin="3017620422003")
        for i in range(count)
    ]
    render(contents[0], spec)
    start = time.perf_counter()
    for content in contents:
        render(content, spec)
    ours = count / (time.perf_counter() - start)
    face = font(BOLD, 40)
    start = time.perf_counter()
    for content in contents:
        image = Image.new("P", (296, 128), 0)
        ImageDraw.Draw(image).text((100, 40), display(content.price_minor, "EUR"), font=face, fill=1)
    bare = count / (time.perf_counter() - start)
    return ours, bare


async def plan_time(skus: int, workdir: Path) -> tuple[float, int]:
    config = parse_config(
        {
            "store": {"id": "B1"},
            "state": {"path": str(workdir / "state.db")},
            "uplink": {"url": "mqtt://127.0.0.1:9"},
            "label_stations": [{"id": "sim", "backend": "simulator", "directory": str(workdir / "labels")}],
        }
    )
    db = StateDB(config.state.path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    PricingService(gateway).setup()
    labels = LabelService(gateway)
    labels.setup()
    items = price_items(skus)
    for n, start in enumerate(range(0, skus, 5000)):
        payload = json.dumps({"id": f"p{n}", "type": "price.set", "data": {"items": items[start : start + 5000]}})
        await db.write(functools.partial(gateway.dispatcher.handle, payload=payload.encode(), topic_name="price.set"))
        assign = {
            "items": [{"label": f"L{i['sku']}", "sku": i["sku"], "station": "sim"} for i in items[start : start + 5000]]
        }
        command = json.dumps({"id": f"a{n}", "type": "label.assign", "data": assign})
        await db.write(
            functools.partial(gateway.dispatcher.handle, payload=command.encode(), topic_name="label.assign")
        )
    keys = await db.read(functools.partial(plan.labels_for_skus, skus=[i["sku"] for i in items]))
    # the labels on the shelves: their displays were read by the station's owner when they were assigned
    spec = DisplaySpec(296, 128, ("white", "black", "red"))
    await db.write(lambda conn: [plan.set_display(conn, key, spec) for key in keys])
    start = time.perf_counter()
    queued = await labels.replan(keys)
    elapsed = time.perf_counter() - start
    await db.close()
    return elapsed, queued


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=2000)
    parser.add_argument("--skus", type=int, default=50_000)
    args = parser.parse_args()
    progress(f"rendering {args.renders} labels at 296x128...")
    ours, bare = render_rate(args.renders)
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"planning the labels of {args.skus} skus...")
        elapsed, queued = asyncio.run(plan_time(args.skus, Path(tmp)))
    emit(
        {
            "bench": "labels",
            "render_labels_per_s_one_core": round(ours),
            "pillow_bare_draw_text_per_s": round(bare),
            "ratio_ours_over_bare": round(ours / bare, 3),
            "target_labels_per_s": 200,
            "plan_skus": args.skus,
            "plan_labels_queued": queued,
            "plan_s": round(elapsed, 2),
            "plan_labels_per_s": round(queued / elapsed),
        }
    )


if __name__ == "__main__":
    main()
