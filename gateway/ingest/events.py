"""A broker message read into an event row, or the list of what is wrong with it (field by field)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from gateway.timeutil import parse_rfc3339

STORE_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
EVENT_KIND = re.compile(r"^[A-Za-z0-9_]{1,64}$")
MAX_ID_CHARS = 200
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint


@dataclass(slots=True)
class IncomingEvent:
    """One event envelope (contract.md §3), checked and ready for the `events` table."""

    id: str
    store: str
    seq: int
    kind: str
    at: datetime
    data: str  # the `data` object as JSON text, for the jsonb column
    payload: dict[str, Any]
    topic: str
    raw: bytes


@dataclass(slots=True)
class BadMessage:
    """A message that is not a valid event: kept in `rejected_messages`, acknowledged, never retried."""

    topic: str
    payload: bytes
    errors: list[str]  # "field: message"


def topic_store(topic: str) -> str | None:
    """The store id of `P/stores/S/events/<kind>` (or None when the topic has another shape)."""
    parts = topic.split("/")
    if len(parts) >= 5 and parts[1] == "stores" and parts[3] == "events":
        return parts[2]
    return None


_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def read_event(topic: str, payload: bytes) -> IncomingEvent | BadMessage:
    """Check one message; every problem is named by its field (`seq: ...`, `at: ...`)."""
    try:
        envelope = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        return BadMessage(topic, payload, [f"payload: not JSON ({exc})"])
    if not isinstance(envelope, dict):
        return BadMessage(topic, payload, ["payload: must be a JSON object (the event envelope)"])
    errors: list[str] = []
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_CHARS or "\x00" in event_id:
        errors.append(f"id: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    store = envelope.get("store")
    if not isinstance(store, str) or not STORE_ID.match(store):
        errors.append("store: must be a store id (1-32 of A-Z a-z 0-9 _ -)")
    elif (expected := topic_store(topic)) is not None and expected != store:
        errors.append(f'store: "{store}" does not match the topic\'s store "{expected}"')
    kind = envelope.get("type")
    if not isinstance(kind, str) or not EVENT_KIND.match(kind):
        errors.append("type: must be an event kind (1-64 of A-Z a-z 0-9 _)")
    seq = envelope.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        errors.append("seq: must be a whole number from 1")
    at: datetime | None = None
    try:
        at = parse_rfc3339(envelope.get("at"))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        errors.append("at: must be an RFC 3339 time with an offset, e.g. 2026-11-24T08:00:00+01:00")
    data = envelope.get("data")
    data_text = ""
    if not isinstance(data, dict):
        errors.append("data: must be a JSON object")
    else:
        data_text = _encoder.encode(data).decode()
        if "\\u0000" in data_text:  # jsonb refuses the NUL character
            errors.append("data: contains the character U+0000, which PostgreSQL cannot store")
    if errors or at is None:
        return BadMessage(topic, payload, errors)
    assert isinstance(event_id, str) and isinstance(store, str) and isinstance(kind, str) and isinstance(seq, int)
    return IncomingEvent(event_id, store, seq, kind, at, data_text, envelope, topic, payload)
