"""Shelves: weight readings become units on a slot, levels ok/low/empty, and replenishment alerts.

The logic is plain classes, testable without an event loop:
- `StabilityFilter` accepts a weight only when the last readings agree (their spread within a
  tolerance): a hand on the shelf, a box being pushed, a jar lifted and put back are moments, not
  stock. The accepted weight is the median of the window.
- `ShelfTracker` turns the stable weight into whole units with hysteresis (the estimate must move
  by 0.75 of a unit before the count changes), so a shelf hovering between two counts or at the
  `low` threshold does not flap; it reports only when units or level change.
The service keeps each slot's state in the state database and writes `shelf` events, one
`replenishment` event when a slot goes low or empty (with what the back store holds) and one
when it is restored, and `device` offline once when a sensor stays silent too long.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from drivers.sensors import SensorReading, SourceStatus
from gateway import devices, outbox, stock
from gateway.commands import CommandContext, CommandModel, CommandRejected, FieldError, Outcome
from gateway.config import SensorConfig, ShelfConfig
from gateway.service import Service
from gateway.supervisor import Device
from gateway.timeutil import epoch_ms, utc_now

log = logging.getLogger(__name__)

Level = Literal["ok", "low", "empty"]


@dataclass
class StabilityFilter:
    """Median of the last `window` weights, accepted only when their spread is within `tolerance_g`."""

    window: int = 5
    tolerance_g: float = 20.0
    _values: deque[float] = field(default_factory=deque)

    def add(self, weight_g: float) -> float | None:
        self._values.append(weight_g)
        while len(self._values) > self.window:
            self._values.popleft()
        if len(self._values) < self.window or max(self._values) - min(self._values) > self.tolerance_g:
            return None
        return float(statistics.median(self._values))


@dataclass(frozen=True)
class ShelfChange:
    units: int
    level: Level
    previous_level: Level | None


@dataclass
class ShelfTracker:
    """One slot: weight to units (with hysteresis) and level; reports changes only."""

    slot: ShelfConfig
    units: int | None = None
    level: Level | None = None
    filter: StabilityFilter = field(init=False)

    def __post_init__(self) -> None:
        self.filter = StabilityFilter(tolerance_g=max(10.0, self.slot.unit_weight_g * 0.25))

    def level_of(self, units: int) -> Level:
        if units <= 0:
            return "empty"
        return "low" if units <= self.slot.low else "ok"

    def add(self, weight_g: float) -> ShelfChange | None:
        stable = self.filter.add(weight_g)
        if stable is None:
            return None
        estimate = (stable - self.slot.tare_g) / self.slot.unit_weight_g
        units = self.units
        if units is None or abs(estimate - units) >= 0.75:
            units = max(0, min(self.slot.capacity, round(estimate)))
        level = self.level_of(units)
        if units == self.units and level == self.level:
            return None
        change = ShelfChange(units, level, self.level)
        self.units, self.level = units, level
        return change


@dataclass
class SilenceWatch:
    """A sensor silent for longer than its expected interval is offline, once, until it speaks again."""

    interval_s: float
    last_seen: float | None = None
    online: bool | None = None  # None: nothing reported yet

    def heard(self, now: float) -> bool:
        """Record a reading; True when `online` must be reported (first reading, or back from silence)."""
        self.last_seen = now
        if self.online is True:
            return False
        self.online = True
        return True

    def check(self, now: float) -> bool:
        """True exactly once when the sensor has gone silent."""
        if self.online is False or self.last_seen is None or now - self.last_seen <= self.interval_s:
            return False
        self.online = False
        return True


def record_change(conn: sqlite3.Connection, sensor: str, slot: ShelfConfig, change: ShelfChange) -> None:
    """The `shelf` event, the slot's state row, and a replenishment alert on entering or leaving low/empty."""
    now_ms = epoch_ms(utc_now())
    conn.execute(
        "INSERT INTO shelf_state (sensor, sku, units, level, updated_ms) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (sensor, sku) DO UPDATE SET units = excluded.units, level = excluded.level, "
        "updated_ms = excluded.updated_ms",
        (sensor, slot.sku, change.units, change.level, now_ms),
    )
    outbox.append(conn, "shelf", {"sensor": sensor, "sku": slot.sku, "units": change.units, "level": change.level})
    was_short = change.previous_level in ("low", "empty")
    is_short = change.level in ("low", "empty")
    if is_short and change.level != change.previous_level:
        level = stock.get_level(conn, slot.sku)
        to_bring = max(0, min(slot.capacity - change.units, level.available))
        outbox.append(
            conn,
            "replenishment",
            {
                "sku": slot.sku,
                "source": "shelf",
                "sensor": sensor,
                "status": "needed",
                "level": change.level,
                "shelf_units": change.units,
                "capacity": slot.capacity,
                "back_store_available": level.available,
                "to_bring": to_bring,
            },
        )
    elif was_short and not is_short:
        outbox.append(
            conn,
            "replenishment",
            {
                "sku": slot.sku,
                "source": "shelf",
                "sensor": sensor,
                "status": "restored",
                "level": change.level,
                "shelf_units": change.units,
            },
        )


