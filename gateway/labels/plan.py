"""The label plan: which labels must change, and the state of every label, in the state database.

A label row holds what the label should show (`wanted_*`: the hash and price version of its
latest render) and what it was last confirmed to show (`confirmed_*`). A label is in sync when
its confirmed hash is the wanted one. Every transition writes a `label` event in the same
transaction. These are plain functions over a connection; the async label service drives them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from gateway import outbox
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome
from gateway.domain import Price, Sku
from gateway.labels.content import DisplaySpec, LabelContent
from gateway.money import from_minor
from gateway.pricing import get_price
from gateway.timeutil import epoch_ms, utc_now

LabelKey = tuple[str, str]  # (station, label)


class LabelAssignment(CommandModel):
    label: Annotated[str, Field(min_length=1, max_length=64)]
    sku: Sku
    station: Annotated[str, Field(min_length=1, max_length=64)]
    template: Annotated[str, Field(max_length=64)] | None = None


class LabelAssign(CommandModel):
    """`label.assign` data."""

    items: Annotated[list[LabelAssignment], Field(min_length=1, max_length=5000)]


class LabelFlash(CommandModel):
    """`label.flash` data: by label (with its station if ambiguous) or by sku."""

    label: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    station: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    sku: Sku | None = None
    color: Literal["red", "green", "blue", "yellow", "white", "cyan", "magenta"] = "green"
    seconds: Annotated[float, Field(gt=0, le=600)] = 10.0


@dataclass(frozen=True)
class LabelsToPlan:
    """Signal: these labels need a fresh render (assigned, or their price changed)."""

    keys: tuple[LabelKey, ...]


@dataclass(frozen=True)
class FlashRequested:
    """Signal: light these labels' LEDs."""

    keys: tuple[LabelKey, ...]
    color: str
    seconds: float


@dataclass(frozen=True)
class LabelRow:
    station: str
    label: str
    sku: str
    template: str | None
    width: int | None
    height: int | None
    colours: str | None
    state: str
    wanted_hash: str | None
    confirmed_hash: str | None
    attempts: int

    @property
    def key(self) -> LabelKey:
        return (self.station, self.label)

    @property
    def display(self) -> DisplaySpec | None:
        if not self.width or not self.height or not self.colours:
            return None
        return DisplaySpec(self.width, self.height, tuple(self.colours.split(",")))


_ROW = "station, label, sku, template, width, height, colours, state, wanted_hash, confirmed_hash, attempts"


def get_labels(conn: sqlite3.Connection, keys: Iterable[LabelKey]) -> list[LabelRow]:
    rows = []
    statement = f"SELECT {_ROW} FROM labels WHERE station = ? AND label = ?"
    for station, label in keys:
        row = conn.execute(statement, (station, label)).fetchone()
        if row is not None:
            rows.append(LabelRow(*row))
    return rows


def prices_of(conn: sqlite3.Connection, skus: Iterable[str]) -> dict[str, Price]:
    """Current prices of many skus in one read."""
    found = {}
    for sku in skus:
        price = get_price(conn, sku)
        if price is not None:
            found[sku] = price
    return found


def labels_for_skus(conn: sqlite3.Connection, skus: Iterable[str]) -> list[LabelKey]:
    keys: list[LabelKey] = []
    unique = list(dict.fromkeys(skus))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        keys += [(r[0], r[1]) for r in conn.execute(f"SELECT station, label FROM labels WHERE sku IN ({marks})", chunk)]
    return keys


def out_of_sync(conn: sqlite3.Connection) -> list[LabelKey]:
    """Labels to (re)plan at start: not confirmed, or confirmed for an older price version."""
    rows = conn.execute(
        "SELECT l.station, l.label FROM labels l LEFT JOIN products p ON p.sku = l.sku "
        "WHERE l.state IN ('pending', 'sent') OR l.wanted_version IS NOT p.version"
    )
    return [(r[0], r[1]) for r in rows]


def content_for(price: Price, now: datetime) -> LabelContent:
    """What a label of this product shows now."""
    promo = price.promo_price_minor
    if promo is not None and price.promo_until is not None and now >= price.promo_until:
        promo = None
    unit_price = None
    if price.net_quantity and price.net_unit in ("kg", "l", "m", "m2"):
        unit_price = round(price.effective_minor(now) / price.net_quantity)
    return LabelContent(
        sku=price.sku,
        name=price.name,
        price_minor=price.price_minor,
        currency=price.currency,
        promo_price_minor=promo,
        promo_until=price.promo_until.date() if (promo is not None and price.promo_until) else None,
        unit_price_minor=unit_price,
        unit=price.net_unit if unit_price is not None else None,
        gtin=price.gtin,
    )


def label_event(row: LabelRow, status: str, content_hash: str | None, price: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"label": row.label, "sku": row.sku, "station": row.station, "status": status}
    if price is not None:
        data["price"] = price
    data["content_hash"] = content_hash
    return data


