"""`check-config` and `run` on the files a technician gets: the shipped configs, secret hints, local_mqtt login."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.peers.hq import REPO, GatewayProcess, write_config
from tests.peers.mosquitto import MosquittoBroker

CLI = [sys.executable, "-m", "gateway"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )  # fmt: skip


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_check_config(path: Path) -> None:
    done = cli("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("configuration OK")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[[sensors]]\nid = "b2"\nbackend = "bthome"\naddress = "A4:C1:38:8D:18:B2"\nbind_key = "00"\n',
            "sensors[0].bind_key: secrets may not be written in the config file; use bind_key_file or bind_key_env",
        ),
        (
            '[local_mqtt]\npassword = "secret"\n',
            "local_mqtt.password: secrets may not be written in the config file; use password_file or password_env",
        ),
        (
            '[local_mqtt]\npassword_env = "NO_SUCH_VARIABLE_FOR_THE_TEST"\n',
            "local_mqtt.password_env: environment variable NO_SUCH_VARIABLE_FOR_THE_TEST is not set",
        ),
    ],
    ids=["bind_key", "local-password", "local-password-env-unset"],
)
def test_secret_hints_name_the_right_keys(tmp_path: Path, toml: str, expected: str) -> None:
    config = write_config(tmp_path, MosquittoBroker(tmp_path), extra=toml)
    done = cli("check-config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip() == expected


def test_local_mqtt_takes_its_password_from_the_environment(
    mosquitto: MosquittoBroker, mosquitto_factory: Any, tmp_path: Path
) -> None:
    local = mosquitto_factory(users={"sensors": "s3cret-in-env"})
    config = write_config(
        tmp_path,
        mosquitto,
        store="loc1",
        extra=f"""
[local_mqtt]
url = "{local.url}"
username = "sensors"
password_env = "LOCAL_MQTT_PASSWORD"

[[sensors]]
id = "shelf-a1"
backend = "mqtt"
topic = "sensors/shelf-a1"
""",
    )
    assert cli("check-config", str(config), env={"LOCAL_MQTT_PASSWORD": "s3cret-in-env"}).returncode == 0
    gateway = GatewayProcess(config, tmp_path / "gateway.log", env={"LOCAL_MQTT_PASSWORD": "s3cret-in-env"}).start()
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"broker local-mqtt \(mqtt://[^)]*\) is online", gateway.log):
            assert time.monotonic() < deadline, gateway.log[-3000:]
            time.sleep(0.2)
        done = cli("status", "--config", str(config), "--json")  # a technician's shell: no LOCAL_MQTT_PASSWORD
        assert done.returncode == 0, done.stderr
        devices = {d["device"]: d["status"] for d in json.loads(done.stdout)["devices"]}
        assert devices["local-mqtt"] == "online"
    finally:
        assert gateway.terminate() == 0
    assert (
        "local-mqtt (mqtt://127.0.0.1:" in gateway.log and "local-mqtt (" + local.url + "): offline" not in gateway.log
    )
