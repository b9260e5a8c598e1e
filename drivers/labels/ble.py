"""Bluetooth-only shelf tags, driven through the store box's own adapter with bleak.

Two tag families, each through its library:
- `atc_oepl`: tags running the ATC BLE OpenEPaperLink firmware, through `py-atc-ble-oepl`. It
  connects with bleak-retry-connector, interrogates the tag (0005 display info, 0011 config:
  size, colours), uploads an image by blocks that the tag asks for and acknowledges the end of
  (00C7, or 00C8 when it already shows that image), and switches the LED on and off.
- `gicisky`: Gicisky / PICKSMART tags, through `gicisky`. It gives the upload handshake
  (01, 02+size, 03, parts acknowledged 0500+index, 0508 when all is in), the image encoding and
  the advertisement decoding (model, battery); the panel refreshes when the central disconnects.
  These tags have no LED: `flash` is refused.

What this module adds: one radio shared through `drivers.bluetooth.BluetoothAdapter` (one
connection at a time, scanning in between); the tag's address as the label id; tags found from
the adapter's scan, not from a scan of each library's own; for gicisky a bleak link of ours
(bleak-retry-connector for connecting, the library's own opens a bare BleakClient), an end to an
upload the tag refuses (error code) or drops (disconnect) instead of the library's endless wait, and
a time limit; reports (`confirmed` only when the tag acknowledged) and battery / signal health.
Our rendered palette image is sent as it is: py-atc-ble-oepl's dithering is switched off
(DitherMode.NONE) and gicisky's optimiser is not used; they are for photos.

The Bluetooth SIG's Electronic Shelf Label profile (ESL Service 0x1857) is not supported: it
drives tags over Periodic Advertising with Responses (PAwR, Bluetooth 5.4) from an ESL Access
Point, which BlueZ does not expose to applications (no PAwR API over D-Bus) and bleak cannot do,
and its tags must first be bonded and configured over the ESL Service with OTS image transfer.

bleak, bleak-retry-connector and the tag libraries (numpy, epaper-dithering) are imported only
when a BLE station is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from drivers.bluetooth import BluetoothAdapter
from drivers.labels import Delivery, DeliveryReport, LabelNotFound, TagInfo

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from PIL import Image

log = logging.getLogger(__name__)
# both libraries log every step of every upload at INFO; with hundreds of labels only their trouble matters
_LIBRARY_LOGS = ("py_atc_ble_oepl", "gicisky", f"{__name__}.gicisky")

TagProtocol = Literal["atc_oepl", "gicisky"]

ATC_COMPANY_ID = 0x1337
GICISKY_COMPANY_ID = 0x5053
_ADDRESS = re.compile(r"^[0-9A-F]{2}([:-]?[0-9A-F]{2}){5}$")
# py-atc-ble-oepl colour schemes (0 MONO, 1 BWR, 2 BWY, 3 BWRY) as our colour names
_ATC_COLOURS: dict[int, tuple[str, ...]] = {
    0: ("white", "black"),
    1: ("white", "black", "red"),
    2: ("white", "black", "yellow"),
    3: ("white", "black", "red", "yellow"),
}


class LedNotAvailable(RuntimeError):
    """The tag has no LED (pick-to-light is not possible on it)."""


@dataclass(frozen=True)
class TagHealth:
    """What a tag's advertisement says of it."""

    label_id: str
    rssi: int | None
    battery_pct: int | None
    voltage: float | None


@dataclass
class _Job:
    label_id: str
    image: Image.Image
    token: str


