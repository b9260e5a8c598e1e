"""What the API and the page read from the state database (plain functions of a read-only connection)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from gateway import outbox
from gateway.http.models import Device, Event, Label, Order, OrderLine
from gateway.timeutil import from_epoch_ms


def _when(ms: int | None) -> str | None:
    return None if ms is None else from_epoch_ms(int(ms)).isoformat()


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def devices(conn: sqlite3.Connection, configured: Iterable[tuple[str, str]]) -> list[Device]:
    """Every configured device, in config order, with its last reported status (unknown: none yet)."""
    rows = {str(r[0]): r for r in conn.execute("SELECT id, kind, status, detail, since_ms FROM devices")}
    out = []
    for kind, device_id in configured:
        row = rows.get(device_id)
        if row is None:
            out.append(Device(id=device_id, kind=kind, status="unknown", since=None))
        else:
            out.append(Device(id=device_id, kind=kind, status=row[2], detail=row[3], since=_when(row[4])))
    return out


def labels(conn: sqlite3.Connection, states: Sequence[str], limit: int) -> list[Label]:
    """Labels in `states` (all when empty), the longest in their state first."""
    if not _table_exists(conn, "labels"):
        return []
    where = f"WHERE state IN ({','.join('?' * len(states))})" if states else ""
    rows = conn.execute(
        "SELECT label, sku, station, state, wanted_price, wanted_hash, confirmed_price, confirmed_hash, "
        f"last_error, updated_ms FROM labels {where} ORDER BY updated_ms, station, label LIMIT ?",
        (*states, limit),
    )
    out = []
    for label, sku, station, state, w_price, w_hash, c_price, c_hash, error, updated in rows:
        confirmed = state == "confirmed"
        out.append(
            Label(
                label=label,
                sku=sku,
                station=station,
                state=state,
                price=c_price if confirmed else w_price,
                content_hash=c_hash if confirmed else w_hash,
                error=error if state == "failed" else None,
                since=_when(updated) or "",
            )
        )
    return out


def orders(conn: sqlite3.Connection, states: Sequence[str], limit: int) -> list[Order]:
    """Orders in `states` (all when empty): open ones by their expiry, the others newest first."""
    if not _table_exists(conn, "orders"):
        return []
    where = f"WHERE status IN ({','.join('?' * len(states))})" if states else ""
    rows = conn.execute(
        "SELECT order_id, status, mode, expires_ms, deadline_ms, created_ms FROM orders "
        f"{where} ORDER BY status NOT IN ('reserved', 'ready'), coalesce(deadline_ms, expires_ms) IS NULL, "
        "coalesce(deadline_ms, expires_ms), created_ms DESC LIMIT ?",
        (*states, limit),
    ).fetchall()
    lines: dict[str, list[OrderLine]] = {}
    ids = [r[0] for r in rows]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for order_id, sku, qty, reserved, picked in conn.execute(
            f"SELECT order_id, sku, qty, reserved, picked FROM order_lines WHERE order_id IN "
            f"({','.join('?' * len(chunk))}) ORDER BY order_id, sku",
            chunk,
        ):
            lines.setdefault(order_id, []).append(OrderLine(sku=sku, qty=qty, reserved=reserved, picked=picked))
    return [
        Order(
            order=order_id,
            status=status,
            mode=mode,
            lines=lines.get(order_id, []),
            expires_at=_when(expires),
            deadline=_when(deadline),
            created_at=_when(created) or "",
        )
        for order_id, status, mode, expires, deadline, created in rows
    ]


def events(conn: sqlite3.Connection, store: str, limit: int) -> list[Event]:
    """The newest events, waiting in the outbox or already acknowledged, newest first, as envelopes."""
    out = []
    for row in outbox.recent(conn, limit):
        data: dict[str, Any] = json.loads(row.data)
        out.append(Event(id=row.id, store=store, type=row.kind, seq=row.seq, at=row.at, data=data))
    return out
