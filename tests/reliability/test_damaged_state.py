"""A damaged or empty state database is refused in one line, by `run` and by `status`, never used.

A new database is made only where no file exists: an empty `state.db` is a lost database (its prices,
stock and event seq), not a new store. The installed command, as a technician runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import outbox
from gateway.db import StateDB
from tests.peers.hq import REPO, write_config
from tests.peers.mosquitto import MosquittoBroker


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def filled(path: Path) -> None:
    """A real state database of a few hundred pages (events in its outbox)."""
    db = StateDB(path)
    db.transaction(
        lambda conn: outbox.append_many(
            conn, "scan", ({"scanner": "s", "code": str(i), "sku": None, "mode": "count"} for i in range(5000))
        )
    )
    db.close_sync()


def overwrite_pages(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(size // 2 // 4096 * 4096)
        file.write(b"\xab" * 4096 * 3)


def clobber_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(b"\0" * 100)


def assert_refused(done: subprocess.CompletedProcess[str], db_path: Path, reason: str) -> None:
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert "Traceback" not in done.stderr
    assert str(db_path) in line and reason in line, line
    assert "restore the last backup" in line and "docs/operations.md" in line and "move the file away" in line, line


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
        (overwrite_pages, "is damaged ("),
        (clobber_header, "(file is not a database)"),
    ],
    ids=["zero-length", "overwritten-pages", "header-gone"],
)
def test_run_and_status_refuse_a_damaged_state_database(
    mosquitto: MosquittoBroker, tmp_path: Path, damage: object, reason: str
) -> None:
    config_path = write_config(tmp_path, mosquitto, store="damaged")
    db_path = tmp_path / "state.db"
    filled(db_path)
    damage(db_path)  # type: ignore[operator]
    size = db_path.stat().st_size
    assert_refused(gateway("run", "--config", str(config_path)), db_path, reason)
    assert_refused(gateway("status", "--config", str(config_path)), db_path, reason)
    assert_refused(gateway("status", "--config", str(config_path), "--json"), db_path, reason)
    assert db_path.stat().st_size == size, "a refused file is left as it was"


def test_a_database_is_created_only_where_no_file_exists(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "new" / "deeper", mosquitto, store="fresh")
    db_path = tmp_path / "new" / "deeper" / "state.db"
    config_path = config_path.rename(tmp_path / "gateway.toml")
    db_path.parent.rmdir()  # the directory too is created
    (tmp_path / "new").rmdir()
    done = gateway("status", "--config", str(config_path))
    assert done.returncode == 1 and "no state database" in done.stderr, done
    assert not db_path.exists(), "status never creates a database"
    StateDB(db_path).close_sync()  # what `run` does first
    assert db_path.stat().st_size > 0
    assert gateway("status", "--config", str(config_path)).returncode == 0
