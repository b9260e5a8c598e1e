"""One batch of broker messages in one PostgreSQL transaction (psycopg 3, COPY into a temporary table).

In the transaction: the batch's stores are locked in store order (workers sharing a queue serialise per
store and cannot deadlock), new events are inserted with `ON CONFLICT (id) DO NOTHING` (an id already
stored is a duplicate: counted, no second row), each store's last seq and gaps are brought up to date,
command results are matched to the commands head office recorded, and unreadable messages are kept.
Only after the commit may the broker messages be acknowledged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.ingest.events import BadMessage, IncomingEvent
from gateway.ingest.gaps import Gap, StoreSeqs
from gateway.timeutil import utc_now

if TYPE_CHECKING:
    import psycopg

MAX_KEPT_PAYLOAD = 64 * 1024  # characters of an unreadable message kept in rejected_messages


@dataclass
class BatchResult:
    """What one committed batch did."""

    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    gaps_opened: int = 0
    gaps_closed: int = 0
    results_matched: int = 0
    newest_at: datetime | None = None
    stores: set[str] = field(default_factory=set)


async def prepare(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
    """Per connection: the temporary table a batch is copied into."""
    await conn.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS incoming "
        "(id text, store text, seq bigint, kind text, at timestamptz, data jsonb) ON COMMIT DELETE ROWS"
    )
    await conn.commit()


async def write_batch(
    conn: psycopg.AsyncConnection[tuple[Any, ...]],
    events: list[IncomingEvent],
    bad: list[BadMessage],
) -> BatchResult:
    """Write one batch in one transaction (committed when this returns)."""
    now = utc_now()
    result = BatchResult(rejected=len(bad))
    unique: dict[str, IncomingEvent] = {}
    duplicates: dict[str, int] = {}  # per store: the same id twice in this batch, or already stored
    for event in events:
        if event.id in unique:
            duplicates[event.store] = duplicates.get(event.store, 0) + 1
        else:
            unique[event.id] = event
    async with conn.transaction(), conn.cursor() as cur:
        if bad:
            await cur.executemany(
                "INSERT INTO rejected_messages (received_at, topic, payload, errors) VALUES (%s, %s, %s, %s)",
                [
                    (
                        now,
                        m.topic,
                        m.payload.decode("utf-8", "replace")[:MAX_KEPT_PAYLOAD].replace("\x00", ""),
                        "; ".join(m.errors),
                    )
                    for m in bad
                ],
            )
        if not unique:
            return result
        store_ids = sorted({e.store for e in unique.values()})
        result.stores = set(store_ids)
        await cur.execute(
            "INSERT INTO stores (store, last_seq, events) SELECT s, 0, 0 FROM unnest(%s::text[]) AS s ORDER BY s "
            "ON CONFLICT (store) DO NOTHING",
            (store_ids,),
        )
        await cur.execute(
            "SELECT store, last_seq FROM stores WHERE store = ANY(%s) ORDER BY store FOR UPDATE", (store_ids,)
        )
        seqs = {store: StoreSeqs(store, int(last)) for store, last in await cur.fetchall()}
        async with cur.copy("COPY incoming (id, store, seq, kind, at, data) FROM STDIN") as copy:
            for e in unique.values():
                await copy.write_row((e.id, e.store, e.seq, e.kind, e.at, e.data))
        await cur.execute(
            "INSERT INTO events (id, store, seq, kind, at, data, received_at) "
            "SELECT id, store, seq, kind, at, data, %s FROM incoming ORDER BY id "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            (now,),
        )
        new_ids = {row[0] for row in await cur.fetchall()}
        new = [unique[i] for i in new_ids]
        for event_id, event in unique.items():
            if event_id not in new_ids:
                duplicates[event.store] = duplicates.get(event.store, 0) + 1
        result.written = len(new)
        result.duplicates = sum(duplicates.values())
        await _account(cur, seqs, new, duplicates, now, result)
    return result


async def _account(
    cur: psycopg.AsyncCursor[tuple[Any, ...]],
    seqs: dict[str, StoreSeqs],
    new: list[IncomingEvent],
    duplicates: dict[str, int],
    now: datetime,
    result: BatchResult,
) -> None:
    """Last seq, gaps, counts per store, and command results, for the events just inserted."""
    by_store: dict[str, list[IncomingEvent]] = {}
    for event in new:
        by_store.setdefault(event.store, []).append(event)
    dup_by_store = dict(duplicates)
    await cur.execute(
        "SELECT id, store, first_seq, last_seq, found_at FROM seq_gaps WHERE store = ANY(%s) AND closed_at IS NULL",
        (list(by_store),),
    )
    for row, store, first, last, found_at in await cur.fetchall():
        seqs[store].gaps.append(Gap(int(first), int(last), found_at, row=int(row)))
    store_rows: list[tuple[int | None, datetime | None, int, int, str]] = []
    for store, events in by_store.items():
        state = seqs[store]
        state.place([e.seq for e in events], now)
        result.gaps_opened += state.opened
        result.gaps_closed += state.closed
        newest = max(e.at for e in events)
        result.newest_at = newest if result.newest_at is None else max(result.newest_at, newest)
        store_rows.append((state.last_seq, newest, len(events), dup_by_store.pop(store, 0), store))
    store_rows += [(None, None, 0, count, store) for store, count in dup_by_store.items()]
    await cur.executemany(
        "UPDATE stores SET last_seq = coalesce(%s, last_seq), "
        "last_event_at = greatest(last_event_at, %s), events = events + %s, duplicates = duplicates + %s "
        "WHERE store = %s",
        store_rows,
    )
    changed = [gap for state in seqs.values() for gap in state.gaps if gap.changed]
    updates = [(g.first, g.last, g.closed_at, g.row) for g in changed if g.row is not None]
    inserts = [
        (state.store, g.first, g.last, g.found_at, g.closed_at)
        for state in seqs.values()
        for g in state.gaps
        if g.changed and g.row is None
    ]
    if updates:
        await cur.executemany(
            "UPDATE seq_gaps SET first_seq = %s, last_seq = %s, closed_at = %s WHERE id = %s", updates
        )
    if inserts:
        await cur.executemany(
            "INSERT INTO seq_gaps (store, first_seq, last_seq, found_at, closed_at) VALUES (%s, %s, %s, %s, %s)",
            inserts,
        )
    answers = [_command_result(e) for e in new if e.kind == "command_result"]
    rows = [a for a in answers if a is not None]
    if rows:
        await cur.executemany(
            "INSERT INTO command_results (command_id, store, status, applied, skipped, errors, event_id, at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (command_id, store) DO UPDATE SET answers = command_results.answers + 1",
            rows,
        )
        result.results_matched += len(rows)


def _command_result(event: IncomingEvent) -> tuple[Any, ...] | None:
    data = event.payload.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("command_id"), str):
        return None
    status = data.get("status")
    applied, skipped = data.get("applied"), data.get("skipped")
    return (
        data["command_id"],
        event.store,
        status if isinstance(status, str) else "unknown",
        applied if isinstance(applied, int) and not isinstance(applied, bool) and abs(applied) < 2**31 else None,
        skipped if isinstance(skipped, int) and not isinstance(skipped, bool) and abs(skipped) < 2**31 else None,
        json.dumps(data.get("errors") if isinstance(data.get("errors"), list) else []),
        event.id,
        event.at,
    )
