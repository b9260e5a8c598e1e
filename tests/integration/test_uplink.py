"""The daemon against real brokers: commands, state and will, outages, crashes, TLS, ACL, MQTT 5.

The tests of the link itself (persistent session, commands while offline and across a broker restart,
group commands, last will and retained state, outbox drain after an outage, SIGKILL of the gateway) run against each head-office
broker: Mosquitto 2, RabbitMQ 3 (rabbitmq_mqtt) and NATS 2 (JetStream + MQTT), with the same daemon
and only the URL changed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import outbox
from gateway.bus import Bus
from gateway.commands import Dispatcher
from gateway.config import load_config
from gateway.db import StateDB
from gateway.pricing import PricingService
from gateway.service import Gateway
from gateway.stock import StockService
from gateway.supervisor import Supervisor
from gateway.timeutil import rfc3339
from gateway.uplink import Uplink
from tests.peers.brokers import MqttBroker
from tests.peers.hq import GatewayProcess, envelope, head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker


def scan(n: int) -> dict[str, object]:
    """A count-mode scan event, numbered through its code."""
    return {"scanner": "aisle", "code": str(n), "sku": None, "mode": "count"}


def read_db(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


async def test_price_set_round_trip_and_retained_state(uplink_broker: MqttBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, uplink_broker, store="rt01")
    async with head_office(uplink_broker, "rt01") as hq:
        async with running_gateway(config_path):
            await hq.wait_for(lambda s: s.get("state") == "online")
            result = await hq.command(
                "price.set", {"items": [{"sku": "A1", "price": "12.99", "currency": "EUR", "version": 1}]}
            )
            assert (result["status"], result["applied"], result["skipped"]) == ("applied", 1, 0)
            stale = await hq.command(
                "price.set", {"items": [{"sku": "A1", "price": "11.00", "currency": "EUR", "version": 1}]}
            )
            assert (stale["applied"], stale["skipped"]) == (0, 1)
        await hq.wait_for(lambda s: s.get("state") == "offline")
    seqs = [e["seq"] for e in hq.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(e["store"] == "rt01" and e["id"] for e in hq.events)
    assert read_db(tmp_path / "state.db", "SELECT price_minor, version FROM products WHERE sku='A1'") == [(1299, 1)]


async def test_group_commands_and_commands_sent_while_offline(uplink_broker: MqttBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, uplink_broker, store="rt02", groups=("rhone",))
    async with head_office(uplink_broker, "rt02") as hq:
        async with running_gateway(config_path):
            await hq.wait_for(lambda s: s.get("state") == "online")
            group_id = "group-cmd-1"
            body = {"id": group_id, "type": "stock.adjust", "data": {"sku": "B1", "delta": 4, "reason": "receive"}}
            await hq.send_raw("retail/groups/rhone/commands/stock/adjust", json.dumps(body).encode())
            assert (await hq.result(group_id))["status"] == "applied"
        # gateway stopped: its persistent session keeps what head office sends now
        offline_id = await hq.send("stock.adjust", {"sku": "B1", "delta": 1, "reason": "receive"})
        await asyncio.sleep(0.3)
        async with running_gateway(config_path):
            assert (await hq.result(offline_id))["status"] == "applied"
    assert read_db(tmp_path / "state.db", "SELECT on_hand FROM stock WHERE sku='B1'") == [(5,)]


async def test_malformed_commands_never_stop_the_daemon(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, mosquitto, store="rt03")
    async with head_office(mosquitto, "rt03") as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        await hq.send_raw("retail/stores/rt03/commands/price/set", b"\x00\xff garbage")
        await hq.send_raw("retail/stores/rt03/commands/price/set", b'{"id": "x1", "type": "price.set", "data": []}')
        await hq.send_raw("retail/stores/rt03/commands/price/set", b"x" * (2 * 1024 * 1024))
        rejected = await hq.count(lambda e: e["type"] == "command_result" and e["data"]["status"] == "rejected", 3)
        assert {e["data"]["errors"][0]["field"] for e in rejected} == {"(command)", "data"}
        ok = await hq.command("price.set", {"items": [{"sku": "A1", "price": "1.00", "currency": "EUR", "version": 1}]})
        assert ok["status"] == "applied"


async def test_a_command_is_taken_on_its_slash_topic_and_on_the_dotted_one(
    uplink_broker: MqttBroker, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, uplink_broker, store="tp01", groups=("sud",))
    adjust = {"sku": "D1", "delta": 1, "reason": "receive"}
    sent = [
        ("retail/stores/tp01/commands/stock/adjust", "slash-1"),  # contract §3: "." written as "/"
        ("retail/stores/tp01/commands/stock.adjust", "dotted-1"),  # the form earlier versions used
        ("retail/groups/sud/commands/stock/adjust", "group-slash-1"),
        ("retail/groups/sud/commands/stock.adjust", "group-dotted-1"),
    ]
    if uplink_broker.kind == "nats":  # NATS drops a client that publishes a topic holding "." (why §3 changed)
        sent = [(topic, command_id) for topic, command_id in sent if "dotted" not in command_id]
    async with head_office(uplink_broker, "tp01") as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        for topic, command_id in sent:
            body = {"id": command_id, "type": "stock.adjust", "data": adjust}
            await hq.send_raw(topic, json.dumps(body).encode())
            assert (await hq.result(command_id))["status"] == "applied", topic
        # the type is still checked against the topic, read with "/" as "."
        body = {"id": "mismatch-1", "type": "stock.adjust", "data": adjust}
        await hq.send_raw("retail/stores/tp01/commands/stock/set", json.dumps(body).encode())
        mismatch = await hq.result("mismatch-1")
    assert mismatch["status"] == "rejected"
    assert mismatch["errors"][0]["field"] == "type" and '"stock.set"' in mismatch["errors"][0]["message"]
    assert read_db(tmp_path / "state.db", "SELECT on_hand FROM stock WHERE sku='D1'") == [(len(sent),)]


async def test_scheduled_price_applies_at_its_instant(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, mosquitto, store="rt04")
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    async with head_office(mosquitto, "rt04") as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        items = [
            {"sku": "S1", "price": "2.00", "currency": "EUR", "version": 1},
            {"sku": "S1", "price": "1.50", "currency": "EUR", "version": 2, "valid_from": rfc3339(at)},
        ]
        result = await hq.command("price.set", {"items": items})
        assert result["scheduled"] == 1
        assert read_db(tmp_path / "state.db", "SELECT price_minor FROM products WHERE sku='S1'") == [(200,)]
        for _ in range(60):
            if read_db(tmp_path / "state.db", "SELECT price_minor FROM products WHERE sku='S1'") == [(150,)]:
                break
            await asyncio.sleep(0.1)
        assert read_db(tmp_path / "state.db", "SELECT price_minor FROM products WHERE sku='S1'") == [(150,)]
        assert datetime.now(UTC) >= at


async def make_uplink(config_path: Path) -> tuple[StateDB, Uplink, asyncio.Task[None]]:
    """The real uplink and outbox, without the rest of the daemon, so a test can create events itself."""
    config = load_config(config_path)
    db = StateDB(config.state.path)
    await db.start()
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    for service in (PricingService(gateway), StockService(gateway)):
        service.setup()
    uplink = Uplink(config, db, gateway.apply_command, version="test", started_at=rfc3339(datetime.now(UTC)))
    return db, uplink, asyncio.create_task(uplink.run())


async def stop_uplink(db: StateDB, uplink: Uplink, task: asyncio.Task[None]) -> None:
    await uplink.stop()
    await asyncio.wait_for(task, 10)
    await uplink.flush()
    await db.close()


async def test_commands_queued_for_an_offline_store_survive_a_broker_restart(
    restartable_broker: MqttBroker, tmp_path: Path
) -> None:
    broker = restartable_broker
    config_path = write_config(tmp_path, broker, store="dur1", groups=("dur",))
    # the gateway's first run makes its persistent session and subscriptions
    async with running_gateway(config_path), head_office(broker, "dur1") as hq:
        await hq.wait_for(lambda s: s.get("state") == "online")
    async with head_office(broker, "dur1") as hq:
        own = await hq.send("stock.adjust", {"sku": "Q", "delta": 2, "reason": "receive"})
        group = envelope("stock.adjust", {"sku": "Q", "delta": 5, "reason": "receive"})
        await hq.send_raw("retail/groups/dur/commands/stock/adjust", json.dumps(group).encode())
    broker.restart()  # graceful: what the broker holds for the offline session is on disk
    async with head_office(broker, "dur1") as hq, running_gateway(config_path):
        assert (await hq.result(own, timeout=30))["status"] == "applied"
        assert (await hq.result(group["id"], timeout=30))["status"] == "applied"
    assert read_db(tmp_path / "state.db", "SELECT on_hand FROM stock WHERE sku='Q'") == [(7,)]


async def test_events_made_during_a_broker_outage_arrive_in_order(
    restartable_broker: MqttBroker, tmp_path: Path
) -> None:
    broker = restartable_broker
    config_path = write_config(tmp_path, broker, store="out1")
    db, uplink, task = await make_uplink(config_path)
    async with head_office(broker, "out1", client_id="hq-outage-test") as hq:
        await asyncio.wait_for(uplink.connected.wait(), 10)
    broker.stop()
    await asyncio.sleep(0.3)
    assert uplink.state == "offline"
    for start in range(0, 2000, 100):
        await db.write(lambda conn, s=start: [outbox.append(conn, "scan", scan(s + i)) for i in range(100)])
    broker.start()
    async with head_office(broker, "out1", client_id="hq-outage-test") as hq:
        events = await hq.count(lambda e: e["type"] == "scan", 2000, timeout=90)
    await stop_uplink(db, uplink, task)
    assert [int(e["data"]["code"]) for e in events] == list(range(2000))
    assert len({e["id"] for e in events}) == 2000
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 2000))
    assert read_db(tmp_path / "state.db", "SELECT count(*) FROM outbox") == [(0,)]


async def test_commands_sent_in_a_burst_are_applied_in_order_and_share_commits(
    own_mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, own_mosquitto, store="burst1")
    db, uplink, task = await make_uplink(config_path)
    try:
        async with head_office(own_mosquitto, "burst1") as hq:
            await asyncio.wait_for(uplink.connected.wait(), 10)
            commits_before = db.commits
            # published back to back (paho sends them in this order), as a price file's commands come
            sent = await asyncio.gather(
                *(hq.send("stock.adjust", {"sku": "B", "delta": n, "reason": "receive"}) for n in range(1, 61))
            )
            results = await hq.count(lambda e: e["type"] == "command_result", 60, timeout=30)
            commits = db.commits - commits_before
    finally:
        await stop_uplink(db, uplink, task)
    assert [e["data"]["command_id"] for e in results] == sent  # answered in the order sent
    assert all(e["data"]["status"] == "applied" for e in results)
    ledger = read_db(tmp_path / "state.db", "SELECT delta, on_hand FROM stock_ledger ORDER BY id")
    assert [row[0] for row in ledger] == list(range(1, 61))  # applied in the order sent
    assert ledger[-1][1] == sum(range(1, 61))
    assert commits < 30, f"commands waiting together are committed together ({commits} commits)"


async def test_a_stop_answers_the_commands_it_took_instead_of_leaving_them_to_be_offered_again(
    own_mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, own_mosquitto, store="stop1")
    db, uplink, task = await make_uplink(config_path)
    async with head_office(own_mosquitto, "stop1") as hq:
        await asyncio.wait_for(uplink.connected.wait(), 10)
        # price files of 1000 items: long enough for the stop to land among them
        files = [
            {"items": [{"sku": f"S{n}-{i}", "price": "1.00", "currency": "EUR", "version": 1} for i in range(1000)]}
            for n in range(40)
        ]
        await asyncio.gather(*(hq.send("price.set", data) for data in files))
        await hq.count(lambda e: e["type"] == "command_result", 1, timeout=10)
        await stop_uplink(db, uplink, task)  # some commands taken, some in the writer, some still at the broker
        db, uplink, task = await make_uplink(config_path)
        await hq.count(lambda e: e["type"] == "command_result", 40, timeout=30)
        await asyncio.sleep(0.5)  # room for a duplicate answer to show up
        await stop_uplink(db, uplink, task)
    statuses = [e["data"]["status"] for e in hq.events if e["type"] == "command_result"]
    assert statuses == ["applied"] * 40, statuses
    assert read_db(tmp_path / "state.db", "SELECT count(*) FROM products") == [(40_000,)]


async def test_a_broker_that_stops_answering_ends_the_connection_and_loses_nothing(
    own_mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.uplink._PUBACK_TIMEOUT_S", 1.0)
    config_path = write_config(tmp_path, own_mosquitto, store="hang1")
    db, uplink, task = await make_uplink(config_path)
    try:
        async with head_office(own_mosquitto, "hang1", client_id="hq-hang-test") as hq:
            await asyncio.wait_for(uplink.connected.wait(), 10)
            own_mosquitto.freeze()
            try:
                await db.write(lambda conn: [outbox.append(conn, "scan", scan(i)) for i in range(300)])
                for _ in range(100):  # no PUBACK within the timeout: the uplink gives the connection up
                    if uplink.state == "offline":
                        break
                    await asyncio.sleep(0.05)
                assert uplink.state == "offline"
            finally:
                own_mosquitto.thaw()
            # what was in flight when the link was given up is sent again (at least once, same ids)
            await hq.count(lambda e: e["type"] == "scan", 300, timeout=60)
            for _ in range(200):
                codes = {int(e["data"]["code"]) for e in hq.events if e["type"] == "scan"}
                if len(codes) == 300:
                    break
                await asyncio.sleep(0.05)
    finally:
        await stop_uplink(db, uplink, task)
    assert codes == set(range(300))
    assert len({e["id"] for e in hq.events if e["type"] == "scan"}) == 300
    assert read_db(tmp_path / "state.db", "SELECT count(*) FROM outbox") == [(0,)]


def refused_count(caplog: pytest.LogCaptureFixture) -> int:
    """Events the uplink logged as refused by the broker (they may come in several PUBACK batches)."""
    return sum(int(r.args[0]) for r in caplog.records if "the broker refused" in r.msg)  # type: ignore[index]


async def test_events_the_broker_refuses_stay_in_the_outbox(
    mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # MQTT 5 PUBACKs carry a reason code: here the ACL lets the store publish every event but scans
    acl = "user store-ref1\ntopic write retail/stores/ref1/events/command_result\ntopic write retail/stores/ref1/events/stock\n"
    acl += "topic readwrite retail/stores/ref1/gateway/state\n"
    acl += "topic read retail/stores/ref1/commands/#\nuser hq\ntopic readwrite retail/#\n"
    broker = mosquitto_factory(users={"store-ref1": "s3cret", "hq": "hq-pass"}, acl=acl)
    (tmp_path / "pw").write_text("s3cret\n")
    config_path = write_config(
        tmp_path,
        broker,
        store="ref1",
        uplink_extra=f'protocol = "5"\nusername = "store-ref1"\npassword_file = "{tmp_path / "pw"}"\n',
    )
    db, uplink, task = await make_uplink(config_path)
    try:
        async with head_office(broker, "ref1", username="hq", password="hq-pass") as hq:
            await asyncio.wait_for(uplink.connected.wait(), 10)
            await db.write(lambda conn: [outbox.append(conn, "scan", scan(i)) for i in range(5)])
            result = await hq.command("stock.adjust", {"sku": "R", "delta": 1, "reason": "receive"})
            assert result["status"] == "applied"  # published after the refused scans, and delivered
            for _ in range(100):
                if refused_count(caplog) == 5:
                    break
                await asyncio.sleep(0.05)
    finally:
        await stop_uplink(db, uplink, task)
    assert refused_count(caplog) == 5 and "Not authorized" in caplog.text
    assert read_db(tmp_path / "state.db", "SELECT kind, count(*) FROM outbox GROUP BY kind") == [("scan", 5)]


async def test_sigkill_mid_publish_loses_nothing(restartable_broker: MqttBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, restartable_broker, store="kill1")
    total = 20_000
    db = StateDB(tmp_path / "state.db")
    db.transaction(lambda conn: outbox.append_many(conn, "scan", (scan(i) for i in range(total))))
    db.close_sync()
    ids = {r[0] for r in read_db(tmp_path / "state.db", "SELECT id FROM outbox")}
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    async with head_office(restartable_broker, "kill1", client_id="hq-kill-test") as hq:
        gateway.start()
        # kill when the gateway is under way by its own outbox (head office reads behind the broker)
        for _ in range(3000):
            if read_db(tmp_path / "state.db", "SELECT count(*) FROM outbox")[0][0] < total - 2000:
                break
            await asyncio.sleep(0.005)
        gateway.kill()
        left = {r[0] for r in read_db(tmp_path / "state.db", "SELECT id FROM outbox")}
        assert 0 < len(left) < total, "the kill should land mid-publish"
        gateway.start()
        try:
            await hq.count(lambda e: e["type"] == "scan", total, timeout=180)
            received = [e for e in hq.events if e["type"] == "scan"]
            unique = {e["id"] for e in received}
            for _ in range(50):
                if {e["id"] for e in hq.events if e["type"] == "scan"} >= ids:
                    break
                await asyncio.sleep(0.2)
            unique = {e["id"] for e in hq.events if e["type"] == "scan"}
        finally:
            assert gateway.terminate() == 0, gateway.log
    assert unique == ids, f"lost {len(ids - unique)} events"
    counts = Counter(e["id"] for e in hq.events if e["type"] == "scan")
    twice = {event_id for event_id, n in counts.items() if n > 1}
    # only what was still in the outbox at the kill (in flight, or acknowledged and not yet deleted: deletes
    # are group-committed behind the PUBACKs) is sent again; an event forgotten before the kill never is
    assert twice <= left, f"{len(twice - left)} events deleted from the outbox before the kill were sent again"
    assert max(counts.values()) <= 2
    assert len(twice) <= 1000, f"{len(twice)} events sent twice: deletes lag far behind the PUBACKs"
    assert read_db(tmp_path / "state.db", "SELECT count(*) FROM outbox") == [(0,)]


async def retained_state(broker: MqttBroker, store: str) -> dict[str, object]:
    """What a head office that subscribes only now gets on the store's state topic (the retained message)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"late-{uuid.uuid4().hex[:8]}") as late:
        await late.subscribe(f"retail/stores/{store}/gateway/state", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(late.messages))
    assert message.retain, "the state is retained"
    state: dict[str, object] = json.loads(bytes(message.payload))  # type: ignore[arg-type]
    return state


