"""A small asyncio adapter over paho-mqtt's public API: one connection, driven by the event loop.

Why our own and not aiomqtt: the uplink needs four things aiomqtt does not give through its public
API - publishing thousands of QoS 1 events without a future, a task and a timer each (matched to
their PUBACK by message id instead), acknowledging a command only once its effects are committed
(paho's manual ack), the DUP flag of a received message (a redelivery), and the CONNACK's session
present flag. Reaching into aiomqtt's privates for them pinned it below 3 and could break delivery
silently on an upgrade; paho's public API has all four. The socket is driven the way aiomqtt drives
it: paho's socket callbacks register the socket with the loop (`add_reader`/`add_writer`), a task
calls `loop_misc()` every second (keepalive pings, timeouts), and the blocking `connect()` (name
lookup, TCP, TLS handshake) runs in a worker thread. Everything else runs on the loop's thread, so
paho's callbacks never race with our code.

    async with MqttConnection(host, port, client_id="store-gateway-0042", will=...) as link:
        await link.subscribe("retail/stores/0042/commands/#")
        async for message in link.messages():
            ...
            link.ack(message)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

Protocol = Literal["3.1.1", "5"]


class LinkError(Exception):
    """The connection could not be made, or broke. The message says why, as the broker or the socket did."""

    def __init__(self, message: str, *, reason: ReasonCode | int | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when we vanish without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Message:
    """A message the broker delivered to one of our subscriptions."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool
    """Set by the broker on a redelivery: it may have reached us (and been applied) before."""
    properties: Properties | None


PubackHandler = Callable[[int, ReasonCode], None]


