"""The state writer's contract (gateway/db.py): retried in isolation, bounded, cancellable until it runs, timed."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.db import SLOW_JOB_S, StateDB


def put(conn: sqlite3.Connection, key: str, value: str = "v") -> str:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
    return key


def keys(db: StateDB) -> list[str]:
    return [r[0] for r in db.conn.execute("SELECT key FROM meta WHERE key LIKE 't.%' ORDER BY key")]


async def test_a_failing_job_rolls_back_alone_and_the_others_run_again(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    runs = {"good": 0}
    blocker = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        blocker.wait(5)

    def good(conn: sqlite3.Connection) -> str:
        runs["good"] += 1
        return put(conn, "t.good")

    def bad(conn: sqlite3.Connection) -> None:
        put(conn, "t.bad")
        raise ValueError("refused")

    await db.start()
    first = asyncio.ensure_future(db.write(hold))  # holds the writer so the next three form one batch
    await asyncio.sleep(0.05)
    results = asyncio.gather(
        db.write(good), db.write(bad), db.write(functools.partial(put, key="t.after")), return_exceptions=True
    )
    await asyncio.sleep(0.05)
    commits_before = db.commits
    blocker.set()
    await first
    done = await results
    assert done[0] == "t.good" and isinstance(done[1], ValueError) and done[2] == "t.after"
    assert keys(db) == ["t.after", "t.good"]  # the bad job's insert rolled back alone
    assert runs["good"] == 2  # run once in the batch that failed, once more in isolation: jobs may run twice
    assert db.commits == commits_before + 2  # the holder's batch, then one commit for the retried batch
    await db.close()


async def test_writes_beyond_the_bound_wait_for_a_place(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db", max_pending=4)
    blocker = threading.Event()
    await db.start()
    holder = asyncio.ensure_future(db.write(lambda conn: blocker.wait(5)))
    await asyncio.sleep(0.05)
    writers = [asyncio.ensure_future(db.write(functools.partial(put, key=f"t.{i:02}"))) for i in range(10)]
    await asyncio.sleep(0.1)
    assert db.pending == 4  # the holder and three more handed to the writer; seven producers wait
    assert sum(w.done() for w in writers) == 0
    blocker.set()
    await asyncio.gather(holder, *writers)
    assert db.pending == 0 and len(keys(db)) == 10
    await db.close()


async def test_a_job_cancelled_before_it_runs_is_skipped(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    blocker = threading.Event()
    await db.start()
    holder = asyncio.ensure_future(db.write(lambda conn: blocker.wait(5)))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(db.write(functools.partial(put, key="t.cancelled")))
    kept = asyncio.ensure_future(db.write(functools.partial(put, key="t.kept")))
    await asyncio.sleep(0.05)
    doomed.cancel()
    blocker.set()
    await asyncio.gather(holder, kept)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert keys(db) == ["t.kept"]
    await db.close()


async def test_a_slow_job_is_named_in_debug_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = StateDB(tmp_path / "s.db")
    await db.start()

    def render_receipt_on_the_writer(conn: sqlite3.Connection) -> None:
        time.sleep(SLOW_JOB_S * 3)

    with caplog.at_level(logging.INFO, logger="gateway.db"):
        await db.write(render_receipt_on_the_writer)
    assert not [r for r in caplog.records if "held the writer" in r.message]  # not timed outside debug mode
    with caplog.at_level(logging.DEBUG, logger="gateway.db"):
        await db.write(functools.partial(render_receipt_on_the_writer))
        await db.write(functools.partial(put, key="t.fast"))
    slow = [r.message for r in caplog.records if "held the writer" in r.message]
    assert len(slow) == 1 and "render_receipt_on_the_writer" in slow[0]
    await db.close()
