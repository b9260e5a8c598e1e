"""`store-gateway hq` sends commands on the topics of contract §3 and refuses ids that cannot be topic levels."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from tests.peers.hq import running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker

REPO = Path(__file__).resolve().parents[2]


def hq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "hq", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


async def test_hq_sends_a_command_on_its_slash_topic(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, mosquitto, store="hqt1")
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as watcher, running_gateway(config_path):
        await watcher.subscribe("retail/stores/hqt1/commands/#", qos=1)
        data = json.dumps({"sku": "H1", "delta": 3, "reason": "receive"})
        done = await asyncio.to_thread(
            hq, "--broker", mosquitto.url, "command", "--store", "hqt1", "stock.adjust", data
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "applied"
        async with asyncio.timeout(10):
            message = await anext(aiter(watcher.messages))
    assert str(message.topic) == "retail/stores/hqt1/commands/stock/adjust"
    assert json.loads(bytes(message.payload))["type"] == "stock.adjust"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("command", "--store", "00.42", "stock.adjust", "{}"), 'hq: --store: "00.42" contains a dot'),
        (("command", "--group", "fr sud", "stock.adjust", "{}"), 'hq: --group: "fr sud" contains a space'),
        (("watch", "--store", "0042/#"), 'hq: --store: "0042/#" contains a #'),
        (("--prefix", "acme/retail", "watch", "--store", "0042"), 'hq: --prefix: "acme/retail" contains a /'),
    ],
)
def test_hq_refuses_an_id_that_cannot_be_a_topic_level(
    mosquitto: MosquittoBroker, args: tuple[str, ...], expected: str
) -> None:
    done = hq("--broker", mosquitto.url, *args)
    assert done.returncode == 2, done.stdout
    assert expected in done.stderr
