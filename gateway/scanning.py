"""Scan modes: what a scan means at the kiosk, in the aisle, at the back door and at the counter.

price_check  answer from the local cache on the scanner's own port (a kiosk display), `scan` event
count        one unit counted for a stock take (`stock_counts`), `scan` and `stock` events (reason count)
receive      a delivery: on_hand +1 (reason receive)
return       a BORIS return: on_hand +1 (reason return), and the return receipt on the scanner's printer
pickup       an order's own code collects it; an article's code picks one unit for the oldest open order
             that needs it (both asked of the orders service); `scan` event with the result

Every answer comes from SQLite, never from head office: the store keeps working offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drivers.scanners import Framing, ScannerStatus, ScanReading
from gateway import devices, outbox, stock
from gateway.bus import Transaction
from gateway.codes import FRENCH_RULES, InStoreRule, InStoreRules, ScannedCode, interpret
from gateway.config import ScannerConfig
from gateway.domain import DocumentRefused, PickupScan, Price, PrintRequest
from gateway.money import display, from_minor
from gateway.pricing import find_by_gtin, get_price
from gateway.service import Service
from gateway.storage import StorageFull
from gateway.supervisor import Device
from gateway.timeutil import epoch_ms, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriceAnswer:
    """A price check's answer: the product (if the cache knows it) and the price to show."""

    code: ScannedCode
    product: Price | None
    price_minor: int | None
    currency: str | None


def price_check(conn: sqlite3.Connection, code: ScannedCode, now: datetime) -> PriceAnswer:
    """Look the code up in the local cache (an embedded in-store price wins over the shelf price)."""
    product = find_by_gtin(conn, code.gtin) if code.gtin else None
    if product is None:
        return PriceAnswer(code, None, code.price_minor, code.currency)
    if code.price_minor is not None:
        return PriceAnswer(code, product, code.price_minor, code.currency or product.currency)
    return PriceAnswer(code, product, product.effective_minor(now), product.currency)


def reply_line(config: ScannerConfig, answer: PriceAnswer) -> str:
    """The kiosk's line, from the scanner's `reply_format`."""
    if answer.product is None:
        return config.reply_unknown
    product = answer.product
    fields = {
        "name": product.name or product.sku,
        "sku": product.sku,
        "gtin": product.gtin or "",
        "currency": answer.currency or product.currency,
        "price": display(answer.price_minor or 0, answer.currency or product.currency),
        "promo_price": ""
        if product.promo_price_minor is None
        else display(product.promo_price_minor, product.currency),
    }
    try:
        return config.reply_format.format(**fields)
    except (KeyError, IndexError, ValueError):
        return f"{fields['name']}\t{fields['price']}"


def scan_event(scanner: str, mode: str, code: ScannedCode, answer: PriceAnswer | None) -> dict[str, Any]:
    """The `scan` event's data (contract.md §3)."""
    data: dict[str, Any] = {"scanner": scanner, "code": code.raw, "mode": mode}
    if code.symbology:
        data["symbology"] = code.symbology
    if code.gtin:
        data["gtin"] = code.gtin
    data["sku"] = answer.product.sku if answer and answer.product else None
    if answer and answer.price_minor is not None and answer.currency:
        data["price"] = from_minor(answer.price_minor, answer.currency)
        data["currency"] = answer.currency
    if code.order:
        data["order"] = code.order
    if code.net_weight_g is not None:
        data["net_weight_g"] = code.net_weight_g
    if code.batch:
        data["batch"] = code.batch
    if code.expiry:
        data["expiry"] = code.expiry.isoformat()
    return data


def record_scan(
    conn: sqlite3.Connection, scanner: str, mode: str, code: ScannedCode, now: datetime, result: str | None = None
) -> dict[str, Any]:
    """Apply one scan of a non-price-check mode; write its events. Returns the `scan` event data.

    `result` is what another service answered for this scan (the orders service, for a pickup scan).
    """
    answer = price_check(conn, code, now)
    data = scan_event(scanner, mode, code, answer)
    if result is not None:
        data["result"] = result
    sku = answer.product.sku if answer.product else None
    if mode == "count" and sku:
        row = conn.execute("SELECT counted FROM stock_counts WHERE sku = ?", (sku,)).fetchone()
        counted = 1 + (0 if row is None else int(row[0]))
        conn.execute(
            "INSERT INTO stock_counts (sku, counted, started_ms, updated_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (sku) DO UPDATE SET counted = excluded.counted, updated_ms = excluded.updated_ms",
            (sku, counted, epoch_ms(now), epoch_ms(now)),
        )
        data["counted"] = counted
        outbox.append(conn, "scan", data, now)
        level = stock.get_level(conn, sku)
        outbox.append(conn, "stock", {**level.event("count"), "counted": counted}, now)
        return data
    outbox.append(conn, "scan", data, now)
    if mode in ("receive", "return") and sku:
        stock.move(conn, sku, 1, mode, ref=f"scan:{scanner}")
    return data


