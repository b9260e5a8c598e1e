"""Prices: `price.set` applied once per version, scheduled prices applied at their instant.

An item is applied only if its version is greater than the one stored for its sku: a replayed or
late item never takes a price backwards. An item whose `valid_from` lies in the future waits in
`price_schedule` and is applied by the scheduler at that instant (also after a restart). Every
change is announced as `PricesChanged` after commit, which is what re-renders the labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway.commands import CommandContext, CommandModel, Outcome
from gateway.money import from_minor, to_minor
from gateway.service import Service
from gateway.timeutil import epoch_ms, from_epoch_ms, parse_rfc3339, rfc3339, utc_now

log = logging.getLogger(__name__)

# The scheduler wakes at least this often, so a clock step (NTP after boot) is caught up quickly.
_MAX_SLEEP_S = 60.0

MAX_ITEMS = 5000
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]


def gtin_is_valid(code: str) -> bool:
    """GS1 mod-10 check digit of a GTIN-8/12/13/14."""
    if len(code) not in (8, 12, 13, 14) or not code.isascii() or not code.isdigit():
        return False
    digits = code.encode()  # summing ASCII bytes is done in C: this runs for every item of a price file
    threes, ones = digits[-2::-2], digits[-3::-2]
    total = 3 * (sum(threes) - 48 * len(threes)) + sum(ones) - 48 * len(ones)
    return (10 - total % 10) % 10 == digits[-1] - 48


def _minor(field: str, amount: str, currency: str) -> int:
    try:
        return to_minor(amount, currency)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


class PriceItem(CommandModel):
    """One sku's price as head office sends it (contract.md, `price.set`)."""

    sku: Sku
    price: str
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    gtin: Annotated[str, Field(pattern=r"^(\d{8}|\d{12,14})$")] | None = None
    name: Annotated[str, Field(max_length=200)] | None = None
    promo_price: str | None = None
    promo_until: str | None = None
    valid_from: str | None = None
    net_quantity: str | None = None
    net_unit: Literal["kg", "l", "m", "m2", "piece"] | None = None
    version: Annotated[int, Field(ge=0)]

    # One after-validator for the whole item: a 100k-line price file calls it 100k times.
    @model_validator(mode="after")
    def _check(self) -> PriceItem:
        _minor("price", self.price, self.currency)
        if self.promo_price is not None:
            _minor("promo_price", self.promo_price, self.currency)
        if self.gtin is not None and not gtin_is_valid(self.gtin):
            raise ValueError(f'gtin: "{self.gtin}" is not a GTIN-8/12/13/14 with a valid check digit')
        for name in ("promo_until", "valid_from"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_rfc3339(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        if self.net_quantity is not None:
            try:
                if float(self.net_quantity) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f'net_quantity: "{self.net_quantity}" is not a positive number') from None
            if self.net_unit is None:
                raise ValueError("net_quantity needs net_unit")
        return self


class PriceSet(CommandModel):
    """`price.set` data."""

    items: Annotated[list[PriceItem], Field(min_length=1, max_length=MAX_ITEMS)]


@dataclass(frozen=True)
class PricesChanged:
    """Signal: these skus have a new current price (label plans listen)."""

    skus: tuple[str, ...]


@dataclass(frozen=True)
class PricesScheduled:
    """Signal: these skus have a price waiting for a future instant (labels may pre-render)."""

    skus: tuple[str, ...]


@dataclass(frozen=True)
class Price:
    """A product's current price as the shelf and the till must show it."""

    sku: str
    gtin: str | None
    name: str
    currency: str
    price_minor: int
    promo_price_minor: int | None
    promo_until: datetime | None
    net_quantity: float | None
    net_unit: str | None
    version: int

    def effective_minor(self, now: datetime) -> int:
        """The price charged now: the promo price while the promotion runs."""
        if self.promo_price_minor is not None and (self.promo_until is None or now < self.promo_until):
            return self.promo_price_minor
        return self.price_minor

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sku": self.sku,
            "price": from_minor(self.price_minor, self.currency),
            "currency": self.currency,
            "version": self.version,
        }
        if self.gtin:
            data["gtin"] = self.gtin
        if self.name:
            data["name"] = self.name
        if self.promo_price_minor is not None:
            data["promo_price"] = from_minor(self.promo_price_minor, self.currency)
            if self.promo_until:
                data["promo_until"] = rfc3339(self.promo_until)
        return data


