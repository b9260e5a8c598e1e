"""`store-gateway hq`: the head-office side, for operations by hand and as a peer in tests.

push-prices  split a price CSV into `price.set` commands, send them, wait for every answer
command      send one command and print its `command_result`
watch        print every event of a store as one JSON line
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import json
import re
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway import fleet
from gateway.commands import field_errors
from gateway.config import BrokerAddress, check_broker_url
from gateway.pricing import InvalidItem, convert_item, price_problems
from gateway.timeutil import rfc3339, utc_now
from gateway.topics import group_command_topic, store_command_topic, topic_id_problem

CSV_REQUIRED = ("sku", "price", "currency")
CSV_OPTIONAL = ("gtin", "name", "promo_price", "promo_until", "valid_from", "version", "net_quantity", "net_unit")


class HqError(Exception):
    """A problem the operator must fix; `code` is the exit code (2 bad usage or input, 1 runtime)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class BrokerOptions:
    url: str
    prefix: str = "retail"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    def client(self) -> aiomqtt.Client:
        check_topic_id("--prefix", self.prefix)
        try:
            check_broker_url(self.url)
        except ValueError as exc:
            raise HqError(f"--broker: {exc}", 2) from None
        broker = BrokerAddress.parse(self.url)
        context = None
        if broker.tls:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file and self.key_file:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        password = self.password_file.read_text().strip() if self.password_file else None
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=f"hq-{uuid.uuid4().hex[:12]}",
            username=self.username,
            password=password,
            tls_context=context,
            max_inflight_messages=100,
            timeout=30,
        )
        client.pending_calls_threshold = 1000
        return client

    def store_topic(self, store: str, rest: str) -> str:
        return f"{self.prefix}/stores/{store}/{rest}"


def check_topic_id(option: str, value: str) -> str:
    """A store id, group or prefix given on the command line, refused (exit 2) if it cannot be a topic level."""
    problem = topic_id_problem(value)
    if problem is not None:
        raise HqError(f"{option}: {problem}", 2)
    return value


def envelope(name: str, data: dict[str, Any], command_id: str | None = None) -> dict[str, Any]:
    return {"id": command_id or uuid.uuid4().hex, "type": name, "sent_at": rfc3339(utc_now()), "data": data}


# -- price files -----------------------------------------------------------------------------


# Columns that hold a decimal number: with ';' or tab between columns a decimal comma is allowed.
DECIMAL_COLUMNS = ("price", "promo_price", "net_quantity")
_SEPARATORS = {",": "','", ";": "';'", "\t": "tab"}
# "1,20", "1 234,50" (space, no-break or narrow no-break space between thousands), "-0,5"
_DECIMAL_COMMA = re.compile(r"^-?\d{1,3}(?:[ \u00a0\u202f]\d{3})*(?:,\d+)?$|^-?\d+(?:,\d+)?$")


@dataclass(frozen=True)
class CsvDialect:
    """How a price file is written: what Excel or LibreOffice in France make differs from the contract's."""

    encoding: str
    separator: str
    crlf: bool
    decimal_comma: bool

    def describe(self) -> str:
        return (
            f"{self.encoding}, columns separated by {_SEPARATORS[self.separator]}, "
            f"decimal {'comma' if self.decimal_comma else 'point'}, {'CRLF' if self.crlf else 'LF'} line ends"
        )


@dataclass
class PriceFile:
    """The items of a price CSV, checked, and the dialect it was read in."""

    items: list[dict[str, Any]]
    dialect: CsvDialect