class ScanningService(Service):
    """One task per configured scanner: read codes, answer price checks, record the rest."""

    name = "scanning"

    def setup(self) -> None:
        codes = self.gateway.config.codes
        self.rules = FRENCH_RULES
        if codes.in_store is not None:
            rules = tuple(InStoreRule(**rule.model_dump()) for rule in codes.in_store)
            self.rules = InStoreRules(rules, codes.currency)
        for scanner in self.gateway.config.scanners:
            self.gateway.add_task(
                f"scanner:{scanner.id}",
                functools.partial(self.run_scanner, scanner),
                Device(scanner.id, "scanner", scanner.port),
            )
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run_scanner(self, config: ScannerConfig) -> None:
        from drivers.scanners.serial import SerialScanner

        framing = Framing(suffix=config.suffix, gap_s=config.gap_ms / 1000, aim_prefix=config.aim_prefix)
        scanner = SerialScanner(
            config.port,
            config.baudrate,
            framing,
            name=f"scanner {config.id}",
            on_status=functools.partial(self._status, config.id, config.port),
        )
        try:
            async for reading in scanner.readings():
                await self.handle(config, scanner, reading)
        finally:
            await scanner.close()

    def _record(self, tx: Transaction, config: ScannerConfig, code: ScannedCode, now: datetime) -> dict[str, Any]:
        """One scan of a non-price-check mode in one transaction, with what it asks of other services."""
        result = None
        if config.mode == "pickup":
            sku = None if code.order else self._sku(tx.conn, code, now)
            if code.order or sku:
                result = self.gateway.bus.ask(tx, PickupScan(code.order, sku))
        data = record_scan(tx.conn, config.id, config.mode, code, now, result)
        if config.mode == "return" and config.printer and data.get("sku"):
            self._print_return(tx, config.id, config.printer, data)
        return data

    @staticmethod
    def _sku(conn: sqlite3.Connection, code: ScannedCode, now: datetime) -> str | None:
        product = price_check(conn, code, now).product
        return None if product is None else product.sku

    def _print_return(self, tx: Transaction, scanner: str, printer: str, scan: dict[str, Any]) -> None:
        """A BORIS return at the desk: the return receipt, queued with the stock move it goes with."""
        product = get_price(tx.conn, scan["sku"])
        receipt = {
            "order": f"RETOUR-{scanner}-{utc_now():%Y%m%d-%H%M%S}",
            "lines": [{"name": (product.name if product else "") or scan["sku"], "qty": 1, "sku": scan["sku"]}],
            "refund": scan.get("price", "0.00"),
            "currency": scan.get("currency", "EUR"),
        }
        try:
            self.gateway.bus.ask(tx, PrintRequest(printer, "return_receipt", receipt, ref=scan["code"]))
        except DocumentRefused as exc:
            log.warning("scanner %s: return receipt not printed: %s", scanner, exc)

    def _status(self, scanner_id: str, port: str, status: ScannerStatus) -> None:
        state: devices.DeviceStatus = "online" if status.online else "offline"
        job = functools.partial(
            devices.report, device=scanner_id, kind="scanner", status=state, detail=status.detail, address=port
        )
        task = asyncio.get_running_loop().create_task(self.gateway.db.write(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, config: ScannerConfig, scanner: Any, reading: ScanReading) -> None:
        """One scan: interpret, answer from the cache first (the customer is waiting), then record."""
        code = interpret(reading.raw, reading.symbology_id, self.rules)
        now = reading.received_at
        if code.problems and not code.known_kind:
            log.info("scanner %s: %r is not a code the store knows (%s)", config.id, reading.raw, code.problems[0])
        if config.mode == "price_check":
            answer = await self.gateway.db.read(functools.partial(price_check, code=code, now=now))
            if config.reply:
                await scanner.reply(reply_line(config, answer))
                self.gateway.metrics.scan_reply_seconds.observe((utc_now() - now).total_seconds())
            data = scan_event(config.id, config.mode, code, answer)
            job = functools.partial(outbox.append, kind="scan", data=data, at=now)
            with contextlib.suppress(StorageFull):  # the customer had the answer; the lost event is counted
                await self.gateway.db.write(job, what="scan events")
            return
        try:
            data = await self.gateway.transact(functools.partial(self._record, config=config, code=code, now=now))
        except ValueError as exc:
            log.warning("scanner %s: %s", config.id, exc)
            return
        except StorageFull:
            log.info("scanner %s: %r not recorded: the disk is full", config.id, reading.raw)
            return
        if config.reply and "result" in data:
            await scanner.reply(str(data["result"]))
            self.gateway.metrics.scan_reply_seconds.observe((utc_now() - now).total_seconds())
