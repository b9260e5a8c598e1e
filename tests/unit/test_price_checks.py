"""A price file checked and applied as a whole does what its items would do one at a time.

`check_items` checks a whole column at once (one regex for the amounts, the GTIN check digits of
every item in one pass), and `apply_changes` writes a batch with a few statements; these properties
hold them to the plain per-item rules (`to_minor`, `gtin_is_valid`, the sku and currency rules) and
to applying the items one by one.
"""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from biip.checksums import gs1_standard_check_digit
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commands import CommandRejected
from gateway.db import StateDB
from gateway.money import is_currency_code, to_minor
from gateway.pricing import PriceItem, apply_changes, check_items, gtin_is_valid, gtins_are_valid


def gtin(body: str) -> str:
    return body + str(gs1_standard_check_digit(body))


def mistyped(code: str, position: int, digit: int) -> str:
    return code[:position] + str(digit) + code[position + 1 :]


@st.composite
def gtin_codes(draw: st.DrawFn, length: int, clean: bool = False) -> str:
    """A code of `length` digits with its check digit; unless `clean`, sometimes mistyped or odd."""
    code = gtin(draw(st.text("0123456789", min_size=length - 1, max_size=length - 1)))
    kind = "valid" if clean else draw(st.sampled_from(["valid"] * 6 + ["mistyped", "other", "arabic", "text"]))
    if kind == "mistyped":
        return mistyped(code, draw(st.integers(0, length - 1)), draw(st.integers(0, 9)))
    if kind == "other":
        return gtin(draw(st.text("0123456789", min_size=7, max_size=13)))
    if kind == "arabic":
        return code.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    if kind == "text":
        return draw(st.text(max_size=16))
    return code


GS1_LENGTHS = st.sampled_from([8, 12, 13, 14])
LENGTHS = st.sampled_from([8, 12, 13, 14, 7, 15])
# columns as price files hold them: one length, mostly valid, some codes mistyped or odd
gtin_columns = LENGTHS.flatmap(lambda length: st.lists(gtin_codes(length), max_size=40))


@settings(max_examples=400, deadline=None)
@given(gtin_columns)
def test_a_gtin_column_is_checked_as_each_code_would_be(codes: list[str]) -> None:
    assert gtins_are_valid(codes) == all(gtin_is_valid(code) for code in codes)


def test_a_gtin_column_with_one_bad_check_digit_among_many_is_refused() -> None:
    codes = [gtin(f"376{n:09d}") for n in range(5000)]
    assert gtins_are_valid(codes)
    codes[4321] = mistyped(codes[4321], 12, (int(codes[4321][12]) + 1) % 10)
    assert not gtins_are_valid(codes)


CANONICAL = st.integers(0, 10**8).map(lambda cents: f"{cents // 100}.{cents % 100:02d}")  # most files
# valid, but not as the fast path reads them: it must step aside, not misread "12.9" as 1.29
VALID = st.one_of(
    CANONICAL, CANONICAL, CANONICAL, st.sampled_from(["12.9", "7", "12.", ".5", "0012.50", "1234567890123.45"])
)
AMOUNTS = st.one_of(
    CANONICAL,
    st.from_regex(r"[0-9]{1,14}(\.[0-9]{0,4})?", fullmatch=True),
    st.sampled_from(["12.9", "7", ".5", "12.", "1.999", "1e3", "-1.00", " 12.99", "12.99\n", "1.00\n2.00", "1_000.00"]),
    st.sampled_from(["١٢.٣٤", "12,99", "NaN", "Infinity", "0012.50", "1234567890123.45", ""]),
    st.text(max_size=8),
)
CLEAN_SKUS = st.from_regex(r"[A-Z0-9-]{1,12}", fullmatch=True)
SKUS = st.one_of(CLEAN_SKUS, st.text(min_size=1, max_size=6))


