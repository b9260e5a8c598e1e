"""Stores as head office sees them: MQTT clients that publish event envelopes exactly as the gateway does.

`publish_events` is a store whose events we choose (ids, seqs, order): duplicates and gaps on purpose.
`run_ingest` / `IngestProcess` run the real `store-gateway hq ... ingest` as a child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from gateway.timeutil import rfc3339, utc_now

REPO = Path(__file__).resolve().parents[2]


def event(store: str, seq: int, *, kind: str = "scan", event_id: str | None = None, data: Any = None) -> dict[str, Any]:
    """An event envelope of contract.md §3."""
    return {
        "id": event_id or uuid.uuid4().hex,
        "store": store,
        "type": kind,
        "seq": seq,
        "at": rfc3339(utc_now()),
        "data": data if data is not None else {"scanner": "s1", "code": str(seq), "sku": None, "mode": "count"},
    }


async def publish_events(mqtt_url: str, events: Iterable[dict[str, Any]], *, prefix: str = "retail") -> int:
    """Publish envelopes at QoS 1 on `P/stores/S/events/<kind>`, as the gateway would; return how many."""
    parts = urlsplit(mqtt_url)
    sent = 0
    async with aiomqtt.Client(
        parts.hostname or "", parts.port or 1883, identifier=f"store-sim-{uuid.uuid4().hex[:8]}",
        max_inflight_messages=100,
    ) as client:  # fmt: skip
        client.pending_calls_threshold = 100_000
        for envelope in events:
            topic = f"{prefix}/stores/{envelope['store']}/events/{envelope['type']}"
            await client.publish(topic, json.dumps(envelope).encode(), qos=1)
            sent += 1
    return sent


def ingest_command(broker_url: str, dsn: str, *args: str, prefix: str = "retail") -> list[str]:
    return [sys.executable, "-m", "gateway", "hq", "--broker", broker_url, "--prefix", prefix, "ingest", "--db", dsn,
            *args]  # fmt: skip


def run_ingest(broker_url: str, dsn: str, *args: str, prefix: str = "retail", timeout: float = 60) -> str:
    """`hq ingest --once ...` to the end; return its stderr (it must exit 0)."""
    result = subprocess.run(
        ingest_command(broker_url, dsn, "--once", "--idle", "1", "--progress", "1", *args, prefix=prefix),
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stderr


@dataclass
class IngestProcess:
    """A long-running `hq ingest` worker, to be stopped (SIGTERM) or killed (SIGKILL) by the test."""

    process: subprocess.Popen[str]
    log_path: Path

    @classmethod
    def start(cls, broker_url: str, dsn: str, log_path: Path, *args: str, prefix: str = "retail") -> IngestProcess:
        log = log_path.open("a")
        process = subprocess.Popen(
            ingest_command(broker_url, dsn, "--progress", "1", *args, prefix=prefix),
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
        log.close()
        return cls(process, log_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def written(self) -> int:
        """Events this worker wrote, from its closing line."""
        for line in reversed(self.log.splitlines()):
            if line.startswith("ingest: stopped;"):
                return int(line.split(";")[1].split()[0])
        raise AssertionError(f"no closing line in the worker's log:\n{self.log}")
