"""Serial scanners on a pseudo-terminal: the real pyserial driver, framing, unplug, and the scan modes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.scanners import Framing, ScannerStatus, ScanReading
from drivers.scanners.serial import SerialScanner
from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.pty_scanner import PtyScanner
from tests.peers.streams import collecting


@pytest.fixture
def pty(tmp_path: Path) -> AsyncIterator[PtyScanner]:
    device = PtyScanner(tmp_path)
    yield device
    device.close()


@contextlib.asynccontextmanager
async def reading(scanner: SerialScanner) -> AsyncIterator[asyncio.Queue[ScanReading]]:
    async with collecting(scanner.readings()) as queue:
        try:
            yield queue
        finally:
            await scanner.close()


async def next_code(queue: asyncio.Queue[ScanReading]) -> ScanReading:
    return await asyncio.wait_for(queue.get(), 5)


async def test_codes_framing_and_garbage_through_a_real_tty(pty: PtyScanner) -> None:
    scanner = SerialScanner(pty.path, 9600, Framing(suffix="CR"))
    async with reading(scanner) as queue:
        await asyncio.sleep(0.2)
        pty.scan("3017620422003")
        assert (await next_code(queue)).raw == "3017620422003"
        pty.send(b"]C10103017620")  # a code split across reads
        await asyncio.sleep(0.05)
        pty.send(b"422003\r")
        got = await next_code(queue)
        assert (got.raw, got.symbology_id) == ("0103017620422003", "]C1")
        pty.send(b"\xff\xfe garbage \x00\x01\r" + b"9" * 2000 + b"\r")
        pty.scan("96385074")
        assert (await next_code(queue)).raw == "96385074"
        assert queue.empty()


async def test_gap_framing(pty: PtyScanner) -> None:
    scanner = SerialScanner(pty.path, 9600, Framing(suffix="gap", gap_s=0.05))
    async with reading(scanner) as queue:
        await asyncio.sleep(0.2)
        pty.send(b"3017620422003")
        assert (await next_code(queue)).raw == "3017620422003"


async def test_unplug_and_replug_recover_without_a_restart(pty: PtyScanner) -> None:
    statuses: list[ScannerStatus] = []
    scanner = SerialScanner(pty.path, 9600, Framing(), on_status=statuses.append)
    async with reading(scanner) as queue:
        await asyncio.sleep(0.2)
        pty.scan("3017620422003")
        await next_code(queue)
        pty.unplug()
        await asyncio.sleep(0.5)
        assert statuses[-1].online is False
        pty.plug()
        for _ in range(100):
            if statuses[-1].online:
                break
            await asyncio.sleep(0.05)
        pty.scan("96385074")
        assert (await next_code(queue)).raw == "96385074"
    assert [s.online for s in statuses] == [True, False, True]


async def test_reply_reaches_the_device(pty: PtyScanner) -> None:
    scanner = SerialScanner(pty.path, 9600, Framing())
    async with reading(scanner):
        await asyncio.sleep(0.2)
        await scanner.reply("Pâte à tartiner\t5,49 €")
        assert await asyncio.to_thread(pty.read_line) == "Pâte à tartiner\t5,49 €"


SCANNERS = """
[[scanners]]
id = "kiosk"
port = "{kiosk}"
mode = "price_check"

[[scanners]]
id = "dock"
port = "{dock}"
mode = "receive"

