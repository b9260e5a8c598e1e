"""The state database: one SQLite file (WAL), numbered migrations, and a group-committing writer.

All writes go through one writer thread. It takes every write job waiting in its queue, runs them
in one transaction and commits once: a burst of a thousand events costs one fsync instead of a
thousand (the SD card thanks us). A job counts as done only after that COMMIT, so "committed before
it counts as created" holds for every event.

The writer's contract - what a job handed to `StateDB.write` must be:
- Pure database work on the connection it is given: reads, checks, writes of rows it was handed
  ready. No rendering, no network, no file or device I/O, no sleeping: every job in the batch (and
  every task awaiting one) waits for the slowest. With the `gateway.db` logger at DEBUG, a job
  slower than `SLOW_JOB_S` is logged by name.
- Safe to run twice. The batch runs without savepoints; when one job raises, the whole transaction
  is rolled back and the batch runs again with each job in a SAVEPOINT, so the failing job rolls
  back alone and the others run a second time. Only the last run's effects are committed, so a job
  must not keep state outside the database between runs (a job that records what it did must
  overwrite, not append).
- Cancellable until it starts. A job whose awaiting task was cancelled before the writer took it
  is skipped; once it runs it commits with its batch, whatever the awaiting task does.
- Bounded. At most `max_pending` jobs wait for the writer; `write()` waits for a free place
  beyond that, so a flood of readings slows its producer instead of growing memory.

`synchronous=FULL`: in WAL mode NORMAL may lose the last transactions on a power cut, and the
contract says a power cut loses no event. Group commit keeps the cost of FULL to one WAL fsync
per batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteJob = Callable[[sqlite3.Connection], Any]

_MAX_BATCH = 512
MAX_PENDING = 4096
SLOW_JOB_S = 0.010


class SchemaTooNew(RuntimeError):
    """The database was written by a newer gateway than this one."""


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration shipped in gateway/migrations/, in order."""
    found = []
    for entry in resources.files("gateway.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the gateway's pragmas; autocommit mode, transactions are explicit."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this database has not seen; return the schema version."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    known = migrations()
    newest = known[-1][0] if known else 0
    if current > newest:
        raise SchemaTooNew(
            f"the state database has schema {current} but this gateway knows up to {newest}; "
            "install the newer gateway or restore a backup"
        )
    for number, name, sql in known:
        if number <= current:
            continue
        log.info("state database: applying migration %s", name)
        conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")
        current = number
    return current


class StateDB:
    """The gateway's SQLite state: a writer thread with group commit and a reader thread.

    Synchronous callers (the CLI, unit tests) use `transaction()` before `start()` or after `close()`;
    the running daemon uses `await write(job)` and `await read(job)`.
    """

    def __init__(self, path: Path, *, max_pending: int = MAX_PENDING) -> None:
        self.path = path
        self.max_pending = max_pending
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect(path)
        self.schema_version = migrate(self.conn)
        self._reader: sqlite3.Connection | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._jobs: queue.SimpleQueue[tuple[WriteJob, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._places: asyncio.Semaphore | None = None
        self.pending = 0
        """Write jobs handed to the writer whose awaiting task has not had its answer yet."""
        self.on_commit: list[Callable[[], None]] = []
        self.commits = 0

    # -- synchronous use -------------------------------------------------------------------

    def transaction(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job` in one transaction on the calling thread (only while the writer is stopped)."""
        if self._writer is not None:
            raise RuntimeError("the writer thread owns the connection; use `await write()`")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = job(self.conn)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    # -- asynchronous use ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and reader threads, bound to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._places = asyncio.Semaphore(self.max_pending)
        self._reader = connect(self.path, readonly=True)
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="db-reader")
        self._writer = threading.Thread(target=self._write_loop, name="db-writer", daemon=True)
        self._writer.start()

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job` inside the next group commit; return its result once it is committed.

        `job` follows the writer's contract (module docstring): database work only, safe to run twice.
        """
        if self._loop is None or self._writer is None or self._places is None:
            raise RuntimeError("StateDB.start() was not called")
        places = self._places
        await places.acquire()
        self.pending += 1
        future: asyncio.Future[T] = self._loop.create_future()
        future.add_done_callback(self._release)
        self._jobs.put((job, future))
        return await future

    def _release(self, _: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if self._places is not None:
            self._places.release()

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `job` on the reader connection (it sees committed data only)."""
        if self._reader is None or self._read_pool is None or self._loop is None:
            raise RuntimeError("StateDB.start() was not called")
        reader = self._reader
        return await self._loop.run_in_executor(self._read_pool, job, reader)

    async def close(self) -> None:
        """Finish every queued write, then stop the threads and close the connections."""
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
            self._read_pool = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.close_sync()

    def close_sync(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.warning("state database: checkpoint at close failed", exc_info=True)
        self.conn.close()

    # -- the writer thread -----------------------------------------------------------------

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[WriteJob, asyncio.Future[Any]]]) -> None:
        # A job whose awaiting task was cancelled before it ran is skipped. (Reading a future's state from
        # this thread is a plain attribute read; a cancel that lands just after it finds a committed job.)
        batch = [item for item in batch if not item[1].cancelled()]
        if not batch:
            return
        outcomes = self._attempt(batch, isolate=False)
        if outcomes is None:
            # a job failed: the batch was rolled back whole; run it again, each job in a savepoint
            outcomes = self._attempt(batch, isolate=True)
        if outcomes is None:  # cannot happen with isolate=True, but never leave a future unresolved
            outcomes = [(False, RuntimeError("write batch failed"))] * len(batch)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._resolve, batch, outcomes)

    def _attempt(
        self, batch: list[tuple[WriteJob, asyncio.Future[Any]]], *, isolate: bool
    ) -> list[tuple[bool, Any]] | None:
        """One transaction for the batch. Without `isolate` (the fast path, no savepoints), a failing
        job aborts the attempt (None); with it, a failing job rolls back alone."""
        conn = self.conn
        outcomes: list[tuple[bool, Any]] = []
        run = _timed if log.isEnabledFor(logging.DEBUG) else _run
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, _ in batch:
                if not isolate:
                    try:
                        outcomes.append((True, run(job, conn)))
                    except Exception:
                        conn.execute("ROLLBACK")
                        return None
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, run(job, conn)))
                    conn.execute("RELEASE job")
                except Exception as exc:  # a failing job rolls back alone
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            log.error("state database: commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        return outcomes

    def _resolve(self, batch: list[tuple[WriteJob, asyncio.Future[Any]]], outcomes: list[tuple[bool, Any]]) -> None:
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        for callback in self.on_commit:
            callback()


def _run(job: WriteJob, conn: sqlite3.Connection) -> Any:
    return job(conn)


def _timed(job: WriteJob, conn: sqlite3.Connection) -> Any:
    """Run a job and name it if it held the writer longer than the contract allows (debug mode only)."""
    started = time.perf_counter()
    try:
        return job(conn)
    finally:
        took = time.perf_counter() - started
        if took > SLOW_JOB_S:
            log.warning("state database: write job %s held the writer %.1f ms", _name(job), took * 1000)


def _name(job: WriteJob) -> str:
    while isinstance(job, functools.partial):
        job = job.func
    return getattr(job, "__qualname__", repr(job))


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
