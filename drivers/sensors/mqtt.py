"""Shelf sensors that publish JSON on the in-store MQTT broker (ESPHome, Tasmota, Zigbee2MQTT...).

One connection serves every sensor: topic -> sensor id. The connection is retried with capped,
jittered backoff; its state is reported once when lost and once when back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiomqtt

from drivers.errors import reason
from drivers.sensors import SensorReading, SourceStatus, parse_json_reading

log = logging.getLogger(__name__)


class MqttSensors:
    """Readings of the sensors at `topics` ({topic: sensor id}) on the broker at `url`."""

    def __init__(
        self,
        url: str,
        topics: dict[str, str],
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        on_status: Callable[[SourceStatus], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.topics = topics
        self.username = username
        self.password = password
        self.client_id = client_id
        self.on_status = on_status
        self._online: bool | None = None

    def _status(self, online: bool, detail: str | None = None) -> None:
        if online != self._online:
            self._online = online
            # the gateway logs the change (with the address) when it records the status
            log.debug("local MQTT %s:%s %s: %s", self.host, self.port, "connected" if online else "unavailable", detail)
            if self.on_status is not None:
                self.on_status(SourceStatus(online, detail))

    async def readings(self) -> AsyncIterator[SensorReading]:
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, username=self.username, password=self.password
                ) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=0)
                    self._status(True)
                    backoff = 0.5
                    async for message in client.messages:
                        sensor = self.topics.get(str(message.topic))
                        if sensor is None:
                            continue
                        payload = (
                            message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                        )
                        reading = parse_json_reading(sensor, datetime.now(UTC), payload)
                        if reading is not None:
                            yield reading
            except aiomqtt.MqttError as exc:
                self._status(False, reason(exc))
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 30.0)
