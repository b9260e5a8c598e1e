"""The shop's shared vocabulary: types every service may use, and the requests one service makes of another.

Services never import each other (an import-linter contract in pyproject.toml keeps it so). What they
share lives here: the shape of a sku and of a price, the signals of the catalogue, and the typed
requests that only the owning service handles (`Bus.serve` / `Bus.ask`). A request is answered inside
the asker's transaction, so the work it asks for is committed together with the asker's own work or
not at all: a return receipt is never lost between the stock move and the print queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field

from gateway.money import from_minor
from gateway.timeutil import rfc3339

R = TypeVar("R")

MAX_ITEMS = 5000
"""Items in one bulk command (`price.set`, `stock.set`, `label.assign`)."""

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]


@dataclass(frozen=True)
class Price:
    """A product's current price as the shelf and the till must show it."""

    sku: str
    gtin: str | None
    name: str
    currency: str
    price_minor: int
    promo_price_minor: int | None
    promo_until: datetime | None
    net_quantity: float | None
    net_unit: str | None
    version: int

    def effective_minor(self, now: datetime) -> int:
        """The price charged now: the promo price while the promotion runs."""
        if self.promo_price_minor is not None and (self.promo_until is None or now < self.promo_until):
            return self.promo_price_minor
        return self.price_minor

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sku": self.sku,
            "price": from_minor(self.price_minor, self.currency),
            "currency": self.currency,
            "version": self.version,
        }
        if self.gtin:
            data["gtin"] = self.gtin
        if self.name:
            data["name"] = self.name
        if self.promo_price_minor is not None:
            data["promo_price"] = from_minor(self.promo_price_minor, self.currency)
            if self.promo_until:
                data["promo_until"] = rfc3339(self.promo_until)
        return data


@dataclass(frozen=True)
class PricesChanged:
    """Signal: these skus have a new current price (label plans listen)."""

    skus: tuple[str, ...]


@dataclass(frozen=True)
class PricesScheduled:
    """Signal: these skus have a price waiting for a future instant (labels may pre-render)."""

    skus: tuple[str, ...]


class Request(Generic[R]):
    """A piece of work one service asks of the service that owns it; `R` is what the owner answers."""


@dataclass(frozen=True)
class PrintRequest(Request[str]):
    """Queue a document on a printer (answer: the job id). Raises `DocumentRefused` if the owner refuses it."""

    printer: str
    document: str
    data: dict[str, Any]
    ref: str | None = None


@dataclass(frozen=True)
class FlashRequest(Request[int]):
    """Light the LEDs of every label showing these skus (answer: how many labels will flash)."""

    skus: tuple[str, ...]
    color: str
    seconds: float


@dataclass(frozen=True)
class PickupScan(Request[str]):
    """A code scanned at the click & collect counter: an order's own code collects it, an article's code picks
    one unit for the oldest open order that needs it (answer: the line for the scanner's display)."""

    order: str | None
    sku: str | None


class DocumentRefused(ValueError):
    """A print request the printing service cannot take: unknown printer or document, or bad fields."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{where}: {message}" for where, message in errors))
        self.errors = errors