class ShelfSlot(CommandModel):
    sensor: Annotated[str, Field(min_length=1, max_length=64)]
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    unit_weight_g: Annotated[float, Field(gt=0)]
    tare_g: Annotated[float, Field(ge=0)] = 0.0
    capacity: Annotated[int, Field(gt=0)]
    low: Annotated[int, Field(ge=0)] = 0


class ShelfSet(CommandModel):
    """`shelf.set` data: slots head office sets (sensor -> sku, weights, capacity, low threshold)."""

    items: Annotated[list[ShelfSlot], Field(min_length=1, max_length=1000)]


@dataclass(frozen=True)
class SlotsChanged:
    slots: tuple[ShelfConfig, ...]


def stored_slots(conn: sqlite3.Connection) -> list[ShelfConfig]:
    rows = conn.execute("SELECT sensor, sku, unit_weight_g, tare_g, capacity, low FROM shelf_slots")
    return [ShelfConfig(sensor=r[0], sku=r[1], unit_weight_g=r[2], tare_g=r[3], capacity=r[4], low=r[5]) for r in rows]


def make_shelf_set_handler(sensors: set[str]) -> Any:
    def handle(context: CommandContext, data: ShelfSet) -> Outcome:
        errors = []
        for index, item in enumerate(data.items):
            if item.sensor not in sensors:
                errors.append(FieldError(f"data.items[{index}].sensor", f'no sensor "{item.sensor}" in this store'))
            if item.low >= item.capacity:
                errors.append(FieldError(f"data.items[{index}].low", f"must be below capacity ({item.capacity})"))
        if errors:
            raise CommandRejected(errors)
        now_ms = epoch_ms(context.now)
        for item in data.items:
            context.conn.execute(
                "INSERT INTO shelf_slots (sensor, sku, unit_weight_g, tare_g, capacity, low, updated_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sensor, sku) DO UPDATE SET "
                "unit_weight_g = excluded.unit_weight_g, tare_g = excluded.tare_g, capacity = excluded.capacity, "
                "low = excluded.low, updated_ms = excluded.updated_ms",
                (item.sensor, item.sku, item.unit_weight_g, item.tare_g, item.capacity, item.low, now_ms),
            )
        slots = tuple(ShelfConfig.model_validate(item.model_dump()) for item in data.items)
        context.after_commit(SlotsChanged(slots))
        return Outcome(applied=len(data.items))

    return handle


def load_state(conn: sqlite3.Connection) -> dict[tuple[str, str], tuple[int, str]]:
    return {
        (r[0], r[1]): (int(r[2]), str(r[3])) for r in conn.execute("SELECT sensor, sku, units, level FROM shelf_state")
    }


def status_section(conn: sqlite3.Connection) -> dict[str, Any] | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shelf_state'").fetchone() is None:
        return None
    rows = conn.execute("SELECT level, count(*) FROM shelf_state GROUP BY level").fetchall()
    return {"by_level": {str(r[0]): int(r[1]) for r in rows}} if rows else None


