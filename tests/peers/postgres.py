"""A real PostgreSQL server for tests and benches: `initdb` into a temp dir, `pg_ctl` on a free port.

Debian's `postgresql` package puts the programs in /usr/lib/postgresql/<version>/bin (not on PATH).
PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
`postgres` user that the package creates, and its programs run as that user.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers.mosquitto import free_port

_databases = itertools.count(1)


def pg_bin(program: str) -> str:
    """The path of a PostgreSQL server program (newest installed version first, then PATH)."""
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True):
        candidate = directory / program
        if candidate.exists():
            return str(candidate)
    found = shutil.which(program)
    if found is None:
        raise RuntimeError(f"{program} is not installed: apt-get install -y postgresql (see .ci/run)")
    return found


def _version(directory: Path) -> float:
    try:
        return float(directory.parent.name)
    except ValueError:
        return 0.0


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that run a program as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class PostgresServer:
    """One PostgreSQL cluster with its own data directory, socket directory and port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    fsync: bool = False  # tests crash workers, never the database; benches may turn it on
    process_log: Path | None = None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        if not (self.datadir / "PG_VERSION").exists():
            subprocess.run(
                [pg_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C", "--no-sync"],
                check=True, capture_output=True, cwd=self.workdir, **_as_postgres(),
            )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} -c fsync={'on' if self.fsync else 'off'} "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        log = self.workdir / "postgres.log"
        result = subprocess.run(
            [pg_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            capture_output=True, cwd=self.workdir, **_as_postgres(),
        )  # fmt: skip
        if result.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr.decode(errors='replace')}\n{text}")
        return self

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                [pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                capture_output=True, cwd=self.workdir, **_as_postgres(),
            )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; return its DSN."""
        import psycopg

        name = name or f"t{next(_databases)}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.dsn(name)
