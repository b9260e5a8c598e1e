"""Commands to a group of stores, followed store by store: applied, rejected (first error), or no answer.

`hq push-prices --group G` and `hq command --group G` publish once on `P/groups/G/commands/<name>` and then
watch every store's `command_result` until each store of the list has answered every command or the
timeout passes. The list comes from a file (`--stores FILE`, one store id a line) or from the stores the
ingest has seen (`--db DSN`). With `--db` the commands sent are also recorded in the `commands` table,
where the ingest matches the results to them. psycopg (extra `store-gateway[hq]`) is loaded only for `--db`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

STORE_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
APPLIED = ("applied", "duplicate")  # a duplicate was applied before, under the same command id


class FleetError(Exception):
    """Bad usage or input (exit 2), naming the option or the line."""


def read_store_list(path: Path) -> list[str]:
    """Store ids, one a line; blank lines and `#` comments skipped; every bad line named."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"--stores: {path}: {exc.strerror}") from None
    stores: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not STORE_ID.match(line):
            problems.append(f"--stores: {path} line {number}: {line!r} is not a store id (1-32 of A-Z a-z 0-9 _ -)")
        elif line not in stores:
            stores.append(line)
    if problems:
        raise FleetError("\n".join(problems))
    if not stores:
        raise FleetError(f"--stores: {path} lists no store")
    return stores


async def stores_seen(dsn: str) -> list[str]:
    """Every store the ingest has written an event of."""
    conn = await _connect(dsn)
    async with conn:
        cursor = await conn.execute("SELECT store FROM stores ORDER BY store")
        stores = [str(row[0]) for row in await cursor.fetchall()]
    if not stores:
        raise FleetError("--db: the ingest has seen no store yet; give --stores FILE")
    return stores


async def record_commands(
    dsn: str, commands: Sequence[dict[str, Any]], topic: str, *, store: str | None, group: str | None
) -> None:
    """Write what is about to be sent into `commands`, before it is published."""
    conn = await _connect(dsn)
    async with conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO commands (id, type, store, target_group, topic, sent_at, data) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            [(c["id"], c["type"], store, group, topic, c["sent_at"], json.dumps(c["data"])) for c in commands],
        )


async def _connect(dsn: str) -> Any:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise FleetError("--db: psycopg is missing; install the extra: pip install 'store-gateway[hq]'") from None
    from gateway.ingest.schema import migrate
    from gateway.ingest.worker import check_dsn

    try:
        check_dsn(dsn)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ConnectionError(f"PostgreSQL: {str(exc).strip()}") from None
    await migrate(conn)
    return conn


@dataclass
class StoreAnswer:
    """How one store answered the commands of one push."""

    store: str
    results: dict[str, str] = field(default_factory=dict)  # command id -> status
    first_error: str | None = None

    def outcome(self, commands: int) -> str:
        if any(status == "rejected" for status in self.results.values()):
            return "rejected"
        if len(self.results) == commands:
            return "applied"
        return "no answer"


@dataclass
class GroupReport:
    """Every store's answer; `ok` when each applied every command."""

    group: str
    commands: int
    answers: dict[str, StoreAnswer]
    timeout_s: float

    def count(self, outcome: str) -> int:
        return sum(1 for a in self.answers.values() if a.outcome(self.commands) == outcome)

    @property
    def ok(self) -> bool:
        return self.count("applied") == len(self.answers)

    def render(self, out: TextIO) -> None:
        """A table, then one summary line."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"group {self.group}: {self.commands} command(s)", title_justify="left")
        table.add_column("store")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        order = {"rejected": 0, "no answer": 1, "applied": 2}
        for answer in sorted(self.answers.values(), key=lambda a: (order[a.outcome(self.commands)], a.store)):
            outcome = answer.outcome(self.commands)
            if outcome == "rejected":
                detail = answer.first_error or ""
            elif outcome == "no answer":
                detail = f"{len(answer.results)} of {self.commands} answered within {self.timeout_s:g} s"
            else:
                detail = ""
            table.add_row(answer.store, outcome, detail)
        Console(file=out, width=120, highlight=False, soft_wrap=False).print(table)
        print(
            f"{len(self.answers)} stores: {self.count('applied')} applied, {self.count('rejected')} rejected, "
            f"{self.count('no answer')} no answer within {self.timeout_s:g} s",
            file=out,
        )


async def follow(
    client: Any,
    *,
    prefix: str,
    group: str,
    stores: list[str],
    commands: list[dict[str, Any]],
    timeout_s: float,
    progress: bool,
) -> GroupReport:
    """Collect `command_result` events until every store answered every command, or the timeout.

    The caller subscribed to `P/stores/+/events/command_result` before publishing, so no answer is missed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    ids = {c["id"] for c in commands}
    answers = {store: StoreAnswer(store) for store in stores}
    complete = 0
    with Progress(
        TextColumn("[bold]stores answered"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("answered", total=len(stores))
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    answer, result = _match(message, answers, ids)
                    if answer is None or result is None or result["command_id"] in answer.results:
                        continue
                    status = str(result.get("status"))
                    answer.results[result["command_id"]] = status
                    if status == "rejected" and answer.first_error is None:
                        answer.first_error = _first_error(result)
                    if len(answer.results) == len(ids):
                        complete += 1
                        bar.advance(task)
                        if complete == len(stores):
                            break
        except TimeoutError:
            pass
    return GroupReport(group, len(commands), answers, timeout_s)


def _match(
    message: Any, answers: dict[str, StoreAnswer], ids: set[str]
) -> tuple[StoreAnswer | None, dict[str, Any] | None]:
    parts = str(message.topic).split("/")
    store = parts[2] if len(parts) > 2 else ""
    answer = answers.get(store)
    if answer is None:
        return None, None
    try:
        envelope = json.loads(bytes(message.payload))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if not isinstance(data, dict) or data.get("command_id") not in ids:
        return None, None
    return answer, data


def _first_error(result: dict[str, Any]) -> str:
    errors = result.get("errors") or []
    if errors and isinstance(errors[0], dict):
        return f"{errors[0].get('field')}: {errors[0].get('message')}"
    return "rejected (no error given)"
