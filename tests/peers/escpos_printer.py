"""An ESC/POS network printer on 127.0.0.1 (port 9100 style), in a thread, for sync and async tests.

It keeps the bytes it receives, split into jobs at each cut (GS V), answers the real-time status
requests DLE EOT 1-4 as an Epson TM printer does (fixed bits 0x12, plus the state's flags), and can
be switched to offline, cover open, paper out, paper near-end, silent (no answer), or refuse
connections altogether.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field

CUT = re.compile(rb"\x1dV(?:[\x00\x01\x30\x31]|[\x41\x42].)", re.DOTALL)


@dataclass
class PrinterState:
    offline: bool = False
    cover_open: bool = False
    paper_out: bool = False
    paper_low: bool = False
    silent: bool = False
    refuse: bool = False


def status_byte(n: int, state: PrinterState) -> int:
    """What an Epson printer answers to DLE EOT n."""
    base = 0x12
    if n == 1:
        return base | (0x08 if (state.offline or state.cover_open or state.paper_out) else 0)
    if n == 2:
        return base | (0x04 if state.cover_open else 0) | (0x20 if state.paper_out else 0)
    if n == 3:
        return base
    return base | (0x0C if state.paper_low or state.paper_out else 0) | (0x60 if state.paper_out else 0)


@dataclass
class EscposPrinterPeer:
    state: PrinterState = field(default_factory=PrinterState)
    jobs: list[bytes] = field(default_factory=list)
    status_queries: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._stopping = False
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="escpos-peer")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.state.refuse:
                client.close()
                continue
            self.connections += 1
            self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        with client:
            while not self._stopping:
                try:
                    chunk = client.recv(65536)
                except OSError:
                    return
                if not chunk:
                    break
                buffer += chunk
                while (index := buffer.find(b"\x10\x04")) >= 0 and len(buffer) > index + 2:
                    n = buffer[index + 2]
                    buffer = buffer[:index] + buffer[index + 3 :]
                    self.status_queries += 1
                    if not self.state.silent:
                        client.sendall(bytes([status_byte(n, self.state)]))
                while match := CUT.search(buffer):
                    with self._lock:
                        self.jobs.append(buffer[: match.end()])
                    buffer = buffer[match.end() :]
        if buffer.strip(b"\x00"):
            with self._lock:
                self.jobs.append(buffer)

    def drop_connections(self) -> None:
        for client in self._clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._clients.clear()

    def close(self) -> None:
        self._stopping = True
        self._server.close()
        self.drop_connections()


def text_of(job: bytes) -> str:
    """The job's printable text in code page 858 (control sequences removed)."""
    cleaned = re.sub(
        rb"\x1b[@a-zA-Z!-/:-?][\x00-\xff]?|\x1d\(k..[\x00-\xff]*?(?=\x1d|\x1b|\n)|\x1d[\x21-\x7f][\x00-\xff]?", b"", job
    )
    return cleaned.decode("cp858", "replace")


def qr_data(job: bytes) -> list[str]:
    """Data stored in native QR codes (GS ( k pL pH 1 P 0 data)."""
    found = []
    for match in re.finditer(rb"\x1d\(k(.)(.)1P0", job, re.DOTALL):
        length = match.group(1)[0] + 256 * match.group(2)[0] - 3
        found.append(job[match.end() : match.end() + length].decode())
    return found


def barcode_data(job: bytes) -> list[tuple[int, str]]:
    """(type m, data) of GS k m n data barcodes (function B)."""
    found = []
    for match in re.finditer(rb"\x1dk([\x41-\x4f])(.)", job, re.DOTALL):
        length = match.group(2)[0]
        found.append((match.group(1)[0], job[match.end() : match.end() + length].decode()))
    return found
