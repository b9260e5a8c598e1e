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
import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, NotRequired

import msgspec
from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome, msgspec_error
from gateway.money import from_minor, is_currency_code, to_minor
from gateway.service import Service
from gateway.timeutil import epoch_ms, from_epoch_ms, parse_rfc3339, rfc3339, utc_now

log = logging.getLogger(__name__)

# The scheduler wakes at least this often, so a clock step (NTP after boot) is caught up quickly.
_MAX_SLEEP_S = 60.0

MAX_ITEMS = 5000
MAX_VERSION = 2**63 - 1  # SQLite's INTEGER
NetUnit = Literal["kg", "l", "m", "m2", "piece"]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
_CONTROL = re.compile(r"[\x00-\x1f]")


# "0" is byte 48: the weighted sum of a code's ASCII bytes is its digits' sum plus this, per length
_ASCII_ZEROS = {n: 48 * ((n + 1) // 2 + 3 * (n // 2)) for n in (8, 12, 13, 14)}


def gtin_is_valid(code: str) -> bool:
    """GS1 mod-10 check digit of a GTIN-8/12/13/14: weights 1, 3, 1, ... from the right, check digit included."""
    zeros = _ASCII_ZEROS.get(len(code))
    if zeros is None or not code.isascii() or not code.isdigit():
        return False
    digits = code.encode()  # sums over bytes run in C: this runs for every item of a price file
    return (sum(digits[-1::-2]) + 3 * sum(digits[-2::-2]) - zeros) % 10 == 0


class InvalidItem(ValueError):
    """One field of a price item holds a value the gateway cannot use."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# The price path has two declarations of an item, kept in step by tests/unit/test_commands.py:
# PriceItem is what the code reads, decoded by msgspec straight from the command's bytes (a
# 100k-item file in 0.05 s, against 0.2 s for json plus pydantic); the pydantic schema below
# documents it (docs/asyncapi.yaml) and names every bad field when msgspec refuses a command.
class PriceItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One sku's price as head office sends it (contract.md, `price.set`); `check_item` checks values."""

    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    price: str
    currency: str
    gtin: str | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    promo_price: str | None = None
    promo_until: str | None = None
    valid_from: str | None = None
    net_quantity: str | None = None
    net_unit: NetUnit | None = None
    version: Annotated[int, msgspec.Meta(ge=0, le=MAX_VERSION)]


class PriceItems(msgspec.Struct, forbid_unknown_fields=True):
    """`price.set` data as the handler gets it."""

    items: Annotated[list[PriceItem], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]


_ITEM_DECODER = msgspec.json.Decoder(PriceItem)


@with_config(ConfigDict(extra="forbid", strict=True))
class PriceItemSchema(TypedDict):
    """One sku's price as head office sends it (contract.md, `price.set`)."""

    sku: Sku
    price: str
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    gtin: NotRequired[Annotated[str, Field(pattern=r"^(\d{8}|\d{12,14})$")] | None]
    name: NotRequired[Annotated[str, Field(max_length=200)] | None]
    promo_price: NotRequired[str | None]
    promo_until: NotRequired[str | None]
    valid_from: NotRequired[str | None]
    net_quantity: NotRequired[str | None]
    net_unit: NotRequired[NetUnit | None]
    version: Annotated[int, Field(ge=0, le=MAX_VERSION)]


class PriceSet(CommandModel):
    """`price.set` data."""

    # the documented schema: the handler gets PriceItems, decoded from the bytes by msgspec
    wire_decoder: ClassVar[msgspec.json.Decoder[Any] | None] = msgspec.json.Decoder(PriceItems)
    items: Annotated[list[PriceItemSchema], Field(min_length=1, max_length=MAX_ITEMS)]


class PriceChange(NamedTuple):
    """One checked item in the units the cache stores; the first ten fields are a `products` row."""

    sku: str
    gtin: str | None
    name: str | None
    currency: str
    price_minor: int
    promo_price_minor: int | None
    promo_until_ms: int | None
    net_quantity: float | None
    net_unit: str | None
    version: int
    valid_from_ms: int | None
    item: PriceItem


def _minor(field: str, amount: str, currency: str) -> int:
    try:
        return to_minor(amount, currency)
    except ValueError as exc:
        raise InvalidItem(field, str(exc)) from None


def _instant_ms(field: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return epoch_ms(parse_rfc3339(text))
    except ValueError as exc:
        raise InvalidItem(field, str(exc)) from None


def _net_quantity(text: str, unit: str | None) -> float:
    try:
        quantity = float(text)
    except ValueError:
        raise InvalidItem("net_quantity", f'"{text}" is not a positive number') from None
    if not quantity > 0:  # also NaN
        raise InvalidItem("net_quantity", f'"{text}" is not a positive number')
    if unit is None:
        raise InvalidItem("net_quantity", "needs net_unit")
    return quantity


def check_item(item: PriceItem) -> PriceChange:
    """The values of an item whose shape msgspec checked; raises InvalidItem naming the field."""
    sku, currency = item.sku, item.currency
    if not sku.isprintable() and _CONTROL.search(sku):
        raise InvalidItem("sku", "must not contain control characters")
    if not is_currency_code(currency):
        raise InvalidItem("currency", f'"{currency}" is not an ISO 4217 code such as "EUR"')
    price_minor = _minor("price", item.price, currency)
    promo_price = item.promo_price
    promo_minor = None if promo_price is None else _minor("promo_price", promo_price, currency)
    gtin = item.gtin
    if gtin is not None and not gtin_is_valid(gtin):
        raise InvalidItem("gtin", f'"{gtin}" is not a GTIN-8/12/13/14 with a valid check digit')
    net_text, net_unit = item.net_quantity, item.net_unit
    net_quantity = None if net_text is None else _net_quantity(net_text, net_unit)
    return PriceChange(
        sku,
        gtin,
        item.name,
        currency,
        price_minor,
        promo_minor,
        _instant_ms("promo_until", item.promo_until),
        net_quantity,
        net_unit,
        item.version,
        _instant_ms("valid_from", item.valid_from),
        item,
    )


_ITEM_SCHEMA = TypeAdapter(PriceItemSchema)


def validate_item(raw: object) -> PriceChange:
    """One item from outside (a CSV line): raises pydantic's ValidationError or InvalidItem, naming the field."""
    try:
        item = msgspec.convert(raw, PriceItem)
    except msgspec.ValidationError as exc:
        _ITEM_SCHEMA.validate_python(raw)  # names every bad field
        error = msgspec_error(exc, "")
        raise InvalidItem(error.field, error.message) from None
    return check_item(item)


def stored_item(text: str | bytes) -> PriceChange:
    """A scheduled item as `apply_changes` stored it (also the previous release's full dump)."""
    return check_item(_ITEM_DECODER.decode(text))


def check_items(items: Sequence[PriceItem]) -> list[PriceChange]:
    """Every item of a `price.set`; one bad value rejects the command, naming each bad field."""
    changes, errors = [], []
    for index, item in enumerate(items):
        try:
            changes.append(check_item(item))
        except InvalidItem as exc:
            errors.append(FieldError(f"data.items[{index}].{exc.field}", exc.message))
    if errors:
        raise CommandRejected(errors)
    return changes


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


# A sku new to the cache is inserted, a known one updated: both are cheaper than an upsert, and
# apply_changes knows which is which from the versions it reads first. Most items carry no promo
# and no net quantity; their statements bind 7 values instead of 11, which makes the insert of a
# price file a third faster (bench/price_file.py).
_INSERT = f"""
INSERT INTO products ({_COLUMNS}, updated_ms) VALUES (?, ?, coalesce(?, ''), ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_PLAIN = """
INSERT INTO products (sku, gtin, name, currency, price_minor, version, updated_ms)
VALUES (?, ?, coalesce(?, ''), ?, ?, ?, ?)
"""
# name, gtin and the net quantity are catalogue data: an item that leaves them out keeps what the
# cache has; a price without a promo ends the promo. The version guard repeats apply_changes' check.
_UPDATE = """
UPDATE products SET gtin = coalesce(?, gtin), name = coalesce(nullif(?, ''), name), currency = ?, price_minor = ?,
    promo_price_minor = ?, promo_until_ms = ?, net_quantity = coalesce(?, net_quantity),
    net_unit = coalesce(?, net_unit), version = ?, updated_ms = ?
WHERE sku = ? AND version < ?
"""
_UPDATE_PLAIN = """
UPDATE products SET gtin = coalesce(?, gtin), name = coalesce(nullif(?, ''), name), currency = ?, price_minor = ?,
    promo_price_minor = NULL, promo_until_ms = NULL, version = ?, updated_ms = ?
WHERE sku = ? AND version < ?
"""
_NO_EXTRAS = (None, None, None, None)  # promo price, promo end, net quantity, net unit


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


def apply_changes(conn: sqlite3.Connection, changes: Sequence[PriceChange], now: datetime) -> PriceApplication:
    """Apply or schedule each change in version order; skip stale and replayed ones."""
    now_ms = epoch_ms(now)
    current = _current_versions(conn, (change.sku for change in changes))
    future = [c for c in changes if c.valid_from_ms is not None and c.valid_from_ms > now_ms]
    already = _scheduled_versions(conn, (c.sku for c in future)) if future else set()
    rows: dict[str, list[tuple[Any, ...]]] = {_INSERT_PLAIN: [], _INSERT: [], _UPDATE_PLAIN: [], _UPDATE: []}
    schedule, applied, scheduled = [], [], []
    skipped = 0
    for change in changes:
        sku, version = change.sku, change.version
        known = current.get(sku)
        if known is not None and version <= known:
            skipped += 1
            continue
        if change.valid_from_ms is not None and change.valid_from_ms > now_ms:
            if (sku, version) in already:
                skipped += 1
                continue
            already.add((sku, version))
            schedule.append((sku, version, change.valid_from_ms, msgspec.json.encode(change.item).decode()))
            scheduled.append(sku)
            continue
        current[sku] = version  # a sku that comes again in this batch is then known: an update
        plain = change[5:9] == _NO_EXTRAS
        if known is None and plain:
            rows[_INSERT_PLAIN].append((*change[:5], version, now_ms))
        elif known is None:
            rows[_INSERT].append((*change[:10], now_ms))
        elif plain:
            rows[_UPDATE_PLAIN].append((*change[1:5], version, now_ms, sku, version))
        else:
            rows[_UPDATE].append((*change[1:10], now_ms, sku, version))
        applied.append(sku)
    # in this order: a sku new to the cache may come twice in one file, the second time as an update
    for statement, batch in rows.items():
        if batch:
            conn.executemany(statement, batch)
    if schedule:
        conn.executemany("INSERT INTO price_schedule (sku, version, valid_from_ms, item) VALUES (?, ?, ?, ?)", schedule)
    return PriceApplication(applied, scheduled, skipped)


def handle_price_set(context: CommandContext, data: PriceItems) -> Outcome:
    """The `price.set` command."""
    result = apply_changes(context.conn, check_items(data.items), context.now)
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
    due = conn.execute(
        "SELECT sku, version, item FROM price_schedule WHERE valid_from_ms <= ? ORDER BY valid_from_ms, version",
        (epoch_ms(now),),
    ).fetchall()
    if not due:
        return []
    result = apply_changes(conn, [stored_item(row[2]) for row in due], now)
    conn.executemany("DELETE FROM price_schedule WHERE sku = ? AND version = ?", ((r[0], r[1]) for r in due))
    return list(dict.fromkeys(result.applied))


def scheduled_prices(conn: sqlite3.Connection, skus: Iterable[str]) -> list[Price]:
    """The prices waiting for their instant, as they will read then (catalogue data from the cache)."""
    found = []
    for sku in dict.fromkeys(skus):
        cached = get_price(conn, sku)
        for (item_json,) in conn.execute("SELECT item FROM price_schedule WHERE sku = ? ORDER BY version", (sku,)):
            change = stored_item(item_json)
            net_quantity, net_unit = change.net_quantity, change.net_unit
            if cached is not None and net_quantity is None:
                net_quantity, net_unit = cached.net_quantity, net_unit or cached.net_unit
            found.append(
                Price(
                    sku=change.sku,
                    gtin=change.gtin or (cached.gtin if cached else None),
                    name=change.name or (cached.name if cached else ""),
                    currency=change.currency,
                    price_minor=change.price_minor,
                    promo_price_minor=change.promo_price_minor,
                    promo_until=None if change.promo_until_ms is None else from_epoch_ms(change.promo_until_ms),
                    net_quantity=net_quantity,
                    net_unit=net_unit,
                    version=change.version,
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
