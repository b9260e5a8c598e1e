"""Start to retained `online`, and resident memory with 100k products under load.

Start: `store-gateway run` as a subprocess against a private mosquitto, timed from process start to
the retained {"state": "online"} reaching a subscriber (5 runs). Memory: the state database holds
100k products, the daemon runs for --minutes under price.set and stock.adjust commands, then its
VmRSS is read; the baseline is a bare `python -c "import aiomqtt, pydantic, sqlite3"`.

The gateway's modules are compiled to bytecode first (into a private PYTHONPYCACHEPREFIX), as `pip
install` leaves an installed gateway: with PYTHONDONTWRITEBYTECODE set, as in some shells and CI
sandboxes, every start would compile the whole package from source (about 0.2 s here), which is not
what a store's box does. `start_to_online_s_from_source` is one start without that cache, for reference.

Run: .venv/bin/python bench/startup.py [--minutes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
from _common import REPO, broker, emit, price_items, progress, rss_mb  # type: ignore[import-not-found]

from gateway.commands import Dispatcher
from gateway.db import StateDB
from gateway.pricing import PriceSet, handle_price_set

STORE = "B1"


def write_config(workdir: Path, port: int) -> Path:
    path = workdir / "gateway.toml"
    path.write_text(
        f'[store]\nid = "{STORE}"\n[state]\npath = "{workdir / "state.db"}"\n'
        f'[uplink]\nurl = "mqtt://127.0.0.1:{port}"\n[logging]\nlevel = "WARNING"\n'
    )
    return path


def compile_ahead(cache: Path) -> dict[str, str]:
    """Compile gateway/ and drivers/ into `cache`, as an installed package has them; return the
    environment of a gateway process that uses them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPYCACHEPREFIX": str(cache)}
    subprocess.run([sys.executable, "-m", "compileall", "-q", "gateway", "drivers"], env=env, check=True, cwd=REPO)
    return env


def launch(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )


async def time_to_online(port: int, config: Path, env: dict[str, str] | None = None) -> float:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"retail/stores/{STORE}/gateway/state", qos=1)
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        proc = launch(config, env)
        try:
            async with asyncio.timeout(20):
                async for message in client.messages:
                    if json.loads(bytes(message.payload))["state"] == "online" and not message.retain:  # type: ignore[arg-type]
                        return time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(15)
    raise RuntimeError("never online")


def seed(path: Path, count: int) -> None:
    db = StateDB(path)
    dispatcher = Dispatcher()
    dispatcher.register("price.set", PriceSet, handle_price_set)
    items = price_items(count)
    for n, start in enumerate(range(0, count, 5000)):
        payload = json.dumps({"id": f"seed{n}", "type": "price.set", "data": {"items": items[start : start + 5000]}})
        db.transaction(functools.partial(dispatcher.handle, payload=payload.encode(), topic_name="price.set"))
    db.close_sync()


async def load(port: int, seconds: float) -> int:
    sent = 0
    version = 2
    deadline = time.monotonic() + seconds
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=50) as client:
        while time.monotonic() < deadline:
            items = price_items(500, version=version, seed=version)
            version += 1
            cmd = {"id": f"load{version}", "type": "price.set", "data": {"items": items}}
            await client.publish(f"retail/stores/{STORE}/commands/price/set", json.dumps(cmd).encode(), qos=1)
            for i in range(50):
                adj = {
                    "id": f"adj{version}-{i}",
                    "type": "stock.adjust",
                    "data": {"sku": f"SKU{i:06d}", "delta": 1, "reason": "receive"},
                }
                await client.publish(f"retail/stores/{STORE}/commands/stock/adjust", json.dumps(adj).encode(), qos=1)
            sent += 51
            await asyncio.sleep(0.5)
    return sent


async def main_async(minutes: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mqtt = broker(workdir / "broker")
        try:
            config = write_config(workdir, mqtt.port)
            progress("one start from source, then the modules compiled ahead and 5 runs...")
            from_source = await time_to_online(mqtt.port, config)
            compiled = compile_ahead(workdir / "pycache")
            starts = [await time_to_online(mqtt.port, config, compiled) for _ in range(5)]
            progress("seeding 100k products...")
            seed(workdir / "state.db", 100_000)
            proc = launch(config, compiled)
            await asyncio.sleep(2)
            progress(f"load for {minutes} min...")
            commands = await load(mqtt.port, minutes * 60)
            await asyncio.sleep(2)
            rss = rss_mb(proc.pid)
            proc.terminate()
            exit_code = proc.wait(15)
        finally:
            mqtt.kill()
    bare = subprocess.run(  # noqa: ASYNC221 - after the measurement, nothing else runs
        [
            sys.executable,
            "-c",
            "import aiomqtt, pydantic, sqlite3, pathlib, re; print(open('/proc/self/status').read())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bare_rss = next(int(line.split()[1]) / 1024 for line in bare.splitlines() if line.startswith("VmRSS:"))
    return {
        "bench": "startup",
        "start_to_online_s_min": round(min(starts), 3),
        "start_to_online_s_median": round(statistics.median(starts), 3),
        "start_to_online_s_from_source": round(from_source, 3),
        "target_start_s": 1.0,
        "products": 100_000,
        "load_minutes": minutes,
        "load_commands": commands,
        "rss_mb": round(rss, 1),
        "baseline_bare_python_imports_rss_mb": round(bare_rss, 1),
        "target_rss_mb": 80,
        "exit_code_on_sigterm": exit_code,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=1.0)
    args = parser.parse_args()
    emit(asyncio.run(main_async(args.minutes)))


if __name__ == "__main__":
    main()
