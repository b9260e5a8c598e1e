"""Wall-clock steps (NTP at boot on a box without a real-time clock) through the real process.

The gateway runs as a child process under libfaketime, whose offset the test rewrites while it
runs: the wall clock jumps, the monotonic clock does not, as with a real step. What is due at a
wall-clock instant (a scheduled price and the label rendered for it, a reservation's expiry) must
follow the clock within a second or two, in both directions, instead of the time asyncio's
monotonic timer was armed for.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.timeutil import rfc3339
from tests.peers.faketime import FakeClock
from tests.peers.hq import GatewayProcess, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker

LABELS = """
[[label_stations]]
id = "sim"
backend = "simulator"
directory = "{directory}"
confirm_delay_s = 0.05
"""
ITEM = {"sku": "A1", "price": "2.00", "currency": "EUR", "name": "Sucre 1 kg", "version": 1}
# Without re-arming on a step, the price and the expiry below wait their full 40 s after a +2 h step.
FOLLOWS_WITHIN_S = 5.0


def price_minor(db_path: Path) -> int | None:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT price_minor FROM products WHERE sku = 'A1'").fetchone()
        return None if row is None else int(row[0])
    finally:
        conn.close()


async def test_a_forward_step_applies_what_it_overtook_and_a_far_future_clock_is_warned_once(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    clock = FakeClock(tmp_path)
    config = write_config(tmp_path, mosquitto, store="clk1", extra=LABELS.format(directory=tmp_path / "labels"))
    with GatewayProcess(config, tmp_path / "gateway.log", env=clock.env).start() as gateway:
        async with head_office(mosquitto, "clk1") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
            await hq.command("stock.set", {"items": [{"sku": "A1", "on_hand": 5, "version": 1}]})
            await hq.command("price.set", {"items": [ITEM]})
            await hq.command("label.assign", {"items": [{"label": "a1", "sku": "A1", "station": "sim"}]})
            await hq.wait_for(lambda e: e.get("type") == "label" and e["data"].get("price") == "2.00")

            due = datetime.now(UTC) + timedelta(seconds=40)
            scheduled = {**ITEM, "price": "1.75", "version": 2, "valid_from": rfc3339(due)}
            assert (await hq.command("price.set", {"items": [scheduled]}))["scheduled"] == 1
            order = {"order": "R-1", "mode": "reservation", "expires_at": rfc3339(due),
                     "lines": [{"sku": "A1", "qty": 1}]}  # fmt: skip
            assert (await hq.command("order.reserve", order))["status"] == "applied"

            stepped = time.monotonic()
            clock.set("+2h")
            await hq.wait_for(lambda e: e.get("type") == "label" and e["data"].get("price") == "1.75", timeout=45)
            label_after = time.monotonic() - stepped
            await hq.wait_for(lambda e: e.get("type") == "order" and e["data"]["status"] == "expired", timeout=45)
            expiry_after = time.monotonic() - stepped
            assert label_after < FOLLOWS_WITHIN_S, f"the scheduled price's label went out {label_after:.1f} s after"
            assert expiry_after < FOLLOWS_WITHIN_S, f"the reservation expired {expiry_after:.1f} s after the step"
            assert price_minor(tmp_path / "state.db") == 175

            clock.set("+10y")
            await asyncio.sleep(1.5)
            clock.set("+3660d")  # stepped again, still far ahead: no second warning
            await asyncio.sleep(1.5)
            assert (await hq.command("price.set", {"items": [{**ITEM, "version": 3}]}))["status"] == "applied"
        assert gateway.terminate() == 0
    log = gateway.log
    assert "wall clock stepped by +2 h 0 min" in log, log[-3000:]
    warnings = [line for line in log.splitlines() if "the wall clock reads" in line]
    assert len(warnings) == 1 and "years ahead of the last time this gateway recorded" in warnings[0], warnings


async def test_a_backward_step_holds_a_due_price_until_the_clock_reaches_it_again(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    clock = FakeClock(tmp_path)
    config = write_config(tmp_path, mosquitto, store="clk2")
    with GatewayProcess(config, tmp_path / "gateway.log", env=clock.env).start() as gateway:
        async with head_office(mosquitto, "clk2") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
            await hq.command("price.set", {"items": [ITEM]})
            due = datetime.now(UTC) + timedelta(seconds=4)
            scheduled = {**ITEM, "price": "1.75", "version": 2, "valid_from": rfc3339(due)}
            assert (await hq.command("price.set", {"items": [scheduled]}))["scheduled"] == 1
            clock.set("-1h")
            await asyncio.sleep(6)  # its instant has passed in real time, not on the store's clock
            assert price_minor(tmp_path / "state.db") == 200
            stepped = time.monotonic()
            clock.set("+0")  # the clock comes back past the instant: apply now, not at the next periodic look
            while price_minor(tmp_path / "state.db") != 175:
                assert time.monotonic() - stepped < 70, "the scheduled price was never applied"
                await asyncio.sleep(0.1)
            applied_after = time.monotonic() - stepped
            assert applied_after < FOLLOWS_WITHIN_S, f"applied {applied_after:.1f} s after the clock came back"
        assert gateway.terminate() == 0
    assert "wall clock stepped by -60 min" in gateway.log
