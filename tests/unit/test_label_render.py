"""Label rendering: every size and colour set, barcodes that scan (zxing-cpp), pixel hashes, price regions."""

from __future__ import annotations

import io
from datetime import date

import pytest
import zxingcpp
from PIL import Image, ImageChops

from gateway.labels.render import DisplaySpec, LabelContent, content_hash, ean13_modules, render, to_jpeg, to_png

SIZES = [(152, 152), (296, 128), (400, 300), (212, 104), (640, 384)]
COLOURS = [("white", "black", "red"), ("white", "black"), ("white", "black", "yellow")]
NUTELLA = "3017620422003"

PLAIN = LabelContent(
    "A1",
    "Pâte à tartiner aux noisettes et au cacao maigre 750 g",
    549,
    "EUR",
    gtin=NUTELLA,
    unit_price_minor=732,
    unit="kg",
)
PROMO = LabelContent(
    "B2", "Baguette tradition", 130, "EUR", promo_price_minor=99, promo_until=date(2026, 12, 31), gtin="96385074"
)
NO_GTIN = LabelContent("C3", "Œufs frais plein air ×12 — Élevage français", 399, "EUR")


def decode(image: Image.Image) -> list[tuple[str, str]]:
    return [(r.format.name, r.text) for r in zxingcpp.read_barcodes(image.convert("L"))]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("colours", COLOURS, ids=["bwr", "bw", "bwy"])
@pytest.mark.parametrize("content", [PLAIN, PROMO, NO_GTIN], ids=["plain", "promo", "no-gtin"])
def test_every_label_renders_at_its_size_in_its_colours_and_scans(
    size: tuple[int, int], colours: tuple[str, ...], content: LabelContent
) -> None:
    label = render(content, DisplaySpec(*size, colours))
    assert label.image.size == size
    assert label.image.mode == "P"
    used = {index for _, index in label.image.getcolors()}  # type: ignore[union-attr]
    assert used <= set(range(len(colours)))
    found = decode(label.image)
    expected = content.gtin or content.sku
    assert any(text == expected for _, text in found), found
    if label.barcode == "ean13":
        assert ("EAN13", expected) in found


def test_ean13_modules_match_the_standard() -> None:
    modules = ean13_modules(NUTELLA)
    assert len(modules) == 95
    assert modules.startswith("101") and modules.endswith("101") and modules[45:50] == "01010"
    with pytest.raises(ValueError):
        ean13_modules("123")


def test_hash_is_of_pixels_not_of_a_file() -> None:
    spec = DisplaySpec(296, 128)
    first, second = render(PLAIN, spec), render(PLAIN, spec)
    assert first.content_hash == second.content_hash
    reloaded = Image.open(io.BytesIO(to_png(first.image)))
    assert content_hash(reloaded) == first.content_hash
    cheaper = LabelContent(**{**PLAIN.__dict__, "price_minor": 499})
    assert render(cheaper, spec).content_hash != first.content_hash
    assert render(PLAIN, DisplaySpec(296, 128, ("white", "black"))).content_hash != first.content_hash


def test_jpeg_for_openepaperlink_is_baseline_at_the_exact_size() -> None:
    data = to_jpeg(render(PLAIN, DisplaySpec(296, 128)).image)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (296, 128)
    assert not image.info.get("progressive") and not image.info.get("progression")


def diff_box(a: Image.Image, b: Image.Image) -> tuple[int, int, int, int] | None:
    return ImageChops.difference(a.convert("L"), b.convert("L")).getbbox()


def inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


@pytest.mark.parametrize("size", [(296, 128), (400, 300), (152, 152)])
def test_the_price_region_shows_the_price_and_only_it_changes(size: tuple[int, int]) -> None:
    spec = DisplaySpec(*size)
    base = LabelContent("A1", "Lait demi-écrémé 1 L", 115, "EUR", gtin=NUTELLA)
    other_price = LabelContent("A1", "Lait demi-écrémé 1 L", 189, "EUR", gtin=NUTELLA)
    one, two = render(base, spec), render(other_price, spec)
    changed = diff_box(one.image, two.image)
    assert changed is not None
    union = (
        min(one.boxes["price"][0], two.boxes["price"][0]),
        min(one.boxes["price"][1], two.boxes["price"][1]),
        max(one.boxes["price"][2], two.boxes["price"][2]) + 1,
        max(one.boxes["price"][3], two.boxes["price"][3]) + 1,
    )
    assert inside(changed, union), (changed, union)
    # OCR-free: the price region of a label equals that of another product's label at the same price
    same_price_other_name = LabelContent("Z9", "Lait entier bio 1 L", 115, "EUR", gtin=NUTELLA)
    three = render(same_price_other_name, spec)
    region = one.boxes["price"]
    assert one.image.crop(region).tobytes() == three.image.crop(region).tobytes()
