"""One `command_result` per command, also when the gateway dies between its commit and the PUBACK.

The broker then offers the command again with DUP set; the gateway, finding its id in the inbox,
acknowledges it without a second answer. Head office sending a known id again (DUP not set) is
still answered `duplicate`, and that answer carries the first outcome. Through the real process,
a real mosquitto, and a TCP proxy that holds what the gateway sends so the crash lands exactly there.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.peers.hq import GatewayProcess, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.tcp_proxy import TcpProxy


def read_db(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def results_for(events: list[dict[str, object]], command_id: str) -> list[dict[str, object]]:
    """The command_result events for `command_id`, each once (an event may arrive twice, with the same id)."""
    unique = {
        e["id"]: e["data"]
        for e in events
        if e["type"] == "command_result" and e["data"]["command_id"] == command_id  # type: ignore[index]
    }
    return list(unique.values())  # type: ignore[arg-type]


async def test_a_command_sent_again_on_purpose_is_answered_duplicate_with_its_first_outcome(
    mosquitto: MosquittoBroker, tmp_path: Path, gateway_process: Callable[[Path], GatewayProcess]
) -> None:
    config_path = write_config(tmp_path, mosquitto, store="again")
    gateway = gateway_process(config_path).start()
    try:
        async with head_office(mosquitto, "again") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s)

            async def answer(n: int, name: str, data: dict[str, object], command_id: str) -> dict[str, object]:
                await hq.send(name, data, command_id)
                found = await hq.count(
                    lambda e: e["type"] == "command_result" and e["data"]["command_id"] == command_id, n
                )
                return dict(found[n - 1]["data"])

            items = {"items": [{"sku": "A1", "on_hand": 4, "version": 1}, {"sku": "A2", "on_hand": 2, "version": 1}]}
            first = await answer(1, "stock.set", items, "set-1")
            assert (first["status"], first["applied"]) == ("applied", 2)
            again = await answer(2, "stock.set", items, "set-1")
            assert again["status"] == "duplicate" and again["applied"] == 0
            assert again["first"]["status"] == "applied"
            assert (again["first"]["applied"], again["first"]["skipped"], again["first"]["errors"]) == (2, 0, [])
            assert again["first"]["at"].endswith("Z")

            bad = await answer(1, "stock.adjust", {"sku": "A1", "delta": "x", "reason": "count"}, "adj-1")
            assert bad["status"] == "rejected"
            bad_again = await answer(2, "stock.adjust", {"sku": "A1", "delta": 1, "reason": "count"}, "adj-1")
            assert bad_again["status"] == "duplicate"
            assert bad_again["first"]["status"] == "rejected"
            assert bad_again["first"]["errors"] == bad["errors"]
            assert len(results_for(hq.events, "set-1")) == 2  # one per message head office sent
    finally:
        assert gateway.terminate() == 0, gateway.log


async def test_a_crash_between_commit_and_puback_gets_no_second_answer(
    own_mosquitto: MosquittoBroker, tmp_path: Path, gateway_process: Callable[[Path], GatewayProcess]
) -> None:
    proxy = TcpProxy(own_mosquitto.port)
    config_path = write_config(tmp_path, own_mosquitto, store="dup")
    config_path.write_text(config_path.read_text().replace(own_mosquitto.url, proxy.url))
    gateway = gateway_process(config_path)
    try:
        async with head_office(own_mosquitto, "dup", client_id="hq-dup") as hq:
            gateway.start()
            await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s)
            await hq.command("stock.set", {"items": [{"sku": "D1", "on_hand": 10, "version": 1}]})
            proxy.hold_upstream()  # the command reaches the gateway; its PUBACK never reaches the broker
            command_id = await hq.send("stock.adjust", {"sku": "D1", "delta": -3, "reason": "sale"})
            for _ in range(200):
                if read_db(tmp_path / "state.db", "SELECT 1 FROM inbox WHERE command_id = ?", command_id):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the command was not committed")
            gateway.kill()
            proxy.cut()
            proxy.release()
            assert results_for(hq.events, command_id) == [], "its answer was held with the PUBACK"

            gateway.start()
            answer = await hq.result(command_id, timeout=30)  # from the outbox, after the restart
            assert answer["status"] == "applied"
            later = await hq.command("stock.adjust", {"sku": "D1", "delta": -1, "reason": "sale"})
            assert later["status"] == "applied"
            assert len(results_for(hq.events, command_id)) == 1, results_for(hq.events, command_id)
            assert gateway.terminate() == 0, gateway.log
    finally:
        proxy.close()
    assert "offered again by the broker" in gateway.log, "the broker should have redelivered it (DUP)"
    assert read_db(tmp_path / "state.db", "SELECT on_hand FROM stock WHERE sku = 'D1'") == [(6,)]
