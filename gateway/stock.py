"""Stock: absolute counts from head office (version-ordered), adjustments, and the movement ledger.

available = on_hand - reserved. Every change writes a ledger row and a `stock` event in the same
transaction, so head office's real-time inventory sees every movement, with its reason.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from gateway import outbox
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome
from gateway.domain import MAX_ITEMS, Sku
from gateway.service import Service
from gateway.timeutil import epoch_ms, utc_now

Reason = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]


class StockItem(CommandModel):
    sku: Sku
    on_hand: Annotated[int, Field(ge=0, le=10_000_000)]
    version: Annotated[int, Field(ge=0)]
    min: Annotated[int, Field(ge=0, le=10_000_000)] | None = None


class StockSet(CommandModel):
    """`stock.set` data: absolute counts."""

    items: Annotated[list[StockItem], Field(min_length=1, max_length=MAX_ITEMS)]


class StockAdjust(CommandModel):
    """`stock.adjust` data: a movement (a sale not seen by the till, breakage, a transfer...)."""

    sku: Sku
    delta: Annotated[int, Field(ge=-1_000_000, le=1_000_000)]
    reason: Reason


@dataclass(frozen=True)
class StockLevel:
    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def event(self, reason: str) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
            "reason": reason,
        }


def get_level(conn: sqlite3.Connection, sku: str) -> StockLevel:
    row = conn.execute("SELECT on_hand, reserved FROM stock WHERE sku = ?", (sku,)).fetchone()
    return StockLevel(sku, 0, 0) if row is None else StockLevel(sku, int(row[0]), int(row[1]))


def move(
    conn: sqlite3.Connection,
    sku: str,
    delta: int,
    reason: str,
    ref: str | None = None,
    *,
    release: int = 0,
) -> StockLevel:
    """Add `delta` to on_hand and take `release` off reserved (ledger row, `stock` event).

    Refused when on_hand would go below zero or below what is reserved for customers (a reserved
    item that breaks must be taken off its order first).
    """
    level = get_level(conn, sku)
    on_hand, reserved = level.on_hand + delta, level.reserved - release
    if on_hand < 0:
        raise ValueError(f"would take on_hand of {sku} below 0 (on hand {level.on_hand}, delta {delta})")
    if on_hand < reserved:
        raise ValueError(f"would leave {on_hand} of {sku} on hand for {reserved} reserved")
    return _write(conn, sku, on_hand, reserved, None, delta, reason, ref)


def set_reserved(conn: sqlite3.Connection, sku: str, reserved: int, reason: str, ref: str | None = None) -> StockLevel:
    """Change the reserved count (orders); emits a `stock` event, no ledger row (on_hand is unchanged)."""
    level = get_level(conn, sku)
    if reserved < 0:
        raise ValueError(f"reserved of {sku} cannot go below 0")
    return _write(conn, sku, level.on_hand, reserved, None, 0, reason, ref, ledger=False)


def _write(
    conn: sqlite3.Connection,
    sku: str,
    on_hand: int,
    reserved: int,
    version: int | None,
    delta: int,
    reason: str,
    ref: str | None,
    *,
    ledger: bool = True,
) -> StockLevel:
    now = utc_now()
    now_ms = epoch_ms(now)
    before = conn.execute("SELECT on_hand - reserved, min_stock FROM stock WHERE sku = ?", (sku,)).fetchone()
    conn.execute(
        "INSERT INTO stock (sku, on_hand, reserved, version, updated_ms) VALUES (?, ?, ?, coalesce(?, 0), ?) "
        "ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved, "
        "version = coalesce(?, stock.version), updated_ms = excluded.updated_ms",
        (sku, on_hand, reserved, version, now_ms, version),
    )
    if ledger:
        conn.execute(
            "INSERT INTO stock_ledger (sku, delta, on_hand, reason, ref, at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (sku, delta, on_hand, reason, ref, now_ms),
        )
    level = StockLevel(sku, on_hand, reserved)
    outbox.append(conn, "stock", level.event(reason), now)
    if before is not None and before[1] is not None:
        check_minimum(conn, sku, int(before[0]), level.available, int(before[1]))
    return level


def check_minimum(conn: sqlite3.Connection, sku: str, was: int, now: int, minimum: int) -> None:
    """One `replenishment` event when available falls below the sku's minimum, one when it is back."""
    if was >= minimum > now:
        outbox.append(
            conn,
            "replenishment",
            {
                "sku": sku,
                "source": "stock",
                "status": "needed",
                "level": "empty" if now <= 0 else "low",
                "available": now,
                "min": minimum,
                "to_order": minimum - now,
            },
        )
    elif was < minimum <= now:
        level = "ok"
        outbox.append(
            conn,
            "replenishment",
            {"sku": sku, "source": "stock", "status": "restored", "level": level, "available": now, "min": minimum},
        )


def set_minimum(conn: sqlite3.Connection, sku: str, minimum: int) -> None:
    row = conn.execute("SELECT on_hand - reserved, min_stock FROM stock WHERE sku = ?", (sku,)).fetchone()
    conn.execute("UPDATE stock SET min_stock = ? WHERE sku = ?", (minimum, sku))
    if row is not None:
        previous = row[1] if row[1] is not None else 0
        available = int(row[0])
        # a new minimum above what is available is a shortage from now on
        if available < minimum and not available < previous:
            check_minimum(conn, sku, minimum, available, minimum)


def handle_stock_set(context: CommandContext, data: StockSet) -> Outcome:
    """The `stock.set` command: absolute counts, applied only when newer than the stored version."""
    outcome = Outcome()
    for item in data.items:
        row = context.conn.execute("SELECT on_hand, reserved, version FROM stock WHERE sku = ?", (item.sku,)).fetchone()
        if row is not None and item.version <= row[2]:
            outcome.skipped += 1
            continue
        on_hand, reserved = (0, 0) if row is None else (int(row[0]), int(row[1]))
        _write(
            context.conn,
            item.sku,
            item.on_hand,
            reserved,
            item.version,
            item.on_hand - on_hand,
            "set",
            context.command_id,
        )
        if item.min is not None:
            set_minimum(context.conn, item.sku, item.min)
        outcome.applied += 1
    return outcome


def handle_stock_adjust(context: CommandContext, data: StockAdjust) -> Outcome:
    """The `stock.adjust` command."""
    try:
        move(context.conn, data.sku, data.delta, data.reason, context.command_id)
    except ValueError as exc:
        raise CommandRejected([FieldError("data.delta", str(exc))]) from None
    return Outcome(applied=1)


class StockService(Service):
    """`stock.set` and `stock.adjust`."""

    name = "stock"

    def setup(self) -> None:
        self.gateway.dispatcher.register("stock.set", StockSet, handle_stock_set)
        self.gateway.dispatcher.register("stock.adjust", StockAdjust, handle_stock_adjust)
