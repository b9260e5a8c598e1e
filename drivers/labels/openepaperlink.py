"""An OpenEPaperLink access point: images over HTTP, delivery news over its websocket.

Facts this follows (read from the AP firmware; docs/devices.md has them all):
- `/imgupload` takes a *baseline JPEG* at the tag's exact resolution, and reads `mac` and the
  options only if their parts come *before* the file part; its status code cannot be trusted (an
  empty 200 even on error), so the upload is checked in `/get_db?mac=` (a new /temp/ file name).
- Delivery is learned from `/ws`: "<MAC> reports xfer complete" (or `updatecount` rising with
  nothing pending), "< <MAC> xfer timeout", and "new image is the same as current image" (which
  names no tag: it follows the AP's "Updating <MAC>").
- `hwType` in `/get_db` is decimal; the tag-type file is `/tagtypes/<HH>.json` in upper-case hex.
  The AP does not fetch missing ones itself: we upload them with `/littlefs_put`.
- A client that keeps `/ws` open should set `stopsleep=0`, or the AP keeps tags awake.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from PIL import Image

from drivers.errors import reason
from drivers.labels import DeliveryReport, LabelNotFound, TagInfo

log = logging.getLogger(__name__)

# The common tag types (resources/tagtypes/<HH>.json of the firmware repo): width, height, colours.
TAG_TYPES: dict[int, tuple[int, int, tuple[str, ...]]] = {
    0x00: (152, 152, ("white", "black", "red")),
    0x01: (296, 128, ("white", "black", "red")),
    0x02: (400, 300, ("white", "black", "red")),
    0x03: (212, 104, ("white", "black", "red")),
    0x04: (296, 152, ("white", "black", "red")),
    0x05: (640, 384, ("white", "black", "red")),
    0x11: (296, 128, ("white", "black", "red")),
    0x12: (400, 300, ("white", "black", "red")),
    0x22: (264, 176, ("white", "black", "red")),
    0x26: (640, 384, ("white", "black")),
    0x2F: (522, 152, ("white", "black", "red")),
    0x30: (200, 200, ("white", "black", "red")),
    0x31: (296, 160, ("white", "black", "red")),
    0x33: (384, 168, ("white", "black", "red")),
    0x34: (400, 300, ("white", "black", "red")),
    0x3C: (400, 300, ("white", "black", "yellow")),
}
_RGB = {"white": [255, 255, 255], "black": [0, 0, 0], "red": [255, 0, 0], "yellow": [255, 255, 0]}

# RGB332 LED colours (the AP's struct ledFlash)
LED_COLOURS = {
    "red": 0xE0,
    "green": 0x1C,
    "blue": 0x03,
    "yellow": 0xFC,
    "white": 0xFF,
    "cyan": 0x1F,
    "magenta": 0xE3,
}

_HEX = re.compile(r"^([0-9A-Fa-f]{12}|[0-9A-Fa-f]{16})$")
_XFER_OK = re.compile(r"([0-9A-F]{12,16}) reports xfer complete")
_XFER_TIMEOUT = re.compile(r"([0-9A-F]{12,16}) xfer timeout")
_UPDATING = re.compile(r"Updating ([0-9A-F]{12,16})")


class UploadRefused(RuntimeError):
    """The access point did not take the image (field order, format, unknown tag, AP busy)."""


def tag_type_file(hw_type: int) -> dict[str, Any]:
    """The tag-type JSON the AP needs for a type we know (upload when the AP lacks it)."""
    width, height, colours = TAG_TYPES[hw_type]
    return {
        "version": 1,
        "name": f"type {hw_type:02X}",
        "width": width,
        "height": height,
        "rotatebuffer": 0,
        "bpp": 2 if len(colours) > 2 else 1,
        "colortable": {name: _RGB[name] for name in colours},
    }


def led_pattern(color: str, seconds: float) -> str:
    """The 12-byte `ledFlash` pattern as 24 hex digits: one colour, 3 flashes per ~1.6 s cycle."""
    colour = LED_COLOURS.get(color, LED_COLOURS["green"])
    flash_count, flash_speed, delay = 3, 2, 10  # speed and delay in 0.1 s units (as the HA integration)
    cycle_s = flash_count * flash_speed * 0.2 + delay * 0.1
    repeats = max(1, min(255, round(seconds / cycle_s)))
    data = bytes([0x01 | (0x0F << 4), colour, flash_count | (flash_speed << 4), delay, 0, 0, 0, 0, 0, 0, repeats, 0])
    return data.hex()


def multipart(parts: list[tuple[str, bytes, str | None, str | None]]) -> tuple[bytes, str]:
    """A multipart/form-data body in this exact part order, with no Content-Type on text parts.

    The AP's web server treats any part with a Content-Type header as a file, and aiohttp's FormData
    adds "text/plain" to text fields: `mac` would then never be read. So the body is written here.
    """
    boundary = "----store-gateway-" + "".join(random.choices("0123456789abcdef", k=16))
    body = bytearray()
    for name, value, filename, content_type in parts:
        body += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += disposition.encode() + b"\r\n"
        if content_type is not None:
            body += f"Content-Type: {content_type}\r\n".encode()
        body += b"\r\n" + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def jpeg_for(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=95, progressive=False, subsampling=0)
    return out.getvalue()


@dataclass
class _Pending:
    token: str
    updatecount: int


class OpenEPaperLinkStation:
    """One access point. `start()` opens the HTTP session; `listen()` keeps its websocket (delivery news)."""

    def __init__(self, url: str, *, name: str = "ap", timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._reports: asyncio.Queue[DeliveryReport] = asyncio.Queue()
        self._pending: dict[str, _Pending] = {}
        self._updating: str | None = None
        self._types_checked: set[int] = set()
        self.ws_connected = asyncio.Event()

    # -- ids -----------------------------------------------------------------------------------

    def normalise_id(self, label_id: str) -> str:
        if not _HEX.match(label_id):
            raise ValueError(f'"{label_id}" is not a tag MAC (12 or 16 hex digits)')
        mac = label_id.upper()
        return mac if len(mac) == 16 else "0000" + mac

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session and turn the AP's stopsleep off; on any failure nothing stays open."""
        await self.close()  # a restart after a failure starts from nothing
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        try:
            # a permanent /ws client keeps every tag awake unless stopsleep is off (battery)
            async with self._session.post(f"{self.url}/save_apcfg", data={"stopsleep": "0"}) as response:
                if response.status >= 400:
                    log.warning("%s (%s): /save_apcfg answered %s", self.name, self.url, response.status)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the session (safe to call twice, or before start); the owner has stopped `listen()`."""
        self.ws_connected.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("start() the station first")
        return self._session

    # -- tags ----------------------------------------------------------------------------------

    async def _record(self, mac: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/get_db", params={"mac": mac}) as response:
            body = await response.json(content_type=None)
        if "error" in body:
            raise LabelNotFound(f"{mac}: {body['error']}")
        tags = body.get("tags") or []
        if not tags:
            raise LabelNotFound(f"{mac} is not known to the access point {self.url}")
        return dict(tags[0])

    async def _ensure_tag_type(self, hw_type: int) -> None:
        if hw_type in self._types_checked:
            return
        name = f"{hw_type:02X}.json"
        async with self.session.get(f"{self.url}/tagtypes/{name}") as response:
            missing = response.status == 404
        if missing:
            if hw_type not in TAG_TYPES:
                raise LabelNotFound(f"tag type {name} is missing on the AP and unknown to the gateway")
            body, content_type = multipart(
                [
                    ("path", f"/tagtypes/{name}".encode(), None, None),  # the path part must come before the file
                    ("file", json.dumps(tag_type_file(hw_type)).encode(), name, "application/json"),
                ]
            )
            headers = {"Content-Type": content_type}
            async with self.session.post(f"{self.url}/littlefs_put", data=body, headers=headers) as response:
                if response.status >= 400:
                    raise UploadRefused(f"uploading {name}: HTTP {response.status}")
            log.info("%s: uploaded the missing tag type %s", self.name, name)
        self._types_checked.add(hw_type)

    async def tag_info(self, label_id: str) -> TagInfo:
        mac = self.normalise_id(label_id)
        record = await self._record(mac)
        hw_type = int(record.get("hwType", -1))
        if hw_type not in TAG_TYPES:
            raise LabelNotFound(f"{mac}: tag type {hw_type} is not supported by the gateway")
        await self._ensure_tag_type(hw_type)
        width, height, colours = TAG_TYPES[hw_type]
        return TagInfo(mac, width, height, colours, hw_type)

    # -- images --------------------------------------------------------------------------------

    async def send_image(self, label_id: str, image: Image.Image, token: str) -> None:
        mac = self.normalise_id(label_id)
        before = await self._record(mac)
        jpeg = await asyncio.to_thread(jpeg_for, image)
        body, content_type = multipart(
            [
                ("mac", mac.encode(), None, None),  # mac and options before the file, or the AP drops the upload
                ("dither", b"0", None, None),
                ("file", jpeg, f"{mac}.jpg", "image/jpeg"),
            ]
        )
        self._pending[mac] = _Pending(token, int(before.get("updatecount", 0)))
        headers = {"Content-Type": content_type}
        async with self.session.post(f"{self.url}/imgupload", data=body, headers=headers) as response:
            await response.read()
            status = response.status
        after = await self._record(mac)
        if after.get("modecfgjson") == before.get("modecfgjson") or "/temp/" not in str(after.get("modecfgjson")):
            self._pending.pop(mac, None)
            raise UploadRefused(f"{mac}: the access point did not take the image (HTTP {status})")

    async def reports(self) -> AsyncIterator[DeliveryReport]:
        while True:
            yield await self._reports.get()

    def _report(self, mac: str, outcome: str, detail: str | None = None) -> None:
        pending = self._pending.pop(mac, None)
        if pending is None:
            return
        self._reports.put_nowait(DeliveryReport(mac, outcome, pending.token, detail))  # type: ignore[arg-type]

    # -- websocket -----------------------------------------------------------------------------

    async def listen(self) -> None:
        """Keep the websocket open (reconnecting with backoff) and turn its news into delivery reports."""
        backoff = 0.5
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
        failures = 0
        while True:
            try:
                async with self.session.ws_connect(
                    ws_url, heartbeat=30, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as ws:
                    if failures:
                        log.info("%s (%s): websocket back after %d failures", self.name, ws_url, failures)
                    failures, backoff = 0, 0.5
                    self.ws_connected.set()
                    async for message in ws:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self._on_message(message.data)
                        elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("%s (%s): websocket lost (%s); reconnecting", self.name, ws_url, reason(exc))
            self.ws_connected.clear()
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 30.0)

    def _on_message(self, text: str) -> None:
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        log_text = str(message.get("logMsg", ""))
        error_text = str(message.get("errMsg", ""))
        if match := _UPDATING.search(log_text):
            self._updating = match.group(1)
        if match := _XFER_OK.search(log_text):
            self._report(match.group(1), "confirmed")
        elif "same as current image" in log_text and self._updating:
            self._report(self._updating, "same_image")
        if match := _XFER_TIMEOUT.search(error_text):
            self._report(match.group(1), "failed", "xfer timeout")
        elif "invalid jpg" in error_text and self._updating:
            self._report(self._updating, "failed", "invalid jpg")
        for record in message.get("tags") or []:
            mac = str(record.get("mac", ""))
            pending = self._pending.get(mac)
            if pending and int(record.get("updatecount", 0)) > pending.updatecount and not record.get("pending"):
                self._report(mac, "confirmed")

    # -- LEDs ----------------------------------------------------------------------------------

    async def flash(self, label_id: str, color: str, seconds: float) -> None:
        mac = self.normalise_id(label_id)
        params = {"mac": mac, "pattern": led_pattern(color, seconds)}
        async with self.session.get(f"{self.url}/led_flash", params=params) as response:
            if response.status >= 400:
                raise RuntimeError(f"{mac}: LED flash refused: {await response.text()}")
