"""libfaketime (Debian's package) around a child process: its wall clock can be stepped while it runs.

The child gets `LD_PRELOAD=libfaketime.so.1` and reads its offset from a file at every clock call
(`FAKETIME_NO_CACHE`), so writing "+2h" to the file steps its wall clock two hours forward at once,
as NTP does at boot. The monotonic clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC`), as a real
step leaves it.
"""

from __future__ import annotations

from pathlib import Path


def libfaketime() -> str:
    found = sorted(str(p) for p in Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    found += [p for p in ("/usr/lib/faketime/libfaketime.so.1",) if Path(p).exists()]
    if not found:
        raise RuntimeError("libfaketime is not installed: apt-get install -y libfaketime (see .ci/run)")
    return found[0]


class FakeClock:
    """The wall-clock offset of the processes started with `env`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "faketime-offset"
        self.set("+0")
        self.env = {
            "LD_PRELOAD": libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def set(self, offset: str) -> None:
        """Step to `offset` from the real time: "+2h", "-1h", "+10y", "+0" (libfaketime's syntax)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.path)  # whole, never half-written when the child reads it
