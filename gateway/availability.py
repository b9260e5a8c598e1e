"""Device availability on the head-office link (contract.md §4).

One retained topic per configured device, `P/stores/S/devices/<id>/availability`, with
`{"state": "online"}` or `{"state": "offline"}` (a device in `error`, or not heard from yet, is
offline). It is published on every connection and again whenever a device's status changes (seen
through a change count that devices.report bumps in the same transaction, read after commits). A
device removed from the config has its retained message cleared (an empty retained payload) at the
first connection after the start. The gateway's last will does not cover these topics: head office
reads the gateway's own state first.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from collections.abc import Awaitable
from typing import Literal

from gateway import devices
from gateway.config import Config
from gateway.db import StateDB, get_meta, set_meta
from gateway.mqtt import MqttConnection
from gateway.storage import StorageFull

log = logging.getLogger(__name__)

Availability = Literal["online", "offline"]

_PUBLISHED_KEY = "availability.devices"
# While commits flow (thousands of events a second), the change count is read at most this often.
_CHECK_S = 0.25  # meta: the device ids whose availability was ever published


def availability_of(status: str | None) -> Availability:
    return "online" if status == "online" else "offline"


def _statuses(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in conn.execute("SELECT id, status FROM devices")}


def _changed_since(conn: sqlite3.Connection, known: str | None) -> tuple[str, dict[str, str] | None]:
    """The devices' change count, and their statuses unless the count is still `known` (one snapshot)."""
    conn.execute("BEGIN")
    try:
        count = get_meta(conn, devices.CHANGES_KEY) or "0"
        return count, None if count == known else _statuses(conn)
    finally:
        conn.execute("COMMIT")


async def _first(*waits: Awaitable[object]) -> None:
    """Return when the first of `waits` is done; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _previously_published(conn: sqlite3.Connection) -> set[str]:
    text = get_meta(conn, _PUBLISHED_KEY)
    known = set(json.loads(text)) if text else set()
    # devices of the config's kinds only (the gateway's own storage is not a configured device)
    rows = conn.execute("SELECT id FROM devices WHERE kind IN ('printer', 'scanner', 'label_station', 'sensor')")
    return known | {str(row[0]) for row in rows}


class AvailabilityPublisher:
    """Keeps the retained availability topics in step with the devices table."""

    def __init__(self, config: Config, db: StateDB, prefix: str, store: str) -> None:
        self.db = db
        self.prefix = prefix
        self.store = store
        self.configured = [device_id for _kind, device_id in config.device_ids()]
        self._commits = asyncio.Event()
        self._cleared = False
        db.on_commit.append(self._after_commit)

    def topic(self, device_id: str) -> str:
        return f"{self.prefix}/stores/{self.store}/devices/{device_id}/availability"

    def _after_commit(self) -> None:
        self._commits.set()

    async def run(self, link: MqttConnection, stopping: asyncio.Event) -> None:
        """Publish on this connection until `stopping` is set (the connection's errors propagate)."""
        if not self._cleared:
            await self._clear_removed(link)
        published: dict[str, Availability] = {}
        known: str | None = None
        while not stopping.is_set():
            self._commits.clear()
            known, statuses = await self.db.read(functools.partial(_changed_since, known=known))
            if statuses is not None:
                await self._publish(link, statuses, published)
            # a commit may hold a status change; while commits flow, look at most every _CHECK_S
            await _first(self._commits.wait(), stopping.wait())
            await _first(asyncio.sleep(_CHECK_S), stopping.wait())

    async def _publish(
        self, link: MqttConnection, statuses: dict[str, str], published: dict[str, Availability]
    ) -> None:
        for device_id in self.configured:
            state = availability_of(statuses.get(device_id))
            if published.get(device_id) != state:
                await link.publish(self.topic(device_id), json.dumps({"state": state}).encode(), qos=1, retain=True)
                published[device_id] = state
                log.debug("availability: %s is %s", device_id, state)

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
