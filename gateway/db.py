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

A full disk: a commit that fails for want of space (SQLITE_FULL) puts the writer in refusal:
every job fails at once with `StorageFull` (counted, by what the caller says it was) without
touching the disk, the condition is logged once and announced to `on_storage` listeners, and once
a second the database looks for space (room for its reserve file plus a margin, then a test
commit). When one commits, writing resumes, the listeners hear it, and the storage `device`
events (error since then, online now, with the count of what was lost) are written. See
gateway/storage.py for the reserve that lets a start on a full disk open the database.

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

from gateway.storage import (
    MARGIN_BYTES,
    RESERVE_BYTES,
    FullDisk,
    StorageFull,
    free_bytes,
    is_full_error,
    make_reserve,
    release_reserve,
)
from gateway.timeutil import rfc3339, utc_now

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteJob = Callable[[sqlite3.Connection], Any]

_MAX_BATCH = 512
MAX_PENDING = 4096
SLOW_JOB_S = 0.010
SPACE_CHECK_S = 1.0
"""How often a database on a full disk looks for space again."""


class SchemaTooNew(RuntimeError):
    """The database was written by a newer gateway than this one."""


class StateDamaged(RuntimeError):
    """The state database file is empty, not a database, or fails SQLite's quick check."""


WAY_OUT = (
    'restore the last backup as docs/operations.md says ("Backup of the state database"), or move the file '
    "away to start afresh as a new store (its prices, stock and event seq are then lost)"
)


def check_state_file(path: Path) -> None:
    """Refuse a state database that exists but is a directory or empty (a new one is made only where
    no file exists: an empty file is a lost database, not a new store)."""
    if path.is_dir():
        raise StateDamaged(f"state database {path} is a directory; point [state] path at a file")
    if path.exists() and path.stat().st_size == 0:
        wal = path.with_name(path.name + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:  # a database still wholly in its WAL is not empty
            raise StateDamaged(f"state database {path} is empty (0 bytes); {WAY_OUT}")


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's `PRAGMA quick_check` (pages, records, indexes' order; seconds for a big file at most)."""
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed": too broken to list
        if is_full_error(exc):
            raise  # a full disk, not a damaged file
        raise StateDamaged(f"state database {path} is damaged ({exc}); {WAY_OUT}") from None
    if rows != ["ok"]:
        raise StateDamaged(f"state database {path} is damaged (quick_check: {rows[0]}); {WAY_OUT}")


def _create(path: Path) -> None:
    """A new, empty database put in place whole: `path` is never seen with 0 bytes (by `status`, or by
    the next start after a power cut in the first instant), which would mean a lost database."""
    building = path.with_name(path.name + ".new")
    for leftover in (building, building.with_name(building.name + "-wal"), building.with_name(building.name + "-shm")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(building, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # writes the header page
    finally:
        conn.close()
    building.replace(path)


def open_state(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A checked connection to the state database, created only where no file exists."""
    check_state_file(path)
    fresh = not path.exists()
    if fresh and readonly:
        raise FileNotFoundError(f"no state database at {path} (has the gateway ever run with this config?)")
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create(path)
    try:
        return _connect_checked(path, readonly=readonly, check=not fresh)
    except sqlite3.OperationalError as exc:
        if not (readonly and is_full_error(exc) and _checkpointed(path)):
            raise
    # Reading a WAL database makes SQLite build its shared-memory index (<path>-shm), which a full disk
    # refuses. A gateway that stopped cleanly left everything in the file itself (no WAL frames), so
    # `status` reads the file as it is, without the index.
    return _connect_checked(path, readonly=True, check=True, immutable=True)


def _connect_checked(path: Path, *, readonly: bool, check: bool, immutable: bool = False) -> sqlite3.Connection:
    try:
        conn = connect(path, readonly=readonly, immutable=immutable)
    except sqlite3.DatabaseError as exc:  # "file is not a database": its header is gone
        if is_full_error(exc):
            raise  # a full disk, not a damaged file: the caller makes room
        raise StateDamaged(f"state database {path} cannot be read ({exc}); {WAY_OUT}") from None
    if check:
        try:
            quick_check(conn, path)
        except (StateDamaged, sqlite3.Error):
            conn.close()
            raise
    return conn