_COLUMNS = "sku, gtin, name, currency, price_minor, promo_price_minor, promo_until_ms, net_quantity, net_unit, version"


def _price(row: Sequence[Any]) -> Price:
    return Price(
        sku=row[0],
        gtin=row[1],
        name=row[2],
        currency=row[3],
        price_minor=row[4],
        promo_price_minor=row[5],
        promo_until=None if row[6] is None else from_epoch_ms(row[6]),
        net_quantity=row[7],
        net_unit=row[8],
        version=row[9],
    )


def get_price(conn: sqlite3.Connection, sku: str) -> Price | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM products WHERE sku = ?", (sku,)).fetchone()
    return None if row is None else _price(row)


def find_by_gtin(conn: sqlite3.Connection, gtin: str) -> Price | None:
    """The product with this GTIN (13-digit and 14-digit forms both match)."""
    candidates = {gtin, gtin.lstrip("0").rjust(13, "0"), gtin.rjust(14, "0")}
    marks = ",".join("?" * len(candidates))
    row = conn.execute(f"SELECT {_COLUMNS} FROM products WHERE gtin IN ({marks}) LIMIT 1", tuple(candidates)).fetchone()
    return None if row is None else _price(row)


def _row(item: PriceItem, now_ms: int) -> tuple[Any, ...]:
    return (
        item.sku,
        item.gtin,
        item.name,
        item.currency,
        to_minor(item.price, item.currency),
        None if item.promo_price is None else to_minor(item.promo_price, item.currency),
        None if item.promo_until is None else epoch_ms(parse_rfc3339(item.promo_until)),
        None if item.net_quantity is None else float(item.net_quantity),
        item.net_unit,
        item.version,
        now_ms,
    )


# name and gtin are catalogue data: an item that leaves them out keeps what the cache has.
_UPSERT = """
INSERT INTO products (sku, gtin, name, currency, price_minor, promo_price_minor, promo_until_ms,
                      net_quantity, net_unit, version, updated_ms)
VALUES (?, ?, coalesce(?, ''), ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (sku) DO UPDATE SET
    gtin = coalesce(excluded.gtin, products.gtin),
    name = CASE WHEN excluded.name = '' THEN products.name ELSE excluded.name END,
    currency = excluded.currency,
    price_minor = excluded.price_minor,
    promo_price_minor = excluded.promo_price_minor,
    promo_until_ms = excluded.promo_until_ms,
    net_quantity = coalesce(excluded.net_quantity, products.net_quantity),
    net_unit = coalesce(excluded.net_unit, products.net_unit),
    version = excluded.version,
    updated_ms = excluded.updated_ms
WHERE excluded.version > products.version
"""


def _current_versions(conn: sqlite3.Connection, skus: Iterable[str]) -> dict[str, int]:
    unique = list(dict.fromkeys(skus))
    versions: dict[str, int] = {}
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        versions.update(conn.execute(f"SELECT sku, version FROM products WHERE sku IN ({marks})", chunk).fetchall())
    return versions


def _scheduled_versions(conn: sqlite3.Connection, skus: Iterable[str]) -> set[tuple[str, int]]:
    unique = list(dict.fromkeys(skus))
    found: set[tuple[str, int]] = set()
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT sku, version FROM price_schedule WHERE sku IN ({marks})", chunk)
        found.update((str(sku), int(version)) for sku, version in rows)
    return found


@dataclass
class PriceApplication:
    """What one batch of items did."""

    applied: list[str]
    scheduled: list[str]
    skipped: int


def apply_items(conn: sqlite3.Connection, items: Sequence[PriceItem], now: datetime) -> PriceApplication:
    """Apply or schedule each item in version order; skip stale and replayed ones."""
    now_ms = epoch_ms(now)
    current = _current_versions(conn, (item.sku for item in items))
    future = [item for item in items if item.valid_from and parse_rfc3339(item.valid_from) > now]
    already = _scheduled_versions(conn, (item.sku for item in future)) if future else set()
    rows, schedule, applied, scheduled = [], [], [], []
    skipped = 0
    for item in items:
        if item.version <= current.get(item.sku, -1):
            skipped += 1
            continue
        if item.valid_from and parse_rfc3339(item.valid_from) > now:
            key = (item.sku, item.version)
            if key in already:
                skipped += 1
                continue
            already.add(key)
            schedule.append((item.sku, item.version, epoch_ms(parse_rfc3339(item.valid_from)), item.model_dump_json()))
            scheduled.append(item.sku)
            continue
        current[item.sku] = item.version
        rows.append(_row(item, now_ms))
        applied.append(item.sku)
    if rows:
        conn.executemany(_UPSERT, rows)
    if schedule:
        conn.executemany("INSERT INTO price_schedule (sku, version, valid_from_ms, item) VALUES (?, ?, ?, ?)", schedule)
    return PriceApplication(applied, scheduled, skipped)


