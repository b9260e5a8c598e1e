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
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from gateway import outbox, stock
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome
from gateway.pricing import Sku, get_price
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
class OrderReturned:
    """Signal: print the return receipt."""

    order: str
    data: OrderReturn


@dataclass(frozen=True)
class OrderReserved:
    """Signal: print the pick list and light the labels."""

    order: str
    skus: tuple[str, ...]


@dataclass(frozen=True)
class OrderReady:
    """Signal: print the pickup (or packing) slip."""

    order: str


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
    context.after_commit(OrderReserved(data.order, tuple(line.sku for line in data.lines)))
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
    context.after_commit(OrderReturned(data.order, data))
    return Outcome(applied=len(data.lines))


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
    """order.reserve / order.cancel / order.collected, pick lists and slips, pick-to-light, expiry."""

    name = "orders"

    def setup(self) -> None:
        dispatcher = self.gateway.dispatcher
        dispatcher.register("order.reserve", OrderReserve, handle_reserve)
        dispatcher.register("order.cancel", OrderRef, handle_cancel)
        dispatcher.register("order.collected", OrderRef, handle_collected)
        dispatcher.register("order.return", OrderReturn, handle_return)
        self.gateway.bus.subscribe(OrderReturned, self._on_returned)
        self._changed = asyncio.Event()
        self.gateway.bus.subscribe(OrderReserved, self._on_reserved)
        self.gateway.bus.subscribe(OrderReady, self._on_ready)
        self.gateway.add_task("orders:expiry", self.run_expiry)

    async def _print(self, document: str, data: dict[str, Any], ref: str) -> None:
        printer_id = self.gateway.config.orders.printer
        printer = next((p for p in self.gateway.config.printers if p.id == printer_id), None)
        if printer is None:
            return
        from gateway.printing.documents import StoreHeader
        from gateway.printing.service import JobQueued, queue_job

        store = self.gateway.config.store
        header = StoreHeader(store.name, tuple(store.address), store.footer)
        job = functools.partial(queue_job, printer=printer, document=document, data=data, store=header, ref=ref)
        await self.gateway.write(job, JobQueued(printer.id))

    async def _on_reserved(self, signal: OrderReserved) -> None:
        self._changed.set()
        lines = await self.gateway.db.read(functools.partial(_lines, order=signal.order))
        prices = await self.gateway.db.read(lambda conn: {line["sku"]: get_price(conn, line["sku"]) for line in lines})
        pick_list = []
        for line in lines:
            price = prices.get(line["sku"])
            item: dict[str, Any] = {"name": (price.name if price else "") or line["sku"], "sku": line["sku"]}
            item["qty"] = line["reserved"] or line["qty"]
            if line.get("location"):
                item["location"] = line["location"]
            pick_list.append(item)
        deadline = await self.gateway.db.read(
            lambda conn: conn.execute(
                "SELECT deadline_ms FROM orders WHERE order_id = ? AND mode = 'express'", (signal.order,)
            ).fetchone()
        )
        title = "Liste de préparation"
        if deadline is not None and deadline[0] is not None:
            local = from_epoch_ms(int(deadline[0])).astimezone(self.gateway.timezone)
            title = f"EXPRESS avant {local:%H:%M}"
        await self._print(
            "pickup_slip", {"order": signal.order, "customer": "-", "lines": pick_list, "title": title}, signal.order
        )
        config = self.gateway.config.orders
        if config.pick_to_light:
            from gateway.labels.plan import FlashRequested, labels_for_skus

            keys = await self.gateway.db.read(functools.partial(labels_for_skus, skus=signal.skus))
            if keys:
                self.gateway.bus.publish(FlashRequested(tuple(keys), config.flash_color, config.flash_seconds))

    async def _on_ready(self, signal: OrderReady) -> None:
        def read(conn: sqlite3.Connection) -> tuple[str | None, str, list[dict[str, Any]]]:
            row = conn.execute("SELECT customer, mode FROM orders WHERE order_id = ?", (signal.order,)).fetchone()
            return (None if row is None else row[0]), ("collect" if row is None else row[1]), _lines(conn, signal.order)

        customer, mode, lines = await self.gateway.db.read(read)
        slip_lines = [{"name": line["sku"], "qty": line["qty"], "sku": line["sku"]} for line in lines]
        title = "Bordereau d'expédition" if mode == "ship" else "Retrait commande"
        slip = {"order": signal.order, "customer": customer or "-", "lines": slip_lines, "title": title}
        await self._print("pickup_slip", slip, signal.order)

    async def _on_returned(self, signal: OrderReturned) -> None:
        data = signal.data
        lines = [{"name": line.sku + (" (abîmé)" if line.condition == "damaged" else ""), "qty": line.qty}
                 for line in data.lines]  # fmt: skip
        receipt: dict[str, Any] = {"order": data.order, "lines": lines, "refund": data.refund or "0.00",
                                   "currency": data.currency}  # fmt: skip
        if data.reason:
            receipt["reason"] = data.reason
        await self._print("return_receipt", receipt, data.order)

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
