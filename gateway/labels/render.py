"""Shelf label rendering with Pillow: name, price, promotion, unit price and a barcode that scans.

A label is drawn at the display's exact resolution in the display's own colours (a palette image:
white, black and red or yellow), so what is hashed is what the panel shows. `content_hash` is a
hash of the pixels, the size and the palette, not of a file encoding: the same content always
gives the same hash, on every machine, because the fonts ship with the package.

Prices read the French way: "12,99 €"; a promotion shows the old price struck through and
"jusqu'au 31/12". The barcode is an EAN-13 of the product's GTIN when the label is wide enough for
2-pixel modules, otherwise a QR code of the GTIN (or of the sku when there is no GTIN).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import qrcode  # type: ignore[import-untyped]
from PIL import Image, ImageDraw, ImageFont

from gateway.labels.content import DisplaySpec, LabelContent
from gateway.money import display

__all__ = ["DisplaySpec", "LabelContent", "RenderedLabel", "content_hash", "render", "to_jpeg", "to_png"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (204, 0, 0),
    "yellow": (255, 204, 0),
}

_FONT_DIR = Path(str(resources.files("gateway").joinpath("fonts")))
REGULAR = _FONT_DIR / "DejaVuSansCondensed.ttf"
BOLD = _FONT_DIR / "DejaVuSansCondensed-Bold.ttf"


@dataclass
class RenderedLabel:
    """The image, its content hash, and where each element was drawn (for tests and audits)."""

    image: Image.Image
    content_hash: str
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    barcode: str = ""


@lru_cache(maxsize=256)
def font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _palette_image(display_spec: DisplaySpec) -> Image.Image:
    image = Image.new("P", (display_spec.width, display_spec.height), 0)
    palette: list[int] = []
    for name in display_spec.colours:
        palette.extend(COLOURS[name])
    image.putpalette(palette + [0, 0, 0] * (256 - len(display_spec.colours)))
    return image


def _ink(display_spec: DisplaySpec, colour: str) -> int:
    return display_spec.colours.index(colour if colour in display_spec.colours else "black")


def fit_text(
    draw: ImageDraw.ImageDraw, text: str, path: Path, box_w: int, box_h: int, max_lines: int, start: int, floor: int = 8
) -> tuple[list[str], ImageFont.FreeTypeFont]:
    """The largest size (from `start` down) at which `text` fits the box in at most `max_lines` lines."""
    size = start
    while True:
        face = font(path, size)
        lines = _wrap(draw, text, face, box_w, max_lines)
        line_h = face.getbbox("Ég")[3] + 1
        if lines is not None and line_h * len(lines) <= box_h:
            return lines, face
        if size <= floor:
            lines = _wrap(draw, text, face, box_w, max_lines, force=True) or [text]
            return lines, face
        size -= 1


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, face: ImageFont.FreeTypeFont, width: int, max_lines: int, force: bool = False
) -> list[str] | None:
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=face) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        if draw.textlength(word, font=face) > width and not force:
            return None
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        if not force:
            return None
        lines = lines[:max_lines]
        while lines[-1] and draw.textlength(lines[-1] + "…", font=face) > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


# EAN-13 (ISO/IEC 15420): digit patterns of the left half (odd "L" and even "G" parity) and right half.
_L = ["0001101", "0011001", "0010011", "0111101", "0100011", "0110001", "0101111", "0111011", "0110111", "0001011"]
_G = ["0100111", "0110011", "0011011", "0100001", "0011101", "0111001", "0000101", "0010001", "0001001", "0010111"]
_R = ["1110010", "1100110", "1101100", "1000010", "1011100", "1001110", "1010000", "1000100", "1001000", "1110100"]
_PARITY = ["LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL"]


def ean13_modules(code: str) -> str:
    """The 95 modules (1 = bar) of an EAN-13 code (13 digits, check digit included)."""
    if len(code) != 13 or not code.isdigit():
        raise ValueError(f"an EAN-13 has 13 digits, not {code!r}")
    parity = _PARITY[int(code[0])]
    left = "".join((_L if p == "L" else _G)[int(d)] for p, d in zip(parity, code[1:7], strict=True))
    right = "".join(_R[int(d)] for d in code[7:])
    return "101" + left + "01010" + right + "101"


def _draw_ean13(image: Image.Image, ink: int, code: str, x: int, y: int, module: int, height: int) -> tuple[int, ...]:
    draw = ImageDraw.Draw(image)
    for index, bit in enumerate(ean13_modules(code)):
        if bit == "1":
            left = x + index * module
            draw.rectangle((left, y, left + module - 1, y + height - 1), fill=ink)
    return (x, y, x + 95 * module, y + height)


def _draw_qr(image: Image.Image, ink: int, data: str, x: int, y: int, size: int) -> tuple[int, ...]:
    qr = qrcode.QRCode(border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    matrix = qr.get_matrix()
    scale = max(1, size // len(matrix))
    draw = ImageDraw.Draw(image)
    for row, cells in enumerate(matrix):
        for col, cell in enumerate(cells):
            if cell:
                left, top = x + col * scale, y + row * scale
                draw.rectangle((left, top, left + scale - 1, top + scale - 1), fill=ink)
    side = len(matrix) * scale
    return (x, y, x + side, y + side)


def render(content: LabelContent, spec: DisplaySpec) -> RenderedLabel:
    """Draw one label at the display's resolution and colours."""
    image = _palette_image(spec)
    draw = ImageDraw.Draw(image)
    black, accent = _ink(spec, "black"), _ink(spec, spec.accent)
    w, h = spec.width, spec.height
    pad = max(3, h // 32)
    boxes: dict[str, tuple[int, int, int, int]] = {}

    wide = w >= h * 1.6  # 296x128 and the like: small texts beside the price; else under it
    name_h = int(h * (0.24 if wide else 0.22))
    lines, face = fit_text(draw, content.name or content.sku, BOLD, w - 2 * pad, name_h, 2, max(10, h // 7))
    line_h = face.getbbox("Ég")[3] + 1
    for index, line in enumerate(lines):
        draw.text((pad, pad + index * line_h), line, font=face, fill=black)
    boxes["name"] = (pad, pad, w - pad, pad + name_h)

    # The barcode along the bottom: EAN-13 with 2-pixel modules if it fits, else a QR code.
    code_h = int(h * (0.27 if wide else 0.30))
    code_top = h - pad - code_h
    use_ean = content.gtin is not None and len(content.gtin) == 13 and w >= 95 * 2 + 2 * 7 * 2 + 2 * pad
    if use_ean and content.gtin is not None:
        x = pad + 7 * 2 if wide else (w - 95 * 2) // 2
        boxes["barcode"] = _draw_ean13(image, black, content.gtin, x, code_top, 2, code_h)  # type: ignore[assignment]
    else:
        side = code_h - 2
        x = pad + 2 if wide else (w - side) // 2
        boxes["barcode"] = _draw_qr(image, black, content.gtin or content.sku, x, code_top + 1, side)  # type: ignore[assignment]

    # The price, as large as the space between the name and the barcode allows.
    promo = content.promo_price_minor is not None
    small_lines: list[str] = []
    if promo:
        small_lines = [display(content.price_minor, content.currency)]
        if content.promo_until:
            small_lines.append(f"jusqu'au {content.promo_until:%d/%m}")
    elif content.unit_price_minor is not None and content.unit:
        small_lines = [f"{display(content.unit_price_minor, content.currency)}/{content.unit}"]
    top, bottom = pad + name_h, code_top - pad
    if wide:
        price_box = (pad + (int(w * 0.30) if small_lines else 0), top, w - pad, bottom)
        small_box = (pad, top, int(w * 0.30), bottom)
    else:
        small_h = (bottom - top) // 4 if small_lines else 0
        price_box = (pad, top, w - pad, bottom - small_h)
        small_box = (pad, bottom - small_h, w - pad, bottom)
    price_text = display(content.shown_price_minor, content.currency)
    box_w, box_h = price_box[2] - price_box[0], price_box[3] - price_box[1]
    _, price_face = fit_text(draw, price_text, BOLD, box_w, box_h, 1, max(12, box_h))
    bbox = tuple(int(v) for v in price_face.getbbox(price_text))
    x = price_box[2] - (bbox[2] - bbox[0]) - bbox[0]
    y = price_box[1] + (box_h - (bbox[3] - bbox[1])) // 2 - bbox[1]
    draw.text((x, y), price_text, font=price_face, fill=accent if promo else black)
    boxes["price"] = (x + bbox[0], y + bbox[1], x + bbox[2], y + bbox[3])

    if small_lines:
        sw, sh = small_box[2] - small_box[0], small_box[3] - small_box[1]
        per_line = sh // (len(small_lines) if wide else 1)
        _, small = fit_text(
            draw, max(small_lines, key=len), REGULAR, sw, min(per_line, h // 5), 1, min(per_line, h // 5)
        )
        if wide:
            y0 = small_box[1] + (sh - per_line * len(small_lines)) // 2
            positions = [(small_box[0], y0 + i * per_line) for i in range(len(small_lines))]
        else:
            joined = "  ".join(small_lines)
            _, small = fit_text(draw, joined, REGULAR, sw, sh, 1, sh)
            small_lines = [joined]
            positions = [(small_box[2] - int(draw.textlength(joined, font=small)), small_box[1])]
        for (sx, sy), text in zip(positions, small_lines, strict=True):
            draw.text((sx, sy), text, font=small, fill=black)
        if promo:
            old = display(content.price_minor, content.currency)
            sx, sy = positions[0]
            ob = tuple(int(v) for v in small.getbbox(old))
            mid = sy + (ob[1] + ob[3]) // 2
            draw.line((sx, mid, sx + int(draw.textlength(old, font=small)), mid), fill=black, width=max(1, h // 60))
            boxes["old_price"] = (sx, sy + ob[1], sx + ob[2], sy + ob[3])
        else:
            boxes["unit_price"] = small_box
    return RenderedLabel(image, content_hash(image), boxes, "ean13" if use_ean else "qr")


def content_hash(image: Image.Image) -> str:
    """A hash of what the panel shows: size, palette and pixels (not of a file encoding)."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    palette = image.getpalette() or []
    digest.update(bytes(palette[: 3 * 4]))
    digest.update(image.tobytes())
    return digest.hexdigest()[:32]


def to_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def to_jpeg(image: Image.Image) -> bytes:
    """A baseline (not progressive) JPEG, which is all the OpenEPaperLink access point decodes."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=95, progressive=False, subsampling=0)
    return out.getvalue()