@st.composite
def price_items(draw: st.DrawFn) -> list[PriceItem]:
    """Files of every kind: valid throughout (in EUR, so the fast paths may take them) or odd anywhere."""
    clean = draw(st.booleans())
    currencies = ["EUR"] if clean else draw(st.sampled_from([["EUR"], ["EUR", "JPY", "KWD"], ["EUR", "eur"]]))
    amounts = VALID if clean else AMOUNTS
    items = []
    for _ in range(draw(st.integers(1, 25))):
        items.append(
            PriceItem(
                sku=draw(CLEAN_SKUS if clean else SKUS),
                price=draw(amounts),
                currency=draw(st.sampled_from(currencies)),
                gtin=draw(st.none() | (GS1_LENGTHS if clean else LENGTHS).flatmap(lambda n: gtin_codes(n, clean))),
                promo_price=draw(st.none() | amounts),
                version=draw(st.integers(0, 2**40)),
            )
        )
    return items


_CONTROL = re.compile(r"[\x00-\x1f]")


def one_by_one(item: PriceItem) -> tuple[dict[str, Any], set[str]]:
    """The plain rules, one item and one field at a time: the values, and the fields that break a rule."""
    values: dict[str, Any] = {}
    bad = set()
    if _CONTROL.search(item.sku):
        bad.add("sku")
    if not is_currency_code(item.currency):
        bad.add("currency")
    for field in ("price", "promo_price"):
        amount = getattr(item, field)
        try:
            values[field] = None if amount is None else to_minor(amount, item.currency)
        except ValueError:
            bad.add(field)
    if item.gtin is not None and not gtin_is_valid(item.gtin):
        bad.add("gtin")
    return values, bad


@settings(max_examples=300, deadline=None)
@given(price_items())
def test_column_checks_agree_with_the_rules_of_one_item(items: list[PriceItem]) -> None:
    expected = [one_by_one(item) for item in items]
    refused = {f"data.items[{i}].{field}" for i, (_, bad) in enumerate(expected) for field in bad}
    if refused:
        with pytest.raises(CommandRejected) as rejected:
            check_items(items)
        assert {error.field for error in rejected.value.errors} == refused
        return
    batch = check_items(items)
    assert list(batch.price_minor) == [values["price"] for values, _ in expected]
    assert list(batch.promo_price_minor) == [values["promo_price"] for values, _ in expected]
    assert list(batch.sku) == [item.sku for item in items]
    assert list(batch.gtin) == [item.gtin for item in items]


def test_errors_are_listed_by_item_then_by_field() -> None:
    items = [
        PriceItem(sku="B\x01", price="1,00", currency="EUR", gtin="3017620422004", version=1),
        PriceItem(sku="A", price="1.00", currency="eur", version=1),
    ]
    with pytest.raises(CommandRejected) as rejected:
        check_items(items)
    assert [e.field for e in rejected.value.errors] == [
        "data.items[0].sku",
        "data.items[0].price",
        "data.items[0].gtin",
        "data.items[1].currency",
    ]


def test_an_amount_holding_a_line_break_cannot_shift_the_prices_of_the_next_items() -> None:
    # the amounts are checked as one text, a line each: "1.00\n2.00" would read as two of them
    items = [PriceItem(sku=f"S{n}", price=price, currency="EUR", version=1) for n, price in enumerate(
        ["3.00", "1.00\n2.00", "4.00", "5.00"]
    )]  # fmt: skip
    with pytest.raises(CommandRejected) as rejected:
        check_items(items)
    assert [e.field for e in rejected.value.errors] == ["data.items[1].price"]


# -- a batch ends as the rules of contract.md say, item after item ---------------------------------

POOL_GTINS = ["3017620422003", "96385074"]


@st.composite
def price_files(draw: st.DrawFn) -> list[list[PriceItem]]:
    """Files over two skus and two GTINs: a sku comes back within a file and from earlier files, mostly
    newer (each file spans three versions above the last), sometimes stale or equal."""
    files = []
    for number in range(draw(st.integers(2, 4))):
        items = []
        for _ in range(draw(st.integers(1, 8))):
            net = draw(st.none() | st.sampled_from([("0.5", "kg"), ("1", "l")]))
            items.append(
                PriceItem(
                    sku=draw(st.sampled_from(["A", "B"])),
                    price=draw(st.sampled_from(["1.00", "2.50", "3.10"])),
                    currency="EUR",
                    gtin=draw(st.none() | st.sampled_from(POOL_GTINS)),
                    name=draw(st.none() | st.sampled_from(["", "Lait", "Café"])),
                    promo_price=draw(st.none() | st.sampled_from(["0.99", "1.49"])),
                    net_quantity=None if net is None else net[0],
                    net_unit=None if net is None else net[1],
                    version=2 * number + draw(st.integers(0, 2)),
                )
            )
        files.append(items)
    return files


