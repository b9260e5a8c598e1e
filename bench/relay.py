"""Events relayed device -> head office, durably, vs a raw paho-mqtt QoS 1 publisher; then a 100k-event outage.

Ours: events are created by an in-process producer (200 device tasks, each event its own write
job, as devices make them, so the group commit does the batching), relayed by the real Uplink from
the outbox to a private mosquitto, and counted by `mosquitto_sub` in another process. Raw
(design.md's baseline): a plain paho-mqtt publisher on its own network thread keeping 100 QoS 1
publishes in flight (a sliding window), same payload size, counted the same way; and, for
reference, a plain aiomqtt publisher awaiting windows of 100.

Raw paho and ours alternate for `--repeat` rounds on the same broker (one sample is too noisy to
decide anything on a shared 2-core box); the figures are medians, the ratio the median of the
per-round ratios.

Run: .venv/bin/python bench/relay.py [--events 20000] [--outage 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
from _common import broker, emit, progress  # type: ignore[import-not-found]
from paho.mqtt.enums import CallbackAPIVersion

from gateway import outbox
from gateway.bus import Bus
from gateway.commands import Dispatcher
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.service import Gateway
from gateway.supervisor import Supervisor
from gateway.timeutil import rfc3339
from gateway.uplink import Uplink

STORE = "B1"
DATA = {"scanner": "pricecheck-1", "code": "3017620422003", "gtin": "03017620422003", "sku": "A1", "mode": "count"}


def subscriber(port: int, topic: str, count: int, out: Path, client_id: str | None = None) -> subprocess.Popen[bytes]:
    args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-C", str(count)]
    if client_id:
        args += ["-i", client_id, "-c"]
    return subprocess.Popen(args, stdout=out.open("wb"), stderr=subprocess.DEVNULL)


async def wait_sub(proc: subprocess.Popen[bytes], timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while proc.poll() is None:
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError("the subscriber did not get every message")
        await asyncio.sleep(0.005)
    return time.perf_counter()


def raw_paho(port: int, count: int, payload: bytes, workdir: Path) -> float:
    """paho-mqtt alone: loop_start() thread, a window of 100 unacknowledged QoS 1 publishes."""
    sub = subscriber(port, "bench/paho", count, workdir / "paho.out")
    time.sleep(0.5)
    window = threading.Semaphore(100)
    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-paho")
    client.max_inflight_messages_set(100)
    client.on_connect = lambda *_: connected.set()
    client.on_publish = lambda *_: window.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    start = time.perf_counter()
    for _ in range(count):
        window.acquire()
        if client.publish("bench/paho", payload, qos=1).rc != 0:
            raise RuntimeError("raw paho publish failed")
    sub.wait(120)
    end = time.perf_counter()
    client.disconnect()
    client.loop_stop()
    return count / (end - start)


async def raw_publisher(port: int, count: int, payload: bytes, workdir: Path) -> float:
    out = workdir / "raw.out"
    sub = subscriber(port, "bench/raw", count, out)
    await asyncio.sleep(0.5)
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=100) as client:
        client.pending_calls_threshold = 1000
        start = time.perf_counter()
        for base in range(0, count, 100):
            await asyncio.gather(*(client.publish("bench/raw", payload, qos=1) for _ in range(min(100, count - base))))
        end = await wait_sub(sub, 120)
    return count / (end - start)


async def start_uplink(path: Path, port: int) -> tuple[StateDB, Uplink, asyncio.Task[None]]:
    config = parse_config(
        {"store": {"id": STORE}, "state": {"path": str(path)}, "uplink": {"url": f"mqtt://127.0.0.1:{port}"}}
    )
    db = StateDB(path)
    await db.start()
    Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    uplink = Uplink(config, db, lambda p, n: None, version="bench", started_at=rfc3339(datetime.now(UTC)))  # type: ignore[arg-type,return-value]
    task = asyncio.create_task(uplink.run())
    await asyncio.wait_for(uplink.connected.wait(), 10)
    return db, uplink, task


async def produce(db: StateDB, count: int, devices: int = 200) -> None:
    """`devices` long-running tasks, each writing its events one at a time (as a scanner or sensor does)."""

    async def device(first: int) -> None:
        for n in range(first, count, devices):
            await db.write(lambda conn, n=n: outbox.append(conn, "scan", {**DATA, "n": n}))

    async with asyncio.TaskGroup() as group:
        for first in range(min(devices, count)):
            group.create_task(device(first))


def check(out: Path, expected: int) -> dict[str, int]:
    events = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    ids = [e["id"] for e in events]
    seqs = [e["seq"] for e in events]
    return {
        "received": len(events),
        "lost": expected - len(set(ids)),
        "duplicated": len(ids) - len(set(ids)),
        "seq_gaps": sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1),
    }


async def main_async(events: int, outage: int, repeat: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mqtt = broker(workdir / "broker")
        try:
            payload_size = len(
                outbox.OutboxEvent(1, "x" * 32, "scan", rfc3339(datetime.now(UTC)), json.dumps(DATA), 0).envelope(STORE)
            )
            progress(f"raw aiomqtt publisher (reference), {events} messages of {payload_size} bytes...")
            raw_aiomqtt = await raw_publisher(mqtt.port, events, b"x" * payload_size, workdir)
            db, uplink, task = await start_uplink(workdir / "state.db", mqtt.port)
            raw_rates: list[float] = []
            ours_rates: list[float] = []
            create_rates: list[float] = []
            live = {"received": 0, "lost": 0, "duplicated": 0, "seq_gaps": 0}
            for round_ in range(1, repeat + 1):
                progress(f"round {round_}/{repeat}: raw paho, then {events} events created and relayed durably...")
                raw_rates.append(await asyncio.to_thread(raw_paho, mqtt.port, events, b"x" * payload_size, workdir))
                out = workdir / f"live{round_}.out"
                sub = subscriber(mqtt.port, f"retail/stores/{STORE}/events/#", events, out)
                await asyncio.sleep(0.5)
                start = time.perf_counter()
                await produce(db, events)
                created = time.perf_counter()
                end = await wait_sub(sub, 180)
                create_rates.append(events / (created - start))
                ours_rates.append(events / (end - start))
                for key, value in check(out, events).items():
                    live[key] += value
            ratios = [ours / raw for ours, raw in zip(ours_rates, raw_rates, strict=True)]
            raw_rate = statistics.median(raw_rates)
            ours_rate = statistics.median(ours_rates)
            create_only = statistics.median(create_rates)

            progress(f"outage: broker stopped, {outage} events created, broker back...")
            out2 = workdir / "outage.out"
            sub2 = subscriber(mqtt.port, f"retail/stores/{STORE}/events/#", outage, out2, client_id="hq-bench")
            await asyncio.sleep(0.5)
            sub2.terminate()
            sub2.wait()
            mqtt.stop()
            start = time.perf_counter()
            await produce(db, outage)
            create_s = time.perf_counter() - start
            mqtt.start()
            sub2 = subscriber(mqtt.port, f"retail/stores/{STORE}/events/#", outage, out2, client_id="hq-bench")
            reconnect_start = time.perf_counter()
            await asyncio.wait_for(uplink.connected.wait(), 60)
            drain_start = time.perf_counter()
            end = await wait_sub(sub2, 300)
            drained = check(out2, outage)
            drain_rate = outage / (end - drain_start)
            await uplink.stop()
            await asyncio.wait_for(task, 10)
            await uplink.flush()
            await db.close()
        finally:
            mqtt.kill()
    return {
        "bench": "relay",
        "events": events,
        "rounds": repeat,
        "payload_bytes": payload_size,
        "ours_events_per_s": round(ours_rate),
        "ours_create_only_events_per_s": round(create_only),
        "raw_paho_qos1_100_inflight_msgs_per_s": round(raw_rate),
        "ratio_ours_over_raw": round(statistics.median(ratios), 2),
        "ratio_each_round": [round(r, 2) for r in ratios],
        "raw_aiomqtt_qos1_windows_of_100_msgs_per_s": round(raw_aiomqtt),
        "ratio_ours_over_raw_aiomqtt": round(ours_rate / raw_aiomqtt, 2),
        "target": ">= 0.8x raw paho; the issue's 5,000/s",
        "live": live,
        "outage_events": outage,
        "outage_create_s": round(create_s, 2),
        "outage_reconnect_s": round(drain_start - reconnect_start, 2),
        "outage_drain_events_per_s": round(drain_rate),
        "ratio_drain_over_raw": round(drain_rate / raw_rate, 2),
        "outage": drained,
        "figures": "live: medians of the rounds, raw paho and ours alternating; outage: one run",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--outage", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds of raw paho and ours")
    args = parser.parse_args()
    emit(asyncio.run(main_async(args.events, args.outage, args.repeat)))


if __name__ == "__main__":
    main()
