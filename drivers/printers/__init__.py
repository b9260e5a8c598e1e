"""ESC/POS receipt and ticket printers: send a job's bytes, ask the printer how it is.

One interface for the family (`Printer`), built on python-escpos device classes. Its one primitive
is `send(bytes)`; documents are rendered to bytes by the gateway (with python-escpos's Dummy), so a
job is bytes from end to end. `status()` asks the printer itself with the real-time DLE EOT
requests where the transport can read back (TCP, serial); file and USB say they cannot tell.

The API is blocking (python-escpos is); the gateway calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit


class PrinterUnavailable(RuntimeError):
    """The printer cannot be reached: nothing of the job was written."""


class JobInterrupted(PrinterUnavailable):
    """The connection broke while the job was being written: it may have printed in part."""


@dataclass(frozen=True)
class PrinterStatus:
    """What DLE EOT 1-4 told us. `known` is False where the transport cannot read back."""

    online: bool = True
    cover_open: bool = False
    paper_out: bool = False
    paper_low: bool = False
    error: bool = False
    known: bool = True
    reachable: bool = True

    @property
    def ready(self) -> bool:
        return self.online and not (self.cover_open or self.paper_out or self.error)

    @property
    def detail(self) -> str | None:
        """The reason for a `device` event: paper_out, cover_open, error, paper_low, offline."""
        for flag in ("paper_out", "cover_open", "error"):
            if getattr(self, flag):
                return flag
        if not self.online:
            return "offline"
        return "paper_low" if self.paper_low else None


def decode_status(printer: int, offline_cause: int, error_cause: int, paper: int) -> PrinterStatus:
    """Epson ESC/POS DLE EOT n=1..4 replies to a PrinterStatus."""
    return PrinterStatus(
        online=not printer & 0x08,
        cover_open=bool(offline_cause & 0x04),
        paper_out=bool(offline_cause & 0x20) or bool(paper & 0x60),
        paper_low=bool(paper & 0x0C),
        error=bool(offline_cause & 0x40) or bool(error_cause & 0x68),
    )


class Printer(Protocol):
    """A printer the gateway sends jobs to (blocking calls)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def send(self, data: bytes) -> None:
        """Write a whole job; raises PrinterUnavailable if it could not be written."""
        ...

    def status(self) -> PrinterStatus: ...


SCHEMES = ("tcp", "serial", "usb", "file")


def open_printer(url: str, *, profile: str | None = None, timeout: float = 5.0) -> Printer:
    """The transport for a `[[printers]] url`: tcp://host:9100, serial:///dev/ttyUSB0?baudrate=38400,
    usb://04b8:0e15, file:///path."""
    from drivers.printers.escpos import EscposPrinter

    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f'unknown scheme "{parts.scheme}"; expected tcp, serial, usb or file')
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return EscposPrinter(parts.scheme, parts, options, profile=profile, timeout=timeout)
