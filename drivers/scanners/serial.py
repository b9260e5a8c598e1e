"""Serial barcode scanners (USB CDC-ACM or RS-232) through pyserial-asyncio-fast.

The port is opened by path and read on the event loop without blocking. When the device goes away
(unplugged: pyserial raises SerialException or OSError on the read) the scanner reports offline,
and reopens the same path with capped, jittered exponential backoff until it returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import serial
import serial_asyncio_fast

from drivers.errors import reason
from drivers.scanners import Framing, LineFramer, ScannerStatus, ScanReading

log = logging.getLogger(__name__)

_BACKOFF_START_S = 0.2
_BACKOFF_CAP_S = 10.0


class SerialScanner:
    """A scanner on a serial port; `readings()` yields codes forever, surviving unplugs."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        framing: Framing | None = None,
        *,
        name: str = "scanner",
        on_status: Callable[[ScannerStatus], None] | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.framing = framing or Framing()
        self.name = name
        self.on_status = on_status
        self._writer: asyncio.StreamWriter | None = None
        self._online: bool | None = None
        self._closed = False

    def _status(self, online: bool, detail: str | None = None) -> None:
        if online == self._online:
            return
        self._online = online
        # the gateway logs the change (with the port) when it records the status
        log.debug(
            "%s: %s %s%s", self.name, self.port, "open" if online else "unavailable", f" ({detail})" if detail else ""
        )
        if self.on_status is not None:
            self.on_status(ScannerStatus(online, detail))

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        backoff = _BACKOFF_START_S
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(url=self.port, baudrate=self.baudrate)
            except (serial.SerialException, OSError) as exc:
                self._status(False, reason(exc))
                await asyncio.sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, _BACKOFF_CAP_S)
                continue
            self._writer = writer
            self._status(True)
            return reader, writer

    async def readings(self) -> AsyncIterator[ScanReading]:
        framer = LineFramer(self.framing, self.name)
        while not self._closed:
            reader, writer = await self._open()
            try:
                while True:
                    timeout = self.framing.gap_s if self.framing.suffix == "gap" and framer.pending else None
                    try:
                        data = await asyncio.wait_for(reader.read(4096), timeout)
                    except TimeoutError:
                        codes = framer.flush()
                    else:
                        if not data:
                            raise serial.SerialException("end of file on the port")
                        codes = framer.feed(data)
                    now = datetime.now(UTC)
                    for text, symbology in codes:
                        yield ScanReading(text, symbology, now)
            except (serial.SerialException, OSError) as exc:
                self._status(False, str(exc) or "device disconnected")
                framer.flush()
            finally:
                self._writer = None
                writer.close()

    async def reply(self, text: str) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            log.info("%s (%s): reply dropped, the scanner is offline", self.name, self.port)
            return
        writer.write(text.encode(self.framing.reply_encoding, "replace") + self.framing.reply_terminator)
        try:
            await writer.drain()
        except (serial.SerialException, OSError) as exc:
            log.warning("%s (%s): reply not written: %s", self.name, self.port, reason(exc))

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
