"""One gateway per state database, and `store-gateway status` as a technician reads it (the real commands)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.peers.hq import REPO, GatewayProcess, write_config
from tests.peers.mosquitto import MosquittoBroker, free_port

CLI = [sys.executable, "-m", "gateway"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def status_json(config: Path) -> dict[str, Any]:
    done = cli("status", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def status_soon(config: Path) -> dict[str, Any]:
    """`status --json`, or an empty report while the gateway has not created its database yet."""
    done = cli("status", "--config", str(config), "--json")
    if done.returncode == 1 and "no state database" in done.stderr:
        return {"gateway": {}, "uplink": {}}
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def no_broker() -> Any:
    """Where no broker listens: the uplink's connection is refused."""
    return SimpleNamespace(url=f"mqtt://127.0.0.1:{free_port()}", tls=None)


def test_a_second_run_on_the_same_state_database_is_refused(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="lock1")
    first = GatewayProcess(config, tmp_path / "first.log").start()
    try:
        wait_for(lambda: status_soon(config)["uplink"].get("state") == "online", "first gateway online")
        second = cli("run", "--config", str(config), timeout=30)
        assert second.returncode == 1, second.stderr
        assert "already running" in second.stderr and f"pid {first.process.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        report = status_json(config)
        assert report["gateway"]["state"] == "running" and report["gateway"]["pid"] == first.process.pid
        text = cli("status", "--config", str(config)).stdout
        assert f"gateway      running (pid {first.process.pid})" in text
        assert first.process.poll() is None, "the first gateway keeps running"
    finally:
        assert first.terminate() == 0
    report = status_json(config)
    assert report["gateway"]["state"] == "stopped" and report["gateway"]["stopped_cleanly"] is True
    assert report["uplink"].get("state") == "offline"
    assert "gateway      stopped, version" in cli("status", "--config", str(config)).stdout


def test_sigkill_leaves_no_stale_lock(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="lock2")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    wait_for(lambda: status_soon(config)["gateway"].get("state") == "running", "gateway running")
    gateway.kill()
    report = status_json(config)
    assert report["gateway"]["state"] == "stopped", "the kernel released the lock with the process"
    assert report["gateway"]["stopped_cleanly"] is False
    assert "did not stop cleanly" in cli("status", "--config", str(config)).stdout
    again = GatewayProcess(config, tmp_path / "again.log").start()
    try:
        wait_for(lambda: status_soon(config)["uplink"].get("state") == "online", "restarted gateway online")
    finally:
        assert again.terminate() == 0
    assert "already running" not in again.log


def test_status_says_why_the_uplink_is_offline_and_when_it_retries(tmp_path: Path) -> None:
    broker = no_broker()
    port = broker.url.rsplit(":", 1)[1]
    config = write_config(tmp_path, broker, store="why1")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        report = wait_for(
            lambda: (r := status_soon(config))["uplink"].get("last_error") and r, "the uplink's error in status"
        )
        uplink = report["uplink"]
        assert uplink["state"] == "offline"
        assert uplink["broker"] == broker.url
        assert f"127.0.0.1:{port}: connection refused" in uplink["last_error"]
        assert uplink["next_retry_at"] is not None and uplink["failed_attempts"] >= 1
        assert uplink["last_connected_at"] is None
        text = cli("status", "--config", str(config)).stdout
        line = next(x for x in text.splitlines() if x.startswith("uplink"))
        assert f"127.0.0.1:{port}: connection refused" in line and "next try" in line, line
        assert "last connected never" in line
        for raw in ("None", "by_state", "{", "[", "_s "):
            assert raw not in text, f"{raw!r} in the status text:\n{text}"
    finally:
        assert gateway.terminate() == 0
    log = gateway.log
    assert log.count(f"uplink: cannot connect to 127.0.0.1:{port}: connection refused") == 1, log
    assert "TaskGroup" not in log and "Traceback" not in log, log


def test_tls_refused_is_said_with_host_and_port(mosquitto_factory: Any, tmp_path: Path) -> None:
    broker = mosquitto_factory(tls=True)
    config = write_config(tmp_path, broker, store="tls1")
    # the store does not trust the broker's CA: point ca_file at the client certificate instead
    config.write_text(
        config.read_text().replace(f'ca_file = "{broker.tls.ca}"', f'ca_file = "{broker.tls.client_cert}"')
    )
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        report = wait_for(lambda: (r := status_soon(config))["uplink"].get("last_error") and r, "TLS error in status")
    finally:
        assert gateway.terminate() == 0
    assert f"127.0.0.1:{broker.port}: TLS refused" in report["uplink"]["last_error"]
    assert "certificate verify failed" in report["uplink"]["last_error"]
    assert f"uplink: cannot connect to 127.0.0.1:{broker.port}: TLS refused" in gateway.log


def test_status_json_into_head_ends_quietly(tmp_path: Path) -> None:
    # enough devices that the document is larger than a pipe's buffer, so `head` closes it mid-write
    printers = "".join(f'\n[[printers]]\nid = "p{i}"\nurl = "file:///dev/null"\n' for i in range(800))
    config = write_config(tmp_path, no_broker(), store="head1", extra=printers)
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        wait_for(lambda: status_soon(config)["gateway"].get("state") == "running", "gateway running")
        for args in (["--json"], ["--json", "--watch"], [], ["--watch"]):
            done = subprocess.run(
                f"{sys.executable} -m gateway status --config {config} {' '.join(args)} | head -n 3",
                shell=True, capture_output=True, text=True, timeout=30, cwd=REPO, env=ENV,
            )  # fmt: skip
            assert len(done.stdout.splitlines()) == 3, done.stdout
            assert done.stderr == "", f"status {args}: {done.stderr}"
    finally:
        assert gateway.terminate() == 0


def test_status_watch_refreshes_until_ctrl_c(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto, store="watch1")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    wait_for(lambda: status_soon(config)["gateway"].get("state") == "running", "gateway running")
    assert gateway.terminate() == 0
    watch = subprocess.Popen(
        [*CLI, "status", "--config", str(config), "--watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        seen: list[str] = []
        started = False
        while not any(line.startswith("gateway      running") for line in seen):
            line = watch.stdout.readline()
            assert line, "status --watch ended by itself"
            seen.append(line)
            if line.startswith("gateway      stopped") and not started:
                gateway.start()  # the next report must show it running: the watch reads again
                started = True
        assert started, "the first report was made before the gateway started"
    finally:
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=15)
        if gateway.process.poll() is None:
            gateway.terminate()
    assert watch.returncode == 0
    assert err == "", err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_status_of_a_gateway_that_never_ran(tmp_path: Path, json_flag: list[str]) -> None:
    config = write_config(tmp_path, no_broker(), store="never1")
    done = cli("status", "--config", str(config), *json_flag)
    assert done.returncode == 1
    assert done.stderr.startswith("state.path: no state database at"), done.stderr


def test_a_host_name_that_does_not_resolve_is_said(tmp_path: Path) -> None:
    broker = SimpleNamespace(url="mqtt://store-gateway-test.invalid:1883", tls=None)  # .invalid never resolves
    config = write_config(tmp_path, broker, store="dns1")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        report = wait_for(
            lambda: (r := status_soon(config))["uplink"].get("last_error") and r, "DNS error in status", timeout=60
        )
    finally:
        assert gateway.terminate() == 0
    expected = "store-gateway-test.invalid:1883: the host name could not be resolved (DNS)"
    assert report["uplink"]["last_error"] == expected
    assert f"uplink: cannot connect to {expected}" in gateway.log
