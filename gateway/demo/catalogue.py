"""The demo store's catalogue: ~200 French grocery products with valid GTINs, prices and stock."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from biip.checksums import gs1_standard_check_digit

from gateway.pricing import gtin_is_valid

_BASE = [
    ("Pâte à tartiner noisettes 750 g", "5.49"),
    ("Baguette tradition 250 g", "1.30"),
    ("Lait demi-écrémé 1 L", "1.15"),
    ("Beurre doux 250 g", "2.89"),
    ("Camembert de Normandie AOP 250 g", "3.45"),
    ("Yaourt nature x8", "2.10"),
    ("Café moulu pur arabica 250 g", "4.79"),
    ("Thé vert à la menthe 20 sachets", "2.65"),
    ("Pâtes spaghetti 500 g", "1.09"),
    ("Riz basmati 1 kg", "2.99"),
    ("Huile d'olive vierge extra 75 cl", "8.95"),
    ("Eau minérale naturelle 6 x 1,5 L", "3.20"),
    ("Jus d'orange pressé 1 L", "2.75"),
    ("Crème fraîche épaisse 20 cl", "1.69"),
    ("Œufs frais plein air x12", "3.99"),
    ("Jambon de Paris 4 tranches", "3.35"),
    ("Comté AOP 18 mois 200 g", "5.20"),
    ("Pommes Golden 1 kg", "2.49"),
    ("Tomates grappe 500 g", "2.19"),
    ("Chocolat noir 70 % 100 g", "1.89"),
]
_VARIANTS = [
    "",
    " bio",
    " marque distributeur",
    " format familial",
    " sans sucres ajoutés",
    " édition limitée",
    " lot de 2",
    " éco-recharge",
    " premium",
    " petit prix",
]


@dataclass(frozen=True)
class DemoProduct:
    sku: str
    gtin: str
    name: str
    price: str
    on_hand: int


def demo_products() -> list[DemoProduct]:
    """200 products; the first is the well-known 3017620422003 so the README's scan works."""
    products = []
    for index in range(200):
        base, price = _BASE[index % len(_BASE)]
        variant = _VARIANTS[index // len(_BASE)]
        if index == 0:
            gtin = "3017620422003"
        else:
            body = f"376000{index:06d}"
            gtin = body + str(gs1_standard_check_digit(body))
        assert gtin_is_valid(gtin)
        adjusted = (Decimal(price) * (1 + Decimal(index // len(_BASE)) / 20)).quantize(Decimal("0.01"))
        products.append(DemoProduct(f"DEMO-{index + 1:04d}", gtin, base + variant, str(adjusted), 5 + index % 17))
    return products


def write_price_csv(path: Path, products: list[DemoProduct], price_factor: float = 1.0) -> None:
    """A price file in the `hq push-prices` format (no version column: the push time is the version)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "price", "currency", "gtin", "name"])
        for product in products:
            price = (Decimal(product.price) * Decimal(str(price_factor))).quantize(Decimal("0.01"))
            writer.writerow([product.sku, str(price), "EUR", product.gtin, product.name])