def handle_price_set(context: CommandContext, data: PriceSet) -> Outcome:
    """The `price.set` command."""
    result = apply_items(context.conn, data.items, context.now)
    if result.applied:
        context.after_commit(PricesChanged(tuple(dict.fromkeys(result.applied))))
    if result.scheduled:
        context.after_commit(PricesScheduled(tuple(dict.fromkeys(result.scheduled))))
    return Outcome(
        applied=len(result.applied) + len(result.scheduled),
        skipped=result.skipped,
        extra={"scheduled": len(result.scheduled)} if result.scheduled else {},
    )


def apply_due(conn: sqlite3.Connection, now: datetime) -> list[str]:
    """Apply every scheduled price whose instant has come, oldest first; return the skus changed."""
    now_ms = epoch_ms(now)
    due = conn.execute(
        "SELECT sku, version, item FROM price_schedule WHERE valid_from_ms <= ? ORDER BY valid_from_ms, version",
        (now_ms,),
    ).fetchall()
    if not due:
        return []
    items = [PriceItem.model_validate(json.loads(row[2])) for row in due]
    current = _current_versions(conn, (item.sku for item in items))
    rows, changed = [], []
    for item in items:
        if item.version <= current.get(item.sku, -1):
            continue
        current[item.sku] = item.version
        rows.append(_row(item, now_ms))
        changed.append(item.sku)
    conn.executemany(_UPSERT, rows)
    conn.executemany("DELETE FROM price_schedule WHERE sku = ? AND version = ?", ((r[0], r[1]) for r in due))
    return list(dict.fromkeys(changed))


def scheduled_prices(conn: sqlite3.Connection, skus: Iterable[str]) -> list[Price]:
    """The prices waiting for their instant, as they will read then (catalogue data from the cache)."""
    found = []
    for sku in dict.fromkeys(skus):
        current = get_price(conn, sku)
        for (item_json,) in conn.execute("SELECT item FROM price_schedule WHERE sku = ? ORDER BY version", (sku,)):
            item = PriceItem.model_validate(json.loads(item_json))
            row = _row(item, 0)
            found.append(
                Price(
                    sku=item.sku,
                    gtin=item.gtin or (current.gtin if current else None),
                    name=item.name or (current.name if current else ""),
                    currency=item.currency,
                    price_minor=row[4],
                    promo_price_minor=row[5],
                    promo_until=None if row[6] is None else from_epoch_ms(row[6]),
                    net_quantity=row[7] if row[7] is not None else (current.net_quantity if current else None),
                    net_unit=item.net_unit or (current.net_unit if current else None),
                    version=item.version,
                )
            )
    return found


def next_due(conn: sqlite3.Connection) -> datetime | None:
    """The instant of the next scheduled price, if any."""
    row = conn.execute("SELECT min(valid_from_ms) FROM price_schedule").fetchone()
    return None if row[0] is None else from_epoch_ms(int(row[0]))


class PricingService(Service):
    """`price.set`, and the scheduler that applies future prices at their instant."""

    name = "pricing"

    def setup(self) -> None:
        self.gateway.dispatcher.register("price.set", PriceSet, handle_price_set)
        self._schedule_changed = asyncio.Event()
        self.gateway.bus.subscribe(PricesScheduled, self._on_scheduled)
        self.gateway.add_task("price-scheduler", self.run_scheduler)

    async def _on_scheduled(self, _signal: PricesScheduled) -> None:
        self._schedule_changed.set()

    async def run_scheduler(self) -> None:
        """Sleep until the next scheduled price, apply what is due, repeat (and catch up after a restart)."""
        db = self.gateway.db
        while True:
            self._schedule_changed.clear()
            changed = await db.write(functools.partial(apply_due, now=utc_now()))
            if changed:
                log.info("applied scheduled prices for %d skus", len(changed))
                self.gateway.bus.publish(PricesChanged(tuple(changed)))
            due = await db.read(next_due)
            wait_s = _MAX_SLEEP_S if due is None else max(0.0, (due - utc_now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedule_changed.wait(), min(wait_s, _MAX_SLEEP_S))