async def test_last_will_and_retained_state_after_a_sigkill(uplink_broker: MqttBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, uplink_broker, store="will1")
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    async with head_office(uplink_broker, "will1") as hq:
        gateway.start()
        try:
            online = await hq.wait_for(lambda s: s.get("state") == "online", timeout=30)
            assert await retained_state(uplink_broker, "will1") == online
            gateway.kill()  # no DISCONNECT: the broker publishes the will
            offline = await hq.wait_for(lambda s: s.get("state") == "offline", timeout=30)
        finally:
            gateway.kill()
    assert offline["started_at"] == online["started_at"] and offline["version"] == online["version"]
    assert await retained_state(uplink_broker, "will1") == offline


@pytest.mark.parametrize("name", ["rabbitmq", "nats"])
async def test_mqtt5_against_a_broker_without_it_names_the_setting(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker: MqttBroker = request.getfixturevalue(name)
    assert not broker.mqtt5
    config_path = write_config(tmp_path, broker, store="v5no", uplink_extra='protocol = "5"\n')
    db, uplink, task = await make_uplink(config_path)
    try:
        for _ in range(300):  # RabbitMQ closes without a CONNACK: the client's 10 s timeout comes first
            if 'set uplink.protocol = "3.1.1"' in caplog.text:
                break
            await asyncio.sleep(0.1)
        assert uplink.state != "online"
    finally:
        await stop_uplink(db, uplink, task)
    warning = next(r.getMessage() for r in caplog.records if "uplink.protocol" in r.getMessage())
    assert "does not speak MQTT 5" in warning and "RabbitMQ 3 and NATS 2 speak only MQTT 3.1.1" in warning
    last_error = read_db(tmp_path / "state.db", "SELECT value FROM meta WHERE key = 'uplink.last_error'")
    assert last_error and "uplink.protocol" in str(last_error[0][0])


async def test_mutual_tls(mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path) -> None:
    broker = mosquitto_factory(tls=True)
    assert broker.tls is not None
    config_path = write_config(tmp_path / "ok", broker, store="tls1")
    async with head_office(broker, "tls1") as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        assert (await hq.command("stock.adjust", {"sku": "T", "delta": 1, "reason": "receive"}))["status"] == "applied"
    # without a client certificate the broker refuses the connection
    no_cert = ssl.create_default_context(cafile=str(broker.tls.ca))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, tls_context=no_cert, timeout=5):
            pass
    text = config_path.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("cert_file", "key_file")))
    bad = tmp_path / "nocert.toml"
    bad.write_text(text.replace(str(tmp_path / "ok" / "state.db"), str(tmp_path / "nocert.db")))
    db, uplink, task = await make_uplink(bad)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(uplink.connected.wait(), 3)
    assert uplink.state != "online"
    await stop_uplink(db, uplink, task)


