"""`store-gateway status`: what a technician needs to know, read from the state database only.

It opens the database read-only, so it never disturbs a running gateway and works on a stopped one.
Services add sections to SECTIONS (a function of the connection returning a dict, or None when
the section does not apply to this database).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway import instance, storage
from gateway.config import Config
from gateway.db import get_meta, open_state
from gateway.timeutil import from_epoch_ms, human_duration, parse_rfc3339, utc_now

Section = Callable[[sqlite3.Connection], dict[str, Any] | None]


def _gateway(conn: sqlite3.Connection, db_path: Path) -> dict[str, Any]:
    recorded = get_meta(conn, "daemon.state")
    pid = instance.holder(db_path)  # the lock, not a pid that may have been reused
    if pid is not None:
        state = "running"
    elif recorded is None:
        state = "never started"
    else:
        state = "stopped"
    return {
        "state": state,
        "pid": pid or None,
        # a gateway that holds no lock but last wrote "running" was killed or lost power
        "stopped_cleanly": None if state != "stopped" else recorded != "running",
        "version": get_meta(conn, "daemon.version"),
        "started_at": get_meta(conn, "daemon.started_at"),
    }


def _uplink(conn: sqlite3.Connection, running: bool, config: Config | None) -> dict[str, Any]:
    state = get_meta(conn, "uplink.state") or "never connected"
    if not running and state != "never connected":
        state = "offline"
    attempts = get_meta(conn, "uplink.failed_attempts")
    return {
        "state": state,
        "broker": config.uplink.url if config else None,
        "last_connected_at": get_meta(conn, "uplink.connected_at"),
        "last_disconnected_at": get_meta(conn, "uplink.disconnected_at"),
        "last_error": get_meta(conn, "uplink.last_error"),
        "last_error_at": get_meta(conn, "uplink.last_error_at"),
        "failed_attempts": int(attempts) if attempts else 0,
        # only a running gateway retries
        "next_retry_at": get_meta(conn, "uplink.next_retry_at") if running and state != "online" else None,
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


def _with_storage(devices: list[dict[str, Any]], db_path: Path) -> list[dict[str, Any]]:
    """The disk under the state database as a device: its free space now, else its last recorded status.

    A gateway on a full disk cannot record that it is (nothing can be written), so the free space
    is looked at here: below what the gateway needs to resume writing, it is `error`. A disk that
    has never been full is not listed.
    """
    free = storage.free_bytes(db_path)
    recorded = next((d for d in devices if d["device"] == storage.DEVICE_ID), None)
    if free < storage.RESERVE_BYTES + storage.MARGIN_BYTES:
        entry = {"device": storage.DEVICE_ID, "kind": storage.DEVICE_KIND, "status": "error",
                 "detail": f"disk full: {free // 1024} KiB free in {db_path.parent}; nothing can be recorded",
                 "since": None if recorded is None else recorded["since"]}  # fmt: skip
    else:
        return devices  # with its row once it has been full: online again, and since when
    others = [d for d in devices if d["device"] != storage.DEVICE_ID]
    return sorted([*others, entry], key=lambda d: (str(d["kind"]), str(d["device"])))


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
    conn = open_state(db_path, readonly=True)  # FileNotFoundError, StateDamaged
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            # a gateway starting for the first time has created the file but not its tables yet
            raise FileNotFoundError(f"no state database at {db_path} yet (the gateway is creating it)")
        now = utc_now()
        gateway = _gateway(conn, db_path)
        report: dict[str, Any] = {
            "store": get_meta(conn, "store.id") or (config.store.id if config else None),
            "gateway": gateway,
            "uplink": _uplink(conn, gateway["state"] == "running", config),
            "outbox": _outbox(conn, now),
            "devices": _with_storage(_devices(conn, config), db_path),
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
    return "-" if seconds is None else human_duration(seconds)


def _local(text: str | None, zone: ZoneInfo) -> str:
    if not text:
        return "never"
    return parse_rfc3339(text).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _gateway_line(gateway: dict[str, Any], zone: ZoneInfo) -> str:
    state = gateway["state"]
    if state == "never started":
        return "never started with this state database"
    text = "running" + (f" (pid {gateway['pid']})" if gateway["pid"] else "") if state == "running" else "stopped"
    if gateway["stopped_cleanly"] is False:
        text += " (it did not stop cleanly: killed, crashed or a power cut)"
    if gateway["version"]:
        text += f", version {gateway['version']}"
    if gateway["started_at"]:
        text += f", {'started' if state == 'running' else 'last started'} {_local(gateway['started_at'], zone)}"
    return text


def _uplink_line(uplink: dict[str, Any], running: bool, zone: ZoneInfo) -> str:
    broker = f" ({uplink['broker']})" if uplink["broker"] else ""
    state = str(uplink["state"])
    if state == "online":
        return f"online since {_local(uplink['last_connected_at'], zone)}{broker}"
    text = state + broker
    if not running:
        text += ": the gateway is not running"
    if uplink["last_error"]:
        text += f"; last error {_local(uplink['last_error_at'], zone)}: {uplink['last_error']}"
        if uplink["failed_attempts"]:
            text += f" ({uplink['failed_attempts']} failed attempts)"
    if uplink["next_retry_at"]:
        text += f"; next try {_local(uplink['next_retry_at'], zone)}"
    return text + f"; last connected {_local(uplink['last_connected_at'], zone)}"


def render_text(report: dict[str, Any], zone: ZoneInfo) -> str:
    """The human-readable form (times in the store's time zone, no raw values)."""
    gateway, uplink, box = report["gateway"], report["uplink"], report["outbox"]
    lines = [
        f"store        {report['store']}",
        f"gateway      {_gateway_line(gateway, zone)}",
        f"uplink       {_uplink_line(uplink, gateway['state'] == 'running', zone)}",
        f"outbox       {box['depth']} events waiting"
        + (f", oldest {_age(box['oldest_age_s'])}" if box["depth"] else "")
        + f", last seq {box['last_seq']}",
        "devices"
        + ("      none configured" if not report["devices"] else "")
        + (
            "      as last seen (the gateway is not running)"
            if report["devices"] and gateway["state"] != "running"
            else ""
        ),
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
            lines.append(f"{name.replace('_', ' '):<12} " + _flat(report[name]))
    return "\n".join(lines)


def _counts(value: dict[str, Any]) -> str:
    return ", ".join(f"{count} {state}" for state, count in value.items()) or "none"


def _facts(item: dict[str, Any]) -> str:
    return ", ".join(f"{_flat(value)} {key.replace('_', ' ')}" for key, value in item.items() if key != "sku")


def _flat(value: Any, key: str = "") -> str:
    """A section of the report as words: `by_state` maps become "3 sent, 12 confirmed", None "none"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and key.endswith("_s"):
        return _age(float(value))
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if isinstance(v, dict) and all(isinstance(n, int) for n in v.values()) and "by_" in k:
                prefix = k.split("by_")[0].replace("_", " ").strip()
                parts.append((f"{prefix}: " if prefix else "") + _counts(v))
            else:
                parts.append(f"{k.removesuffix('_s').replace('_', ' ')} {_flat(v, k)}")
        return "; ".join(parts) or "none"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "sku" in v for v in value):
            return ", ".join(f"{v['sku']} (" + _facts(v) + ")" for v in value)
        return ", ".join(_flat(v) for v in value) or "none"
    return str(value)


def render_json(report: dict[str, Any], indent: int | None = 2) -> str:
    """The JSON form (`status --json`, and the HTTP API's /api/status): the report as it is."""
    return json.dumps(report, indent=indent, ensure_ascii=False)
