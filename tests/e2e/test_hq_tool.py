"""`store-gateway hq` as operations use it: price files as French spreadsheets write them, and commands to a
store that is offline or never connected. The real command against a real gateway and mosquitto."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.hq import REPO, GatewayProcess, write_config
from tests.peers.mosquitto import MosquittoBroker

CLI = [sys.executable, "-m", "gateway"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
NAME = "Pâte à tartiner noisettes 750 g – édition spéciale"


def hq(broker: MosquittoBroker, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "hq", "--broker", broker.url, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV
    )


def products(db: Path) -> dict[str, tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT sku, price_minor, promo_price_minor, name FROM products").fetchall()
        return {str(r[0]): tuple(r[1:]) for r in rows}
    finally:
        conn.close()


def wait_online(config: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [*CLI, "status", "--config", str(config), "--json"], capture_output=True, text=True, cwd=REPO, env=ENV
        )
        if done.returncode == 0 and json.loads(done.stdout)["uplink"]["state"] == "online":
            return
        time.sleep(0.2)
    raise AssertionError("the gateway did not come online")


@pytest.fixture
def store(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[Path]:
    """A running gateway for store csv1; yields its state database."""
    config = write_config(tmp_path / "gw", mosquitto, store="csv1")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        wait_online(config)
        yield tmp_path / "gw" / "state.db"
    finally:
        assert gateway.terminate() == 0


def write_prices(path: Path, rows: list[list[str]], *, delimiter: str, encoding: str, lineterminator: str) -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator=lineterminator)
        writer.writerow(["sku", "price", "currency", "name", "promo_price"])
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("encoding", "described"),
    [("cp1252", "Windows-1252"), ("utf-8-sig", "UTF-8 with BOM")],
    ids=["excel-fr-windows-1252", "csv-utf8-bom"],
)
def test_french_spreadsheet_csv_is_read_as_meant(
    mosquitto: MosquittoBroker, store: Path, tmp_path: Path, encoding: str, described: str
) -> None:
    rows = [
        ["A1", "1,20", "EUR", NAME, ""],
        ["A2", "12,5", "EUR", "Café moulu", "9,99"],
        ["A3", "1 234,56", "EUR", "", ""],
    ]
    file = write_prices(tmp_path / "prix.csv", rows, delimiter=";", encoding=encoding, lineterminator="\r\n")
    assert b"\r\n" in file.read_bytes() and (b"\xe2" in file.read_bytes() or encoding == "cp1252")
    done = hq(mosquitto, "push-prices", "--store", "csv1", str(file), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"read as {described}, columns separated by ';', decimal comma, CRLF line ends" in done.stdout
    assert "applied 3" in done.stdout
    got = products(store)
    assert got["A1"] == (120, None, NAME), "1,20 is one euro twenty, never 120 euros"
    assert got["A2"] == (1250, 999, "Café moulu")
    assert got["A3"][0] == 123456


def test_the_contract_dialect_still_reads(mosquitto: MosquittoBroker, store: Path, tmp_path: Path) -> None:
    file = write_prices(
        tmp_path / "prices.csv",
        [["B1", "3.10", "EUR", "Thé vert", ""]],
        delimiter=",",
        encoding="utf-8",
        lineterminator="\n",
    )
    done = hq(mosquitto, "push-prices", "--store", "csv1", str(file), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "read as UTF-8, columns separated by ',', decimal point, LF line ends" in done.stdout
    assert products(store)["B1"] == (310, None, "Thé vert")


@pytest.mark.parametrize(
    ("rows", "delimiter", "expected"),
    [
        # csv quotes "1,20" between commas: 1.20, or 1,200 in English? refused, never guessed
        ([["C1", "1,20", "EUR", "", ""]], ",", 'line 2: price: "1,20" has a decimal comma in a comma-separated file'),
        ([["C1", "1.234,50", "EUR", "", ""]], ";", 'line 2: price: "1.234,50" is ambiguous'),
    ],
    ids=["decimal-comma-between-commas", "mixed-marks"],
)
def test_an_ambiguous_file_is_refused_clearly(
    mosquitto: MosquittoBroker, store: Path, tmp_path: Path, rows: list[list[str]], delimiter: str, expected: str
) -> None:
    file = write_prices(tmp_path / "prix.csv", rows, delimiter=delimiter, encoding="utf-8", lineterminator="\r\n")
    done = hq(mosquitto, "push-prices", "--store", "csv1", str(file), "--quiet")
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and "nothing sent" in done.stderr, done.stderr
    assert "C1" not in products(store)


def test_unquoted_decimal_commas_between_commas_are_refused(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    file = tmp_path / "prices.csv"
    file.write_bytes(b"sku,price,currency\r\nD1,1,20,EUR\r\n")
    done = hq(mosquitto, "push-prices", "--store", "csv1", str(file), "--quiet")
    assert done.returncode == 2
    assert "line 2: 4 values for 3 columns (a decimal comma in a comma-separated file?" in done.stderr, done.stderr


def test_a_file_in_no_known_encoding_or_separator_is_refused(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    file = tmp_path / "prices.csv"
    file.write_bytes(b"sku;price;currency\r\nE1;1,20;EUR\x81\r\n")  # 0x81: not UTF-8, not Windows-1252
    done = hq(mosquitto, "push-prices", "--store", "csv1", str(file), "--quiet")
    assert done.returncode == 2
    assert "neither UTF-8 nor Windows-1252 (byte 0x81 at offset" in done.stderr, done.stderr
    file.write_bytes(b"sku|price|currency\nE1|1.20|EUR\n")
    done = hq(mosquitto, "push-prices", "--store", "csv1", str(file), "--quiet")
    assert done.returncode == 2
    assert "the first line must name the columns sku, price, currency separated by ',' or ';'" in done.stderr


def test_a_command_to_a_store_that_never_connected_says_it_may_never_arrive(mosquitto: MosquittoBroker) -> None:
    done = hq(
        mosquitto,
        "command",
        "--store",
        "nobody",
        "stock.adjust",
        '{"sku": "A1", "delta": 1, "reason": "x"}',
        "--timeout",
        "1",
    )
    assert done.returncode == 1
    assert "store nobody has never connected to this broker" in done.stderr
    assert "may never be delivered" in done.stderr
    assert "the broker keeps the command" not in done.stderr


def test_a_command_to_an_offline_store_is_kept_and_applied_later(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="away1")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    wait_online(config)
    assert gateway.terminate() == 0
    data = json.dumps({"items": [{"sku": "F1", "price": "2.50", "currency": "EUR", "version": 1}]})
    done = hq(mosquitto, "command", "--store", "away1", "price.set", data, "--timeout", "1")
    assert done.returncode == 1
    assert "store away1 is offline: the broker keeps the command in the store's session" in done.stderr
    assert "never connected" not in done.stderr
    again = GatewayProcess(config, tmp_path / "again.log").start()  # ...and it does
    try:
        deadline = time.monotonic() + 30
        while "F1" not in products(tmp_path / "state.db"):
            assert time.monotonic() < deadline, "the kept command was not applied"
            time.sleep(0.2)
    finally:
        assert again.terminate() == 0
    assert products(tmp_path / "state.db")["F1"][0] == 250
