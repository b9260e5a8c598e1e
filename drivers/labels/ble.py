"""Bluetooth Electronic Shelf Label profile (ESL Service 0x1857): an interface point, not available yet.

What it would take: an ESL Access Point role on top of bleak (GATT client) — configure each tag over
its ESL Service (ESL Address, AP Sync Key Material, ESL Response Key Material, Absolute Time), push
images with the Object Transfer Service (OTS, 0x1825), then drive it with the ESL Control Point
(Display Image, LED Control, Refresh) over Periodic Advertising with Responses (PAwR), which needs
BlueZ and controller support for PAwR (Bluetooth 5.4) that Linux does not expose to bleak today.
"""

from __future__ import annotations


class BluetoothEslStation:
    """Refuses to start, naming what is missing, so a config with `backend = "ble"` fails clearly."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise NotImplementedError(
            'label_stations backend "ble" (Bluetooth ESL profile) is not available in this gateway: it needs '
            "PAwR (Bluetooth 5.4) support through BlueZ; use an OpenEPaperLink access point instead"
        )
