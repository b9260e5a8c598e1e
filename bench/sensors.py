"""Shelf-sensor readings per second through BTHome decode + stability filter + SQLite, for 500 sensors.

Ours: BthomeSensors.decode (bthome-ble inside, plus the per-frame new-value check), the shelf
tracker, and for each change its `shelf` event committed through the group-committing writer.
Baseline: bthome-ble's parser alone on the same advertisements.
Run: .venv/bin/python bench/sensors.py [--sensors 500] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import emit, progress  # type: ignore[import-not-found]
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak

from drivers.sensors.bthome import BTHOME_UUID, BthomeSensor, BthomeSensors
from gateway.config import ShelfConfig
from gateway.db import StateDB
from gateway.shelves import ShelfTracker, record_change
from tests.peers.bluez import bthome_frame


def adverts(sensors: int, rounds: int) -> list[tuple[BLEDevice, AdvertisementData]]:
    out = []
    for r in range(rounds):
        for s in range(sensors):
            mac = f"A4:C1:38:{s >> 16 & 0xFF:02X}:{s >> 8 & 0xFF:02X}:{s & 0xFF:02X}"
            units = 12 - (r // 8) % 12
            frame = bthome_frame(r + 1, mass_kg=units * 0.4 + (r % 3) * 0.001)
            ad = AdvertisementData(None, {}, {BTHOME_UUID: frame}, [], None, -60, ())
            out.append((BLEDevice(mac, None, None), ad))
    return out


async def ours(items: list[tuple[BLEDevice, AdvertisementData]], sensors: int, path: Path) -> tuple[float, int]:
    macs = sorted({d.address for d, _ in items})
    decoder = BthomeSensors([BthomeSensor(f"s{n}", mac) for n, mac in enumerate(macs)])
    trackers = {
        f"s{n}": ShelfTracker(ShelfConfig(sensor=f"s{n}", sku=f"K{n}", unit_weight_g=400, capacity=12, low=3))
        for n in range(len(macs))
    }
    db = StateDB(path)
    await db.start()
    changes = 0
    pending = []
    start = time.perf_counter()
    for device, ad in items:
        reading = decoder.decode(device, ad)
        if reading is None or reading.weight_g is None:
            continue
        tracker = trackers[reading.sensor_id]
        change = tracker.add(reading.weight_g)
        if change is not None:
            changes += 1
            pending.append(
                db.write(functools.partial(record_change, sensor=reading.sensor_id, slot=tracker.slot, change=change))
            )
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - start
    await db.close()
    return len(items) / elapsed, changes


def bare(items: list[tuple[BLEDevice, AdvertisementData]]) -> float:
    parsers: dict[str, BTHomeBluetoothDeviceData] = {}
    start = time.perf_counter()
    for device, ad in items:
        parser = parsers.setdefault(device.address, BTHomeBluetoothDeviceData())
        info = BluetoothServiceInfoBleak.from_device_and_advertisement_data(device, ad, "hci0", time.monotonic(), False)
        parser.update(info)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sensors", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=24)
    args = parser.parse_args()
    items = adverts(args.sensors, args.rounds)
    progress(f"{len(items)} advertisements from {args.sensors} sensors...")
    raw = bare(items)
    with tempfile.TemporaryDirectory() as tmp:
        rate, changes = asyncio.run(ours(items, args.sensors, Path(tmp) / "state.db"))
    emit(
        {
            "bench": "sensors",
            "sensors": args.sensors,
            "readings": len(items),
            "ours_readings_per_s": round(rate),
            "bthome_ble_parser_alone_per_s": round(raw),
            "ratio_ours_over_parser": round(rate / raw, 2),
            "shelf_changes_committed": changes,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )


if __name__ == "__main__":
    main()
