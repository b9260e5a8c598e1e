"""Three-node head-office clusters on loopback for bench/fleet.py, built on the test peers of one node.

RabbitMQ: nodes `<name>-a/b/c@localhost` joined by `classic_config` peer discovery, one port mapper
(epmd) and one Erlang cookie for the three, MQTT session queues of type quorum. NATS: three servers with
JetStream, routes between them (a stream is created with 3 replicas). Each node has its own ports and
data directory, and can be killed (SIGKILL) and started again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.mosquitto import free_port
from tests.peers.nats import NatsServer
from tests.peers.rabbitmq import RabbitMQBroker


@dataclass
class RabbitNode(RabbitMQBroker):
    """A RabbitMQ node that knows its two peers and shares their cookie and port mapper."""

    peers: list[str] = field(default_factory=list)
    shared_home: Path | None = None

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        if self.shared_home is not None:
            env["HOME"] = str(self.shared_home)
        return env

    def _write_config(self) -> None:
        super()._write_config()
        lines = ["cluster_formation.peer_discovery_backend = classic_config"]
        lines += [f"cluster_formation.classic_config.nodes.{i} = {node}" for i, node in enumerate(self.peers, 1)]
        with (self.workdir / "rabbitmq.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")


def rabbit_cluster(workdir: Path) -> list[RabbitNode]:
    """Three nodes, not yet started."""
    epmd = free_port()
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(os.urandom(16).hex())
    cookie.chmod(0o400)
    names = [f"fleet{os.getpid()}{x}@localhost" for x in "abc"]
    return [
        RabbitNode(workdir / name.split("@")[0], durable_queue_type="quorum", epmd_port=epmd, node=name,
                   peers=names, shared_home=home)
        for name in names
    ]  # fmt: skip


def start_rabbit_cluster(nodes: list[RabbitNode]) -> None:
    """Start the first node alone (it owns the port mapper), then the other two."""
    nodes[0].start(timeout=180)
    for node in nodes[1:]:
        node.start(timeout=180)
    time.sleep(2)


@dataclass
class NatsNode(NatsServer):
    """A NATS server with a cluster block naming every route of the cluster."""

    cluster_port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)

    def _write_config(self) -> Path:
        conf = super()._write_config()
        routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self.routes)
        with conf.open("a") as out:
            out.write(
                f'cluster {{\n  name: "fleet"\n  listen: "127.0.0.1:{self.cluster_port}"\n  routes: [{routes}]\n}}\n'
            )
        return conf


def nats_cluster(workdir: Path, mqtt_settings: dict[str, object] | None = None) -> list[NatsNode]:
    ports = [free_port() for _ in range(3)]
    return [
        NatsNode(workdir / f"n{i}", name=f"fleet-n{i}", cluster_port=ports[i], routes=ports,
                 mqtt_settings=dict(mqtt_settings or {}))
        for i in range(3)
    ]  # fmt: skip
