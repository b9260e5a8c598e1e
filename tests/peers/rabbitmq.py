"""A real RabbitMQ 3 node with the MQTT plugin, for tests: its own node name, ports, epmd and data directory.

Started from Debian's `rabbitmq-server` package (`/usr/lib/rabbitmq/bin/rabbitmq-server`, which runs in
the foreground) with every path, port and name of its own, so it never meets a RabbitMQ already running
on the machine: the Erlang port mapper (epmd) is our own child on a free port, the cookie lives in the
node's own HOME, and the system's `rabbitmq-env.conf` is not read. Users, virtual host, permissions
and topic permissions come from a definitions file loaded at boot (no `rabbitmqctl` round trips).

Anonymous MQTT clients are the `guest` user (everything allowed); the users given to the broker get
exactly the permissions given with them, so one node serves both the plain tests and the
per-store permission tests.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.peers.mosquitto import free_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_nodes = itertools.count(1)


@dataclass(frozen=True)
class RabbitUser:
    """A user with its permissions on the vhost `/` and its topic permissions on `amq.topic` (regexes)."""

    name: str
    password: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    topic_write: str | None = None  # None: no topic permission (every routing key allowed)
    topic_read: str | None = None
    tags: str = ""


def password_hash(password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"rabbitmq did not listen on 127.0.0.1:{port} within {timeout:g} s")


@dataclass
class RabbitMQBroker:
    """One RabbitMQ node with `rabbitmq_mqtt`: MQTT on `port`, AMQP 0-9-1 on `amqp_port`."""

    workdir: Path
    users: list[RabbitUser] = field(default_factory=list)
    durable_queue_type: Literal["classic", "quorum"] = "classic"
    port: int = field(default_factory=free_port)
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"sgtest{os.getpid()}n{next(_nodes)}@localhost")
    process: subprocess.Popen[bytes] | None = None
    epmd: subprocess.Popen[bytes] | None = None

    host = "127.0.0.1"
    tls = None
    kind = "rabbitmq"
    mqtt5 = False  # RabbitMQ 3.10's MQTT plugin speaks 3.1.1 only

    @property
    def url(self) -> str:
        """The MQTT URL stores connect to."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}/"

    @property
    def log(self) -> str:
        logs = sorted((self.workdir / "log").glob("*.log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)

    def _environment(self) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env_file = self.workdir / "rabbitmq-env.conf"
        env_file.write_text("")  # not the system's /etc/rabbitmq/rabbitmq-env.conf
        keep = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        return keep | {
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        definitions = self.workdir / "definitions.json"
        users = [RabbitUser("guest", "guest", tags="administrator"), *self.users]
        definitions.write_text(
            json.dumps(
                {
                    "vhosts": [{"name": "/"}],
                    "users": [
                        {
                            "name": user.name,
                            "password_hash": password_hash(user.password),
                            "hashing_algorithm": "rabbit_password_hashing_sha256",
                            "tags": user.tags,
                        }
                        for user in users
                    ],
                    "permissions": [
                        {"user": u.name, "vhost": "/", "configure": u.configure, "write": u.write, "read": u.read}
                        for u in users
                    ],
                    "topic_permissions": [
                        {
                            "user": u.name,
                            "vhost": "/",
                            "exchange": "amq.topic",
                            "write": u.topic_write if u.topic_write is not None else ".*",
                            "read": u.topic_read if u.topic_read is not None else ".*",
                        }
                        for u in users
                        if u.topic_write is not None or u.topic_read is not None
                    ],
                },
                indent=2,
            )
        )
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            "loopback_users = none",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
            "mqtt.allow_anonymous = true",
            "mqtt.default_user = guest",
            "mqtt.default_pass = guest",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            f"mqtt.durable_queue_type = {self.durable_queue_type}",
            "mqtt.subscription_ttl = 604800000",  # an offline store keeps its commands 7 days (default 1)
            "mqtt.prefetch = 100",  # unacknowledged messages per MQTT subscriber (default 10: slow for head office)
            f"load_definitions = {definitions}",
            "log.file.level = info",
            "log.console = false",
        ]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.workdir / "advanced.config").write_text("[].\n")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def start(self, timeout: float = 90.0) -> RabbitMQBroker:
        """Start (or start again, same node and data) and wait until the MQTT listener answers."""
        if self.process and self.process.poll() is None:
            return self
        require_rabbitmq()
        self._write_config()
        env = self._environment()
        if self.epmd is None or self.epmd.poll() is not None:
            # our own port mapper, in the foreground, so it is stopped with the node (no stray daemon)
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self.process = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            stdin=subprocess.DEVNULL,
            env=env,
            stdout=(self.workdir / "stdout.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the whole process group (script, beam, its helpers) is ours to stop
        )
        try:
            _wait_for_port(self.port, self.process, timeout)
            _wait_for_port(self.amqp_port, self.process, timeout)
        except RuntimeError as exc:
            self.close(kill=True)
            out = (self.workdir / "stdout.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n{out}\n{self.log[-3000:]}") from None
        return self

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the node): queues and retained messages are kept on disk."""
        if self.process and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._signal_group_leftovers()

    def kill(self) -> None:
        """SIGKILL of the node, as a crash."""
        if self.process and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        self._signal_group_leftovers()

    def _signal_group_leftovers(self) -> None:
        # helpers of the node (erl_child_setup, inet_gethost) live in its process group
        if self.process is not None:
            self._signal_group(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self, *, kill: bool = False) -> None:
        """Stop the node and its port mapper (end of the test session)."""
        if kill:
            self.kill()
        else:
            self.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait()


def require_rabbitmq() -> None:
    if not RABBITMQ_SERVER.exists() or shutil.which("epmd") is None:
        raise RuntimeError("rabbitmq-server is not installed: apt-get install -y rabbitmq-server (see .ci/run)")


def store_user(store: str, password: str, *, groups: tuple[str, ...] = (), prefix: str = "retail") -> RabbitUser:
    """The per-store user of docs/brokers.md: its own session queues, its own topics, its groups' commands.

    The MQTT plugin keeps a session's subscriptions in the queues `mqtt-subscription-<client id>qos0/1`
    and maps the topic `retail/stores/0042/events/scan` to the routing key `retail.stores.0042.events.scan`
    on `amq.topic`; topic permissions are regexes over those routing keys (writes: what it publishes,
    reads: the binding keys of what it subscribes to).
    """
    queues = rf"mqtt-subscription-store-gateway-{store}qos[01]"
    own = rf"{prefix}\.stores\.{store}"
    commands = rf"{prefix}\.(stores\.{store}" + "".join(rf"|groups\.{g}" for g in groups) + r")\.commands\..+"
    return RabbitUser(
        name=f"store-{store}",
        password=password,
        configure=rf"^{queues}$",
        write=rf"^(amq\.topic|{queues})$",
        read=rf"^(amq\.topic|{queues})$",
        topic_write=rf"^{own}\.(events\..+|gateway\.state|devices\..+)$",
        topic_read=rf"^{commands}$",
    )