def set_display(conn: sqlite3.Connection, key: LabelKey, spec: DisplaySpec) -> None:
    conn.execute(
        "UPDATE labels SET width = ?, height = ?, colours = ? WHERE station = ? AND label = ?",
        (spec.width, spec.height, ",".join(spec.colours), *key),
    )


def want(conn: sqlite3.Connection, key: LabelKey, content_hash: str, version: int, price: str) -> bool:
    """Record what the label should show now. False if it already shows it (confirmed, nothing to send)."""
    row = conn.execute(
        "SELECT confirmed_hash, wanted_hash, state, wanted_version FROM labels WHERE station = ? AND label = ?", key
    ).fetchone()
    if row is None or (row[3] is not None and version < row[3]):
        return False  # a render of an older price, finished after a newer one: never go backwards
    now_ms = epoch_ms(utc_now())
    if row[0] == content_hash:
        conn.execute(
            "UPDATE labels SET wanted_hash = ?, wanted_version = ?, wanted_price = ?, confirmed_version = ?, "
            "state = 'confirmed', attempts = 0, last_error = NULL, updated_ms = ? WHERE station = ? AND label = ?",
            (content_hash, version, price, version, now_ms, *key),
        )
        return False
    new_image = row[1] != content_hash or row[2] == "failed"
    conn.execute(
        "UPDATE labels SET wanted_hash = ?, wanted_version = ?, wanted_price = ?, updated_ms = ?, "
        "state = CASE WHEN ? THEN 'pending' ELSE state END, attempts = CASE WHEN ? THEN 0 ELSE attempts END "
        "WHERE station = ? AND label = ?",
        (content_hash, version, price, now_ms, new_image, new_image, *key),
    )
    return True


def mark_sent(conn: sqlite3.Connection, key: LabelKey, content_hash: str) -> bool:
    """The image went to the station; False if it is no longer the wanted one (a newer price came)."""
    row = get_labels(conn, [key])
    if not row or row[0].wanted_hash != content_hash:
        return False
    price = conn.execute("SELECT wanted_price FROM labels WHERE station = ? AND label = ?", key).fetchone()[0]
    conn.execute(
        "UPDATE labels SET state = 'sent', attempts = attempts + 1, sent_ms = ?, updated_ms = ? "
        "WHERE station = ? AND label = ?",
        (epoch_ms(utc_now()), epoch_ms(utc_now()), *key),
    )
    outbox.append(conn, "label", label_event(row[0], "sent", content_hash, price))
    return True


def mark_confirmed(conn: sqlite3.Connection, key: LabelKey, content_hash: str) -> bool:
    """The station says the tag shows `content_hash`. Only the wanted image confirms the label."""
    rows = get_labels(conn, [key])
    if not rows:
        return False
    row = rows[0]
    wanted = conn.execute(
        "SELECT wanted_version, wanted_price FROM labels WHERE station = ? AND label = ?", key
    ).fetchone()
    if row.wanted_hash != content_hash:
        # an older image reached the tag; the newer one is still on its way
        conn.execute(
            "UPDATE labels SET confirmed_hash = ?, updated_ms = ? WHERE station = ? AND label = ?",
            (content_hash, epoch_ms(utc_now()), *key),
        )
        return False
    conn.execute(
        "UPDATE labels SET state = 'confirmed', confirmed_hash = ?, confirmed_version = ?, confirmed_price = ?, "
        "attempts = 0, last_error = NULL, updated_ms = ? WHERE station = ? AND label = ?",
        (content_hash, wanted[0], wanted[1], epoch_ms(utc_now()), *key),
    )
    outbox.append(conn, "label", label_event(row, "confirmed", content_hash, wanted[1]))
    return True


def mark_failed_try(conn: sqlite3.Connection, key: LabelKey, content_hash: str, retries: int, detail: str) -> bool:
    """A transfer failed. True if the label may be tried again; else it is `failed` (event)."""
    rows = get_labels(conn, [key])
    if not rows or rows[0].wanted_hash != content_hash:
        return False
    row = rows[0]
    if row.attempts <= retries:
        conn.execute(
            "UPDATE labels SET state = 'pending', last_error = ?, updated_ms = ? WHERE station = ? AND label = ?",
            (detail, epoch_ms(utc_now()), *key),
        )
        return True
    price = conn.execute("SELECT wanted_price FROM labels WHERE station = ? AND label = ?", key).fetchone()[0]
    conn.execute(
        "UPDATE labels SET state = 'failed', last_error = ?, updated_ms = ? WHERE station = ? AND label = ?",
        (detail, epoch_ms(utc_now()), *key),
    )
    data = label_event(row, "failed", content_hash, price)
    data["error"] = detail
    outbox.append(conn, "label", data)
    return False


