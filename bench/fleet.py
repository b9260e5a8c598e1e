"""Head office at fleet scale: 1,000 stores, a 3-node broker cluster, `hq ingest` into PostgreSQL.

For each of a 3-node RabbitMQ cluster (quorum queues) and a 3-node NATS cluster (JetStream R3), started on
loopback with their own names, ports and data directories:

1. a fresh PostgreSQL (initdb in a temp dir, a free port) and --workers `hq ingest` processes;
2. --stores simulated stores (bench/_store_sim.py, several stores per process, each with its own MQTT
   connection, spread over the three nodes) and --gateways real `store-gateway run` processes, one per node,
   which the bench keeps busy with a `stock.adjust` a second each;
3. steady phase: every store sends --rate events a second for --steady seconds; half-way one broker node is
   killed (SIGKILL) and started again 5 s later;
4. drain phase: the ingest stopped, every store sends --burst events at once, then the ingest is started
   again and timed until every event is in PostgreSQL; the same messages are then drained by a bare
   consumer that writes nothing (aio-pika on a second quorum queue bound the same way / nats-py on a second
   durable consumer), and the same rows written by a bare COPY: the baselines;
5. a price file pushed to the whole group (`hq push-prices --group`), timed until every store applied it.

Checks: events acknowledged by the broker (by id) against rows (lost must be 0), rows per (store, seq) (no
duplicate), gaps open at the end, the real gateways' seqs complete. One JSON line per run of the figures.

Run: .venv/bin/python bench/fleet.py [--brokers rabbitmq,nats] [--stores 1000] [--rate 1] [--steady 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO, emit, progress  # type: ignore[import-not-found]

from tests.peers.postgres import PostgresServer

sys.path.insert(0, str(Path(__file__).parent))
from _clusters import RabbitNode, nats_cluster, rabbit_cluster, start_rabbit_cluster

PREFIX = "retail"
GROUP = "fleet"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def group_pids(leader: int) -> list[int]:
    """Every process of a process group (a RabbitMQ node: its script, beam.smp and helpers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == leader:
                    pids.append(int(entry.name))
    return pids


class Meter:
    """CPU seconds and peak RSS of named sets of processes, sampled every second in a thread."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}
        self.cpu: dict[str, dict[int, float]] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pids: list[int]) -> None:
        self.groups.setdefault(name, []).extend(pids)

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            cpu = self.cpu.setdefault(name, {})
            total = 0.0
            for pid in pids:
                seconds = cpu_seconds(pid)
                if seconds:
                    cpu[pid] = max(cpu.get(pid, 0.0), seconds)
                total += rss_mb(pid)
            self.peak[name] = max(self.peak.get(name, 0.0), total)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._sample()
        self._stop.set()
        return {
            name: {"cpu_s": round(sum(self.cpu.get(name, {}).values()), 1), "rss_peak_mb": round(self.peak[name], 1)}
            for name in self.groups
        }


@dataclass
class Sim:
    """One simulator process (many stores)."""

    process: subprocess.Popen[str]
    out: Path

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read(self, timeout: float = 300) -> str:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"store simulator gave no answer (exit {self.process.poll()})")
        return result[0].strip()

    def report(self) -> dict[str, int]:
        self.send("report")
        return dict(json.loads(self.read()))


def start_sims(nodes: list[int], stores: int, per_process: int, workdir: Path) -> list[Sim]:
    sims = []
    for first in range(0, stores, per_process):
        out = workdir / f"sim{first}.json"
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "_store_sim.py"), "--first", str(first),
             "--count", str(min(per_process, stores - first)), "--nodes", ",".join(f"127.0.0.1:{p}" for p in nodes),
             "--prefix", PREFIX, "--group", GROUP, "--out", str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(workdir / f"sim{first}.log").open("w"), text=True,
        )  # fmt: skip
        sims.append(Sim(process, out))
    for sim in sims:
        if sim.read(600) != "ready":
            raise RuntimeError("a store simulator did not get ready")
    return sims


def sim_totals(sims: list[Sim]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for sim in sims:
        for key, value in sim.report().items():
            totals[key] = totals.get(key, 0) + value
    return totals


def wait_acked(sims: list[Sim], timeout: float) -> dict[str, int]:
    """Until every simulated store's outbox is empty (every event acknowledged by the broker)."""
    deadline = time.monotonic() + timeout
    said = time.monotonic()
    while True:
        totals = sim_totals(sims)
        if totals["outbox"] == 0 or time.monotonic() > deadline:
            return totals
        if time.monotonic() - said > 10:
            progress(f"  waiting for PUBACKs: {totals}")
            said = time.monotonic()
        time.sleep(1)


def gateway_config(workdir: Path, store: str, port: int) -> Path:
    directory = workdir / store
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.toml"
    path.write_text(
        f'[store]\nid = "{store}"\ngroups = ["{GROUP}"]\n[state]\npath = "{directory / "state.db"}"\n'
        f'[uplink]\nurl = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "{PREFIX}"\nkeepalive_s = 10\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    return path


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO))
    )


