"""An OpenEPaperLink access point on 127.0.0.1, faithful to the firmware where the driver depends on it.

Behaviour copied from the firmware (docs/devices.md): `/imgupload` reads `mac` and
the options only when they come before the file part (else the upload is dropped) and answers an
empty 200 whatever happened; only baseline JPEGs at the tag's resolution are taken ("invalid jpg"
otherwise); `/get_db` records with 16-hex upper-case MACs and a decimal hwType; missing tag-type
files until `/littlefs_put`; `/ws` messages: the tag record on upload, "Updating <MAC>", "new
image is the same as current image", "<MAC> reports xfer complete" and "< <MAC> xfer timeout".
Tags check in after a delay; some never answer; a seeded share of transfers time out.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image


@dataclass
class Tag:
    mac: str
    hw_type: int = 1
    size: tuple[int, int] = (296, 128)
    checkin_delay_s: float = 0.05
    answers: bool = True
    record: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None


class FakeAccessPoint:
    """Start with `await ap.start()`; `ap.url` is its http://127.0.0.1:PORT."""

    def __init__(self, *, drop_rate: float = 0.0, seed: int = 5, tag_types: tuple[str, ...] = ("E2",)) -> None:
        self.tags: dict[str, Tag] = {}
        self.tag_types: dict[str, bytes] = dict.fromkeys(tag_types, b"{}")
        self.drop_rate = drop_rate
        self.rng = random.Random(seed)
        self.config: dict[str, str] = {}
        self.led_requests: list[tuple[str, str]] = []
        self.uploads: list[str] = []
        self.dropped_uploads = 0
        self.sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    def add_tag(self, mac: str, *, hw_type: int = 1, size: tuple[int, int] = (296, 128), answers: bool = True) -> Tag:
        mac = mac.upper().rjust(16, "0")
        tag = Tag(mac, hw_type, size, answers=answers)
        tag.record = {
            "mac": mac, "hash": "0" * 32, "lastseen": int(time.time()), "nextupdate": 0, "nextcheckin": 0,
            "pending": 0, "alias": "", "contentMode": 0, "LQI": 100, "RSSI": -60, "temperature": 21,
            "batteryMv": 2900, "hwType": hw_type, "wakeupReason": 0, "capabilities": 0x01, "modecfgjson": "",
            "isexternal": False, "apip": "0.0.0.0", "rotate": 0, "lut": 0, "invert": 0, "updatecount": 0,
            "updatelast": 0, "ch": 11, "ver": 0x26,
        }  # fmt: skip
        self.tags[mac] = tag
        return tag

    async def start(self, port: int = 0) -> FakeAccessPoint:
        """Listen on 127.0.0.1 (`port` 0: a free one); `url` says where."""
        app = web.Application()
        app.router.add_get("/get_db", self.get_db)
        app.router.add_get("/tagtypes/{name}", self.get_tagtype)
        app.router.add_post("/littlefs_put", self.littlefs_put)
        app.router.add_post("/save_apcfg", self.save_apcfg)
        app.router.add_post("/imgupload", self.imgupload)
        app.router.add_get("/led_flash", self.led_flash)
        app.router.add_post("/tag_cmd", self.tag_cmd)
        app.router.add_get("/ws", self.ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for socket in list(self.sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def drop_websockets(self) -> None:
        """Close every websocket (an AP reboot, a Wi-Fi hiccup)."""
        for socket in list(self.sockets):
            await socket.close()

    # -- websocket ---------------------------------------------------------------------------

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.add(socket)
        try:
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.discard(socket)
        return socket

    async def broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        for socket in list(self.sockets):
            if not socket.closed:
                await socket.send_str(text)

    # -- HTTP --------------------------------------------------------------------------------

    async def get_db(self, request: web.Request) -> web.Response:
        mac = request.query.get("mac")
        if mac is None:
            return web.json_response({"tags": [t.record for t in self.tags.values()]})
        if len(mac) not in (12, 16) or any(c not in "0123456789abcdefABCDEF" for c in mac):
            return web.json_response({"error": "malformatted parameter"})
        tag = self.tags.get(mac.upper().rjust(16, "0"))
        return web.json_response({"tags": [tag.record] if tag else []})

    async def get_tagtype(self, request: web.Request) -> web.Response:
        data = self.tag_types.get(request.match_info["name"].removesuffix(".json"))
        if data is None:
            return web.Response(status=404, text="File not found")
        return web.Response(body=data, content_type="application/json")

    async def littlefs_put(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        path = None
        async for part in reader:
            if part.filename is None and part.headers.get("Content-Type") is None and part.name == "path":
                path = (await part.read()).decode()  # type: ignore[union-attr]
            elif part.filename is not None:
                content = await part.read()  # type: ignore[union-attr]
                if path is None:
                    return web.Response(status=400, text="path missing")
                if path.startswith("/tagtypes/"):
                    self.tag_types[path.removeprefix("/tagtypes/").removesuffix(".json")] = bytes(content)
        return web.Response(text="ok")

    async def save_apcfg(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.config.update({k: str(v) for k, v in form.items()})
        return web.Response(text="Ok, saved")

    async def led_flash(self, request: web.Request) -> web.Response:
        mac, pattern = request.query.get("mac"), request.query.get("pattern", "0" * 24)
        if not mac:
            return web.Response(status=400, text="Error: parameters are missing")
        if len(pattern) != 24:
            return web.Response(status=400, text="Error: expects 12 hex bytes in pattern")
        self.led_requests.append((mac.upper().rjust(16, "0"), pattern))
        return web.Response(text="ok, request transmitted")

    async def tag_cmd(self, request: web.Request) -> web.Response:
        form = await request.post()
        if str(form.get("mac", "")).upper().rjust(16, "0") not in self.tags:
            return web.Response(status=400, text="Error: mac not found")
        return web.Response(text="Ok, done")

    async def imgupload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        image: bytes | None = None
        async for part in reader:
            if part.filename is None and part.headers.get("Content-Type") is None:
                fields[str(part.name)] = (await part.read()).decode()  # type: ignore[union-attr]
            else:
                if "mac" not in fields:  # the firmware sees text fields only once their part was parsed
                    self.dropped_uploads += 1
                    await part.read()  # type: ignore[union-attr]
                    return web.Response(status=200)  # "parameters incomplete", overridden by an empty 200
                image = bytes(await part.read())  # type: ignore[union-attr]
        tag = self.tags.get(fields.get("mac", "").upper().rjust(16, "0"))
        if tag is None or image is None:
            return web.Response(status=200)
        name = f"/temp/{tag.mac}_{int(time.monotonic() * 1000)}.jpg"
        tag.record.update({"modecfgjson": json.dumps({"filename": name, "dither": fields.get("dither", "1")}),
                           "nextupdate": 0, "contentMode": 24})  # fmt: skip
        self.uploads.append(tag.mac)
        await self.broadcast({"tags": [tag.record]})
        task = asyncio.get_running_loop().create_task(self._deliver(tag, image))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=200)

    async def _deliver(self, tag: Tag, image: bytes) -> None:
        await asyncio.sleep(0.01)
        await self.broadcast({"logMsg": f"Updating {tag.mac}"})
        if not _baseline_jpeg_of(image, tag.size):
            await self.broadcast({"errMsg": "invalid jpg"})
            return
        digest = hashlib.md5(image).hexdigest()[:16] + "0" * 16
        if digest == tag.record["hash"]:
            await self.broadcast({"logMsg": "new image is the same as current image. not updating tag."})
            return
        tag.record["pending"] = 1
        await self.broadcast({"logMsg": f"new image: /current/{tag.mac}_1.pending"})
        await self.broadcast({"tags": [tag.record]})
        await asyncio.sleep(tag.checkin_delay_s)
        if not tag.answers or self.rng.random() < self.drop_rate:
            tag.record["pending"] = 0
            await self.broadcast({"errMsg": f"< {tag.mac} xfer timeout\r\n"})
            await self.broadcast({"tags": [tag.record]})
            return
        tag.image = image
        tag.record.update({"hash": digest, "pending": 0, "updatecount": tag.record["updatecount"] + 1,
                           "updatelast": int(time.time())})  # fmt: skip
        await self.broadcast({"logMsg": f"{tag.mac} reports xfer complete\r\n"})
        await self.broadcast({"tags": [tag.record]})


def _baseline_jpeg_of(data: bytes, size: tuple[int, int]) -> bool:
    """TJpgDec decodes baseline JPEGs only (SOF0), and the AP does not scale."""
    if not data.startswith(b"\xff\xd8"):
        return False
    try:
        image = Image.open(io.BytesIO(data))
    except OSError:
        return False
    progressive = image.info.get("progressive") or image.info.get("progression")
    return image.format == "JPEG" and not progressive and image.size == size
