"""The daemon's log as a person reads it: `store-gateway run` as a child process, its stderr read back.

A failing device is logged once when it fails and once when it recovers, naming the device and its
address; tracebacks only at DEBUG; the uplink says what broke the link; each command once at INFO.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.peers.bluez import _CONF as DBUS_CONF
from tests.peers.hq import GatewayProcess, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker, free_port
from tests.peers.oepl_ap import FakeAccessPoint

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


async def wait_in_log(gateway: GatewayProcess, pattern: str, timeout: float = 30.0, count: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = gateway.log
        if len(re.findall(pattern, log)) >= count:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} seen fewer than {count} times within {timeout} s:\n{log[-4000:]}")
        await asyncio.sleep(0.2)


def records(log: str, level: str) -> list[str]:
    return [line for line in log.splitlines() if (m := RECORD.match(line)) and m.group(1) == level]


def tracebacks_outside_debug(log: str) -> list[str]:
    """Traceback blocks that belong to a record logged at a level other than DEBUG."""
    level, bad = "", []
    for line in log.splitlines():
        match = RECORD.match(line)
        if match:
            level = match.group(1)
        elif line.startswith("Traceback") and level != "DEBUG":
            bad.append(level)
    return bad


async def test_failing_devices_are_logged_once_and_once_on_recovery(
    mosquitto: MosquittoBroker, mosquitto_factory: Any, tmp_path: Path
) -> None:
    ap_port, local_port = free_port(), free_port()
    tty = tmp_path / "no-such-tty"
    config = write_config(
        tmp_path,
        mosquitto,
        store="logs1",
        extra=f"""
[logging]
level = "DEBUG"

[[scanners]]
id = "kiosk"
port = "{tty}"

[[label_stations]]
id = "ap-1"
backend = "openepaperlink"
url = "http://127.0.0.1:{ap_port}"

[[sensors]]
id = "shelf-a1"
backend = "mqtt"
topic = "sensors/shelf-a1"

[[sensors]]
id = "shelf-b2"
backend = "bthome"
address = "A4:C1:38:8D:18:B2"