def by_the_rules(catalogue: dict[str, dict[str, Any]], item: PriceItem) -> bool:
    """One item applied to a catalogue as contract.md and docs/mqtt-api.md say; whether it applied."""
    old = catalogue.get(item.sku)
    if old is not None and item.version <= old["version"]:
        return False  # stale or replayed: never backwards
    old = old or {"gtin": None, "name": "", "net_quantity": None, "net_unit": None}
    catalogue[item.sku] = {
        "gtin": item.gtin if item.gtin is not None else old["gtin"],  # left out: kept
        "name": item.name or old["name"],  # left out or empty: kept
        "currency": item.currency,
        "price_minor": to_minor(item.price, item.currency),
        "promo_price_minor": None if item.promo_price is None else to_minor(item.promo_price, item.currency),
        "net_quantity": float(item.net_quantity) if item.net_quantity is not None else old["net_quantity"],
        "net_unit": item.net_unit if item.net_unit is not None else old["net_unit"],
        "version": item.version,
    }
    return True


@settings(max_examples=200, deadline=None)
@given(price_files())
def test_a_price_file_ends_as_its_items_would_one_after_the_other(files: list[list[PriceItem]]) -> None:
    now = datetime.now(UTC)
    expected: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = StateDB(Path(tmp) / "state.db")
        for items in files:
            result = db.transaction(lambda conn, items=items: apply_changes(conn, check_items(items), now))
            applied = [by_the_rules(expected, item) for item in items]
            assert (len(result.applied), result.skipped) == (sum(applied), applied.count(False))
        columns = "sku, gtin, name, currency, price_minor, promo_price_minor, net_quantity, net_unit, version"
        cached = db.conn.execute(f"SELECT {columns} FROM products ORDER BY sku").fetchall()
        db.close_sync()
    assert [dict(row) for row in cached] == [{"sku": sku, **expected[sku]} for sku in sorted(expected)]


# -- hq push-prices checks a CSV the same way, and names each bad line ------------------------------


def test_every_bad_line_of_a_price_csv_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    from gateway.hq import HqError, read_price_csv

    csv_file = tmp_path / "prices.csv"
    csv_file.write_text(
        "sku,price,currency,gtin,version\n"
        "A1,12.99,EUR,3017620422003,\n"  # line 2: good
        "A2,1.999,EUR,,\n"  # 3: too many decimals
        "A3,2.00,EUR,,v7\n"  # 4: version not a number
        "A4,2.00,euro,3017620422004,\n"  # 5: currency (shape) is checked line by line
        "A5,1,50,EUR,,\n"  # 6: a comma in the price shifts the columns after it
        "A6,3.00,EUR,3017620422004,\n"  # 7: bad check digit
        "A7,3.00,eur,,\n",  # 8: currency not ISO
        encoding="utf-8",
    )
    with pytest.raises(HqError) as refused:
        read_price_csv(csv_file, version=1)
    header, *report = str(refused.value).splitlines()
    assert header.endswith("6 bad lines, nothing sent:")
    named = [tuple(line.split(": ")[:2]) for line in report]
    assert named == sorted(named, key=lambda pair: int(pair[0].removeprefix("line ")))  # by line
    assert {line for line, _ in named} == {f"line {n}" for n in (3, 4, 5, 6, 7, 8)}
    assert report[0] == 'line 3: price: "1.999" has more than 2 decimals for EUR'
    assert {field for line, field in named if line == "line 5"} == {"currency", "gtin"}  # every bad field
    assert ("line 7", "gtin") in named and ("line 8", "currency") in named
    good = tmp_path / "good.csv"
    good.write_text("sku,price,currency,gtin\nA1,12.99,EUR,3017620422003\nA2,7,JPY,\n", encoding="utf-8")
    assert read_price_csv(good, version=5).items == [
        {"sku": "A1", "price": "12.99", "currency": "EUR", "gtin": "3017620422003", "version": 5},
        {"sku": "A2", "price": "7", "currency": "JPY", "version": 5},
    ]
