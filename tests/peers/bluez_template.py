"""python-dbusmock template: BlueZ 5 (the shipped `bluez5` template) plus Bluetooth shelf tags with a GATT server.

Loaded into the mock process (`python -m dbusmock --template <this file>`), so it runs there, not in
the test. `org.bluez.Mock.AddTag(address, protocol, options)` makes a tag appear as bluetoothd shows
one: a Device1 advertising the tag's manufacturer data, which on `Connect` gets `Connected`, its
GattService1 and GattCharacteristic1 objects (InterfacesAdded) and `ServicesResolved`. Writes to a
characteristic (`WriteValue`) are answered as the tag's firmware answers them, with notifications as
`Value` changes (PropertiesChanged) once `StartNotify` was called:

- `atc_oepl` (ATC BLE OpenEPaperLink firmware; service and characteristic 0x1337): display info
  (0005), dynamic config (0011), LED (0001xx), data info (0064) answered by block requests (00C6),
  block parts (0065) answered 00C5 (next part) and, once all data is in, 00C7 (the tag's
  acknowledgement) or 00C8 (this image is already shown); 0003 shows the received image.
- `gicisky` (Gicisky / PICKSMART; service 0xFEF0, command 0xFEF1, image 0xFEF2): 01 -> 01f400,
  02+size -> 02, 03 -> 0500+part 0, each image part -> 0500+next part, and 0508 when all bytes are
  in; the panel shows the image when the central disconnects (as the real tags do).

What a tag shows is written to `<state_dir>/<MAC>.png` (decoded from the bytes it received, the
way the firmware lays them out); what happened to it is appended to `<state_dir>/<MAC>.log`
(`connect`, `led on`, `ack`, `shown`, `dropped`...). Behaviour for tests, set with
`org.bluez.Mock.SetTagBehaviour(address, name, value)`: `drop_after_parts` (the tag drops the
connection after that many image parts), `drop_at_block` (atc_oepl: the tag drops the
connection as the host starts sending that block), `refuse` (gicisky: answers an error code to the
first image part), `refuse_connect` (Connect fails as out of range).
"""
# ruff: noqa: F403, F405

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import dbus
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates import bluez5
from dbusmock.templates.bluez5 import *  # the bluez5 methods are picked up from this module's namespace

GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHAR_IFACE = "org.bluez.GattCharacteristic1"
ATC_UUID = "00001337-0000-1000-8000-00805f9b34fb"
GICISKY_SERVICE = "0000fef0-0000-1000-8000-00805f9b34fb"
GICISKY_CMD = "0000fef1-0000-1000-8000-00805f9b34fb"
GICISKY_IMG = "0000fef2-0000-1000-8000-00805f9b34fb"

STATE_DIR = Path()


def load(mock: Any, parameters: dict[str, Any]) -> None:
    global STATE_DIR
    bluez5.load(mock, parameters)
    STATE_DIR = Path(str(parameters.get("state_dir", ".")))


def _log(device: Any, line: str) -> None:
    with (STATE_DIR / f"{device.tag_address.replace(':', '')}.log").open("a") as handle:
        handle.write(line + "\n")


def _changed(obj: Any, interface: str, props: dict[str, Any]) -> None:
    obj.props[interface].update(props)
    obj.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as", [interface, props, []])


