"""Head office as a test peer: a plain aiomqtt client that sends commands and collects events.

Also helpers to write a gateway config for a test broker and to run the real daemon, either
in-process (`running_gateway`) or as a separate process (`GatewayProcess`) for crash tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import Config, load_config
from gateway.schema import validate_event
from gateway.topics import store_command_topic
from tests.peers.brokers import MqttBroker

REPO = Path(__file__).resolve().parents[2]


def status_page_devices(
    port: int, printer_url: str, labels: Path, *, printer_timeout_s: float = 1.0, confirm_delay_s: float | None = None
) -> str:
    """Config TOML for the status page's tests: [http] on `port`, the printer `till-1` and the simulated
    label station `sim-1` writing into `labels`."""
    delay = "" if confirm_delay_s is None else f"confirm_delay_s = {confirm_delay_s}\n"
    return f"""
[http]
listen = "127.0.0.1:{port}"

[[printers]]
id = "till-1"
url = "{printer_url}"
timeout_s = {printer_timeout_s}

[[label_stations]]
id = "sim-1"
backend = "simulator"
directory = "{labels}"
{delay}"""


def write_config(
    directory: Path,
    broker: MqttBroker,
    *,
    store: str = "0042",
    extra: str = "",
    uplink_extra: str = "",
    groups: tuple[str, ...] = ("fr",),
) -> Path:
    """A gateway config for `broker` with its state in `directory`; `extra` is appended TOML."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = ""
    if broker.tls:
        tls = f'ca_file = "{broker.tls.ca}"\ncert_file = "{broker.tls.client_cert}"\nkey_file = "{broker.tls.client_key}"\n'
    text = f"""
[store]
id = "{store}"
timezone = "Europe/Paris"
groups = {json.dumps(list(groups))}

[state]
path = "{directory / "state.db"}"

[uplink]
url = "{broker.url}"
keepalive_s = 5
{tls}{uplink_extra}
{extra}
"""
    path = directory / "gateway.toml"
    path.write_text(text)
    return path


def envelope(name: str, data: dict[str, Any], command_id: str | None = None) -> dict[str, Any]:
    return {"id": command_id or uuid.uuid4().hex, "type": name, "sent_at": "2026-11-24T08:00:00+01:00", "data": data}


@dataclass
class HeadOffice:
    """A connected head-office client collecting every event of one store."""

    client: aiomqtt.Client
    store: str
    prefix: str = "retail"
    events: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def _collect(self) -> None:
        async for message in self.client.messages:
            payload = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            if str(message.topic).endswith("/gateway/state"):
                self.states.append(payload)
            else:
                try:
                    validate_event(payload)  # every event a test sees matches the documented models
                except (ValueError, KeyError) as exc:
                    self.invalid.append(f"{payload}: {exc}")
                self.events.append(payload)
            self._new.set()

    async def send(self, name: str, data: dict[str, Any], command_id: str | None = None) -> str:
        command = envelope(name, data, command_id)
        await self.send_raw(store_command_topic(self.prefix, self.store, name), json.dumps(command).encode())
        return str(command["id"])

    async def send_raw(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The first event (or state) matching `predicate`, waiting for it if needed."""
        async with asyncio.timeout(timeout):
            while True:
                for item in self.events + self.states:
                    try:
                        if predicate(item):
                            return item
                    except (KeyError, TypeError):  # a state message tested by an event predicate
                        continue
                self._new.clear()
                await self._new.wait()

    async def result(self, command_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The `command_result` data for `command_id`."""
        event = await self.wait_for(
            lambda e: e.get("type") == "command_result" and e["data"].get("command_id") == command_id, timeout
        )
        return dict(event["data"])

    async def command(self, name: str, data: dict[str, Any], command_id: str | None = None) -> dict[str, Any]:
        return await self.result(await self.send(name, data, command_id))

    async def count(self, predicate: Any, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.events if predicate(e)]
                if len(found) >= n:
                    return found
                self._new.clear()
                await self._new.wait()


@contextlib.asynccontextmanager
async def head_office(
    broker: MqttBroker, store: str = "0042", *, client_id: str | None = None, **kwargs: Any
) -> AsyncIterator[HeadOffice]:
    """Connect as head office and collect events of `store` until the block ends."""
    tls_context = None
    if broker.tls:
        import ssl

        tls_context = ssl.create_default_context(cafile=str(broker.tls.ca))
        tls_context.load_cert_chain(str(broker.tls.client_cert), str(broker.tls.client_key))
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id or f"hq-{uuid.uuid4().hex[:8]}",
        clean_session=client_id is None,
        tls_context=tls_context,
        max_inflight_messages=100,
        **kwargs,
    )
    client.pending_calls_threshold = 10_000
    async with client:
        office = HeadOffice(client, store)
        await client.subscribe(f"retail/stores/{store}/events/#", qos=1)
        await client.subscribe(f"retail/stores/{store}/gateway/state", qos=1)
        task = asyncio.create_task(office._collect())
        try:
            yield office
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
        assert not office.invalid, "events that do not match gateway.schema:\n" + "\n".join(office.invalid[:5])


@contextlib.asynccontextmanager
async def running_gateway(config_path: Path) -> AsyncIterator[Config]:
    """The real daemon (`gateway.daemon.run`) in this event loop until the block ends."""
    from gateway import daemon

    config = load_config(config_path)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(config, stop=stop))
    try:
        yield config
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0


class GatewayProcess:
    """`python -m gateway run --config PATH` as a child process (for SIGKILL and signal tests)."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        log.close()
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 12.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        """A test that failed before it stopped the gateway leaves none behind."""
        if self.running:
            self.kill()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
