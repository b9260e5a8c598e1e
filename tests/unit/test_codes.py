"""Scanned codes: GS1 examples (GS1 General Specifications), in-store codes, order codes, framing."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.scanners import Framing, LineFramer
from gateway.codes import InStoreRule, InStoreRules, interpret
from gateway.pricing import gtin_is_valid

GS = "\x1d"  # FNC1 as scanners transmit it inside GS1 element strings

CASES = [
    # (raw, AIM id, expected fields)
    ("3017620422003", None, {"gtin": "3017620422003"}),
    ("3017620422003", "]E0", {"gtin": "3017620422003", "symbology": "EAN-13"}),
    ("96385074", "]E4", {"gtin": "96385074", "symbology": "EAN-8"}),
    ("036000291452", None, {"gtin": "036000291452"}),  # UPC-A (GTIN-12)
    ("10614141000415", None, {"gtin": "10614141000415"}),  # GTIN-14 of a trade unit
    (
        "01030176204220031724063010ABC123" + GS + "21XYZ",
        "]C1",
        {
            "gtin": "3017620422003",
            "expiry": date(2024, 6, 30),
            "batch": "ABC123",
            "serial": "XYZ",
            "symbology": "GS1-128",
        },
    ),
    # GS1 General Specifications §3.6.2 style: (01) GTIN, (3103) net weight 1.500 kg, (3922) price 1.99
    ("0103017620422003310300150039220199", "]C1", {"gtin": "3017620422003", "net_weight_g": 1500, "price_minor": 199}),
    ("0103017620422003393297801299", "]C1", {"price_minor": 1299, "currency": "EUR"}),  # (3932) ISO 978 = EUR
    (
        "010301762042200317261231",
        "]d2",
        {"gtin": "3017620422003", "expiry": date(2026, 12, 31), "symbology": "GS1 DataMatrix"},
    ),
    (
        "0109506000134352" + "10" + "AB-123" + GS + "21" + "ABC123",
        "]d2",
        {"gtin": "09506000134352"[1:], "batch": "AB-123", "serial": "ABC123"},
    ),
    # French in-store codes (default table): 21 = price in cents, 02 = weight in grams
    ("2123456012996", None, {"gtin": "2123456000009", "price_minor": 1299, "currency": "EUR"}),
    ("0212345015001", None, {"gtin": "0212345000007", "net_weight_g": 1500}),
    ("ORDER:CC-1042", "]Q1", {"order": "CC-1042", "gtin": None}),
    ("4001042", "]C1", {"order": "1042"}),  # (400) customer's purchase order number
]


@pytest.mark.parametrize(("raw", "aim", "expected"), CASES, ids=[c[0][:24] for c in CASES])
def test_gs1_and_store_codes(raw: str, aim: str | None, expected: dict[str, object]) -> None:
    code = interpret(raw, aim)
    for key, value in expected.items():
        assert getattr(code, key) == value, (key, code)


@pytest.mark.parametrize("raw", ["3017620422004", "hello", "", "12345"])
def test_codes_that_are_not_products_have_problems_and_no_gtin(raw: str) -> None:
    code = interpret(raw)
    assert code.gtin is None and code.order is None
    assert code.problems


def test_expected_gtins_have_valid_check_digits() -> None:
    for _raw, _, expected in CASES:
        gtin = expected.get("gtin")
        if isinstance(gtin, str):
            assert gtin_is_valid(gtin), gtin


@pytest.mark.parametrize("body", ["9638507", "03600029145", "301762042200", "1001234567891"])
def test_exactly_one_check_digit_makes_a_gtin_valid(body: str) -> None:
    # the check digit by the GS1 definition: weights 3, 1, 3, ... from the right of the body
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    expected = (10 - total % 10) % 10
    assert [d for d in range(10) if gtin_is_valid(f"{body}{d}")] == [expected]
    assert not gtin_is_valid(body + "x") and not gtin_is_valid("١" * (len(body) + 1))


def test_in_store_rules_are_a_setting() -> None:
    weight_everywhere = InStoreRules(rules=(InStoreRule("21", "weight", decimals=3),))
    code = interpret("2123456012996", rules=weight_everywhere)
    assert (code.net_weight_g, code.price_minor) == (1299, None)


def test_framing_cr_lf_crlf_and_split_reads() -> None:
    for suffix, sep in (("CR", b"\r"), ("LF", b"\n"), ("CRLF", b"\r\n")):
        framer = LineFramer(Framing(suffix=suffix))  # type: ignore[arg-type]
        assert framer.feed(b"30176204") == []
        assert framer.feed(b"22003" + sep + b"96385") == [("3017620422003", None)]
        assert framer.feed(b"074" + sep) == [("96385074", None)]


def test_framing_aim_prefix_and_gap() -> None:
    framer = LineFramer(Framing(aim_prefix=True))
    assert framer.feed(b"]E03017620422003\r") == [("3017620422003", "]E0")]
    assert framer.feed(b"3017620422003\r") == []  # configured for AIM, a bare code is noise
    gap = LineFramer(Framing(suffix="gap"))
    gap.feed(b"]C10103017620422003")
    assert gap.flush() == [("0103017620422003", "]C1")]


def test_framing_drops_garbage_and_keeps_going() -> None:
    framer = LineFramer(Framing(max_length=32))
    assert framer.feed(b"\xff\xfe\xfa\r") == []
    assert framer.feed(b"A" * 100 + b"\r") == []
    assert framer.feed(b"bad\x07bell\r3017620422003\r") == [("3017620422003", None)]
    assert framer.dropped == 3


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.sampled_from(["CR", "LF", "CRLF", "gap"]))
def test_random_bytes_never_crash_and_a_good_code_still_comes_out(chunks: list[bytes], suffix: str) -> None:
    framer = LineFramer(Framing(suffix=suffix, max_length=128))  # type: ignore[arg-type]
    for chunk in chunks:
        for text, _ in framer.feed(chunk):
            assert isinstance(text, str)
            interpret(text)  # never raises either
    framer.flush()
    sep = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "gap": b""}[suffix]
    framer.feed(sep + sep)  # end whatever garbage was pending
    framer.flush()
    out = framer.feed(b"3017620422003" + sep) + framer.flush()
    assert ("3017620422003", None) in out


def test_price_check_answers_from_the_cache(tmp_path: object) -> None:
    from pathlib import Path

    from gateway.config import ScannerConfig
    from gateway.db import StateDB
    from gateway.pricing import apply_changes, check_items, convert_item
    from gateway.scanning import price_check, reply_line

    db = StateDB(Path(str(tmp_path)) / "s.db")
    now = datetime.now(UTC)
    item = convert_item(
        {
            "sku": "N1",
            "price": "5.49",
            "currency": "EUR",
            "gtin": "3017620422003",
            "name": "Pâte à tartiner",
            "version": 1,
        }
    )
    db.transaction(lambda conn: apply_changes(conn, check_items([item]), now))
    config = ScannerConfig(id="k", port="/dev/null")
    answer = price_check(db.conn, interpret("3017620422003"), now)
    assert reply_line(config, answer) == "Pâte à tartiner\t5,49 €"
    unknown = price_check(db.conn, interpret("96385074"), now)
    assert reply_line(config, unknown) == "unknown article"
    db.close_sync()
