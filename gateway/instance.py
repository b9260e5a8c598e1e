"""One gateway per state database: an advisory lock held for the life of the daemon.

The lock is `flock()` on `<state database>.lock`, next to the database. The kernel releases it when
the process ends, however it ends (a SIGKILL or a power cut never leaves a stale lock), so `status`
tells a running gateway from a stopped one by trying the same lock, not by trusting a pid.
The file holds the pid of the holder, for the messages only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

# `status` holds a shared lock for a few microseconds to look; a starting daemon waits this long
# for such a look to end before it concludes that another gateway holds the lock.
_WAIT_FOR_LOOKERS_S = 0.5


class LockError(RuntimeError):
    """The gateway cannot take the state database for itself."""


class AlreadyRunning(LockError):
    """Another gateway holds the state database."""

    def __init__(self, lock_path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another store-gateway ({who}) is already running on this state database ({lock_path}); "
            "stop it first (`systemctl stop store-gateway`), or give this one its own [state] path"
        )
        self.pid = pid


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    return None


class InstanceLock:
    """The exclusive lock a running gateway holds on its state database."""

    def __init__(self, db_path: Path) -> None:
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise AlreadyRunning at once (naming the holder's pid)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise LockError(f"state.path: cannot open the lock file {self.path}: {exc.strerror}") from None
        deadline = time.monotonic() + _WAIT_FOR_LOOKERS_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise AlreadyRunning(self.path, pid) from None
                time.sleep(0.02)  # perhaps only a `status` looking
        with contextlib.suppress(OSError):  # the pid is for messages only; a full disk must not stop a start
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race with a gateway starting)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def holder(db_path: Path) -> int | None:
    """The pid of the gateway running on `db_path` (0 if its pid is unknown), or None if none runs.

    It looks with a shared lock held for an instant, which never disturbs a running gateway.
    """
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
