"""`hq ingest` against a real broker and a real PostgreSQL: every event once, gaps, crashes, several workers."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.peers.brokers import MqttBroker
from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.nats import NatsServer
from tests.peers.postgres import PostgresServer
from tests.peers.rabbitmq import RabbitMQBroker
from tests.peers.stores import IngestProcess, event, publish_events, run_ingest

_prefixes = itertools.count(1)


@dataclass
class HeadOfficeBroker:
    """A broker as the ingest sees it (`ingest_url`) and as stores see it (`mqtt`)."""

    kind: str  # mqtt (Mosquitto), amqp (RabbitMQ), nats (NATS JetStream)
    ingest_url: str
    mqtt: MqttBroker  # what gateways and simulated stores connect to (host, port, url)
    prefix: str

    def ingest_args(self, client_id: str = "hq-ingest") -> list[str]:
        return ["--client-id", f"{self.prefix}-{client_id}"] if self.kind == "mqtt" else []


async def _delete_stream(url: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream("HQ_EVENTS")
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture(params=["mqtt", "amqp", "nats"])
def hq_broker(request: pytest.FixtureRequest) -> Iterator[HeadOfficeBroker]:
    """Each broker the ingest consumes from; each test gets its own topic prefix, so its queue (RabbitMQ),
    session (Mosquitto) and rows are its own. NATS has one stream HQ_EVENTS: each test starts without it."""
    prefix = f"t{next(_prefixes)}x{int(time.time()) % 10000}"
    if request.param == "mqtt":
        mosquitto: MosquittoBroker = request.getfixturevalue("mosquitto")
        yield HeadOfficeBroker("mqtt", mosquitto.url, mosquitto, prefix)
    elif request.param == "amqp":
        rabbit: RabbitMQBroker = request.getfixturevalue("rabbitmq")
        yield HeadOfficeBroker("amqp", rabbit.amqp_url, rabbit, prefix)
    else:
        server: NatsServer = request.getfixturevalue("nats")
        asyncio.run(_delete_stream(server.nats_url))
        yield HeadOfficeBroker("nats", server.nats_url, server, prefix)


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


async def wait_rows(dsn: str, sql: str, predicate: Any, timeout: float = 30.0) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(rows, dsn, sql)
        if predicate(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_gateway_events_land_once_with_a_duplicate_and_a_gap_closed_late(
    hq_broker: HeadOfficeBroker, pg_dsn: str, tmp_path: Path
) -> None:
    broker, prefix = hq_broker, hq_broker.prefix
    # the ingest's durable subscription exists before any store publishes
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    config = write_config(tmp_path / "gw", broker.mqtt, store="in01", uplink_extra=f'topic_prefix = "{prefix}"')
    async with head_office(broker.mqtt, "in01") as hq:
        hq.prefix = prefix
        await hq.client.subscribe(f"{prefix}/stores/in01/events/#", qos=1)
        await hq.client.subscribe(f"{prefix}/stores/in01/gateway/state", qos=1)
        async with running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            for delta in (1, 2, 3):
                result = await hq.command("stock.adjust", {"sku": "S1", "delta": delta, "reason": "receive"})
                assert result["status"] == "applied"
            gateway_events = await hq.count(lambda e: e["type"] == "stock", 3)
    sent = list(hq.events)
    # a store that publishes one event twice (a PUBACK lost) and one late (seq 3 after 4 and 5)
    store = [event("in02", seq) for seq in range(1, 6)]
    await publish_events(broker.mqtt.url, [store[0], store[1], store[3], store[4], store[1]], prefix=prefix)
    log = run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)

    ids = {e["id"] for e in sent}
    stored = {r[0]: r for r in rows(pg_dsn, "SELECT id, store, seq, kind, data FROM events WHERE store = 'in01'")}
    assert set(stored) == ids  # every event the gateway published, one row each
    for e in sent:
        assert stored[e["id"]][1:] == (e["store"], e["seq"], e["type"], e["data"])
    assert len(gateway_events) == 3
    in01 = rows(pg_dsn, "SELECT last_seq, events FROM stores WHERE store = 'in01'")
    assert in01 == [(max(e["seq"] for e in sent), len(sent))]
    assert rows(pg_dsn, "SELECT seq FROM events WHERE store = 'in02' ORDER BY seq") == [(1,), (2,), (4,), (5,)]
    assert rows(pg_dsn, "SELECT last_seq, events, duplicates FROM stores WHERE store = 'in02'") == [(5, 4, 1)]
    assert rows(pg_dsn, "SELECT first_seq, last_seq, closed_at IS NULL FROM seq_gaps WHERE store = 'in02'") == [
        (3, 3, True)
    ]
    assert "1 duplicates dropped" in log and "1 gaps open" in log

    await publish_events(broker.mqtt.url, [store[2]], prefix=prefix)  # the late one
    log = run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    assert rows(pg_dsn, "SELECT first_seq, last_seq, closed_at IS NOT NULL FROM seq_gaps WHERE store = 'in02'") == [
        (3, 3, True)
    ]
    assert rows(pg_dsn, "SELECT last_seq, events FROM stores WHERE store = 'in02'") == [(5, 5)]
    assert "0 gaps open" in log


async def test_gaps_split_while_part_of_them_arrives(hq_broker: HeadOfficeBroker, pg_dsn: str) -> None:
    broker, prefix = hq_broker, hq_broker.prefix
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    events = {seq: event("sp01", seq) for seq in range(1, 11)}
    await publish_events(broker.mqtt.url, [events[1], events[10]], prefix=prefix)
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    assert rows(pg_dsn, "SELECT first_seq, last_seq FROM seq_gaps WHERE closed_at IS NULL") == [(2, 9)]
    await publish_events(broker.mqtt.url, [events[5], events[2]], prefix=prefix)
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    open_gaps = rows(pg_dsn, "SELECT first_seq, last_seq FROM seq_gaps WHERE closed_at IS NULL ORDER BY first_seq")
    assert open_gaps == [(3, 4), (6, 9)]
    await publish_events(broker.mqtt.url, [events[s] for s in (9, 3, 4, 6, 7, 8)], prefix=prefix)
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    assert rows(pg_dsn, "SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL") == [(0,)]
    assert rows(pg_dsn, "SELECT last_seq, events FROM stores") == [(10, 10)]


async def test_bad_messages_are_kept_named_and_never_stop_the_worker(hq_broker: HeadOfficeBroker, pg_dsn: str) -> None:
    broker, prefix = hq_broker, hq_broker.prefix
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    good = event("bd01", 1)
    wrong_seq = event("bd01", 2) | {"seq": "two"}
    wrong_store = event("bd02", 1)  # published on bd01's topic
    nul = event("bd01", 3, data={"code": "a\u0000b"})
    await publish_events(broker.mqtt.url, [good, wrong_seq, nul], prefix=prefix)
    import aiomqtt

    async with aiomqtt.Client(broker.mqtt.host, broker.mqtt.port) as client:
        await client.publish(f"{prefix}/stores/bd01/events/scan", json.dumps(wrong_store).encode(), qos=1)
        await client.publish(f"{prefix}/stores/bd01/events/scan", b"{not json", qos=1)
    log = run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    assert rows(pg_dsn, "SELECT id FROM events") == [(good["id"],)]
    refused = [r[0] for r in rows(pg_dsn, "SELECT errors FROM rejected_messages ORDER BY id")]
    assert any(r.startswith("seq: ") for r in refused), refused
    assert any("U+0000" in r and r.startswith("data: ") for r in refused), refused
    assert any('store: "bd02" does not match the topic\'s store "bd01"' in r for r in refused), refused
    assert any(r.startswith("payload: not JSON") for r in refused), refused
    assert "4 messages refused" in log


def fleet_events(stores: list[str], per_store: int) -> list[dict[str, Any]]:
    """Every store's events 1..per_store, interleaved as many stores publishing at once would be."""
    return [event(store, seq) for seq in range(1, per_store + 1) for store in stores]