def _adv_data(protocol: str, options: dict[str, Any]) -> dbus.Dictionary:
    battery_mv = int(options.get("battery_mv", 2950))
    if protocol == "atc_oepl":
        # version 2: hw_type u16, fw u16, 2 bytes, battery mV u16, temperature i8, 1 byte
        data = struct.pack("<BHHHHbB", 2, int(options.get("hw_type", 0x0B)), 0x0026, 0, battery_mv, 21, 0)
        company = 0x1337
    else:
        # device id, volts x10, firmware (2 bytes big-endian), hardware low byte
        data = bytes([int(options.get("model", 0x33)), battery_mv // 100, 0x00, 0x0A, 0x01])
        company = 0x5053
    return dbus.Dictionary({dbus.UInt16(company): dbus.Array(data, signature="y")}, signature="qv")


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="ssa{sv}", out_signature="s")
def AddTag(self: Any, address: str, protocol: str, options: dict[str, Any]) -> str:
    address = str(address).upper()
    path = "/org/bluez/hci0/dev_" + address.replace(":", "_")
    uuid = ATC_UUID if protocol == "atc_oepl" else GICISKY_SERVICE
    name = ("ATC_" if protocol == "atc_oepl" else "NEMR") + address.replace(":", "")[-6:]
    props = dbus.Dictionary(
        {
            "Address": dbus.String(address),
            "AddressType": dbus.String("public"),
            "Alias": dbus.String(name),
            "Name": dbus.String(name),
            "Adapter": dbus.ObjectPath("/org/bluez/hci0"),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "UUIDs": dbus.Array([uuid], signature="s"),
            "RSSI": dbus.Int16(int(options.get("rssi", -60))),
            "ServiceData": dbus.Dictionary({}, signature="sv"),
            "ManufacturerData": _adv_data(protocol, options),
        },
        signature="sv",
    )
    self.AddObject(
        path,
        DEVICE_IFACE,
        props,
        [("Connect", "", "", TagConnect), ("Disconnect", "", "", TagDisconnect), ("Pair", "", "", "")],
    )
    device = mockobject.objects[path]
    device.tag_address = address
    device.tag_protocol = str(protocol)
    device.tag_options = {str(k): v for k, v in options.items()}
    device.connected = False
    device.gatt_added = False
    device.behaviour = {}
    device.notifying = set()
    device.shown_crc = None
    device.transfer = None
    mockobject.objects["/"].EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}", [dbus.ObjectPath(path), {DEVICE_IFACE: props}]
    )
    return path


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="ssv", out_signature="")
def SetTagBehaviour(self: Any, address: str, name: str, value: Any) -> None:
    device = mockobject.objects["/org/bluez/hci0/dev_" + str(address).upper().replace(":", "_")]
    device.behaviour[str(name)] = value


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="sa{sv}", out_signature="")
def TagAdvertises(self: Any, address: str, options: dict[str, Any]) -> None:
    """One more advertisement from a tag (tags advertise every second or so); `rssi`, `battery_mv` change it."""
    device = mockobject.objects["/org/bluez/hci0/dev_" + str(address).upper().replace(":", "_")]
    device.tag_options.update({str(k): v for k, v in options.items()})
    rssi = int(device.tag_options.get("rssi", -60))
    _changed(
        device,
        DEVICE_IFACE,
        {"RSSI": dbus.Int16(rssi), "ManufacturerData": _adv_data(device.tag_protocol, device.tag_options)},
    )


def _add_gatt(device: Any) -> None:
    path = device.path
    if device.tag_protocol == "atc_oepl":
        service_uuid, chars = ATC_UUID, [(ATC_UUID, ["write-without-response", "write", "notify"])]
    else:
        service_uuid = GICISKY_SERVICE
        chars = [
            (GICISKY_CMD, ["write-without-response", "write", "notify"]),
            (GICISKY_IMG, ["write-without-response"]),
        ]
    service_path = f"{path}/service000a"
    service_props = dbus.Dictionary(
        {"UUID": dbus.String(service_uuid), "Device": dbus.ObjectPath(path), "Primary": dbus.Boolean(True)},
        signature="sv",
    )
    root = mockobject.objects["/"]
    root.AddObject(service_path, GATT_SERVICE_IFACE, service_props, [])
    root.EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [dbus.ObjectPath(service_path), {GATT_SERVICE_IFACE: service_props}],
    )
    device.char_paths = {}
    for index, (uuid, flags) in enumerate(chars):
        char_path = f"{service_path}/char{0x0B + 3 * index:04x}"
        char_props = dbus.Dictionary(
            {
                "UUID": dbus.String(uuid),
                "Service": dbus.ObjectPath(service_path),
                "Value": dbus.Array([], signature="y"),
                "Flags": dbus.Array(flags, signature="s"),
                "Notifying": dbus.Boolean(False),
                "MTU": dbus.UInt16(247),
            },
            signature="sv",
        )
        root.AddObject(
            char_path,
            GATT_CHAR_IFACE,
            char_props,
            [
                ("WriteValue", "aya{sv}", "", CharWriteValue),
                ("ReadValue", "a{sv}", "ay", CharReadValue),
                ("StartNotify", "", "", CharStartNotify),
                ("StopNotify", "", "", CharStopNotify),
            ],
        )
        char = mockobject.objects[char_path]
        char.tag_device = device
        char.uuid = uuid
        device.char_paths[uuid] = char_path
        root.EmitSignal(
            OBJECT_MANAGER_IFACE,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [dbus.ObjectPath(char_path), {GATT_CHAR_IFACE: char_props}],
        )
    device.gatt_added = True