def make_assign_handler(stations: dict[str, Any]) -> Any:
    """The `label.assign` handler; `stations` maps station id to its driver (for label id checks)."""

    def handle(context: CommandContext, data: LabelAssign) -> Outcome:
        errors = []
        keys = []
        for index, item in enumerate(data.items):
            station = stations.get(item.station)
            if station is None:
                known = ", ".join(sorted(stations)) or "none configured"
                errors.append(
                    FieldError(f"data.items[{index}].station", f'no label station "{item.station}" ({known})')
                )
                continue
            try:
                label = station.normalise_id(item.label)
            except ValueError as exc:
                errors.append(FieldError(f"data.items[{index}].label", str(exc)))
                continue
            keys.append((item.station, label, item.sku, item.template))
        if errors:
            raise CommandRejected(errors)
        now_ms = epoch_ms(context.now)
        for station_id, label, sku, template in keys:
            context.conn.execute(
                "INSERT INTO labels (station, label, sku, template, state, updated_ms) "
                "VALUES (?, ?, ?, ?, 'pending', ?) "
                "ON CONFLICT (station, label) DO UPDATE SET sku = excluded.sku, template = excluded.template, "
                "state = 'pending', wanted_hash = NULL, wanted_version = NULL, attempts = 0, "
                "updated_ms = excluded.updated_ms",
                (station_id, label, sku, template, now_ms),
            )
        context.after_commit(LabelsToPlan(tuple((s, label) for s, label, _, _ in keys)))
        return Outcome(applied=len(keys))

    return handle


def labels_of_station(conn: sqlite3.Connection, station: str) -> list[str]:
    """The ids of the labels assigned on a station."""
    return [row[0] for row in conn.execute("SELECT label FROM labels WHERE station = ?", (station,))]


def make_flash_handler(stations: dict[str, Any]) -> Any:
    """The `label.flash` handler; a label on a station whose tags have no LED is refused, by name."""

    def handle(context: CommandContext, data: LabelFlash) -> Outcome:
        return handle_flash(context, data, lit=lambda station: bool(getattr(stations.get(station), "has_led", True)))

    return handle


def handle_flash(context: CommandContext, data: LabelFlash, lit: Callable[[str], bool] | None = None) -> Outcome:
    """The `label.flash` command: by label, or every label of a sku (those with an LED)."""
    if data.label is None and data.sku is None:
        raise CommandRejected([FieldError("data", "give label or sku")])
    if data.label is not None:
        sql, args = "SELECT station, label FROM labels WHERE label = ?", [data.label]
        if data.station:
            sql += " AND station = ?"
            args.append(data.station)
        keys = [(r[0], r[1]) for r in context.conn.execute(sql, args)]
        if not keys:
            raise CommandRejected([FieldError("data.label", f'no assigned label "{data.label}"')])
    else:
        keys = labels_for_skus(context.conn, [data.sku or ""])
        if not keys:
            raise CommandRejected([FieldError("data.sku", f'no label shows sku "{data.sku}"')])
    if lit is not None:
        dark = [key for key in keys if not lit(key[0])]
        keys = [key for key in keys if lit(key[0])]
        if not keys:
            field = "data.label" if data.label is not None else "data.sku"
            where = ", ".join(sorted({f"{label} on {station}" for station, label in dark}))
            raise CommandRejected([FieldError(field, f"no LED to flash: the tags of {where} have none")])
    context.after_commit(FlashRequested(tuple(keys), data.color, data.seconds))
    return Outcome(applied=len(keys))


def price_text(price: Price, now: datetime) -> str:
    return from_minor(price.effective_minor(now), price.currency)


def audit(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Skus whose labels do not all show the current price (not confirmed for the current version)."""
    rows = conn.execute(
        "SELECT l.sku, count(*), sum(l.state = 'failed'), p.version "
        "FROM labels l LEFT JOIN products p ON p.sku = l.sku "
        "WHERE l.state != 'confirmed' OR l.confirmed_version IS NOT p.version GROUP BY l.sku ORDER BY l.sku LIMIT ?",
        (limit,),
    )
    return [{"sku": r[0], "labels_not_current": r[1], "failed": r[2] or 0, "price_version": r[3]} for r in rows]


def status_section(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """`status`'s labels section: counts by state, the oldest unconfirmed, and the price audit."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'labels'").fetchone()
    if exists is None:
        return None
    by_state = {str(r[0]): int(r[1]) for r in conn.execute("SELECT state, count(*) FROM labels GROUP BY state")}
    oldest = conn.execute("SELECT min(updated_ms) FROM labels WHERE state IN ('pending', 'sent')").fetchone()[0]
    age = None if oldest is None else round((epoch_ms(utc_now()) - int(oldest)) / 1000, 1)
    return {"by_state": by_state, "oldest_unconfirmed_s": age, "skus_not_showing_current_price": audit(conn, 20)}
