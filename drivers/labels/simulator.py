"""A simulated label station: each label is a PNG file in a folder, confirmed after a delay.

Used by `store-gateway demo` and by tests of the label plan. A seeded failure rate makes some
transfers fail, as radio transfers to real tags sometimes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from drivers.labels import DeliveryReport, TagInfo

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SimulatedStation:
    """Writes `<directory>/<label>.png`; reports `confirmed` after `confirm_delay_s` (or `failed`)."""

    def __init__(
        self,
        directory: Path,
        *,
        confirm_delay_s: float = 0.2,
        failure_rate: float = 0.0,
        seed: int = 1,
        display: TagInfo | None = None,
    ) -> None:
        self.directory = directory
        self.confirm_delay_s = confirm_delay_s
        self.failure_rate = failure_rate
        self.display = display or TagInfo("", 296, 128, ("white", "black", "red"))
        self._rng = random.Random(seed)
        self._reports: asyncio.Queue[DeliveryReport] = asyncio.Queue()
        self._deliveries: asyncio.Queue[tuple[float, str, bytes, str, bool]] = asyncio.Queue()
        self.sent = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        """Transfers not delivered yet are dropped, as a radio link that goes away drops them."""
        self._deliveries = asyncio.Queue()

    async def listen(self) -> None:
        """Deliver each image `confirm_delay_s` after it was sent, in order."""
        loop = asyncio.get_running_loop()
        while True:
            due, label_id, png, token, fails = await self._deliveries.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._deliver(label_id, png, token, fails)

    def normalise_id(self, label_id: str) -> str:
        if not _ID.match(label_id):
            raise ValueError(f'"{label_id}" is not a simulator label id ([A-Za-z0-9_-], 1-64 characters)')
        return label_id

    async def tag_info(self, label_id: str) -> TagInfo:
        return TagInfo(self.normalise_id(label_id), self.display.width, self.display.height, self.display.colours)

    async def send_image(self, label_id: str, image: Image.Image, token: str) -> None:
        if image.size != (self.display.width, self.display.height):
            raise ValueError(
                f"{label_id}: image is {image.size}, the label is {self.display.width}x{self.display.height}"
            )
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.sent += 1
        fails = self._rng.random() < self.failure_rate
        due = asyncio.get_running_loop().time() + self.confirm_delay_s
        self._deliveries.put_nowait((due, label_id, buffer.getvalue(), token, fails))

    async def _deliver(self, label_id: str, png: bytes, token: str, fails: bool) -> None:
        if fails:
            self._reports.put_nowait(DeliveryReport(label_id, "failed", token, "simulated radio failure"))
            return
        target = self.directory / f"{label_id}.png"
        temporary = target.with_suffix(".tmp")
        await asyncio.to_thread(temporary.write_bytes, png)
        await asyncio.to_thread(temporary.replace, target)
        self._reports.put_nowait(DeliveryReport(label_id, "confirmed", token))

    async def reports(self) -> AsyncIterator[DeliveryReport]:
        while True:
            yield await self._reports.get()

    async def flash(self, label_id: str, color: str, seconds: float) -> None:
        line = f"{datetime.now(UTC).isoformat()} {label_id} {color} {seconds:g}s\n"
        log.info("simulated label %s flashes %s for %gs", label_id, color, seconds)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_append, self.directory / "flash.log", line)


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
