"""A real NATS 2 server with JetStream and MQTT, for tests: its own name, ports and store directory.

Started from Debian's `nats-server` package with a generated config on free 127.0.0.1 ports (client,
monitoring, MQTT), so it never meets a NATS server already running on the machine. MQTT in NATS
needs JetStream (sessions, retained messages and QoS 1 messages live in `$MQTT_*` streams) and a
`server_name`.

Clients without credentials are the `guest` user (everything allowed); the users given to the server
get exactly the permissions given with them (NATS subjects: the MQTT topic `retail/stores/1/events/scan`
is the subject `retail.stores.1.events.scan`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.mosquitto import free_port
from tests.peers.process import ChildServer

_servers = itertools.count(1)


@dataclass(frozen=True)
class NatsUser:
    """A user and the subjects it may publish to and subscribe to (None: all)."""

    name: str
    password: str
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    connection_types: tuple[str, ...] | None = None  # e.g. ("MQTT",): no core NATS or websocket logins


@dataclass
class NatsServer(ChildServer):
    """One nats-server: NATS clients on `nats_port`, MQTT 3.1.1 on `port`, JetStream in `workdir/jetstream`."""

    workdir: Path
    users: list[NatsUser] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    nats_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"sgtest-{os.getpid()}-{next(_servers)}")
    # more settings of the `mqtt {}` block, e.g. {"consumer_replicas": 1} (see docs/brokers.md, NATS at scale)
    mqtt_settings: dict[str, object] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    host = "127.0.0.1"
    tls = None
    kind = "nats"
    mqtt5 = False  # nats-server 2.9 speaks MQTT 3.1.1 only
    stop_timeout_s = 30.0  # a graceful stop writes JetStream's sessions, queued and retained messages

    @property
    def url(self) -> str:
        """The MQTT URL stores connect to."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.nats_port}"

    @property
    def log(self) -> str:
        path = self.workdir / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        store = self.workdir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        users: list[dict[str, object]] = [{"user": "guest", "password": "guest"}]
        for user in self.users:
            permissions: dict[str, object] = {}
            if user.publish is not None:
                permissions["publish"] = {"allow": list(user.publish)}
            if user.subscribe is not None:
                permissions["subscribe"] = {"allow": list(user.subscribe)}
            entry: dict[str, object] = {"user": user.name, "password": user.password, "permissions": permissions}
            if user.connection_types is not None:
                entry["allowed_connection_types"] = list(user.connection_types)
            users.append(entry)
        # the NATS config format accepts JSON values, so json.dumps quotes every name and subject safely
        mqtt_settings = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in self.mqtt_settings.items())
        text = f"""
server_name: {json.dumps(self.name)}
listen: "127.0.0.1:{self.nats_port}"
http: "127.0.0.1:{self.http_port}"
log_file: {json.dumps(str(self.workdir / "nats.log"))}
jetstream {{
  store_dir: {json.dumps(str(store))}
  max_memory_store: 256MB
  max_file_store: 2GB
}}
mqtt {{
  listen: "127.0.0.1:{self.port}"
{mqtt_settings}}}
authorization {{
  users: {json.dumps(users)}
}}
no_auth_user: guest
"""
        conf = self.workdir / "nats.conf"
        conf.write_text(text)
        return conf

    def start(self, timeout: float = 30.0) -> NatsServer:
        """Start (or start again, same store directory) and wait until the MQTT listener answers."""
        if self.process and self.process.poll() is None:
            return self
        require_nats()
        conf = self._write_config()
        self.process = subprocess.Popen(
            ["nats-server", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                raise RuntimeError(f"nats-server exited: {err.decode(errors='replace')}\n{self.log[-3000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"nats-server did not listen within {timeout:g} s\n{self.log[-3000:]}") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.stop()


def require_nats() -> None:
    if shutil.which("nats-server") is None:
        raise RuntimeError("nats-server is not installed: apt-get install -y nats-server (see .ci/run)")


def store_user(store: str, password: str, *, groups: tuple[str, ...] = (), prefix: str = "retail") -> NatsUser:
    """The per-store user of docs/brokers.md: publishes only its own events and state, reads only its commands.

    QoS 1 subscriptions are JetStream consumers that deliver on `$MQTT.sub.<random>`: the user needs
    that subject, and may log in over MQTT only, so it cannot subscribe to another session's delivery
    subject with a core NATS client.
    """
    return NatsUser(
        name=f"store-{store}",
        password=password,
        publish=(
            f"{prefix}.stores.{store}.events.>",
            f"{prefix}.stores.{store}.gateway.state",
            f"{prefix}.stores.{store}.devices.>",
        ),
        # MQTT's `a/#` is the subjects `a` and `a.>`: both are allowed
        subscribe=(
            f"{prefix}.stores.{store}.commands",
            f"{prefix}.stores.{store}.commands.>",
            *(f"{prefix}.groups.{g}.commands" for g in groups),
            *(f"{prefix}.groups.{g}.commands.>" for g in groups),
            "$MQTT.sub.>",
        ),
        connection_types=("MQTT",),
    )
