"""Durable consumption of every store's events, one class per kind of head-office broker.

Each source hands out batches of `Delivery` and acknowledges a batch only when told to (after the
PostgreSQL commit). A message taken but not acknowledged when a worker dies is given again by the
broker (to the same session for MQTT, to any worker for AMQP and NATS) and then dropped as a duplicate.

  mqtt:// mqtts://   persistent session (clean session off) on `P/stores/+/events/#`, or `$share/NAME/...`
  amqp:// amqps://   quorum queue `P.hq.events` bound to `amq.topic` with `P.stores.*.events.#`
  nats://            JetStream stream `HQ_EVENTS` over `P.stores.*.events.>`, durable pull consumer `hq-ingest`
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aio_pika.abc
    import nats.aio.client
    import nats.aio.msg
    import nats.js
    import paho.mqtt.client

log = logging.getLogger("gateway.ingest")

NATS_STREAM = "HQ_EVENTS"
NATS_CONSUMER = "hq-ingest"
NATS_ACK_WAIT_S = 10.0  # a message taken by a worker that died is given to another after this


@dataclass(slots=True)
class Delivery:
    """One broker message: its topic written the MQTT way (`P/stores/S/events/kind`) and its bytes."""

    topic: str
    payload: bytes
    token: Any = None  # what the source needs to acknowledge it


class Source(Protocol):
    """A durable subscription to every store's events."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def take(self, max_messages: int, wait_s: float, linger_s: float) -> list[Delivery]:
        """Up to `max_messages`, waiting up to `wait_s` for the first and `linger_s` for the rest."""
        ...

    async def ack(self, batch: list[Delivery]) -> None: ...

    async def backlog(self) -> int | None:
        """Messages waiting at the broker for this consumer, where the broker says so."""
        ...


@dataclass
class SourceOptions:
    """What `hq --broker URL ... ingest` was given."""

    url: str
    prefix: str = "retail"
    batch: int = 500
    share: str | None = None
    client_id: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file and self.key_file:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def password(self) -> str | None:
        return self.password_file.read_text().strip() if self.password_file else None


class SourceError(Exception):
    """Bad usage of a source (exit 2): names the option."""


def make_source(options: SourceOptions) -> Source:
    scheme = urlsplit(options.url).scheme
    if scheme in ("mqtt", "mqtts"):
        return MqttSource(options)
    if options.share is not None:
        raise SourceError("--share: only for mqtt:// and mqtts:// (RabbitMQ and NATS share a queue without it)")
    if scheme in ("amqp", "amqps"):
        return AmqpSource(options)
    if scheme == "nats":
        return NatsSource(options)
    raise SourceError(f'--broker: unknown scheme "{scheme}"; expected mqtt://, mqtts://, amqp://, amqps:// or nats://')


async def _drain(queue: asyncio.Queue[Any], first: Any, max_messages: int, linger_s: float) -> list[Any]:
    items = [first]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + linger_s
    while len(items) < max_messages:
        if queue.empty():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        else:
            items.append(queue.get_nowait())
    return items


# -- MQTT ------------------------------------------------------------------------------------


