"""The MQTT link to head office: retained state with a last will, commands in, the outbox out.

One `MqttConnection` (gateway/mqtt.py, our adapter over paho's public API) per connection attempt:
a fresh object, so no message left queued inside paho by a dead connection is sent a second time
behind our back. The broker keeps our session (clean session off, fixed client id), so commands
sent while the store was offline arrive when it returns. Commands are acknowledged (PUBACK) only
after their effects are committed.

The outbox publisher keeps a window of QoS 1 publishes in flight, in seq order, and deletes a row
only when its PUBACK arrived. After a reconnect it starts again from the oldest row not deleted:
an event whose PUBACK was lost with the connection is sent again with the same id
(at-least-once; head office drops duplicates by id). Events are sent without a future each and
matched to their PUBACK by message id (`OutboxWindow`): a future, a task and a timer per event was
most of the event loop's time at 5,000 events/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway import outbox
from gateway.availability import AvailabilityPublisher
from gateway.commands import CommandResult
from gateway.config import Config
from gateway.db import StateDB, set_meta
from gateway.mqtt import LinkError, Message, MqttConnection, Will
from gateway.storage import StorageFull
from gateway.timeutil import human_duration, rfc3339, utc_now
from gateway.topics import Topics

log = logging.getLogger(__name__)

# (payload, command name from the topic, redelivered: the broker set DUP) -> the committed result
CommandHandler = Callable[[bytes, str, bool], Awaitable[CommandResult]]
# Commands taken from the broker, in arrival order, each with the task applying it (None: not recorded).
Applying = asyncio.Queue[tuple[Message, "asyncio.Task[CommandResult | None]"]]

_BACKOFF_START_S = 0.5
_BACKOFF_CAP_S = 30.0
# A connection that lasts this long ends an outage (and resets the backoff).
_STABLE_S = 10.0
_SESSION_EXPIRY_S = 7 * 24 * 3600
# An event without its PUBACK for 1.5 keepalives (what the broker allows a silent client), at most
# this long, ends the connection. While events flow paho never pings (it pings only after a keepalive
# without sending), so this is what notices a link gone silent.
_PUBACK_TIMEOUT_S = 10.0
# Commands received and queued for the writer before the oldest of them is committed and acknowledged.
COMMANDS_AHEAD = 16


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for an mqtts:// uplink: server CA, and the client certificate for mTLS."""
    uplink = config.uplink
    if not uplink.broker.tls:
        return None
    context = ssl.create_default_context(cafile=str(uplink.ca_file) if uplink.ca_file else None)
    if uplink.cert_file and uplink.key_file:
        context.load_cert_chain(str(uplink.cert_file), str(uplink.key_file))
    return context


@dataclass(frozen=True)
class LinkFailure:
    """Why the link to the broker failed, in words a technician can act on."""

    kind: str  # refused | dns | tls | timeout | auth | protocol | taken_over | closed | keepalive | puback | other
    text: str


# CONNACK refusals (MQTT 5 reason codes; paho gives 3.1.1's return codes as the same reasons)
_CONNACK_WORDS = {
    132: "the broker refused the connection: it does not speak this MQTT version (uplink.protocol)",
    133: "the broker refused the client id (uplink.client_id)",
    134: "the broker refused the user name or password (uplink.username, uplink.password_file)",
    135: "the broker refused the connection: not authorised (check the store's user and ACL)",
    136: "the broker refused the connection: server unavailable",
}


