"""Orders: click & collect (BOPIS), e-reservation, express collect and ship-from-store.

`order.reserve` reserves stock in the cache (available = on_hand - reserved). The rule: an order is
reserved whole or not at all, unless head office sends `allow_partial: true`, in which case every
line gets what is available and the short lines are listed in the command result. A reserved order
prints a pick list (with bin locations) on the `[orders]` printer and lights the labels of its skus
(pick-to-light). Each scan of a product by a `pickup`-mode scanner picks one unit of an open order's
line; when every line is picked the order is `ready` and its pickup slip (QR code of the order) is
printed. At the counter, scanning the order's QR code or `order.collected` makes it `collected`:
on_hand goes down and the reservation is released. `order.cancel` and the expiry of `expires_at`
(also after a restart) release the reservation (`cancelled`, `expired`). Every step is an `order`
event and the matching `stock` events, written in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Annotated, Any, Literal

from pydantic import Field

from gateway import outbox, stock
from gateway.bus import Transaction
from gateway.clock import ClockStepped
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome
from gateway.domain import DocumentRefused, FlashRequest, PickupScan, PrintRequest, Sku
from gateway.pricing import get_price
from gateway.service import Service
from gateway.timeutil import epoch_ms, from_epoch_ms, parse_rfc3339, utc_now

log = logging.getLogger(__name__)

OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
OPEN = ("reserved", "ready")


class OrderLine(CommandModel):
    sku: Sku
    qty: Annotated[int, Field(ge=1, le=10_000)]
    location: Annotated[str, Field(max_length=32)] | None = None


class OrderReserve(CommandModel):
    """`order.reserve` data."""

    order: OrderId
    lines: Annotated[list[OrderLine], Field(min_length=1, max_length=500)]
    expires_at: str | None = None
    customer: Annotated[str, Field(max_length=80)] | None = None
    mode: Literal["collect", "express", "ship", "reservation"] = "collect"
    deadline_minutes: Annotated[int, Field(ge=1, le=24 * 60)] | None = None
    allow_partial: bool = False


class OrderRef(CommandModel):
    """`order.cancel` / `order.collected` data (lines and expires_at are accepted and ignored)."""

    order: OrderId
    lines: list[OrderLine] | None = None
    expires_at: str | None = None


class ReturnLine(CommandModel):
    sku: Sku
    qty: Annotated[int, Field(ge=1, le=10_000)] = 1
    condition: Literal["resaleable", "damaged"] = "resaleable"


class OrderReturn(CommandModel):
    """`order.return` data (BORIS: bought online, returned in store)."""

    order: OrderId
    lines: Annotated[list[ReturnLine], Field(min_length=1, max_length=500)]
    refund: Annotated[str, Field(pattern=r"^\d{1,9}(\.\d{1,3})?$")] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    reason: Annotated[str, Field(max_length=80)] | None = None


@dataclass(frozen=True)
class OrdersChanged:
    """Signal: an order was reserved (the expiry timer looks again)."""


def _lines(conn: sqlite3.Connection, order: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT sku, qty, reserved, picked, location FROM order_lines WHERE order_id = ? ORDER BY sku", (order,)
    )
    return [
        {
            "sku": r[0],
            "qty": int(r[1]),
            "reserved": int(r[2]),
            "picked": int(r[3]),
            **({"location": r[4]} if r[4] else {}),
        }
        for r in rows
    ]


def _event(conn: sqlite3.Connection, order: str, status: str) -> None:
    lines = [
        {k: v for k, v in line.items() if k in ("sku", "qty", "reserved", "picked")} for line in _lines(conn, order)
    ]
    outbox.append(conn, "order", {"order": order, "status": status, "lines": lines})


def _set_status(conn: sqlite3.Connection, order: str, status: str) -> None:
    conn.execute(
        "UPDATE orders SET status = ?, updated_ms = ? WHERE order_id = ?", (status, epoch_ms(utc_now()), order)
    )
    _event(conn, order, status)


def get_status(conn: sqlite3.Connection, order: str) -> str | None:
    row = conn.execute("SELECT status FROM orders WHERE order_id = ?", (order,)).fetchone()
    return None if row is None else str(row[0])


def reserve(conn: sqlite3.Connection, data: OrderReserve, now: datetime) -> list[FieldError]:
    """Reserve an order's lines; the errors list the short lines (only with allow_partial)."""
    if get_status(conn, data.order) is not None:
        raise CommandRejected([FieldError("data.order", f'order "{data.order}" exists already')])
    expires_ms = None
    if data.expires_at is not None:
        try:
            expires_ms = epoch_ms(parse_rfc3339(data.expires_at))
        except ValueError as exc:
            raise CommandRejected([FieldError("data.expires_at", str(exc))]) from None
    wanted: dict[str, int] = {}
    for line in data.lines:
        wanted[line.sku] = wanted.get(line.sku, 0) + line.qty
    short: list[FieldError] = []
    grant: dict[str, int] = {}
    for index, line in enumerate(data.lines):
        if line.sku in grant:
            continue
        available = stock.get_level(conn, line.sku).available
        grant[line.sku] = min(wanted[line.sku], max(0, available))
        if grant[line.sku] < wanted[line.sku]:
            short.append(
                FieldError(f"data.lines[{index}].qty", f"{available} of {wanted[line.sku]} {line.sku} available")
            )
    if short and not data.allow_partial:
        raise CommandRejected(short)
    now_ms = epoch_ms(now)
    deadline = None if data.deadline_minutes is None else now_ms + data.deadline_minutes * 60_000
    conn.execute(
        "INSERT INTO orders (order_id, mode, status, customer, expires_ms, deadline_ms, created_ms, updated_ms) "
        "VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?)",
        (data.order, data.mode, data.customer, expires_ms, deadline, now_ms, now_ms),
    )
    locations = {line.sku: line.location for line in data.lines}
    for sku, qty in wanted.items():
        conn.execute(
            "INSERT INTO order_lines (order_id, sku, qty, reserved, location) VALUES (?, ?, ?, ?, ?)",
            (data.order, sku, qty, grant[sku], locations.get(sku)),
        )
        if grant[sku]:
            level = stock.get_level(conn, sku)
            stock.set_reserved(conn, sku, level.reserved + grant[sku], "reserve", ref=data.order)
    _event(conn, data.order, "reserved")
    return short


