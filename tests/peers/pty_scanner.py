"""A serial barcode scanner played by a pseudo-terminal: the test writes what a scanner would send.

The driver opens a stable path (a symlink, like a udev rule gives a real scanner); `unplug()`
closes the master side (the driver's reads fail as on a real unplug) and `replug()` makes a new
pty behind the same path.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import tty
from pathlib import Path


class PtyScanner:
    def __init__(self, directory: Path, name: str = "scanner") -> None:
        self.link = directory / name
        self.master = -1
        self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))
        os.close(self.slave)  # pyserial opens the slave by path; the master alone keeps the pty alive
        self.slave = -1

    @property
    def path(self) -> str:
        return str(self.link)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def scan(self, code: str, suffix: bytes = b"\r") -> None:
        self.send(code.encode() + suffix)

    def read_line(self, timeout: float = 5.0) -> str:
        """The next reply line the gateway wrote back (terminated by CR LF)."""
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                buffer += os.read(self.master, 4096)
                if b"\n" in buffer:
                    line, _, _rest = buffer.partition(b"\n")
                    return line.rstrip(b"\r").decode("utf-8", "replace")
        raise TimeoutError(f"no reply within {timeout}s (got {buffer!r})")

    def unplug(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    def replug(self) -> None:
        self.unplug()
        self.plug()

    def close(self) -> None:
        self.unplug()