def TagConnect(device: Any) -> None:
    if device.behaviour.get("refuse_connect"):
        _log(device, "connect refused")
        raise dbus.exceptions.DBusException("Page Timeout", name="org.bluez.Error.Failed")
    if device.connected:
        raise dbus.exceptions.DBusException("Already Connected", name="org.bluez.Error.AlreadyConnected")
    device.connected = True
    device.transfer = None
    device.parts_received = 0
    _log(device, "connect")
    _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
    if not device.gatt_added:
        _add_gatt(device)
    _changed(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(True)})


def _drop(device: Any, why: str) -> None:
    if not device.connected:
        return
    device.connected = False
    device.notifying.clear()
    _log(device, why)
    _changed(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False), "Connected": dbus.Boolean(False)})


def TagDisconnect(device: Any) -> None:
    if not device.connected:
        raise dbus.exceptions.DBusException("Not Connected", name="org.bluez.Error.NotConnected")
    if device.tag_protocol == "gicisky" and device.transfer and device.transfer.get("complete"):
        _show(device, _decode_gicisky(device, bytes(device.transfer["data"])))  # the panel refreshes on disconnect
    if device.tag_protocol == "atc_oepl" and device.tag_options.get("led_on"):
        device.tag_options["led_on"] = False
        _log(device, "led off")  # the firmware turns the LED off when the central goes
    _drop(device, "disconnect")


def CharStartNotify(char: Any) -> None:
    char.tag_device.notifying.add(char.uuid)
    _changed(char, GATT_CHAR_IFACE, {"Notifying": dbus.Boolean(True)})


def CharStopNotify(char: Any) -> None:
    char.tag_device.notifying.discard(char.uuid)
    _changed(char, GATT_CHAR_IFACE, {"Notifying": dbus.Boolean(False)})


def CharReadValue(char: Any, _options: Any) -> Any:
    return char.props[GATT_CHAR_IFACE]["Value"]


def _notify(device: Any, uuid: str, data: bytes) -> None:
    if uuid not in device.notifying or not device.connected:
        return
    char = mockobject.objects[device.char_paths[uuid]]
    _changed(char, GATT_CHAR_IFACE, {"Value": dbus.Array(data, signature="y")})


def _show(device: Any, image: Any) -> None:
    target = STATE_DIR / f"{device.tag_address.replace(':', '')}.png"
    temporary = target.with_suffix(".tmp")
    image.save(temporary, format="PNG")
    temporary.replace(target)
    _log(device, "shown")


def CharWriteValue(char: Any, value: Any, _options: Any) -> None:
    device = char.tag_device
    if not device.connected:
        raise dbus.exceptions.DBusException("Not connected", name="org.bluez.Error.NotConnected")
    data = bytes(value)
    if device.tag_protocol == "atc_oepl":
        _atc_write(device, data)
    elif char.uuid == GICISKY_CMD:
        _gicisky_command(device, data)
    else:
        _gicisky_part(device, data)


# -- ATC BLE OpenEPaperLink firmware ----------------------------------------------------------------


