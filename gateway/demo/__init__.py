"""`store-gateway demo`: the whole gateway on this machine, with no hardware and no setup.

It starts a broker (mosquitto when it is on PATH, else the embedded amqtt, bound to 127.0.0.1),
a simulated receipt printer (a loopback ESC/POS peer that files each job under prints/), a
simulated price-check scanner (a pseudo-terminal; `store-gateway demo scan CODE` types into it),
a simulated shelf sensor (weights on the local broker), and the real gateway with the simulator
label station writing PNG files to labels/. It loads ~200 demo products through the real
`price.set` path, then says what to type next. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import io
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt

from gateway import instance
from gateway.config import Config, parse_config
from gateway.demo.catalogue import demo_products, write_price_csv
from gateway.demo.peers import SCAN_SOCKET, DemoPrinter, DemoScanner, simulate_shelf_sensor

log = logging.getLogger("gateway.demo")

STORE = "DEMO1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Child processes get SIGTERM if the demo dies, so no broker is ever left behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DemoBroker:
    """mosquitto from PATH on a free port, or amqtt in this process when mosquitto is missing."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
        self._process: asyncio.subprocess.Process | None = None
        self._amqtt: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            conf = self.directory / "mosquitto.conf"
            lines = [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {self.directory}/",
                "set_tcp_nodelay true",
                f"log_dest file {self.directory / 'mosquitto.log'}",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            self._process = await asyncio.create_subprocess_exec(
                "mosquitto",
                "-c",
                str(conf),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops the broker last
            )
        else:
            from amqtt.broker import Broker

            self._amqtt = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                    # allow_anonymous off: amqtt keeps persistent sessions only for named clients
                    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
                }
            )
            await self._amqtt.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the demo broker ({self.kind}) did not start on 127.0.0.1:{self.port}")

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._amqtt is not None:
            await self._amqtt.shutdown()


def page_port() -> int:
    """8080 for the status page when it is free (easy to remember), else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8080))
        except OSError:
            return free_port()
    return 8080


def render_config(directory: Path, port: int, printer_port: int, scanner: Path, http_port: int) -> str:
    template = resources.files("gateway.demo").joinpath("demo.toml").read_text(encoding="utf-8")
    return (
        template.replace("{dir}", str(directory))
        .replace("{http_port}", str(http_port))
        .replace("{port}", str(port))
        .replace("{printer_port}", str(printer_port))
        .replace("{scanner}", str(scanner))
    )


async def _wait_online(url: str, timeout_s: float = 15.0) -> None:
    port = int(url.rsplit(":", 1)[1])
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"demo-wait-{os.getpid()}", username="demo") as client:
        await client.subscribe(f"retail/stores/{STORE}/gateway/state", qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if json.loads(bytes(message.payload)).get("state") == "online":
                    return


async def _seed(config: Config, broker_url: str, directory: Path) -> None:
    """Load the demo catalogue through the real command path, as head office would."""
    from gateway import hq

    products = demo_products()
    initial = directory / "prices-initial.csv"
    write_price_csv(initial, products)
    example = directory / "prices-example.csv"
    write_price_csv(example, products[:3], price_factor=0.9)
    broker = hq.BrokerOptions(url=broker_url, username="demo-hq")
    quiet = io.StringIO()
    await hq.push_prices(broker, STORE, initial, progress=False, out=quiet, timeout_s=30)
    stock = {"items": [{"sku": p.sku, "on_hand": p.on_hand, "version": 1} for p in products]}
    await hq.send_command(broker, "stock.set", json.dumps(stock), store=STORE, group=None, out=quiet)
    if config.label_stations:
        labels = {
            "items": [
                {"label": p.sku.lower(), "sku": p.sku, "station": config.label_stations[0].id} for p in products[:12]
            ]
        }
        await hq.send_command(broker, "label.assign", json.dumps(labels), store=STORE, group=None, out=quiet)


def this_program() -> str:
    """How to run this very program again from any shell, as pasted: no venv activated, any directory.

    The console script by its absolute path, or `python -m gateway` with this interpreter's path.
    """
    script = Path(sys.argv[0])
    if script.name == "__main__.py" or not script.exists():
        return f"{shlex.quote(sys.executable)} -m gateway"
    return shlex.quote(str(script.resolve()))


def _instructions(directory: Path, broker: DemoBroker, scanner: DemoScanner, page: str) -> str:
    me = this_program()
    d = shlex.quote(str(directory))
    return f"""
