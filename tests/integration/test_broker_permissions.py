"""Per-store users on RabbitMQ and NATS, as docs/brokers.md sets them up: a store's credentials run its
gateway, and can neither read another store's commands nor publish in another store's name (nor command
itself). The session brokers know the users of `tests.peers.brokers` (made by `store_user()` of each
peer, the recipe of the doc). Mosquitto's ACL is tested with the shipped config/mosquitto/ files in
tests/reliability/test_broker_acl.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import pytest

from tests.peers.brokers import HQ_USER, STORE_PASSWORDS, MqttBroker
from tests.peers.hq import envelope, head_office, running_gateway, write_config


@pytest.fixture(params=["rabbitmq", "nats"])
def broker(request: pytest.FixtureRequest) -> MqttBroker:
    found: MqttBroker = request.getfixturevalue(str(request.param))
    return found


def store_client(broker: MqttBroker, store: str, **kwargs: object) -> aiomqtt.Client:
    """A client with `store`'s credentials and its gateway's client id (the session the broker allows it)."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"store-gateway-{store}",
        username=f"store-{store}",
        password=STORE_PASSWORDS[store],
        timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_store_user_runs_its_gateway(broker: MqttBroker, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(STORE_PASSWORDS["p001"] + "\n")
    config_path = write_config(
        tmp_path,
        broker,
        store="p001",
        groups=("fr",),
        uplink_extra=f'username = "store-p001"\npassword_file = "{tmp_path / "pw"}"\n',
    )
    user, password = HQ_USER
    async with head_office(broker, "p001", username=user, password=password) as hq, running_gateway(config_path):
        await hq.wait_for(lambda s: s.get("state") == "online", timeout=30)
        own = await hq.command("stock.adjust", {"sku": "P", "delta": 2, "reason": "receive"})
        group = envelope("stock.adjust", {"sku": "P", "delta": 3, "reason": "receive"})
        await hq.send_raw("retail/groups/fr/commands/stock/adjust", json.dumps(group).encode())
        assert own["status"] == "applied"
        assert (await hq.result(group["id"]))["status"] == "applied"


async def collect(client: aiomqtt.Client, into: list[str]) -> None:
    with contextlib.suppress(aiomqtt.MqttError):  # a broker may close a connection it refused something on
        async for message in client.messages:
            into.append(str(message.topic))


async def test_a_store_can_neither_read_another_stores_commands_nor_publish_as_it(broker: MqttBroker) -> None:
    user, password = HQ_USER
    heard_by_hq: list[str] = []
    heard_by_victim: list[str] = []
    heard_by_rogue: list[str] = []
    forged = {
        "retail/stores/p002/events/scan": False,
        "retail/stores/p002/gateway/state": True,
        "retail/stores/p002/commands/price/set": False,
        "retail/stores/p001/commands/price/set": False,  # a store may not command, not even itself
    }
    async with contextlib.AsyncExitStack() as stack:
        hq = await stack.enter_async_context(
            aiomqtt.Client(broker.host, broker.port, identifier="hq-perm-test", username=user, password=password)
        )
        await hq.subscribe("retail/stores/#", qos=1)
        # p002's own credentials: the control that commands do reach the store they are for
        victim = await stack.enter_async_context(store_client(broker, "p002"))
        await victim.subscribe("retail/stores/p002/commands/#", qos=1)
        await victim.subscribe("retail/groups/rhone/commands/#", qos=1)
        listeners = [
            asyncio.create_task(collect(hq, heard_by_hq)),
            asyncio.create_task(collect(victim, heard_by_victim)),
        ]
        stack.callback(lambda: [task.cancel() for task in listeners])

        # p001's credentials (and its gateway's client id) try to read p002's commands and its group's,
        # one filter at a time, each while head office sends p002 a command and its group one
        filters = ["retail/stores/p002/commands/#", "retail/stores/+/commands/#", "retail/groups/rhone/commands/#"]
        if broker.kind == "nats":  # the subjects NATS delivers QoS 1 messages on, which the store user may read
            filters.append("$MQTT/sub/#")
        for number, topic_filter in enumerate(filters, 1):
            async with store_client(broker, "p001", clean_session=True) as rogue:
                with contextlib.suppress(aiomqtt.MqttError):  # a refused subscription may end the connection
                    await rogue.subscribe(topic_filter, qos=1)
                reading = asyncio.create_task(collect(rogue, heard_by_rogue))
                command = json.dumps(envelope("stock.adjust", {"sku": "X", "delta": 1, "reason": "receive"}))
                await hq.publish("retail/stores/p002/commands/stock/adjust", command.encode(), qos=1)
                await hq.publish("retail/groups/rhone/commands/stock/adjust", command.encode(), qos=1)
                for _ in range(200):
                    if len(heard_by_victim) >= 2 * number:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # room for a leaked copy to reach the rogue behind the victim's
                reading.cancel()

        # p001's credentials try to publish in p002's name, and to send commands. A refused publish gets no
        # PUBACK (RabbitMQ closes the connection, which aiomqtt only notices at the timeout): the short
        # timeout bounds that wait; the publish is on the wire by then, and the wait below catches a leak.
        for topic, retain in forged.items():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with store_client(broker, "p001", clean_session=True) as forger:
                    await forger.publish(topic, b'{"forged": true}', qos=1, retain=retain, timeout=1.5)
        # ... while its own event goes through: the control that this path works
        async with store_client(broker, "p001", clean_session=True) as honest:
            await honest.publish("retail/stores/p001/events/scan", b'{"honest": true}', qos=1)

        for _ in range(300):
            if "retail/stores/p001/events/scan" in heard_by_hq:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # room for anything forged or leaked to arrive behind the controls
    assert "retail/stores/p001/events/scan" in heard_by_hq
    assert sorted(heard_by_victim) == len(filters) * ["retail/groups/rhone/commands/stock/adjust"] + len(filters) * [
        "retail/stores/p002/commands/stock/adjust"
    ]
    assert heard_by_rogue == [], f"p001 read commands meant for p002: {heard_by_rogue}"
    assert [t for t in heard_by_hq if t in forged] == [], f"head office got messages forged by p001: {heard_by_hq}"
