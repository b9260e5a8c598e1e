"""Commands from head office: validate, apply once, answer exactly once with a `command_result`.

The inbox row, the command's effects and its `command_result` event are written in one
transaction, so a command is applied exactly once even across a crash, and a command id seen
before is answered `duplicate` without touching anything. Anything wrong with a command (bad
JSON, unknown type, a field that fails validation, too large) is answered `rejected` with errors
that name the field; the gateway never stops for it.

msgspec reads the envelope straight from the bytes and leaves `data` raw until the type is known.
A bulk command (`price.set`, 100k items a night) has a msgspec decoder (its model's
`wire_decoder`) that checks its data in the same pass, four times faster than json plus pydantic;
every other command's data is checked by its pydantic model. The pydantic models are the
documented schema (docs/asyncapi.yaml): when msgspec refuses something, the model is asked why,
so that every bad field is named.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import outbox
from gateway.timeutil import epoch_ms, parse_rfc3339, utc_now

log = logging.getLogger(__name__)

ResultStatus = Literal["applied", "duplicate", "rejected"]

# Command types named in contract.md; those without a handler are answered "not supported".
CONTRACT_COMMANDS = (
    "price.set",
    "stock.set",
    "stock.adjust",
    "label.assign",
    "label.flash",
    "print",
    "order.reserve",
    "order.cancel",
    "order.collected",
)


class CommandModel(BaseModel):
    """Base of every command's `data` model: unknown fields are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # A bulk command sets this: its raw data is decoded by msgspec straight to what its handler
    # takes, and the model only documents it and explains refusals.
    wire_decoder: ClassVar[msgspec.json.Decoder[Any] | None] = None


class Envelope(BaseModel):
    """The command envelope of contract.md §3."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=64)
    sent_at: str | None = None
    data: dict[str, Any]


class WireEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """The envelope as the dispatcher decodes it: the rules of `Envelope` (the documented one), `data` raw."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    data: msgspec.Raw
    sent_at: str | None = None


_ENVELOPE = msgspec.json.Decoder(WireEnvelope)


@dataclass
class FieldError:
    """One problem with a command, naming the field (dotted path from the envelope)."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class CommandRejected(Exception):
    """Raised by a handler: the command is invalid as a whole; nothing it did is kept."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


@dataclass
class Outcome:
    """What a handler did: items applied and skipped, and per-item problems that did not reject it."""

    applied: int = 0
    skipped: int = 0
    errors: list[FieldError] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CommandContext:
    """What a handler may use: the open transaction, the time, and signals to publish after commit."""

    conn: sqlite3.Connection
    now: datetime
    command_id: str
    signals: list[object] = field(default_factory=list)

    def emit(self, kind: str, data: dict[str, Any]) -> int:
        """Create an event in this command's transaction."""
        return outbox.append(self.conn, kind, data, self.now)

    def after_commit(self, signal: object) -> None:
        """Publish `signal` on the internal bus once this command is committed."""
        self.signals.append(signal)


Handler = Callable[[CommandContext, Any], Outcome]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    model: type[CommandModel]
    handler: Handler


@dataclass
class CommandResult:
    """The `command_result` event's data, plus what to announce after commit."""

    command_id: str | None
    status: ResultStatus
    applied: int = 0
    skipped: int = 0
    errors: list[FieldError] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    signals: list[object] = field(default_factory=list)
    type: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "command_id": self.command_id,
            "status": self.status,
            "applied": self.applied,
            "skipped": self.skipped,
            "errors": [e.as_json() for e in self.errors],
        }
        if self.type is not None:
            data["type"] = self.type
        data.update(self.extra)
        return data