store-gateway demo is running for store {STORE}. Everything it writes is under {directory}/

  status page  {page}   (open it in a browser: devices, outbox, labels, orders, events)
  broker    {broker.url}  ({broker.kind}; head office and the in-store sensors use it)
  labels    {directory}/labels/*.png        (simulated label station)
  prints    {directory}/prints/             (simulated receipt printer: .txt and raw .bin per job)
  scanner   {scanner.tty}      (simulated price-check scanner)

In another terminal, try:
  {me} hq --broker {broker.url} watch --store {STORE}
  {me} hq --broker {broker.url} push-prices --store {STORE} {d}/prices-example.csv
  {me} demo --dir {d} scan 3017620422003
  {me} hq --broker {broker.url} command --store {STORE} print '{{"printer": "till-1", "document": "test_page"}}'
  {me} status --config {d}/gateway.toml
then open {directory}/labels/ to see the new prices on the shelf labels.

Ctrl-C stops everything.
""".rstrip()


async def run_demo(directory: Path) -> int:
    """Run the demo in `directory` (absolute, with its sub-folders made) until SIGINT/SIGTERM."""
    from gateway import daemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    broker = DemoBroker(directory / "broker")
    printer = DemoPrinter(directory / "prints")
    scanner = DemoScanner(directory)
    await broker.start()
    tasks: list[asyncio.Task[Any]] = []
    gateway_task: asyncio.Task[int] | None = None
    try:
        await printer.start()
        scanner.start()
        text = render_config(directory, broker.port, printer.port, scanner.link, page_port())
        (directory / "gateway.toml").write_text(text)
        import tomllib

        config = parse_config(tomllib.loads(text))
        gateway_task = asyncio.create_task(daemon.run(config, stop=stop), name="gateway")
        await _wait_online(broker.url)
        await _seed(config, broker.url, directory)
        tasks.append(asyncio.create_task(scanner.serve(), name="demo-scanner"))
        tasks.append(asyncio.create_task(simulate_shelf_sensor(broker.port, "sensors/shelf-a1", stop), name="sensor"))
        page = f"http://{config.http.listen}/" if config.http is not None else "(no [http] section)"
        print(_instructions(directory, broker, scanner, page), flush=True)
        await stop.wait()
        print("\nstopping the demo...", flush=True)
        return await gateway_task
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if gateway_task is not None and not gateway_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gateway_task, 12)
        scanner.close()
        await printer.stop()
        await broker.stop()
        print("demo stopped", flush=True)


async def type_scan(directory: Path, code: str, timeout_s: float = 5.0) -> str:
    """Type `code` into the running demo's scanner and return what the scanner's display shows."""
    path = directory / SCAN_SOCKET
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        raise RuntimeError(f"no demo running in {directory} (start `store-gateway demo --dir {directory}`)") from None
    writer.write(code.encode() + b"\n")
    await writer.drain()
    try:
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    finally:
        writer.close()
    return line.decode("utf-8", "replace").rstrip("\n")


def main(args: argparse.Namespace) -> int:
    """Entry point of `store-gateway demo [--dir DIR] [scan CODE]`."""
    from gateway.cli import setup_logging

    directory: Path = args.dir
    words: list[str] = list(args.demo_command or [])
    if words:
        if len(words) != 2 or words[0] != "scan":
            print("usage: store-gateway demo [--dir DIR] [scan CODE]", file=sys.stderr)
            return 2
        try:
            reply = asyncio.run(type_scan(directory.resolve(), words[1]))
        except (RuntimeError, TimeoutError) as exc:
            print(f"demo scan: {exc or 'no answer from the scanner within 5 s'}", file=sys.stderr)
            return 1
        print(reply)
        return 0
    setup_logging("WARNING")
    logging.getLogger("gateway").setLevel(logging.INFO)
    directory = directory.resolve()
    running = instance.holder(directory / "state" / "state.db")
    if running is not None:
        print(f"demo: a demo is already running in {directory} (pid {running}); Ctrl-C it first", file=sys.stderr)
        return 1
    for sub in ("labels", "prints", "state", "broker"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(run_demo(directory))
    except KeyboardInterrupt:
        return 0
