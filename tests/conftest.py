"""Shared fixtures: real brokers and peers that tests talk to (see design.md, "Real parts in tests")."""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.mosquitto import MosquittoBroker, make_tls_files, require_mosquitto
from tests.peers.postgres import PostgresServer

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