async def test_username_password_and_acl(mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path) -> None:
    acl = (
        "user store-acl1\n"
        "topic readwrite retail/stores/acl1/#\n"
        "topic read retail/groups/fr/commands/#\n"
        "user hq\n"
        "topic readwrite retail/#\n"
    )
    broker = mosquitto_factory(users={"store-acl1": "s3cret", "hq": "hq-pass"}, acl=acl)
    (tmp_path / "pw").write_text("s3cret\n")
    config_path = write_config(
        tmp_path, broker, store="acl1", uplink_extra=f'username = "store-acl1"\npassword_file = "{tmp_path / "pw"}"\n'
    )
    async with head_office(broker, "acl1", username="hq", password="hq-pass") as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        assert (await hq.command("stock.adjust", {"sku": "Z", "delta": 2, "reason": "receive"}))["status"] == "applied"
    (tmp_path / "pw").write_text("wrong\n")
    db, uplink, task = await make_uplink(config_path)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(uplink.connected.wait(), 2)
    await stop_uplink(db, uplink, task)


async def test_mqtt5_response_topic_gets_the_result(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, mosquitto, store="v5a", uplink_extra='protocol = "5"\n')
    async with head_office(mosquitto, "v5a") as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe("hq/replies/v5a", qos=1)
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "hq/replies/v5a"
            props.CorrelationData = b"corr-77"
            body = {"id": "v5-cmd-1", "type": "stock.adjust", "data": {"sku": "V", "delta": 1, "reason": "receive"}}
            await client.publish(
                "retail/stores/v5a/commands/stock/adjust", json.dumps(body).encode(), qos=1, properties=props
            )
            async with asyncio.timeout(10):
                async for message in client.messages:
                    reply = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    assert message.properties is not None
                    assert message.properties.CorrelationData == b"corr-77"
                    break
        assert reply["command_id"] == "v5-cmd-1" and reply["status"] == "applied"
        assert (await hq.result("v5-cmd-1"))["status"] == "applied"
