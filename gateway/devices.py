"""Device status: one row per device, and a `device` event only when the status changes.

This is where a device's failure and its recovery are logged, each once: the line names the device
and, in the detail, its address and what went wrong.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Literal

from gateway import outbox
from gateway.timeutil import epoch_ms, utc_now

log = logging.getLogger(__name__)

DeviceStatus = Literal["online", "offline", "error"]

# Counts status changes, in the same transaction: the availability publisher reads this one row to
# know whether the devices table changed, rather than the table itself.
CHANGES_KEY = "devices.changes"


def report(
    conn: sqlite3.Connection,
    device: str,
    kind: str,
    status: DeviceStatus,
    detail: str | None = None,
    address: str | None = None,
) -> bool:
    """Record a device's status; emit a `device` event and log once if it changed. True if it changed.

    `address` (a URL, a serial port) is for the log line only.
    """
    row = conn.execute("SELECT status, detail FROM devices WHERE id = ?", (device,)).fetchone()
    if row is not None and row[0] == status and row[1] == detail:
        return False
    conn.execute(
        "INSERT INTO devices (id, kind, status, detail, since_ms) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, status = excluded.status, "
        "detail = excluded.detail, since_ms = excluded.since_ms",
        (device, kind, status, detail, epoch_ms(utc_now())),
    )
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, '1') "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (CHANGES_KEY,),
    )
    data: dict[str, str] = {"device": device, "kind": kind, "status": status}
    if detail:
        data["detail"] = detail
    outbox.append(conn, "device", data)
    name = f"{kind} {device}" + (f" ({address})" if address else "")
    if status == "online":
        back = row is not None and row[0] != "online"
        log.info("%s is %s%s", name, "back online" if back else "online", f" ({detail})" if detail else "")
    else:
        log.warning("%s: %s%s", name, status, f": {detail}" if detail else "")
    return True
