"""The demo's simulated devices: a receipt printer on loopback TCP, a scanner on a pty, a shelf sensor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import tty
from pathlib import Path

import aiomqtt

log = logging.getLogger("gateway.demo")

SCAN_SOCKET = "scanner.sock"
_CUT = re.compile(rb"\x1dV.|\x1dVA.|\x1dVB.", re.DOTALL)
_DLE_EOT = re.compile(rb"\x10\x04[\x01-\x04]")
_CONTROL = re.compile(rb"\x1b[@a-zA-Z!-/:-?][\x00-\xff]?|\x1d[\x21-\x7f][\x00-\xff]?|[\x00-\x09\x0b-\x1f]")


class DemoPrinter:
    """A loopback ESC/POS printer: answers status queries as ready, files each job (cut) under prints/."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._server: asyncio.Server | None = None
        self._jobs = len(list(directory.glob("job-*.bin")))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while chunk := await reader.read(65536):
                for _ in _DLE_EOT.findall(chunk):
                    writer.write(b"\x12")  # online, cover closed, paper present
                buffer += _DLE_EOT.sub(b"", chunk)
                while match := _CUT.search(buffer):
                    self._file(buffer[: match.end()])
                    buffer = buffer[match.end() :]
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if buffer.strip(b"\x00"):
                self._file(buffer)
            writer.close()

    def _file(self, job: bytes) -> None:
        self._jobs += 1
        stem = self.directory / f"job-{self._jobs:04d}"
        stem.with_suffix(".bin").write_bytes(job)
        text = _CONTROL.sub(b"", job).decode("cp858", "replace")
        stem.with_suffix(".txt").write_text(text, encoding="utf-8")
        log.info("demo printer: job %d printed (%s.txt)", self._jobs, stem)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class DemoScanner:
    """A price-check scanner on a pseudo-terminal; codes typed through a unix socket, replies read back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.link = directory / "scanner"
        self.tty = ""
        self._master = -1
        self._slave = -1

    def start(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        self.tty = os.ttyname(self._slave)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(self.tty)

    async def serve(self) -> None:
        """Accept `demo scan` clients: write each code to the scanner, answer with the display line."""
        socket_path = self.directory / SCAN_SOCKET
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        replies: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        pending = bytearray()

        def readable() -> None:
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            pending.extend(data)
            while True:
                ends = [i for i in (pending.find(b"\r"), pending.find(b"\n")) if i >= 0]
                if not ends:
                    break
                end = min(ends)
                line = bytes(pending[:end]).decode("utf-8", "replace")
                del pending[: end + 1]
                if line:
                    print(f"scanner display: {line}", flush=True)
                    replies.put_nowait(line)

        loop.add_reader(self._master, readable)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            code = (await reader.readline()).decode().strip()
            while not replies.empty():
                replies.get_nowait()
            os.write(self._master, code.encode() + b"\r")
            try:
                reply = await asyncio.wait_for(replies.get(), 4)
            except TimeoutError:
                reply = "(no answer from the gateway)"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(client, str(socket_path))
        try:
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(self._master)
            server.close()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()

    def close(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()


async def simulate_shelf_sensor(port: int, topic: str, stop: asyncio.Event) -> None:
    """A load cell under 12 jars of 400 g: customers take one now and then; staff refill when empty."""
    rng = random.Random(42)
    units = 12
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="demo-shelf-a1", username="demo-sensor") as client:
                while not stop.is_set():
                    weight = units * 400 + rng.uniform(-6, 6)
                    await client.publish(topic, json.dumps({"weight_g": round(weight, 1)}).encode())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 2)
                    if rng.random() < 0.2:
                        units = units - 1 if units > 0 else 12
        except aiomqtt.MqttError:
            await asyncio.sleep(1)
