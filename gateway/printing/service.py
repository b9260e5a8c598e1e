"""The print queue: jobs in SQLite, one worker per printer, printed once and in order.

A `print` command, or a `PrintRequest` from another service (pick lists, pickup slips, return
receipts), creates a job in the asker's transaction: the document is validated, stored as data and
`queued` (event). Each printer's worker takes its jobs oldest first and renders them to ESC/POS
bytes itself, off the writer (rendering loads python-escpos and takes milliseconds; the writer's
jobs only write rows). It asks the printer's status first: a printer offline, out of paper or with
its cover open holds its jobs (one `device` event on the change, one on recovery) and the worker
polls until it is ready. A job is marked `printing` in one transaction before its bytes are written,
and `printed` in the next once they were: a power cut between the two leaves it `printing`, and at
the next start it is failed as `interrupted` rather than printed a second time (never twice). A job
older than the printer's `job_ttl_s` fails as `expired`. One printer's trouble never blocks another.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError

from drivers.printers import JobInterrupted, Printer, PrinterStatus, PrinterUnavailable, open_printer
from gateway import devices, outbox
from gateway.bus import Transaction
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome, field_errors
from gateway.config import PrinterConfig
from gateway.domain import DocumentRefused, PrintRequest
from gateway.service import Service
from gateway.supervisor import Device
from gateway.timeutil import epoch_ms, utc_now

log = logging.getLogger(__name__)

_POLL_S = 2.0


class PrintCommand(CommandModel):
    """`print` data: {printer, document, ...the document's own fields}."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    printer: Annotated[str, Field(min_length=1, max_length=64)]
    document: Annotated[str, Field(min_length=1, max_length=32)]


@dataclass(frozen=True)
class JobQueued:
    """Signal: a printer has a new job."""

    printer: str


def check_document(printers: Mapping[str, PrinterConfig], request: PrintRequest) -> None:
    """Refuse a request for an unknown printer or document, or with bad fields (every bad field named)."""
    from gateway.printing.documents import DOCUMENT_MODELS  # pydantic models only; python-escpos loads to render

    if request.printer not in printers:
        known = ", ".join(sorted(printers)) or "none configured"
        raise DocumentRefused([("data.printer", f'no printer "{request.printer}" ({known})')])
    model = DOCUMENT_MODELS.get(request.document)
    if model is None:
        expected = ", ".join(DOCUMENT_MODELS)
        raise DocumentRefused([("data.document", f'unknown document "{request.document}"; expected {expected}')])
    try:
        model.model_validate(request.data)
    except ValidationError as exc:
        raise DocumentRefused([(e.field, e.message) for e in field_errors(exc, "data")]) from None


def queue_job(conn: sqlite3.Connection, request: PrintRequest) -> str:
    """Queue a checked document in the caller's transaction (its bytes are rendered when it prints)."""
    job = uuid.uuid4().hex[:16]
    now = epoch_ms(utc_now())
    conn.execute(
        "INSERT INTO print_jobs (id, printer, document, bytes, data, ref, created_ms, updated_ms) "
        "VALUES (?, ?, ?, x'', ?, ?, ?, ?)",
        (job, request.printer, request.document, json.dumps(request.data), request.ref, now, now),
    )
    data = {"job": job, "printer": request.printer, "document": request.document, "status": "queued"}
    outbox.append(conn, "print", data)
    return job


def _finish(conn: sqlite3.Connection, job: str, state: str, error: str | None = None) -> None:
    row = conn.execute("SELECT printer, document FROM print_jobs WHERE id = ?", (job,)).fetchone()
    conn.execute(
        "UPDATE print_jobs SET state = ?, error = ?, updated_ms = ? WHERE id = ?",
        (state, error, epoch_ms(utc_now()), job),
    )
    data = {"job": job, "printer": row[0], "document": row[1], "status": state}
    if error:
        data["error"] = error
    outbox.append(conn, "print", data)


@dataclass(frozen=True)
class QueuedJob:
    """The next job of a printer: its document data, or the bytes an earlier version rendered when it queued it."""

    id: str
    document: str
    data: dict[str, Any] | None
    rendered: bytes
    created_ms: int


def next_job(conn: sqlite3.Connection, printer: str) -> QueuedJob | None:
    row = conn.execute(
        "SELECT id, document, data, bytes, created_ms FROM print_jobs "
        "WHERE printer = ? AND state = 'queued' ORDER BY seq LIMIT 1",
        (printer,),
    ).fetchone()
    if row is None:
        return None
    return QueuedJob(str(row[0]), str(row[1]), None if row[2] is None else json.loads(row[2]), bytes(row[3]), row[4])


def start_printing(conn: sqlite3.Connection, job: str) -> None:
    conn.execute("UPDATE print_jobs SET state = 'printing', updated_ms = ? WHERE id = ?", (epoch_ms(utc_now()), job))


def requeue(conn: sqlite3.Connection, job: str) -> None:
    conn.execute("UPDATE print_jobs SET state = 'queued', updated_ms = ? WHERE id = ?", (epoch_ms(utc_now()), job))


def interrupted(conn: sqlite3.Connection) -> int:
    """Jobs caught mid-write by a crash or power cut: failed, never printed twice."""
    jobs = [str(r[0]) for r in conn.execute("SELECT id FROM print_jobs WHERE state = 'printing'")]
    for job in jobs:
        _finish(conn, job, "failed", "interrupted while printing (power cut or crash); it may have printed in part")
    return len(jobs)


def status_section(conn: sqlite3.Connection) -> dict[str, Any] | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'print_jobs'").fetchone() is None:
        return None
    by_state = {str(r[0]): int(r[1]) for r in conn.execute("SELECT state, count(*) FROM print_jobs GROUP BY state")}
    return {"by_state": by_state}


class PrintingService(Service):
    """The `print` command and one worker per configured printer."""

    name = "printing"

    def setup(self) -> None:
        config = self.gateway.config
        self.printers = {p.id: p for p in config.printers}
        from gateway.printing.documents import StoreHeader

        self.store = StoreHeader(config.store.name, tuple(config.store.address), config.store.footer)
        self._wake: dict[str, asyncio.Event] = {p: asyncio.Event() for p in self.printers}
        self.gateway.dispatcher.register("print", PrintCommand, self.handle_print)
        self.gateway.bus.serve(PrintRequest, self.queue)
        self.gateway.bus.subscribe(JobQueued, self._on_queued)
        self.gateway.add_task("printing:recover", self.recover)
        for printer in config.printers:
            self.gateway.add_task(
                f"printer:{printer.id}",
                functools.partial(self.run_printer, printer),
                Device(printer.id, "printer", printer.url),
            )

    def handle_print(self, context: CommandContext, data: PrintCommand) -> Outcome:
        """The `print` command: a print request from head office."""
        request = PrintRequest(data.printer, data.document, dict(data.model_extra or {}), ref=context.command_id)
        try:
            job = self.queue(context, request)
        except DocumentRefused as exc:
            raise CommandRejected([FieldError(where, message) for where, message in exc.errors]) from None
        return Outcome(applied=1, extra={"job": job})

    def queue(self, tx: Transaction, request: PrintRequest) -> str:
        """Serve a `PrintRequest` in the asker's transaction: check it, queue it, wake the printer on commit."""
        check_document(self.printers, request)
        job = queue_job(tx.conn, request)
        tx.after_commit(JobQueued(request.printer))
        return job

    async def _on_queued(self, signal: JobQueued) -> None:
        event = self._wake.get(signal.printer)
        if event is not None:
            event.set()

    async def recover(self) -> None:
        count = await self.gateway.db.write(interrupted)
        if count:
            log.warning("printing: %d jobs were interrupted by the last stop and are failed, not reprinted", count)

    async def _report(self, printer: PrinterConfig, status: PrinterStatus | None, error: str | None = None) -> None:
        state: devices.DeviceStatus
        detail: str | None
        if status is None or not status.reachable:
            state, detail = "offline", error or "unreachable"
        elif status.ready:
            state, detail = "online", status.detail  # paper_low still prints
        else:
            state, detail = "error", status.detail  # it answers, but cannot print: paper_out, cover_open
        await self.gateway.db.write(
            functools.partial(
                devices.report, device=printer.id, kind="printer", status=state, detail=detail, address=printer.url
            )
        )

    async def run_printer(self, config: PrinterConfig) -> None:
        device: Printer = open_printer(config.url, profile=config.profile, timeout=config.timeout_s)
        db = self.gateway.db
        wake = self._wake[config.id]
        try:
            while True:
                job = await db.read(functools.partial(next_job, printer=config.id))
                if job is None:
                    wake.clear()
                    await self._wait(wake, 30.0)
                    continue
                job_id = job.id
                if epoch_ms(utc_now()) - job.created_ms > config.job_ttl_s * 1000:
                    await db.write(functools.partial(_finish, job=job_id, state="failed", error="expired"))
                    continue
                try:
                    payload = job.rendered or await asyncio.to_thread(self._render, job, config)
                except ValueError as exc:  # checked when queued: only a document model changed by an upgrade
                    await db.write(functools.partial(_finish, job=job_id, state="failed", error=str(exc)[:200]))
                    continue
                status = await asyncio.to_thread(device.status)
                await self._report(config, status)
                if not status.ready:
                    await self._wait(wake, _POLL_S)
                    continue
                await db.write(functools.partial(start_printing, job=job_id))
                try:
                    log.debug("printer %s: printing job %s (%d bytes)", config.id, job_id, len(payload))
                    await asyncio.to_thread(device.send, payload)
                except JobInterrupted as exc:
                    # the connection broke mid-job: it may have printed in part, never resend it
                    await db.write(functools.partial(_finish, job=job_id, state="failed", error=str(exc)[:200]))
                    await self._report(config, None, "unreachable")
                    continue
                except PrinterUnavailable:
                    # nothing was written: the job waits for the printer
                    await db.write(functools.partial(requeue, job=job_id))
                    await self._report(config, None, "unreachable")
                    await self._wait(wake, _POLL_S)
                    continue
                await db.write(functools.partial(_finish, job=job_id, state="printed"))
        finally:
            await asyncio.to_thread(device.close)

    def _render(self, job: QueuedJob, printer: PrinterConfig) -> bytes:
        from gateway.printing.documents import render_document

        return render_document(job.document, job.data or {}, self.store, printer.width_chars)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
