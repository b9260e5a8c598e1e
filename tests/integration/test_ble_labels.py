"""Bluetooth shelf tags through the real bleak, bleak-retry-connector, py-atc-ble-oepl and gicisky code.

The tags are emulated on the private BlueZ (tests/peers/bluez_template.py): each is a GATT
peripheral that speaks its firmware's protocol, acknowledges (or refuses, or drops) a transfer,
and keeps the image it shows. What the tests check is what the tag holds, not what our code says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from drivers.bluetooth import BluetoothAdapter, BluezUnavailable
from drivers.labels import DeliveryReport, LabelNotFound
from drivers.labels.ble import BleLabelStation, LedNotAvailable, normalise_address
from drivers.sensors.bthome import BthomeSensor, BthomeSensors
from gateway.labels.render import DisplaySpec, LabelContent, render
from tests.peers.bluez import FakeBlueZ, bthome_frame
from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.streams import collecting

ATC = "AA:BB:CC:00:00:01"
GICISKY = "AA:BB:CC:00:00:02"
SCALE = "A4:C1:38:8D:18:B2"
GTIN = "3017620422003"


def label(price_minor: int) -> Image.Image:
    return render(LabelContent("A1", "Pâte à tartiner", price_minor, "EUR", gtin=GTIN), DisplaySpec(296, 128)).image


def shown(bluez: FakeBlueZ, mac: str) -> Image.Image:
    return Image.open(bluez.shown(mac)).convert("RGB")


def barcodes(image: Image.Image) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(image.convert("L"))]


async def next_report(station: BleLabelStation, timeout: float = 60) -> DeliveryReport:
    async def first() -> DeliveryReport:
        async for report in station.reports():
            return report
        raise AssertionError("reports ended")

    return await asyncio.wait_for(first(), timeout)


@contextlib.asynccontextmanager
async def station(adapter: BluetoothAdapter, protocol: str, **options: float) -> AsyncIterator[BleLabelStation]:
    driver = BleLabelStation(adapter, protocol, name=f"test-{protocol}", **options)  # type: ignore[arg-type]
    await driver.start()
    uploads = asyncio.create_task(driver.listen())  # as the station's owner runs it
    try:
        yield driver
    finally:
        uploads.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await uploads
        await driver.close()


def test_addresses() -> None:
    assert normalise_address("aa:bb:cc:00:00:01") == normalise_address("AABBCC000001") == ATC
    assert normalise_address("aa-bb-cc-00-00-01") == ATC
    with pytest.raises(ValueError, match="not a Bluetooth address"):
        normalise_address("0000021EB4C63B1A")


async def test_atc_tag_shows_the_label_after_its_acknowledgement(bluez: FakeBlueZ) -> None:
    bluez.add_tag(ATC, "atc_oepl", width=296, height=128, colors=2)
    async with station(BluetoothAdapter("hci0"), "atc_oepl") as driver, bluez.tags_advertising([ATC]):
        info = await driver.tag_info("aa:bb:cc:00:00:01")  # interrogated over GATT (0005, 0011)
        assert (info.label_id, info.width, info.height, info.colours) == (ATC, 296, 128, ("white", "black", "red"))
        image = label(549)
        await driver.send_image(ATC, image, "h1")
        report = await next_report(driver)
        assert (report.label_id, report.outcome, report.token) == (ATC, "confirmed", "h1")
        held = shown(bluez, ATC)
        assert held.tobytes() == image.convert("RGB").tobytes()  # pixel for pixel: the 5.49 label, not another
        assert barcodes(held) == [GTIN]
        log = bluez.tag_log(ATC)
        assert log.index("ack") < log.index("shown")  # the tag acknowledged, then showed it

        # a transfer the tag drops is not confirmed (py-atc-ble-oepl waits 10 s for the next answer)
        bluez.tag_behaviour(ATC, "drop_after_parts", 1)
        await driver.send_image(ATC, label(599), "h2")
        report = await next_report(driver)
        assert (report.outcome, report.token) == ("failed", "h2")
        assert "dropped" in bluez.tag_log(ATC)
        assert shown(bluez, ATC).tobytes() == image.convert("RGB").tobytes()  # still the 5.49 label

        await driver.flash(ATC, "green", 0.2)
        assert bluez.tag_log(ATC)[-3:] == ["led on", "led off", "disconnect"]


async def test_gicisky_tag_size_from_its_advertisement_and_refusals(bluez: FakeBlueZ) -> None:
    bluez.add_tag(GICISKY, "gicisky", model=0x33)
    async with station(BluetoothAdapter("hci0"), "gicisky") as driver, bluez.tags_advertising([GICISKY]):
        info = await driver.tag_info(GICISKY.lower())
        assert (info.width, info.height, info.colours, info.hw_type) == (296, 128, ("white", "black", "red"), 0x33)
        assert "connect" not in bluez.tag_log(GICISKY)  # the size came from the advertisement
        image = label(1299)
        await driver.send_image(GICISKY, image, "g1")
        report = await next_report(driver)
        assert (report.outcome, report.token) == ("confirmed", "g1")
        held = shown(bluez, GICISKY)  # shown once we disconnected, as the panel refreshes then
        assert held.tobytes() == image.convert("RGB").tobytes()
        assert barcodes(held) == [GTIN]

        bluez.tag_behaviour(GICISKY, "refuse", True)
        await driver.send_image(GICISKY, label(1399), "g2")
        report = await next_report(driver)
        assert (report.outcome, report.detail) == ("failed", "the tag refused the image (error code 03)")

        bluez.tag_behaviour(GICISKY, "refuse", False)
        bluez.tag_behaviour(GICISKY, "drop_after_parts", 2)
        await driver.send_image(GICISKY, label(1399), "g3")
        report = await next_report(driver)
        assert (report.outcome, report.detail) == ("failed", "the tag dropped the connection mid-transfer")
        assert shown(bluez, GICISKY).tobytes() == image.convert("RGB").tobytes()

        assert not driver.has_led
        with pytest.raises(LedNotAvailable, match="no LED"):
            await driver.flash(GICISKY, "green", 1)


async def test_a_station_without_bluez_says_so_and_starts_afresh_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    adapter = BluetoothAdapter("hci0")
    for _ in range(2):  # the supervisor's restart meets the same clear error, not a half-started adapter
        driver = BleLabelStation(adapter, "atc_oepl", name="no-bluez")
        with pytest.raises(BluezUnavailable, match="BlueZ cannot be reached: no system D-Bus"):
            await driver.start()
        await driver.close()


async def test_unknown_and_unreachable_tags(bluez: FakeBlueZ) -> None:
    bluez.add_tag(ATC, "atc_oepl")
    bluez.tag_behaviour(ATC, "refuse_connect", True)
    async with (
        station(BluetoothAdapter("hci0"), "atc_oepl", seen_timeout_s=1.0, connect_timeout_s=5.0) as driver,
        bluez.tags_advertising([ATC]),
    ):
        with pytest.raises(LabelNotFound, match="no atc_oepl advertisement"):
            await driver.tag_info("AA:BB:CC:99:99:99")
        await driver.send_image(ATC, label(549), "x")  # its size is not known yet: checked at upload
        report = await next_report(driver)
        assert report.outcome == "failed" and report.detail and "BLEConnectionError" in report.detail
        assert bluez.tag_log(ATC).count("connect refused") >= 2  # bleak-retry-connector tried again


async def test_fifty_labels_while_bthome_readings_keep_arriving(bluez: FakeBlueZ) -> None:
    tags = [f"AA:BB:CC:00:01:{n:02X}" for n in range(50)]
    for mac in tags:
        bluez.add_tag(mac, "atc_oepl")
    adapter = BluetoothAdapter("hci0", scan_share=0.25, min_scan_window_s=0.3)
    sensors = BthomeSensors([BthomeSensor("shelf-a1", SCALE)], adapter=adapter)
    stop = asyncio.Event()

    async def scale() -> None:  # a BTHome scale advertising every 100 ms, as long as the labels update
        packet = 0
        while not stop.is_set():
            packet += 1
            bluez.advertise(SCALE, bthome_frame(packet, mass_kg=2.0 + packet / 100), rssi=-60 - packet % 3)
            await asyncio.sleep(0.1)

    async with (
        station(adapter, "atc_oepl") as driver,
        collecting(sensors.readings(), settle_s=0.3) as readings,
        bluez.tags_advertising(tags, every_s=2.0),
    ):
        advertiser = asyncio.create_task(scale())
        arrivals: list[float] = []
        confirmations: list[float] = []
        try:
            for n, mac in enumerate(tags):
                await driver.send_image(mac, label(100 + n), f"t{n}")
            done: dict[str, DeliveryReport] = {}
            async with asyncio.timeout(240):
                async for report in driver.reports():
                    done[report.label_id] = report
                    confirmations.append(time.monotonic())
                    while not readings.empty():
                        readings.get_nowait()
                        arrivals.append(time.monotonic())
                    if len(done) == len(tags):
                        break
        finally:
            stop.set()
            await advertiser
    assert {r.outcome for r in done.values()} == {"confirmed"}
    for n, mac in enumerate(tags):
        assert shown(bluez, mac).tobytes() == label(100 + n).convert("RGB").tobytes(), mac
    # readings went on between the uploads: some arrived in each quarter of the update run
    first, last = confirmations[0], confirmations[-1]
    quarter = (last - first) / 4
    for q in range(4):
        start = first + q * quarter
        assert any(start <= t <= start + quarter for t in arrivals), f"no BTHome reading in quarter {q + 1}"
    assert adapter.connections == 50 and adapter.scan_windows > 25


STATION = """
[[label_stations]]
id = "ble-1"
backend = "ble"
protocol = "atc_oepl"
retries = 2