def _decode(path: Path) -> tuple[str, str]:
    """The file's text and its encoding: UTF-8 (with or without BOM) or else Windows-1252."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HqError(f"{path}: {exc.strerror}", 2) from None
    if raw.startswith(codecs.BOM_UTF8):
        try:
            return raw[len(codecs.BOM_UTF8) :].decode("utf-8"), "UTF-8 with BOM"
        except UnicodeDecodeError as exc:
            raise HqError(f"{path}: starts with a UTF-8 BOM but byte {exc.start + 3} is not UTF-8", 2) from None
    try:
        return raw.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError as exc:
        raise HqError(
            f"{path}: neither UTF-8 nor Windows-1252 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as CSV UTF-8",
            2,
        ) from None


def _separator(path: Path, header: str) -> str:
    """The one separator with which the header line names the required columns."""
    fits = []
    for separator in _SEPARATORS:
        columns = {c.strip() for c in next(csv.reader([header], delimiter=separator), [])}
        if all(c in columns for c in CSV_REQUIRED):
            fits.append(separator)
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise HqError(
            f"{path}: the first line must name the columns {', '.join(CSV_REQUIRED)} separated by ',' or ';' "
            f"(it is: {header[:80]!r})",
            2,
        )
    raise HqError(
        f"{path}: ambiguous: its first line reads as columns with {' and with '.join(_SEPARATORS[f] for f in fits)}; "
        "use one separator",
        2,
    )


def _decimal(value: str, separator: str) -> tuple[str, bool]:
    """A decimal written with a comma as the contract writes it (a point); (value, had a comma).

    Raises ValueError, never guessing: "1,20" between commas could be 1.20 or 1,200 (an English
    thousands separator), and "1.234,50" mixes both marks.
    """
    if "," not in value:
        return value, False
    if separator == ",":
        raise ValueError(
            f'"{value}" has a decimal comma in a comma-separated file: write {value.replace(",", ".")}, '
            "or separate the columns with ';'"
        )
    if "." in value or not _DECIMAL_COMMA.match(value):
        raise ValueError(f'"{value}" is ambiguous (it mixes "." and "," or groups digits oddly); write it like 1234,50')
    return re.sub(r"[ \u00a0\u202f]", "", value).replace(",", "."), True


def read_price_csv(path: Path, version: int) -> PriceFile:
    """Read and check a price CSV; every bad line is reported (`line N: field: message`), none sent.

    It reads what spreadsheets write: ',' or ';' (or tab) between columns, found from the header line;
    UTF-8 with or without BOM, else Windows-1252; CRLF or LF; with ';' or tab, decimal commas.
    """
    text, encoding = _decode(path)
    header = text.split("\n", 1)[0].rstrip("\r")
    separator = _separator(path, header)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in CSV_REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown:
        wrong = [f"missing column {c}" for c in missing] + [f"unknown column {c}" for c in unknown]
        raise HqError(f"{path}: " + "; ".join(wrong) + f" (columns: {', '.join(CSV_REQUIRED + CSV_OPTIONAL)})", 2)
    items: list[dict[str, Any]] = []
    converted, lines = [], []
    problems: list[tuple[int, str]] = []  # line, "field: message"
    commas = False
    for row in reader:
        line = reader.line_num
        if None in row:  # more values than columns: a decimal comma between commas, or a stray separator
            extra = len(row[None])
            problems.append(
                (
                    line,
                    f"{len(columns) + extra} values for {len(columns)} columns (a decimal comma in a "
                    "comma-separated file? write 1.20, or separate the columns with ';')",
                )
            )
            continue
        item: dict[str, Any] = {k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()}
        bad = False
        for name in DECIMAL_COLUMNS:
            if name in item:
                try:
                    item[name], comma = _decimal(item[name], separator)
                    commas = commas or comma
                except ValueError as exc:
                    problems.append((line, f"{name}: {exc}"))
                    bad = True
        if bad:
            continue
        try:
            item["version"] = int(item["version"]) if "version" in item else version
        except ValueError:
            problems.append((line, "version: not a whole number"))
            continue
        try:
            converted.append(convert_item(item))
        except ValidationError as exc:
            problems += [(line, f"{e.field}: {e.message}") for e in field_errors(exc, "")]
            continue
        except InvalidItem as exc:
            problems.append((line, str(exc)))
            continue
        items.append(item)
        lines.append(line)
    # the values of every line in one check: a column at a time, as the gateway checks a price.set
    problems += [(lines[index], f"{field}: {message}") for index, field, message in price_problems(converted)]
    if problems:
        problems.sort(key=lambda problem: problem[0])
        shown = [f"line {line}: {text}" for line, text in problems[:20]]
        shown += [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        bad_lines = len({line for line, _ in problems})
        raise HqError(f"{path}: {bad_lines} bad lines, nothing sent:\n" + "\n".join(shown), 2)
    if not items:
        raise HqError(f"{path}: no price lines", 2)
    return PriceFile(items, CsvDialect(encoding, separator, "\r\n" in text, commas))


def chunks(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class PushSummary:
    commands: int = 0
    answered: int = 0
    applied: int = 0
    skipped: int = 0
    scheduled: int = 0
    duplicate: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


async def push_prices(
    broker: BrokerOptions,
    store: str,
    path: Path,
    *,
    chunk_size: int = 1000,
    timeout_s: float = 120.0,
    out: TextIO = sys.stdout,
    progress: bool = True,
    db: str | None = None,
) -> PushSummary:
    """Send a price file as `price.set` commands and wait for every `command_result`."""
    check_topic_id("--store", store)
    price_file = read_price_csv(path, version=int(time.time() * 1000))
    items = price_file.items
    print(f"{path}: read as {price_file.dialect.describe()}", file=out)
    commands = [envelope("price.set", {"items": chunk}) for chunk in chunks(items, chunk_size)]
    if db is not None:
        topic = store_command_topic(broker.prefix, store, "price.set")
        await fleet.record_commands(db, commands, topic, store=store, group=None)
    pending = {c["id"]: len(c["data"]["items"]) for c in commands}
    summary = PushSummary(commands=len(commands))
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        sent_bar = bar.add_task("sent    ", total=len(items))
        done_bar = bar.add_task("answered", total=len(items))
        async with broker.client() as client:
            await client.subscribe(broker.store_topic(store, "events/command_result"), qos=1)
            state = await _store_state(client, broker.store_topic(store, "gateway/state"))
            if state is None:
                print(f"hq: warning: {_never_connected(broker, store)}", file=sys.stderr)
            topic = store_command_topic(broker.prefix, store, "price.set")
            for command in commands:
                await client.publish(topic, json.dumps(command).encode(), qos=1)
                bar.advance(sent_bar, len(command["data"]["items"]))
            try:
                async with asyncio.timeout(timeout_s):
                    async for message in client.messages:
                        result = json.loads(bytes(message.payload)).get("data", {})
                        count = pending.pop(result.get("command_id"), None)
                        if count is None:
                            continue
                        _tally(summary, result)
                        bar.advance(done_bar, count)
                        if not pending:
                            break
            except TimeoutError:
                pass
    if pending:
        why = (
            _never_connected(broker, store)
            if state is None
            else "the broker holds them and the gateway applies them when it is back online"
        )
        print(f"{len(pending)} of {len(commands)} commands not answered within {timeout_s:g} s: {why}.", file=out)
    print(
        f"{len(items)} prices in {len(commands)} commands: applied {summary.applied} "
        f"(scheduled {summary.scheduled}), skipped {summary.skipped} as stale, "
        f"rejected commands {summary.rejected}, duplicates {summary.duplicate}",
        file=out,
    )
    for line in summary.errors[:20]:
        print(f"  {line}", file=out)
    return summary


def _tally(summary: PushSummary, result: dict[str, Any]) -> None:
    summary.answered += 1
    status = result.get("status")
    if status == "rejected":
        summary.rejected += 1
        for error in result.get("errors", []):
            summary.errors.append(f"{result.get('command_id')}: {error.get('field')}: {error.get('message')}")
    elif status == "duplicate":
        summary.duplicate += 1
    summary.applied += int(result.get("applied", 0))
    summary.skipped += int(result.get("skipped", 0))
    summary.scheduled += int(result.get("scheduled", 0))


# -- one command -----------------------------------------------------------------------------


async def send_command(
    broker: BrokerOptions,
    name: str,
    data_text: str,
    *,
    store: str | None,
    group: str | None,
    command_id: str | None = None,
    timeout_s: float = 30.0,
    wait: bool = True,
    out: TextIO = sys.stdout,
    db: str | None = None,
) -> dict[str, Any] | None:
    """Send one command; for a store, wait for and print its `command_result`."""
    try:
        data = json.loads(data_text)
    except json.JSONDecodeError as exc:
        raise HqError(f"JSON: not valid JSON: {exc}", 2) from None
    if not isinstance(data, dict):
        raise HqError("JSON: the command's data must be a JSON object", 2)
    command = envelope(name, data, command_id)
    if group is not None:
        topic = group_command_topic(broker.prefix, check_topic_id("--group", group), name)
    elif store is not None:
        topic = store_command_topic(broker.prefix, check_topic_id("--store", store), name)
    else:
        raise HqError("give --store ID or --group NAME", 2)
    if db is not None:
        await fleet.record_commands(db, [command], topic, store=store, group=group)
    async with broker.client() as client:
        state: dict[str, Any] | None = None
        if store is not None:
            if wait:
                await client.subscribe(broker.store_topic(store, "events/command_result"), qos=1)
            state = await _store_state(client, broker.store_topic(store, "gateway/state"))
            if state is None:
                print(f"hq: warning: {_never_connected(broker, store)}", file=sys.stderr)
        await client.publish(topic, json.dumps(command).encode(), qos=1)
        if store is None or not wait:
            print(json.dumps({"sent": command["id"], "topic": topic}), file=out)
            return None
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    event = json.loads(bytes(message.payload))
                    if event.get("data", {}).get("command_id") == command["id"]:
                        print(json.dumps(event["data"], ensure_ascii=False), file=out)
                        return dict(event["data"])
        except TimeoutError:
            if state is None:
                why = _never_connected(broker, store)
            elif state.get("state") == "online":
                why = f"store {store} says it is online but has not answered yet"
            else:
                why = (
                    f"store {store} is offline: the broker keeps the command in the store's session and the "
                    "gateway applies it when it connects again"
                )
            raise HqError(f"no command_result for {command['id']} within {timeout_s:g} s; {why}", 1) from None
    return None


def _never_connected(broker: BrokerOptions, store: str) -> str:
    return (
        f"store {store} has never connected to this broker (no retained state on "
        f"{broker.store_topic(store, 'gateway/state')}): the broker keeps commands only for a store whose session "
        "it knows, so this command may never be delivered; check the store id and --prefix"
    )


async def _store_state(client: aiomqtt.Client, topic: str, wait_s: float = 2.0) -> dict[str, Any] | None:
    """The store's retained gateway state (`online`/`offline`), or None if it never connected."""
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(wait_s):  # a retained message comes right after the SUBACK
            async for message in client.messages:
                if str(message.topic) == topic and message.payload:
                    state = json.loads(bytes(message.payload))
                    return state if isinstance(state, dict) else None
    except TimeoutError:
        pass
    return None


