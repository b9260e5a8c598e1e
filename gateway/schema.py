"""The MQTT interface as pydantic models: envelopes, every command's data, every event's data.

The command models are the ones the dispatcher validates with; the event models describe exactly
what the services write (tests check real events against them). docs/asyncapi.yaml is generated
from here (`python -m gateway.schema > docs/asyncapi.yaml`) and a test keeps it in step, and the
JSON examples of docs/mqtt-api.md are validated against the same models.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.commands import CommandModel, Envelope
from gateway.labels.plan import LabelAssign, LabelFlash
from gateway.orders import OrderRef, OrderReserve, OrderReturn
from gateway.pricing import PriceSet
from gateway.printing.service import PrintCommand
from gateway.shelves import ShelfSet
from gateway.stock import StockAdjust, StockSet
from gateway.topics import group_command_topic, store_command_topic

Money = Annotated[str, Field(pattern=r"^-?\d+(\.\d+)?$", description='a decimal string such as "12.99"')]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldErrorData(_Event):
    field: str
    message: str


class FirstOutcome(_Event):
    """What a command did the first time its id was seen (carried by a `duplicate` answer)."""

    status: Literal["applied", "rejected"] = Field(description="the first answer's status")
    applied: int | None = None
    skipped: int | None = None
    errors: list[FieldErrorData] | None = Field(default=None, description="the first answer's errors (at most 20)")
    errors_total: int | None = Field(default=None, description="how many errors it had, when more than 20")
    at: str | None = Field(default=None, description="when the gateway first committed it (RFC 3339)")


class CommandResultData(_Event):
    command_id: str | None
    status: Literal["applied", "duplicate", "rejected"]
    applied: int
    skipped: int
    errors: list[FieldErrorData]
    type: str | None = None
    scheduled: int | None = None
    job: str | None = None
    first: FirstOutcome | None = Field(
        default=None,
        description="with `duplicate`: the outcome of the first command with this id (for an id recorded by "
        "an older version, its `status` alone)",
    )


class ScanData(_Event):
    scanner: str
    code: str
    symbology: str | None = None
    gtin: str | None = None
    sku: str | None
    mode: Literal["price_check", "count", "receive", "return", "pickup"]
    price: Money | None = None
    currency: str | None = None
    order: str | None = None
    net_weight_g: int | None = None
    batch: str | None = None
    expiry: str | None = None
    counted: int | None = None
    result: str | None = None


class StockData(_Event):
    sku: str
    on_hand: int
    reserved: int
    available: int
    reason: str
    counted: int | None = None


class ShelfData(_Event):
    sensor: str
    sku: str
    units: int
    level: Literal["ok", "low", "empty"]


class LabelData(_Event):
    label: str
    sku: str
    station: str
    status: Literal["sent", "confirmed", "failed"]
    price: Money | None = None
    content_hash: str | None
    error: str | None = None


class PrintData(_Event):
    job: str
    printer: str
    document: str
    status: Literal["queued", "printed", "failed"]
    error: str | None = None


class DeviceData(_Event):
    device: str
    kind: str
    status: Literal["online", "offline", "error"]
    detail: str | None = None


class OrderLineData(_Event):
    sku: str
    qty: int
    reserved: int
    picked: int


class OrderData(_Event):
    order: str
    status: Literal["reserved", "ready", "collected", "cancelled", "expired", "returned"]
    lines: list[OrderLineData]


class ReplenishmentData(_Event):
    sku: str
    source: Literal["shelf", "stock"] = "shelf"
    status: Literal["needed", "restored"]
    level: Literal["ok", "low", "empty"]
    sensor: str | None = None
    shelf_units: int | None = None
    capacity: int | None = None
    back_store_available: int | None = None
    to_bring: int | None = None
    available: int | None = None
    min: int | None = None
    to_order: int | None = None


class EventEnvelope(_Event):
    id: str
    store: str
    type: str
    seq: int
    at: str
    data: dict[str, Any]


class StorageState(_Event):
    """The disk under the state database, as a device: `error` while it is full (nothing is written)."""

    status: Literal["online", "error"]
    detail: str | None = None


class GatewayState(_Event):
    state: Literal["online", "offline"]
    version: str
    started_at: str
    storage: StorageState | None = None  # in `online` states; published again when it changes


class DeviceAvailability(_Event):
    """Retained per configured device; an empty retained payload clears a device removed from the config."""

    state: Literal["online", "offline"]


COMMANDS: dict[str, type[CommandModel]] = {
    "price.set": PriceSet,
    "stock.set": StockSet,
    "stock.adjust": StockAdjust,
    "label.assign": LabelAssign,
    "label.flash": LabelFlash,
    "print": PrintCommand,
    "order.reserve": OrderReserve,
    "order.cancel": OrderRef,
    "order.collected": OrderRef,
    "order.return": OrderReturn,
    "shelf.set": ShelfSet,
}

EVENTS: dict[str, type[_Event]] = {
    "command_result": CommandResultData,
    "scan": ScanData,
    "stock": StockData,
    "shelf": ShelfData,
    "label": LabelData,
    "print": PrintData,
    "device": DeviceData,
    "order": OrderData,
    "replenishment": ReplenishmentData,
}


def validate_event(envelope: dict[str, Any]) -> None:
    """Raise pydantic's ValidationError unless `envelope` is a well-formed event of a known kind."""
    EventEnvelope.model_validate(envelope)
    EVENTS[envelope["type"]].model_validate(envelope["data"])


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the interface with head office."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def add(name: str, model: type[BaseModel]) -> str:
        schema = _schema(model)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        return name

    add("CommandEnvelope", Envelope)
    add("EventEnvelope", EventEnvelope)
    add("GatewayState", GatewayState)
    add("DeviceAvailability", DeviceAvailability)
    for name, command_model in COMMANDS.items():
        key = "Command_" + name.replace(".", "_")
        data = add(key + "_data", command_model)
        messages[key] = {
            "name": name,
            "title": f"command {name}",
            "contentType": "application/json",
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/CommandEnvelope"},
                    {
                        "type": "object",
                        "properties": {"type": {"const": name}, "data": {"$ref": f"#/components/schemas/{data}"}},
                    },
                ]
            },
        }
        for scope, address in (
            ("store", store_command_topic("{prefix}", "{store}", name)),
            ("group", group_command_topic("{prefix}", "{group}", name)),
        ):
            channel = f"{key}_{scope}"
            channels[channel] = {
                "address": address,
                "messages": {key: {"$ref": f"#/components/messages/{key}"}},
                "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in ("prefix", scope)},
            }
            operations[f"receive_{channel}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"head office sends {name} (QoS 1); answered by exactly one command_result",
            }
    for kind, event_model in EVENTS.items():
        key = "Event_" + kind
        data = add(key + "_data", event_model)
        messages[key] = {
            "name": kind,
            "title": f"event {kind}",
            "contentType": "application/json",
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/EventEnvelope"},
                    {
                        "type": "object",
                        "properties": {"type": {"const": kind}, "data": {"$ref": f"#/components/schemas/{data}"}},
                    },
                ]
            },
        }
        channels[key] = {
            "address": "{prefix}/stores/{store}/events/" + kind,
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in ("prefix", "store")},
        }
        operations[f"send_{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"the gateway publishes {kind} events (QoS 1, in seq order, from its durable outbox)",
        }
    messages["GatewayState"] = {"name": "state", "contentType": "application/json",
                                "payload": {"$ref": "#/components/schemas/GatewayState"}}  # fmt: skip
    channels["GatewayState"] = {
        "address": "{prefix}/stores/{store}/gateway/state",
        "description": "retained; also the last will (offline)",
        "messages": {"GatewayState": {"$ref": "#/components/messages/GatewayState"}},
        "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in ("prefix", "store")},
    }
    operations["send_GatewayState"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/GatewayState"},
        "summary": "online on every connect, offline on shutdown and as the will",
    }
    messages["DeviceAvailability"] = {"name": "availability", "contentType": "application/json",
                                      "payload": {"$ref": "#/components/schemas/DeviceAvailability"}}  # fmt: skip
    channels["DeviceAvailability"] = {
        "address": "{prefix}/stores/{store}/devices/{device}/availability",
        "description": "retained; one per configured device; not covered by the last will (read the gateway's "
        "state first); an empty retained payload clears a device removed from the config",
        "messages": {"DeviceAvailability": {"$ref": "#/components/messages/DeviceAvailability"}},
        "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in ("prefix", "store", "device")},
    }
    operations["send_DeviceAvailability"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/DeviceAvailability"},
        "summary": "on every connection and on every change of a device's status (error counts as offline)",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "store-gateway MQTT interface with head office",
            "version": __version__,
            "description": "See docs/mqtt-api.md. Money is a decimal string with an ISO 4217 currency; "
            "times are RFC 3339 with an offset. A command's type is written in its topic with each '.' as '/' "
            "(price.set on .../commands/price/set); the gateway also accepts the dotted form.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": {
                "prefix": {"description": "uplink.topic_prefix (default retail)"},
                "store": {"description": "store.id"},
                "group": {"description": "a head-office broadcast group the store follows (store.groups)"},
                "device": {"description": "a device id from the config (printers, scanners, label_stations, sensors)"},
            },
        },
    }


def main() -> int:
    """Print docs/asyncapi.yaml (JSON, which is valid YAML 1.2)."""
    sys.stdout.write(json.dumps(asyncapi(), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
