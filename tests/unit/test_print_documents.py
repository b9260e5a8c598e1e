"""Printed documents as bytes: code page 858 text with accents and €, native QR, barcodes, the cut."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.printers import decode_status
from gateway.printing.documents import DOCUMENT_MODELS, StoreHeader, render_document
from tests.peers.escpos_printer import CUT, PrinterState, barcode_data, qr_data, status_byte, text_of

STORE = StoreHeader("Supérette Bellecour", ("12 place Bellecour", "69002 Lyon"), "Merci de votre visite !")
LINES = [{"name": "Pâte à tartiner", "qty": 2, "unit_price": "5.49", "sku": "A1", "location": "R3"}]


def test_receipt_text_in_cp858_with_euro_and_accents() -> None:
    data = render_document(
        "receipt",
        {
            "number": "T-0042",
            "lines": LINES,
            "total": "10.98",
            "vat": [{"rate": "5.5", "amount": "0.57"}],
            "payment": "carte",
        },
        STORE,
    )
    assert data.startswith(b"\x1b@\x1bt\x13")  # ESC @ (initialise), then ESC t 19: code page 858, chosen once
    assert "€".encode("cp858") == b"\xd5" and b"\xd5" in data
    text = text_of(data)
    for expected in ("Supérette Bellecour", "2 x Pâte à tartiner", "10,98 €", "TOTAL", "Merci de votre visite !"):
        assert expected in text, expected
    assert CUT.search(data[-6:]), "the document ends with a cut"


def test_pickup_slip_has_the_order_qr_and_code128() -> None:
    data = render_document(
        "pickup_slip", {"order": "CC-1042", "customer": "Mme Dupont", "lines": LINES, "location": "Casier 12"}, STORE
    )
    assert qr_data(data) == ["ORDER:CC-1042"]
    assert (73, "{BCC-1042") in barcode_data(data)  # GS k 73 = CODE128, code set B
    text = text_of(data)
    assert "Commande CC-1042" in text and "Mme Dupont" in text and "Casier 12" in text


def test_shelf_ticket_ean13_and_return_receipt() -> None:
    data = render_document(
        "shelf_ticket",
        {"name": "Comté AOP", "price": "5.20", "unit_price": "26.00", "unit": "kg", "gtin": "3017620422003"},
        STORE,
        width_chars=32,
    )
    assert b"\x1dk\x023017620422003\x00" in data  # GS k m=2 (EAN-13), NUL-terminated
    assert "26,00 € / kg" in text_of(data)
    ret = render_document(
        "return_receipt", {"order": "WEB-77", "lines": LINES, "refund": "5.49", "reason": "défectueux"}, STORE
    )
    assert "Remboursement" in text_of(ret) and "5,49 €" in text_of(ret)
    assert "é è à ç" in text_of(render_document("test_page", {}, STORE))


@pytest.mark.parametrize(
    ("document", "data", "field"),
    [
        ("receipt", {"number": "1", "lines": [], "total": "1.00"}, "lines"),
        ("pickup_slip", {"order": "X", "lines": LINES}, "customer"),
        ("shelf_ticket", {"name": "X", "price": 1.5}, "price"),
        ("receipt", {"number": "1", "lines": LINES, "total": "1.00", "colour": "red"}, "colour"),
    ],
)
def test_bad_document_data_names_the_field(document: str, data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        DOCUMENT_MODELS[document].model_validate(data)
    assert any(field in str(e["loc"]) for e in info.value.errors())


def test_status_bytes_decode_like_an_epson() -> None:
    for state, expected in [
        (PrinterState(), None),
        (PrinterState(paper_out=True), "paper_out"),
        (PrinterState(cover_open=True), "cover_open"),
        (PrinterState(paper_low=True), "paper_low"),
    ]:
        status = decode_status(*(status_byte(n, state) for n in (1, 2, 3, 4)))
        assert status.detail == expected
    assert decode_status(0x12, 0x12, 0x12, 0x12).ready
    assert not decode_status(0x1A, 0x32, 0x12, 0x7E).ready