def assert_exactly_once(dsn: str, sent: list[dict[str, Any]]) -> None:
    stored = rows(dsn, "SELECT id, store, seq FROM events")
    assert len(stored) == len({r[0] for r in stored})  # (the primary key says so too)
    assert {r[0] for r in stored} == {e["id"] for e in sent}, "lost or unknown events"
    per_store: dict[str, int] = {}
    for e in sent:
        per_store[e["store"]] = max(per_store.get(e["store"], 0), e["seq"])
    assert dict(rows(dsn, "SELECT store, last_seq FROM stores")) == per_store
    assert dict(rows(dsn, "SELECT store, events FROM stores")) == per_store  # seqs 1..n: n events
    assert rows(dsn, "SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL") == [(0,)]


async def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    hq_broker: HeadOfficeBroker, pg_dsn: str, tmp_path: Path
) -> None:
    broker, prefix = hq_broker, hq_broker.prefix
    run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    sent = fleet_events([f"k{n}" for n in range(5)], 600)
    await publish_events(broker.mqtt.url, sent, prefix=prefix)
    worker = IngestProcess.start(
        broker.ingest_url, pg_dsn, tmp_path / "w1.log", "--batch", "50", *broker.ingest_args(), prefix=prefix
    )
    try:
        found = await wait_rows(pg_dsn, "SELECT count(*) FROM events", lambda r: r[0][0] >= 300)
        assert found[0][0] < len(sent), "the worker finished before it could be killed: send more"
    finally:
        worker.kill()  # SIGKILL: a batch taken from the broker and not acknowledged (maybe half written)
    log = run_ingest(broker.ingest_url, pg_dsn, *broker.ingest_args(), prefix=prefix)
    assert_exactly_once(pg_dsn, sent)
    assert "0 gaps open" in log