def release(conn: sqlite3.Connection, order: str, status: str) -> None:
    """Give an open order's reservation back (cancelled, expired)."""
    for line in _lines(conn, order):
        if line["reserved"]:
            level = stock.get_level(conn, line["sku"])
            stock.set_reserved(conn, line["sku"], level.reserved - line["reserved"], "release", ref=order)
    conn.execute("UPDATE order_lines SET reserved = 0 WHERE order_id = ?", (order,))
    _set_status(conn, order, status)


def collect(conn: sqlite3.Connection, order: str) -> None:
    """The customer took the order: on_hand and reserved both go down by what was reserved."""
    for line in _lines(conn, order):
        if line["reserved"]:
            stock.move(conn, line["sku"], -line["reserved"], "collected", ref=order, release=line["reserved"])
    _set_status(conn, order, "collected")


def pick(conn: sqlite3.Connection, sku: str) -> tuple[str, bool] | None:
    """One unit of `sku` picked for the oldest open order that still needs it; (order, now ready?)."""
    row = conn.execute(
        "SELECT l.order_id FROM order_lines l JOIN orders o ON o.order_id = l.order_id "
        "WHERE l.sku = ? AND o.status = 'reserved' AND l.picked < l.reserved "
        "ORDER BY o.mode = 'express' DESC, coalesce(o.deadline_ms, o.created_ms), o.created_ms LIMIT 1",
        (sku,),
    ).fetchone()
    if row is None:
        return None
    order = str(row[0])
    conn.execute("UPDATE order_lines SET picked = picked + 1 WHERE order_id = ? AND sku = ?", (order, sku))
    remaining = conn.execute(
        "SELECT count(*) FROM order_lines WHERE order_id = ? AND picked < reserved", (order,)
    ).fetchone()[0]
    if remaining == 0:
        _set_status(conn, order, "ready")
        return order, True
    return order, False


def collect_by_scan(conn: sqlite3.Connection, order: str) -> str:
    """The order's QR code scanned at the counter; returns what happened (for the scanner's reply)."""
    status = get_status(conn, order)
    if status is None:
        return f"order {order} unknown"
    if status not in OPEN:
        return f"order {order} is {status}"
    collect(conn, order)
    return f"order {order} collected"


