"""The head-office PostgreSQL schema (contract.md §5), created and migrated by the tool itself.

Migrations are numbered and applied in order under an advisory lock, so several workers starting at
once migrate once. The pinned tables are `events`, `stores` and `seq_gaps`; the rest is ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

MIGRATION_LOCK = 0x5107E6A7  # pg_advisory_lock key of the migrations

MIGRATIONS: list[str] = [
    # 1: events exactly once, seq bookkeeping per store, what could not be read, commands and their results
    """
    CREATE TABLE events (
        id text PRIMARY KEY,
        store text NOT NULL,
        seq bigint NOT NULL,
        kind text NOT NULL,
        at timestamptz NOT NULL,
        data jsonb NOT NULL,
        received_at timestamptz NOT NULL
    );
    CREATE INDEX events_store_seq ON events (store, seq);
    CREATE TABLE stores (
        store text PRIMARY KEY,
        last_seq bigint NOT NULL,
        last_event_at timestamptz,
        events bigint NOT NULL,
        duplicates bigint NOT NULL DEFAULT 0,
        first_seen_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE seq_gaps (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        store text NOT NULL,
        first_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        found_at timestamptz NOT NULL,
        closed_at timestamptz
    );
    CREATE INDEX seq_gaps_open ON seq_gaps (store) WHERE closed_at IS NULL;
    CREATE TABLE rejected_messages (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        received_at timestamptz NOT NULL,
        topic text NOT NULL,
        payload text NOT NULL,
        errors text NOT NULL
    );
    CREATE TABLE commands (
        id text PRIMARY KEY,
        type text NOT NULL,
        store text,
        target_group text,
        topic text NOT NULL,
        sent_at timestamptz NOT NULL,
        data jsonb NOT NULL
    );
    CREATE TABLE command_results (
        command_id text NOT NULL,
        store text NOT NULL,
        status text NOT NULL,
        applied integer,
        skipped integer,
        errors jsonb NOT NULL,
        event_id text NOT NULL,
        at timestamptz NOT NULL,
        answers integer NOT NULL DEFAULT 1,
        PRIMARY KEY (command_id, store)
    );
    CREATE VIEW command_answers AS
        SELECT c.id AS command_id, c.type, c.store AS sent_to_store, c.target_group, c.sent_at,
               r.store, r.status, r.applied, r.skipped, r.errors, r.at AS answered_at
        FROM commands c LEFT JOIN command_results r ON r.command_id = c.id;
    """,
]


async def migrate(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
    """Bring the schema to the latest version; return the version it is at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ingest_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM ingest_schema")
        row = await cursor.fetchone()
        current = int(str(row[0])) if row else 0
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version > current:
                await conn.execute(sql)  # our own constant SQL, several statements in one go
                await conn.execute("INSERT INTO ingest_schema VALUES (%s, now())", (version,))
    return len(MIGRATIONS)
