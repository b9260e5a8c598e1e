"""What a label shows and on what display: plain data, no imaging library (plans import this, not Pillow)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class DisplaySpec:
    """A label's panel: resolution and colours, as the station reports them."""

    width: int = 296
    height: int = 128
    colours: tuple[str, ...] = ("white", "black", "red")

    @property
    def accent(self) -> str:
        """The colour promotions are drawn in: red or yellow when the panel has one."""
        for colour in ("red", "yellow"):
            if colour in self.colours:
                return colour
        return "black"


@dataclass(frozen=True)
class LabelContent:
    """What a label shows; money in minor units."""

    sku: str
    name: str
    price_minor: int
    currency: str
    promo_price_minor: int | None = None
    promo_until: date | None = None
    unit_price_minor: int | None = None
    unit: str | None = None
    gtin: str | None = None

    @property
    def shown_price_minor(self) -> int:
        return self.promo_price_minor if self.promo_price_minor is not None else self.price_minor