def expire_due(conn: sqlite3.Connection, now: datetime) -> list[str]:
    rows = conn.execute(
        "SELECT order_id FROM orders WHERE status IN ('reserved', 'ready') AND expires_ms IS NOT NULL "
        "AND expires_ms <= ?",
        (epoch_ms(now),),
    ).fetchall()
    for row in rows:
        release(conn, str(row[0]), "expired")
    return [str(r[0]) for r in rows]


def next_expiry(conn: sqlite3.Connection) -> datetime | None:
    row = conn.execute(
        "SELECT min(expires_ms) FROM orders WHERE status IN ('reserved', 'ready') AND expires_ms IS NOT NULL"
    ).fetchone()
    return None if row[0] is None else from_epoch_ms(int(row[0]))


def handle_reserve(context: CommandContext, data: OrderReserve) -> Outcome:
    short = reserve(context.conn, data, context.now)
    context.after_commit(OrdersChanged())
    return Outcome(applied=len(data.lines) - len(short), skipped=len(short), errors=short)


def _open_order(context: CommandContext, order: str) -> None:
    status = get_status(context.conn, order)
    if status is None:
        raise CommandRejected([FieldError("data.order", f'no order "{order}"')])
    if status not in OPEN:
        raise CommandRejected([FieldError("data.order", f'order "{order}" is {status} already')])


def take_back(conn: sqlite3.Connection, data: OrderReturn) -> None:
    """A return: resaleable units go back on hand; damaged ones are recorded, not sold again."""
    for line in data.lines:
        if line.condition == "resaleable":
            stock.move(conn, line.sku, line.qty, "return", ref=data.order)
        else:
            stock.move(conn, line.sku, 0, "return_damaged", ref=data.order)
    lines = [{"sku": line.sku, "qty": line.qty, "reserved": 0, "picked": 0} for line in data.lines]
    outbox.append(conn, "order", {"order": data.order, "status": "returned", "lines": lines})


def handle_return(context: CommandContext, data: OrderReturn) -> Outcome:
    take_back(context.conn, data)
    return Outcome(applied=len(data.lines))


def pick_list(conn: sqlite3.Connection, order: str, timezone: tzinfo) -> dict[str, Any]:
    """The pick list of a reserved order: each line with its name and bin; express orders show their deadline."""
    items = []
    for line in _lines(conn, order):
        price = get_price(conn, line["sku"])
        item: dict[str, Any] = {"name": (price.name if price else "") or line["sku"], "sku": line["sku"]}
        item["qty"] = line["reserved"] or line["qty"]
        if line.get("location"):
            item["location"] = line["location"]
        items.append(item)
    title = "Liste de préparation"
    deadline = conn.execute(
        "SELECT deadline_ms FROM orders WHERE order_id = ? AND mode = 'express'", (order,)
    ).fetchone()
    if deadline is not None and deadline[0] is not None:
        title = f"EXPRESS avant {from_epoch_ms(int(deadline[0])).astimezone(timezone):%H:%M}"
    return {"order": order, "customer": "-", "lines": items, "title": title}


def pickup_slip(conn: sqlite3.Connection, order: str) -> dict[str, Any]:
    """The slip of an order whose every line is picked: a pickup slip, or a packing slip to ship it."""
    row = conn.execute("SELECT customer, mode FROM orders WHERE order_id = ?", (order,)).fetchone()
    customer, mode = (None, "collect") if row is None else (row[0], row[1])
    lines = [{"name": line["sku"], "qty": line["qty"], "sku": line["sku"]} for line in _lines(conn, order)]
    title = "Bordereau d'expédition" if mode == "ship" else "Retrait commande"
    return {"order": order, "customer": customer or "-", "lines": lines, "title": title}


def return_receipt(data: OrderReturn) -> dict[str, Any]:
    lines = [{"name": line.sku + (" (abîmé)" if line.condition == "damaged" else ""), "qty": line.qty}
             for line in data.lines]  # fmt: skip
    receipt: dict[str, Any] = {"order": data.order, "lines": lines, "refund": data.refund or "0.00",
                               "currency": data.currency}  # fmt: skip
    if data.reason:
        receipt["reason"] = data.reason
    return receipt


