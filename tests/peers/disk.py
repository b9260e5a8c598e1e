"""A small disk of the test's own: a size-limited tmpfs mounted on a directory, that the test fills and frees.

Mounting needs root (CI runs as root); `SmallDisk.skip_reason()` says why it cannot run otherwise.
`fill()` writes a ballast file until the kernel answers ENOSPC, as a runaway log would; `free()`
deletes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path


class SmallDisk:
    """A tmpfs of `size` mounted on `mountpoint` (created), unmounted by `close()`."""

    def __init__(self, mountpoint: Path, size: str = "16m") -> None:
        self.path = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)], check=True)
        self.ballast = mountpoint / "ballast"

    @staticmethod
    def skip_reason() -> str | None:
        if os.geteuid() != 0:
            return "mounting a small tmpfs to fill needs root (CI runs as root)"
        if shutil.which("mount") is None:
            return "no mount command"
        return None

    @property
    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self) -> None:
        """Take every free byte (the ballast grows until ENOSPC)."""
        chunk = b"\0" * 65536
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError:
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()

    def close(self) -> None:
        self.free()
        result = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
        if result.returncode != 0:  # a process still holds a file there: detach it now, freed when it closes
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