def _atc_write(device: Any, data: bytes) -> None:
    command = data[:2]
    options = device.tag_options
    width, height = int(options.get("width", 296)), int(options.get("height", 128))
    if command == b"\x00\x05":  # display info: 31-byte payload
        payload = bytearray(31)
        payload[19] = 0  # wh_inverted: the host sees (height field, width field) as (width, height)
        payload[22:24] = struct.pack("<H", width)
        payload[24:26] = struct.pack("<H", height)
        payload[30] = int(options.get("colors", 2))
        _notify(device, ATC_UUID, b"\x00\x05" + bytes(payload))
    elif command == b"\x00\x11":  # dynamic config, with the LED pinout section
        base = struct.pack(
            "<HHHbHHHHHHHHIIIIHH",
            int(options.get("screen_type", 7)),
            int(options.get("hw_type", 0x0B)),
            0,
            1,
            0,
            height,
            width,
            0,
            0,
            int(options.get("colors", 2)),
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
        )
        _notify(device, ATC_UUID, b"\x00\xcd" + base + struct.pack("<HHHB", 1, 2, 3, 0))
    elif command == b"\x00\x01":  # LED
        on = len(data) > 2 and data[2] != 0
        options["led_on"] = on
        _log(device, "led on" if on else "led off")
    elif command == b"\x00\x64":  # data info: checksum, data version (crc32), size, type, argument, check-in
        _, version, size, data_type, _, _ = struct.unpack_from("<BQIBBH", data, 2)
        if version == device.shown_crc:
            _log(device, "already shown")
            _notify(device, ATC_UUID, b"\x00\xc8")
            return
        device.transfer = {"version": version, "size": size, "type": data_type, "data": bytearray(), "block": 0}
        _atc_request_block(device, 0)
    elif command == b"\x00\x02":  # prepare for a block
        if device.transfer is not None:
            device.transfer["parts"] = {}
            if device.behaviour.get("drop_at_block") == device.transfer["block"]:
                _drop(device, "dropped")
    elif command == b"\x00\x65":  # one part of a block: checksum, block id, part id, 230 bytes
        _atc_part(device, data[2:])
    elif command == b"\x00\x03" and device.transfer is not None and device.transfer.get("image") is not None:
        _show(device, device.transfer["image"])  # draw what was received
        device.shown_crc = device.transfer["version"]


def _atc_request_block(device: Any, block: int) -> None:
    transfer = device.transfer
    transfer["block"] = block
    transfer["parts"] = {}
    payload = bytes([0]) + struct.pack("<Q", transfer["version"]) + bytes([block, transfer["type"]]) + bytes(6)
    _notify(device, ATC_UUID, b"\x00\xc6" + payload)


def _atc_part(device: Any, packet: bytes) -> None:
    transfer = device.transfer
    if transfer is None or len(packet) != 233 or sum(packet[1:]) & 0xFF != packet[0]:
        _notify(device, ATC_UUID, b"\x00\xc4")  # resend this part
        return
    device.parts_received += 1
    limit = device.behaviour.get("drop_after_parts")
    if limit is not None and device.parts_received > int(limit):
        _drop(device, "dropped")
        return
    block, part = packet[1], packet[2]
    transfer["parts"][part] = packet[3:]
    block_size = min(4096, transfer["size"] - block * 4096) + 4
    parts_needed = (block_size + 229) // 230
    if len(transfer["parts"]) < parts_needed:
        _notify(device, ATC_UUID, b"\x00\xc5")
        return
    raw = b"".join(transfer["parts"][i] for i in range(parts_needed))[:block_size]
    length, checksum = struct.unpack_from("<HH", raw)
    body = raw[4 : 4 + length]
    if sum(body) & 0xFFFF != checksum:
        _atc_request_block(device, block)  # a corrupt block is asked for again
        return
    transfer["data"] += body
    if len(transfer["data"]) < transfer["size"]:
        _atc_request_block(device, block + 1)
        return
    if zlib.crc32(bytes(transfer["data"])) & 0xFFFFFFFF != transfer["version"]:
        _log(device, "crc mismatch")
        _atc_request_block(device, 0)
        return
    transfer["image"] = _decode_atc(transfer["type"], bytes(transfer["data"]), device.tag_options)
    _log(device, "ack")
    _notify(device, ATC_UUID, b"\x00\xc7")


