"""The status page in a real browser: Debian's headless Chromium, driven over the DevTools protocol
(a websocket, through aiohttp), loads the page from a running gateway, and the page's own script
shows the printer going away and the outbox filling while head office is unreachable, without a
reload. Screenshots are kept under the test's temp dir."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.peers.escpos_printer import EscposPrinterPeer
from tests.peers.hq import head_office, running_gateway, status_page_devices, write_config
from tests.peers.mosquitto import MosquittoBroker, free_port


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)")


class DevTools:
    """A DevTools protocol session with one page target."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        async with asyncio.timeout(20):
            while True:
                message = await self.socket.receive_json()
                if message.get("id") == number:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[DevTools]:
    await asyncio.to_thread(profile.mkdir)
    process = await asyncio.create_subprocess_exec(
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-sync", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "--window-size=430,1600",
         "--lang=fr-FR", "--accept-lang=fr-FR,fr", "about:blank",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "LANGUAGE": "fr"},
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("chromium did not open its DevTools port in 30 s")
        port = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                targets = await answer.json(content_type=None)
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                yield DevTools(socket)
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def wait_until(tools: DevTools, expression: str, timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = await tools.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.25)


DEVICE_STATUS = "document.querySelector('#devices tr[data-device=\"till-1\"]')?.dataset.status"
OUTBOX = "document.getElementById('outbox-depth')?.textContent"


async def test_page_follows_a_printer_going_away_while_head_office_is_unreachable(
    own_mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    printer = EscposPrinterPeer()
    port = free_port()
    extra = status_page_devices(port, printer.url, tmp_path / "labels")
    config = write_config(tmp_path / "gw", own_mosquitto, store="web1", extra=extra)
    url = f"http://127.0.0.1:{port}/"
    try:
        async with running_gateway(config), browser(tmp_path / "chromium") as tools:
            async with head_office(own_mosquitto, "web1") as hq:
                await hq.wait_for(lambda s: s.get("state") == "online")
                printer.state.paper_out = True  # a job waits: the printer's worker keeps asking it
                assert (await hq.command("print", {"printer": "till-1", "document": "test_page"}))[
                    "status"
                ] == "applied"
                await hq.wait_for(lambda e: e.get("type") == "device" and e["data"]["status"] == "error")
                await asyncio.sleep(0.5)
            await tools.call("Page.enable")
            await tools.call("Page.navigate", url=url)
            assert await wait_until(tools, f"{DEVICE_STATUS} === 'error'")
            assert await tools.evaluate(OUTBOX) == "0"
            assert await tools.evaluate("document.documentElement.lang") == "fr"
            assert "Appareils" in await tools.evaluate("document.body.innerText")
            await tools.screenshot(tmp_path / "status-page-before.png")

            own_mosquitto.kill()  # head office out of reach: events stay in the outbox
            printer.close()  # and the printer goes away
            assert await wait_until(tools, f"{DEVICE_STATUS} === 'offline'", timeout=30)
            depth = int(await wait_until(tools, f"{OUTBOX} !== '0' && {OUTBOX}"))
            assert depth >= 1
            assert await tools.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
            text = await tools.evaluate("document.body.innerText")
            assert "hors ligne" in text
            await tools.screenshot(tmp_path / "status-page-after.png")
            # every request the page made went to the gateway itself
            resources = await tools.evaluate(
                "JSON.stringify(performance.getEntriesByType('resource').map(r => r.name))"
            )
            assert all(name.startswith(url) for name in json.loads(resources))
    finally:
        printer.close()
    for name in ("status-page-before.png", "status-page-after.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
