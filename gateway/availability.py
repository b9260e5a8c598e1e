"""Device availability on the head-office link (contract.md §4).

One retained topic per configured device, `P/stores/S/devices/<id>/availability`, with
`{"state": "online"}` or `{"state": "offline"}` (a device in `error`, or not heard from yet, is
offline). It is published on every connection and again whenever a device's status changes. A
device removed from the config has its retained message cleared (an empty retained payload) at the
first connection after the start. The gateway's last will does not cover these topics: head office
reads the gateway's own state first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Literal

from gateway import devices
from gateway.config import Config
from gateway.db import StateDB, get_meta, set_meta
from gateway.mqtt import MqttConnection
from gateway.storage import StorageFull

log = logging.getLogger(__name__)

Availability = Literal["online", "offline"]

_PUBLISHED_KEY = "availability.devices"  # meta: the device ids whose availability was ever published


def availability_of(status: str | None) -> Availability:
    return "online" if status == "online" else "offline"


def _statuses(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in conn.execute("SELECT id, status FROM devices")}


def _previously_published(conn: sqlite3.Connection) -> set[str]:
    text = get_meta(conn, _PUBLISHED_KEY)
    known = set(json.loads(text)) if text else set()
    return known | set(_statuses(conn))


class AvailabilityPublisher:
    """Keeps the retained availability topics in step with the devices table."""

    def __init__(self, config: Config, db: StateDB, prefix: str, store: str) -> None:
        self.db = db
        self.prefix = prefix
        self.store = store
        self.configured = [device_id for _kind, device_id in config.device_ids()]
        self._seen = devices.changes
        self._changed = asyncio.Event()
        self._cleared = False
        db.on_commit.append(self._after_commit)

    def topic(self, device_id: str) -> str:
        return f"{self.prefix}/stores/{self.store}/devices/{device_id}/availability"

    def _after_commit(self) -> None:
        if devices.changes != self._seen:  # one integer compare per commit: nothing on the hot path
            self._seen = devices.changes
            self._changed.set()

    async def run(self, link: MqttConnection, stopping: asyncio.Event) -> None:
        """Publish on this connection until `stopping` is set (the connection's errors propagate)."""
        if not self._cleared:
            await self._clear_removed(link)
        published: dict[str, Availability] = {}
        while not stopping.is_set():
            self._changed.clear()
            statuses = await self.db.read(_statuses)
            for device_id in self.configured:
                state = availability_of(statuses.get(device_id))
                if published.get(device_id) != state:
                    payload = json.dumps({"state": state}).encode()
                    await link.publish(self.topic(device_id), payload, qos=1, retain=True)
                    published[device_id] = state
            waits = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stopping.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def _clear_removed(self, link: MqttConnection) -> None:
        removed = sorted((await self.db.read(_previously_published)) - set(self.configured))
        for device_id in removed:
            await link.publish(self.topic(device_id), b"", qos=1, retain=True)
        if removed:
            log.info("availability cleared for devices no longer configured: %s", ", ".join(removed))
        ids = json.dumps(sorted(self.configured))
        try:
            await self.db.write(lambda conn: set_meta(conn, _PUBLISHED_KEY, ids))
        except StorageFull:  # the disk is full: not recorded, so cleared again on the next connection
            return
        self._cleared = True
