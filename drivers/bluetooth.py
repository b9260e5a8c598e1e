"""One Bluetooth adapter, shared by everything that uses it: one scanner, one connection at a time.

A store box has one radio. Scanning (BTHome shelf sensors, tags' own advertisements) and
connections (uploading an image to a BLE shelf tag) cannot run well at once on most controllers,
and BlueZ serialises connection attempts anyway. So the adapter is owned here: a single
`BleakScanner` whose advertisements go to every subscriber, and `connection()` which lends the
radio to one connection at a time, in arrival order (asyncio.Lock is first come, first served).
While a connection holds it, scanning stops; when it is handed back, scanning resumes for at least
`min_scan_window_s`, and for long enough that scanning keeps `scan_share` of the radio's time, so
sensor readings are not starved while hundreds of labels update.

bleak is imported here only; a gateway without Bluetooth never loads this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakError

log = logging.getLogger(__name__)

Listener = Callable[[BLEDevice, AdvertisementData], None]


class BluezUnavailable(ConnectionError):
    """BlueZ cannot be reached: no system D-Bus, or no bluetoothd on it, or no adapter."""


def _system_bus() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")


async def start_scanner(scanner: BleakScanner) -> None:
    """`scanner.start()`; BlueZ missing is said in words (BluezUnavailable), not as a FileNotFoundError."""
    try:
        await scanner.start()
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        raise BluezUnavailable(
            f"BlueZ cannot be reached: no system D-Bus at {_system_bus()} ({exc.strerror or exc}); "
            "is dbus running, and bluetoothd?"
        ) from None
    except BleakDBusError as exc:
        if exc.dbus_error in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
            raise BluezUnavailable(
                f"bluetoothd is not running: nothing answers for org.bluez on the system D-Bus ({_system_bus()}); "
                "start it (systemctl start bluetooth)"
            ) from None
        raise
    except BleakError as exc:
        if "adapter" in str(exc).lower():
            raise BluezUnavailable(f"BlueZ has no Bluetooth adapter: {exc}") from None
        raise


@dataclass
class Seen:
    """The last advertisement of a device."""

    device: BLEDevice
    advertisement: AdvertisementData
    at: float


class BluetoothAdapter:
    """The owner of one adapter (`hci0`...): its scanner, its listeners and its connection slot."""

    def __init__(self, name: str = "hci0", *, scan_share: float = 0.25, min_scan_window_s: float = 0.5) -> None:
        self.name = name
        self.scan_share = scan_share
        self.min_scan_window_s = min_scan_window_s
        self._listeners: list[Listener] = []
        self._seen: dict[str, Seen] = {}
        self._arrived = asyncio.Condition()
        self._radio = asyncio.Lock()
        self._scanner: BleakScanner | None = None
        self._scanning = False
        self._scan_until = 0.0
        self._users = 0
        self.connections = 0
        self.scan_windows = 0

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start scanning (the first user starts it; later users share it)."""
        self._users += 1
        if self._users == 1:
            self._scanner = BleakScanner(detection_callback=self._detected, bluez={"adapter": self.name})
            try:
                await self._resume_scanning()
            except BaseException:  # the next start tries again from scratch
                self._users, self._scanner = 0, None
                raise

    async def close(self) -> None:
        """The last user stops the scanner."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self._pause_scanning()
            self._scanner = None
            _ADAPTERS.pop(self.name, None)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every advertisement; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def last_seen(self, address: str) -> Seen | None:
        return self._seen.get(address.upper())

    async def wait_seen(self, address: str, timeout_s: float) -> Seen | None:
        """The device's last advertisement, waiting up to `timeout_s` for a first one."""
        address = address.upper()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._arrived:
                await self._arrived.wait_for(lambda: address in self._seen)
        return self._seen.get(address)

    def _detected(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        address = device.address.upper()
        first = address not in self._seen
        self._seen[address] = Seen(device, advertisement, asyncio.get_running_loop().time())
        if first:
            asyncio.get_running_loop().create_task(self._notify_arrival())
        for listener in list(self._listeners):
            try:
                listener(device, advertisement)
            except Exception:  # one listener's bug must not stop the others or the scanner
                log.exception("Bluetooth %s: a listener failed on an advertisement from %s", self.name, address)

    async def _notify_arrival(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    # -- the radio -----------------------------------------------------------------------------

    async def _resume_scanning(self) -> None:
        if self._scanner is not None and not self._scanning:
            await start_scanner(self._scanner)
            self._scanning = True
            self.scan_windows += 1

    async def _pause_scanning(self) -> None:
        if self._scanner is not None and self._scanning:
            self._scanning = False
            await self._scanner.stop()

    @contextlib.asynccontextmanager
    async def connection(self, purpose: str) -> AsyncIterator[None]:
        """Hold the radio for one connection (scanning paused); waits for its turn."""
        loop = asyncio.get_running_loop()
        async with self._radio:
            wait = self._scan_until - loop.time()
            if wait > 0 and self._listeners:
                await asyncio.sleep(wait)  # scanning's turn first
            await self._pause_scanning()
            started = loop.time()
            self.connections += 1
            log.debug("Bluetooth %s: radio lent for %s", self.name, purpose)
            try:
                yield
            finally:
                busy = loop.time() - started
                # scanning keeps `scan_share` of the radio: after `busy` seconds connected, scan this long
                window = max(self.min_scan_window_s, busy * self.scan_share / (1.0 - self.scan_share))
                try:
                    await self._resume_scanning()
                finally:
                    self._scan_until = loop.time() + window


_ADAPTERS: dict[str, BluetoothAdapter] = {}


def shared_adapter(name: str = "hci0") -> BluetoothAdapter:
    """The one BluetoothAdapter of this process for the adapter `name` (created on first use)."""
    adapter = _ADAPTERS.get(name)
    if adapter is None:
        adapter = _ADAPTERS[name] = BluetoothAdapter(name)
    return adapter