class ShelfService(Service):
    """Readings from the configured sensors, turned into shelf levels."""

    name = "shelves"

    def setup(self) -> None:
        config = self.gateway.config
        self.sensors: dict[str, SensorConfig] = {s.id: s for s in config.sensors}
        self.trackers: dict[str, list[ShelfTracker]] = {}
        for slot in config.shelves:
            self._set_slot(slot)
        self.gateway.dispatcher.register("shelf.set", ShelfSet, make_shelf_set_handler(set(self.sensors)))
        self.gateway.bus.subscribe(SlotsChanged, self._on_slots)
        self.watches = {s.id: SilenceWatch(s.expected_interval_s) for s in config.sensors}
        self._restored = False
        self._tasks: set[asyncio.Task[Any]] = set()
        mqtt = [s for s in config.sensors if s.backend == "mqtt"]
        ble = [s for s in config.sensors if s.backend == "bthome"]
        if mqtt:
            self.gateway.add_task(
                "sensors:mqtt",
                functools.partial(self.run_mqtt, mqtt),
                Device("local-mqtt", "broker", config.local_mqtt.url),
            )
        if ble:
            self.gateway.add_task(
                "sensors:bthome", functools.partial(self.run_bthome, ble), Device("ble", "adapter", "BlueZ")
            )
        if config.sensors:
            self.gateway.add_task("sensors:silence", self.watch_silence)

    def _set_slot(self, slot: ShelfConfig) -> None:
        """Add a slot, or replace the one of the same sensor and sku (head office overrides config)."""
        trackers = self.trackers.setdefault(slot.sensor, [])
        trackers[:] = [t for t in trackers if t.slot.sku != slot.sku]
        trackers.append(ShelfTracker(slot))

    async def _on_slots(self, signal: SlotsChanged) -> None:
        for slot in signal.slots:
            self._set_slot(slot)

    async def _restore(self) -> None:
        if self._restored:
            return
        self._restored = True
        for slot in await self.gateway.db.read(stored_slots):
            self._set_slot(slot)
        state = await self.gateway.db.read(load_state)
        for sensor, trackers in self.trackers.items():
            for tracker in trackers:
                saved = state.get((sensor, tracker.slot.sku))
                if saved is not None:
                    tracker.units, tracker.level = saved[0], saved[1]  # type: ignore[assignment]

    async def run_mqtt(self, sensors: list[SensorConfig]) -> None:
        from drivers.sensors.mqtt import MqttSensors

        await self._restore()
        local = self.gateway.config.local_mqtt
        source = MqttSensors(
            local.url,
            {s.topic or "": s.id for s in sensors},
            username=local.username,
            password=local.password(),
            client_id=f"{self.gateway.config.client_id}-sensors",
            on_status=functools.partial(self._source_status, "local-mqtt", "broker", local.url),
        )
        async for reading in source.readings():
            await self.handle(reading)

    async def run_bthome(self, sensors: list[SensorConfig]) -> None:
        from drivers.sensors.bthome import BthomeSensor, BthomeSensors

        await self._restore()
        configured = []
        for sensor in sensors:
            key = None
            if sensor.bind_key_file is not None:
                key = bytes.fromhex(sensor.bind_key_file.read_text().strip())
            elif sensor.bind_key_env is not None:
                import os

                key = bytes.fromhex(os.environ[sensor.bind_key_env])
            configured.append(BthomeSensor(sensor.id, sensor.address or "", key))
        adapter = None
        stations = self.gateway.config.label_stations
        if any(s.backend == "ble" and s.adapter == "hci0" for s in stations):
            from drivers.bluetooth import shared_adapter

            adapter = shared_adapter("hci0")  # BLE tags on the same radio: one scanner, turns with their uploads
        source = BthomeSensors(
            configured,
            on_status=functools.partial(self._source_status, "ble", "adapter", "BlueZ"),
            adapter=adapter,
        )
        async for reading in source.readings():
            await self.handle(reading)

    def _source_status(self, device: str, kind: str, address: str, status: SourceStatus) -> None:
        state: devices.DeviceStatus = "online" if status.online else "offline"
        job = functools.partial(
            devices.report, device=device, kind=kind, status=state, detail=status.detail, address=address
        )
        task = asyncio.get_running_loop().create_task(self.gateway.db.write(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, reading: SensorReading) -> None:
        """One reading: the sensor is alive; a stable weight may change a slot."""
        loop = asyncio.get_running_loop()
        writes: list[Any] = []
        watch = self.watches.get(reading.sensor_id)
        if watch is not None and watch.heard(loop.time()):
            writes.append(functools.partial(devices.report, device=reading.sensor_id, kind="sensor", status="online"))
        if reading.weight_g is not None:
            for tracker in self.trackers.get(reading.sensor_id, []):
                change = tracker.add(reading.weight_g)
                if change is not None:
                    writes.append(
                        functools.partial(record_change, sensor=reading.sensor_id, slot=tracker.slot, change=change)
                    )
        for job in writes:
            await self.gateway.db.write(job)

    async def watch_silence(self) -> None:
        loop = asyncio.get_running_loop()
        for watch in self.watches.values():
            watch.last_seen = loop.time()  # give every sensor its interval from the start
        while True:
            await asyncio.sleep(min(5.0, min(w.interval_s for w in self.watches.values()) / 2))
            for sensor, watch in self.watches.items():
                if watch.check(loop.time()):
                    detail = f"silent for more than {watch.interval_s:g} s"
                    await self.gateway.db.write(
                        functools.partial(devices.report, device=sensor, kind="sensor", status="offline", detail=detail)
                    )