def ingest_args(broker: str, dsn: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "hq", "--broker", broker, "--prefix", PREFIX, "ingest", "--db", dsn,
            "--batch", "1000", "--progress", "5"]  # fmt: skip


def count_rows(dsn: str) -> int:
    """Rows of the simulated stores (the real gateways' events are checked by seq)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE store NOT LIKE 'gw%'").fetchone()
        return int(row[0]) if row else 0


def wait_rows(dsn: str, target: int, timeout: float, poll: float = 0.2) -> tuple[int, float]:
    """Poll until `target` rows; return (rows, seconds waited)."""
    started = said = time.monotonic()
    rows = 0
    while time.monotonic() - started < timeout:
        rows = count_rows(dsn)
        if rows >= target:
            break
        if time.monotonic() - said > 10:
            progress(f"  waiting for rows: {rows} of {target}")
            said = time.monotonic()
        time.sleep(poll)
    return rows, time.monotonic() - started


async def busy_gateways(port: int, stores: list[str], stop: threading.Event) -> None:
    """A stock.adjust a second to each real gateway, so they create events like the simulated stores."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-hq-{os.getpid()}") as client:
        n = 0
        while not stop.is_set():
            n += 1
            for store in stores:
                command = {"id": f"adj-{store}-{n}", "type": "stock.adjust", "sent_at": "2026-12-03T10:00:00Z",
                           "data": {"sku": "A1", "delta": 1, "reason": "receive"}}  # fmt: skip
                await client.publish(f"{PREFIX}/stores/{store}/commands/stock/adjust", json.dumps(command), qos=1)
            await asyncio.sleep(1.0)


