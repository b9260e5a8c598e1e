"""Typed requests between services: one owner each, answered in the asker's transaction (real SQLite)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import Bus, NoOwner
from gateway.commands import Dispatcher
from gateway.config import parse_config
from gateway.db import StateDB
from gateway.domain import DocumentRefused, PickupScan, PrintRequest
from gateway.labels.service import LabelService
from gateway.orders import OrderService
from gateway.printing.service import JobQueued, PrintingService
from gateway.service import Gateway, WriteTransaction
from gateway.stock import StockService
from gateway.supervisor import Supervisor


def make_gateway(tmp_path: Path) -> tuple[Gateway, StateDB]:
    config = parse_config(
        {
            "store": {"id": "rq1"},
            "state": {"path": str(tmp_path / "state.db")},
            "uplink": {"url": "mqtt://127.0.0.1:1"},
            "printers": [{"id": "desk", "url": "tcp://127.0.0.1:1"}],
            "label_stations": [{"id": "sim", "backend": "simulator", "directory": str(tmp_path / "labels")}],
            "orders": {"printer": "desk"},
        }
    )
    db = StateDB(config.state.path)
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    for service in (StockService, PrintingService, LabelService, OrderService):
        service(gateway).setup()
    return gateway, db


def command(gateway: Gateway, db: StateDB, n: int, name: str, data: dict[str, Any]) -> Any:
    payload = json.dumps({"id": f"c{n}", "type": name, "data": data}).encode()
    return db.transaction(lambda conn: gateway.dispatcher.handle(conn, payload, name))


def jobs(db: StateDB) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2]) for r in db.conn.execute("SELECT printer, document, ref FROM print_jobs ORDER BY seq")]


def test_a_request_type_has_exactly_one_owner() -> None:
    bus = Bus()
    bus.serve(PrintRequest, lambda tx, request: "job-1")
    with pytest.raises(ValueError, match="already served"):
        bus.serve(PrintRequest, lambda tx, request: "job-2")
    with pytest.raises(NoOwner, match="PickupScan"):
        bus.ask(WriteTransaction(None), PickupScan("o1", None))  # type: ignore[arg-type]


def test_a_reservation_and_its_pick_list_commit_together(tmp_path: Path) -> None:
    gateway, db = make_gateway(tmp_path)
    command(gateway, db, 1, "stock.set", {"items": [{"sku": "A1", "on_hand": 4, "version": 1}]})
    result = command(gateway, db, 2, "order.reserve", {"order": "CC-1", "lines": [{"sku": "A1", "qty": 2}]})
    assert result.status == "applied"
    assert jobs(db) == [("desk", "pickup_slip", "CC-1")]
    assert JobQueued("desk") in result.signals  # the printer's worker wakes once the command commits
    data = json.loads(db.conn.execute("SELECT data FROM print_jobs").fetchone()[0])
    assert data["lines"] == [{"name": "A1", "sku": "A1", "qty": 2}]

    refused = command(gateway, db, 3, "order.reserve", {"order": "CC-2", "lines": [{"sku": "A1", "qty": 9}]})
    assert refused.status == "rejected"
    assert jobs(db) == [("desk", "pickup_slip", "CC-1")]  # no pick list for an order that was not reserved


def test_a_request_rolls_back_with_the_work_that_asked_for_it(tmp_path: Path) -> None:
    gateway, db = make_gateway(tmp_path)
    receipt = {"order": "R-1", "lines": [{"name": "Baguette", "qty": 1}], "refund": "1.30"}

    def return_then_fail(tx: WriteTransaction) -> None:
        tx.conn.execute("INSERT INTO stock (sku, on_hand, reserved, updated_ms) VALUES ('B2', 1, 0, 0)")
        gateway.bus.ask(tx, PrintRequest("desk", "return_receipt", receipt, ref="R-1"))
        raise RuntimeError("power cut before the commit")

    async def scenario() -> None:
        await db.start()
        with pytest.raises(RuntimeError):
            await gateway.transact(return_then_fail)
        assert jobs(db) == [] and db.conn.execute("SELECT count(*) FROM stock").fetchone()[0] == 0

        def return_ok(tx: WriteTransaction) -> str:
            tx.conn.execute("INSERT INTO stock (sku, on_hand, reserved, updated_ms) VALUES ('B2', 1, 0, 0)")
            return gateway.bus.ask(tx, PrintRequest("desk", "return_receipt", receipt, ref="R-1"))

        job = await gateway.transact(return_ok)
        assert jobs(db) == [("desk", "return_receipt", "R-1")] and len(job) == 16
        await db.close()

    asyncio.run(scenario())


def test_a_refused_document_names_its_fields_and_writes_nothing(tmp_path: Path) -> None:
    gateway, db = make_gateway(tmp_path)
    with pytest.raises(DocumentRefused) as refused:
        db.transaction(
            lambda conn: gateway.bus.ask(
                WriteTransaction(conn), PrintRequest("desk", "return_receipt", {"order": "R-2", "lines": []})
            )
        )
    assert [field for field, _ in refused.value.errors] == ["data.lines", "data.refund"]
    result = command(gateway, db, 1, "print", {"printer": "nope", "document": "test_page"})
    assert result.status == "rejected" and result.errors[0].field == "data.printer"
    assert jobs(db) == []
