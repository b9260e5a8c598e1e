"""Shelf sensors: weight, count and presence readings from load cells and presence sensors.

One reading type for the family (`SensorReading`), one module per transport: `mqtt` (JSON on the
in-store broker) and `bthome` (BTHome v2 BLE advertisements through bleak and bthome-ble; bleak is
imported only there). Payload decoding is plain functions, testable without a broker or a radio.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensorReading:
    """One reading; only what the sensor said is set."""

    sensor_id: str
    at: datetime
    weight_g: float | None = None
    count: int | None = None
    presence: bool | None = None
    battery_pct: float | None = None
    temperature_c: float | None = None
    packet_id: int | None = None
    rssi: int | None = None


@dataclass(frozen=True)
class SourceStatus:
    """A source's availability (the broker connection, the BLE adapter)."""

    online: bool
    detail: str | None = None


class SensorSource(Protocol):
    def readings(self) -> AsyncIterator[SensorReading]:
        """Readings as they come; the source reconnects by itself."""
        ...


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_json_reading(sensor_id: str, at: datetime, payload: bytes) -> SensorReading | None:
    """A JSON payload in one of the documented shapes, or None (logged) if it is not one.

    Shapes: {"weight_g": 2405.5}; {"weight": 2.4055, "unit": "kg"} (unit "g" by default, as
    Zigbee2MQTT scales); Tasmota HX711 {"HX711": {"Weight": 2.4055}} (kg); {"count": 7};
    {"presence": true} or {"occupancy": true}; optional "battery" (%) and "temperature" (°C).
    """
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        log.info("sensor %s: payload is not JSON, dropped", sensor_id)
        return None
    if not isinstance(data, dict):
        log.info("sensor %s: payload is not a JSON object, dropped", sensor_id)
        return None
    weight = _number(data.get("weight_g"))
    if weight is None and _number(data.get("weight")) is not None:
        factor = {"g": 1.0, "kg": 1000.0}.get(str(data.get("unit", "g")).lower())
        raw = _number(data.get("weight"))
        weight = None if factor is None or raw is None else raw * factor
    hx711 = data.get("HX711")
    if weight is None and isinstance(hx711, dict) and _number(hx711.get("Weight")) is not None:
        weight = float(hx711["Weight"]) * 1000.0
    count = data.get("count")
    presence = data.get("presence", data.get("occupancy"))
    reading = SensorReading(
        sensor_id,
        at,
        weight_g=weight,
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        presence=presence if isinstance(presence, bool) else None,
        battery_pct=_number(data.get("battery")),
        temperature_c=_number(data.get("temperature")),
    )
    if reading.weight_g is None and reading.count is None and reading.presence is None:
        log.info("sensor %s: no weight, count or presence in %s, dropped", sensor_id, sorted(data)[:5])
        return None
    return reading
