"""Orders over a real state database: reservation rules, and the stock invariants under any sequence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.commands import Dispatcher
from gateway.db import StateDB
from gateway.orders import OrderRef, OrderReserve, expire_due, handle_cancel, handle_collected, handle_reserve
from gateway.stock import StockAdjust, StockSet, handle_stock_adjust, handle_stock_set

SKUS = ["A", "B", "C"]


def dispatcher() -> Dispatcher:
    d = Dispatcher()
    d.register("order.reserve", OrderReserve, handle_reserve)
    d.register("order.cancel", OrderRef, handle_cancel)
    d.register("order.collected", OrderRef, handle_collected)
    d.register("stock.set", StockSet, handle_stock_set)
    d.register("stock.adjust", StockAdjust, handle_stock_adjust)
    return d


class Store:
    def __init__(self, path: Path) -> None:
        self.db = StateDB(path)
        self.d = dispatcher()
        self.n = 0

    def send(self, name: str, data: dict[str, object]):  # type: ignore[no-untyped-def]
        self.n += 1
        payload = json.dumps({"id": f"c{self.n}", "type": name, "data": data}).encode()
        return self.db.transaction(lambda conn: self.d.handle(conn, payload, name))

    def levels(self) -> dict[str, tuple[int, int]]:
        return {r[0]: (r[1], r[2]) for r in self.db.conn.execute("SELECT sku, on_hand, reserved FROM stock")}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "s.db")
    s.send("stock.set", {"items": [{"sku": k, "on_hand": 5, "version": 1} for k in SKUS]})
    return s


def test_reserve_whole_or_nothing_unless_partial(store: Store) -> None:
    refused = store.send("order.reserve", {"order": "W1", "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 9}]})
    assert refused.status == "rejected" and refused.errors[0].field == "data.lines[1].qty"
    assert store.levels()["A"] == (5, 0)
    partial = store.send("order.reserve", {"order": "W2", "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 9}],
                                           "allow_partial": True})  # fmt: skip
    assert (partial.status, partial.applied, partial.skipped) == ("applied", 1, 1)
    assert store.levels()["A"] == (5, 2) and store.levels()["B"] == (5, 5)
    assert store.send("order.collected", {"order": "W2"}).status == "applied"
    assert store.levels()["A"] == (3, 0) and store.levels()["B"] == (0, 0)
    again = store.send("order.cancel", {"order": "W2"})
    assert again.status == "rejected" and "collected already" in again.errors[0].message


def test_expiry_releases(store: Store) -> None:
    at = datetime.now(UTC) + timedelta(minutes=30)
    store.send("order.reserve", {"order": "R1", "lines": [{"sku": "C", "qty": 4}], "expires_at": at.isoformat(),
                                 "mode": "reservation"})  # fmt: skip
    assert store.levels()["C"] == (5, 4)
    assert store.db.transaction(lambda conn: expire_due(conn, at - timedelta(seconds=1))) == []
    assert store.db.transaction(lambda conn: expire_due(conn, at)) == ["R1"]
    assert store.levels()["C"] == (5, 0)


operation = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(SKUS), st.integers(1, 4), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("collect"), st.integers(0, 30)),
    st.tuples(st.just("expire"), st.integers(0, 30)),
    st.tuples(st.just("adjust"), st.sampled_from(SKUS), st.integers(-4, 4)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(operation, max_size=30))
def test_available_never_negative_whatever_happens(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    store = Store(tmp_path_factory.mktemp("orders") / "s.db")
    store.send("stock.set", {"items": [{"sku": k, "on_hand": 5, "version": 1} for k in SKUS]})
    orders: list[str] = []
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for op in ops:
        if op[0] == "reserve":
            order = f"O{len(orders)}"
            orders.append(order)
            store.send("order.reserve", {"order": order, "lines": [{"sku": op[1], "qty": op[2]}],
                                         "allow_partial": op[3], "expires_at": soon})  # fmt: skip
        elif op[0] in ("cancel", "collect") and orders:
            name = "order.cancel" if op[0] == "cancel" else "order.collected"
            store.send(name, {"order": orders[op[1] % len(orders)]})
        elif op[0] == "expire" and orders:
            store.db.transaction(lambda conn: expire_due(conn, datetime.now(UTC) + timedelta(hours=2)))
        elif op[0] == "adjust" and op[2] != 0:
            store.send("stock.adjust", {"sku": op[1], "delta": op[2], "reason": "count"})
        for sku, (on_hand, reserved) in store.levels().items():
            assert reserved >= 0, sku
            assert on_hand - reserved >= 0, (sku, on_hand, reserved)
        events = [json.loads(r[0]) for r in store.db.conn.execute("SELECT data FROM outbox WHERE kind='stock'")]
        assert all(e["available"] == e["on_hand"] - e["reserved"] >= 0 for e in events)
    store.db.close_sync()


def test_stock_below_its_minimum_raises_one_alert_and_one_when_restored(store: Store) -> None:
    store.send("stock.set", {"items": [{"sku": "A", "on_hand": 8, "version": 2, "min": 5}]})
    store.send("stock.adjust", {"sku": "A", "delta": -4, "reason": "sale"})
    store.send("stock.adjust", {"sku": "A", "delta": -1, "reason": "sale"})  # still below: no second alert
    store.send("stock.adjust", {"sku": "A", "delta": 3, "reason": "receive"})
    alerts = [json.loads(r[0]) for r in store.db.conn.execute("SELECT data FROM outbox WHERE kind='replenishment'")]
    assert [(a["status"], a.get("to_order"), a["available"]) for a in alerts] == [
        ("needed", 1, 4),
        ("restored", None, 6),
    ]
    assert all(a["source"] == "stock" for a in alerts)


def test_express_orders_are_picked_first(store: Store) -> None:
    from gateway.orders import pick

    store.send("order.reserve", {"order": "SLOW", "lines": [{"sku": "B", "qty": 1}]})
    store.send("order.reserve", {"order": "FAST", "lines": [{"sku": "B", "qty": 1}], "mode": "express",
                                 "deadline_minutes": 30})  # fmt: skip
    assert store.db.transaction(lambda conn: pick(conn, "B")) == ("FAST", True)
    assert store.db.transaction(lambda conn: pick(conn, "B")) == ("SLOW", True)
