"""A full disk under the state database, and space coming back, through the real process.

The state database lives on a 16 MiB tmpfs of the test's own, filled by a ballast file as a runaway
log would. Wanted: price checks keep answering from the cache (the scan events that cannot be
written are counted and reported once space returns); the condition is reported once (log, the
storage device in `status`, the retained gateway state); commands wait unacknowledged at the
broker and are all applied exactly once within seconds of space returning; a start on a full disk
runs in the same degraded mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.peers.disk import SmallDisk
from tests.peers.hq import REPO, GatewayProcess, HeadOffice, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.pty_scanner import PtyScanner

KIOSK = """
[[scanners]]
id = "kiosk"
port = "{port}"
mode = "price_check"
"""
ITEM = {"sku": "N1", "price": "5.49", "currency": "EUR", "gtin": "3017620422003", "name": "Pâte à tartiner",
        "version": 1}  # fmt: skip
ANSWER = "Pâte à tartiner\t5,49 €"
CATALOGUE = [{"sku": f"S{i:05d}", "price": "1.99", "currency": "EUR", "name": f"Article {i}", "version": 1}
             for i in range(4000)]  # fmt: skip
RECOVERS_WITHIN_S = 15.0  # the gateway looks every second; the rest is a loaded machine's slack


def status(config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--config", str(config), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def products(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM products").fetchone()[0])
    finally:
        conn.close()


def storage_device(report: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in report["devices"] if d["kind"] == "storage")


def on_hand(db_path: Path, sku: str) -> int | None:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT on_hand FROM stock WHERE sku = ?", (sku,)).fetchone()
        return None if row is None else int(row[0])
    finally:
        conn.close()


async def price_checks(kiosk: PtyScanner, n: int) -> list[str]:
    answers = []
    for _ in range(n):
        kiosk.scan(ITEM["gtin"])
        try:
            answers.append(await asyncio.to_thread(kiosk.read_line, 3.0))
        except TimeoutError:
            answers.append("")
    return answers


def results(hq: HeadOffice, command_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in hq.events if e["type"] == "command_result" and e["data"]["command_id"] == command_id]


async def test_full_disk_degrades_and_space_returning_resumes(
    small_disk: SmallDisk, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    kiosk = PtyScanner(tmp_path, "kiosk")
    config = write_config(small_disk.path, mosquitto, store="df1", extra=KIOSK.format(port=kiosk.path))
    db_path = small_disk.path / "state.db"
    with GatewayProcess(config, tmp_path / "gateway.log").start() as gateway, contextlib.closing(kiosk):
        async with head_office(mosquitto, "df1") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
            assert (await hq.command("price.set", {"items": [ITEM]}))["status"] == "applied"
            await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["device"] == "kiosk")
            assert await price_checks(kiosk, 1) == [ANSWER]

            small_disk.fill()
            # small writes may still fit in the pages SQLite already has; a price file does not
            catalogue = await hq.send("price.set", {"items": CATALOGUE})
            state = await hq.wait_for(lambda s: s.get("storage", {}).get("status") == "error", timeout=20)
            assert state["state"] == "online" and "disk full" in state["storage"]["detail"]
            assert await price_checks(kiosk, 20) == [ANSWER] * 20  # from the cache, none lost to a dead reader
            sent = [await hq.send("stock.adjust", {"sku": "N1", "delta": 1, "reason": "receive"}) for _ in range(5)]
            report = status(config)
            assert storage_device(report)["status"] == "error", report["devices"]
            await asyncio.sleep(2)
            assert not any(results(hq, command_id) for command_id in sent)  # waiting at the broker, unanswered

            assert not results(hq, catalogue)
            small_disk.free()
            freed = time.monotonic()
            for command_id in [catalogue, *sent]:
                await hq.wait_for(lambda e, c=command_id: e.get("type") == "command_result"
                                  and e["data"]["command_id"] == c, timeout=RECOVERS_WITHIN_S)  # fmt: skip
            resumed_after = time.monotonic() - freed
            back = await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["device"] == "state-db"
                                     and e["data"]["status"] == "online")  # fmt: skip
            assert "scan events 20" in back["data"]["detail"], back
            await hq.wait_for(lambda s: s.get("storage", {}).get("status") == "online" and s["state"] == "online")
            assert await price_checks(kiosk, 1) == [ANSWER]
            after = await hq.command("stock.adjust", {"sku": "N1", "delta": 1, "reason": "receive"})
            assert after["status"] == "applied"
            await asyncio.sleep(1)  # a second answer to any command would come now
            answers = [[r["status"] for r in results(hq, c)] for c in [catalogue, *sent]]
            assert answers == [["applied"]] * 6, answers  # each applied, exactly once
            assert on_hand(db_path, "N1") == 6
            assert products(db_path) == 1 + len(CATALOGUE)
            assert storage_device(status(config))["status"] == "online"
        assert gateway.terminate() == 0
    log = gateway.log
    assert resumed_after < RECOVERS_WITHIN_S
    assert log.count("the disk under the state database is full") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


async def test_a_start_on_a_full_disk_runs_degraded(
    small_disk: SmallDisk, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    kiosk = PtyScanner(tmp_path, "kiosk")
    config = write_config(small_disk.path, mosquitto, store="df2", extra=KIOSK.format(port=kiosk.path))
    with contextlib.closing(kiosk), GatewayProcess(config, tmp_path / "first.log").start() as first:
        async with head_office(mosquitto, "df2") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
            assert (await hq.command("price.set", {"items": [ITEM]}))["status"] == "applied"
        assert first.terminate() == 0

        small_disk.fill()
        with GatewayProcess(config, tmp_path / "gateway.log").start() as gateway:
            async with head_office(mosquitto, "df2") as hq:
                state = await hq.wait_for(lambda s: s.get("storage", {}).get("status") == "error", timeout=20)
                assert state["state"] == "online"
                await asyncio.sleep(1)  # the scanner opens its port
                assert await price_checks(kiosk, 3) == [ANSWER] * 3
                assert gateway.running  # it did not exit 1
                assert storage_device(status(config))["status"] == "error"
                waiting = await hq.send("stock.adjust", {"sku": "N1", "delta": 2, "reason": "receive"})

                small_disk.free()
                assert (await hq.result(waiting, timeout=RECOVERS_WITHIN_S))["status"] == "applied"
                await hq.wait_for(lambda s: s.get("storage", {}).get("status") == "online")
            assert gateway.terminate() == 0
    assert on_hand(small_disk.path / "state.db", "N1") == 2


async def test_status_of_a_stopped_gateway_on_a_full_disk(
    small_disk: SmallDisk, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The technician's first look after a full disk stopped things: `status` reads the state database
    although SQLite cannot create its shared-memory index there."""
    config = write_config(small_disk.path, mosquitto, store="df3")
    with GatewayProcess(config, tmp_path / "gateway.log").start() as gateway:
        async with head_office(mosquitto, "df3") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
            assert (await hq.command("price.set", {"items": [ITEM]}))["status"] == "applied"
        assert gateway.terminate() == 0
    db_path = small_disk.path / "state.db"
    assert not db_path.with_name("state.db-shm").exists()  # a clean stop leaves no index behind
    small_disk.fill()

    report = status(config)
    assert report["gateway"]["state"] == "stopped"
    assert report["catalogue"]["products"] == 1
    storage = storage_device(report)
    assert storage["status"] == "error" and "disk full" in storage["detail"], storage

    small_disk.free()  # and the gateway starts again on it as usual
    with GatewayProcess(config, tmp_path / "again.log").start() as again:
        async with head_office(mosquitto, "df3") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
            adjust = await hq.command("stock.adjust", {"sku": "N1", "delta": 1, "reason": "receive"})
            assert adjust["status"] == "applied"
        assert again.terminate() == 0
    assert on_hand(db_path, "N1") == 1


async def test_a_first_start_on_a_full_disk_says_so_and_exits_1(
    small_disk: SmallDisk, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """No database yet and no room to make one: one line naming the path and the free space, exit 1
    (systemd starts it again); once there is room, the same start works."""
    config = write_config(small_disk.path, mosquitto, store="df4")
    small_disk.fill()
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    db_path = small_disk.path / "state.db"
    assert f"store-gateway: cannot open the state database {db_path}: the disk is full" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not db_path.exists()  # no 0-byte database left to be taken for a lost one

    small_disk.free()
    with GatewayProcess(config, tmp_path / "gateway.log").start() as gateway:
        async with head_office(mosquitto, "df4") as hq:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=20)
        assert gateway.terminate() == 0
