"""BTHome v2 shelf sensors: BLE advertisements received with bleak, decoded by bthome-ble.

bleak and bthome-ble are imported here only, so a store without BLE sensors never loads them.
Encrypted BTHome v2 is decoded with each sensor's bind key. bthome-ble keeps state and returns
every value it knows on each update; a reading carries only the values *this* advertisement
brought (new SensorValue objects), so a repeated advertisement (same packet id) counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bleak import BleakScanner
from bleak.exc import BleakError
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak

from drivers.bluetooth import BluezUnavailable, start_scanner
from drivers.sensors import SensorReading, SourceStatus

__all__ = ["BluezUnavailable", "BthomeSensor", "BthomeSensors"]

if TYPE_CHECKING:
    from drivers.bluetooth import BluetoothAdapter

log = logging.getLogger(__name__)

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True)
class BthomeSensor:
    sensor_id: str
    address: str
    bind_key: bytes | None = None


class BthomeSensors:
    """Readings of the BTHome sensors listed, from one BLE scanner."""

    def __init__(
        self,
        sensors: list[BthomeSensor],
        *,
        passive: bool = False,
        on_status: Callable[[SourceStatus], None] | None = None,
        adapter: BluetoothAdapter | None = None,
    ) -> None:
        """`adapter`: share that adapter's scanner (with BLE label stations) instead of scanning alone."""
        self.adapter = adapter
        self.sensors = {s.address.upper(): s for s in sensors}
        self.passive = passive
        self.on_status = on_status
        self._parsers = {mac: BTHomeBluetoothDeviceData(bindkey=s.bind_key) for mac, s in self.sensors.items()}
        self._seen: dict[str, dict[str, Any]] = {mac: {} for mac in self.sensors}
        self._warned: set[str] = set()
        self.dropped = 0

    def decode(self, device: Any, advertisement: Any) -> SensorReading | None:
        """One advertisement to a reading with the values it brought, or None."""
        mac = str(device.address).upper()
        sensor = self.sensors.get(mac)
        if sensor is None or BTHOME_UUID not in advertisement.service_data:
            return None
        info = BluetoothServiceInfoBleak.from_device_and_advertisement_data(
            device, advertisement, source="hci0", time=time.monotonic(), connectable=False
        )
        update = self._parsers[mac].update(info)
        values = {key.key: value for key, value in update.entity_values.items()}
        previous = self._seen[mac]
        fresh: dict[str, Any] = {k: v.native_value for k, v in values.items() if previous.get(k) is not v}
        self._seen[mac] = values
        fresh.pop("signal_strength", None)
        if not fresh:
            self.dropped += 1
            parser = self._parsers[mac]
            if getattr(parser, "decryption_failed", False) and mac not in self._warned:
                self._warned.add(mac)
                log.warning("BTHome sensor %s: cannot decrypt (check its bind key)", sensor.sensor_id)
            return None
        mass = fresh.get("mass")
        count = fresh.get("count")
        return SensorReading(
            sensor.sensor_id,
            datetime.now(UTC),
            weight_g=None if mass is None else float(mass) * 1000.0,  # bthome-ble reports mass in kg
            count=None if count is None else int(count),
            battery_pct=_float(fresh.get("battery")),
            temperature_c=_float(fresh.get("temperature")),
            packet_id=None if fresh.get("packet_id") is None else int(fresh["packet_id"]),
            rssi=int(advertisement.rssi) if advertisement.rssi is not None else None,
        )

    async def readings(self) -> AsyncIterator[SensorReading]:
        queue: asyncio.Queue[SensorReading] = asyncio.Queue()

        def detected(device: Any, advertisement: Any) -> None:
            try:
                reading = self.decode(device, advertisement)
            except Exception:  # a malformed advertisement must not stop the scanner
                log.exception("BTHome: advertisement from %s could not be decoded", device.address)
                return
            if reading is not None:
                queue.put_nowait(reading)

        if self.adapter is not None:  # the adapter's owner scans, between label uploads
            await self.adapter.start()
            unsubscribe = self.adapter.subscribe(detected)
            try:
                if self.on_status is not None:
                    self.on_status(SourceStatus(True))
                while True:
                    yield await queue.get()
            finally:
                unsubscribe()
                await self.adapter.close()
        options: dict[str, Any] = {"detection_callback": detected}
        if self.passive:
            from bleak.assigned_numbers import AdvertisementDataType
            from bleak.backends.bluezdbus.advertisement_monitor import OrPattern

            options["scanning_mode"] = "passive"
            options["bluez"] = {"or_patterns": [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")]}
        async with _scanning(options):
            if self.on_status is not None:
                self.on_status(SourceStatus(True))
            while True:
                yield await queue.get()


@contextlib.asynccontextmanager
async def _scanning(options: dict[str, Any]) -> AsyncIterator[None]:
    """A running BleakScanner; BlueZ missing is said in words, not as a FileNotFoundError."""
    scanner = BleakScanner(**options)
    await start_scanner(scanner)
    try:
        yield
    finally:
        with contextlib.suppress(BleakError, OSError):
            await scanner.stop()


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
