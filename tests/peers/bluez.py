"""An emulated BlueZ on a private D-Bus, so the real bleak code receives BTHome advertisements.

A private `dbus-daemon` (its address in DBUS_SYSTEM_BUS_ADDRESS, which bleak's dbus-fast honours),
python-dbusmock's `bluez5` template with one adapter, and `advertise()` that makes a device appear
(AddObject + InterfacesAdded) and then changes its ServiceData/RSSI (PropertiesChanged), as
bluetoothd does. Facts and gotchas: docs/devices.md. Also builds real BTHome v2 frames,
plain and AES-CCM encrypted. Test-only code (python-dbusmock is a test dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dbus
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
TEMPLATE = Path(__file__).with_name("bluez_template.py")

_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def bthome_frame(packet_id: int, *, mass_kg: float | None = None, battery: int | None = None) -> bytes:
    """A plain BTHome v2 service-data payload: objects sorted by id (00 packet id, 01 battery, 06 mass)."""
    frame = bytearray([0x40, 0x00, packet_id & 0xFF])
    if battery is not None:
        frame += bytes([0x01, battery])
    if mass_kg is not None:
        frame += bytes([0x06]) + struct.pack("<H", round(mass_kg * 100))
    return bytes(frame)


def bthome_encrypted(mac: str, key: bytes, counter: int, packet_id: int, mass_kg: float) -> bytes:
    """An encrypted BTHome v2 payload: 0x41 | AES-CCM(objects) | counter (u32 LE) | MIC (4 bytes)."""
    objects = bytes([0x00, packet_id & 0xFF, 0x06]) + struct.pack("<H", round(mass_kg * 100))
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc" + b"\x41" + struct.pack("<I", counter)
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return b"\x41" + sealed[:-4] + struct.pack("<I", counter) + sealed[-4:]


class FakeBlueZ:
    """Start in a test; `address` is the private system bus; `advertise()` sends adverts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.address = ""
        self._daemon: subprocess.Popen[bytes] | None = None
        self._mock: subprocess.Popen[bytes] | None = None
        self._bus: dbus.bus.BusConnection | None = None
        self._known: set[str] = set()
        self._previous_env: str | None = None

    def start(self) -> FakeBlueZ:
        conf = self.directory / "bus.conf"
        conf.write_text(_CONF.format(socket=self.directory / "bus.sock"))
        self._daemon = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._daemon.stdout is not None
        self.address = self._daemon.stdout.readline().decode().strip()
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        self._mock = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dbusmock",
                "--system",
                "--template",
                str(TEMPLATE),
                "--parameters",
                json.dumps({"state_dir": str(self.directory)}),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "bluez-mock.log").open("wb"),  # the mock's tracebacks, when a tag misbehaves
        )
        self._bus = dbus.bus.BusConnection(self.address)
        deadline = time.monotonic() + 15
        while not self._bus.name_has_owner("org.bluez"):
            if time.monotonic() > deadline:
                raise RuntimeError("the emulated BlueZ did not come up")
            time.sleep(0.05)
        self._root().AddAdapter("hci0", "store-gateway-test", dbus_interface="org.bluez.Mock")
        self._previous_env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        return self

    def _root(self) -> dbus.proxies.ProxyObject:
        assert self._bus is not None
        return self._bus.get_object("org.bluez", "/")

    def advertise(self, mac: str, service_data: bytes, rssi: int = -60, name: str = "BTHome scale") -> None:
        """One advertisement from `mac` carrying BTHome service data."""
        assert self._bus is not None
        path = "/org/bluez/hci0/dev_" + mac.upper().replace(":", "_")
        data = dbus.Dictionary({BTHOME_UUID: dbus.Array(service_data, signature="y")}, signature="sv")
        if path not in self._known:
            props = dbus.Dictionary(
                {
                    "Address": dbus.String(mac.upper()),
                    "AddressType": dbus.String("public"),
                    "Alias": dbus.String(name),
                    "Name": dbus.String(name),
                    "Adapter": dbus.ObjectPath("/org/bluez/hci0"),
                    "Paired": dbus.Boolean(False),
                    "Connected": dbus.Boolean(False),
                    "Trusted": dbus.Boolean(False),
                    "Blocked": dbus.Boolean(False),
                    "LegacyPairing": dbus.Boolean(False),
                    "ServicesResolved": dbus.Boolean(False),
                    "UUIDs": dbus.Array([], signature="s"),
                    "RSSI": dbus.Int16(rssi),
                    "ServiceData": data,
                    "ManufacturerData": dbus.Dictionary({}, signature="qv"),
                },
                signature="sv",
            )
            mock = "org.freedesktop.DBus.Mock"
            self._root().AddObject(path, "org.bluez.Device1", props, [], dbus_interface=mock)
            self._root().EmitSignal(
                "org.freedesktop.DBus.ObjectManager",
                "InterfacesAdded",
                "oa{sa{sv}}",
                [dbus.ObjectPath(path), {"org.bluez.Device1": props}],
                dbus_interface=mock,
            )
            self._known.add(path)
            return
        device = self._bus.get_object("org.bluez", path)
        device.UpdateProperties(
            "org.bluez.Device1",
            dbus.Dictionary({"RSSI": dbus.Int16(rssi), "ServiceData": data}, signature="sv"),
            dbus_interface="org.freedesktop.DBus.Mock",
        )

    def add_tag(self, mac: str, protocol: str, rssi: int = -60, **options: int) -> None:
        """A Bluetooth shelf tag (`atc_oepl` or `gicisky`) that advertises and accepts a connection.

        Options: atc_oepl `width`, `height`, `colors`, `hw_type`; gicisky `model`; both `battery_mv`.
        """
        values = {key: dbus.Int32(value) for key, value in options.items()}
        values["rssi"] = dbus.Int32(rssi)
        self._root().AddTag(mac, protocol, dbus.Dictionary(values, signature="sv"), dbus_interface="org.bluez.Mock")

    def tag_behaviour(self, mac: str, name: str, value: int | bool) -> None:
        """`drop_after_parts` (int), `drop_at_block` (int), `refuse` (bool), `refuse_connect` (bool)."""
        variant = dbus.Boolean(value) if isinstance(value, bool) else dbus.Int32(value)
        self._root().SetTagBehaviour(mac, name, variant, dbus_interface="org.bluez.Mock")

    def tag_advertises(self, mac: str, **changes: int) -> None:
        """One more advertisement of the tag; `rssi=` and `battery_mv=` change what it says from now on."""
        options = dbus.Dictionary({key: dbus.Int32(value) for key, value in changes.items()}, signature="sv")
        self._root().TagAdvertises(mac, options, dbus_interface="org.bluez.Mock")

    @contextlib.asynccontextmanager
    async def tags_advertising(self, macs: list[str], every_s: float = 0.5) -> AsyncIterator[None]:
        """The tags advertise every `every_s` while the block runs, as real tags do (a scanner that
        starts later hears them at their next advertisement, not from BlueZ's cache)."""

        async def advertise() -> None:
            while True:
                for mac in macs:
                    self.tag_advertises(mac)
                await asyncio.sleep(every_s)

        task = asyncio.create_task(advertise())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def shown(self, mac: str) -> Path:
        """The PNG of what the tag displays (absent until it has shown an image)."""
        return self.directory / f"{mac.replace(':', '').upper()}.png"

    def tag_log(self, mac: str) -> list[str]:
        """What happened to the tag, one line each: connect, ack, shown, led on, dropped..."""
        path = self.directory / f"{mac.replace(':', '').upper()}.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self._previous_env is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self._previous_env
        if self._bus is not None:
            self._bus.close()
        for process in (self._mock, self._daemon):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(5)
