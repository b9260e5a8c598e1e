"""Shared fixtures: real brokers and peers that tests talk to (see design.md, "Real parts in tests")."""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.peers import nats as nats_peer
from tests.peers import rabbitmq as rabbitmq_peer
from tests.peers.brokers import HQ_USER, STORE_GROUPS, STORE_PASSWORDS, MqttBroker
from tests.peers.disk import SmallDisk
from tests.peers.hq import GatewayProcess
from tests.peers.mosquitto import MosquittoBroker, make_tls_files, require_mosquitto
from tests.peers.nats import NatsServer, NatsUser
from tests.peers.postgres import PostgresServer
from tests.peers.rabbitmq import RabbitMQBroker, RabbitUser

if TYPE_CHECKING:
    from tests.peers.bluez import FakeBlueZ

_counter = itertools.count()

# Tests that send SIGINT to a child stand for a person pressing Ctrl-C at a terminal. When the suite
# runs as a background job of a script, bash starts it with SIGINT ignored and every child would
# inherit that (a Python program then never sees Ctrl-C); a handled signal is reset on exec instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One plain mosquitto for the whole session. Do not stop it: use `own_mosquitto` for outages."""
    require_mosquitto()
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MosquittoBroker]]:
    """Make brokers of one's own (plain, `tls=True` for mTLS, `users=`/`acl=`); all stopped at the end."""
    require_mosquitto()
    made: list[MosquittoBroker] = []

    def make(*, tls: bool = False, users: dict[str, str] | None = None, acl: str | None = None) -> MosquittoBroker:
        workdir = tmp_path_factory.mktemp(f"broker{next(_counter)}")
        broker = MosquittoBroker(
            workdir,
            tls=make_tls_files(workdir / "tls") if tls else None,
            users=users,
            acl=acl,
        )
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def own_mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A plain broker for this test alone, free to stop, kill and restart."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQBroker]:
    """One RabbitMQ 3 node with rabbitmq_mqtt (durable session queues) for the whole session, started on
    first use. Anonymous clients are `guest`; the per-store users of docs/brokers.md are there too."""
    users = [RabbitUser(*HQ_USER)] + [
        rabbitmq_peer.store_user(store, password, groups=STORE_GROUPS[store])
        for store, password in STORE_PASSWORDS.items()
    ]
    broker = RabbitMQBroker(tmp_path_factory.mktemp("rabbitmq"), users=users).start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream and MQTT for the whole session, started on first use. Anonymous
    clients are `guest`; the per-store users of docs/brokers.md are there too."""
    users = [NatsUser(*HQ_USER)] + [
        nats_peer.store_user(store, password, groups=STORE_GROUPS[store]) for store, password in STORE_PASSWORDS.items()
    ]
    server = NatsServer(tmp_path_factory.mktemp("nats"), users=users).start()
    yield server
    server.close()


BROKERS = ["mosquitto", "rabbitmq", "nats"]


@pytest.fixture(params=BROKERS)
def uplink_broker(request: pytest.FixtureRequest) -> MqttBroker:
    """Each head-office broker the gateway must work with, shared by the session: do not stop it."""
    broker: MqttBroker = request.getfixturevalue(str(request.param))
    return broker


@pytest.fixture(params=BROKERS)
def restartable_broker(request: pytest.FixtureRequest) -> Iterator[MqttBroker]:
    """Each head-office broker, free to stop, kill and start again within the test (a Mosquitto of the
    test's own; RabbitMQ and NATS are the session's, too slow to start per test, and come back with
    their data)."""
    name = "own_mosquitto" if request.param == "mosquitto" else str(request.param)
    broker: MqttBroker = request.getfixturevalue(name)
    yield broker
    broker.start()  # running again for the tests after this one, whatever this one did


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; each test makes its own database (`pg_dsn`).

    Its directory is outside pytest's (mode 0700, root's) so that the `postgres` user can reach it.
    """
    workdir = Path(tempfile.mkdtemp(prefix="store-gateway-pg-"))
    server = PostgresServer(workdir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres.create_database()


@pytest.fixture
def bluez(tmp_path: Path) -> Iterator[FakeBlueZ]:
    """An emulated BlueZ on a private D-Bus: BTHome advertisements, and BLE shelf tags with a GATT server."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon missing (Debian: dbus-daemon)")
    from tests.peers.bluez import FakeBlueZ

    directory = tmp_path / "bluez"
    directory.mkdir()
    fake = FakeBlueZ(directory).start()
    yield fake
    fake.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 16 MiB tmpfs of this test's own, to fill (needs root: skipped otherwise, with the reason)."""
    reason = SmallDisk.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.close()


@pytest.fixture
def gateway_process() -> Iterator[Callable[[Path], GatewayProcess]]:
    """Make `store-gateway run` child processes (log beside the config); any still running is killed
    at the end, so a failing test leaves no daemon behind."""
    made: list[GatewayProcess] = []

    def make(config_path: Path) -> GatewayProcess:
        process = GatewayProcess(config_path, config_path.parent / "gateway.log")
        made.append(process)
        return process

    yield make
    for process in made:
        if process.process is not None and process.process.poll() is None:
            process.kill()