def _innermost(error: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


_NO_MQTT5 = (
    'the broker does not speak MQTT 5 (uplink.protocol = "5"); RabbitMQ 3 and NATS 2 speak only MQTT 3.1.1: '
    'set uplink.protocol = "3.1.1"'
)


def describe_failure(
    error: BaseException, client_id: str, keepalive_s: int, *, protocol: str = "3.1.1", connecting: bool = False
) -> LinkFailure:
    """What broke the link, from the adapter's `LinkError` (the broker's reason code or the socket's error).

    `connecting`: no CONNACK came yet. A broker without MQTT 5 either answers an MQTT 5 CONNECT with
    "unsupported protocol version" (NATS) or closes the connection without a word (RabbitMQ); the
    second looks like any lost connection, so with protocol 5 it is named as the likely cause.
    """
    failure = _describe(error, client_id, keepalive_s)
    if protocol != "5":
        return failure
    if failure.kind == "protocol":
        return LinkFailure("protocol", _NO_MQTT5)
    if connecting and failure.kind in ("closed", "timeout"):
        return LinkFailure(
            "protocol",
            f"no answer to our MQTT 5 CONNECT ({failure.text}): the broker probably does not speak MQTT 5 "
            '(RabbitMQ 3 and NATS 2 speak only MQTT 3.1.1); set uplink.protocol = "3.1.1"',
        )
    return failure


def _describe(error: BaseException, client_id: str, keepalive_s: int) -> LinkFailure:
    error = _innermost(error)
    reason = getattr(error, "reason", None)
    if isinstance(reason, ReasonCode):
        code = reason.value
        if reason.packetType == PacketTypes.CONNACK:
            if code == 132:  # Unsupported Protocol Version (3.1.1's return code 1)
                return LinkFailure("protocol", _CONNACK_WORDS[132])
            return LinkFailure("auth" if code in (134, 135) else "refused", _CONNACK_WORDS.get(code, str(error)))
        if code == 142:
            return LinkFailure(
                "taken_over",
                f'another client connected with our client id "{client_id}" and the broker closed this '
                "connection (session taken over); only one connection per client id is allowed",
            )
        if code == 141:
            return LinkFailure("keepalive", f"no answer from the broker within the keepalive ({keepalive_s} s)")
        if code in (134, 135):
            return LinkFailure("auth", f"the broker refused the connection: {reason} (check the store's credentials)")
        if code == 128 and reason.packetType == PacketTypes.DISCONNECT:  # 3.1.1: the socket closed, no reason
            return LinkFailure("closed", "the connection was closed by the broker or the network")
        return LinkFailure("closed", f"the broker closed the connection: {reason}")
    text = str(error)
    lowered = text.lower()
    if "connection refused" in lowered:
        return LinkFailure("refused", "connection refused (no broker listening there?)")
    if "name not resolved" in lowered:
        return LinkFailure("dns", "the host name could not be resolved (DNS)")
    if "tls" in lowered or "ssl" in lowered or "certificate" in lowered:
        return LinkFailure("tls", f"{text} (check uplink.ca_file, cert_file and key_file)")
    if "timed out" in lowered:
        return LinkFailure("timeout", "no answer from the broker (timed out)")
    if "puback" in lowered:
        return LinkFailure("puback", text)
    if "no route to host" in lowered or "network is unreachable" in lowered:
        return LinkFailure("refused", f"the network cannot reach the broker ({text})")
    return LinkFailure("other", text)


def _pending(conn: sqlite3.Connection, *, after: int, room: int) -> list[outbox.OutboxEvent]:
    return outbox.pending(conn, after, room)


class OutboxWindow:
    """The outbox events in flight on one connection, matched to their PUBACKs by message id.

    The adapter reads the socket on the event loop's thread, so a PUBACK is always handled after the
    `publish_nowait()` that sent it has returned and recorded the mid.
    """

    def __init__(
        self, link: MqttConnection, progress: asyncio.Event, refill_at: int, acked_by_kind: dict[str, int]
    ) -> None:
        self._link = link
        self._progress = progress
        self._refill_at = refill_at
        self._acked_by_kind = acked_by_kind
        # mid -> (seq, monotonic time sent, kind), oldest first
        self.in_flight: dict[int, tuple[int, float, str]] = {}
        self.acked: list[int] = []
        self.refused: list[tuple[int, str]] = []
        link.on_puback = self._on_puback

    def publish(self, topic: str, payload: bytes, seq: int, kind: str) -> None:
        mid = self._link.publish_nowait(topic, payload, qos=1)
        self.in_flight[mid] = (seq, time.monotonic(), kind)

    def oldest_wait_s(self) -> float:
        """How long the oldest event in flight has waited for its PUBACK (0 when none is)."""
        for _seq, sent, _kind in self.in_flight.values():
            return time.monotonic() - sent
        return 0.0

    def close(self) -> None:
        self._link.on_puback = None

    def _on_puback(self, mid: int, reason: ReasonCode) -> None:
        sent = self.in_flight.pop(mid, None)
        if sent is None:
            return
        if reason.is_failure:  # MQTT 5 only: the broker took the packet but not the event
            self.refused.append((sent[0], str(reason)))
        else:
            self.acked.append(sent[0])
            self._acked_by_kind[sent[2]] = self._acked_by_kind.get(sent[2], 0) + 1
        if len(self.in_flight) <= self._refill_at:  # wake the publisher for a batch, not for every PUBACK
            self._progress.set()


@dataclass
class _Outage:
    """The link is down (or keeps dropping) since `started` (monotonic)."""

    started: float
    failures: int = 0
    quick_closes: int = 0
    reported_kind: str = ""
    last_error: str = ""


class Uplink:
    """Owns the connection to head office for the life of the daemon."""

    def __init__(
        self,
        config: Config,
        db: StateDB,
        on_command: CommandHandler,
        *,
        version: str,
        started_at: str,
    ) -> None:
        self.config = config
        self.db = db
        self.on_command = on_command
        self.topics = Topics(config.uplink.topic_prefix, config.store.id, tuple(config.store.groups))
        self.window = config.uplink.inflight
        self.state = "connecting"
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._state_doc = {"version": version, "started_at": started_at}
        self._deletes: set[asyncio.Task[None]] = set()
        self._acked: set[int] = set()
        self.published = 0
        self.published_by_kind: dict[str, int] = {}  # events acknowledged since start, for /metrics
        self.reconnects = 0
        self._connected_before = False
        self.availability = AvailabilityPublisher(config, db, config.uplink.topic_prefix, config.store.id)
        self._outage: _Outage | None = None
        self._backoff = _BACKOFF_START_S
        self._link_now: MqttConnection | None = None
        db.on_commit.append(self._wake.set)
        db.on_storage.append(self._storage_changed)

    def _state_payload(self, state: str) -> bytes:
        doc: dict[str, object] = {"state": state, **self._state_doc}
        if state == "online":
            doc["storage"] = self.db.storage_status()
        return json.dumps(doc).encode()

    def _storage_changed(self, writable: bool) -> None:
        """The disk filled up or has room again: say it in the retained state; delete what was acknowledged."""
        link = self._link_now
        if link is not None and self.state == "online":
            self._background(
                link.publish(self.topics.state, self._state_payload("online"), qos=1, retain=True), "uplink-state"
            )
        if writable and self._acked:
            self._forget(list(self._acked))  # the deletes refused while the disk was full

    def _background(self, work: Coroutine[Any, Any, object], name: str) -> None:
        """Run `work` on the side; a full disk or a dropped link only loses what it would have recorded."""

        async def quietly() -> None:
            with contextlib.suppress(StorageFull, LinkError):
                await work

        task = asyncio.get_running_loop().create_task(quietly(), name=name)
        self._deletes.add(task)
        task.add_done_callback(self._deletes.discard)

    def _link(self) -> MqttConnection:
        uplink = self.config.uplink
        broker = uplink.broker
        return MqttConnection(
            broker.host,
            broker.port,
            client_id=self.config.client_id,
            protocol="5" if uplink.protocol == "5" else "3.1.1",
            persistent_session=True,
            session_expiry_s=_SESSION_EXPIRY_S,
            keepalive_s=uplink.keepalive_s,
            username=uplink.username,
            password=uplink.password(),
            tls=tls_context(self.config),
            will=Will(self.topics.state, self._state_payload("offline"), qos=1, retain=True),
            manual_ack=True,  # PUBACK a command only once its effects are committed
        )

    async def run(self) -> None:
        """Connect, serve, reconnect with capped jittered backoff; return after `stop()`.

        An outage is logged once when it starts, again only if its reason changes, and once when
        the link is back and has stayed up `_STABLE_S` (a broker that drops us at once, e.g. for
        another client with our id, is still the same outage).
        """
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            link = self._link()
            connected_at: float | None = None
            stable: asyncio.TimerHandle | None = None
            try:
                async with link:
                    connected_at = loop.time()
                    self.reconnects += self._connected_before
                    self._connected_before = True
                    if self._outage is None:
                        log.info("uplink: connected to %s", self.config.uplink.url)
                    else:
                        log.debug("uplink: connected to %s; watching that it stays up", self._where)
                    stable = loop.call_later(_STABLE_S, self._recovered)
                    await self._serve(link)
            except* LinkError as group:
                lived = None if connected_at is None else loop.time() - connected_at
                self._set_state("offline")
                failure = describe_failure(
                    group,
                    self.config.client_id,
                    self.config.uplink.keepalive_s,
                    protocol=self.config.uplink.protocol,
                    connecting=connected_at is None,
                )
                self._failed(failure, lived)
            finally:
                if stable is not None:
                    stable.cancel()
            if self._stopping.is_set():
                break
            delay = random.uniform(self._backoff / 2, self._backoff)
            self._backoff = min(self._backoff * 2, _BACKOFF_CAP_S)
            self._record_retry(delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self._set_state("offline")

    @property
    def _where(self) -> str:
        broker = self.config.uplink.broker
        return f"{broker.host}:{broker.port}"

    def _failed(self, failure: LinkFailure, lived: float | None) -> None:
        """Log a failed connection or a lost link once per outage (and per change of reason)."""
        outage = self._outage
        first = outage is None
        if outage is None:
            outage = self._outage = _Outage(started=time.monotonic())
        outage.failures += 1
        if failure.kind == "closed" and lived is not None and lived < _STABLE_S:
            outage.quick_closes += 1
            if outage.quick_closes >= 2:  # MQTT 3.1.1 brokers close without saying why; this is the usual one
                failure = LinkFailure(
                    "taken_over",
                    "the broker closes the connection each time soon after it is made: another client is "
                    f'probably connected with our client id "{self.config.client_id}" (the broker keeps one '
                    "connection per client id and closes the other)",
                )
        if first and lived is not None:
            log.warning(
                "uplink: lost the link to %s after %s: %s; reconnecting, events wait in the outbox",
                self._where,
                human_duration(lived),
                failure.text,
            )
        elif first:
            log.warning(
                "uplink: cannot connect to %s: %s; retrying with backoff, events wait in the outbox",
                self._where,
                failure.text,
            )
        elif failure.kind != outage.reported_kind:
            log.warning("uplink: %s: %s (attempt %d, still retrying)", self._where, failure.text, outage.failures)
        else:
            log.debug("uplink: attempt %d to %s failed: %s", outage.failures, self._where, failure.text)
        outage.reported_kind = failure.kind
        outage.last_error = f"{self._where}: {failure.text}"

    def _recovered(self) -> None:
        """The link has stayed up `_STABLE_S`: the outage, if any, is over."""
        self._backoff = _BACKOFF_START_S
        outage, self._outage = self._outage, None
        if outage is None:
            return
        log.info(
            "uplink: connected to %s again after %d failed attempts (%s without the link)",
            self._where,
            outage.failures,
            human_duration(time.monotonic() - outage.started),
        )
        self._write_meta({"uplink.failed_attempts": "0"})

    def _record_retry(self, delay: float) -> None:
        outage = self._outage
        if outage is None:
            return
        now = utc_now()
        self._write_meta(
            {
                "uplink.last_error": outage.last_error,
                "uplink.last_error_at": rfc3339(now),
                "uplink.failed_attempts": str(outage.failures),
                "uplink.next_retry_at": rfc3339(now + timedelta(seconds=delay)),
            }
        )

    def _write_meta(self, values: dict[str, str]) -> None:
        def record(conn: Any) -> None:
            for key, value in values.items():
                set_meta(conn, key, value)

        self._background(self.db.write(record, what=None), "uplink-state")

    async def stop(self) -> None:
        """Ask the link to finish: stop taking commands, flush what is in flight, say offline."""
        self._stopping.set()
        self._wake.set()

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if state == "online":
            self.connected.set()
        else:
            self.connected.clear()
        moment = rfc3339(utc_now())

        def record(conn: Any) -> None:
            set_meta(conn, "uplink.state", state)
            set_meta(conn, f"uplink.{'connected' if state == 'online' else 'disconnected'}_at", moment)

        self._background(self.db.write(record, what=None), "uplink-state")

    async def _serve(self, link: MqttConnection) -> None:
        # subscribe first: "online" tells head office that commands sent from now on are taken
        for topic_filter in self.topics.command_filters:
            await link.subscribe(topic_filter, qos=1)
        await link.publish(self.topics.state, self._state_payload("online"), qos=1, retain=True)
        log.debug("uplink: subscribed to %s; published online", ", ".join(self.topics.command_filters))
        self._set_state("online")
        self._link_now = link
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._receive(link), name="uplink-commands")
                group.create_task(self._publish_outbox(link), name="uplink-outbox")
                group.create_task(self.availability.run(link, self._stopping), name="uplink-availability")
        finally:
            self._link_now = None
        with contextlib.suppress(LinkError):
            await link.publish(self.topics.state, self._state_payload("offline"), qos=1, retain=True, timeout_s=2)
        log.info("uplink: offline state published, disconnecting")

    async def _receive(self, link: MqttConnection) -> None:
        """Hand commands to the state database as they arrive; acknowledge each once it is committed.

        Up to `COMMANDS_AHEAD` commands wait in the writer's queue at once, so one commit (one fsync
        of the SD card) takes several of them; the writer applies them in arrival order, and they are
        acknowledged and answered in that order. At stop no new command is taken, and those already
        taken are answered and acknowledged (for up to 2 s) rather than offered again next time.
        """
        applying: Applying = asyncio.Queue()
        room = asyncio.Semaphore(COMMANDS_AHEAD)
        async with asyncio.TaskGroup() as group:
            acks = group.create_task(self._acknowledge(link, applying, room), name="uplink-acks")
            reader = group.create_task(self._take_commands(link, applying, room, group), name="uplink-commands-in")
            await self._stopping.wait()
            reader.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(applying.join(), 2.0)
            acks.cancel()

    async def _take_commands(
        self, link: MqttConnection, applying: Applying, room: asyncio.Semaphore, group: asyncio.TaskGroup
    ) -> None:
        async for message in link.messages():
            await room.acquire()  # a stop while waiting here leaves this command with the broker, untouched
            await self.db.writable()  # a full disk: take no command; the broker keeps them, unacknowledged
            # DUP: the broker sent it before (we may have answered it and died before its PUBACK)
            # a task starts in creation order, and its first step queues the write: arrival order holds
            task = group.create_task(self._apply(message.payload, message.topic, message.dup), name="uplink-command")
            applying.put_nowait((message, task))

    async def _apply(self, payload: bytes, topic: str, redelivered: bool) -> CommandResult | None:
        while True:
            try:
                return await self.on_command(payload, Topics.command_name(topic), redelivered)
            except StorageFull:
                # Nothing of it was committed: apply it again, once space returns (or leave it to the
                # broker, unacknowledged, if the gateway stops first).
                if not await self._until_writable():
                    return None
            except Exception:
                # Not acknowledged: the broker will offer it again on the next connection.
                log.exception("uplink: command on %s could not be recorded", topic)
                return None

    async def _until_writable(self) -> bool:
        """Wait for the state database to be writable again; False if the uplink stops first."""
        writable = asyncio.ensure_future(self.db.writable())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((writable, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            writable.cancel()
            stopping.cancel()
        return not self._stopping.is_set()

    async def _acknowledge(self, link: MqttConnection, applying: Applying, room: asyncio.Semaphore) -> None:
        while True:
            message, task = await applying.get()
            try:
                result = await task
                if result is not None:
                    link.ack(message)
                    if result.answered:
                        await self._respond(link, message, result)
            finally:
                applying.task_done()
                room.release()

    async def _respond(self, link: MqttConnection, message: Message, result: CommandResult) -> None:
        """MQTT 5 request/response: echo the result to the command's response topic, if it has one."""
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not response_topic:
            return
        reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            reply.CorrelationData = correlation
        body = outbox.dumps(result.as_json()).encode()
        try:
            await link.publish(response_topic, body, qos=1, properties=reply)
        except LinkError as exc:
            log.warning("uplink: reply to %s not sent: %s", response_topic, exc)

    async def _publish_outbox(self, link: MqttConnection) -> None:
        """Keep up to `window` QoS 1 publishes in flight, in seq order; forget each row after its PUBACK."""
        if self._deletes:
            await asyncio.gather(*list(self._deletes), return_exceptions=True)
        progress = self._wake  # set by every commit (new events) and by PUBACKs (room in the window)
        refill_at = max(1, self.window // 2)  # fetch rows in batches, not one per PUBACK
        window = OutboxWindow(link, progress, refill_at, self.published_by_kind)
        puback_timeout_s = min(_PUBACK_TIMEOUT_S, 1.5 * self.config.uplink.keepalive_s)
        cursor = 0
        try:
            while True:
                progress.clear()
                if window.refused:
                    refused, window.refused = window.refused, []
                    log.error(
                        "uplink: the broker refused %d events (first: seq %d, %s); they stay in the outbox "
                        "and are sent again on the next connection",
                        len(refused),
                        *refused[0],
                    )
                if window.acked:
                    done, window.acked = window.acked, []
                    self._forget(done)
                    self.published += len(done)
                stopping = self._stopping.is_set()
                if stopping and not window.in_flight:
                    return
                if not stopping and len(window.in_flight) < refill_at:
                    room = self.window - len(window.in_flight)
                    batch = await self.db.read(functools.partial(_pending, after=cursor, room=room))
                    for event in batch:
                        cursor = event.seq
                        if event.seq not in self._acked:
                            window.publish(
                                self.topics.event(event.kind), event.envelope(self.topics.store), event.seq, event.kind
                            )
                    if batch:
                        log.debug("uplink: publishing events seq %d to %d", batch[0].seq, batch[-1].seq)
                        continue
                if stopping:
                    wait_s: float | None = 5.0
                elif window.in_flight:
                    wait_s = max(0.0, puback_timeout_s - window.oldest_wait_s())
                else:
                    wait_s = None
                try:
                    await asyncio.wait_for(progress.wait(), wait_s)
                except TimeoutError:
                    if stopping:
                        log.warning(
                            "uplink: %d events unacknowledged at shutdown; they stay in the outbox",
                            len(window.in_flight),
                        )
                        return
                    if window.oldest_wait_s() >= puback_timeout_s:
                        raise LinkError(f"no PUBACK for {puback_timeout_s:.1f} s") from None
        finally:
            window.close()

    def _forget(self, seqs: list[int]) -> None:
        """Delete acknowledged rows (group-committed in the background, never awaited on the hot path)."""
        batch = list(seqs)
        self._acked.update(batch)

        def job(conn: Any) -> None:
            outbox.delete(conn, batch)

        # on a full disk the rows stay (and in _acked, so not sent again); deleted once space returns
        task = asyncio.get_running_loop().create_task(self.db.write(job, what=None), name="outbox-delete")
        self._deletes.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._deletes.discard(finished)
            if not finished.cancelled() and finished.exception() is None:
                self._acked.difference_update(batch)

        task.add_done_callback(done)

    async def flush(self) -> None:
        """Wait for background state and delete writes (shutdown)."""
        if self._deletes:
            await asyncio.gather(*list(self._deletes), return_exceptions=True)
