"""Schemathesis against the running daemon: requests generated from docs/openapi.yaml (valid and
invalid parameters), every answer checked against the same document (status codes, content types,
schemas, and that invalid input is refused with a 4xx)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.peers.hq import REPO, GatewayProcess, status_page_devices, write_config
from tests.peers.mosquitto import MosquittoBroker, free_port

schema = schemathesis.openapi.from_dict(json.loads((REPO / "docs" / "openapi.yaml").read_text()))


@pytest.fixture(scope="module")
def gateway_url(mosquitto: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway process with its status page, a label station and a printer, for the whole module."""
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    port = free_port()
    extra = status_page_devices(port, "tcp://127.0.0.1:9", directory / "labels", printer_timeout_s=0.5)
    config = write_config(directory, mosquitto, store="sch1", extra=extra)
    gateway = GatewayProcess(config, directory / "gateway.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the gateway's HTTP server did not start:\n" + gateway.log) from None
                time.sleep(0.1)
        yield url
    finally:
        assert gateway.terminate() == 0, gateway.log


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: schemathesis.Case, gateway_url: str) -> None:
    case.call_and_validate(base_url=gateway_url)
