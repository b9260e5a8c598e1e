"""`store-gateway hq --broker URL ingest --db DSN`: take a batch, commit it in PostgreSQL, then acknowledge it.

A batch that the database refuses for one bad row is written again message by message, so the bad
one is kept in `rejected_messages` and the rest lands. A lost database connection is reopened with
backoff and the same batch written again (nothing was acknowledged). SIGTERM or SIGINT: the batch in
hand is committed and acknowledged, then the worker exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from gateway.ingest.events import BadMessage, IncomingEvent, read_event
from gateway.ingest.schema import migrate
from gateway.ingest.sources import Delivery, Source, SourceOptions, make_source
from gateway.ingest.writer import BatchResult, prepare, write_batch
from gateway.timeutil import utc_now

log = logging.getLogger("gateway.ingest")


@dataclass
class IngestOptions:
    """The `ingest` subcommand's options (besides the broker's)."""

    db: str
    batch: int = 500
    once: bool = False
    idle_s: float = 2.0  # with --once: stop after this long without a message
    progress_s: float = 10.0
    linger_s: float = 0.05  # how long a batch waits to fill once its first message is in


@dataclass
class Totals:
    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0


def check_dsn(dsn: str) -> None:
    if urlsplit(dsn).scheme not in ("postgresql", "postgres"):
        raise ValueError('--db: expected a PostgreSQL URL such as "postgresql://user@host:5432/hq"')


class Ingest:
    """One worker: a source, a database connection, totals and the progress line."""

    def __init__(self, source: Source, options: IngestOptions, err: TextIO) -> None:
        self.source = source
        self.options = options
        self.err = err
        self.totals = Totals()
        self.stop = asyncio.Event()
        self._conn: Any = None
        self._interval_written = 0
        self._interval_lag: float | None = None

    async def connect_db(self, *, first: bool = False) -> None:
        """Connect and migrate. The first time a failure is an error (exit 1); later it is retried with backoff."""
        import psycopg

        delay = 0.5
        while True:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self.options.db, connect_timeout=10)
                await migrate(self._conn)
                await prepare(self._conn)
                return
            except psycopg.OperationalError as exc:
                reason = " ".join(str(exc).split())
                if first:
                    raise ConnectionError(f"PostgreSQL: {reason}") from None
                if delay == 0.5:
                    log.warning("PostgreSQL: %s; retrying", reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay * (0.5 + random.random()))
                if self.stop.is_set():  # the batch in hand is not acknowledged: the broker gives it again
                    raise ConnectionError(f"stopped while PostgreSQL was unreachable ({reason})") from None
                delay = min(delay * 2, 15)

    async def write(self, deliveries: list[Delivery]) -> BatchResult:
        """Commit one batch; on a lost connection reconnect and write it again."""
        import psycopg

        events: list[IncomingEvent] = []
        bad: list[BadMessage] = []
        for delivery in deliveries:
            item = read_event(delivery.topic, delivery.payload)
            if isinstance(item, BadMessage):
                log.warning("refused a message on %s: %s", delivery.topic, "; ".join(item.errors))
                bad.append(item)
            else:
                events.append(item)
        while True:
            try:
                return await write_batch(self._conn, events, bad)
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
                if len(events) + len(bad) <= 1:
                    return await self._refuse_one(events, bad, exc)
                return await self._one_by_one(events, bad)
            except psycopg.OperationalError as exc:
                log.warning("PostgreSQL connection lost (%s); reconnecting, the batch is written again", exc)
                await self._reconnect()

    async def _one_by_one(self, events: list[IncomingEvent], bad: list[BadMessage]) -> BatchResult:
        total = BatchResult()
        parts: list[tuple[list[IncomingEvent], list[BadMessage]]] = [([e], []) for e in events]
        parts += [([], [m]) for m in bad]
        for one_events, one_bad in parts:
            part = await self.write_parts(one_events, one_bad)
            total.written += part.written
            total.duplicates += part.duplicates
            total.rejected += part.rejected
            total.gaps_opened += part.gaps_opened
            total.gaps_closed += part.gaps_closed
            if part.newest_at is not None:
                total.newest_at = part.newest_at if total.newest_at is None else max(total.newest_at, part.newest_at)
        return total

    async def write_parts(self, events: list[IncomingEvent], bad: list[BadMessage]) -> BatchResult:
        import psycopg

        while True:
            try:
                return await write_batch(self._conn, events, bad)
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
                return await self._refuse_one(events, bad, exc)
            except psycopg.OperationalError:
                await self._reconnect()

    async def _refuse_one(self, events: list[IncomingEvent], bad: list[BadMessage], exc: Exception) -> BatchResult:
        """The database refused this message: keep it in rejected_messages with PostgreSQL's reason."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        refused = [BadMessage(e.topic, e.raw, [f"database: {message}"]) for e in events]
        log.warning("PostgreSQL refused an event: %s", message)
        return await write_batch(self._conn, [], refused + bad)

    async def _reconnect(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception as exc:  # the connection is already gone
                log.debug("closing a broken connection: %s", exc)
        self._conn = None
        await self.connect_db()

    async def gaps_open(self) -> int:
        import psycopg

        try:
            cursor = await self._conn.execute("SELECT count(*) FROM seq_gaps WHERE closed_at IS NULL")
            row = await cursor.fetchone()
            await self._conn.commit()
        except psycopg.Error:
            return -1
        return int(row[0]) if row else 0

    async def report(self, elapsed: float) -> None:
        backlog = await self.source.backlog()
        lag = "-" if self._interval_lag is None else f"{self._interval_lag:.1f} s"
        print(
            f"ingest: {self._interval_written / elapsed if elapsed > 0 else 0:.0f} events/s, lag {lag}, "
            f"backlog {'-' if backlog is None else backlog}, gaps open {await self.gaps_open()}, "
            f"written {self.totals.written}, duplicates {self.totals.duplicates}, rejected {self.totals.rejected}",
            file=self.err,
            flush=True,
        )
        self._interval_written = 0
        self._interval_lag = None

    async def run(self) -> int:
        options = self.options
        loop = asyncio.get_running_loop()
        last_report = loop.time()
        idle_since = loop.time()
        while not self.stop.is_set():
            wait = min(options.idle_s if options.once else 1.0, max(options.progress_s, 0.1))
            batch = await self.source.take(options.batch, wait, options.linger_s)
            now = loop.time()
            if batch:
                result = await self.write(batch)
                await self.source.ack(batch)  # only now: the transaction has committed
                self._account(result)
                idle_since = now
            elif options.once and now - idle_since >= options.idle_s and not await self.source.backlog():
                break
            if now - last_report >= options.progress_s:
                await self.report(now - last_report)
                last_report = now
        if self._interval_written:
            await self.report(max(loop.time() - last_report, 1e-3))
        print(
            f"ingest: stopped; {self.totals.written} events written, {self.totals.duplicates} duplicates dropped, "
            f"{self.totals.rejected} messages refused, {await self.gaps_open()} gaps open",
            file=self.err,
            flush=True,
        )
        return 0

    def _account(self, result: BatchResult) -> None:
        self.totals.batches += 1
        self.totals.written += result.written
        self.totals.duplicates += result.duplicates
        self.totals.rejected += result.rejected
        self._interval_written += result.written
        if result.newest_at is not None:
            lag = (utc_now() - result.newest_at).total_seconds()
            self._interval_lag = lag if self._interval_lag is None else max(self._interval_lag, lag)

    async def close(self) -> None:
        await self.source.close()
        if self._conn is not None:
            await self._conn.close()


async def ingest(source_options: SourceOptions, options: IngestOptions, err: TextIO = sys.stderr) -> int:
    """Run one worker until stopped (or, with `once`, until the queue is drained)."""
    check_dsn(options.db)
    source = make_source(source_options)
    worker = Ingest(source, options, err)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop.set)
    started = time.monotonic()
    try:
        await worker.connect_db(first=True)
        await source.open()
        print(f"ingest: consuming {_describe(source)} into PostgreSQL", file=err, flush=True)
        return await worker.run()
    finally:
        await worker.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.debug("ingest ran %.1f s", time.monotonic() - started)


def _describe(source: Source) -> str:
    subscription = getattr(source, "subscription", None) or getattr(source, "queue_name", None)
    return f"{source.name} {subscription or 'stream HQ_EVENTS, consumer hq-ingest'}"
