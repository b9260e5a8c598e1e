"""Electronic shelf label stations: send an image to a label, learn whether it took it, flash its LED.

One interface for the family (`LabelStation`), one module per transport: `openepaperlink` (an
OpenEPaperLink access point over HTTP and its websocket), `simulator` (PNG files in a folder) and
`ble` (Bluetooth-only tags through the box's adapter: ATC BLE OpenEPaperLink or Gicisky firmware;
the Bluetooth SIG's ESL profile is not supported, see ble.py). The gateway hands a
station a palette image at the tag's resolution and a token (its content hash); the station
reports, per label, `confirmed` (the tag shows it), `same_image` (it already did) or `failed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from PIL import Image

Delivery = Literal["confirmed", "failed", "same_image"]
"""What became of an image sent to a label (not to be confused with a command's `gateway.commands.Outcome`)."""


class LabelNotFound(LookupError):
    """The station does not know this label (not paired, wrong id)."""


@dataclass(frozen=True)
class TagInfo:
    """What the station knows of a label's display."""

    label_id: str
    width: int
    height: int
    colours: tuple[str, ...] = ("white", "black", "red")
    hw_type: int | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """The fate of an image sent to a label; `token` is the one given to `send_image`."""

    label_id: str
    outcome: Delivery
    token: str | None = None
    detail: str | None = None


class LabelStation(Protocol):
    """A label station (access point, simulator...).

    One owner does all its I/O (gateway/labels/service.py runs one task per station): it calls
    `start()`, runs `listen()`, `reports()` and its requests in one task group, and `close()` at the end.
    """

    async def start(self) -> None:
        """Open what the station needs (an HTTP session...); on failure nothing stays open."""
        ...

    async def close(self) -> None:
        """Close everything `start()` opened (safe to call twice, or after a failed start)."""
        ...

    async def listen(self) -> None:
        """Run the station's listeners (a websocket, timers) until cancelled: the station's owner runs this
        in its own task group, so nothing of the station outlives it. Reports come out of `reports()`."""
        ...

    async def tag_info(self, label_id: str) -> TagInfo:
        """Size and colours of a label; raises LabelNotFound."""
        ...

    async def send_image(self, label_id: str, image: Image.Image, token: str) -> None:
        """Hand the image over for delivery (accepted, not yet shown); raises on a refused upload."""
        ...

    def reports(self) -> AsyncIterator[DeliveryReport]:
        """Delivery reports as they come, for as long as the station runs."""
        ...

    async def flash(self, label_id: str, color: str, seconds: float) -> None:
        """Light the label's LED (pick-to-light)."""
        ...

    def normalise_id(self, label_id: str) -> str:
        """The station's canonical form of a label id; raises ValueError for an impossible one."""
        ...