[[scanners]]
id = "aisle"
port = "{aisle}"
mode = "count"
"""


async def test_scan_modes_end_to_end(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    kiosk, dock, aisle = PtyScanner(tmp_path, "kiosk"), PtyScanner(tmp_path, "dock"), PtyScanner(tmp_path, "aisle")
    extra = SCANNERS.format(kiosk=kiosk.path, dock=dock.path, aisle=aisle.path)
    config = write_config(tmp_path, mosquitto, store="scan1", extra=extra)
    try:
        async with head_office(mosquitto, "scan1") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            item = {
                "sku": "N1",
                "price": "5.49",
                "currency": "EUR",
                "gtin": "3017620422003",
                "name": "Pâte à tartiner",
                "version": 1,
            }
            assert (await hq.command("price.set", {"items": [item]}))["status"] == "applied"
            await hq.count(lambda e: e["type"] == "device" and e["data"]["status"] == "online", 3)
            kiosk.scan("3017620422003")
            assert await asyncio.to_thread(kiosk.read_line) == "Pâte à tartiner\t5,49 €"
            kiosk.scan("96385074")
            assert await asyncio.to_thread(kiosk.read_line) == "unknown article"
            scans = await hq.count(lambda e: e["type"] == "scan" and e["data"]["scanner"] == "kiosk", 2)
            assert scans[0]["data"] == {
                "scanner": "kiosk",
                "code": "3017620422003",
                "mode": "price_check",
                "gtin": "3017620422003",
                "sku": "N1",
                "price": "5.49",
                "currency": "EUR",
            }
            assert scans[1]["data"]["sku"] is None
            dock.scan("3017620422003")
            dock.scan("3017620422003")
            received = await hq.count(lambda e: e["type"] == "stock" and e["data"]["reason"] == "receive", 2)
            assert received[-1]["data"]["on_hand"] == 2
            aisle.scan("3017620422003")
            counted = await hq.wait_for(lambda e: e["type"] == "stock" and e["data"]["reason"] == "count")
            assert counted["data"]["counted"] == 1
            kiosk.unplug()
            offline = await hq.wait_for(lambda e: e["type"] == "device" and e["data"]["status"] == "offline")
            assert offline["data"]["device"] == "kiosk"
    finally:
        for device in (kiosk, dock, aisle):
            device.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("SELECT on_hand FROM stock WHERE sku='N1'").fetchone() == (2,)
    assert conn.execute("SELECT reason, delta FROM stock_ledger ORDER BY id").fetchall() == [
        ("receive", 1),
        ("receive", 1),
    ]
    conn.close()


async def test_boris_return_scan_prints_a_receipt_and_in_store_rules_come_from_config(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    from tests.peers.escpos_printer import EscposPrinterPeer, text_of

    desk = PtyScanner(tmp_path, "desk")
    printer = EscposPrinterPeer()
    extra = f"""
[[printers]]
id = "desk-printer"
url = "{printer.url}"

[[scanners]]
id = "desk"
port = "{desk.path}"
mode = "return"
printer = "desk-printer"

[codes]
in_store = [{{ prefix = "21", kind = "weight", decimals = 3 }}]
"""
    config = write_config(tmp_path, mosquitto, store="ret1", extra=extra)
    try:
        async with head_office(mosquitto, "ret1") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            items = [
                {
                    "sku": "N1",
                    "price": "5.49",
                    "currency": "EUR",
                    "gtin": "3017620422003",
                    "name": "Pâte à tartiner",
                    "version": 1,
                },
                {
                    "sku": "CHEESE",
                    "price": "26.00",
                    "currency": "EUR",
                    "gtin": "2123456000009",
                    "name": "Comté",
                    "version": 1,
                },
            ]
            await hq.command("price.set", {"items": items})
            desk.scan("3017620422003")
            returned = await hq.wait_for(lambda e: e.get("type") == "stock" and e["data"]["reason"] == "return")
            assert returned["data"]["on_hand"] == 1
            await hq.wait_for(lambda e: e.get("type") == "print" and e["data"]["status"] == "printed")
            assert "Retour" in text_of(printer.jobs[0]) and "Pâte à tartiner" in text_of(printer.jobs[0])
            assert "5,49 €" in text_of(printer.jobs[0])
            desk.scan("2123456012996")  # prefix 21 set to weight by [codes]: 1.299 kg of CHEESE
            scan = await hq.wait_for(lambda e: e.get("type") == "scan" and e["data"]["code"] == "2123456012996")
            assert scan["data"]["sku"] == "CHEESE" and scan["data"]["net_weight_g"] == 1299
    finally:
        desk.close()
        printer.close()
