"""gateway/mqtt.py, our asyncio adapter over paho's public API, against a real mosquitto."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable

import pytest

from gateway.mqtt import LinkError, MqttConnection, Will
from tests.peers.mosquitto import MosquittoBroker


def link(broker: MosquittoBroker, client_id: str, **options: object) -> MqttConnection:
    return MqttConnection("127.0.0.1", broker.port, client_id=client_id, **options)  # type: ignore[arg-type]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_persistent_session_redelivers_an_unacknowledged_command_marked_dup(mosquitto: MosquittoBroker) -> None:
    store, topic = unique("adapter-store"), f"t/{uuid.uuid4().hex[:8]}/commands/price/set"
    async with link(mosquitto, store, manual_ack=True) as gateway:
        assert gateway.session_present is False
        await gateway.subscribe(topic.rsplit("/", 2)[0] + "/#")
        async with link(mosquitto, unique("adapter-hq")) as hq:
            await hq.publish(topic, b'{"id": "c1"}')
        messages = gateway.messages()
        first = await asyncio.wait_for(anext(messages), 5)
        assert (first.topic, first.payload, first.qos, first.dup) == (topic, b'{"id": "c1"}', 1, False)
        # not acknowledged: as a gateway killed between the commit and the PUBACK
    async with link(mosquitto, store, manual_ack=True) as gateway:
        assert gateway.session_present is True  # subscription and queued messages kept
        again = await asyncio.wait_for(anext(gateway.messages()), 5)
        assert (again.payload, again.dup) == (b'{"id": "c1"}', True)  # a redelivery says so
        gateway.ack(again)
        await asyncio.sleep(0.2)
    async with link(mosquitto, store, manual_ack=True) as gateway:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(gateway.messages()), 0.5)  # acknowledged once: never again


async def test_publish_nowait_reports_each_puback_by_message_id(mosquitto: MosquittoBroker) -> None:
    acked: list[int] = []
    done = asyncio.Event()
    async with link(mosquitto, unique("adapter-out")) as out:

        def on_puback(mid: int, reason: object) -> None:
            acked.append(mid)
            if len(acked) == 500:
                done.set()

        out.on_puback = on_puback
        sent = [out.publish_nowait(f"t/{i % 7}", b"x" * 200) for i in range(500)]
        await asyncio.wait_for(done.wait(), 10)
    assert sorted(acked) == sorted(sent) and len(set(sent)) == 500


async def test_a_frozen_broker_is_noticed_at_about_one_and_a_half_keepalives(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory()
    async with link(broker, unique("adapter-hang"), keepalive_s=2) as gateway:
        broker.freeze()
        started = time.monotonic()
        try:
            with pytest.raises(LinkError, match=r"(?i)keep ?alive"):
                await asyncio.wait_for(anext(gateway.messages()), 10)
        finally:
            broker.thaw()
        noticed = time.monotonic() - started
    assert noticed < 6  # paho closes the link when a PINGRESP is 1.5 keepalives late


async def test_the_last_will_is_published_when_the_link_drops(mosquitto: MosquittoBroker) -> None:
    state = f"t/{uuid.uuid4().hex[:8]}/gateway/state"
    async with link(mosquitto, unique("adapter-hq")) as hq:
        await hq.subscribe(state)
        gateway = link(mosquitto, unique("adapter-gw"), will=Will(state, b'{"state": "offline"}'))
        await gateway.__aenter__()
        gateway._sock.close()  # the network went away: no DISCONNECT reaches the broker
        will = await asyncio.wait_for(anext(hq.messages()), 10)
        assert will.payload == b'{"state": "offline"}'
        await gateway.__aexit__(None, None, None)


async def test_failures_say_what_happened(mosquitto_factory: Callable[..., MosquittoBroker]) -> None:
    broker = mosquitto_factory()
    port = broker.port
    broker.stop()
    with pytest.raises(LinkError, match="connection refused"):
        async with MqttConnection("127.0.0.1", port, client_id="nobody"):
            pass
    with pytest.raises(LinkError, match="name not resolved"):
        async with MqttConnection("broker.invalid", port, client_id="nobody", connect_timeout_s=3):
            pass
    tls = mosquitto_factory(tls=True)
    wrong_ca = ssl.create_default_context()  # the system's CAs do not know the test CA
    with pytest.raises(LinkError, match="TLS refused: certificate verify failed"):
        async with MqttConnection("127.0.0.1", tls.port, client_id="nobody", tls=wrong_ca):
            pass
    secured = mosquitto_factory(users={"store-1": "right"})
    with pytest.raises(LinkError, match="refused the connection"):
        async with MqttConnection("127.0.0.1", secured.port, client_id="nobody", username="store-1", password="wrong"):
            pass


async def test_mqtt5_session_survives_a_new_client_object(mosquitto: MosquittoBroker) -> None:
    store, topic = unique("adapter-v5"), f"t/{uuid.uuid4().hex[:8]}/c"
    async with link(mosquitto, store, protocol="5") as gateway:
        await gateway.subscribe(topic)
    async with link(mosquitto, unique("adapter-hq5"), protocol="5") as hq:
        await hq.publish(topic, b"while away")
    async with link(mosquitto, store, protocol="5") as gateway:
        assert gateway.session_present is True
        message = await asyncio.wait_for(anext(gateway.messages()), 5)
        assert message.payload == b"while away"
