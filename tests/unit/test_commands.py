"""The command path without a broker: validation, the inbox, version order, scheduled prices, stock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import outbox
from gateway.commands import Dispatcher
from gateway.db import StateDB
from gateway.pricing import PriceSet, apply_due, find_by_gtin, get_price, handle_price_set, next_due
from gateway.stock import StockAdjust, StockSet, get_level, handle_stock_adjust, handle_stock_set
from gateway.timeutil import rfc3339


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    state = StateDB(tmp_path / "state.db")
    yield state
    state.close_sync()


@pytest.fixture
def dispatcher() -> Dispatcher:
    d = Dispatcher(max_bytes=64 * 1024)
    d.register("price.set", PriceSet, handle_price_set)
    d.register("stock.set", StockSet, handle_stock_set)
    d.register("stock.adjust", StockAdjust, handle_stock_adjust)
    return d


def send(db: StateDB, dispatcher: Dispatcher, command: dict[str, Any] | bytes, topic: str | None = None):
    payload = command if isinstance(command, bytes) else json.dumps(command).encode()
    name = topic if topic is not None else (command.get("type") if isinstance(command, dict) else None)
    return db.transaction(lambda conn: dispatcher.handle(conn, payload, name))


def price_cmd(cid: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "type": "price.set", "sent_at": "2026-11-24T08:00:00+01:00", "data": {"items": list(items)}}


def item(sku: str = "A1", price: str = "12.99", version: int = 1, **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "price": price, "currency": "EUR", "version": version, **extra}


def results(db: StateDB) -> list[dict[str, Any]]:
    rows = db.conn.execute("SELECT data FROM outbox WHERE kind = 'command_result' ORDER BY seq").fetchall()
    return [json.loads(r[0]) for r in rows]


def test_price_set_is_applied_and_answered(db: StateDB, dispatcher: Dispatcher) -> None:
    result = send(db, dispatcher, price_cmd("c1", item(gtin="3017620422003", name="Pâte à tartiner 750 g")))
    assert (result.status, result.applied, result.skipped) == ("applied", 1, 0)
    price = get_price(db.conn, "A1")
    assert price is not None
    assert (price.price_minor, price.currency, price.version, price.name) == (1299, "EUR", 1, "Pâte à tartiner 750 g")
    assert results(db) == [
        {"command_id": "c1", "status": "applied", "applied": 1, "skipped": 0, "errors": [], "type": "price.set"}
    ]


def test_stale_and_replayed_versions_are_skipped(db: StateDB, dispatcher: Dispatcher) -> None:
    send(db, dispatcher, price_cmd("c1", item(version=5, price="2.00")))
    result = send(db, dispatcher, price_cmd("c2", item(version=4, price="1.00"), item(version=5, price="1.50")))
    assert (result.applied, result.skipped) == (0, 2)
    assert get_price(db.conn, "A1").price_minor == 200  # type: ignore[union-attr]
    result = send(db, dispatcher, price_cmd("c3", item(version=6, price="2.10"), item(version=6, price="9.99")))
    assert (result.applied, result.skipped) == (1, 1)
    assert get_price(db.conn, "A1").price_minor == 210  # type: ignore[union-attr]


def test_duplicate_command_id_changes_nothing(db: StateDB, dispatcher: Dispatcher) -> None:
    send(db, dispatcher, price_cmd("same", item(version=1, price="1.00")))
    again = send(db, dispatcher, price_cmd("same", item(version=2, price="9.00")))
    assert again.status == "duplicate"
    assert get_price(db.conn, "A1").price_minor == 100  # type: ignore[union-attr]
    assert [r["status"] for r in results(db)] == ["applied", "duplicate"]


def test_future_price_waits_for_its_instant(db: StateDB, dispatcher: Dispatcher) -> None:
    now = datetime.now(UTC)
    at = now + timedelta(hours=2)
    send(db, dispatcher, price_cmd("c1", item(version=1, price="1.00")))
    result = send(db, dispatcher, price_cmd("c2", item(version=2, price="0.80", valid_from=rfc3339(at))))
    assert (result.status, result.applied, result.extra) == ("applied", 1, {"scheduled": 1})
    assert get_price(db.conn, "A1").price_minor == 100  # type: ignore[union-attr]
    replay = send(db, dispatcher, price_cmd("c3", item(version=2, price="0.80", valid_from=rfc3339(at))))
    assert replay.skipped == 1
    assert abs((next_due(db.conn) - at).total_seconds()) < 0.01  # type: ignore[operator]
    assert db.transaction(lambda conn: apply_due(conn, now + timedelta(hours=1))) == []
    assert db.transaction(lambda conn: apply_due(conn, at)) == ["A1"]
    assert get_price(db.conn, "A1").price_minor == 80  # type: ignore[union-attr]
    assert next_due(db.conn) is None


def test_scheduled_price_never_goes_backwards(db: StateDB, dispatcher: Dispatcher) -> None:
    at = datetime.now(UTC) + timedelta(minutes=5)
    send(db, dispatcher, price_cmd("c1", item(version=3, price="1.00", valid_from=rfc3339(at))))
    send(db, dispatcher, price_cmd("c2", item(version=4, price="2.00")))
    assert db.transaction(lambda conn: apply_due(conn, at)) == []
    assert get_price(db.conn, "A1").price_minor == 200  # type: ignore[union-attr]


def test_promo_price_is_what_the_till_charges_until_it_ends(db: StateDB, dispatcher: Dispatcher) -> None:
    until = datetime(2030, 1, 1, tzinfo=UTC)
    send(db, dispatcher, price_cmd("c1", item(price="3.00", promo_price="2.49", promo_until=rfc3339(until))))
    price = get_price(db.conn, "A1")
    assert price is not None
    assert price.effective_minor(until - timedelta(seconds=1)) == 249
    assert price.effective_minor(until) == 300


def test_name_and_gtin_are_kept_when_an_item_leaves_them_out(db: StateDB, dispatcher: Dispatcher) -> None:
    send(db, dispatcher, price_cmd("c1", item(version=1, gtin="3017620422003", name="Nutella")))
    send(db, dispatcher, price_cmd("c2", item(version=2, price="13.49")))
    price = get_price(db.conn, "A1")
    assert (price.gtin, price.name, price.price_minor) == ("3017620422003", "Nutella", 1349)  # type: ignore[union-attr]


def test_a_price_without_promo_ends_the_promo_and_keeps_the_net_quantity(db: StateDB, dispatcher: Dispatcher) -> None:
    until = rfc3339(datetime.now(UTC) + timedelta(days=3))
    first = item(version=1, price="3.00", promo_price="2.49", promo_until=until, net_quantity="0.5", net_unit="kg")
    send(db, dispatcher, price_cmd("c1", first))
    price = get_price(db.conn, "A1")
    assert (price.promo_price_minor, price.net_quantity, price.net_unit) == (249, 0.5, "kg")  # type: ignore[union-attr]
    send(db, dispatcher, price_cmd("c2", item(version=2, price="3.10")))
    price = get_price(db.conn, "A1")
    assert (price.price_minor, price.promo_price_minor, price.promo_until) == (310, None, None)  # type: ignore[union-attr]
    assert (price.net_quantity, price.net_unit) == (0.5, "kg")  # type: ignore[union-attr]
    send(db, dispatcher, price_cmd("c3", item(version=3, price="3.20", promo_price="2.99")))
    assert get_price(db.conn, "A1").promo_price_minor == 299  # type: ignore[union-attr]


def test_a_new_gtin_replaces_the_old_one_and_the_till_finds_it(db: StateDB, dispatcher: Dispatcher) -> None:
    send(db, dispatcher, price_cmd("c1", item(version=1, gtin="3017620422003"), item(sku="B2", gtin="96385074")))
    # B2 keeps its GTIN (the same again); A1's changes: written apart from the price, found by the scanner
    send(
        db,
        dispatcher,
        price_cmd("c2", item(version=2, gtin="3017620425035"), item(sku="B2", version=2, gtin="96385074")),
    )
    assert find_by_gtin(db.conn, "3017620422003") is None
    assert find_by_gtin(db.conn, "3017620425035").sku == "A1"  # type: ignore[union-attr]
    assert find_by_gtin(db.conn, "96385074").version == 2  # type: ignore[union-attr]
    # a stale item's GTIN is not taken either
    send(db, dispatcher, price_cmd("c3", item(version=1, gtin="3017620422003")))
    assert find_by_gtin(db.conn, "3017620425035").sku == "A1"  # type: ignore[union-attr]


def test_a_gtin_changed_twice_in_one_command_ends_as_its_last_version_says(db: StateDB, dispatcher: Dispatcher) -> None:
    send(db, dispatcher, price_cmd("c1", item(version=1, gtin="3017620422003")))
    changes = [item(version=2, gtin="3017620425035"), item(version=3, gtin="3017620422003"), item(version=4)]
    assert send(db, dispatcher, price_cmd("c2", *changes)).applied == 3
    assert find_by_gtin(db.conn, "3017620422003").version == 4  # type: ignore[union-attr]
    assert find_by_gtin(db.conn, "3017620425035") is None


def test_a_file_mixing_promos_and_plain_prices_treats_each_item_as_alone(db: StateDB, dispatcher: Dispatcher) -> None:
    until = rfc3339(datetime.now(UTC) + timedelta(days=3))
    send(db, dispatcher, price_cmd("c1", item(sku="A", price="3.00", promo_price="2.49", promo_until=until,
                                               net_quantity="0.5", net_unit="kg")))  # fmt: skip
    # one file, two kinds of item: A without a promo (ends it, keeps its net quantity), B new with one
    send(db, dispatcher, price_cmd("c2", item(sku="A", version=2, price="3.10"), item(sku="B", promo_price="0.99")))
    a, b = get_price(db.conn, "A"), get_price(db.conn, "B")
    assert (a.price_minor, a.promo_price_minor, a.net_quantity, a.net_unit) == (310, None, 0.5, "kg")  # type: ignore[union-attr]
    assert (b.price_minor, b.promo_price_minor, b.net_quantity) == (1299, 99, None)  # type: ignore[union-attr]


def test_amounts_as_head_office_writes_them_in_any_currency(db: StateDB, dispatcher: Dispatcher) -> None:
    amounts = [("12.9", "EUR", 1290), ("7", "EUR", 700), ("0012.50", "EUR", 1250), ("1200", "JPY", 1200),
               ("1.250", "KWD", 1250), (".5", "USD", 50)]  # fmt: skip
    items = [{**item(sku=f"S{n}", price=price), "currency": currency} for n, (price, currency, _) in enumerate(amounts)]
    assert send(db, dispatcher, price_cmd("c1", *items)).applied == len(amounts)
    assert [get_price(db.conn, f"S{n}").price_minor for n in range(len(amounts))] == [m for *_, m in amounts]  # type: ignore[union-attr]


def test_a_new_sku_twice_in_one_command_ends_at_its_higher_version(db: StateDB, dispatcher: Dispatcher) -> None:
    result = send(
        db,
        dispatcher,
        price_cmd("c1", item(version=1, price="1.00", name="Lait"), item(version=3, price="3.00"), item(version=2)),
    )
    assert (result.applied, result.skipped) == (2, 1)
    price = get_price(db.conn, "A1")
    assert (price.price_minor, price.version, price.name) == (300, 3, "Lait")  # type: ignore[union-attr]


def test_every_bad_value_of_a_price_file_is_named_and_nothing_is_applied(db: StateDB, dispatcher: Dispatcher) -> None:
    result = send(
        db,
        dispatcher,
        price_cmd(
            "c1",
            item(sku="OK"),
            item(sku="B1", gtin="3017620422004"),
            item(sku="B2", price="1.999"),
            item(sku="B3", net_quantity="0.5"),
            item(sku="B4", promo_until="tomorrow"),
            item(sku="B5", net_quantity="nan", net_unit="kg"),
        ),
    )
    assert result.status == "rejected"
    assert [e.field for e in result.errors] == [
        "data.items[1].gtin",
        "data.items[2].price",
        "data.items[3].net_quantity",
        "data.items[4].promo_until",
        "data.items[5].net_quantity",
    ]
    assert result.errors[1].message == '"1.999" has more than 2 decimals for EUR'
    assert db.conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0


def test_every_bad_shape_of_a_price_file_is_named(db: StateDB, dispatcher: Dispatcher) -> None:
    # msgspec stops at the first; the documented pydantic model is asked and names them all
    result = send(
        db,
        dispatcher,
        price_cmd("c1", item(sku="OK"), item(sku="B1", price=3), item(sku="B2", colour="red"), {"sku": "B3"}),
    )
    assert result.status == "rejected"
    fields = [e.field for e in result.errors]
    assert fields[:2] == ["data.items[1].price", "data.items[2].colour"]
    assert {"data.items[3].price", "data.items[3].currency", "data.items[3].version"} <= set(fields)
    assert result.errors[0].message.startswith("must be a string; money is a decimal string")
    assert db.conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"currency": "eur"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"sku": "A\x01"}, "sku"),
        ({"sku": ""}, "sku"),
        ({"sku": "S" * 65}, "sku"),
        ({"name": "n" * 201}, "name"),
        ({"version": 2**63}, "version"),
        ({"version": True}, "version"),
        ({"version": 1.0}, "version"),
        ({"gtin": "٣٠١٧٦٢٠٤٢٢٠٠٣"}, "gtin"),  # Arabic-Indic digits: \d in a pattern, not a GTIN
        ({"gtin": 3017620422003}, "gtin"),
        ({"net_unit": "g", "net_quantity": "500"}, "net_unit"),
        ({"promo_price": "1,50"}, "promo_price"),
        ({"price": None}, "price"),
    ],
)
def test_the_fast_decoder_refuses_what_the_documented_schema_refuses(
    db: StateDB, dispatcher: Dispatcher, bad: dict[str, Any], field: str
) -> None:
    result = send(db, dispatcher, price_cmd("c1", {**item(), **bad}))
    assert result.status == "rejected", bad
    assert [e.field for e in result.errors] == [f"data.items[0].{field}"], result.errors
    assert result.errors[0].message
    assert db.conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0


def test_the_two_declarations_of_a_price_item_agree() -> None:
    import msgspec
    from pydantic import TypeAdapter

    from gateway.pricing import PriceItem, PriceItemSchema

    documented = TypeAdapter(PriceItemSchema).json_schema()
    fields = msgspec.structs.fields(PriceItem)
    assert [f.name for f in fields] == list(documented["properties"])
    assert {f.name for f in fields if f.required} == set(documented["required"])


def test_a_refusal_the_documented_model_does_not_explain_names_the_field_from_msgspec(db: StateDB) -> None:
    import msgspec

    from gateway.commands import CommandModel, Outcome

    class Strict(msgspec.Struct):
        count: int
        label: str  # the wire decoder needs it, the documented model does not

    class Loose(CommandModel):
        wire_decoder = msgspec.json.Decoder(Strict)
        count: int

    dispatcher = Dispatcher()
    dispatcher.register("test.strict", Loose, lambda context, data: Outcome(applied=data.count))
    ok = send(db, dispatcher, {"id": "t1", "type": "test.strict", "data": {"count": 2, "label": "x"}})
    assert (ok.status, ok.applied) == ("applied", 2)
    refused = send(db, dispatcher, {"id": "t2", "type": "test.strict", "data": {"count": 2}})
    assert refused.status == "rejected"
    assert [e.as_json() for e in refused.errors] == [
        {"field": "data.label", "message": "Object missing required field `label`"}
    ]


def test_msgspec_errors_name_the_field() -> None:
    import msgspec

    from gateway.commands import msgspec_error
    from gateway.pricing import PriceItems

    decoder = msgspec.json.Decoder(PriceItems)
    cases = {
        b'{"items": [{"sku": "A", "price": 1, "currency": "EUR", "version": 1}]}': "data.items[0].price",
        b'{"items": [{"sku": "A", "currency": "EUR", "version": 1}]}': "data.items[0].price",
        b'{"items": [{"sku": "A", "price": "1", "currency": "EUR", "version": 1, "x": 0}]}': "data.items[0].x",
        b'{"items": []}': "data.items",
        b'{"things": []}': "data.things",
    }
    for payload, field in cases.items():
        with pytest.raises(msgspec.ValidationError) as refused:
            decoder.decode(payload)
        assert msgspec_error(refused.value, "data").field == field, payload


def test_a_scheduled_price_is_stored_compactly_and_applied(db: StateDB, dispatcher: Dispatcher) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    send(db, dispatcher, price_cmd("c1", item(version=2, price="0.80", name="Lait", valid_from=rfc3339(at))))
    (stored,) = db.conn.execute("SELECT item FROM price_schedule").fetchone()
    assert json.loads(stored) == {"sku": "A1", "price": "0.80", "currency": "EUR", "name": "Lait",
                                  "valid_from": rfc3339(at), "version": 2}  # fmt: skip
    assert db.transaction(lambda conn: apply_due(conn, at)) == ["A1"]
    assert get_price(db.conn, "A1").price_minor == 80  # type: ignore[union-attr]


def test_a_price_scheduled_by_the_previous_release_is_still_applied(db: StateDB) -> None:
    # that release stored the item as a pydantic model dump: every field, absent ones as null
    stored = {
        "sku": "A1",
        "price": "4.20",
        "currency": "EUR",
        "gtin": None,
        "name": "Café",
        "promo_price": None,
        "promo_until": None,
        "valid_from": "2026-12-01T08:00:00Z",
        "net_quantity": "0.25",
        "net_unit": "kg",
        "version": 7,
    }
    db.transaction(
        lambda conn: conn.execute(
            "INSERT INTO price_schedule (sku, version, valid_from_ms, item) VALUES ('A1', 7, 0, ?)",
            (json.dumps(stored),),
        )
    )
    assert db.transaction(lambda conn: apply_due(conn, datetime.now(UTC))) == ["A1"]
    price = get_price(db.conn, "A1")
    assert (price.price_minor, price.name, price.net_quantity, price.net_unit) == (420, "Café", 0.25, "kg")  # type: ignore[union-attr]


def test_stock_set_adjust_and_ledger(db: StateDB, dispatcher: Dispatcher) -> None:
    send(
        db,
        dispatcher,
        {"id": "s1", "type": "stock.set", "data": {"items": [{"sku": "A1", "on_hand": 10, "version": 2}]}},
    )
    stale = send(
        db,
        dispatcher,
        {"id": "s2", "type": "stock.set", "data": {"items": [{"sku": "A1", "on_hand": 99, "version": 1}]}},
    )
    assert stale.skipped == 1
    send(db, dispatcher, {"id": "s3", "type": "stock.adjust", "data": {"sku": "A1", "delta": -3, "reason": "breakage"}})
    assert get_level(db.conn, "A1").on_hand == 7
    too_many = send(
        db, dispatcher, {"id": "s4", "type": "stock.adjust", "data": {"sku": "A1", "delta": -8, "reason": "sale"}}
    )
    assert too_many.status == "rejected"
    assert too_many.errors[0].field == "data.delta"
    assert get_level(db.conn, "A1").on_hand == 7
    ledger = db.conn.execute("SELECT delta, on_hand, reason FROM stock_ledger ORDER BY id").fetchall()
    assert [tuple(r) for r in ledger] == [(10, 10, "set"), (-3, 7, "breakage")]
    stock_events = [
        json.loads(r[0]) for r in db.conn.execute("SELECT data FROM outbox WHERE kind='stock' ORDER BY seq")
    ]
    assert stock_events[-1] == {"sku": "A1", "on_hand": 7, "reserved": 0, "available": 7, "reason": "breakage"}


def test_seq_rises_by_one_across_restarts_even_when_the_outbox_was_emptied(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = StateDB(path)
    first.transaction(lambda conn: [outbox.append(conn, "scan", {"n": i}) for i in range(3)])
    first.transaction(lambda conn: outbox.delete(conn, [1, 2, 3]))
    first.close_sync()
    second = StateDB(path)
    seq = second.transaction(lambda conn: outbox.append(conn, "scan", {"n": 3}))
    assert seq == 4
    event = outbox.pending(second.conn, 0, 10)[0]
    envelope = json.loads(event.envelope("0042"))
    assert (envelope["seq"], envelope["store"], envelope["type"], envelope["data"]) == (4, "0042", "scan", {"n": 3})
    second.close_sync()


def test_event_ids_are_random_uuid4_hex() -> None:
    import uuid

    ids = [outbox.event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids[:100]]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == i for u, i in zip(parsed, ids, strict=False))


async def test_group_commit_keeps_a_failing_job_apart(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    await db.start()

    def bad(conn: Any) -> None:
        outbox.append(conn, "scan", {"bad": True})
        raise RuntimeError("boom")

    import asyncio

    jobs = [db.write(lambda conn, i=i: outbox.append(conn, "scan", {"n": i})) for i in range(50)]
    outcomes = await asyncio.gather(*jobs[:25], db.write(bad), *jobs[25:], return_exceptions=True)
    await db.close()
    assert isinstance(outcomes[25], RuntimeError)
    again = StateDB(tmp_path / "state.db")
    rows = again.conn.execute("SELECT seq, data FROM outbox ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(1, 51))
    assert all("bad" not in r[1] for r in rows)
    again.close_sync()


# -- malformed commands: each is rejected with the field named, and nothing stops ------------------

BIG = json.dumps(price_cmd("big", *[item(sku=f"S{i}", version=1) for i in range(2000)])).encode()

MALFORMED: list[tuple[str, bytes | dict[str, Any], str | None, str]] = [
    ("not json", b"{not json", "price.set", "(command)"),
    ("not utf-8", b"\xff\xfe{}", "price.set", "(command)"),
    ("a JSON array", b"[1, 2]", "price.set", "(command)"),
    ("no id", {"type": "price.set", "data": {}}, "price.set", "id"),
    ("id is a number", {"id": 7, "type": "price.set", "data": {}}, "price.set", "id"),
    ("no data", {"id": "m6", "type": "price.set"}, "price.set", "data"),
    ("unknown envelope key", {"id": "m7", "type": "price.set", "data": {"items": [item()]}, "x": 1}, "price.set", "x"),
    ("unknown type", {"id": "m8", "type": "price.delete", "data": {}}, "price.delete", "type"),
    ("type differs from topic", {"id": "m9", "type": "stock.set", "data": {}}, "price.set", "type"),
    (
        "bad sent_at",
        {"id": "m10", "type": "price.set", "sent_at": "yesterday", "data": {"items": [item()]}},
        "price.set",
        "sent_at",
    ),
    ("no items", price_cmd("m11"), "price.set", "data.items"),
    ("price as a number", price_cmd("m12", item(price=12.99)), "price.set", "data.items[0].price"),
    ("price not decimal", price_cmd("m13", item(price="12,99")), "price.set", "data.items[0]"),
    ("too many decimals", price_cmd("m14", item(price="1.999")), "price.set", "data.items[0]"),
    ("bad currency", price_cmd("m15", {**item(), "currency": "euro"}), "price.set", "data.items[0].currency"),
    (
        "version missing",
        price_cmd("m16", {"sku": "A1", "price": "1.00", "currency": "EUR"}),
        "price.set",
        "data.items[0].version",
    ),
    ("version negative", price_cmd("m17", item(version=-1)), "price.set", "data.items[0].version"),
    ("bad gtin check digit", price_cmd("m18", item(gtin="3017620422004")), "price.set", "data.items[0].gtin"),
    (
        "valid_from without offset",
        price_cmd("m19", item(valid_from="2026-12-01T08:00:00")),
        "price.set",
        "data.items[0].valid_from",
    ),
    ("unknown item field", price_cmd("m20", item(colour="red")), "price.set", "data.items[0].colour"),
    ("oversized", BIG, "price.set", "(command)"),
    (
        "stock.adjust delta as string",
        {"id": "m22", "type": "stock.adjust", "data": {"sku": "A1", "delta": "3", "reason": "x"}},
        "stock.adjust",
        "data.delta",
    ),
    ("command not built yet", {"id": "m23", "type": "order.reserve", "data": {}}, "order.reserve", "type"),
]


@pytest.mark.parametrize(("case", "command", "topic", "field"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_command_is_rejected_naming_the_field(
    db: StateDB, dispatcher: Dispatcher, case: str, command: bytes | dict[str, Any], topic: str | None, field: str
) -> None:
    result = send(db, dispatcher, command, topic)
    assert result.status == "rejected", case
    assert any(e.field.startswith(field) for e in result.errors), [e.as_json() for e in result.errors]
    assert all(e.message for e in result.errors)
    answered = results(db)
    assert len(answered) == 1 and answered[0]["status"] == "rejected"
    assert db.conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0
    # the gateway goes on answering
    assert send(db, dispatcher, price_cmd(f"after-{case}", item())).status == "applied"


def test_at_least_twenty_kinds_of_malformed_command() -> None:
    assert len(MALFORMED) >= 20


def test_a_redelivery_of_an_answered_command_is_not_answered_again(db: StateDB, dispatcher: Dispatcher) -> None:
    payload = json.dumps(price_cmd("r1", item())).encode()
    first = db.transaction(lambda conn: dispatcher.handle(conn, payload, "price.set"))
    again = db.transaction(lambda conn: dispatcher.handle(conn, payload, "price.set", redelivered=True))
    assert (first.answered, again.answered) == (True, False)
    # a redelivery never seen before (the crash came before the commit) is applied and answered
    fresh = db.transaction(
        lambda conn: dispatcher.handle(conn, json.dumps(price_cmd("r2", item("B1"))).encode(), None, redelivered=True)
    )
    assert (fresh.status, fresh.answered) == ("applied", True)
    assert [r["command_id"] for r in results(db)] == ["r1", "r2"]


def test_a_duplicate_carries_the_first_outcome_also_of_a_rejection(db: StateDB, dispatcher: Dispatcher) -> None:
    bad = send(db, dispatcher, price_cmd("d1", item(price="1e400")))
    assert bad.status == "rejected"
    assert [(e.field, "too large" in e.message) for e in bad.errors] == [("data.items[0].price", True)]
    again = send(db, dispatcher, price_cmd("d1", item()))
    assert again.status == "duplicate"
    first = results(db)[-1]["first"]
    assert (first["status"], first["applied"], first["errors"][0]["field"]) == ("rejected", 0, "data.items[0].price")


@pytest.mark.parametrize(
    ("payload", "command_id", "field"),
    [
        (
            b'{"id":"n1","type":"price.set","data":{"items":[{"sku":"A","price":1e999999,"currency":"EUR","version":1}]}}',
            "n1",
            "data.items[0].price",
        ),
        (
            b'{"id":"n2","type":"stock.adjust","data":{"sku":"A","delta":' + b"9" * 5000 + b',"reason":"x"}}',
            "n2",
            "data.delta",
        ),
        (b'{"id":"n3","type":"stock.adjust","data":{"sku":' + b"[" * 5000 + b"]" * 5000 + b"}}", "n3", "data.sku[0]"),
        (b'{"x":' + b"[" * 5000 + b"]" * 5000 + b',"id":"n4","type":"price.set","data":{}}', "n4", "x[0][0]"),
        (b"[" * 100_000, None, "(command)"),  # unclosed: not JSON at all
        (b'{"id":"n5","type":"price.set","data":{"items":[{"sku":"\xc3\x28"}]}}', "n5", "data"),
        (b'{"id":"n6","type":"stock.adjust","sent_at":"9999-12-31T23:59:59-14:00","data":{}}', "n6", "sent_at"),
    ],
)
def test_payloads_that_break_the_decoder_are_rejected_naming_the_field(
    db: StateDB, dispatcher: Dispatcher, payload: bytes, command_id: str | None, field: str
) -> None:
    result = db.transaction(lambda conn: dispatcher.handle(conn, payload, None))
    assert (result.command_id, result.status, result.errors[0].field) == (command_id, "rejected", field)
    if command_id is not None:  # recorded: the same id again is a duplicate, not a second rejection
        assert send(db, dispatcher, payload).status == "duplicate"