[[label_stations]]
id = "ble-2"
backend = "ble"
adapter = "hci0"
protocol = "gicisky"
"""


def item(price: str, version: int) -> dict[str, object]:
    return {"sku": "A1", "price": price, "currency": "EUR", "gtin": GTIN, "name": "Pâte à tartiner", "version": version}


async def test_gateway_drives_ble_tags(bluez: FakeBlueZ, mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    bluez.add_tag(ATC, "atc_oepl", battery_mv=2950)
    bluez.add_tag(GICISKY, "gicisky", model=0x33)
    config = write_config(tmp_path, mosquitto, store="ble1", extra=STATION)
    async with head_office(mosquitto, "ble1") as hq, running_gateway(config), bluez.tags_advertising([ATC, GICISKY]):
        await hq.wait_for(lambda s: s.get("state") == "online")
        await hq.command("price.set", {"items": [item("5.49", 1)]})
        labels = [
            {"label": ATC.lower(), "sku": "A1", "station": "ble-1"},
            {"label": GICISKY.replace(":", ""), "sku": "A1", "station": "ble-2"},
        ]
        assert (await hq.command("label.assign", {"items": labels}))["applied"] == 2
        confirmed = await hq.count(
            lambda e: e.get("type") == "label" and e["data"]["status"] == "confirmed", 2, timeout=60
        )
        assert {e["data"]["label"] for e in confirmed} == {ATC, GICISKY}
        statuses = [e["data"]["status"] for e in hq.events if e["type"] == "label" and e["data"]["label"] == ATC]
        assert statuses == ["sent", "confirmed"]
        for mac in (ATC, GICISKY):
            held = shown(bluez, mac)
            assert barcodes(held) == [GTIN]
            assert held.tobytes() == label(549).convert("RGB").tobytes()

        # the same content again (a newer version, the same price): nothing is sent
        connects = bluez.tag_log(ATC).count("connect")
        await hq.command("price.set", {"items": [item("5.49", 2)]})
        await asyncio.sleep(1.0)
        assert bluez.tag_log(ATC).count("connect") == connects

        # pick-to-light: the ATC tag's LED; the Gicisky tag has none and is refused by name
        result = await hq.command("label.flash", {"label": ATC, "seconds": 0.5})
        assert result["status"] == "applied"
        for _ in range(100):
            if "led on" in bluez.tag_log(ATC):
                break
            await asyncio.sleep(0.05)
        assert "led on" in bluez.tag_log(ATC)
        result = await hq.command("label.flash", {"label": GICISKY})
        assert result["status"] == "rejected"
        assert result["errors"][0]["field"] == "data.label" and "no LED" in result["errors"][0]["message"]

        # battery and signal of the tag as its device status
        health = await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["device"] == ATC, timeout=10)
        assert health["data"]["kind"] == "label" and "battery 58%" in health["data"]["detail"]
        assert "dBm" in health["data"]["detail"]
        bluez.tag_advertises(ATC, rssi=-80, battery_mv=2700)  # and so on, every 0.5 s
        low = await hq.wait_for(
            lambda e: e.get("type") == "device" and e["data"]["device"] == ATC and "16%" in e["data"]["detail"]
        )
        assert "signal -80 dBm" in low["data"]["detail"]

        # a transfer the tag drops every time: tried 1 + retries times, with backoff, then `failed`
        bluez.tag_behaviour(ATC, "drop_at_block", 0)  # as the image's first block starts
        await hq.command("price.set", {"items": [item("5.99", 3)]})
        failed = await hq.wait_for(
            lambda e: e.get("type") == "label" and e["data"]["label"] == ATC and e["data"]["status"] == "failed",
            timeout=60,
        )
        assert failed["data"]["price"] == "5.99"
        assert bluez.tag_log(ATC).count("dropped") == 3
        assert barcodes(shown(bluez, ATC)) == [GTIN]
        assert shown(bluez, ATC).tobytes() == label(549).convert("RGB").tobytes()  # the tag never took 5.99
    conn = sqlite3.connect(tmp_path / "state.db")
    rows = dict(conn.execute("SELECT label, state FROM labels").fetchall())
    conn.close()
    assert rows == {ATC: "failed", GICISKY: "confirmed"}
    # the technician's `status` shows each tag's battery and signal
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "status", "--config", str(config), "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err
    tags = {d["device"]: d for d in json.loads(out)["devices"] if d["kind"] == "label"}
    assert "battery 16% (2.70 V), signal -80 dBm" in tags[ATC]["detail"]
    assert "battery" in tags[GICISKY]["detail"] and "dBm" in tags[GICISKY]["detail"]
