"""`hq push-prices --group` and `hq command --group`: publish once, then report every store of the group."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import psycopg

from tests.peers.brokers import MqttBroker
from tests.peers.hq import REPO, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.stores import run_ingest

_prefixes = itertools.count(1)


def unique_prefix() -> str:
    return f"g{next(_prefixes)}x{int(time.time()) % 10000}"


async def hq(broker: MqttBroker, prefix: str, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    """`store-gateway hq ...` as a child process; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "hq", "--broker", broker.url, "--prefix", prefix, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120"),
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return int(process.returncode or 0), out.decode(), err.decode()


@contextlib.asynccontextmanager
async def gateways(broker: MqttBroker, prefix: str, base: Path, stores: list[str]) -> AsyncIterator[None]:
    """Real gateways of the group `g1`, each in this event loop, until the block ends; the block starts once
    every one has said `online` (published after it subscribed, so its session holds the subscriptions)."""
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(aiomqtt.Client(broker.host, broker.port))
        await watcher.subscribe(f"{prefix}/stores/+/gateway/state", qos=1)
        for store in stores:
            await stack.enter_async_context(running_gateway(config(broker, prefix, base, store)))
        online: set[str] = set()
        async with asyncio.timeout(30):
            async for message in watcher.messages:
                if json.loads(bytes(message.payload)).get("state") == "online":  # type: ignore[arg-type]
                    online.add(str(message.topic).split("/")[2])
                if online >= set(stores):
                    break
        yield


def config(broker: MqttBroker, prefix: str, base: Path, store: str) -> Path:
    return write_config(base / store, broker, store=store, groups=("g1",), uplink_extra=f'topic_prefix = "{prefix}"')


def table_rows(out: str) -> dict[str, str]:
    """store -> the table's result column."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) >= 2 and cells[1] in ("applied", "rejected", "no answer"):
            found[cells[0]] = cells[1] + (f" | {cells[2]}" if len(cells) > 2 and cells[2] else "")
    return found


async def test_a_group_push_waits_for_a_store_that_comes_back_late(uplink_broker: MqttBroker, tmp_path: Path) -> None:
    mosquitto = uplink_broker  # Mosquitto, RabbitMQ and NATS: the store's session keeps the command while it is away
    prefix, stores = unique_prefix(), ["ga1", "ga2", "ga3"]
    async with gateways(mosquitto, prefix, tmp_path, stores):  # each makes its persistent session
        pass
    (tmp_path / "stores.txt").write_text("# group g1\nga1\nga2\n\nga3\n")
    (tmp_path / "prices.csv").write_text("sku,price,currency\nA1,1.99,EUR\nB2,2.49,EUR\nC3,3.10,EUR\n")
    async with gateways(mosquitto, prefix, tmp_path, stores[:2]):  # ga3 is offline when the push goes
        push = asyncio.create_task(
            hq(mosquitto, prefix, "push-prices", "--group", "g1", "--stores", str(tmp_path / "stores.txt"),
               "--chunk", "2", "--timeout", "60", "--quiet", str(tmp_path / "prices.csv"))
        )  # fmt: skip
        await asyncio.sleep(3)
        assert not push.done()
        async with running_gateway(config(mosquitto, prefix, tmp_path, "ga3")):  # and answers late
            code, out, err = await push
    assert code == 0, out + err
    assert table_rows(out) == {"ga1": "applied", "ga2": "applied", "ga3": "applied"}, out
    assert "3 stores: 3 applied, 0 rejected, 0 no answer within 60 s" in out


async def test_a_group_command_reports_rejections_and_stores_that_never_answer(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    prefix, stores = unique_prefix(), ["gb1", "gb2", "gb3"]
    (tmp_path / "stores.txt").write_text("\n".join(stores) + "\n")
    async with gateways(mosquitto, prefix, tmp_path, stores[:2]):
        code, out, err = await hq(
            mosquitto, prefix, "command", "--group", "g1", "--stores", str(tmp_path / "stores.txt"),
            "--timeout", "4", "--quiet", "stock.adjust", '{"sku": "A1", "reason": "receive"}',
        )  # fmt: skip
    assert code == 1, out + err
    rows = table_rows(out)
    assert rows["gb3"].startswith("no answer"), out  # never started: no session, nothing queued
    for store in stores[:2]:
        assert rows[store] == "rejected | data.delta: field required", out  # the first error names the field
    assert "3 stores: 0 applied, 2 rejected, 1 no answer within 4 s" in out


async def test_a_group_command_follows_the_stores_the_ingest_has_seen(
    mosquitto: MosquittoBroker, pg_dsn: str, tmp_path: Path
) -> None:
    prefix, stores = unique_prefix(), ["gc1", "gc2"]
    ingest = ["--client-id", f"{prefix}-ingest"]
    run_ingest(mosquitto.url, pg_dsn, *ingest, prefix=prefix)
    async with gateways(mosquitto, prefix, tmp_path, stores):
        for store in stores:  # each store's first event: a command's result
            code, out, err = await hq(
                mosquitto,
                prefix,
                "command",
                "--store",
                store,
                "stock.adjust",
                '{"sku": "A1", "delta": 1, "reason": "receive"}',
            )
            assert code == 0, out + err
    run_ingest(mosquitto.url, pg_dsn, *ingest, prefix=prefix)  # now the ingest has seen both stores
    async with gateways(mosquitto, prefix, tmp_path, stores):
        code, out, err = await hq(
            mosquitto, prefix, "command", "--group", "g1", "--db", pg_dsn, "--id", "cmd-group-1", "--quiet",
            "stock.adjust", '{"sku": "A1", "delta": 3, "reason": "receive"}',
        )  # fmt: skip
    assert code == 0, out + err
    assert table_rows(out) == {"gc1": "applied", "gc2": "applied"}, out
    run_ingest(mosquitto.url, pg_dsn, *ingest, prefix=prefix)
    with psycopg.connect(pg_dsn) as conn:
        sent = conn.execute("SELECT id, type, target_group, topic FROM commands").fetchall()
        answers = conn.execute(
            "SELECT store, status, applied FROM command_answers WHERE command_id = 'cmd-group-1' ORDER BY store"
        ).fetchall()
    assert sent == [("cmd-group-1", "stock.adjust", "g1", f"{prefix}/groups/g1/commands/stock/adjust")]
    assert answers == [("gc1", "applied", 1), ("gc2", "applied", 1)]


async def test_group_options_are_checked_before_anything_is_sent(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    prefix = unique_prefix()
    (tmp_path / "prices.csv").write_text("sku,price,currency\nA1,1.99,EUR\n")
    (tmp_path / "bad.txt").write_text("ok1\nnot ok\n")
    code, _, err = await hq(mosquitto, prefix, "push-prices", "--group", "g1", str(tmp_path / "prices.csv"))
    assert code == 2 and "--group: give --stores FILE or --db DSN" in err
    code, _, err = await hq(
        mosquitto, prefix, "push-prices", "--group", "g1", "--stores", str(tmp_path / "bad.txt"),
        str(tmp_path / "prices.csv"),
    )  # fmt: skip
    assert code == 2 and "line 2: 'not ok' is not a store id" in err
