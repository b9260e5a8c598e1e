"""The technician's view against the running daemon: JSON API checked against docs/openapi.yaml,
/metrics through prometheus-client's own parser, /healthz, the page's languages, and device
availability retained on the head-office broker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import main as cli_main
from tests.peers.escpos_printer import EscposPrinterPeer
from tests.peers.hq import REPO, HeadOffice, head_office, running_gateway, status_page_devices, write_config
from tests.peers.mosquitto import MosquittoBroker, free_port

OPENAPI = json.loads((REPO / "docs" / "openapi.yaml").read_text())


def check_against_openapi(path: str, status: int, body: Any) -> None:
    """Validate an answer against the schema docs/openapi.yaml gives for this path and status."""
    operation = OPENAPI["paths"][path]["get"]
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": OPENAPI["components"]})


def station_and_printer(tmp_path: Path, printer: EscposPrinterPeer, port: int) -> str:
    devices = status_page_devices(port, printer.url, tmp_path / "labels", confirm_delay_s=0.05)
    return devices + '\n[orders]\nprinter = "till-1"\n'


@pytest.fixture
def printer() -> Iterator[EscposPrinterPeer]:
    peer = EscposPrinterPeer()
    yield peer
    peer.close()


@contextlib.asynccontextmanager
async def gateway_with_http(
    tmp_path: Path, broker: MosquittoBroker, printer: EscposPrinterPeer, store: str
) -> AsyncIterator[tuple[HeadOffice, str, Path]]:
    port = free_port()
    config = write_config(tmp_path, broker, store=store, extra=station_and_printer(tmp_path, printer, port))
    async with head_office(broker, store) as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the server starts with the other services
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(base + "/healthz") as answer:
                        if answer.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield hq, base, config


async def get_json(session: aiohttp.ClientSession, base: str, path: str, query: str = "") -> tuple[int, Any]:
    async with session.get(base + path + query) as answer:
        assert answer.content_type == "application/json"
        return answer.status, await answer.json()


async def seed(hq: HeadOffice) -> None:
    """A catalogue, two labels, stock and an open order, through the real command path."""
    items = [{"sku": s, "price": p, "currency": "EUR", "version": 1} for s, p in (("A1", "1.99"), ("B2", "12.50"))]
    assert (await hq.command("price.set", {"items": items}))["status"] == "applied"
    stock = [{"sku": "A1", "on_hand": 10, "version": 1}, {"sku": "B2", "on_hand": 3, "version": 1}]
    assert (await hq.command("stock.set", {"items": stock}))["status"] == "applied"
    labels = [{"label": "l-a1", "sku": "A1", "station": "sim-1"}, {"label": "l-b2", "sku": "B2", "station": "sim-1"}]
    assert (await hq.command("label.assign", {"items": labels}))["status"] == "applied"
    order = {"order": "CC-1", "mode": "collect", "expires_at": "2099-01-01T12:00:00+01:00",
             "lines": [{"sku": "A1", "qty": 2}]}  # fmt: skip
    assert (await hq.command("order.reserve", order))["status"] == "applied"
    await hq.count(lambda e: e.get("type") == "label" and e["data"]["status"] == "confirmed", 2)


async def test_api_answers_match_the_openapi_document(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        gateway_with_http(tmp_path, mosquitto, printer, "api1") as (hq, base, config),
        aiohttp.ClientSession() as session,
    ):
        await seed(hq)
        status, devices = await get_json(session, base, "/api/devices")
        check_against_openapi("/api/devices", status, devices)
        assert status == 200
        assert {d["id"]: d["kind"] for d in devices} == {"till-1": "printer", "sim-1": "label_station"}

        status, labels = await get_json(session, base, "/api/labels", "?state=confirmed")
        check_against_openapi("/api/labels", status, labels)
        assert sorted((x["label"], x["price"], x["state"]) for x in labels) == [
            ("l-a1", "1.99", "confirmed"),
            ("l-b2", "12.50", "confirmed"),
        ]
        assert all(len(x["content_hash"]) > 8 for x in labels)
        status, none = await get_json(session, base, "/api/labels", "?state=failed,sent")
        assert (status, none) == (200, [])

        status, orders = await get_json(session, base, "/api/orders", "?state=reserved")
        check_against_openapi("/api/orders", status, orders)
        assert [(o["order"], o["status"], o["lines"][0]["sku"], o["lines"][0]["qty"]) for o in orders] == [
            ("CC-1", "reserved", "A1", 2)
        ]
        assert orders[0]["expires_at"].startswith("2099-01-01T11:00:00")

        # events: newest first, as the envelopes head office received (published ones kept after PUBACK)
        await asyncio.sleep(0.5)
        status, events = await get_json(session, base, "/api/events", "?limit=5")
        check_against_openapi("/api/events", status, events)
        assert len(events) == 5
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs, reverse=True)
        received = {e["id"]: e for e in hq.events}
        for event in events:
            assert received[event["id"]] == event
        status, fifty = await get_json(session, base, "/api/events")
        assert len(fifty) == min(50, len(hq.events))

        # /api/status is `status --json`, the same document from the same function
        await asyncio.sleep(0.3)
        status, document = await get_json(session, base, "/api/status")
        check_against_openapi("/api/status", status, document)
        assert cli_main(["status", "--config", str(config), "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed == document
        assert document["store"] == "api1" and document["gateway"]["state"] == "running"

        # bad parameters name themselves; nothing here changes state
        for path, query, field in (
            ("/api/labels", "?state=lost", "state"),
            ("/api/orders", "?state=reserved,nope", "state"),
            ("/api/events", "?limit=0", "limit"),
            ("/api/events", "?limit=many", "limit"),
        ):
            status, problem = await get_json(session, base, path, query)
            check_against_openapi(path, status, problem)
            assert status == 400 and problem["error"].startswith(f"{field}: ")
        async with session.post(base + "/api/events", data=b"{}") as answer:
            assert answer.status == 405
        async with session.get(base + "/healthz") as answer:
            assert (answer.status, await answer.text()) == (200, "ok\n")


async def test_metrics_parse_and_move_with_events(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path
) -> None:
    async def scrape(session: aiohttp.ClientSession, base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with session.get(base + "/metrics") as answer:
            assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
            text = await answer.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async with (
        gateway_with_http(tmp_path, mosquitto, printer, "met1") as (hq, base, _config),
        aiohttp.ClientSession() as session,
    ):
        before = await scrape(session, base)
        assert before[("gateway_uplink_connected", ())] == 1
        await seed(hq)
        result = await hq.command("print", {"printer": "till-1", "document": "test_page"})
        assert result["status"] == "applied"
        # the order's pick list and the test page
        await hq.count(lambda e: e.get("type") == "print" and e["data"]["status"] == "printed", 2)
        rejected = await hq.command("no.such", {})
        assert rejected["status"] == "rejected"
        await asyncio.sleep(0.5)  # the last PUBACKs
        after = await scrape(session, base)

        def value(name: str, **labels: str) -> float:
            return after.get((name, tuple(sorted(labels.items()))), 0.0)

        def moved(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert moved("gateway_commands_total", type="price.set", status="applied") == 1
        assert moved("gateway_commands_total", type="stock.set", status="applied") == 1
        assert moved("gateway_commands_total", type="unknown", status="rejected") == 1
        assert moved("gateway_command_apply_seconds_count") == 6
        assert moved("gateway_events_published_total", kind="command_result") == 6
        assert moved("gateway_events_published_total", kind="label") >= 4  # sent and confirmed, two labels
        assert moved("gateway_events_published_total", kind="print") >= 2
        assert value("gateway_labels", state="confirmed") == 2
        assert value("gateway_print_jobs", status="printed") == 2
        assert value("gateway_device_up", device="till-1", kind="printer", status="online") == 1
        assert value("gateway_outbox_depth") == 0
        assert value("gateway_state_db_bytes") > 10_000
        assert value("gateway_uplink_reconnects_total") == 0
        # the histogram's buckets are cumulative and end with +Inf = count
        count = value("gateway_command_apply_seconds_count")
        assert value("gateway_command_apply_seconds_bucket", le="+Inf") == count


async def test_page_speaks_french_and_english(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path
) -> None:
    async with (
        gateway_with_http(tmp_path, mosquitto, printer, "pag1") as (_hq, base, _config),
        aiohttp.ClientSession() as session,
    ):
        async with session.get(base + "/", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"}) as answer:
            french = await answer.text()
            assert answer.headers["Content-Language"] == "fr"
        assert '<html lang="fr">' in french and "Appareils" in french and "Liaison siège" in french
        async with session.get(base + "/", headers={"Accept-Language": "de-DE,en;q=0.8,fr;q=0.3"}) as answer:
            english = await answer.text()
        assert '<html lang="en">' in english and "Devices" in english
        async with session.get(base + "/?lang=en", headers={"Accept-Language": "fr"}) as answer:
            assert '<html lang="en">' in await answer.text()  # the switch wins over the browser
        # nothing on the page comes from elsewhere
        for page in (french, english):
            assert "http://" not in page and "https://" not in page and "//" not in page.split("<script>")[0]
        assert 'data-device="till-1"' in french


async def availability(broker: MosquittoBroker, store: str, wait_s: float = 1.0) -> dict[str, bytes]:
    """The retained availability messages a new subscriber gets for `store`."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"av-{store}-{free_port()}") as client:
        await client.subscribe(f"retail/stores/{store}/devices/+/availability", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    found[str(message.topic).split("/")[4]] = bytes(message.payload)  # type: ignore[arg-type]
    return found


async def retained_becomes(
    broker: MosquittoBroker, store: str, expected: dict[str, bytes], timeout: float = 15
) -> None:
    """Wait until a new subscriber gets exactly `expected` (the gateway publishes on its own schedule)."""
    found: dict[str, bytes] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while found != expected:
                found = await availability(broker, store, wait_s=0.5)
    assert found == expected


async def test_device_availability_retained_and_cleared(
    mosquitto: MosquittoBroker, printer: EscposPrinterPeer, tmp_path: Path
) -> None:
    spare = EscposPrinterPeer()
    two_printers = f"""
[[printers]]
id = "till-1"
url = "{printer.url}"
timeout_s = 3.0

[[printers]]
id = "till-2"
url = "{spare.url}"
timeout_s = 3.0
"""
    config = write_config(tmp_path, mosquitto, store="av1", extra=two_printers)
    try:
        async with head_office(mosquitto, "av1") as hq, running_gateway(config):
            await hq.wait_for(lambda s: s.get("state") == "online")
            for till in ("till-1", "till-2"):
                assert (await hq.command("print", {"printer": till, "document": "test_page"}))["status"] == "applied"
            await hq.count(lambda e: e.get("type") == "print" and e["data"]["status"] == "printed", 2)
            online = b'{"state": "online"}'
            await retained_becomes(mosquitto, "av1", {"till-1": online, "till-2": online})
            spare.close()  # till-2 goes away: the next job finds it unreachable
            assert (await hq.command("print", {"printer": "till-2", "document": "test_page"}))["status"] == "applied"
            await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["device"] == "till-2"
                              and e["data"]["status"] == "offline")  # fmt: skip
            await retained_becomes(mosquitto, "av1", {"till-1": online, "till-2": b'{"state": "offline"}'})
    finally:
        spare.close()
    # till-2 removed from the config: its retained availability is cleared at the next start
    one_printer = two_printers.split("\n\n")[0]
    config = write_config(tmp_path, mosquitto, store="av1", extra=one_printer)
    assert "till-1" in config.read_text() and "till-2" not in config.read_text()
    async with head_office(mosquitto, "av1") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        await retained_becomes(mosquitto, "av1", {"till-1": b'{"state": "online"}'})  # its last known status