def handle_cancel(context: CommandContext, data: OrderRef) -> Outcome:
    _open_order(context, data.order)
    release(context.conn, data.order, "cancelled")
    return Outcome(applied=1)


def handle_collected(context: CommandContext, data: OrderRef) -> Outcome:
    _open_order(context, data.order)
    collect(context.conn, data.order)
    return Outcome(applied=1)


def status_section(conn: sqlite3.Connection) -> dict[str, Any] | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'orders'").fetchone() is None:
        return None
    rows = conn.execute("SELECT status, count(*) FROM orders WHERE status IN ('reserved', 'ready') GROUP BY status")
    return {"open_by_status": {str(r[0]): int(r[1]) for r in rows}}


class OrderService(Service):
    """order.reserve / order.cancel / order.collected / order.return, pickup scans, slips, pick-to-light, expiry.

    Its documents and lights are asked of the printing and label services (`PrintRequest`,
    `FlashRequest`) in the order's own transaction: a pick list is never lost between the reservation
    and the print queue.
    """

    name = "orders"

    def setup(self) -> None:
        dispatcher = self.gateway.dispatcher
        dispatcher.register("order.reserve", OrderReserve, self.handle_reserve)
        dispatcher.register("order.cancel", OrderRef, handle_cancel)
        dispatcher.register("order.collected", OrderRef, handle_collected)
        dispatcher.register("order.return", OrderReturn, self.handle_return)
        self.gateway.bus.serve(PickupScan, self.pickup_scan)
        self._changed = asyncio.Event()
        self.gateway.bus.subscribe(OrdersChanged, self._on_changed)
        self.gateway.bus.subscribe(ClockStepped, self._on_clock_step)  # expiries are wall-clock instants
        self.gateway.add_task("orders:expiry", self.run_expiry)

    def handle_reserve(self, context: CommandContext, data: OrderReserve) -> Outcome:
        """`order.reserve`, then its pick list and pick-to-light, in the same transaction."""
        outcome = handle_reserve(context, data)
        self._print(context, "pickup_slip", pick_list(context.conn, data.order, self.gateway.timezone), data.order)
        config = self.gateway.config.orders
        if config.pick_to_light:
            skus = tuple(line.sku for line in data.lines)
            self.gateway.bus.ask(context, FlashRequest(skus, config.flash_color, config.flash_seconds))
        return outcome

    def handle_return(self, context: CommandContext, data: OrderReturn) -> Outcome:
        """`order.return` (BORIS), and its return receipt in the same transaction."""
        outcome = handle_return(context, data)
        self._print(context, "return_receipt", return_receipt(data), data.order)
        return outcome

    def pickup_scan(self, tx: Transaction, request: PickupScan) -> str:
        """Serve a `PickupScan`: collect by the order's code, or pick one unit; a completed order prints its slip."""
        if request.order is not None:
            return collect_by_scan(tx.conn, request.order)
        picked = pick(tx.conn, request.sku or "")
        if picked is None:
            return "no open order needs this article"
        order, ready = picked
        if not ready:
            return f"picked for order {order}"
        self._print(tx, "pickup_slip", pickup_slip(tx.conn, order), order)
        return f"picked for order {order}, order ready"

    def _print(self, tx: Transaction, document: str, data: dict[str, Any], ref: str) -> None:
        """Queue a document on the `[orders]` printer, if there is one; a refused document is logged, not fatal."""
        printer = self.gateway.config.orders.printer
        if printer is None:
            return
        try:
            self.gateway.bus.ask(tx, PrintRequest(printer, document, data, ref=ref))
        except DocumentRefused as exc:
            log.warning("orders: %s for order %s not printed: %s", document, ref, exc)

    async def _on_changed(self, signal: OrdersChanged) -> None:
        self._changed.set()

    async def _on_clock_step(self, _signal: ClockStepped) -> None:
        self._changed.set()

    async def run_expiry(self) -> None:
        db = self.gateway.db
        while True:
            self._changed.clear()
            expired = await db.write(functools.partial(expire_due, now=utc_now()))
            if expired:
                log.info("orders: %d reservations expired: %s", len(expired), ", ".join(expired[:5]))
            due = await db.read(next_expiry)
            wait = 60.0 if due is None else max(0.0, min(60.0, (due - utc_now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait + 0.01)