def _loc(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(command)"


def field_errors(exc: ValidationError, prefix: str) -> list[FieldError]:
    """Pydantic errors as FieldErrors whose paths start at the envelope (`data.items[3].price`)."""
    errors = []
    for item in exc.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "field required"
        elif (
            item["type"] == "string_type"
            and "price" in str(item["loc"][-1])
            and isinstance(item.get("input"), int | float)
        ):
            message = 'must be a string; money is a decimal string such as "12.99", never a JSON number'
        elif item["type"] == "value_error" and ": " in message and item["loc"]:
            # an item-level check that names its own field ("gtin: ...") reports it in the path
            field, _, rest = message.partition(": ")
            if field.isidentifier():
                errors.append(FieldError(_loc((*tuple(item["loc"]), field), prefix), rest))
                continue
        errors.append(FieldError(_loc(tuple(item["loc"]), prefix), message))
    return errors


_NAMED_FIELD = re.compile(r"field `([^`]+)`")


def msgspec_error(exc: msgspec.ValidationError, prefix: str) -> FieldError:
    """msgspec's one error ("Expected `str`, got `int` - at `$.items[0].price`") naming the field."""
    message, _, at = str(exc).partition(" - at `$")
    path = prefix + at.removesuffix("`")
    named = _NAMED_FIELD.search(message)  # "Object missing required field `sku`": the field is the name
    if named:
        path += ("." if path else "") + named.group(1)
    return FieldError(path.removeprefix(".") or "(command)", message)


def explain(model: type[BaseModel], value: object, exc: msgspec.ValidationError, prefix: str) -> list[FieldError]:
    """Why msgspec refused `value`: the documented model names every bad field; else msgspec's own error."""
    try:
        model.model_validate(value)
    except ValidationError as refused:
        return field_errors(refused, prefix)
    return [msgspec_error(exc, prefix)]


class Dispatcher:
    """The registry of command handlers and the one path every command takes."""

    def __init__(self, max_bytes: int = 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._specs: dict[str, CommandSpec] = {}

    def register(self, name: str, model: type[CommandModel], handler: Handler) -> None:
        """Handle command `name`: `handler` gets the data as `model` (or its `wire_decoder`) reads it."""
        if name in self._specs:
            raise ValueError(f"command {name} registered twice")
        self._specs[name] = CommandSpec(name, model, handler)

    @property
    def supported(self) -> list[str]:
        return sorted(self._specs)

    def handle(self, conn: sqlite3.Connection, payload: bytes, topic_name: str | None = None) -> CommandResult:
        """Validate and apply one command inside the caller's transaction; write its command_result."""
        now = utc_now()
        result = self._apply(conn, payload, topic_name, now)
        outbox.append(conn, "command_result", result.as_json(), now)
        if result.status == "rejected":
            log.warning(
                "command %s rejected: %s",
                result.command_id,
                "; ".join(f"{e.field}: {e.message}" for e in result.errors[:5]),
            )
        return result

    def _apply(self, conn: sqlite3.Connection, payload: bytes, topic_name: str | None, now: datetime) -> CommandResult:
        if len(payload) > self.max_bytes:
            return CommandResult(
                _sniff_id(payload),
                "rejected",
                errors=[FieldError("(command)", f"{len(payload)} bytes is over the limit of {self.max_bytes}")],
            )
        try:
            envelope = _ENVELOPE.decode(payload)
        except msgspec.ValidationError as exc:
            return self._bad_envelope(payload, exc)
        except msgspec.DecodeError as exc:
            reason = str(exc).removeprefix("JSON is malformed: ")
            return CommandResult(None, "rejected", errors=[FieldError("(command)", f"not valid JSON: {reason}")])
        result = CommandResult(envelope.id, "applied", type=envelope.type)
        seen = conn.execute("SELECT status FROM inbox WHERE command_id = ?", (envelope.id,)).fetchone()
        if seen is not None:
            result.status = "duplicate"
            return result
        errors = self._check_envelope(envelope, topic_name)
        spec = self._specs.get(envelope.type)
        if not errors and spec is None:
            known = ", ".join(sorted(set(CONTRACT_COMMANDS) | set(self._specs)))
            reason = (
                "not supported by this gateway"
                if envelope.type in CONTRACT_COMMANDS
                else f"unknown command type; expected one of {known}"
            )
            errors = [FieldError("type", reason)]
        if not errors and spec is not None:
            data, errors = self._decode_data(spec, envelope.data)
            if not errors:
                errors = self._run(conn, spec, data, envelope.id, now, result)
        if errors:
            result.status = "rejected"
            result.errors = errors
            result.applied = result.skipped = 0
            result.signals = []
        conn.execute(
            "INSERT INTO inbox (command_id, type, status, received_ms) VALUES (?, ?, ?, ?)",
            (envelope.id, envelope.type, result.status, epoch_ms(now)),
        )
        return result

    @staticmethod
    def _bad_envelope(payload: bytes, exc: msgspec.ValidationError) -> CommandResult:
        try:
            raw = msgspec.json.decode(payload)  # valid JSON of the wrong shape
        except msgspec.DecodeError:
            return CommandResult(None, "rejected", errors=[msgspec_error(exc, "")])
        if not isinstance(raw, dict):
            return CommandResult(None, "rejected", errors=[FieldError("(command)", "must be a JSON object")])
        command_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        return CommandResult(command_id, "rejected", errors=explain(Envelope, raw, exc, ""))

    @staticmethod
    def _decode_data(spec: CommandSpec, raw: msgspec.Raw) -> tuple[Any, list[FieldError]]:
        """The command's data as its handler takes it, or the errors naming each bad field."""
        decoder = spec.model.wire_decoder
        if decoder is not None:
            try:
                return decoder.decode(raw), []
            except msgspec.ValidationError as exc:
                return None, explain(spec.model, msgspec.json.decode(raw), exc, "data")
        try:
            return spec.model.model_validate(msgspec.json.decode(raw)), []
        except ValidationError as exc:
            return None, field_errors(exc, "data")

    @staticmethod
    def _check_envelope(envelope: WireEnvelope, topic_name: str | None) -> list[FieldError]:
        errors = []
        if topic_name is not None and topic_name != envelope.type:
            errors.append(FieldError("type", f'"{envelope.type}" does not match the topic\'s command "{topic_name}"'))
        if envelope.sent_at is not None:
            try:
                parse_rfc3339(envelope.sent_at)
            except ValueError as exc:
                errors.append(FieldError("sent_at", str(exc)))
        return errors

    @staticmethod
    def _run(
        conn: sqlite3.Connection,
        spec: CommandSpec,
        data: object,
        command_id: str,
        now: datetime,
        result: CommandResult,
    ) -> list[FieldError]:
        context = CommandContext(conn, now, command_id)
        conn.execute("SAVEPOINT command")
        try:
            outcome = spec.handler(context, data)
        except CommandRejected as exc:
            conn.execute("ROLLBACK TO command")
            conn.execute("RELEASE command")
            return exc.errors
        except Exception as exc:
            conn.execute("ROLLBACK TO command")
            conn.execute("RELEASE command")
            log.exception("command %s (%s) failed inside its handler", command_id, spec.name)
            return [FieldError("(command)", f"internal error while applying: {type(exc).__name__}: {exc}")]
        conn.execute("RELEASE command")
        result.applied, result.skipped = outcome.applied, outcome.skipped
        result.errors, result.extra, result.signals = outcome.errors, outcome.extra, context.signals
        return []


def _sniff_id(payload: bytes) -> str | None:
    """The id of an oversized command, if it can be read cheaply, so head office can match the answer."""
    head = payload[:512].decode("utf-8", "replace")
    marker = head.find('"id"')
    if marker < 0:
        return None
    rest = head[marker + 4 :].lstrip(" :")
    if rest.startswith('"'):
        end = rest.find('"', 1)
        if end > 0:
            return rest[1:end]
    return None
