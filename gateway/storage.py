"""A full disk under the state database: how it is recognised, the reserve that lets the gateway start
on one, and the report once space returns.

The gateway keeps a small reserve file next to its database (`<state.path>.reserve`). SQLite needs a
little room to open a WAL database at all (its `-shm` index, 32 KiB), so on a disk that is already
full a start frees the reserve, opens the database and runs degraded. Space counts as back when the
reserve can be written again with `MARGIN_BYTES` to spare, so the gateway does not go back to
writing on a disk that is full again a moment later.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gateway import devices
from gateway.timeutil import human_duration, utc_now

log = logging.getLogger(__name__)

RESERVE_BYTES = 512 * 1024
MARGIN_BYTES = 512 * 1024
DEVICE_ID = "state-db"
DEVICE_KIND = "storage"

# SQLITE_FULL (13), and SQLITE_IOERR_SHMSIZE (4874): the -shm index could not grow on a full disk.
_FULL_CODES = {13, 4874}


class StorageFull(sqlite3.OperationalError):
    """The disk under the state database is full: nothing is written until space returns."""


def is_full_error(exc: BaseException) -> bool:
    """True for SQLite's and the OS's ways of saying "no space left on the device"."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code in _FULL_CODES or (isinstance(code, int) and code & 0xFF == 13)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def reserve_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".reserve")


def free_bytes(db_path: Path) -> int:
    """Free space where the state database lives (what an unprivileged writer may use)."""
    try:
        return shutil.disk_usage(db_path.parent).free
    except OSError:
        return 0


def release_reserve(db_path: Path) -> bool:
    """Delete the reserve to make room on a full disk; True if there was one."""
    try:
        reserve_path(db_path).unlink()
    except FileNotFoundError:
        return False
    return True


def make_reserve(db_path: Path) -> bool:
    """Write the reserve (allocated, not sparse) if it is missing; False if the disk has no room for it."""
    path = reserve_path(db_path)
    with contextlib.suppress(OSError):
        if path.stat().st_size >= RESERVE_BYTES:
            return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    os.close(fd)
    return True


@dataclass
class FullDisk:
    """One stretch of time with a full disk: since when, and what could not be written meanwhile."""

    since: datetime = field(default_factory=utc_now)
    lost: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.lost[what] = self.lost.get(what, 0) + 1

    def summary(self) -> str:
        if not self.lost:
            return "nothing was lost"
        parts = ", ".join(f"{what} {n}" for what, n in sorted(self.lost.items(), key=lambda kv: -kv[1]))
        return f"{sum(self.lost.values())} writes could not be recorded ({parts})"

    def report(self, conn: sqlite3.Connection) -> None:
        """Once space is back: the `device` events of the storage (error since then, online now)."""
        took = human_duration((utc_now() - self.since).total_seconds())
        devices.report(
            conn, DEVICE_ID, DEVICE_KIND, "error", f"disk full since {self.since.isoformat(timespec='seconds')}"
        )
        devices.report(conn, DEVICE_ID, DEVICE_KIND, "online", f"disk was full for {took}; {self.summary()}"[:200])
