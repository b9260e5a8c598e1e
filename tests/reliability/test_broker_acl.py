"""The shipped head-office broker setup (config/mosquitto/) against the two attacks of a store's certificate.

A real mosquitto runs `store-gateway.conf` and both ACLs as shipped (ports and file paths moved),
with mutual TLS for stores and head office; the real gateway runs in this process. Each attack is
also run against a broker that only checks certificates (the test peer's plain mTLS setup), where
it succeeds: that is what the shipped setup prevents, and proof that the checks here can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.peers.hq import envelope, head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker, SecureBroker, TlsFiles, require_mosquitto

PRICE = {"sku": "A1", "price": "2.00", "currency": "EUR", "version": 1}
TAKEN_OVER = "already connected, closing old connection"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    require_mosquitto()
    broker = SecureBroker.start(tmp_path / "broker")
    yield broker
    broker.stop()


def _tls(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.client_cert), str(files.client_key))
    return context


def attacker(view: MosquittoBroker, client_id: str) -> aiomqtt.Client:
    """A client holding the certificate of `view`, asking for `client_id`."""
    assert view.tls is not None
    return aiomqtt.Client(view.host, view.port, identifier=client_id, tls_context=_tls(view.tls), timeout=5)


def price_of(db_path: Path, sku: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT price_minor, version FROM products WHERE sku = ?", (sku,))]
    finally:
        conn.close()


async def inject_own_command(store_view: MosquittoBroker, store: str) -> str:
    """With the store's own certificate, publish a price.set on its own command topic (both spellings)."""
    command_id = f"forged-{uuid.uuid4().hex[:8]}"
    body = envelope("price.set", {"items": [{**PRICE, "price": "0.01", "version": 2}]}, command_id)
    async with attacker(store_view, f"forger-{command_id}") as client:  # (the shipped broker makes it the CN)
        for topic in (f"retail/stores/{store}/commands/price.set", f"retail/stores/{store}/commands/price/set"):
            await client.publish(topic, json.dumps(body).encode(), qos=1)  # 3.1.1: PUBACK even when denied
    return command_id


async def own_command_applied(store: str, store_view: MosquittoBroker, hq_view: MosquittoBroker, workdir: Path) -> bool:
    """Run the gateway, stop it, forge a command with its certificate, run it again: was the forgery applied?"""
    config_path = write_config(workdir, store_view, store=store)
    async with head_office(hq_view, store) as hq:
        async with running_gateway(config_path):
            await hq.wait_for(lambda s: s.get("state") == "online")
            assert (await hq.command("price.set", {"items": [PRICE]}))["status"] == "applied"
        forged = await inject_own_command(store_view, store)
        seen = len(hq.states)
        async with running_gateway(config_path):
            # (the forger connected with a clean session under the store's identity, so the gateway subscribes anew)
            await hq.wait_for(lambda s: s.get("state") == "online" and hq.states.index(s) >= seen)
            barrier = await hq.command("price.set", {"items": [{**PRICE, "sku": "B1"}]})
            assert barrier["status"] == "applied"
            await asyncio.sleep(0.5)  # a forged command would have come first; leave it time anyway
        answered = [e for e in hq.events if e["type"] == "command_result" and e["data"]["command_id"] == forged]
    applied = price_of(workdir / "state.db", "A1") == [(1, 2)]
    assert bool(answered) == applied, (answered, price_of(workdir / "state.db", "A1"))
    return applied


async def test_a_store_cannot_publish_on_its_own_command_topic(
    secure_broker: SecureBroker, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    store_view, hq_view = secure_broker.as_store("t0042"), secure_broker.as_head_office("hq.ops")
    assert not await own_command_applied("t0042", store_view, hq_view, tmp_path / "shipped")
    assert price_of(tmp_path / "shipped" / "state.db", "A1") == [(200, 1)]
    for topic in ("retail/stores/t0042/commands/price/set", "retail/stores/t0042/commands/price.set"):
        assert f"Denied PUBLISH from t0042 (d0, q1, r0, m1, '{topic}'" in secure_broker.log or (
            f"Denied PUBLISH from t0042 (d0, q1, r0, m2, '{topic}'" in secure_broker.log
        )

    # the same forgery on a broker that only checks certificates is applied: the check above can fail
    permissive = mosquitto_factory(tls=True)
    assert await own_command_applied("t0042", permissive, permissive, tmp_path / "permissive")


async def test_another_stores_certificate_cannot_take_over_a_stores_client_id(
    secure_broker: SecureBroker, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    store, other = "t0042", "t0043"
    shipped = await take_over(secure_broker.as_store(store), secure_broker.as_store(other),
                              secure_broker.as_head_office("hq.ops"), store, tmp_path / "shipped",
                              lambda: secure_broker.log)  # fmt: skip
    assert shipped == {"knocked_off": False, "forged_event_seen": False, "answered_after": True}
    assert f"Client {store} {TAKEN_OVER}" not in secure_broker.log
    assert f" as {other} (" in secure_broker.log  # it did connect, under its own identity

    # a broker that only checks certificates lets the other store's certificate knock the gateway off
    permissive = mosquitto_factory(tls=True)
    loose = await take_over(permissive, permissive, permissive, store, tmp_path / "permissive", lambda: permissive.log)
    assert loose["knocked_off"] and loose["forged_event_seen"]


async def take_over(
    store_view: MosquittoBroker,
    other_view: MosquittoBroker,
    hq_view: MosquittoBroker,
    store: str,
    workdir: Path,
    broker_log: Callable[[], str],
) -> dict[str, bool]:
    """While the gateway runs, connect with another store's certificate under the gateway's client ids."""
    config_path = write_config(workdir, store_view, store=store)
    async with head_office(hq_view, store) as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online")
        online_states = len(hq.states)
        forged = {"id": uuid.uuid4().hex, "store": store, "type": "device", "seq": 10**9,
                  "at": "2026-12-03T08:00:00Z", "data": {"device": "till-1", "kind": "printer", "status": "offline"}}  # fmt: skip
        for client_id in (f"store-gateway-{store}", store):
            with contextlib.suppress(aiomqtt.MqttError):  # the gateway, reconnecting, may take its id back
                async with attacker(other_view, client_id) as client:
                    topic = f"retail/stores/{store}/events/device"
                    await client.publish(topic, json.dumps(forged).encode(), qos=1)
                    await asyncio.sleep(1.0)  # the broker closes the old connection at once if it takes the id
        knocked_off = TAKEN_OVER in broker_log() or any(s.get("state") == "offline" for s in hq.states[online_states:])
        answered_after = (await hq.command("price.set", {"items": [PRICE]}))["status"] == "applied"
        forged_seen = any(e["id"] == forged["id"] for e in hq.events)
    return {"knocked_off": knocked_off, "forged_event_seen": forged_seen, "answered_after": answered_after}