[local_mqtt]
url = "mqtt://127.0.0.1:{local_port}"
""",
    )
    no_bus = tmp_path / "no-dbus" / "system_bus_socket"
    gateway = GatewayProcess(config, tmp_path / "gateway.log", env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={no_bus}"})
    gateway.start()
    ap = FakeAccessPoint()
    try:
        # several retries of each failing part (the supervisor's DEBUG lines), then look at the log
        await wait_in_log(gateway, r"labels:ap-1 failed .*restarting", count=3)
        await wait_in_log(gateway, r"sensors:bthome failed .*restarting", count=3)
        log = gateway.log
        warnings = "\n".join(records(log, "WARNING"))
        expected = {
            "label station": rf"label_station ap-1 \(http://127\.0\.0\.1:{ap_port}\): error: connection refused",
            "scanner": rf"scanner kiosk \({re.escape(str(tty))}\): offline: no such file or directory",
            "local broker": rf"broker local-mqtt \(mqtt://127\.0\.0\.1:{local_port}\): offline: connection refused",
            "BLE": rf"adapter ble \(BlueZ\): error: BlueZ cannot be reached: no system D-Bus at unix:path={no_bus}",
        }
        for what, pattern in expected.items():
            assert len(re.findall(pattern, warnings)) == 1, f"{what}: {pattern}\n{warnings}"
        assert len(records(log, "WARNING")) == len(expected), warnings
        assert records(log, "ERROR") == [], "\n".join(records(log, "ERROR"))
        assert tracebacks_outside_debug(log) == []
        assert "Unclosed client session" not in log
        assert "FileNotFoundError" not in warnings and "TaskGroup" not in log

        # the station and the local broker come back: one line each
        await ap.start(port=ap_port)
        local = MosquittoBroker(tmp_path / "local-broker", port=local_port).start()
        try:
            log = await wait_in_log(gateway, r"label_station ap-1 \(http://[^)]*\) is back online")
            log = await wait_in_log(gateway, r"broker local-mqtt \(mqtt://[^)]*\) is back online")
        finally:
            local.stop()
    finally:
        assert gateway.terminate() == 0
        await ap.stop()
    log = gateway.log
    assert len(re.findall("label_station ap-1 .*back online", log)) == 1
    assert "Unclosed client session" not in log
    assert tracebacks_outside_debug(log) == []
    assert re.search(r"DEBUG gateway\.uplink: ", log), "DEBUG shows what the uplink does"


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon missing (Debian: dbus-daemon)")
async def test_ble_without_bluetoothd_says_so(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    conf = tmp_path / "bus.conf"
    conf.write_text(DBUS_CONF.format(socket=tmp_path / "bus.sock"))
    bus = await asyncio.create_subprocess_exec(
        "dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert bus.stdout is not None
    address = (await bus.stdout.readline()).decode().strip()
    config = write_config(
        tmp_path,
        mosquitto,
        store="ble1",
        extra='[[sensors]]\nid = "shelf-b2"\nbackend = "bthome"\naddress = "A4:C1:38:8D:18:B2"\n',
    )
    gateway = GatewayProcess(config, tmp_path / "gateway.log", env={"DBUS_SYSTEM_BUS_ADDRESS": address}).start()
    try:
        log = await wait_in_log(gateway, r"bluetoothd is not running: nothing answers for org\.bluez")
    finally:
        assert gateway.terminate() == 0
        bus.terminate()
        await asyncio.wait_for(bus.wait(), 5)
    assert "adapter ble (BlueZ): error: bluetoothd is not running" in log
    assert "Traceback" not in log and "BleakDBusError" not in log


async def test_each_command_is_logged_once_with_its_outcome(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="logs2")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    async with head_office(mosquitto, "logs2") as hq:
        gateway.start()
        try:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=30)
            item = {"sku": "A1", "price": "1.20", "currency": "EUR", "version": 1}
            applied = await hq.send("price.set", {"items": [item]})
            await hq.result(applied)
            rejected = await hq.send("price.set", {"items": [{**item, "price": "-3"}]})
            await hq.result(rejected)
            await hq.send("price.set", {"items": [item]}, command_id=applied)
            await hq.count(lambda e: e["type"] == "command_result" and e["data"]["command_id"] == applied, 2)
            log = await wait_in_log(gateway, rf"command {applied} price\.set: duplicate")
        finally:
            assert gateway.terminate() == 0
    lines = [line for line in records(log, "INFO") if " gateway.service: command " in line]
    assert len(lines) == 3, "\n".join(lines)
    assert re.search(rf"command {applied} price\.set: applied, 1 applied, 0 skipped \(\d+ ms\)$", lines[0])
    assert re.search(
        rf"command {rejected} price\.set: rejected, 0 applied, 0 skipped \(data\.items\[0\]\.price: ", lines[1]
    )


async def test_an_unreachable_printer_is_named_once_with_its_url(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        mosquitto,
        store="logs3",
        extra=f'[logging]\nlevel = "DEBUG"\n\n[[printers]]\nid = "till-1"\nurl = "tcp://127.0.0.1:{port}"\ntimeout_s = 1\n',
    )
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    async with head_office(mosquitto, "logs3") as hq:
        gateway.start()
        try:
            await hq.wait_for(lambda s: s.get("state") == "online", timeout=30)
            result = await hq.command("print", {"printer": "till-1", "document": "test_page"})
            assert result["status"] == "applied"  # queued: it waits for the printer
            log = await wait_in_log(gateway, rf"printer tcp://127\.0\.0\.1:{port}: status unavailable", count=3)
        finally:
            assert gateway.terminate() == 0
    warnings = records(log, "WARNING")
    assert [w.split(" WARNING ", 1)[1] for w in warnings] == [
        f"gateway.devices: printer till-1 (tcp://127.0.0.1:{port}): offline: unreachable"
    ], "\n".join(warnings)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_another_client_with_our_id_is_named(mosquitto: MosquittoBroker, tmp_path: Path, protocol: str) -> None:
    config = write_config(tmp_path, mosquitto, store=f"twin{protocol[0]}", uplink_extra=f'protocol = "{protocol}"\n')
    client_id = f"store-gateway-twin{protocol[0]}"
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    # Mosquitto closes the older connection without a DISCONNECT packet (also to MQTT 5 clients), so the
    # gateway infers it from the broker closing each new connection soon after it is made
    expected = f'another client is probably connected with our client id "{client_id}"'
    try:
        await wait_in_log(gateway, "uplink: connected to")
        deadline = time.monotonic() + 60
        while expected not in gateway.log:  # a second gateway with the same id, taking the connection in turn
            assert time.monotonic() < deadline, gateway.log[-3000:]
            twin = aiomqtt.Client(
                mosquitto.host,
                mosquitto.port,
                identifier=client_id,
                protocol=aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311,
                clean_session=None if protocol == "5" else False,
            )
            try:
                async with twin:
                    await asyncio.sleep(0.5)
            except aiomqtt.MqttError:
                pass
            await asyncio.sleep(0.2)
    finally:
        assert gateway.terminate() == 0
    log = gateway.log
    assert f"uplink: lost the link to 127.0.0.1:{mosquitto.port}" in log
    assert "TaskGroup" not in log and "Traceback" not in log
    assert len(records(log, "WARNING")) <= 3, "\n".join(records(log, "WARNING"))
