"""A server the tests run as a child process (mosquitto, nats-server): stopped, crashed and restarted alike."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


class ChildServer:
    """Stop (SIGTERM, then SIGKILL after `stop_timeout_s`), kill (SIGKILL, as a crash) and restart.

    The class using it has a `process` attribute and a `start()` that starts it again on the same
    ports and data directory.
    """

    process: subprocess.Popen[bytes] | None
    stop_timeout_s = 10.0

    def start(self) -> Any:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Graceful stop: the server saves what it keeps on disk."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash or a power cut of the server."""
        if self.process is not None and self.running:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