class MqttSource:
    """A persistent MQTT session through paho-mqtt with manual acknowledgement.

    paho runs its network loop (and its reconnects) in its own thread; messages cross to the event
    loop through a queue. PUBACK is sent only by `ack`, in arrival order. A message taken before a
    reconnect is not acknowledged on the new connection: the broker gives it again (DUP) and the
    database drops the second copy.
    """

    name = "mqtt"

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        parts = urlsplit(options.url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        events = f"{options.prefix}/stores/+/events/#"
        self.subscription = f"$share/{options.share}/{events}" if options.share else events
        if options.share and not options.client_id:
            raise SourceError(
                "--client-id: needed with --share: give each worker its own fixed id, so that a restarted worker "
                "gets back the messages its session held"
            )
        self.client_id = options.client_id or "hq-ingest"
        self._queue: asyncio.Queue[tuple[int, str, bytes, int]] = asyncio.Queue()
        self._generation = 0
        self._connected = asyncio.Event()
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._client: paho.mqtt.client.Client | None = None

    async def open(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        client.reconnect_delay_set(1, 30)
        if self.options.username:
            client.username_pw_set(self.options.username, self.options.password())
        if self.tls:
            client.tls_set_context(self.options.tls_context())

        def on_connect(c: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
            if reason.is_failure:
                loop.call_soon_threadsafe(self._fail, f"broker refused the connection: {reason}")
                return
            with self._lock:
                self._generation += 1
            c.subscribe(self.subscription, qos=1)
            loop.call_soon_threadsafe(self._connected.set)

        def on_disconnect(_c: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
            if self._client is None:  # our own close
                return
            loop.call_soon_threadsafe(self._connected.clear)
            log.warning("MQTT connection lost (%s); reconnecting", reason)

        def on_message(_c: Any, _userdata: Any, message: Any) -> None:
            with self._lock:
                item = (self._generation, message.topic, bytes(message.payload), message.mid)
            loop.call_soon_threadsafe(self._queue.put_nowait, item)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        try:
            await asyncio.to_thread(client.connect, self.host, self.port, 30)
        except OSError as exc:
            raise ConnectionError(f"broker {self.options.url}: {exc}") from None
        self._client = client
        client.loop_start()
        try:
            async with asyncio.timeout(30):
                await self._connected.wait()
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"broker {self.options.url}: no CONNACK within 30 s") from None
        if self._failure:
            await self.close()
            raise ConnectionError(f"broker {self.options.url}: {self._failure}")

    def _fail(self, message: str) -> None:
        self._failure = message
        self._connected.set()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    async def take(self, max_messages: int, wait_s: float, linger_s: float) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return []
        items = await _drain(self._queue, first, max_messages, linger_s)
        return [Delivery(topic, payload, (generation, mid)) for generation, topic, payload, mid in items]

    async def ack(self, batch: list[Delivery]) -> None:
        client = self._client
        if client is None:
            return
        with self._lock:
            generation = self._generation
        for delivery in batch:
            taken_on, mid = delivery.token
            if taken_on == generation:
                client.ack(mid, 1)

    async def backlog(self) -> int | None:
        return None


# -- AMQP (RabbitMQ) -------------------------------------------------------------------------


class AmqpSource:
    """The quorum queue `P.hq.events` bound to `amq.topic`, where RabbitMQ's MQTT plugin publishes.

    Prefetch is twice the batch, so the next batch is already on its way while one commits.
    """

    name = "amqp"

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        self.queue_name = f"{options.prefix}.hq.events"
        self.routing_key = f"{options.prefix}.stores.*.events.#"
        self._queue: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        import aio_pika

        parts = urlsplit(self.options.url)
        ssl_context = self.options.tls_context() if parts.scheme == "amqps" else None
        try:
            self._connection = await aio_pika.connect_robust(
                self.options.url,
                ssl_context=ssl_context,
                client_properties={"connection_name": self.options.client_id or "hq-ingest"},
            )
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            raise ConnectionError(f"broker {_hide_password(self.options.url)}: {exc}") from None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=max(2 * self.options.batch, 10))
        queue = await channel.declare_queue(self.queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind("amq.topic", routing_key=self.routing_key)
        self._channel = channel
        self._amqp_queue = queue
        await queue.consume(self._queue.put, no_ack=False)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def take(self, max_messages: int, wait_s: float, linger_s: float) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return []
        items = await _drain(self._queue, first, max_messages, linger_s)
        return [Delivery(str(m.routing_key or "").replace(".", "/"), m.body, m) for m in items]

    async def ack(self, batch: list[Delivery]) -> None:
        # one `multiple` ack per channel: the batch is every message taken since the last ack
        last: dict[int, aio_pika.abc.AbstractIncomingMessage] = {}
        for delivery in batch:
            last[id(delivery.token.channel)] = delivery.token
        for message in last.values():
            try:
                await message.ack(multiple=True)
            except Exception as exc:  # a channel closed since: RabbitMQ gives these messages again
                log.warning("could not acknowledge on a closed channel (%s); the broker will redeliver", exc)

    async def backlog(self) -> int | None:
        if self._channel is None:
            return None
        try:  # declaring again (same arguments) is how AMQP tells how many messages are ready
            result = await self._amqp_queue.declare()
        except Exception as exc:
            log.debug("queue declare for the backlog failed: %s", exc)
            return None
        return int(result.message_count or 0)


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


# -- NATS JetStream --------------------------------------------------------------------------


class NatsSource:
    """The JetStream stream `HQ_EVENTS` (created when missing) and the durable pull consumer `hq-ingest`."""

    name = "nats"

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        self.subject = f"{options.prefix}.stores.*.events.>"
        self._nc: nats.aio.client.Client | None = None
        self._sub: Any = None

    async def open(self) -> None:
        import nats
        import nats.errors
        import nats.js.api as api
        import nats.js.errors

        parts = urlsplit(self.options.url)
        try:
            self._nc = await nats.connect(
                self.options.url,
                name=self.options.client_id or "hq-ingest",
                user=self.options.username,
                password=self.options.password(),
                tls=self.options.tls_context() if self.options.ca_file else None,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                connect_timeout=5,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
            )
        except (OSError, nats.errors.Error) as exc:
            raise ConnectionError(f"broker {parts.scheme}://{parts.hostname}:{parts.port}: {exc!r}") from None
        js = self._nc.jetstream(timeout=10)
        try:
            info = await js.stream_info(NATS_STREAM)
            if self.subject not in (info.config.subjects or []):
                log.warning(
                    "stream %s exists with subjects %s, not %s", NATS_STREAM, info.config.subjects, self.subject
                )
        except nats.js.errors.NotFoundError:
            await self._add_stream(js, api)
        config = api.ConsumerConfig(
            durable_name=NATS_CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=NATS_ACK_WAIT_S,
            max_ack_pending=max(20 * self.options.batch, 10_000),
            deliver_policy=api.DeliverPolicy.ALL,
        )
        self._sub = await js.pull_subscribe(self.subject, durable=NATS_CONSUMER, stream=NATS_STREAM, config=config)

    async def _add_stream(self, js: nats.js.JetStreamContext, api: Any) -> None:
        import nats.js.errors

        for replicas in (3, 1):  # three copies on a cluster; a single server refuses more than one
            try:
                await js.add_stream(
                    api.StreamConfig(
                        name=NATS_STREAM,
                        subjects=[self.subject],
                        storage=api.StorageType.FILE,
                        retention=api.RetentionPolicy.LIMITS,
                        num_replicas=replicas,
                    )
                )
                log.info("created JetStream stream %s (%d replicas)", NATS_STREAM, replicas)
                return
            except nats.js.errors.BadRequestError as exc:
                if replicas == 1:
                    raise
                log.info("stream with %d replicas refused (%s); trying 1", replicas, exc.description)
            except nats.js.errors.ServerError as exc:
                if replicas == 1:
                    raise
                log.info("stream with %d replicas refused (%s); trying 1", replicas, exc.description)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    async def _on_disconnect(self) -> None:
        if self._nc is not None:  # not our own close
            log.warning("NATS connection lost; reconnecting")

    async def _on_reconnect(self) -> None:
        log.warning("NATS connection back")

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            with contextlib.suppress(Exception):  # every ack was flushed; nothing is left to drain
                await nc.close()

    async def take(self, max_messages: int, wait_s: float, linger_s: float) -> list[Delivery]:
        import nats.errors

        try:
            messages: list[nats.aio.msg.Msg] = await self._sub.fetch(max_messages, timeout=max(wait_s, 0.1))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as exc:
            log.warning("NATS fetch failed (%s); retrying", exc)
            await asyncio.sleep(min(wait_s, 1.0))
            return []
        return [Delivery(m.subject.replace(".", "/"), m.data, m) for m in messages]

    async def ack(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            try:
                await delivery.token.ack()
            except Exception as exc:  # after ack_wait JetStream gives it again and the database drops it
                log.warning("NATS ack failed (%s); the message will be delivered again", exc)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=10)

    async def backlog(self) -> int | None:
        try:
            info = await self._sub.consumer_info()
        except Exception:
            return None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
