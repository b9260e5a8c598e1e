"""What a scanned code means: GTINs, GS1 element strings, in-store weight/price codes, order codes.

GS1 parsing is biip's (GTIN-8/12/13/14 with check digits, GS1-128 / DataMatrix / QR element
strings). Only the in-store restricted-circulation layouts are ours: biip has no French region,
and which prefix means what differs by country and by retailer, so it is a table (`InStoreRules`)
with a French default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal

# AIM symbology identifiers a store scanner commonly sends (ISO/IEC 15424).
SYMBOLOGIES = {
    "]E0": "EAN-13",
    "]E4": "EAN-8",
    "]E3": "EAN-13 with add-on",
    "]C0": "Code 128",
    "]C1": "GS1-128",
    "]d1": "Data Matrix",
    "]d2": "GS1 DataMatrix",
    "]Q1": "QR Code",
    "]Q3": "GS1 QR Code",
    "]e0": "GS1 DataBar",
    "]A0": "Code 39",
    "]I0": "Interleaved 2 of 5",
}

ORDER_PREFIX = "ORDER:"


@dataclass(frozen=True)
class InStoreRule:
    """One layout of a restricted-circulation EAN-13: `PP IIIII VVVVV C` by default.

    prefix: the first two digits; kind: what the value digits carry; item_digits/value_digits: the
    lengths after the prefix (item_digits + value_digits == 10); decimals: of the value (2 for
    cents, 3 for kilograms to the gram).
    """

    prefix: str
    kind: Literal["price", "weight"]
    item_digits: int = 5
    value_digits: int = 5
    decimals: int = 2


@dataclass(frozen=True)
class InStoreRules:
    """The store's in-store code layouts. The default is a common French layout; set it per retailer."""

    rules: tuple[InStoreRule, ...] = (
        *(InStoreRule(str(p), "price", decimals=2) for p in range(20, 25)),
        *(InStoreRule(str(p), "weight", decimals=3) for p in range(25, 30)),
        InStoreRule("02", "weight", decimals=3),
    )
    currency: str = "EUR"

    def find(self, code: str) -> InStoreRule | None:
        for rule in self.rules:
            if code.startswith(rule.prefix):
                return rule
        return None


FRENCH_RULES = InStoreRules()


@dataclass(frozen=True)
class ScannedCode:
    """The meaning of one scan. `gtin` is the catalogue key (variable part zeroed for in-store codes)."""

    raw: str
    symbology: str | None = None
    gtin: str | None = None
    batch: str | None = None
    expiry: date | None = None
    serial: str | None = None
    net_weight_g: int | None = None
    price_minor: int | None = None
    currency: str | None = None
    order: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def known_kind(self) -> bool:
        return self.gtin is not None or self.order is not None


def _in_store(code: str, rules: InStoreRules) -> tuple[str, int | None, int | None] | None:
    """(lookup GTIN, price in minor units, weight in g) of a restricted-circulation EAN-13, or None."""
    if len(code) != 13 or not code.isdigit():
        return None
    rule = rules.find(code)
    if rule is None:
        return None
    from biip.checksums import gs1_standard_check_digit

    start = len(rule.prefix) + rule.item_digits
    value = int(code[start : start + rule.value_digits])
    body = code[:start] + "0" * (12 - start)
    lookup = body + str(gs1_standard_check_digit(body))
    if rule.kind == "price":
        return lookup, value, None
    grams = int(Decimal(value).scaleb(-rule.decimals) * 1000)
    return lookup, None, grams


def interpret(raw: str, symbology_id: str | None = None, rules: InStoreRules = FRENCH_RULES) -> ScannedCode:
    """Read a scanned code; never raises (what cannot be read is in `problems`)."""
    import biip  # imported on first use: a store without scanners never loads it

    symbology = SYMBOLOGIES.get(symbology_id or "", symbology_id)
    text = raw.strip()
    if text.upper().startswith(ORDER_PREFIX):
        order = text[len(ORDER_PREFIX) :].strip()
        return ScannedCode(raw, symbology, order=order or None, problems=[] if order else ["empty order code"])
    try:
        result = biip.parse((symbology_id or "") + text)
    except Exception as exc:  # biip raises ParseError (and friends) on codes it cannot read at all
        return ScannedCode(raw, symbology, problems=[str(exc)])
    problems = [str(e) for e in (result.gtin_error, result.gs1_message_error) if e]
    values: dict[str, object] = {}
    message = result.gs1_message
    # A bare 13-digit GTIN also "parses" as an element string (2123456012996 as AI 21): without a
    # symbology identifier, element strings count only when the code is not a GTIN.
    bare_gtin = symbology_id is None and result.gtin is not None and len(text) in (8, 12, 13, 14)
    if message is not None and not bare_gtin and symbology_id in (None, "]C1", "]d2", "]Q3", "]e0"):
        for element in message.element_strings:
            ai = element.ai.ai
            if ai == "10":
                values["batch"] = element.value
            elif ai == "17" and element.date is not None:
                values["expiry"] = element.date
            elif ai == "21":
                values["serial"] = element.value
            elif ai.startswith("310") and element.decimal is not None:
                values["net_weight_g"] = int(element.decimal * 1000)
            elif ai.startswith("392") and element.decimal is not None:
                values["price_minor"] = int(element.decimal * 100)
                values["currency"] = rules.currency
            elif ai.startswith("393") and element.decimal is not None and len(element.value) > 3:
                values["price_minor"] = int(element.decimal * 100)
                values["currency"] = _iso_currency(element.value[:3]) or rules.currency
            elif ai == "400":
                values["order"] = element.value
    gtin = None
    if result.gtin is not None:
        gtin = result.gtin.value
        if len(gtin) == 14 and gtin.startswith("0"):
            gtin = gtin[1:]  # the catalogue keeps GTIN-13s; a GTIN-14 of a trade unit stays 14 digits
        in_store = _in_store(gtin, rules)
        if in_store is not None:
            gtin, price, grams = in_store
            if price is not None:
                values["price_minor"], values["currency"] = price, rules.currency
            if grams is not None:
                values["net_weight_g"] = grams
        problems = [p for p in problems if result.gtin_error is None or p != str(result.gtin_error)]
    elif not values and not problems:
        problems.append("not a GTIN or GS1 element string")
    if gtin is not None or values:
        problems = [] if gtin is not None else problems
    return ScannedCode(raw, symbology, gtin=gtin, problems=problems, **values)  # type: ignore[arg-type]


def _iso_currency(numeric: str) -> str | None:
    return {"978": "EUR", "840": "USD", "826": "GBP", "756": "CHF", "752": "SEK", "208": "DKK", "578": "NOK"}.get(
        numeric
    )