@dataclass
class _Tag:
    info: TagInfo | None = None
    model: int | None = None
    health: TagHealth | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def normalise_address(label_id: str) -> str:
    """`aa:bb:cc:dd:ee:ff`, `AA-BB-...` or `aabbccddeeff` as `AA:BB:CC:DD:EE:FF`."""
    text = label_id.strip().upper()
    if not _ADDRESS.match(text):
        raise ValueError(f'"{label_id}" is not a Bluetooth address (AA:BB:CC:DD:EE:FF)')
    digits = text.replace(":", "").replace("-", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class BleLabelStation:
    """Tags of one protocol on one adapter. Uploads run one at a time, each holding the radio."""

    def __init__(
        self,
        adapter: BluetoothAdapter,
        protocol: TagProtocol,
        *,
        name: str = "ble",
        seen_timeout_s: float = 30.0,
        connect_timeout_s: float = 20.0,
        connect_attempts: int = 3,
        upload_timeout_s: float = 180.0,
        max_flash_s: float = 30.0,
    ) -> None:
        self.adapter = adapter
        self.protocol = protocol
        self.name = name
        self.seen_timeout_s = seen_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.connect_attempts = connect_attempts
        self.upload_timeout_s = upload_timeout_s
        self.max_flash_s = max_flash_s
        self.company_id = ATC_COMPANY_ID if protocol == "atc_oepl" else GICISKY_COMPANY_ID
        for name_ in _LIBRARY_LOGS:
            logging.getLogger(name_).setLevel(logging.WARNING)
        self._tags: dict[str, _Tag] = {}
        self._tracked: set[str] = set()
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._reports: asyncio.Queue[DeliveryReport] = asyncio.Queue()
        self._health: asyncio.Queue[TagHealth] = asyncio.Queue(maxsize=1000)
        self._unsubscribe: Any = None
        self.uploads = 0

    @property
    def has_led(self) -> bool:
        """Whether `flash` can light the tag (ATC firmware: yes; Gicisky: the tags have none)."""
        return self.protocol == "atc_oepl"

    def normalise_id(self, label_id: str) -> str:
        return normalise_address(label_id)

    def track(self, label_ids: list[str]) -> None:
        """Report the health (battery, signal) of these tags; others around are ignored."""
        for label_id in label_ids:
            with contextlib.suppress(ValueError):
                self._tracked.add(normalise_address(label_id))

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.adapter.start()
        self._unsubscribe = self.adapter.subscribe(self._advertised)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
            await self.adapter.close()

    # -- advertisements ------------------------------------------------------------------------

    def _advertised(self, device: BLEDevice, advertisement: Any) -> None:
        data = advertisement.manufacturer_data.get(self.company_id)
        if data is None:
            return
        address = device.address.upper()
        tag = self._tags.setdefault(address, _Tag())
        battery_pct, voltage = None, None
        if self.protocol == "atc_oepl":
            from py_atc_ble_oepl import ATCProtocol

            with contextlib.suppress(ValueError):
                parsed = ATCProtocol.parse_advertising_data(bytes(data))
                battery_pct, voltage = parsed.battery_pct, parsed.battery_mv / 1000
                tag.extra["hw_type"] = parsed.hw_type
        else:
            from gicisky.ble.interface import Advertisement
            from gicisky.core.advertisement import parse_advertisement

            with contextlib.suppress(KeyError, IndexError, ValueError):
                decoded = parse_advertisement(
                    Advertisement(
                        name=device.name or "",
                        manufacturer_data=dict(advertisement.manufacturer_data),
                        service_uuids=list(advertisement.service_uuids),
                    )
                )
                tag.model = int(decoded.model)
                battery_pct, voltage = max(0, min(100, round(decoded.battery))), float(decoded.voltage)
        tag.health = TagHealth(address, advertisement.rssi, battery_pct, voltage)
        if address in self._tracked:
            with contextlib.suppress(asyncio.QueueFull):  # nobody reads: the newest matters, not every one
                self._health.put_nowait(tag.health)

    async def health(self) -> AsyncIterator[TagHealth]:
        """Battery and signal of the tracked tags, from their advertisements, as they come."""
        while True:
            yield await self._health.get()

    async def _device(self, address: str) -> BLEDevice:
        seen = self.adapter.last_seen(address) or await self.adapter.wait_seen(address, self.seen_timeout_s)
        if seen is None or self.company_id not in seen.advertisement.manufacturer_data:
            raise LabelNotFound(
                f"{address}: no {self.protocol} advertisement heard on {self.adapter.name} within "
                f"{self.seen_timeout_s:g} s (out of range, flat battery, or not a {self.protocol} tag)"
            )
        return seen.device

    # -- tags ----------------------------------------------------------------------------------

    async def tag_info(self, label_id: str) -> TagInfo:
        address = normalise_address(label_id)
        self._tracked.add(address)
        tag = self._tags.get(address)
        if tag is not None and tag.info is not None:
            return tag.info
        device = await self._device(address)
        tag = self._tags.setdefault(address, _Tag())
        if self.protocol == "gicisky":
            from gicisky.image.conversion import DEVICE_SPECS

            spec = DEVICE_SPECS.get(tag.model if tag.model is not None else -1)
            if spec is None:
                raise LabelNotFound(f"{address}: Gicisky model {tag.model} is not known to the gicisky library")
            width, height = spec.size
            colours: tuple[str, ...] = ("white", "black", "red") if spec.second_color else ("white", "black")
            tag.info = TagInfo(address, width, height, colours, tag.model)
        else:
            from py_atc_ble_oepl import ATCDevice

            async with (
                self.adapter.connection(f"interrogating {address}"),
                ATCDevice(address, ble_device=device, connection_timeout=self.connect_timeout_s) as atc,
            ):
                caps = await atc.interrogate()
            colours = _ATC_COLOURS.get(caps.color_scheme, ("white", "black"))
            tag.info = TagInfo(address, caps.width, caps.height, colours, tag.extra.get("hw_type"))
        log.info("%s: tag %s is %dx%d %s", self.name, address, tag.info.width, tag.info.height, tag.info.colours)
        return tag.info

    async def send_image(self, label_id: str, image: Image.Image, token: str) -> None:
        address = normalise_address(label_id)
        self._tracked.add(address)
        tag = self._tags.get(address)
        if tag is not None and tag.info is not None and image.size != (tag.info.width, tag.info.height):
            raise ValueError(f"{address}: image is {image.size}, the tag is {tag.info.width}x{tag.info.height}")
        self._jobs.put_nowait(_Job(address, image, token))

    async def reports(self) -> AsyncIterator[DeliveryReport]:
        while True:
            yield await self._reports.get()

    async def listen(self) -> None:
        """Upload the images handed over, one at a time, each holding the adapter's radio; until cancelled."""
        while True:
            job = await self._jobs.get()
            outcome, detail = await self._deliver(job)
            self._reports.put_nowait(DeliveryReport(job.label_id, outcome, job.token, detail))

    async def _deliver(self, job: _Job) -> tuple[Delivery, str | None]:
        try:
            device = await self._device(job.label_id)
            async with self.adapter.connection(f"image to {job.label_id}"), asyncio.timeout(self.upload_timeout_s):
                self.uploads += 1
                if self.protocol == "atc_oepl":
                    return await self._atc_upload(job, device)
                return await self._gicisky_upload(job, device)
        except TimeoutError:
            return "failed", f"no acknowledgement within {self.upload_timeout_s:g} s"
        except LabelNotFound as exc:
            return "failed", str(exc)
        except Exception as exc:  # a connection or protocol failure of this tag; the next one goes on
            log.debug("%s: upload to %s failed", self.name, job.label_id, exc_info=True)
            return "failed", f"{type(exc).__name__}: {exc}"

    async def _atc_upload(self, job: _Job, device: BLEDevice) -> tuple[Delivery, str | None]:
        from py_atc_ble_oepl import ATCDevice, DitherMode

        async with ATCDevice(job.label_id, ble_device=device, connection_timeout=self.connect_timeout_s) as atc:
            if (atc.width, atc.height) != job.image.size:
                return "failed", f"the tag is {atc.width}x{atc.height}, the image {job.image.size}"
            # our palette image, not dithered again; True only once the tag sent 00C7 (or 00C8)
            done = await atc.upload_image(job.image.convert("RGB"), dither_mode=DitherMode.NONE, compress=True)
        if done:
            return "confirmed", None
        return "failed", "the tag did not acknowledge the image (transfer dropped or refused)"

    async def _gicisky_upload(self, job: _Job, device: BLEDevice) -> tuple[Delivery, str | None]:
        from gicisky.core.protocol import GiciskyProtocol
        from gicisky.image.conversion import convert_to_gicisky_bytes

        tag = self._tags.get(job.label_id)
        if tag is None or tag.model is None:
            return "failed", "the tag's model is not known yet (no advertisement decoded)"
        data = await asyncio.to_thread(convert_to_gicisky_bytes, job.image.convert("RGB"), tag.model)
        link = _GiciskyLink(device, self.connect_attempts, self.connect_timeout_s)
        await link.connect(job.label_id)
        try:
            protocol = GiciskyProtocol(link, logger=logging.getLogger(f"{__name__}.gicisky"))
            upload = asyncio.ensure_future(protocol.upload_image(data))
            trouble = asyncio.ensure_future(link.trouble.wait())
            try:
                await asyncio.wait({upload, trouble}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (upload, trouble):
                    task.cancel()
                await asyncio.gather(upload, trouble, return_exceptions=True)
            if link.error is not None:
                return "failed", link.error
            if not protocol.upload_done:
                return "failed", "the tag did not acknowledge the image"
            return "confirmed", None  # the tag sent 0508: every byte is in
        finally:
            await link.disconnect()  # the panel shows the new image once the central has gone

    # -- LED -----------------------------------------------------------------------------------

    async def flash(self, label_id: str, color: str, seconds: float) -> None:
        """Light the LED for `seconds` (at most `max_flash_s`: the radio is held meanwhile)."""
        address = normalise_address(label_id)
        if not self.has_led:
            raise LedNotAvailable(f"{address}: Gicisky tags have no LED; pick-to-light needs a tag with one")
        from py_atc_ble_oepl import ATCDevice

        device = await self._device(address)
        # the ATC firmware has one LED command, on or off: the colour cannot be chosen
        async with (
            self.adapter.connection(f"LED of {address}"),
            ATCDevice(address, ble_device=device, connection_timeout=self.connect_timeout_s) as atc,
        ):
            await atc.flash_led(min(seconds, self.max_flash_s))


class _GiciskyLink:
    """gicisky's BLEInterface on bleak through bleak-retry-connector; notices refusals and drops."""

    def __init__(self, device: BLEDevice, attempts: int, timeout_s: float) -> None:
        self.device = device
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.client: Any = None
        self.trouble = asyncio.Event()
        self.error: str | None = None
        self._closing = False

    async def connect(self, mac: str) -> None:
        from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

        self.client = await establish_connection(
            BleakClientWithServiceCache,
            self.device,
            f"gicisky-{mac}",
            self._disconnected,
            max_attempts=self.attempts,
            timeout=self.timeout_s,
        )

    def _disconnected(self, _client: Any) -> None:
        if not self._closing:
            self._fail("the tag dropped the connection mid-transfer")

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self.trouble.set()

    async def write(self, characteristic: str, data: bytes, response: bool = False) -> None:
        await self.client.write_gatt_char(characteristic, data, response=response)

    async def start_notify(self, characteristic: str, callback: Any) -> None:
        async def handler(_sender: Any, data: bytearray) -> None:
            payload = bytes(data)
            if payload[:1] == b"\x05" and payload[1:2] not in (b"\x00", b"\x08"):
                self._fail(f"the tag refused the image (error code {payload[1]:02x})")
                return
            try:
                await callback(payload)
            except Exception as exc:  # a write to a tag that went away
                self._fail(f"{type(exc).__name__}: {exc}")

        await self.client.start_notify(characteristic, handler)

    async def disconnect(self) -> None:
        self._closing = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.disconnect()
            self.client = None

    async def scan_devices(self, mac: str | None = None) -> dict[str, Any]:
        raise NotImplementedError("tags are found by the shared adapter's scan")
