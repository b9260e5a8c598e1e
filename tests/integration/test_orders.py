"""Store scenarios end to end: click & collect with pick-to-light and scans, e-reservation expiry."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.peers.escpos_printer import EscposPrinterPeer, qr_data, text_of
from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.pty_scanner import PtyScanner

REPO = Path(__file__).resolve().parents[2]

STORE_DEVICES = """
[[printers]]
id = "back-office"
url = "{printer}"

[[scanners]]
id = "picker"
port = "{picker}"
mode = "pickup"

[[label_stations]]
id = "sim"
backend = "simulator"
directory = "{labels}"
confirm_delay_s = 0.05

[orders]
printer = "back-office"
flash_color = "blue"
flash_seconds = 30
"""

PRODUCTS = [
    {"sku": "A1", "price": "5.49", "currency": "EUR", "gtin": "3017620422003", "name": "Pâte à tartiner", "version": 1},
    {"sku": "B2", "price": "1.30", "currency": "EUR", "gtin": "96385074", "name": "Baguette", "version": 1},
]


async def test_click_and_collect(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    printer = EscposPrinterPeer()
    picker = PtyScanner(tmp_path, "picker")
    extra = STORE_DEVICES.format(printer=printer.url, picker=picker.path, labels=tmp_path / "labels")
    config = write_config(tmp_path, mosquitto, store="cc1", extra=extra)
    try:
        async with head_office(mosquitto, "cc1") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            await hq.command("price.set", {"items": PRODUCTS})
            await hq.command("stock.set", {"items": [{"sku": "A1", "on_hand": 5, "version": 1},
                                                     {"sku": "B2", "on_hand": 3, "version": 1}]})  # fmt: skip
            await hq.command("label.assign", {"items": [{"label": "a1", "sku": "A1", "station": "sim"},
                                                        {"label": "b2", "sku": "B2", "station": "sim"}]})  # fmt: skip
            order = {"order": "CC-1042", "customer": "Mme Dupont", "mode": "collect",
                     "lines": [{"sku": "A1", "qty": 2, "location": "R3"}, {"sku": "B2", "qty": 1}]}  # fmt: skip
            # head office sends it with the hq tool, as operations would
            sent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "hq", "--broker", mosquitto.url,
                "command", "--store", "cc1", "order.reserve", json.dumps(order),
                stdout=asyncio.subprocess.PIPE, cwd=REPO,
            )  # fmt: skip
            answer, _ = await asyncio.wait_for(sent.communicate(), 30)
            assert sent.returncode == 0 and json.loads(answer)["status"] == "applied"
            reserved = await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "reserved")
            assert [line["reserved"] for line in reserved["data"]["lines"]] == [2, 1]
            # the pick list printed, and the labels of both skus flash
            for _ in range(100):
                if printer.jobs and (tmp_path / "labels" / "flash.log").exists():
                    break
                await asyncio.sleep(0.05)
            assert "Liste de préparation" in text_of(printer.jobs[0]) and "[R3]" in text_of(printer.jobs[0])
            flashes = (tmp_path / "labels" / "flash.log").read_text()
            assert " a1 blue 30s" in flashes and " b2 blue 30s" in flashes
            # the picker scans the articles
            for code in ("3017620422003", "3017620422003", "96385074"):
                picker.scan(code)
                await asyncio.to_thread(picker.read_line)
            ready = await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "ready")
            assert [line["picked"] for line in ready["data"]["lines"]] == [2, 1]
            for _ in range(100):
                if len(printer.jobs) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert qr_data(printer.jobs[1]) == ["ORDER:CC-1042"] and "Mme Dupont" in text_of(printer.jobs[1])
            # at the counter: the order's QR code
            picker.scan("ORDER:CC-1042")
            assert await asyncio.to_thread(picker.read_line) == "order CC-1042 collected"
            await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "collected")
            stocks = [e["data"] for e in hq.events if e["type"] == "stock" and e["data"]["reason"] == "collected"]
            assert {(s["sku"], s["on_hand"], s["reserved"], s["available"]) for s in stocks} == {
                ("A1", 3, 0, 3), ("B2", 2, 0, 2),
            }  # fmt: skip
    finally:
        printer.close()
        picker.close()


async def test_e_reservation_expires_also_across_a_restart(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="er1")
    async with head_office(mosquitto, "er1") as hq:
        async with running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            await hq.command("stock.set", {"items": [{"sku": "A1", "on_hand": 4, "version": 1}]})
            soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
            order = {"order": "ER-7", "mode": "reservation", "expires_at": soon, "lines": [{"sku": "A1", "qty": 3}]}
            assert (await hq.command("order.reserve", order))["status"] == "applied"
        await asyncio.sleep(2.5)  # it expires while the gateway is stopped
        async with running_gateway(config):
            expired = await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "expired")
            assert expired["data"]["order"] == "ER-7"
            release = await hq.wait_for(lambda e: e.get("type") == "stock" and e["data"]["reason"] == "release")
            assert release["data"]["available"] == 4
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("SELECT on_hand, reserved FROM stock WHERE sku = 'A1'").fetchone() == (4, 0)
    conn.close()


async def test_ship_from_store_and_boris_return(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    printer = EscposPrinterPeer()
    picker = PtyScanner(tmp_path, "picker")
    extra = STORE_DEVICES.format(printer=printer.url, picker=picker.path, labels=tmp_path / "labels")
    config = write_config(tmp_path, mosquitto, store="sfs1", extra=extra)
    try:
        async with head_office(mosquitto, "sfs1") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            await hq.command("price.set", {"items": PRODUCTS})
            await hq.command("stock.set", {"items": [{"sku": "A1", "on_hand": 5, "version": 1}]})
            order = {"order": "SHIP-5", "customer": "M. Bernard", "mode": "ship",
                     "lines": [{"sku": "A1", "qty": 1, "location": "B-12-3"}]}  # fmt: skip
            assert (await hq.command("order.reserve", order))["status"] == "applied"
            picker.scan("3017620422003")
            assert "order ready" in await asyncio.to_thread(picker.read_line)
            await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "ready")
            for _ in range(100):
                if len(printer.jobs) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert "[B-12-3]" in text_of(printer.jobs[0])  # the pick list carries the bin location
            assert "Bordereau d'expédition" in text_of(printer.jobs[1])
            # BORIS: a web order brought back to the store, one article resaleable, one damaged
            back = {"order": "WEB-77", "refund": "6.79", "reason": "ne convient pas",
                    "lines": [{"sku": "A1", "qty": 1}, {"sku": "B2", "qty": 1, "condition": "damaged"}]}  # fmt: skip
            assert (await hq.command("order.return", back))["status"] == "applied"
            returned = await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "returned")
            assert returned["data"]["order"] == "WEB-77"
            stock = await hq.wait_for(lambda e: e.get("type") == "stock" and e["data"]["reason"] == "return")
            assert (stock["data"]["sku"], stock["data"]["on_hand"]) == ("A1", 6)
            damaged = await hq.wait_for(lambda e: e.get("type") == "stock" and e["data"]["reason"] == "return_damaged")
            assert damaged["data"]["sku"] == "B2" and damaged["data"]["on_hand"] == 0
            for _ in range(100):
                if len(printer.jobs) >= 3:
                    break
                await asyncio.sleep(0.05)
            receipt = text_of(printer.jobs[2])
            assert "Retour" in receipt and "6,79 €" in receipt and "abîmé" in receipt
    finally:
        printer.close()
        picker.close()