async def test_two_workers_on_one_queue_never_write_a_row_twice(
    hq_broker: HeadOfficeBroker, pg_dsn: str, tmp_path: Path
) -> None:
    broker, prefix = hq_broker, hq_broker.prefix
    share = ["--share", "hq"] if broker.kind == "mqtt" else []
    args = [[*share, *broker.ingest_args(f"w{n}")] for n in (1, 2)]
    for worker_args in args:  # both sessions exist before the stores publish
        run_ingest(broker.ingest_url, pg_dsn, *worker_args, prefix=prefix)
    workers = [
        IngestProcess.start(broker.ingest_url, pg_dsn, tmp_path / f"w{n}.log", "--batch", "100", *a, prefix=prefix)
        for n, a in enumerate(args, start=1)
    ]
    sent = fleet_events([f"w{n}" for n in range(8)], 250)
    # one id published twice, from two connections at once: it may reach both workers
    twice = sent[17]
    try:
        await asyncio.gather(
            publish_events(broker.mqtt.url, sent[:1000], prefix=prefix),
            publish_events(broker.mqtt.url, [*sent[1000:], twice], prefix=prefix),
        )
        await wait_rows(pg_dsn, "SELECT count(*) FROM events", lambda r: r[0][0] >= len(sent))
        await wait_rows(pg_dsn, "SELECT sum(duplicates) FROM stores", lambda r: r[0][0] == 1, timeout=10)
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0], [w.log for w in workers]
    assert_exactly_once(pg_dsn, sent)
    written = [w.written() for w in workers]
    assert sum(written) == len(sent)
    assert all(n > 0 for n in written), f"one worker did all the work: {written}"
    assert rows(pg_dsn, "SELECT sum(duplicates) FROM stores") == [(1,)]


async def test_postgresql_down_the_worker_keeps_the_batch_and_a_stop_still_ends_it(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The database goes away under a running worker: nothing is acknowledged, SIGTERM still ends the worker
    (exit 1, naming PostgreSQL), and once the database is back the events held by the broker land."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="store-gateway-pg-")))
    prefix = f"pgdown{int(time.time()) % 10000}"
    args = ["--client-id", f"{prefix}-ingest"]
    try:
        dsn = server.start().create_database("hq")
        run_ingest(mosquitto.url, dsn, *args, prefix=prefix)
        worker = IngestProcess.start(mosquitto.url, dsn, tmp_path / "w.log", *args, prefix=prefix)
        sent = [event("pg01", seq) for seq in range(1, 11)]
        await publish_events(mosquitto.url, sent[:5], prefix=prefix)
        await wait_rows(dsn, "SELECT count(*) FROM events", lambda r: r[0][0] == 5)
        server.stop()
        await publish_events(mosquitto.url, sent[5:], prefix=prefix)
        await asyncio.sleep(1.5)
        assert worker.terminate(timeout=20) == 1
        assert "hq ingest: stopped while PostgreSQL was unreachable" in worker.log
        server.start()
        run_ingest(mosquitto.url, dsn, *args, prefix=prefix)
        assert_exactly_once(dsn, sent)
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
