"""A TCP proxy on 127.0.0.1 between the gateway and its broker, to make the network misbehave.

`blackhole()` is a link that died without a word (a cable pulled behind a switch, a NAT entry
dropped): connections stay open, every byte in either direction is swallowed, nothing is closed.
`hold_upstream()` keeps what the gateway sends (its PUBACKs and publishes) from reaching the broker
while the broker's messages still reach the gateway: a crash then lands between "committed" and
"acknowledged at the broker". `release()` forwards again; `cut()` closes every connection.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field

from tests.peers.mosquitto import free_port


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    held: bytearray = field(default_factory=bytearray)


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_port`, one thread, until `close()`."""

    host = "127.0.0.1"

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "forward"  # forward | blackhole | hold
        self.connections = 0
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._listener = socket.create_server((self.host, self.port))
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def blackhole(self) -> None:
        self._set("blackhole")

    def hold_upstream(self) -> None:
        self._set("hold")

    def release(self) -> None:
        """Forward again (what was held upstream is sent on)."""
        self._set("forward")

    def cut(self) -> None:
        """Close every connection (the broker sees the client vanish without a DISCONNECT)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._drop(pair)

    def close(self) -> None:
        self._stopping = True
        self._poke()
        self._thread.join(5)
        self.cut()
        self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drop(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.server):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(0.2):
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    self._flush_held()
                elif key.data is None:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection((self.host, self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        with self._lock:
            self._pairs.append(pair)
            self.connections += 1
        self._selector.register(client, selectors.EVENT_READ, pair)
        self._selector.register(server, selectors.EVENT_READ, pair)

    def _pump(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # one side closed: close the other (held bytes are lost with the connection)
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            self._drop(pair)
            return
        mode = self.mode
        if mode == "blackhole":
            return
        upstream = sock is pair.client
        if upstream and mode == "hold":
            pair.held += data
            return
        target = pair.server if upstream else pair.client
        with contextlib.suppress(OSError):
            target.sendall(data)

    def _flush_held(self) -> None:
        if self.mode != "forward":
            return
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            if pair.held:
                held, pair.held = bytes(pair.held), bytearray()
                with contextlib.suppress(OSError):
                    pair.server.sendall(held)
