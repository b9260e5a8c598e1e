"""The writer on a full disk, without root: SQLite's own SQLITE_FULL, from a page limit on the writer's connection.

(tests/reliability/test_disk_full.py fills a real disk through the real process; this checks the
writer's part of it on any machine.)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway import outbox
from gateway.db import StateDB
from gateway.storage import StorageFull, is_full_error, reserve_path


async def test_a_full_database_refuses_at_once_counts_and_resumes(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    assert reserve_path(db.path).stat().st_size > 0  # room to open the database on a full disk later
    await db.start()
    changes: list[bool] = []
    db.on_storage.append(changes.append)
    pages = await db.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    db.conn.execute(f"PRAGMA max_page_count = {pages}")  # the writer is idle: no page more for it

    with pytest.raises(StorageFull):
        await db.write(lambda conn: outbox.append(conn, "scan", {"blob": "x" * 100_000}), what="scan events")
    assert changes == [False] and db.full is not None
    assert db.storage_status()["status"] == "error"
    with pytest.raises(StorageFull):  # refused at once, without touching the disk
        await db.write(lambda conn: outbox.append(conn, "scan", {}), what="scan events")
    with pytest.raises(StorageFull):
        await db.write(lambda conn: None)
    waiting = asyncio.ensure_future(db.writable())
    await asyncio.sleep(0.2)
    assert not waiting.done()

    db.conn.execute("PRAGMA max_page_count = 1073741823")
    await asyncio.wait_for(waiting, 10)  # the database looks once a second
    assert changes == [False, True] and db.full is None
    assert db.storage_status() == {"status": "online"}
    assert await db.write(lambda conn: outbox.append(conn, "scan", {"after": True})) > 0
    for _ in range(50):
        rows = await db.read(lambda conn: conn.execute("SELECT data FROM outbox WHERE kind = 'device'").fetchall())
        if len(rows) == 2:
            break
        await asyncio.sleep(0.05)
    error, online = (json.loads(row[0]) for row in rows)
    assert (error["device"], error["kind"], error["status"]) == ("state-db", "storage", "error")
    assert online["status"] == "online"
    assert "3 writes could not be recorded (scan events 2, other writes 1)" in online["detail"]
    await db.close()


def test_full_errors_are_told_from_others(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as full:
        conn.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    assert is_full_error(full.value)
    with pytest.raises(sqlite3.OperationalError) as other:
        conn.execute("SELECT * FROM missing")
    assert not is_full_error(other.value)
    assert is_full_error(OSError(28, "No space left on device"))
