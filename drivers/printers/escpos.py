"""Printers through python-escpos: Network (TCP 9100), Serial, Usb (imported lazily) and File.

What python-escpos does not do and we must (docs/devices.md): Network never
reconnects by itself, a late status reply is not drained (so after a timeout we close and reopen),
and an empty status read means nothing, not "paper OK". So status bytes are read here, one
request at a time, and any doubt is "unavailable".
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from typing import Any
from urllib.parse import SplitResult

from drivers.printers import JobInterrupted, PrinterStatus, PrinterUnavailable, decode_status

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Any:
    """python-escpos prints notes to stdout; a daemon's stdout is not for them."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class EscposPrinter:
    """One printer; `open()` lazily on first use, `close()` explicitly."""

    def __init__(
        self, scheme: str, url: SplitResult, options: dict[str, str], *, profile: str | None, timeout: float
    ) -> None:
        self.scheme = scheme
        self.url = url
        self.options = options
        self.profile = profile
        self.timeout = timeout
        self._device: Any = None

    def _make(self) -> Any:
        kwargs: dict[str, Any] = {"profile": self.profile} if self.profile else {}
        with _quiet():
            if self.scheme == "tcp":
                from escpos.printer import Network

                return Network(self.url.hostname or "", port=self.url.port or 9100, timeout=self.timeout, **kwargs)
            if self.scheme == "serial":
                from escpos.printer import Serial

                return Serial(
                    devfile=self.url.path,
                    baudrate=int(self.options.get("baudrate", 38400)),
                    timeout=self.timeout,
                    **kwargs,
                )
            if self.scheme == "usb":
                from escpos.printer import Usb  # needs pyusb; imported only for USB printers

                vendor, product = (int(x, 16) for x in (self.url.netloc or self.url.path.strip("/")).split(":"))
                return Usb(vendor, product, timeout=int(self.timeout * 1000), **kwargs)
            from escpos.printer import File

            return File(devfile=self.url.path, **kwargs)

    def open(self) -> None:
        if self._device is not None:
            return
        device = self._make()
        try:
            with _quiet():
                device.open()
        except Exception as exc:
            raise PrinterUnavailable(f"{self.url.geturl()}: {exc}") from exc
        if self.scheme == "tcp":
            # status requests are 3-byte writes answered by 1 byte: without this, Nagle and delayed
            # ACKs add ~40 ms to every question
            device.device.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._device = device

    def close(self) -> None:
        if self._device is not None:
            with contextlib.suppress(Exception), _quiet():
                self._device.close()
            self._device = None

    def send(self, data: bytes) -> None:
        self.open()
        try:
            with _quiet():
                self._device._raw(data)
                if self.scheme == "file":
                    self._device.flush()
        except Exception as exc:
            self.close()  # a broken connection is not reused: the next job reconnects
            raise JobInterrupted(f"{self.url.geturl()}: {exc}") from exc

    def _query(self, n: int) -> int:
        self._device._raw(bytes([0x10, 0x04, n]))
        reply = self._device._read()
        if not reply:
            raise PrinterUnavailable(f"no answer to DLE EOT {n}")
        return int(reply[-1])

    def status(self) -> PrinterStatus:
        if self.scheme in ("file", "usb"):
            return PrinterStatus(known=False)
        try:
            self.open()
            with _quiet():
                printer, offline, error, paper = (self._query(n) for n in (1, 2, 3, 4))
        except (PrinterUnavailable, OSError, TimeoutError) as exc:
            self.close()  # a late reply must not be read as the answer to the next question
            log.debug("printer %s: status unavailable: %s", self.url.geturl(), exc)
            return PrinterStatus(online=False, reachable=False)
        except Exception as exc:  # serial and socket errors of every kind: the printer is gone
            self.close()
            log.debug("printer %s: status failed: %s", self.url.geturl(), exc)
            return PrinterStatus(online=False, reachable=False)
        return decode_status(printer, offline, error, paper)
