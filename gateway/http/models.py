"""The JSON API's answers as pydantic models: the server builds every answer through them, and
docs/openapi.yaml is generated from them (`python -m gateway.http.openapi > docs/openapi.yaml`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.schema import EventEnvelope

DeviceState = Literal["online", "offline", "error", "unknown"]
LabelState = Literal["pending", "sent", "confirmed", "failed"]
OrderState = Literal["reserved", "ready", "collected", "cancelled", "expired", "returned"]

MAX_LIMIT = 1000  # the most items one answer holds (`limit`)
LABEL_STATES: tuple[str, ...] = ("pending", "sent", "confirmed", "failed")
ORDER_STATES: tuple[str, ...] = ("reserved", "ready", "collected", "cancelled", "expired", "returned")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Device(_Answer):
    """A configured device and its last known status."""

    id: str
    kind: Literal["printer", "scanner", "label_station", "sensor"] | str
    status: DeviceState = Field(description="unknown: not heard from since it was configured")
    detail: str | None = None
    since: str | None = Field(description="RFC 3339; when the status last changed (null: never reported)")


class Label(_Answer):
    """A shelf label, what it shows or is about to show, and since when it is in its state."""

    label: str
    sku: str
    station: str
    state: LabelState = Field(description="pending: not sent yet; sent: waiting for the station's confirmation")
    price: str | None = Field(None, description="decimal string; the confirmed price, or the one being sent")
    content_hash: str | None = None
    error: str | None = None
    since: str


class OrderLine(_Answer):
    sku: str
    qty: int
    reserved: int
    picked: int


class Order(_Answer):
    """A click & collect, e-reservation or ship-from-store order."""

    order: str
    status: OrderState
    mode: str
    lines: list[OrderLine]
    expires_at: str | None = None
    deadline: str | None = Field(None, description="express orders: when they must be ready")
    created_at: str


class Event(EventEnvelope):
    """An event envelope as published to head office (contract.md §3)."""


class GatewaySection(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: str
    pid: int | None
    version: str | None
    started_at: str | None


class UplinkSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: str
    last_connected_at: str | None
    last_disconnected_at: str | None


class OutboxSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    depth: int
    oldest_age_s: float | None
    last_seq: int


class StatusDevice(BaseModel):
    model_config = ConfigDict(extra="allow")
    device: str
    kind: str
    status: str
    detail: str | None
    since: str | None


class StatusDocument(BaseModel):
    """`store-gateway status --json`: the same document, made by the same function (gateway.status.collect)."""

    model_config = ConfigDict(extra="allow")
    store: str | None
    gateway: GatewaySection
    uplink: UplinkSection
    outbox: OutboxSection
    devices: list[StatusDevice]
    catalogue: dict[str, Any]
    labels: dict[str, Any] | None = None
    print_jobs: dict[str, Any] | None = None
    shelves: dict[str, Any] | None = None
    orders: dict[str, Any] | None = None


class Problem(_Answer):
    """An error answer: what was wrong, naming the parameter."""

    error: str


DeviceList = list[Device]
LabelList = list[Label]
OrderList = list[Order]
EventList = list[Event]
