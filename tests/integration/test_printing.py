"""Printers through the real python-escpos transports, and the durable print queue."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.printers import PrinterUnavailable, open_printer
from tests.peers.escpos_printer import EscposPrinterPeer, qr_data, text_of
from tests.peers.hq import GatewayProcess, head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker


@pytest.fixture
def printer() -> Iterator[EscposPrinterPeer]:
    peer = EscposPrinterPeer()
    yield peer
    peer.close()


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_tcp_status_and_reconnect(printer: EscposPrinterPeer) -> None:
    device = open_printer(printer.url, timeout=1.0)
    assert device.status().ready
    printer.state.paper_out = True
    assert device.status().detail == "paper_out"
    printer.state.paper_out, printer.state.cover_open = False, True
    assert device.status().detail == "cover_open"
    printer.state.cover_open = False
    device.send(b"hello\n\x1dV\x00")
    wait_for(lambda: len(printer.jobs) == 1)
    printer.drop_connections()
    wait_for(lambda: True, 0.1)
    printer.state.silent = True
    assert not device.status().online  # a silent printer times out cleanly, the socket is dropped
    printer.state.silent = False
    assert device.status().ready  # and the next question reconnects
    device.send(b"again\n\x1dV\x00")
    wait_for(lambda: len(printer.jobs) == 2)
    assert printer.connections >= 2
    device.close()


def test_unreachable_printer_raises_clearly() -> None:
    device = open_printer("tcp://127.0.0.1:9", timeout=0.5)
    with pytest.raises(PrinterUnavailable):
        device.send(b"x")
    assert not device.status().online
    with pytest.raises(ValueError, match='unknown scheme "tpc"'):
        open_printer("tpc://127.0.0.1:9100")


def test_serial_printer_on_a_pty(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    device = open_printer(f"serial://{os.ttyname(slave)}?baudrate=38400", timeout=1.0)
    device.send(b"Prix: 12,99 \xd5\n")
    assert os.read(master, 100) == b"Prix: 12,99 \xd5\n"

    def answer() -> None:  # the printer's side of the wire: one status byte per DLE EOT request
        for _ in range(4):
            assert os.read(master, 3)[:2] == b"\x10\x04"
            os.write(master, b"\x12")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    assert device.status().ready
    thread.join(5)
    device.close()
    os.close(master)
    os.close(slave)


def test_file_printer(tmp_path: Path) -> None:
    target = tmp_path / "printer.bin"
    device = open_printer(f"file://{target}")
    device.send(b"job\x1dV\x00")
    device.close()
    assert target.read_bytes() == b"job\x1dV\x00"
    assert device.status().known is False


def printers_toml(*peers: tuple[str, str]) -> str:
    return "".join(f'[[printers]]\nid = "{pid}"\nurl = "{url}"\ntimeout_s = 1.0\n' for pid, url in peers)


async def test_jobs_wait_out_of_paper_then_print_once_in_order(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, mosquitto, store="prt1", extra=printers_toml(("till-1", printer.url)))
    printer.state.paper_out = True
    async with head_office(mosquitto, "prt1") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        for n in range(3):
            result = await hq.command("print", {"printer": "till-1", "document": "test_page", "note": f"job {n}"})
            assert result["status"] == "applied"
        error = await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["status"] == "error")
        assert error["data"]["detail"] == "paper_out"
        await asyncio.sleep(0.5)
        assert printer.jobs == []
        printer.state.paper_out = False
        printed = await hq.count(lambda e: e.get("type") == "print" and e["data"]["status"] == "printed", 3, timeout=15)
        assert len(printed) == 3
        await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["status"] == "online")
    notes = [next(f"job {n}" for n in range(3) if f"job {n}" in text_of(job)) for job in printer.jobs]
    assert notes == ["job 0", "job 1", "job 2"]


async def test_restart_loses_no_job_and_prints_none_twice(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, mosquitto, store="prt2", extra=printers_toml(("till-1", printer.url)))
    printer.state.offline = True
    gateway = GatewayProcess(config, tmp_path / "gw.log")
    async with head_office(mosquitto, "prt2") as hq:
        gateway.start()
        await hq.wait_for(lambda s: s.get("state") == "online")
        slip = {
            "printer": "till-1",
            "document": "pickup_slip",
            "order": "CC-9",
            "customer": "M. Martin",
            "lines": [{"name": "Café moulu", "qty": 1}],
        }
        assert (await hq.command("print", slip))["status"] == "applied"
        assert (await hq.command("print", {"printer": "till-1", "document": "test_page"}))["status"] == "applied"
        assert gateway.terminate() == 0
        printer.state.offline = False
        gateway.start()
        await hq.count(lambda e: e.get("type") == "print" and e["data"]["status"] == "printed", 2, timeout=20)
        assert gateway.terminate() == 0
    assert len(printer.jobs) == 2
    assert qr_data(printer.jobs[0]) == ["ORDER:CC-9"]
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("SELECT state, count(*) FROM print_jobs GROUP BY state").fetchall() == [("printed", 2)]
    conn.close()


async def test_one_printer_offline_does_not_block_the_others(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    peers = [EscposPrinterPeer() for _ in range(3)]
    peers[2].state.offline = True
    try:
        config = write_config(
            tmp_path,
            mosquitto,
            store="prt3",
            extra=printers_toml(*((f"p{i}", peer.url) for i, peer in enumerate(peers))),
        )
        async with head_office(mosquitto, "prt3") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            ids = [
                await hq.send("print", {"printer": f"p{n % 3}", "document": "test_page", "note": str(n)})
                for n in range(50)
            ]
            for command_id in ids:
                assert (await hq.result(command_id))["status"] == "applied"
            await hq.count(lambda e: e.get("type") == "print" and e["data"]["status"] == "printed", 34, timeout=30)
        assert len(peers[0].jobs) == 17 and len(peers[1].jobs) == 17 and peers[2].jobs == []
    finally:
        for peer in peers:
            peer.close()


async def test_bad_print_commands_are_rejected_naming_the_field(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, mosquitto, store="prt4", extra=printers_toml(("till-1", printer.url)))
    async with head_office(mosquitto, "prt4") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        cases = [
            ({"printer": "till-9", "document": "test_page"}, "data.printer"),
            ({"printer": "till-1", "document": "poster"}, "data.document"),
            ({"printer": "till-1", "document": "pickup_slip", "order": "X", "lines": [{"name": "a"}]}, "data.customer"),
            ({"document": "test_page"}, "data.printer"),
        ]
        for data, field in cases:
            result = await hq.command("print", data)
            assert result["status"] == "rejected" and result["errors"][0]["field"] == field, result
