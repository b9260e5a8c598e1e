"""BTHome v2 shelf sensors through the real bleak code, on an emulated BlueZ (a private D-Bus)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from drivers.sensors.bthome import BthomeSensor, BthomeSensors
from tests.peers.bluez import FakeBlueZ, bthome_encrypted, bthome_frame
from tests.peers.streams import collecting

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon missing (Debian: dbus-daemon)")

SCALE = "A4:C1:38:8D:18:B2"
SECRET_SCALE = "A4:C1:38:00:00:01"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


async def test_plain_and_encrypted_frames_and_repeats(bluez: FakeBlueZ) -> None:
    sensors = BthomeSensors([BthomeSensor("shelf-a1", SCALE), BthomeSensor("shelf-b2", SECRET_SCALE, KEY)])
    async with collecting(sensors.readings(), settle_s=0.5) as queue:  # the scanner sets up on the bus
        bluez.advertise(SCALE, bthome_frame(7, mass_kg=44.64, battery=93))
        first = await asyncio.wait_for(queue.get(), 5)
        assert (first.sensor_id, first.weight_g, first.battery_pct, first.packet_id) == ("shelf-a1", 44640.0, 93, 7)
        bluez.advertise(SCALE, bthome_frame(7, mass_kg=50.0), rssi=-61)  # the same packet id again: not counted
        bluez.advertise(SCALE, bthome_frame(8, mass_kg=12.0), rssi=-62)
        second = await asyncio.wait_for(queue.get(), 5)
        assert (second.packet_id, second.weight_g) == (8, 12000.0)
        bluez.advertise(SECRET_SCALE, bthome_encrypted(SECRET_SCALE, KEY, counter=1, packet_id=1, mass_kg=12.34))
        secret = await asyncio.wait_for(queue.get(), 5)
        assert (secret.sensor_id, secret.weight_g) == ("shelf-b2", 12340.0)
        wrong = bytes(16)
        bluez.advertise(
            SECRET_SCALE, bthome_encrypted(SECRET_SCALE, wrong, counter=2, packet_id=2, mass_kg=99.0), rssi=-70
        )
        await asyncio.sleep(0.5)
        assert queue.empty()
    assert sensors.dropped >= 2