# -- watch -----------------------------------------------------------------------------------


async def watch(
    broker: BrokerOptions,
    store: str,
    *,
    kinds: list[str] | None = None,
    count: int | None = None,
    timeout_s: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print every event of `store` (or of every store with `*`) as one JSON line; return how many."""
    store_filter = "+" if store == "*" else check_topic_id("--store", store)
    seen = 0
    async with broker.client() as client:
        if kinds:
            for kind in kinds:
                await client.subscribe(broker.store_topic(store_filter, f"events/{kind}"), qos=1)
        else:
            await client.subscribe(broker.store_topic(store_filter, "events/#"), qos=1)
        print(json.dumps({"watching": broker.store_topic(store_filter, "events/#")}), file=sys.stderr, flush=True)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    payload = bytes(message.payload)
                    try:
                        line = json.dumps(json.loads(payload), ensure_ascii=False, separators=(",", ":"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        line = json.dumps({"topic": str(message.topic), "raw": payload.decode("utf-8", "replace")})
                    print(line, file=out, flush=True)
                    seen += 1
                    if count is not None and seen >= count:
                        break
        except TimeoutError:
            pass
    return seen


# -- group pushes, followed store by store -----------------------------------------------------


async def resolve_stores(stores_file: Path | None, db: str | None) -> list[str]:
    """The stores a group push follows: `--stores FILE`, else the stores the ingest has seen (`--db`)."""
    try:
        if stores_file is not None:
            return fleet.read_store_list(stores_file)
        if db is not None:
            return await fleet.stores_seen(db)
    except fleet.FleetError as exc:
        raise HqError(str(exc), 2) from None
    raise HqError("--group: give --stores FILE or --db DSN, the stores to follow", 2)


async def push_to_group(
    broker: BrokerOptions,
    group: str,
    commands: list[dict[str, Any]],
    stores: list[str],
    *,
    db: str | None = None,
    timeout_s: float = 120.0,
    out: TextIO = sys.stdout,
    progress: bool = True,
) -> fleet.GroupReport:
    """Publish `commands` once on the group's topic, then follow every store's answers and print the table."""
    topic = group_command_topic(broker.prefix, check_topic_id("--group", group), commands[0]["type"])
    if db is not None:
        await fleet.record_commands(db, commands, topic, store=None, group=group)
    async with broker.client() as client:
        await client.subscribe(broker.store_topic("+", "events/command_result"), qos=1)
        for command in commands:
            await client.publish(topic, json.dumps(command).encode(), qos=1)
        report = await fleet.follow(
            client,
            prefix=broker.prefix,
            group=group,
            stores=stores,
            commands=commands,
            timeout_s=timeout_s,
            progress=progress,
        )
    report.render(out)
    return report


async def push_prices_to_group(
    broker: BrokerOptions,
    group: str,
    path: Path,
    stores: list[str],
    *,
    chunk_size: int = 1000,
    **options: Any,
) -> fleet.GroupReport:
    """A price file as `price.set` commands on the group's topic, followed store by store."""
    price_file = read_price_csv(path, version=int(time.time() * 1000))
    print(f"{path}: read as {price_file.dialect.describe()}", file=options.get("out", sys.stdout))
    commands = [envelope("price.set", {"items": chunk}) for chunk in chunks(price_file.items, chunk_size)]
    return await push_to_group(broker, group, commands, stores, **options)


async def command_to_group(
    broker: BrokerOptions,
    group: str,
    name: str,
    data_text: str,
    stores: list[str],
    *,
    command_id: str | None = None,
    **options: Any,
) -> fleet.GroupReport:
    """One command on the group's topic, followed store by store."""
    try:
        data = json.loads(data_text)
    except json.JSONDecodeError as exc:
        raise HqError(f"JSON: not valid JSON: {exc}", 2) from None
    if not isinstance(data, dict):
        raise HqError("JSON: the command's data must be a JSON object", 2)
    return await push_to_group(broker, group, [envelope(name, data, command_id)], stores, **options)
