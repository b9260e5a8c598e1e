"""The bearer token, from a real non-loopback address: a client in a network namespace of its own,
joined to this one by a veth pair (iproute2; needs root). Without the token: 401; with it: 200."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.hq import head_office, running_gateway, write_config
from tests.peers.mosquitto import MosquittoBroker, free_port

TOKEN = "s3cret-token-for-the-test"

CLIENT = """
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(request, timeout=5) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"""


@dataclass
class Namespace:
    name: str
    host_ip: str
    client_ip: str

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=20)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace and a veth pair (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed (.ci/run installs it)")
    tag = f"{os.getpid() % 100000}"
    name, host_side, ns_side = f"sgw-{tag}", f"sgwh{tag}", f"sgwn{tag}"
    subnet = 16 + os.getpid() % 200
    host_ip, client_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
        _ip("link", "set", ns_side, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_side)
        _ip("link", "set", host_side, "up")
        _ip("-n", name, "addr", "add", f"{client_ip}/30", "dev", ns_side)
        _ip("-n", name, "link", "set", ns_side, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, host_ip, client_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


async def test_token_needed_from_another_host(namespace: Namespace, mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    port = free_port()
    token_file = tmp_path / "http-token"
    token_file.write_text(TOKEN + "\n")
    http = f'[http]\nlisten = "{namespace.host_ip}:{port}"\ntoken_file = "{token_file}"\n'
    config = write_config(tmp_path, mosquitto, store="tok1", extra=http)
    url = f"http://{namespace.host_ip}:{port}"

    async def client(path: str, *token: str) -> tuple[int, str]:
        done = await asyncio.to_thread(namespace.run, sys.executable, "-c", CLIENT, url + path, *token)
        assert done.returncode == 0, done.stderr
        code, _, body = done.stdout.partition(" ")
        return int(code), body

    async with head_office(mosquitto, "tok1") as hq, running_gateway(config):
        await hq.wait_for(lambda s: s.get("state") == "online")
        for _ in range(100):
            code, _ = await client("/healthz", TOKEN)
            if code == 200:
                break
            await asyncio.sleep(0.1)
        for path in ("/", "/api/status", "/api/devices", "/api/events", "/metrics", "/healthz"):
            code, body = await client(path)
            assert code == 401, (path, body)
            assert "bearer token" in body
            assert (await client(path, "wrong-token"))[0] == 401
            code, body = await client(path, TOKEN)
            assert code == 200, (path, body)
        code, body = await client("/api/devices", TOKEN)
        assert body.strip() == "[]"
