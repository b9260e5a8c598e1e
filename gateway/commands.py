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

No input may leave a command unanswered: a message is acknowledged only once its answer is
committed, and one that is never answered is offered again forever (and twenty of them fill the
broker's window, so no later command arrives). A payload that breaks the decoder itself (a number
out of every range, an integer of thousands of digits, arrays nested thousands deep, bad UTF-8 deep
inside `data`) is answered `rejected` naming the field where that can be found, and with the id
when it can be read; only a failure of the state database leaves a command unanswered.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import outbox
from gateway.timeutil import epoch_ms, parse_rfc3339, rfc3339, utc_now

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
# JSON as plain values, for explaining a refusal: a number beyond float's range decodes as a Decimal.
_UNTYPED = msgspec.json.Decoder(float_hook=lambda text: _finite_float(text))
# Commands nest a few levels; a refusal for depth names the first place deeper than this.
MAX_DEPTH = 32


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
    answered: bool = True
    """False for a redelivery of a command answered before: no second `command_result`."""

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
        if isinstance(item.get("input"), Decimal):  # only out-of-range numbers decode as Decimal
            message = "number out of range"
        elif item["type"] == "extra_forbidden":
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


def explain(
    model: type[BaseModel], raw: bytes | msgspec.Raw, exc: msgspec.ValidationError, prefix: str
) -> list[FieldError]:
    """Why msgspec refused `raw`: the documented model names every bad field; else msgspec's own error."""
    try:
        value = loose_decode(raw)
    except ValueError as unreadable:
        return [FieldError(prefix or "(command)", f"not valid JSON: {unreadable}")]
    except RecursionError:
        return [too_deep(raw, prefix)]
    try:
        model.model_validate(value)
    except ValidationError as refused:
        return field_errors(refused, prefix)
    return [msgspec_error(exc, prefix)]


def _big_int(text: str) -> int | Decimal:
    return int(text) if len(text) <= 4000 else Decimal(text)  # int() refuses more than 4,300 digits


