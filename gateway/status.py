"""`store-gateway status`: what a technician needs to know, read from the state database only.

It opens the database read-only, so it never disturbs a running gateway and works on a stopped one.
Services add sections to SECTIONS (a function of the connection returning a dict, or None when
the section does not apply to this database).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.db import connect, get_meta
from gateway.timeutil import from_epoch_ms, parse_rfc3339, utc_now

Section = Callable[[sqlite3.Connection], dict[str, Any] | None]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gateway(conn: sqlite3.Connection) -> dict[str, Any]:
    state = get_meta(conn, "daemon.state") or "never started"
    pid_text = get_meta(conn, "daemon.pid")
    pid = int(pid_text) if pid_text else None
    if state == "running" and (pid is None or not _pid_alive(pid)):
        state = "not running (it did not stop cleanly)"
    return {
        "state": state,
        "pid": pid if state == "running" else None,
        "version": get_meta(conn, "daemon.version"),
        "started_at": get_meta(conn, "daemon.started_at"),
    }


def _uplink(conn: sqlite3.Connection, running: bool) -> dict[str, Any]:
    state = get_meta(conn, "uplink.state") or "never connected"
    if not running:
        state = "offline"
    return {
        "state": state,
        "last_connected_at": get_meta(conn, "uplink.connected_at"),
        "last_disconnected_at": get_meta(conn, "uplink.disconnected_at"),
    }


def _outbox(conn: sqlite3.Connection, now: datetime) -> dict[str, Any]:
    row = conn.execute("SELECT count(*), min(created_ms), min(seq) FROM outbox").fetchone()
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    oldest_age = None if row[1] is None else max(0.0, (now - from_epoch_ms(int(row[1]))).total_seconds())
    return {
        "depth": int(row[0]),
        "oldest_age_s": None if oldest_age is None else round(oldest_age, 1),
        "last_seq": 0 if seq is None else int(seq[0]),
    }


def _devices(conn: sqlite3.Connection, config: Config | None) -> list[dict[str, Any]]:
    known = {
        str(row[0]): {"device": row[0], "kind": row[1], "status": row[2], "detail": row[3], "since_ms": row[4]}
        for row in conn.execute("SELECT id, kind, status, detail, since_ms FROM devices ORDER BY id")
    }
    if config is not None:
        for kind, device_id in config.device_ids():
            known.setdefault(
                device_id, {"device": device_id, "kind": kind, "status": "unknown", "detail": None, "since_ms": None}
            )
    out = []
    for item in sorted(known.values(), key=lambda d: (str(d["kind"]), str(d["device"]))):
        since = item.pop("since_ms")
        item["since"] = None if since is None else from_epoch_ms(int(since)).isoformat()
        out.append(item)
    return out


def _catalogue(conn: sqlite3.Connection) -> dict[str, Any]:
    return {
        "products": int(conn.execute("SELECT count(*) FROM products").fetchone()[0]),
        "scheduled_prices": int(conn.execute("SELECT count(*) FROM price_schedule").fetchone()[0]),
        "stock_rows": int(conn.execute("SELECT count(*) FROM stock").fetchone()[0]),
    }


def _labels(conn: sqlite3.Connection) -> dict[str, Any] | None:
    from gateway.labels.plan import status_section

    return status_section(conn)


def _printing(conn: sqlite3.Connection) -> dict[str, Any] | None:
    from gateway.printing.service import status_section

    return status_section(conn)


def _shelves(conn: sqlite3.Connection) -> dict[str, Any] | None:
    from gateway.shelves import status_section

    return status_section(conn)


def _orders(conn: sqlite3.Connection) -> dict[str, Any] | None:
    from gateway.orders import status_section

    return status_section(conn)


SECTIONS: dict[str, Section] = {
    "labels": _labels,
    "print_jobs": _printing,
    "shelves": _shelves,
    "orders": _orders,
}


def collect(db_path: Path, config: Config | None = None) -> dict[str, Any]:
    """Everything `status` shows, as a JSON-ready dict."""
    if not db_path.exists():
        raise FileNotFoundError(f"no state database at {db_path} (has the gateway ever run with this config?)")
    conn = connect(db_path, readonly=True)
    try:
        now = utc_now()
        gateway = _gateway(conn)
        report: dict[str, Any] = {
            "store": get_meta(conn, "store.id") or (config.store.id if config else None),
            "gateway": gateway,
            "uplink": _uplink(conn, gateway["state"] == "running"),
            "outbox": _outbox(conn, now),
            "devices": _devices(conn, config),
            "catalogue": _catalogue(conn),
        }
        for name, section in SECTIONS.items():
            value = section(conn)
            if value is not None:
                report[name] = value
        return report
    finally:
        conn.close()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _local(text: str | None, zone: ZoneInfo) -> str:
    if not text:
        return "never"
    return parse_rfc3339(text).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def render_text(report: dict[str, Any], zone: ZoneInfo) -> str:
    """The human-readable form (times in the store's time zone)."""
    gateway, uplink, box = report["gateway"], report["uplink"], report["outbox"]
    lines = [
        f"store        {report['store']}",
        f"gateway      {gateway['state']}"
        + (f" (pid {gateway['pid']})" if gateway["pid"] else "")
        + (f", version {gateway['version']}" if gateway["version"] else "")
        + (f", started {_local(gateway['started_at'], zone)}" if gateway["started_at"] else ""),
        f"uplink       {uplink['state']}, last connected {_local(uplink['last_connected_at'], zone)}",
        f"outbox       {box['depth']} events waiting, oldest {_age(box['oldest_age_s'])}, last seq {box['last_seq']}",
        "devices" + ("      none configured" if not report["devices"] else ""),
    ]
    for device in report["devices"]:
        detail = f" ({device['detail']})" if device["detail"] else ""
        lines.append(f"  {device['kind']:<14} {device['device']:<18} {device['status']}{detail}")
    cat = report["catalogue"]
    lines.append(
        f"catalogue    {cat['products']} products, {cat['scheduled_prices']} scheduled prices, "
        f"{cat['stock_rows']} stock rows"
    )
    for name in SECTIONS:
        if name in report:
            lines.append(f"{name:<12} " + _flat(report[name]))
    return "\n".join(lines)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return (
            ", ".join(f"{k} {_flat(v)}" if not isinstance(v, dict) else f"{k}: {_flat(v)}" for k, v in value.items())
            or "none"
        )
    if isinstance(value, list):
        return "; ".join(_flat(v) for v in value) or "none"
    return str(value)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