class MqttConnection:
    """One connection to an MQTT broker (3.1.1 or 5) for the life of an `async with` block.

    Use a fresh object per connection attempt: nothing a dead connection left queued inside paho is
    then sent again behind the caller's back.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        protocol: Protocol = "3.1.1",
        persistent_session: bool = True,
        session_expiry_s: int = 7 * 24 * 3600,
        keepalive_s: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        will: Will | None = None,
        manual_ack: bool = False,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.protocol = protocol
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        v5 = protocol == "5"
        self._client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else not persistent_session,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        self._clean_start: bool | Literal[3] = MQTT_CLEAN_START_FIRST_ONLY  # ignored on 3.1.1
        self._connect_properties: Properties | None = None
        if v5:
            # A v5 session outlives the connection only with clean start off and an expiry interval.
            self._clean_start = not persistent_session
            self._connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            self._connect_properties.SessionExpiryInterval = session_expiry_s if persistent_session else 0
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.max_inflight_messages_set(0)  # no limit in paho (it scans its queue per PUBACK); callers bound it
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_socket_register_write
        self._client.on_socket_unregister_write = self._on_socket_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._awaited: dict[int, asyncio.Future[ReasonCode]] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc: asyncio.Task[None] | None = None
        self._sock: Any = None
        self.on_puback: PubackHandler | None = None
        """Called with (mid, reason) for each PUBACK of a `publish_nowait` message."""
        self.session_present = False
        """The CONNACK's flag: the broker kept our session (subscriptions and queued messages) from before."""

    # -- the connection's life -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = self._loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(None, self._connect), timeout=self.connect_timeout_s + self.keepalive_s
            )
        except TimeoutError:
            raise LinkError(f"no answer from {self.host}:{self.port} (timed out)") from None
        except ssl.SSLError as exc:
            raise LinkError(f"TLS refused: {_ssl_error(exc)}") from None
        except OSError as exc:
            raise LinkError(_socket_error(exc)) from None
        try:
            self.session_present = await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout_s)
        except TimeoutError:
            self._abandon()
            raise LinkError(f"no CONNACK from {self.host}:{self.port} within {self.connect_timeout_s:.0f} s") from None
        except LinkError:
            self._abandon()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._closed is not None
        if not self._closed.done():
            self._client.disconnect()
            with contextlib.suppress(TimeoutError, LinkError):
                await asyncio.wait_for(asyncio.shield(self._closed), 2.0)
        self._abandon()

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the connection ended: with a `LinkError` if it broke, with None if we closed it."""
        if self._closed is None:
            raise RuntimeError("not connected")
        return self._closed

    def _connect(self) -> None:
        """Runs in a worker thread: name lookup, TCP and TLS handshakes block."""
        self._client.connect(
            self.host,
            self.port,
            self.keepalive_s,
            clean_start=self._clean_start,
            properties=self._connect_properties,
        )

    def _abandon(self) -> None:
        """Drop the socket and every waiter (after a close, a broken link or a failed CONNACK)."""
        self._finish(LinkError("the connection was closed"))
        with contextlib.suppress(Exception):
            self._client.disconnect()  # closes the socket when the DISCONNECT cannot be sent
        self._drop_socket()

    def _finish(self, error: LinkError | None) -> None:
        """The connection ended: wake every waiter once."""
        if self._closed is not None and not self._closed.done():
            if error is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(error)
                self._closed.exception()  # retrieved here: a caller that never looks is not an asyncio warning
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error or LinkError("closed before the CONNACK"))
        failure = error or LinkError("the connection was closed")
        for waiters in (self._awaited, self._subacks):
            for future in waiters.values():
                if not future.done():
                    future.set_exception(failure)
            waiters.clear()
        self._messages.put_nowait(None)

    # -- what callers do -------------------------------------------------------------------

    async def subscribe(self, topic_filter: str, qos: int = 1, *, timeout_s: float = 10.0) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS (LinkError if the broker refused)."""
        result, mid = self._client.subscribe(topic_filter, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"could not subscribe to {topic_filter}: {result.name}")
        future = self._future(self._subacks, mid)
        codes = await self._wait(future, timeout_s, f"no SUBACK for {topic_filter}")
        granted = codes[0] if codes else None
        if granted is None or granted.is_failure:
            raise LinkError(f"the broker refused the subscription to {topic_filter} ({granted})", reason=granted)
        return int(granted.value)

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: Properties | None = None
    ) -> int:
        """Send now without waiting; return the message id. Its PUBACK comes to `on_puback`."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"could not publish on {topic}: {info.rc.name}", reason=info.rc)
        return info.mid

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """Send and, at QoS 1, wait for the PUBACK (LinkError on a refusal, a timeout or a broken link)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"could not publish on {topic}: {info.rc.name}", reason=info.rc)
        if qos == 0:
            return
        future = self._future(self._awaited, info.mid)
        reason = await self._wait(future, timeout_s, f"no PUBACK for {topic} within {timeout_s:.0f} s")
        if reason.is_failure:
            raise LinkError(f"the broker refused the message on {topic}: {reason}", reason=reason)

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message taken with `manual_ack` (only once what it asked for is done)."""
        self._client.ack(message.mid, message.qos)

    async def messages(self) -> AsyncIterator[Message]:
        """Messages as they arrive; raises the `LinkError` that ended the connection, or ends after a close."""
        while True:
            message = await self._messages.get()
            if message is not None:
                yield message
                continue
            self._messages.put_nowait(None)  # any other reader sees the end too
            assert self._closed is not None
            self._closed.result()
            return

    def _future(self, waiters: dict[int, asyncio.Future[Any]], mid: int) -> asyncio.Future[Any]:
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        waiters[mid] = future
        return future

    @staticmethod
    async def _wait(future: asyncio.Future[Any], timeout_s: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise LinkError(what) from None

    # -- paho's callbacks (on the loop's thread, except the socket ones during connect) ---

    def _on_connect(
        self, client: PahoClient, userdata: Any, flags: ConnectFlags, reason: ReasonCode, properties: Any
    ) -> None:
        if self._connack is None or self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(LinkError(f"the broker refused the connection: {reason}", reason=reason))
        else:
            self._connack.set_result(bool(flags.session_present))

    def _on_disconnect(
        self, client: PahoClient, userdata: Any, flags: DisconnectFlags, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self._finish(LinkError(f"{self.host}:{self.port} closed the connection: {reason}", reason=reason))
        else:
            self._finish(None)

    def _on_message(self, client: PahoClient, userdata: Any, message: MQTTMessage) -> None:
        self._messages.put_nowait(
            Message(
                message.topic,
                bytes(message.payload),
                message.qos,
                bool(message.retain),
                message.mid,
                bool(message.dup),
                getattr(message, "properties", None),
            )
        )

    def _on_publish(self, client: PahoClient, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        future = self._awaited.pop(mid, None)
        if future is not None:
            if not future.done():
                future.set_result(reason)
        elif self.on_puback is not None:
            self.on_puback(mid, reason)

    def _on_subscribe(
        self, client: PahoClient, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    def _on_socket_open(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._loop.call_soon_threadsafe(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(sock.fileno(), self._readable)
        self._misc = self._loop.create_task(self._misc_loop(), name="mqtt-keepalive")

    def _readable(self) -> None:
        try:
            while True:
                self._client.loop_read()
                # an SSL socket may hold decoded bytes that select() does not see
                pending = getattr(self._sock, "pending", None)
                if pending is None or pending() == 0:
                    break
        except Exception as exc:  # a broken socket: the link is gone
            self._finish(LinkError(_socket_error(exc) if isinstance(exc, OSError) else str(exc)))
            self._drop_socket()

    def _on_socket_close(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        self._drop_socket(sock)

    def _drop_socket(self, sock: Any = None) -> None:
        sock = sock or self._sock
        if sock is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                fileno = sock.fileno()
                if fileno >= 0:
                    self._loop.remove_reader(fileno)
                    self._loop.remove_writer(fileno)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _on_socket_register_write(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.add_writer, sock.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:
            self._finish(LinkError(_socket_error(exc) if isinstance(exc, OSError) else str(exc)))
            self._drop_socket()

    def _on_socket_unregister_write(self, client: PahoClient, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock.fileno())

    async def _misc_loop(self) -> None:
        """Keepalive: paho sends PINGREQ and notices a missing PINGRESP (1.5 x keepalive) here."""
        while self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 (a timer, not a wait)
            await asyncio.sleep(1)


def _ssl_error(exc: ssl.SSLError) -> str:
    """`certificate verify failed: unable to get local issuer certificate`, without `[SSL: ...]` and `(_ssl.c:...)`."""
    text = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(exc))
    return text or str(exc.reason)


def _socket_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__
