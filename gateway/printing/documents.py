"""The documents a store prints, rendered to ESC/POS bytes with python-escpos's Dummy printer.

Each document has a pydantic model for its data (unknown fields are errors, money is a decimal
string). Every document starts with ESC @ (initialise) and ends with a cut. Text is sent in code
page 858 (ESC t 19): it has é è à ç and the euro sign (0xD5), where python-escpos's automatic
encoding would hop between code pages mid-line.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.money import display, to_minor

CODE_PAGE = "CP858"
Money = Annotated[str, Field(pattern=r"^-?\d{1,9}(\.\d{1,3})?$")]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Line(_Doc):
    name: Annotated[str, Field(min_length=1, max_length=120)]
    qty: Annotated[int, Field(ge=1, le=100_000)] = 1
    unit_price: Money | None = None
    amount: Money | None = None
    vat_rate: Money | None = None
    sku: str | None = None
    location: str | None = None


class Receipt(_Doc):
    number: Annotated[str, Field(min_length=1, max_length=40)]
    lines: Annotated[list[Line], Field(min_length=1)]
    total: Money
    currency: str = "EUR"
    vat: list[dict[str, str]] = []
    payment: str | None = None


class PickupSlip(_Doc):
    order: Annotated[str, Field(min_length=1, max_length=64)]
    customer: Annotated[str, Field(min_length=1, max_length=80)]
    lines: Annotated[list[Line], Field(min_length=1)]
    location: str | None = None
    title: str = "Retrait commande"


class ReturnReceipt(_Doc):
    order: Annotated[str, Field(min_length=1, max_length=64)]
    lines: Annotated[list[Line], Field(min_length=1)]
    refund: Money
    currency: str = "EUR"
    reason: str | None = None


class ShelfTicket(_Doc):
    name: Annotated[str, Field(min_length=1, max_length=120)]
    price: Money
    currency: str = "EUR"
    unit_price: Money | None = None
    unit: str | None = None
    gtin: str | None = None

    @field_validator("gtin")
    @classmethod
    def _ean13(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 13 or not value.isdigit()):
            raise ValueError("an EAN-13 has 13 digits")
        return value


class PrinterTestPage(_Doc):
    note: str | None = None


DOCUMENT_MODELS: dict[str, type[_Doc]] = {
    "receipt": Receipt,
    "pickup_slip": PickupSlip,
    "return_receipt": ReturnReceipt,
    "shelf_ticket": ShelfTicket,
    "test_page": PrinterTestPage,
}


@dataclass(frozen=True)
class StoreHeader:
    """Printed at the top and bottom of store documents (from [store] in the config)."""

    name: str = ""
    address: tuple[str, ...] = ()
    footer: str = ""


def money(amount: str, currency: str) -> str:
    return display(
        to_minor(amount, currency) if not amount.startswith("-") else -to_minor(amount[1:], currency), currency
    )


class _Page:
    """A thin layer over Dummy: one code page, widths in characters, quiet stdout."""

    def __init__(self, width: int) -> None:
        self.width = width
        from escpos.printer import Dummy  # a large capabilities table: loaded with the first document

        with contextlib.redirect_stdout(io.StringIO()):
            self.p = Dummy()
            self.p.hw("INIT")  # ESC @: no job inherits a mode that the last one or a power blip left behind
            self.p.charcode(CODE_PAGE)

    def text(self, text: str = "", *, bold: bool = False, big: bool = False, center: bool = False) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.p.set(bold=bold, double_height=big, double_width=big, align="center" if center else "left")
            self.p.text(text + "\n")
            self.p.set(bold=False, double_height=False, double_width=False, align="left")

    def row(self, left: str, right: str) -> None:
        space = max(1, self.width - len(left) - len(right))
        if len(left) + len(right) + 1 > self.width:
            self.text(left[: self.width])
            self.text(right.rjust(self.width))
        else:
            self.text(left + " " * space + right)

    def rule(self) -> None:
        self.text("-" * self.width)

    def qr(self, data: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.p.set(align="center")
            self.p.qr(data, native=True, size=6)
            self.p.set(align="left")

    def code128(self, data: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.p.barcode("{B" + data, "CODE128", function_type="B", height=80, width=2)

    def ean13(self, code: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.p.barcode(code, "EAN13", height=80, width=2)

    def finish(self) -> bytes:
        with contextlib.redirect_stdout(io.StringIO()):
            self.p.text("\n\n")
            self.p.cut()
        return bytes(self.p.output)


def _header(page: _Page, store: StoreHeader) -> None:
    if store.name:
        page.text(store.name, bold=True, center=True)
    for line in store.address:
        page.text(line, center=True)
    if store.name or store.address:
        page.rule()


def _lines(page: _Page, lines: list[Line], currency: str) -> None:
    for line in lines:
        amount = line.amount or (str(Decimal(line.unit_price) * line.qty) if line.unit_price is not None else None)
        label = f"{line.qty} x {line.name}" if line.qty > 1 else line.name
        page.row(label, money(amount, currency) if amount else "")


def _receipt(page: _Page, doc: Receipt, store: StoreHeader) -> None:
    _header(page, store)
    page.text(f"Ticket {doc.number}")
    page.rule()
    _lines(page, doc.lines, doc.currency)
    page.rule()
    page.row("TOTAL", money(doc.total, doc.currency))
    for vat in doc.vat:
        page.row(f"dont TVA {vat.get('rate', '')} %", money(vat.get("amount", "0"), doc.currency))
    if doc.payment:
        page.text(f"Paiement : {doc.payment}")


def _pickup(page: _Page, doc: PickupSlip, store: StoreHeader) -> None:
    _header(page, store)
    page.text(doc.title, bold=True, big=True, center=True)
    page.text(f"Commande {doc.order}", bold=True)
    page.text(f"Client : {doc.customer}")
    if doc.location:
        page.text(f"Emplacement : {doc.location}", bold=True)
    page.rule()
    for line in doc.lines:
        where = f" [{line.location}]" if line.location else ""
        page.row(f"{line.qty} x {line.name}{where}", line.sku or "")
    page.rule()
    page.qr(f"ORDER:{doc.order}")
    page.code128(doc.order)


def _return(page: _Page, doc: ReturnReceipt, store: StoreHeader) -> None:
    _header(page, store)
    page.text("Retour", bold=True, big=True, center=True)
    page.text(f"Commande {doc.order}")
    if doc.reason:
        page.text(f"Motif : {doc.reason}")
    page.rule()
    _lines(page, doc.lines, doc.currency)
    page.rule()
    page.row("Remboursement", money(doc.refund, doc.currency))


def _shelf(page: _Page, doc: ShelfTicket, store: StoreHeader) -> None:
    page.text(doc.name, bold=True)
    page.text(money(doc.price, doc.currency), bold=True, big=True, center=True)
    if doc.unit_price and doc.unit:
        page.text(f"{money(doc.unit_price, doc.currency)} / {doc.unit}", center=True)
    if doc.gtin:
        page.ean13(doc.gtin)


def _test(page: _Page, doc: PrinterTestPage, store: StoreHeader) -> None:
    _header(page, store)
    page.text("Page de test", bold=True, big=True, center=True)
    page.text("Accents : é è à ç ù ô - euro : 12,99 €")
    page.text(f"{page.width} caractères par ligne".ljust(page.width, "."))
    if doc.note:
        page.text(doc.note)


_RENDERERS: dict[str, Callable[[_Page, Any, StoreHeader], None]] = {
    "receipt": _receipt,
    "pickup_slip": _pickup,
    "return_receipt": _return,
    "shelf_ticket": _shelf,
    "test_page": _test,
}


def render_document(document: str, data: Mapping[str, Any] | _Doc, store: StoreHeader, width_chars: int = 48) -> bytes:
    """ESC/POS bytes of a document (validated with its model unless already a model)."""
    model = DOCUMENT_MODELS[document]
    doc = data if isinstance(data, model) else model.model_validate(data)
    page = _Page(width_chars)
    _RENDERERS[document](page, doc, store)
    if store.footer and document != "shelf_ticket":
        page.rule()
        page.text(store.footer, center=True)
    return page.finish()