def _checkpointed(path: Path) -> bool:
    """No WAL frames wait beside the database: the file alone holds all of it."""
    wal = path.with_name(path.name + "-wal")
    try:
        return wal.stat().st_size == 0
    except FileNotFoundError:
        return True


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration shipped in gateway/migrations/, in order."""
    found = []
    for entry in resources.files("gateway.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def connect(path: Path, *, readonly: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """A connection with the gateway's pragmas; autocommit mode, transactions are explicit.

    `immutable` (read-only only) reads the file without locks or the WAL index: only for a database
    that no process writes and whose WAL is empty.
    """
    if readonly:
        uri = f"file:{path}?mode=ro{'&immutable=1' if immutable else ''}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
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
        try:
            self.conn = open_state(path)  # StateDamaged: refused, never used
            self.schema_version = migrate(self.conn)
            started_full = False
        except (sqlite3.Error, OSError) as exc:
            if not is_full_error(exc):
                raise
            if not release_reserve(path):  # a first start (no reserve yet) on a disk already full
                raise StorageFull(
                    f"cannot open the state database {path}: the disk is full ({free_bytes(path) // 1024} KiB "
                    f"free in {path.parent}); make room there and start again"
                ) from None
            # The disk is full and SQLite cannot even open a WAL database: the reserve makes that room.
            self.conn = open_state(path)
            self.schema_version = migrate(self.conn)
            started_full = True
        if not started_full:
            make_reserve(path)
        self._refusing = started_full
        """The writer thread's view: refuse every job but the space probe (a full disk)."""
        self.full: FullDisk | None = None
        """The current stretch of full disk, on the event loop's side (None: writing)."""
        self.on_storage: list[Callable[[bool], None]] = []
        """Called on the event loop when writing stops (False) or resumes (True) for want of space."""
        self._writable: asyncio.Event | None = None
        self._space_task: asyncio.Task[None] | None = None
        self._reports: set[asyncio.Task[Any]] = set()
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
        self._writable = asyncio.Event()
        if self._refusing:
            self._enter_full()
        else:
            self._writable.set()
        self._reader = connect(self.path, readonly=True)
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="db-reader")
        self._writer = threading.Thread(target=self._write_loop, name="db-writer", daemon=True)
        self._writer.start()

    @property
    def writer_alive(self) -> bool:
        """True while the writer thread runs (for the HTTP health check)."""
        return self._writer is not None and self._writer.is_alive()

    async def write(self, job: Callable[[sqlite3.Connection], T], *, what: str | None = "other writes") -> T:
        """Run `job` inside the next group commit; return its result once it is committed.

        `job` follows the writer's contract (module docstring): database work only, safe to run twice.
        On a full disk it raises `StorageFull` at once; `what` names it in the count of what was lost
        (None: not counted, the caller tries again once space returns).
        """
        if self._loop is None or self._writer is None or self._places is None:
            raise RuntimeError("StateDB.start() was not called")
        if self.full is not None:
            if what is not None:
                self.full.count(what)
            raise StorageFull("the disk under the state database is full")
        places = self._places
        await places.acquire()
        self.pending += 1
        future: asyncio.Future[T] = self._loop.create_future()
        future.add_done_callback(self._release)
        self._jobs.put((job, future))
        try:
            return await future
        except StorageFull:
            if self.full is not None and what is not None:
                self.full.count(what)
            raise

    async def writable(self) -> None:
        """Return once the state database can be written (at once, unless the disk is full)."""
        if self._writable is None:
            raise RuntimeError("StateDB.start() was not called")
        await self._writable.wait()

    def storage_status(self) -> dict[str, str]:
        """The storage as a device: `online`, or `error` with what is wrong (the retained gateway state)."""
        if self.full is None:
            return {"status": "online"}
        return {"status": "error", "detail": f"disk full since {rfc3339(self.full.since)}; writes suspended"}

    def _enter_full(self) -> None:
        """On the loop: the writer found the disk full. Say it once, tell the listeners, look for space."""
        if self.full is not None or self._loop is None or self._writable is None:
            return
        self.full = FullDisk()
        self._writable.clear()
        log.warning(
            "state database: the disk under the state database is full (%d KiB free in %s): price checks answer "
            "from the cache, commands wait at the broker, what cannot be written is counted; writing resumes by "
            "itself when space returns",
            free_bytes(self.path) // 1024,
            self.path.parent,
        )
        for listener in self.on_storage:
            listener(False)
        self._space_task = self._loop.create_task(self._look_for_space(), name="db-space")

    async def _look_for_space(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SPACE_CHECK_S)
            if free_bytes(self.path) < RESERVE_BYTES + MARGIN_BYTES:
                continue
            if not await asyncio.to_thread(make_reserve, self.path) or free_bytes(self.path) < MARGIN_BYTES:
                continue
            probe: asyncio.Future[None] = loop.create_future()
            self._jobs.put((_probe, probe))
            try:
                await probe
            except sqlite3.Error:
                continue
            return

    def _leave_full(self) -> None:
        """On the loop: a commit went through again. Say so, tell the listeners, report what was lost."""
        episode, self.full = self.full, None
        if episode is None or self._loop is None or self._writable is None:
            return
        self._writable.set()
        log.info(
            "state database: writing again, the disk has room (%d KiB free); %s while it was full",
            free_bytes(self.path) // 1024,
            episode.summary(),
        )
        for listener in self.on_storage:
            listener(True)
        task = self._loop.create_task(self._report(episode), name="db-space-report")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report(self, episode: FullDisk) -> None:
        try:
            await self.write(episode.report)
        except sqlite3.Error as exc:
            log.warning("state database: the report of the full disk was not written: %s", exc)

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
        if self._space_task is not None:
            self._space_task.cancel()
            self._space_task = None
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
        except sqlite3.Error as exc:
            # committed data is safe in the WAL either way; the next start checkpoints it
            log.warning("state database: checkpoint at close failed: %s", exc, exc_info=not is_full_error(exc))
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
        assert self._loop is not None
        if self._refusing:  # a full disk: only the space probe may try
            refused = [item for item in batch if item[0] is not _probe]
            if refused:
                full = StorageFull("the disk under the state database is full")
                self._loop.call_soon_threadsafe(self._resolve, refused, [(False, full)] * len(refused))
            batch = [item for item in batch if item[0] is _probe]
        if not batch:
            return
        outcomes = self._attempt(batch, isolate=False)
        if outcomes is None:
            # a job failed: the batch was rolled back whole; run it again, each job in a savepoint
            outcomes = self._attempt(batch, isolate=True)
        if outcomes is None:  # cannot happen with isolate=True, but never leave a future unresolved
            outcomes = [(False, RuntimeError("write batch failed"))] * len(batch)
        if any(not ok and is_full_error(value) for ok, value in outcomes):
            full = StorageFull("the disk under the state database is full")
            outcomes = [(False, full) if not ok and is_full_error(value) else (ok, value) for ok, value in outcomes]
            if not self._refusing:
                self._refusing = True
                self._loop.call_soon_threadsafe(self._enter_full)
        elif self._refusing:  # the probe committed: there is room again
            self._refusing = False
            self._loop.call_soon_threadsafe(self._leave_full)
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
                        if conn.in_transaction:  # (SQLite itself rolls back on some errors: a full disk)
                            conn.execute("ROLLBACK")
                        return None
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, run(job, conn)))
                    conn.execute("RELEASE job")
                except Exception as exc:  # a failing job rolls back alone
                    if not conn.in_transaction:  # SQLite rolled the whole transaction back (a full disk)
                        return [(False, exc)] * len(batch)
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if not is_full_error(exc):  # a full disk is said once, by _enter_full
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


def _probe(conn: sqlite3.Connection) -> None:
    """The test commit of a database on a full disk (the only job the writer lets through then)."""
    set_meta(conn, "storage.checked_at", rfc3339(utc_now()))


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
            # at DEBUG: a diagnostic for whoever wrote the job; a loaded box makes any job slow now and then
            log.debug("state database: slow write job %s held the writer %.1f ms", _name(job), took * 1000)


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
