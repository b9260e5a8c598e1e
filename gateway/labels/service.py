"""The label service: re-render the labels of changed prices and deliver them, station by station.

A price change (or an assignment) makes a plan: the labels of those skus are rendered at their
display's resolution (in a worker thread), a label whose confirmed image already has the same hash
is left alone, and the rest are queued per station. The queue coalesces: it holds the latest image
of each label, so a label whose price changes three times before it is sent is sent once. Each
station has a bounded number of images in flight; a transfer that fails or is not confirmed in
time is retried a bounded number of times, then the label is reported `failed`.

Each station has one owner: the task `labels:<id>` opens its driver, runs its listeners, sends its
images, takes its delivery reports, reads the displays of new labels and flashes LEDs (from a
bounded queue), all in one task group, and closes the driver when it ends. The planner only renders
and records: a label whose display is not known yet is handed to the owner, which asks the station
and plans the label again once it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.labels import LabelNotFound, LabelStation, TagInfo
from gateway import devices
from gateway.bus import Transaction
from gateway.config import LabelStationConfig
from gateway.domain import FlashRequest, PricesChanged, PricesScheduled
from gateway.labels import plan
from gateway.labels.content import DisplaySpec
from gateway.pricing import scheduled_prices
from gateway.service import Service
from gateway.supervisor import Device
from gateway.timeutil import utc_now

if TYPE_CHECKING:  # Pillow is loaded when the first label is rendered, not at start
    from PIL import Image

    from gateway.labels.render import RenderedLabel

log = logging.getLogger(__name__)

_RETRY_DELAY_S = 2.0  # doubled for each failed try of the same image, up to 32x
_HEALTH_INTERVAL_S = 900.0  # a tag's battery and signal are reported at most this often, unless its battery falls


def make_station(config: LabelStationConfig) -> LabelStation:
    """The driver for a `[[label_stations]]` entry (heavy imports stay inside each transport)."""
    if config.backend == "simulator":
        from drivers.labels.simulator import SimulatedStation

        assert config.directory is not None
        return SimulatedStation(
            config.directory, confirm_delay_s=config.confirm_delay_s, failure_rate=config.failure_rate
        )
    if config.backend == "openepaperlink":
        from drivers.labels.openepaperlink import OpenEPaperLinkStation

        assert config.url is not None
        return OpenEPaperLinkStation(config.url, name=config.id)
    from drivers.bluetooth import shared_adapter
    from drivers.labels.ble import BleLabelStation

    assert config.protocol is not None
    return BleLabelStation(shared_adapter(config.adapter), config.protocol, name=config.id)


def station_address(config: LabelStationConfig) -> str:
    """Where the station is, for log lines: its URL, folder, or Bluetooth adapter."""
    if config.backend == "ble":
        return f"{config.adapter}, {config.protocol} tags"
    return config.url or str(config.directory)


@dataclass
class InFlight:
    content_hash: str
    image: Image.Image
    sent_at: float


@dataclass(frozen=True)
class Flash:
    """Light a label's LED."""

    label: str
    color: str
    seconds: float


_FLASHES_MAX = 1024


class StationQueue:
    """What waits for one station's owner: the coalescing image queue, the images in flight, other requests."""

    def __init__(self, config: LabelStationConfig, station: LabelStation) -> None:
        self.config = config
        self.station = station
        self.waiting: OrderedDict[str, tuple[Image.Image, str]] = OrderedDict()
        self.in_flight: dict[str, InFlight] = {}
        self.ready = asyncio.Event()
        self.flashes: asyncio.Queue[Flash] = asyncio.Queue(_FLASHES_MAX)
        # labels whose display (size, colours) the owner is to read; one entry per label, in order
        self.displays_wanted: dict[str, None] = {}
        self.display_wanted = asyncio.Event()

    def put(self, label: str, image: Image.Image, content_hash: str) -> None:
        self.waiting[label] = (image, content_hash)  # replaces an older image of the same label
        self.waiting.move_to_end(label)
        self.ready.set()

    def want_display(self, label: str) -> None:
        """Have the owner read this label's display (then plan it); asking twice asks once."""
        self.displays_wanted[label] = None
        self.display_wanted.set()


@contextlib.asynccontextmanager
async def opened(station: LabelStation) -> AsyncIterator[LabelStation]:
    """The station open for the life of the block, closed however it ends (also when `start()` fails)."""
    try:
        await station.start()
        yield station
    finally:
        await station.close()