def bare_drain(kind: str, url: str, first_seq: int, expected: int) -> float:
    """Drain the burst's messages with a bare consumer that writes nothing; return messages per second."""

    async def rabbit() -> float:
        import aio_pika

        connection = await aio_pika.connect_robust(url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=2000)
            queue = await channel.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
            got = 0
            started = time.monotonic()
            async with queue.iterator() as messages:
                async for message in messages:
                    got += 1
                    if got % 500 == 0 or got >= expected:
                        await message.ack(multiple=True)
                    if got >= expected:
                        break
            return got / (time.monotonic() - started)

    async def nats_raw() -> float:
        import nats
        import nats.js.api as api

        nc = await nats.connect(url)
        js = nc.jetstream()
        config = api.ConsumerConfig(durable_name="bench-raw", ack_policy=api.AckPolicy.EXPLICIT,
                                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first_seq,
                                    max_ack_pending=20000)  # fmt: skip
        sub = await js.pull_subscribe(f"{PREFIX}.stores.*.events.>", durable="bench-raw", stream="HQ_EVENTS",
                                      config=config)  # fmt: skip
        got = 0
        started = time.monotonic()
        while got < expected:
            try:
                messages = await sub.fetch(1000, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for message in messages:
                await message.ack()
            got += len(messages)
        rate = got / (time.monotonic() - started)
        await nc.close()
        return rate

    return asyncio.run(rabbit() if kind == "rabbitmq" else nats_raw())


def bare_copy(dsn: str, since: str) -> tuple[int, float]:
    """The burst's rows written again by one bare COPY into a table of the same shape; (rows, rows/s)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, store, seq, kind, at, data::text, received_at FROM events WHERE received_at >= %s", (since,)
        ).fetchall()
        conn.execute("CREATE TABLE bare_events (LIKE events INCLUDING ALL)")
        conn.commit()
        started = time.monotonic()
        with conn.cursor().copy("COPY bare_events FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows), len(rows) / (time.monotonic() - started)


def first_ready(logs: list[Path], timeout: float) -> float:
    """The monotonic time at which the first of the ingest workers said it consumes (subscribed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in logs:
            with suppress(OSError):
                if "ingest: consuming" in log.read_text(errors="replace"):
                    return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"no ingest worker subscribed within {timeout:g} s (see {logs[0].parent})")


def check(dsn: str, sims: list[Sim], gateways: list[str]) -> dict[str, Any]:
    """Sent (acknowledged by the broker) against rows."""
    import psycopg

    acked: set[str] = set()
    for sim in sims:
        for store in json.loads(sim.out.read_text()).values():
            acked.update(store["acked"])
    with psycopg.connect(dsn) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM events WHERE store NOT LIKE 'gw%'")}
        dup = conn.execute("SELECT count(*) FROM (SELECT store, seq FROM events GROUP BY 1, 2 HAVING count(*) > 1) d")
        gaps = conn.execute("SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL").fetchone()
        gw = conn.execute(
            "SELECT store, last_seq, events FROM stores WHERE store = ANY(%s) ORDER BY store", (gateways,)
        ).fetchall()
        duplicates_dropped = conn.execute("SELECT coalesce(sum(duplicates), 0) FROM stores").fetchone()
    return {
        "events_acked_by_broker": len(acked),
        "events_lost": len(acked - stored),
        "unknown_rows": len(stored - acked),
        "duplicate_rows": int(dup.fetchone()[0]),  # type: ignore[index]
        "duplicates_dropped": int(duplicates_dropped[0]) if duplicates_dropped else 0,
        "gaps_open_at_end": int(gaps[0]) if gaps else -1,
        "gateways_complete": all(last == events for _, last, events in gw) and len(gw) == len(gateways),
    }


def run(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    meter = Meter()
    pg = PostgresServer(Path(tempfile.mkdtemp(prefix="store-gateway-pg-")), fsync=True)
    nodes: list[Any] = []
    workers: list[subprocess.Popen[bytes]] = []
    gateways: list[subprocess.Popen[bytes]] = []
    sims: list[Sim] = []
    figures: dict[str, Any] = {"broker": kind, "stores": args.stores, "gateways": args.gateways}
    if kind == "nats":
        figures["nats_mqtt_settings"] = json.loads(args.nats_mqtt)
    try:
        pg.start()
        dsn = pg.create_database("hq")
        progress(f"{kind}: starting a 3-node cluster")
        if kind == "rabbitmq":
            nodes = rabbit_cluster(workdir / "rabbit")
            start_rabbit_cluster(nodes)
            ingest_urls = [nodes[0].amqp_url, nodes[1].amqp_url]
        else:
            nodes = nats_cluster(workdir / "nats", json.loads(args.nats_mqtt))
            threads = [threading.Thread(target=node.start, kwargs={"timeout": 90}) for node in nodes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ingest_urls = [nodes[0].nats_url, nodes[1].nats_url]
        for node in nodes:
            assert node.process is not None
            meter.watch("broker", group_pids(node.process.pid) if kind == "rabbitmq" else [node.process.pid])
        for n in range(args.workers):
            workers.append(start_process(ingest_args(ingest_urls[n % 2], dsn), workdir / f"ingest{n}.log"))
            time.sleep(3 if n == 0 else 0)  # the first one declares the queue (its leader on node a) or the stream
        meter.watch("ingest", [w.pid for w in workers])
        time.sleep(3)
        if kind == "rabbitmq":
            asyncio.run(declare_raw_queue(nodes[2].amqp_url))
        meter.watch("postgres", [int((pg.datadir / "postmaster.pid").read_text().split()[0])])
        meter.start()
        mqtt_ports = [node.port for node in nodes]
        gw_stores = [f"gw{i + 1}" for i in range(args.gateways)]
        for i, store in enumerate(gw_stores):
            config = gateway_config(workdir / "gateways", store, mqtt_ports[i % 3])
            gateways.append(start_process([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                                          workdir / f"{store}.log"))  # fmt: skip
        progress(f"{kind}: connecting {args.stores} simulated stores")
        started = time.monotonic()
        sims = start_sims(mqtt_ports, args.stores, args.per_process, workdir)
        figures["stores_connected_s"] = round(time.monotonic() - started, 1)

        # steady phase with a node killed half-way
        progress(f"{kind}: steady phase, {args.rate} event/s per store for {args.steady} s")
        stop_gw = threading.Event()
        gw_thread = threading.Thread(target=lambda: asyncio.run(busy_gateways(mqtt_ports[1], gw_stores, stop_gw)))
        gw_thread.start()
        for sim in sims:
            sim.send(f"rate {args.rate}")
        steady_start = time.time()
        time.sleep(args.steady / 2)
        victim = nodes[0]
        kill_at = time.time()
        progress(f"{kind}: SIGKILL of node {victim.node if kind == 'rabbitmq' else victim.name}")
        victim.kill()
        time.sleep(5)
        victim.start(timeout=180) if kind == "rabbitmq" else victim.start(timeout=90)
        if kind == "rabbitmq":
            meter.watch("broker", group_pids(victim.process.pid))
        else:
            meter.watch("broker", [victim.process.pid])
        restarted_at = time.time()
        time.sleep(max(args.steady / 2 - (restarted_at - kill_at), 0))
        for sim in sims:
            sim.send("rate 0")
        stop_gw.set()
        gw_thread.join()
        steady_s = time.time() - steady_start
        totals = wait_acked(sims, 180)
        _, caught_up_s = wait_rows(dsn, totals["acked"], 300)
        figures["steady"] = {
            "seconds": round(steady_s, 1), "events_acked": totals["acked"],
            "events_per_s": round(totals["acked"] / steady_s), "ingest_caught_up_after_s": round(caught_up_s, 1),
            "store_reconnects": totals["reconnects"],
        }  # fmt: skip
        figures["node_kill"] = resume_figures(dsn, kill_at, restarted_at)

        # drain phase: a backlog, then the ingest timed against bare consumers and a bare COPY
        progress(f"{kind}: drain phase, {args.burst} events per store queued with the ingest stopped")
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        if kind == "rabbitmq":
            asyncio.run(purge_raw_queue(nodes[2].amqp_url))
            first_seq = 0
        else:
            first_seq = asyncio.run(stream_last_seq(nodes[2].nats_url)) + 1
        before = count_rows(dsn)
        for sim in sims:
            sim.send(f"burst {args.burst}")
        burst_totals = wait_acked(sims, 600)
        burst = burst_totals["acked"] - totals["acked"]
        drain_since = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
        time.sleep(1)
        started = time.monotonic()
        workers = [start_process(ingest_args(ingest_urls[n % 2], dsn), workdir / f"ingest{n}b.log")
                   for n in range(args.workers)]  # fmt: skip
        meter.watch("ingest", [w.pid for w in workers])
        ready = first_ready([workdir / f"ingest{n}b.log" for n in range(args.workers)], 120)
        wait_rows(dsn, before + burst, 600, poll=0.05)
        done = time.monotonic()
        drain_s = done - started
        raw_rate = bare_drain(kind, nodes[2].amqp_url if kind == "rabbitmq" else nodes[2].nats_url, first_seq, burst)
        copied, copy_rate = bare_copy(dsn, drain_since)
        # from the moment the first worker is subscribed (its start-up is not what is compared) to the last row
        ingest_rate = burst / max(done - ready, 1e-3)
        figures["drain"] = {
            "events": burst, "ingest_events_per_s": round(ingest_rate),
            "bare_consumer_events_per_s": round(raw_rate), "bare_copy_rows_per_s": round(copy_rate),
            "ratio_to_bare_consumer": round(ingest_rate / raw_rate, 2), "ratio_to_bare_copy": round(ingest_rate / copy_rate, 3),
            "ingest_s_from_subscribed": round(done - ready, 2), "ingest_wall_s_with_worker_start": round(drain_s, 1),
            "copied_rows": copied,
        }  # fmt: skip

        # a price file to the whole group
        progress(f"{kind}: price push to group {GROUP} ({args.stores + args.gateways} stores)")
        store_list = workdir / "stores.txt"
        store_list.write_text("\n".join([f"s{i:04d}" for i in range(args.stores)] + gw_stores) + "\n")
        prices = workdir / "prices.csv"
        prices.write_text("sku,price,currency\n" + "".join(f"P{i:04d},{1 + i % 50}.99,EUR\n" for i in range(200)))
        started = time.monotonic()
        push = subprocess.run(
            [sys.executable, "-m", "gateway", "hq", "--broker", f"mqtt://127.0.0.1:{mqtt_ports[2]}", "--prefix", PREFIX,
             "push-prices", "--group", GROUP, "--stores", str(store_list), "--db", dsn, "--timeout", str(args.push_timeout),
             "--quiet",
             str(prices)],
            capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120"),
        )  # fmt: skip
        (workdir / "push.log").write_text(push.stdout + push.stderr)
        summary = [line for line in push.stdout.splitlines() if " stores: " in line]
        figures["group_push"] = {
            "seconds_until_all_answered": round(time.monotonic() - started, 1), "exit": push.returncode,
            "summary": summary[-1] if summary else push.stderr[-300:],
        }  # fmt: skip
        for sim in sims:
            sim.send("rate 0")
        wait_acked(sims, 120)
        totals = sim_totals(sims)
        wait_rows(dsn, totals["acked"], 120)
        time.sleep(3)  # the real gateways' last events
        for sim in sims:
            sim.send("exit")
        for sim in sims:
            sim.process.wait(180)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        figures["check"] = check(dsn, sims, gw_stores)
        figures["resources"] = meter.stop()
        return figures
    finally:
        for sim in sims:
            if sim.process.poll() is None:
                sim.process.kill()
        for process in gateways + workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    process.wait(15)
                if process.poll() is None:
                    process.kill()
        for node in nodes:
            node.close(kill=True) if isinstance(node, RabbitNode) else node.kill()
        pg.stop()
        shutil.rmtree(pg.workdir, ignore_errors=True)


def resume_figures(dsn: str, kill_at: float, restarted_at: float) -> dict[str, Any]:
    """How long the kill stopped the flow: the first event created after the kill to reach PostgreSQL, and
    the longest pause between commits around it."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        first = conn.execute(
            "SELECT extract(epoch FROM min(received_at)) FROM events WHERE at > to_timestamp(%s)", (kill_at,)
        ).fetchone()
        pause = conn.execute(
            "SELECT coalesce(max(gap), 0) FROM (SELECT extract(epoch FROM received_at - lag(received_at) OVER "
            "(ORDER BY received_at)) AS gap FROM (SELECT DISTINCT received_at FROM events WHERE received_at "
            "BETWEEN to_timestamp(%s) - interval '5 s' AND to_timestamp(%s) + interval '60 s') r) g",
            (kill_at, kill_at),
        ).fetchone()
    return {
        "node_down_s": round(restarted_at - kill_at, 1),
        "first_new_event_ingested_after_s": round(float(first[0]) - kill_at, 2) if first and first[0] else None,
        "longest_commit_pause_s": round(float(pause[0]), 2) if pause else None,
    }


async def declare_raw_queue(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind("amq.topic", routing_key=f"{PREFIX}.stores.*.events.#")


async def purge_raw_queue(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
        await queue.purge()


async def stream_last_seq(url: str) -> int:
    import nats

    nc = await nats.connect(url)
    info = await nc.jetstream().stream_info("HQ_EVENTS")
    await nc.close()
    return int(info.state.last_seq)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the finally blocks stop what was started
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="rabbitmq,nats")
    parser.add_argument("--stores", type=int, default=1000)
    parser.add_argument("--per-process", type=int, default=250, help="simulated stores per process")
    parser.add_argument("--gateways", type=int, default=3, help="real `store-gateway run` among them")
    parser.add_argument("--rate", type=float, default=1.0, help="events per second per store, steady phase")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady phase")
    parser.add_argument("--burst", type=int, default=20, help="events per store queued for the drain phase")
    parser.add_argument("--workers", type=int, default=2, help="hq ingest processes")
    parser.add_argument(
        "--nats-mqtt", default='{"consumer_replicas": 1}',
        help="JSON settings added to each NATS node's mqtt {} block (docs/brokers.md: NATS at fleet scale)",
    )  # fmt: skip
    parser.add_argument("--push-timeout", type=float, default=300, help="seconds the group push waits for answers")
    args = parser.parse_args()
    for kind in args.brokers.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"fleet-{kind}-"))
        workdir.chmod(0o755)
        try:
            emit(run(kind, args, workdir))
        finally:
            if os.environ.get("FLEET_KEEP") is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
