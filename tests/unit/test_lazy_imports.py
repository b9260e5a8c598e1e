"""What a gateway loads: the heavy libraries of features it may not use wait until they are used.

A Raspberry Pi class box has start time and RSS budgets (bench/README.md: online < 1 s, RSS < 80 MB).
A gateway without an [http] table pays nothing for aiohttp (about 15 MB and 0.2 s of start), and none
pays for Pillow, python-escpos, biip or bleak before a device asks for them, nor ever for the
head-office libraries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.mosquitto import free_port

HEAVY = {"aiohttp", "PIL", "escpos", "biip", "bleak", "aio_pika", "nats", "psycopg"}

# Runs the real daemon (no broker answers on port 1; the uplink keeps retrying) for a second, stops it
# the way a signal does, and prints the top-level modules the process loaded.
_RUN_AND_LIST = """
import asyncio, json, sys
from gateway import daemon
from gateway.config import parse_config

async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, stop.set)
    assert await daemon.run(parse_config(json.loads(sys.argv[1])), stop=stop) == 0

asyncio.run(main())
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def modules_of_a_run(config: dict[str, object]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, json.dumps(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_library() -> None:
    probe = "import gateway.cli, gateway.daemon, json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


@pytest.mark.parametrize("with_http", [False, True], ids=["no-http-table", "http-table"])
def test_the_http_server_is_loaded_only_when_configured(tmp_path: Path, with_http: bool) -> None:
    config: dict[str, object] = {
        "store": {"id": "S1"},
        "state": {"path": str(tmp_path / "state.db")},
        "uplink": {"url": "mqtt://127.0.0.1:1"},
    }
    if with_http:
        config["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    loaded = modules_of_a_run(config)
    assert ("aiohttp" in loaded) is with_http
    assert not loaded & (HEAVY - {"aiohttp"}), sorted(loaded & HEAVY)
