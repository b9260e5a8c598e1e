"""The OpenEPaperLink driver against a loopback access point that behaves as the firmware does."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from drivers.labels import DeliveryReport, LabelNotFound
from drivers.labels.openepaperlink import OpenEPaperLinkStation, led_pattern
from gateway.labels.render import DisplaySpec, LabelContent, render
from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.oepl_ap import FakeAccessPoint

MAC = "0000021EB4C63B1A"


@pytest.fixture
async def ap() -> AsyncIterator[FakeAccessPoint]:
    access_point = await FakeAccessPoint().start()
    yield access_point
    await access_point.stop()


@pytest.fixture
async def station(ap: FakeAccessPoint) -> AsyncIterator[OpenEPaperLinkStation]:
    """The driver as its owner runs it: started, its listener in a task of ours, closed at the end."""
    driver = OpenEPaperLinkStation(ap.url, name="ap-test")
    await driver.start()
    listener = asyncio.create_task(driver.listen())
    await asyncio.wait_for(driver.ws_connected.wait(), 5)
    yield driver
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    await driver.close()


async def next_report(station: OpenEPaperLinkStation) -> DeliveryReport:
    async def first() -> DeliveryReport:
        async for report in station.reports():
            return report
        raise AssertionError("reports ended")

    return await asyncio.wait_for(first(), 5)


def label_image(price: int = 549) -> Image.Image:
    return render(
        LabelContent("A1", "Pâte à tartiner", price, "EUR", gtin="3017620422003"), DisplaySpec(296, 128)
    ).image


async def test_upload_is_confirmed_and_stopsleep_is_off(ap: FakeAccessPoint, station: OpenEPaperLinkStation) -> None:
    ap.add_tag(MAC, hw_type=1)
    info = await station.tag_info("021eb4c63b1a")  # 12 digits, lower case: the same tag
    assert (info.label_id, info.width, info.height, info.colours) == (MAC, 296, 128, ("white", "black", "red"))
    assert "01" in ap.tag_types, "the missing tag-type file was uploaded"
    await station.send_image(MAC, label_image(), "hash-1")
    report = await next_report(station)
    assert (report.label_id, report.outcome, report.token) == (MAC, "confirmed", "hash-1")
    shown = Image.open(io.BytesIO(ap.tags[MAC].image or b""))
    assert shown.format == "JPEG" and shown.size == (296, 128)
    assert ap.config["stopsleep"] == "0"


async def test_same_image_and_timeout(ap: FakeAccessPoint, station: OpenEPaperLinkStation) -> None:
    ap.add_tag(MAC, hw_type=1)
    silent = ap.add_tag("0000AABBCCDDEEFF", hw_type=1, answers=False)
    await station.send_image(MAC, label_image(), "h1")
    assert (await next_report(station)).outcome == "confirmed"
    await station.send_image(MAC, label_image(), "h2")
    assert (await next_report(station)).outcome == "same_image"
    await station.send_image(silent.mac, label_image(), "h3")
    report = await next_report(station)
    assert (report.label_id, report.outcome, report.detail) == (silent.mac, "failed", "xfer timeout")


async def test_unknown_tag_and_wrong_size_are_refused(ap: FakeAccessPoint, station: OpenEPaperLinkStation) -> None:
    with pytest.raises(LabelNotFound):
        await station.tag_info("0000000000000001")
    with pytest.raises(ValueError):
        station.normalise_id("not-a-mac")
    ap.add_tag(MAC, hw_type=2, size=(400, 300))
    await station.send_image(MAC, label_image(), "wrong-size")  # 296x128 sent to a 400x300 tag
    report = await next_report(station)
    assert (report.outcome, report.detail) == ("failed", "invalid jpg")


async def test_the_access_point_drops_a_file_sent_before_the_mac(ap: FakeAccessPoint) -> None:
    ap.add_tag(MAC)
    form = aiohttp.FormData()
    form.add_field("file", b"\xff\xd8jpeg", filename="x.jpg", content_type="image/jpeg")
    form.add_field("mac", MAC)
    async with aiohttp.ClientSession() as session, session.post(f"{ap.url}/imgupload", data=form) as response:
        assert response.status == 200  # as the firmware: an empty 200 even when nothing was taken
    assert ap.dropped_uploads == 1 and ap.uploads == []


async def test_led_flash_pattern(ap: FakeAccessPoint, station: OpenEPaperLinkStation) -> None:
    ap.add_tag(MAC)
    await station.flash(MAC, "red", 5)
    assert ap.led_requests == [(MAC, led_pattern("red", 5))]
    pattern = bytes.fromhex(ap.led_requests[0][1])
    assert pattern[0] & 0x0F == 1 and pattern[1] == 0xE0 and pattern[10] >= 1


async def test_websocket_reconnects(ap: FakeAccessPoint, station: OpenEPaperLinkStation) -> None:
    ap.add_tag(MAC)
    await ap.drop_websockets()
    await asyncio.sleep(0.1)
    await asyncio.wait_for(station.ws_connected.wait(), 10)
    for _ in range(50):
        if ap.sockets:
            break
        await asyncio.sleep(0.1)
    await station.send_image(MAC, label_image(), "after-reconnect")
    assert (await next_report(station)).outcome == "confirmed"


async def test_gateway_labels_through_an_access_point(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    access_point = await FakeAccessPoint(drop_rate=0.0).start()
    try:
        access_point.add_tag(MAC, hw_type=1)
        access_point.add_tag("0000AABBCCDDEEFF", hw_type=0, size=(152, 152))
        extra = f'[[label_stations]]\nid = "ap-1"\nbackend = "openepaperlink"\nurl = "{access_point.url}"\n'
        config = write_config(tmp_path, mosquitto, store="oepl1", extra=extra)
        async with head_office(mosquitto, "oepl1") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            item = {
                "sku": "A1",
                "price": "5.49",
                "currency": "EUR",
                "gtin": "3017620422003",
                "name": "Nutella",
                "version": 1,
            }
            await hq.command("price.set", {"items": [item]})
            labels = [
                {"label": MAC, "sku": "A1", "station": "ap-1"},
                {"label": "aabbccddeeff", "sku": "A1", "station": "ap-1"},
            ]
            assert (await hq.command("label.assign", {"items": labels}))["applied"] == 2
            confirmed = await hq.count(lambda e: e.get("type") == "label" and e["data"]["status"] == "confirmed", 2)
            assert {e["data"]["label"] for e in confirmed} == {MAC, "0000AABBCCDDEEFF"}
            assert (await hq.command("label.flash", {"sku": "A1", "color": "blue", "seconds": 3}))["applied"] == 2
            for _ in range(50):
                if len(access_point.led_requests) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(access_point.led_requests) == 2
        sizes = {mac: Image.open(io.BytesIO(tag.image or b"")).size for mac, tag in access_point.tags.items()}
        assert sizes == {MAC: (296, 128), "0000AABBCCDDEEFF": (152, 152)}
        conn = sqlite3.connect(tmp_path / "state.db")
        assert conn.execute("SELECT count(*) FROM labels WHERE state = 'confirmed'").fetchone() == (2,)
        conn.close()
    finally:
        await access_point.stop()