def _finite_float(text: str) -> float | Decimal:
    value = float(text)
    return value if value not in (float("inf"), float("-inf")) else Decimal(text)


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def loose_decode(raw: bytes | msgspec.Raw) -> Any:
    """JSON as plain values, numbers out of every range included (as Decimal), for naming what is wrong.

    Raises ValueError for bytes that are not JSON (bad UTF-8 included) and RecursionError for
    nesting deeper than the decoder goes.
    """
    try:
        return _UNTYPED.decode(raw)
    except msgspec.ValidationError:  # an integer longer than msgspec reads
        pass
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc).removeprefix("JSON is malformed: ")) from None
    try:
        return json.loads(bytes(raw), parse_int=_big_int, parse_float=_finite_float, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("invalid UTF-8") from None


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')


def _scan(payload: bytes, limit: int) -> tuple[str | None, str | None]:
    """One pass over the JSON's structure (no values decoded, no recursion): the path of the first
    value nested deeper than `limit` (None if none is), and the top-level "id" if it is a string."""
    stack: list[list[Any]] = []  # [is_object, key or index, expecting_key]
    top_id: str | None = None
    after_id = False
    for match in _TOKEN.finditer(payload):
        token = match.group()
        if token in (b"{", b"["):
            after_id = False
            stack.append([token == b"{", None if token == b"{" else 0, token == b"{"])
            if len(stack) > limit:  # named by its first three levels: the field, not 32 "[0]"
                return _path(stack[:3]), top_id
        elif token in (b"}", b"]"):
            if stack:
                stack.pop()
        elif token == b",":
            if stack:
                frame = stack[-1]
                if frame[0]:
                    frame[2] = True
                else:
                    frame[1] += 1
        elif token == b":":
            if stack:
                stack[-1][2] = False
        elif stack and stack[-1][0] and stack[-1][2]:  # an object's key
            try:
                stack[-1][1] = msgspec.json.decode(token, type=str)
            except msgspec.MsgspecError:
                stack[-1][1] = "?"
            after_id = len(stack) == 1 and stack[-1][1] == "id"
        elif after_id:
            after_id = False
            with_id = _string(token)
            if with_id is not None and 0 < len(with_id) <= 128:
                top_id = with_id
    return None, top_id


def _string(token: bytes) -> str | None:
    try:
        return msgspec.json.decode(token, type=str)
    except msgspec.MsgspecError:
        return None


def _path(stack: list[list[Any]]) -> str:
    parts = tuple(frame[1] for frame in stack if frame[1] is not None)
    return _loc(parts, "")


def too_deep(raw: bytes | msgspec.Raw, prefix: str) -> FieldError:
    """The error for JSON nested deeper than the decoder goes, at the first place deeper than MAX_DEPTH."""
    where, _ = _scan(bytes(raw), MAX_DEPTH)
    path = ".".join(part for part in (prefix, (where or "").removeprefix(".")) if part)
    return FieldError(path or "(command)", f"nested deeper than {MAX_DEPTH} levels")


def readable_id(payload: bytes) -> str | None:
    """The top-level "id" of a command the decoder could not read, if it is a string."""
    return _scan(payload, 1_000_000)[1]


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

    def handle(
        self, conn: sqlite3.Connection, payload: bytes, topic_name: str | None = None, *, redelivered: bool = False
    ) -> CommandResult:
        """Validate and apply one command inside the caller's transaction; write its command_result.

        `redelivered`: the broker offers this message again (MQTT DUP flag), so a previous run may have
        answered it already; if its id is in the inbox, nothing is written (`CommandResult.answered`
        is False) and the message is only acknowledged.
        """
        now = utc_now()
        try:
            result = self._apply(conn, payload, topic_name, now, redelivered)
        except sqlite3.Error:
            raise  # the database, not the command: not answered, so the broker offers it again
        except Exception as exc:  # no input may leave a command unanswered
            log.error("command could not be read: %r", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            why = FieldError("(command)", f"could not be read ({type(exc).__name__})")
            unread = CommandResult(readable_id(payload), "rejected", errors=[why])
            result = self._conclude(conn, unread, now, redelivered)
        if not result.answered:
            return result
        outbox.append(conn, "command_result", result.as_json(), now)
        if result.status == "rejected":
            log.warning(
                "command %s rejected: %s",
                result.command_id,
                "; ".join(f"{e.field}: {e.message}" for e in result.errors[:5]),
            )
        return result

    def _apply(
        self, conn: sqlite3.Connection, payload: bytes, topic_name: str | None, now: datetime, redelivered: bool
    ) -> CommandResult:
        envelope = refused = None
        if len(payload) > self.max_bytes:
            too_big = FieldError("(command)", f"{len(payload)} bytes is over the limit of {self.max_bytes}")
            refused = CommandResult(_sniff_id(payload), "rejected", errors=[too_big])
        else:
            try:
                envelope = _ENVELOPE.decode(payload)
            except msgspec.ValidationError as exc:
                refused = self._bad_envelope(payload, exc)
            except msgspec.DecodeError as exc:
                reason = str(exc).removeprefix("JSON is malformed: ")
                bad_json = FieldError("(command)", f"not valid JSON: {reason}")
                refused = CommandResult(readable_id(payload), "rejected", errors=[bad_json])
            except RecursionError:
                refused = CommandResult(readable_id(payload), "rejected", errors=[too_deep(payload, "")])
        if envelope is None:
            assert refused is not None
            return self._conclude(conn, refused, now, redelivered)
        result = CommandResult(envelope.id, "applied", type=envelope.type)
        seen = self._seen(conn, envelope.id, redelivered)
        if seen is not None:
            return seen
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
        _record(conn, result, now)
        return result

    @staticmethod
    def _seen(conn: sqlite3.Connection, command_id: str, redelivered: bool) -> CommandResult | None:
        """The answer to a command id already in the inbox: none to a redelivery, else `duplicate`
        carrying the first outcome (`first`)."""
        row = conn.execute("SELECT type, status, outcome FROM inbox WHERE command_id = ?", (command_id,)).fetchone()
        if row is None:
            return None
        kind = None if row[0] == UNREADABLE else str(row[0])
        first = json.loads(row[2]) if row[2] else {"status": row[1]}
        return CommandResult(command_id, "duplicate", type=kind, extra={"first": first}, answered=not redelivered)

    def _conclude(
        self, conn: sqlite3.Connection, refused: CommandResult, now: datetime, redelivered: bool
    ) -> CommandResult:
        """A command refused before its envelope could be read: answered once, recorded under its id
        when that much could be read (so it is not answered again, even after a crash)."""
        if refused.command_id is None:
            return refused
        seen = self._seen(conn, refused.command_id, redelivered)
        if seen is not None:
            return seen
        _record(conn, refused, now)
        return refused

    @staticmethod
    def _bad_envelope(payload: bytes, exc: msgspec.ValidationError) -> CommandResult:
        try:
            raw = loose_decode(payload)  # JSON of the wrong shape, or with a number out of range
        except ValueError:
            return CommandResult(readable_id(payload), "rejected", errors=[msgspec_error(exc, "")])
        except RecursionError:
            return CommandResult(readable_id(payload), "rejected", errors=[too_deep(payload, "")])
        if not isinstance(raw, dict):
            return CommandResult(None, "rejected", errors=[FieldError("(command)", "must be a JSON object")])
        command_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        return CommandResult(command_id, "rejected", errors=explain(Envelope, payload, exc, ""))

    @staticmethod
    def _decode_data(spec: CommandSpec, raw: msgspec.Raw) -> tuple[Any, list[FieldError]]:
        """The command's data as its handler takes it, or the errors naming each bad field."""
        decoder = spec.model.wire_decoder
        if decoder is not None:
            try:
                return decoder.decode(raw), []
            except msgspec.ValidationError as exc:
                return None, explain(spec.model, raw, exc, "data")
            except msgspec.DecodeError as exc:  # the envelope's pass skips data's strings unchecked
                return None, [FieldError("data", f"not valid JSON: {str(exc).removeprefix('JSON is malformed: ')}")]
            except RecursionError:
                return None, [too_deep(raw, "data")]
        try:
            value = loose_decode(raw)
        except ValueError as exc:
            return None, [FieldError("data", f"not valid JSON: {exc}")]
        except RecursionError:
            return None, [too_deep(raw, "data")]
        try:
            return spec.model.model_validate(value), []
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


# The inbox's type for a command whose type could not be read.
UNREADABLE = "(unreadable)"
# A duplicate's `first` keeps this many of the first answer's errors.
_FIRST_ERRORS = 20


def _record(conn: sqlite3.Connection, result: CommandResult, now: datetime) -> None:
    """The command's id in the inbox with its first outcome, in the transaction of its effects."""
    first: dict[str, Any] = {
        "status": result.status,
        "applied": result.applied,
        "skipped": result.skipped,
        "errors": [e.as_json() for e in result.errors[:_FIRST_ERRORS]],
        "at": rfc3339(now),
    }
    if len(result.errors) > _FIRST_ERRORS:
        first["errors_total"] = len(result.errors)
    conn.execute(
        "INSERT INTO inbox (command_id, type, status, received_ms, outcome) VALUES (?, ?, ?, ?, ?)",
        (result.command_id, result.type or UNREADABLE, result.status, epoch_ms(now), outbox.dumps(first)),
    )


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