class LabelService(Service):
    """label.assign, label.flash, and the plan-render-send-confirm loop of every station."""

    name = "labels"

    def setup(self) -> None:
        self.queues: dict[str, StationQueue] = {}
        self._unavailable: dict[str, str] = {}
        self._planning = asyncio.Lock()
        # labels of scheduled prices, rendered ahead: (station, label, version) -> rendered label
        self.prerendered: dict[tuple[str, str, int], RenderedLabel] = {}
        self.prerender_hits = 0
        for config in self.gateway.config.label_stations:
            try:
                station = make_station(config)
            except NotImplementedError as exc:
                self._unavailable[config.id] = str(exc)
                log.error("label station %s: %s", config.id, exc)
                continue
            self.queues[config.id] = StationQueue(config, station)
            self.gateway.add_task(
                f"labels:{config.id}",
                functools.partial(self.run_station, config.id),
                Device(config.id, "label_station", station_address(config)),
            )
        stations = {sid: queue.station for sid, queue in self.queues.items()}
        self.gateway.dispatcher.register("label.assign", plan.LabelAssign, plan.make_assign_handler(stations))
        self.gateway.dispatcher.register("label.flash", plan.LabelFlash, plan.make_flash_handler(stations))
        self.gateway.bus.subscribe(PricesChanged, self._on_prices)
        self.gateway.bus.subscribe(PricesScheduled, self._on_scheduled)
        self.gateway.bus.subscribe(plan.LabelsToPlan, self._on_labels)
        self.gateway.bus.subscribe(plan.FlashRequested, self._on_flash)
        self.gateway.bus.serve(FlashRequest, self.flash_skus)
        self.gateway.add_task("labels:start", self.start)

    def flash_skus(self, tx: Transaction, request: FlashRequest) -> int:
        """Serve a `FlashRequest` (pick-to-light): the labels of these skus flash once the asker commits."""
        keys = plan.labels_for_skus(tx.conn, request.skus)
        if keys:
            tx.after_commit(plan.FlashRequested(tuple(keys), request.color, request.seconds))
        return len(keys)

    async def start(self) -> None:
        """Report stations that cannot run, then re-plan every label not known to be in sync."""
        for station_id, why in self._unavailable.items():
            await self.gateway.db.write(
                functools.partial(
                    devices.report, device=station_id, kind="label_station", status="error", detail=why[:200]
                )
            )
        keys = await self.gateway.db.read(plan.out_of_sync)
        if keys:
            log.info("labels: %d labels to bring in sync after start", len(keys))
            await self.replan(keys)

    async def _on_prices(self, signal: PricesChanged) -> None:
        keys = await self.gateway.db.read(functools.partial(plan.labels_for_skus, skus=signal.skus))
        await self.replan(keys)

    async def _on_scheduled(self, signal: PricesScheduled) -> None:
        """Render the labels of prices that take effect later now, so they go out at the instant."""
        db = self.gateway.db
        keys = await db.read(functools.partial(plan.labels_for_skus, skus=signal.skus))
        rows = await db.read(functools.partial(plan.get_labels, keys=keys))
        future = await db.read(functools.partial(scheduled_prices, skus=signal.skus))
        jobs = []
        for row in rows:
            spec = self._display(row)
            for price in future:
                if spec is not None and price.sku == row.sku:
                    jobs.append((row.key, price.version, plan.content_for(price, utc_now()), spec))
        from gateway.labels.render import render

        rendered = await asyncio.to_thread(lambda: [render(content, spec) for _, _, content, spec in jobs])
        if len(self.prerendered) > 200_000:  # superseded schedules are never popped: keep memory bounded
            self.prerendered.clear()
        for (key, version, _, _), label in zip(jobs, rendered, strict=True):
            self.prerendered[(key[0], key[1], version)] = label
        if jobs:
            log.info("labels: %d labels rendered ahead for scheduled prices", len(jobs))

    async def _on_labels(self, signal: plan.LabelsToPlan) -> None:
        await self.replan(list(signal.keys))

    async def _on_flash(self, signal: plan.FlashRequested) -> None:
        for station_id, label in signal.keys:
            queue = self.queues.get(station_id)
            if queue is None:
                continue
            try:
                queue.flashes.put_nowait(Flash(label, signal.color, signal.seconds))
            except asyncio.QueueFull:
                log.warning("label %s on %s: flash dropped, %d flashes wait already", label, station_id, _FLASHES_MAX)

    def _display(self, row: plan.LabelRow) -> DisplaySpec | None:
        """The label's display if known; otherwise its station's owner is asked, and plans it again when it knows."""
        if row.display is not None:
            return row.display
        queue = self.queues.get(row.station)
        if queue is not None:
            queue.want_display(row.label)
        return None

    async def replan(self, keys: list[plan.LabelKey]) -> int:
        """Render the labels at `keys` with their product's current price; queue those that must change."""
        async with self._planning:  # one plan at a time: a later price is never overtaken by an earlier one
            return await self._plan(keys)

    async def _plan(self, keys: list[plan.LabelKey]) -> int:
        if not keys:  # most skus of a price file show on no label
            return 0
        db = self.gateway.db
        rows = await db.read(functools.partial(plan.get_labels, keys=keys))
        prices = await db.read(functools.partial(plan.prices_of, skus={row.sku for row in rows}))
        now = utc_now()
        jobs = []
        for row in rows:
            price = prices.get(row.sku)
            spec = self._display(row)
            if spec is None or price is None:
                continue
            jobs.append((row, spec, price, plan.content_for(price, now)))
        if not jobs:
            return 0

        from gateway.labels.render import render

        # taken here, on the loop that fills and clears `prerendered`; the worker thread only renders
        ahead: list[RenderedLabel | None] = []
        for row, spec, price, _ in jobs:
            label = self.prerendered.pop((row.station, row.label, price.version), None)
            ahead.append(label if label is not None and label.image.size == (spec.width, spec.height) else None)
        self.prerender_hits += sum(label is not None for label in ahead)

        def draw() -> list[RenderedLabel]:
            return [label or render(content, spec) for (_, spec, _, content), label in zip(jobs, ahead, strict=True)]

        rendered = await asyncio.to_thread(draw)

        def record(conn: sqlite3.Connection) -> list[bool]:
            return [
                plan.want(conn, row.key, label.content_hash, price.version, plan.price_text(price, now))
                for (row, _, price, _), label in zip(jobs, rendered, strict=True)
            ]

        changed = await db.write(record)
        queued = 0
        for (row, _, _, _), label, must_send in zip(jobs, rendered, changed, strict=True):
            queue = self.queues.get(row.station)
            if must_send and queue is not None:
                queue.put(row.label, label.image, label.content_hash)
                queued += 1
        if queued:
            log.info("labels: %d of %d labels queued for sending", queued, len(jobs))
        return queued

    async def run_station(self, station_id: str) -> None:
        """The station's owner: everything that touches its driver runs here, in one task group."""
        queue = self.queues[station_id]
        async with opened(queue.station) as station:
            await self.gateway.db.write(
                functools.partial(
                    devices.report,
                    device=station_id,
                    kind="label_station",
                    status="online",
                    address=station_address(queue.config),
                )
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(station.listen(), name=f"labels:{station_id}:listen")
                if hasattr(queue.station, "health"):  # Bluetooth tags: battery and signal as device status
                    group.create_task(self._tag_health(queue), name=f"labels:{station_id}:health")
                group.create_task(self._send(queue), name=f"labels:{station_id}:send")
                group.create_task(self._receive(queue), name=f"labels:{station_id}:reports")
                group.create_task(self._watch_timeouts(queue), name=f"labels:{station_id}:timeouts")
                group.create_task(self._learn_displays(queue), name=f"labels:{station_id}:displays")
                group.create_task(self._flash(queue), name=f"labels:{station_id}:flashes")

    async def _flash(self, queue: StationQueue) -> None:
        """LED flashes, one at a time, from the bounded queue."""
        while True:
            request = await queue.flashes.get()
            try:
                await queue.station.flash(request.label, request.color, request.seconds)
            except Exception as exc:  # pick-to-light is a help, not a promise: log it and go on
                log.warning("label %s on %s: flash failed: %s", request.label, queue.config.id, exc)

    async def _learn_displays(self, queue: StationQueue) -> None:
        """Read the displays of labels the planner could not render yet, in batches; then plan them."""
        station, station_id = queue.station, queue.config.id
        while True:
            await queue.display_wanted.wait()
            queue.display_wanted.clear()
            while queue.displays_wanted:
                batch = list(itertools.islice(queue.displays_wanted, 200))
                learnt: list[tuple[plan.LabelKey, DisplaySpec]] = []
                try:
                    for label in batch:
                        try:
                            info: TagInfo = await station.tag_info(label)
                        except LabelNotFound as exc:
                            log.warning("label %s is not known to station %s: %s", label, station_id, exc)
                        else:
                            learnt.append(((station_id, label), DisplaySpec(info.width, info.height, info.colours)))
                        queue.displays_wanted.pop(label, None)  # a failure of the station leaves the rest asked
                finally:
                    await self._record_displays(learnt)

    async def _record_displays(self, learnt: list[tuple[plan.LabelKey, DisplaySpec]]) -> None:
        if not learnt:
            return

        def record(conn: sqlite3.Connection) -> None:
            for key, spec in learnt:
                plan.set_display(conn, key, spec)

        await self.gateway.db.write(record)
        self.gateway.bus.publish(plan.LabelsToPlan(tuple(key for key, _ in learnt)))

    async def _send(self, queue: StationQueue) -> None:
        db = self.gateway.db
        loop = asyncio.get_running_loop()
        station_id = queue.config.id
        while True:
            await queue.ready.wait()
            queue.ready.clear()
            while queue.waiting and len(queue.in_flight) < queue.config.max_in_flight:
                label, (image, content_hash) = queue.waiting.popitem(last=False)
                key = (station_id, label)
                if label in queue.in_flight:
                    # the older image is still on its way: send the new one once it is settled
                    queue.waiting[label] = (image, content_hash)
                    break
                if not await db.write(functools.partial(plan.mark_sent, key=key, content_hash=content_hash)):
                    continue  # a newer render replaced it meanwhile
                queue.in_flight[label] = InFlight(content_hash, image, loop.time())
                try:
                    log.debug("label %s on %s: sending image %s", label, station_id, content_hash[:12])
                    await queue.station.send_image(label, image, content_hash)
                except Exception as exc:
                    queue.in_flight.pop(label, None)
                    await self._failed(queue, label, content_hash, image, f"upload refused: {exc}")

    async def _receive(self, queue: StationQueue) -> None:
        db = self.gateway.db
        async for report in queue.station.reports():
            entry = queue.in_flight.pop(report.label_id, None)
            token = report.token or (entry.content_hash if entry else None)
            if token is None:
                continue
            key = (queue.config.id, report.label_id)
            if report.outcome in ("confirmed", "same_image"):
                await db.write(functools.partial(plan.mark_confirmed, key=key, content_hash=token))
            elif entry is not None:
                await self._failed(queue, report.label_id, token, entry.image, report.detail or "transfer failed")
            queue.ready.set()

    async def _failed(self, queue: StationQueue, label: str, content_hash: str, image: Image.Image, why: str) -> None:
        key = (queue.config.id, label)
        retry = await self.gateway.db.write(
            functools.partial(
                plan.mark_failed_try, key=key, content_hash=content_hash, retries=queue.config.retries, detail=why
            )
        )
        if retry:
            loop = asyncio.get_running_loop()
            rows = await self.gateway.db.read(functools.partial(plan.get_labels, keys=[key]))
            tries = rows[0].attempts if rows else 1

            def again() -> None:
                if label not in queue.waiting:
                    queue.put(label, image, content_hash)

            loop.call_later(_RETRY_DELAY_S * 2 ** min(max(tries - 1, 0), 5), again)
        queue.ready.set()

    async def _tag_health(self, queue: StationQueue) -> None:
        """Battery and signal of the station's tags as `device` status (kind "label", id the label's)."""
        station: Any = queue.station
        station_id = queue.config.id
        labels = await self.gateway.db.read(functools.partial(plan.labels_of_station, station=station_id))
        station.track(labels)
        loop = asyncio.get_running_loop()
        last: dict[str, tuple[float, int | None]] = {}
        async for health in station.health():
            battery = health.battery_pct
            previous = last.get(health.label_id)
            lower = previous is not None and battery is not None and (previous[1] or 101) - battery >= 5
            if previous is not None and not lower and loop.time() - previous[0] < _HEALTH_INTERVAL_S:
                continue
            last[health.label_id] = (loop.time(), battery)
            parts = [f"battery {battery}%" if battery is not None else "battery unknown"]
            if health.voltage is not None:
                parts[0] += f" ({health.voltage:.2f} V)"
            if health.rssi is not None:
                parts.append(f"signal {health.rssi} dBm")
            await self.gateway.db.write(
                functools.partial(
                    devices.report,
                    device=health.label_id,
                    kind="label",
                    status="online",
                    detail=f"{station_id}: " + ", ".join(parts),
                )
            )

    async def _watch_timeouts(self, queue: StationQueue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, queue.config.confirm_timeout_s / 4))
            late = [
                (label, entry)
                for label, entry in queue.in_flight.items()
                if loop.time() - entry.sent_at > queue.config.confirm_timeout_s
            ]
            for label, entry in late:
                queue.in_flight.pop(label, None)
                await self._failed(queue, label, entry.content_hash, entry.image, "not confirmed in time")
