"""Barcode scanners: bytes from the device become `ScanReading`s; a reply line can go back.

One interface for the family (`Scanner`), one module per transport (`serial`; keyboard-wedge
through evdev later). The framing rules (which suffix ends a code, AIM symbology prefixes, the
longest code accepted) are plain data so they can be tested without a device.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

log = logging.getLogger(__name__)

Suffix = Literal["CR", "LF", "CRLF", "gap"]


@dataclass(frozen=True)
class Framing:
    """How a scanner delimits its codes and how replies are written back."""

    suffix: Suffix = "CR"
    gap_s: float = 0.05
    aim_prefix: bool = False
    max_length: int = 512
    reply_terminator: bytes = b"\r\n"
    reply_encoding: str = "utf-8"


@dataclass(frozen=True)
class ScanReading:
    """One code as the scanner sent it: the data, and the AIM symbology identifier if it sent one."""

    raw: str
    symbology_id: str | None
    received_at: datetime


@dataclass(frozen=True)
class ScannerStatus:
    """The device's availability, for `device` events."""

    online: bool
    detail: str | None = None


class Scanner(Protocol):
    """A scanner the gateway reads codes from and may answer."""

    def readings(self) -> AsyncIterator[ScanReading]:
        """Codes as they are scanned; reconnects by itself and never ends while the gateway runs."""
        ...

    async def reply(self, text: str) -> None:
        """Send one line back to the device (a kiosk display); dropped with a log line if it is offline."""
        ...

    async def close(self) -> None: ...


class LineFramer:
    """Turns the byte stream into codes: split on the suffix, strip the AIM prefix, drop what is bad.

    Garbage never raises: an overlong line, non-UTF-8 bytes or control characters are dropped with
    one log line each.
    """

    def __init__(self, framing: Framing, name: str = "scanner") -> None:
        self.framing = framing
        self.name = name
        self._buffer = bytearray()
        self._overflowing = False
        self.dropped = 0

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[tuple[str, str | None]]:
        """Add bytes; return the complete codes as (data, symbology id)."""
        self._buffer.extend(data)
        out: list[tuple[str, str | None]] = []
        if self.framing.suffix != "gap":
            separator = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n"}[self.framing.suffix]
            while (index := self._buffer.find(separator)) >= 0:
                frame = bytes(self._buffer[:index])
                del self._buffer[: index + len(separator)]
                overflowed, self._overflowing = self._overflowing, False
                if overflowed or len(frame) > self.framing.max_length:
                    if not overflowed:
                        self._drop(f"a line longer than {self.framing.max_length} bytes")
                    continue
                code = self._decode(frame)
                if code is not None:
                    out.append(code)
        self._bound()
        return out

    def flush(self) -> list[tuple[str, str | None]]:
        """End of a gap: what was buffered is one code."""
        frame = bytes(self._buffer)
        self._buffer.clear()
        overflowing, self._overflowing = self._overflowing, False
        if not frame or overflowing:
            return []
        code = self._decode(frame)
        return [] if code is None else [code]

    def _bound(self) -> None:
        """A line with no end in sight: drop it now (once), keep only what may start the separator."""
        if len(self._buffer) > self.framing.max_length:
            if not self._overflowing:
                self._drop(f"a line longer than {self.framing.max_length} bytes")
            self._overflowing = True
            keep = 1 if self.framing.suffix == "CRLF" else 0
            del self._buffer[: len(self._buffer) - keep]

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.warning("%s: dropped %s", self.name, why)

    def _decode(self, frame: bytes) -> tuple[str, str | None] | None:
        frame = frame.strip(b"\r\n\x00 ")
        if not frame:
            return None
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError:
            self._drop(f"{len(frame)} bytes that are not UTF-8")
            return None
        # GS (0x1D) is FNC1 in GS1 element strings and must survive; other control characters are noise
        if any((ord(c) < 0x20 and c != "\x1d") or ord(c) == 0x7F for c in text):
            self._drop("a line with control characters")
            return None
        symbology = None
        if self.framing.aim_prefix or (len(text) > 3 and text[0] == "]" and text[1].isalpha() and text[2].isalnum()):
            if len(text) > 3 and text[0] == "]":
                symbology, text = text[:3], text[3:]
            elif self.framing.aim_prefix:
                self._drop("a code without the AIM prefix the scanner is set to send")
                return None
        return text, symbology