def _planes_to_image(width: int, height: int, planes: list[bytes], colours: list[tuple[int, int, int]]) -> Any:
    from PIL import Image

    image = Image.new("RGB", (width, height), (255, 255, 255))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            bit = y * width + x
            value = 0
            for index, plane in enumerate(planes):
                if plane[bit >> 3] & (0x80 >> (bit & 7)):
                    value |= 1 << index
            pixels[x, y] = colours[value]
    return image


def _decode_atc(data_type: int, data: bytes, options: dict[str, Any]) -> Any:
    from PIL import Image

    if data_type == 0x30:  # u32 raw length, then zlib of: header (6), planes
        raw = zlib.decompress(data[4:])
        width, height, planes = raw[1] | raw[2] << 8, raw[3] | raw[4] << 8, raw[5]
        body = raw[6:]
    else:  # the buffer is the panel's size a quarter turn round
        width, height = int(options.get("height", 128)), int(options.get("width", 296))
        planes = 2 if data_type == 0x21 else 1
        body = data
    size = width * height // 8
    # plane 1: black (or yellow), plane 2: red (or yellow)
    colours = [(255, 255, 255), (0, 0, 0), (255, 0, 0), (255, 255, 0)]
    buffer = _planes_to_image(width, height, [body[i * size : (i + 1) * size] for i in range(planes)], colours)
    return buffer.transpose(Image.Transpose.ROTATE_270)  # the panel shows the buffer a quarter turn clockwise


# -- Gicisky / PICKSMART ------------------------------------------------------------------------------

GICISKY_SIZES = {0x0B: (250, 122, False), 0x33: (296, 128, True), 0x4B: (400, 300, False)}


def _gicisky_command(device: Any, data: bytes) -> None:
    if data[:1] == b"\x01":
        device.transfer = None
        _notify(device, GICISKY_CMD, b"\x01\xf4\x00")
    elif data[:1] == b"\x02":
        (size,) = struct.unpack_from("<I", data, 1)
        device.transfer = {"size": size, "data": bytearray(), "next": 0, "complete": False}
        _notify(device, GICISKY_CMD, b"\x02\x00")
    elif data[:1] == b"\x03" and device.transfer is not None:
        _notify(device, GICISKY_CMD, b"\x05\x00" + struct.pack("<I", 0))


def _gicisky_part(device: Any, data: bytes) -> None:
    transfer = device.transfer
    if transfer is None:
        return
    (index,) = struct.unpack_from("<I", data)
    device.parts_received += 1
    limit = device.behaviour.get("drop_after_parts")
    if limit is not None and device.parts_received > int(limit):
        _drop(device, "dropped")
        return
    if device.behaviour.get("refuse"):
        _log(device, "refused")
        _notify(device, GICISKY_CMD, b"\x05\x03" + struct.pack("<I", index))
        return
    if index != transfer["next"]:
        _notify(device, GICISKY_CMD, b"\x05\x00" + struct.pack("<I", transfer["next"]))
        return
    transfer["data"] += data[4:]
    transfer["next"] += 1
    if len(transfer["data"]) >= transfer["size"]:
        transfer["complete"] = True
        _log(device, "ack")
        _notify(device, GICISKY_CMD, b"\x05\x08" + struct.pack("<I", index))
    else:
        _notify(device, GICISKY_CMD, b"\x05\x00" + struct.pack("<I", transfer["next"]))


def _decode_gicisky(device: Any, data: bytes) -> Any:
    """Column-major planes (x outer, y inner, MSB first): 1 = white in the first, 1 = red in the second."""
    from PIL import Image

    width, height, mirrored = GICISKY_SIZES[int(device.tag_options.get("model", 0x33))]
    size = (width * height + 7) // 8
    bw, red = data[:size], data[size : 2 * size]
    image = Image.new("RGB", (width, height), (255, 255, 255))
    pixels = image.load()
    bit = 0
    for x in range(width):
        for y in range(height):
            white = bw[bit >> 3] & (0x80 >> (bit & 7))
            is_red = len(red) > (bit >> 3) and red[bit >> 3] & (0x80 >> (bit & 7))
            pixels[x, y] = (255, 0, 0) if is_red else (255, 255, 255) if white else (0, 0, 0)
            bit += 1
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if mirrored else image