def test_openapi_document_is_generated_from_the_models() -> None:
    from gateway.http.openapi import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main()
    assert json.loads(out.getvalue()) == OPENAPI, "docs/openapi.yaml is stale: python -m gateway.http.openapi"


async def test_healthz_says_why_it_is_not_healthy(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """The HTTP service on a real state database, without the rest of the daemon: 200 `ok`, then 503
    with the reason once the daemon is stopping, and when the database writer is gone."""
    from gateway.bus import Bus
    from gateway.commands import Dispatcher
    from gateway.config import load_config
    from gateway.db import StateDB
    from gateway.http.server import HttpService
    from gateway.service import Gateway
    from gateway.supervisor import Supervisor

    port = free_port()
    config = load_config(write_config(tmp_path, mosquitto, store="hz1", extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'))
    db = StateDB(config.state.path)
    await db.start()
    service = HttpService(Gateway(config, db, Bus(), Dispatcher(), Supervisor(db)))
    service.setup()
    server = asyncio.create_task(service.serve())

    async def health(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
            return answer.status, await answer.text()

    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    if (await health(session))[0] == 200:
                        break
                await asyncio.sleep(0.05)
            assert await health(session) == (200, "ok\n")
            await db.close()
            assert await health(session) == (503, "the state database writer is not running\n")
            await service.stop()
            assert await health(session) == (503, "stopping\n")
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
