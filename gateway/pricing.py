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

from gateway.clock import ClockStepped
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome, msgspec_error
from gateway.domain import MAX_ITEMS, Price, PricesChanged, PricesScheduled, Sku
from gateway.money import exponent, is_currency_code, to_minor
from gateway.service import Service
from gateway.timeutil import epoch_ms, from_epoch_ms, parse_rfc3339, utc_now

log = logging.getLogger(__name__)

# The scheduler wakes at least this often, so a clock step (NTP after boot) is caught up quickly.
_MAX_SLEEP_S = 60.0

MAX_VERSION = 2**63 - 1  # SQLite's INTEGER
NetUnit = Literal["kg", "l", "m", "m2", "piece"]
_CONTROL = re.compile(r"[\x00-\x1f]")


# "0" is byte 48: the weighted sum of a code's ASCII bytes is its digits' sum plus this, per length
_ASCII_ZEROS = {n: 48 * ((n + 1) // 2 + 3 * (n // 2)) for n in (8, 12, 13, 14)}


def gtin_is_valid(code: str) -> bool:
    """GS1 mod-10 check digit of a GTIN-8/12/13/14: weights 1, 3, 1, ... from the right, check digit included."""
    zeros = _ASCII_ZEROS.get(len(code))
    if zeros is None or not code.isascii() or not code.isdigit():
        return False
    digits = code.encode()  # sums over bytes run in C
    return (sum(digits[-1::-2]) + 3 * sum(digits[-2::-2]) - zeros) % 10 == 0


# A digit's ASCII byte -> its value times the weight, mod 10; and a lane sum -> 0 if it is a multiple of 10.
_WEIGHTED = {weight: bytes.maketrans(b"0123456789", bytes(weight * d % 10 for d in range(10))) for weight in (1, 3)}
_NOT_MULTIPLE_OF_10 = bytes(int(v % 10 != 0) for v in range(256))


def gtins_are_valid(codes: Sequence[str]) -> bool:
    """Whether every code passes `gtin_is_valid`, for a whole column at once.

    The codes are laid side by side, one byte lane each: every digit position is weighted in all lanes
    by one `bytes.translate`, and the lanes are summed as one big integer. A lane holds at most 14 x 9,
    so it never carries into the next. A price file's GTINs are checked in C, not one call per item.
    """
    lengths = set(map(len, codes))
    if len(lengths) != 1:
        return all(map(gtin_is_valid, codes))
    (length,) = lengths
    blob = "".join(codes)
    if length not in _ASCII_ZEROS or not blob.isascii() or not blob.isdigit():
        return False
    digits = blob.encode()
    total = 0
    for position in range(length):
        weight = 1 if (length - position) % 2 else 3  # the check digit, last, weighs 1
        total += int.from_bytes(digits[position::length].translate(_WEIGHTED[weight]), "little")
    lanes = total.to_bytes(len(codes), "little")
    return lanes.translate(_NOT_MULTIPLE_OF_10).count(0) == len(codes)


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
# gc=False: it holds only strings and numbers, so it can never be in a cycle; 100k of them a night
# are then no work for the garbage collector (and decode a tenth faster).
class PriceItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One sku's price as head office sends it (contract.md, `price.set`); `check_items` checks values."""

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
_ITEM_FIELDS: tuple[str, ...] = PriceItem.__struct_fields__
_FIELD_ORDER = {name: n for n, name in enumerate(_ITEM_FIELDS)}


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
    """One checked item in the units the cache stores."""

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


@dataclass(frozen=True)
class PriceBatch:
    """The checked items of one `price.set` (or of the schedule), column by column, in the units the cache stores.

    Columns rather than an object per item: a nightly file is 100k items, and each check of `_check` is
    one pass over a column in C; the per-item rules run only to name the fields of a column that fails.
    Position i of every column belongs to `items[i]`.
    """

    items: Sequence[PriceItem]
    sku: Sequence[str]
    gtin: Sequence[str | None]
    name: Sequence[str | None]
    currency: Sequence[str]
    price_minor: Sequence[int]
    promo_price_minor: Sequence[int | None]
    promo_until_ms: Sequence[int | None]
    net_quantity: Sequence[float | None]
    net_unit: Sequence[str | None]
    version: Sequence[int]
    valid_from_ms: Sequence[int | None]

    def __len__(self) -> int:
        return len(self.items)

    def change(self, index: int) -> PriceChange:
        """Item `index` as one record."""
        return PriceChange(*(getattr(self, name)[index] for name in PriceChange._fields))

    @property
    def plain(self) -> bool:
        """No item has a promo or a net quantity (most price files): the rows bind fewer values."""
        n = len(self.items)
        return all(
            column.count(None) == n
            for column in (self.promo_price_minor, self.promo_until_ms, self.net_quantity, self.net_unit)
        )


Problem = tuple[int, str, str]  # item index, field, message


@functools.cache
def _canonical_amounts(places: int) -> re.Pattern[str]:
    """Amounts written exactly as the cache would write them back ("12.99" for EUR), one a line."""
    amount = r"[0-9]{1,12}" + (rf"\.[0-9]{{{places}}}" if places else "")
    return re.compile(rf"{amount}(?:\n{amount})*")


def _minor_column(
    field: str, amounts: Sequence[str | None], currencies: Sequence[str], problems: list[Problem]
) -> Sequence[int | None]:
    """Amounts (None stays None) in minor units; one regex pass when every amount is canonical."""
    n, missing = len(amounts), amounts.count(None)
    if missing == n:
        return amounts  # type: ignore[return-value]  # all None
    distinct = set(currencies)
    if len(distinct) == 1 and missing == 0:
        joined = "\n".join(amounts)  # type: ignore[arg-type]  # no None, checked above
        if _canonical_amounts(exponent(*distinct)).fullmatch(joined):
            minor = list(map(int, joined.replace(".", "").split("\n")))
            if len(minor) == n:  # else an amount held a newline of its own
                return minor
    column: list[int | None] = []
    for index, (amount, currency) in enumerate(zip(amounts, currencies, strict=True)):
        if amount is None:
            column.append(None)
            continue
        try:
            column.append(to_minor(amount, currency))
        except ValueError as exc:
            problems.append((index, field, str(exc)))
            column.append(None)
    return column


def _instant_column(field: str, texts: Sequence[str | None], problems: list[Problem]) -> Sequence[int | None]:
    """RFC 3339 times (None stays None) as epoch milliseconds."""
    if texts.count(None) == len(texts):
        return texts  # type: ignore[return-value]  # all None
    column: list[int | None] = []
    for index, text in enumerate(texts):
        try:
            column.append(None if text is None else epoch_ms(parse_rfc3339(text)))
        except ValueError as exc:
            problems.append((index, field, str(exc)))
            column.append(None)
    return column


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


def _net_quantity_column(
    texts: Sequence[str | None], units: Sequence[str | None], problems: list[Problem]
) -> Sequence[float | None]:
    if texts.count(None) == len(texts):
        return texts  # type: ignore[return-value]  # all None
    column: list[float | None] = []
    for index, (text, unit) in enumerate(zip(texts, units, strict=True)):
        try:
            column.append(None if text is None else _net_quantity(text, unit))
        except InvalidItem as exc:
            problems.append((index, exc.field, exc.message))
            column.append(None)
    return column


def _check(items: Sequence[PriceItem]) -> tuple[PriceBatch, list[Problem]]:
    """The items' values, checked column by column, and every problem found (by item, then field)."""
    if items:
        rows = map(msgspec.structs.astuple, items)
        columns: dict[str, tuple[Any, ...]] = dict(zip(_ITEM_FIELDS, zip(*rows, strict=True), strict=True))
    else:
        columns = dict.fromkeys(_ITEM_FIELDS, ())
    problems: list[Problem] = []
    sku, currency, gtin = columns["sku"], columns["currency"], columns["gtin"]
    if not "".join(sku).isprintable():  # something unprintable somewhere: find the control characters
        problems += [(i, "sku", "must not contain control characters") for i, s in enumerate(sku) if _CONTROL.search(s)]
    for code in set(currency):
        if not is_currency_code(code):
            message = f'"{code}" is not an ISO 4217 code such as "EUR"'
            problems += [(i, "currency", message) for i, c in enumerate(currency) if c == code]
    price_minor = _minor_column("price", columns["price"], currency, problems)
    promo_price_minor = _minor_column("promo_price", columns["promo_price"], currency, problems)
    given = gtin if gtin.count(None) == 0 else [g for g in gtin if g is not None]
    if given and not gtins_are_valid(given):
        problems += [
            (i, "gtin", f'"{g}" is not a GTIN-8/12/13/14 with a valid check digit')
            for i, g in enumerate(gtin)
            if g is not None and not gtin_is_valid(g)
        ]
    batch = PriceBatch(
        items=items,
        sku=sku,
        gtin=gtin,
        name=columns["name"],
        currency=currency,
        price_minor=price_minor,  # type: ignore[arg-type]  # never None: price is required
        promo_price_minor=promo_price_minor,
        promo_until_ms=_instant_column("promo_until", columns["promo_until"], problems),
        net_quantity=_net_quantity_column(columns["net_quantity"], columns["net_unit"], problems),
        net_unit=columns["net_unit"],
        version=columns["version"],
        valid_from_ms=_instant_column("valid_from", columns["valid_from"], problems),
    )
    problems.sort(key=lambda problem: (problem[0], _FIELD_ORDER[problem[1]]))
    return batch, problems


def check_items(items: Sequence[PriceItem]) -> PriceBatch:
    """Every item of a `price.set`; one bad value rejects the command, naming each bad field."""
    batch, problems = _check(items)
    if problems:
        raise CommandRejected([FieldError(f"data.items[{i}].{field}", message) for i, field, message in problems])
    return batch


_ITEM_SCHEMA = TypeAdapter(PriceItemSchema)


def convert_item(raw: object) -> PriceItem:
    """One item from outside (a CSV line) in the shape of a `price.set` item; its values are checked by
    `price_problems`, a whole file at once. Raises pydantic's ValidationError or InvalidItem, naming the field."""
    try:
        return msgspec.convert(raw, PriceItem)
    except msgspec.ValidationError as exc:
        _ITEM_SCHEMA.validate_python(raw)  # names every bad field
        error = msgspec_error(exc, "")
        raise InvalidItem(error.field, error.message) from None


def price_problems(items: Sequence[PriceItem]) -> list[Problem]:
    """Every bad value of these items as (index, field, message), by item then field; [] when all are good."""
    return _check(items)[1]


def stored_items(texts: Iterable[str | bytes]) -> PriceBatch:
    """Scheduled items as `apply_changes` stored them (also the previous release's full dump)."""
    return check_items([_ITEM_DECODER.decode(text) for text in texts])


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
# apply_changes knows which is which from the versions it reads first. A batch with no promo and no
# net quantity (most price files) binds 7 values instead of 11: a third faster on the insert.
_INSERT = f"""
INSERT INTO products ({_COLUMNS}, updated_ms) VALUES (?, ?, coalesce(?, ''), ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_PLAIN = """
INSERT INTO products (sku, gtin, name, currency, price_minor, version, updated_ms)
VALUES (?, ?, coalesce(?, ''), ?, ?, ?, ?)
"""
# name and the net quantity are catalogue data: an item that leaves them out keeps what the cache
# has; a price without a promo ends the promo. The version guard repeats apply_changes' check.
# The GTIN is written apart, only when it changes: writing it at all rewrites its index entry.
_UPDATE = """
UPDATE products SET name = coalesce(nullif(?, ''), name), currency = ?, price_minor = ?,
    promo_price_minor = ?, promo_until_ms = ?, net_quantity = coalesce(?, net_quantity),
    net_unit = coalesce(?, net_unit), version = ?, updated_ms = ?
WHERE sku = ? AND version < ?
"""
_UPDATE_PLAIN = """
UPDATE products SET name = coalesce(nullif(?, ''), name), currency = ?, price_minor = ?,
    promo_price_minor = NULL, promo_until_ms = NULL, version = ?, updated_ms = ?
WHERE sku = ? AND version < ?
"""
_UPDATE_GTIN = "UPDATE products SET gtin = ? WHERE sku = ?"


def _cached(conn: sqlite3.Connection, skus: Iterable[str]) -> tuple[dict[str, int], dict[str, str | None]]:
    """The version and the GTIN the cache holds for each of these skus it knows."""
    unique = list(dict.fromkeys(skus))
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples: a Row object per sku costs a third of the lookup
    versions: dict[str, int] = {}
    gtins: dict[str, str | None] = {}
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for sku, version, gtin in cursor.execute(
            f"SELECT sku, version, gtin FROM products WHERE sku IN ({marks})", chunk
        ):
            versions[sku] = version
            gtins[sku] = gtin
    return versions, gtins


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


def _statement_and_rows(
    batch: PriceBatch, indexes: list[int], now_ms: int, *, insert: bool
) -> tuple[str, Iterable[tuple[Any, ...]]]:
    """The INSERT or UPDATE of the items at `indexes`, with its rows built from the batch's columns."""
    everything = len(indexes) == len(batch)

    def column(name: str) -> Sequence[Any]:
        values: Sequence[Any] = getattr(batch, name)
        return values if everything else [values[i] for i in indexes]

    sku, name, currency, price, version = (column(c) for c in ("sku", "name", "currency", "price_minor", "version"))
    stamp = [now_ms] * len(sku)
    if batch.plain:
        if insert:
            return _INSERT_PLAIN, zip(sku, column("gtin"), name, currency, price, version, stamp, strict=True)
        return _UPDATE_PLAIN, zip(name, currency, price, version, stamp, sku, version, strict=True)
    extras = [column(c) for c in ("promo_price_minor", "promo_until_ms", "net_quantity", "net_unit")]
    if insert:
        return _INSERT, zip(sku, column("gtin"), name, currency, price, *extras, version, stamp, strict=True)
    return _UPDATE, zip(name, currency, price, *extras, version, stamp, sku, version, strict=True)


def apply_changes(conn: sqlite3.Connection, batch: PriceBatch, now: datetime) -> PriceApplication:
    """Apply or schedule each item in version order; skip stale and replayed ones."""
    now_ms = epoch_ms(now)
    current, gtins = _cached(conn, batch.sku)
    starts = batch.valid_from_ms
    # any(): some item has a start at all (0, the epoch, is long past)
    future = {i for i, at in enumerate(starts) if at is not None and at > now_ms} if any(starts) else set()
    already = _scheduled_versions(conn, (batch.sku[i] for i in future)) if future else set()
    inserts: list[int] = []
    updates: list[int] = []
    regtin: list[tuple[str, str]] = []
    schedule: list[tuple[str, int, int | None, str]] = []
    applied: list[str] = []
    scheduled: list[str] = []
    skipped = 0
    for index, (sku, version, gtin) in enumerate(zip(batch.sku, batch.version, batch.gtin, strict=True)):
        known = current.get(sku)
        if known is not None and version <= known:
            skipped += 1
        elif index in future:
            if (sku, version) in already:
                skipped += 1
                continue
            already.add((sku, version))
            schedule.append((sku, version, starts[index], msgspec.json.encode(batch.items[index]).decode()))
            scheduled.append(sku)
        else:
            current[sku] = version  # a sku that comes again in this batch is then known: an update
            if known is None:
                inserts.append(index)
            else:
                updates.append(index)
                if gtin is not None and gtin != gtins.get(sku):
                    regtin.append((gtin, sku))
            if gtin is not None:
                gtins[sku] = gtin  # what the cache holds once this item is written
            applied.append(sku)
    # in this order: a sku new to the cache may come twice in one file, the second time as an update
    if inserts:
        conn.executemany(*_statement_and_rows(batch, inserts, now_ms, insert=True))
    if updates:
        conn.executemany(*_statement_and_rows(batch, updates, now_ms, insert=False))
    if regtin:
        conn.executemany(_UPDATE_GTIN, regtin)
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
    result = apply_changes(conn, stored_items(row[2] for row in due), now)
    conn.executemany("DELETE FROM price_schedule WHERE sku = ? AND version = ?", ((r[0], r[1]) for r in due))
    return list(dict.fromkeys(result.applied))


def scheduled_prices(conn: sqlite3.Connection, skus: Iterable[str]) -> list[Price]:
    """The prices waiting for their instant, as they will read then (catalogue data from the cache)."""
    found = []
    for sku in dict.fromkeys(skus):
        cached = get_price(conn, sku)
        rows = conn.execute("SELECT item FROM price_schedule WHERE sku = ? ORDER BY version", (sku,)).fetchall()
        waiting = stored_items(row[0] for row in rows)
        for index in range(len(waiting)):
            change = waiting.change(index)
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
        self.gateway.bus.subscribe(ClockStepped, self._on_scheduled)  # due instants are wall-clock instants
        self.gateway.add_task("price-scheduler", self.run_scheduler)

    async def _on_scheduled(self, _signal: PricesScheduled | ClockStepped) -> None:
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
