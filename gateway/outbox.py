"""The outbox: every event is a row before it counts as created, and leaves only after PUBACK.

`seq` is the row id (AUTOINCREMENT), so it rises by one for every committed event, across
restarts, and a rolled-back event leaves no gap. The envelope is assembled from the stored
columns when the event is published, byte for byte the same on every retry.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.timeutil import epoch_ms, rfc3339, utc_now


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class OutboxEvent:
    """One stored event, ready to publish."""

    seq: int
    id: str
    kind: str
    at: str
    data: str
    created_ms: int

    def envelope(self, store_id: str) -> bytes:
        """The event envelope of contract.md §3, as published."""
        return (
            f'{{"id":"{self.id}","store":{json.dumps(store_id)},"type":"{self.kind}",'
            f'"seq":{self.seq},"at":"{self.at}","data":{self.data}}}'
        ).encode()


# Acknowledged events kept for `GET /api/events` and the status page (the outbox forgets them at PUBACK).
RECENT_KEPT = 200


def event_id() -> str:
    """A random (version 4) UUID as 32 hex digits, without building a uuid.UUID: this runs per event."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def append(conn: sqlite3.Connection, kind: str, data: Mapping[str, Any], at: datetime | None = None) -> int:
    """Write one event in the caller's transaction; return its seq."""
    moment = at or utc_now()
    cursor = conn.execute(
        "INSERT INTO outbox (id, kind, at, data, created_ms) VALUES (?, ?, ?, ?, ?)",
        (event_id(), kind, rfc3339(moment), dumps(data), epoch_ms(moment)),
    )
    return int(cursor.lastrowid or 0)


def append_many(conn: sqlite3.Connection, kind: str, items: Iterable[Mapping[str, Any]]) -> int:
    """Write many events of one kind in the caller's transaction; return how many."""
    moment = utc_now()
    at, ms = rfc3339(moment), epoch_ms(moment)
    rows = [(event_id(), kind, at, dumps(data), ms) for data in items]
    conn.executemany("INSERT INTO outbox (id, kind, at, data, created_ms) VALUES (?, ?, ?, ?, ?)", rows)
    return len(rows)


def pending(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[OutboxEvent]:
    """Events not yet acknowledged, in seq order, after `after_seq`."""
    rows = conn.execute(
        "SELECT seq, id, kind, at, data, created_ms FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [OutboxEvent(*row) for row in rows]


def delete(conn: sqlite3.Connection, seqs: Iterable[int]) -> None:
    """Forget events the broker acknowledged (as ranges: PUBACKs come nearly in order)."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    if not ranges:
        return
    # Keep the newest acknowledged events for the status page: only those that can be among the
    # RECENT_KEPT newest (none while a long outbox drains, so a drain does no extra work).
    newest = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
    floor = max(ranges[-1][1], int(newest)) - RECENT_KEPT
    kept = [(max(low, floor + 1), high) for low, high in ranges if high > floor]
    if kept:
        conn.executemany(
            "INSERT OR IGNORE INTO recent_events (seq, id, kind, at, data) "
            "SELECT seq, id, kind, at, data FROM outbox WHERE seq BETWEEN ? AND ?",
            kept,
        )
    conn.executemany("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", ranges)
    if kept:
        conn.execute("DELETE FROM recent_events WHERE seq <= (SELECT max(seq) FROM recent_events) - ?", (RECENT_KEPT,))


def recent(conn: sqlite3.Connection, limit: int) -> list[OutboxEvent]:
    """The newest events, waiting or already acknowledged, newest first (up to RECENT_KEPT of the latter)."""
    rows = conn.execute(
        "SELECT seq, id, kind, at, data, created_ms FROM ("
        "  SELECT seq, id, kind, at, data, created_ms FROM (SELECT * FROM outbox ORDER BY seq DESC LIMIT ?)"
        "  UNION ALL"
        "  SELECT seq, id, kind, at, data, 0 FROM (SELECT * FROM recent_events ORDER BY seq DESC LIMIT ?)"
        ") ORDER BY seq DESC LIMIT ?",
        (limit, limit, limit),
    ).fetchall()
    return [OutboxEvent(*row) for row in rows]
