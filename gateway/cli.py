"""The `store-gateway` command (contract.md §1). Exit codes: 0 success, 1 runtime failure, 2 bad usage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.config import Config, ConfigError, load_config, summary

if TYPE_CHECKING:
    from gateway.fleet import GroupReport


def _load(path: Path, *, secrets: bool = True) -> Config:
    try:
        return load_config(path, secrets=secrets)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr; under systemd (journald adds its own timestamps) without the time."""
    journald = "JOURNAL_STREAM" in os.environ
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(levelname)s %(name)s: %(message)s" if journald else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiomqtt", "escpos", "bleak", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(config.logging.level)
    from gateway import daemon
    from gateway.db import SchemaTooNew, StateDamaged
    from gateway.instance import LockError
    from gateway.storage import StorageFull

    try:
        return asyncio.run(daemon.run(config))
    except (LockError, StateDamaged, SchemaTooNew, StorageFull) as exc:  # StorageFull: no database to start on
        print(f"store-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.path)
    print(summary(config))
    print("configuration OK")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway import status
    from gateway.db import StateDamaged

    config = _load(args.config, secrets=False)  # a technician's shell has not the daemon's secrets
    zone = ZoneInfo(config.store.timezone)
    while True:
        try:
            report = status.collect(config.state.path, config)
        except FileNotFoundError as exc:
            print(f"state.path: {exc}", file=sys.stderr)
            return 1
        except StateDamaged as exc:
            print(f"store-gateway: {exc}", file=sys.stderr)
            return 1
        if args.json:
            # one document; with --watch one per line (JSON Lines), so a script can read them as they come
            print(status.render_json(report, indent=None if args.watch else 2), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[2J", end="")  # clear the screen, as watch(1) does
            print(status.render_text(report, zone), flush=True)
        if not args.watch:
            return 0
        if not sys.stdout.isatty() and not args.json:
            print(flush=True)  # a blank line between reports in a log or a pipe
        time.sleep(args.interval)


def _broker(args: argparse.Namespace) -> object:
    from gateway.hq import BrokerOptions

    return BrokerOptions(
        url=args.broker,
        prefix=args.prefix,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        username=args.username,
        password_file=args.password_file,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    """`hq ingest`: its libraries come with the extra `store-gateway[hq]`, loaded only here."""
    try:
        from gateway.ingest import sources, worker
    except ModuleNotFoundError as exc:
        print(f"hq ingest: {exc.name} is missing; install the extra: pip install 'store-gateway[hq]'", file=sys.stderr)
        return 1
    setup_logging("INFO")
    source_options = sources.SourceOptions(
        url=args.broker,
        prefix=args.prefix,
        batch=args.batch,
        share=args.share,
        client_id=args.client_id,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        username=args.username,
        password_file=args.password_file,
    )
    options = worker.IngestOptions(
        db=args.db, batch=args.batch, once=args.once, idle_s=args.idle, progress_s=args.progress
    )
    try:
        return asyncio.run(worker.ingest(source_options, options))
    except (ValueError, sources.SourceError) as exc:
        print(f"hq ingest: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"hq ingest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def _push_prices_to_group(args: argparse.Namespace, broker: object) -> GroupReport:
    from gateway import hq

    assert isinstance(broker, hq.BrokerOptions)
    stores = await hq.resolve_stores(args.stores, args.db)
    return await hq.push_prices_to_group(
        broker, args.group, args.file, stores, chunk_size=args.chunk, db=args.db, timeout_s=args.timeout,
        progress=not args.quiet,
    )  # fmt: skip


async def _command_to_group(args: argparse.Namespace, broker: object) -> GroupReport:
    from gateway import hq

    assert isinstance(broker, hq.BrokerOptions)
    stores = await hq.resolve_stores(args.stores, args.db)
    return await hq.command_to_group(
        broker, args.group, args.name, args.json, stores, command_id=args.id, db=args.db, timeout_s=args.timeout,
        progress=not args.quiet,
    )  # fmt: skip


def cmd_hq(args: argparse.Namespace) -> int:
    if args.hq_command == "ingest":
        return cmd_ingest(args)
    import aiomqtt

    from gateway import fleet, hq

    broker = _broker(args)
    assert isinstance(broker, hq.BrokerOptions)
    try:
        if args.hq_command == "push-prices":
            if args.group is not None:
                report = asyncio.run(_push_prices_to_group(args, broker))
                return 0 if report.ok else 1
            result = asyncio.run(
                hq.push_prices(
                    broker,
                    args.store,
                    args.file,
                    chunk_size=args.chunk,
                    timeout_s=args.timeout,
                    progress=not args.quiet,
                    db=args.db,
                )
            )
            return 0 if result.rejected == 0 and result.answered == result.commands else 1
        if args.hq_command == "command":
            if args.group is not None and (args.stores is not None or args.db is not None) and not args.no_wait:
                report = asyncio.run(_command_to_group(args, broker))
                return 0 if report.ok else 1
            answer = asyncio.run(
                hq.send_command(
                    broker,
                    args.name,
                    args.json,
                    store=args.store,
                    group=args.group,
                    command_id=args.id,
                    timeout_s=args.timeout,
                    wait=not args.no_wait,
                    db=args.db,
                )
            )
            return 1 if answer is not None and answer.get("status") == "rejected" else 0
        if args.hq_command == "watch":
            asyncio.run(hq.watch(broker, args.store, kinds=args.kind, count=args.count, timeout_s=args.timeout))
            return 0
    except fleet.FleetError as exc:
        print(f"hq: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"hq: {exc}", file=sys.stderr)
        return 1
    except hq.HqError as exc:
        print(f"hq: {exc}", file=sys.stderr)
        return exc.code
    except aiomqtt.MqttError as exc:
        print(f"hq: broker {args.broker}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 2


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("gateway.demo")
    except ModuleNotFoundError:
        print("demo: not part of this build yet", file=sys.stderr)
        return 1
    return int(demo.main(args))


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples."""


def _sub(sub: Any, name: str, summary: str, description: str, examples: list[str], doc: str) -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) + f"\n\nread: {doc}"
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=textwrap.fill(description, 90), epilog=epilog, formatter_class=_Help
    )
    return parser


def _group_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stores", type=Path, metavar="FILE", help="--group: the stores to follow, one id a line")
    parser.add_argument(
        "--db", metavar="DSN", help="record what is sent in PostgreSQL; --group: follow the stores the ingest has seen"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="store-gateway",
        description="Store-side daemon: shelf labels, printers, scanners, sensors, a local price and stock "
        "cache, and a durable MQTT link to head office.",
        epilog="Each command has its own --help with examples. Exit codes: 0 success, 1 runtime failure, "
        "2 bad usage or configuration. Read: README.md, docs/operations.md, docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"store-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _sub(
        sub,
        "run",
        "run the daemon in the foreground",
        "Run the gateway in the foreground, logging to stderr (journald takes it under systemd). "
        "SIGTERM or Ctrl-C stops it cleanly within 10 s. Only one gateway may run on a state database: "
        "a second one exits 1 naming the first.",
        ["store-gateway run --config /etc/store-gateway/gateway.toml"],
        "docs/operations.md (install, systemd, logs), docs/configuration.md (every key)",
    )
    run.add_argument("--config", type=Path, required=True, metavar="PATH", help="the TOML config file (required)")
    run.set_defaults(func=cmd_run)

    check = _sub(
        sub,
        "check-config",
        "validate a config file",
        "Validate a config file without starting anything: a one-screen summary and exit 0, or one line "
        "per problem (`dotted.key: message`) on stderr and exit 2.",
        ["store-gateway check-config /etc/store-gateway/gateway.toml", "store-gateway check-config example.toml"],
        "docs/configuration.md",
    )
    check.add_argument("path", type=Path, metavar="PATH", help="the TOML config file to check")
    check.set_defaults(func=cmd_check_config)

    status = _sub(
        sub,
        "status",
        "show the gateway's state from its database",
        "Show the gateway's state, read from its state database without disturbing it (running or not): "
        "whether it runs, the uplink (and why it is offline, when it retries), the outbox, every device, "
        "the catalogue, labels, print jobs, shelves and open orders.",
        [
            "store-gateway status --config /etc/store-gateway/gateway.toml",
            "store-gateway status --config /etc/store-gateway/gateway.toml --watch",
            "store-gateway status --config /etc/store-gateway/gateway.toml --json | jq .uplink",
        ],
        "docs/operations.md (section status)",
    )
    status.add_argument("--config", type=Path, required=True, metavar="PATH", help="the TOML config file (required)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts (with --watch: one line each)")
    status.add_argument("--watch", action="store_true", help="print it again every --interval seconds until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between reports (default: 2)"
    )
    status.set_defaults(func=cmd_status)

    demo = _sub(
        sub,
        "demo",
        "run the whole gateway with simulated devices and its own broker",
        "Run the whole gateway on this machine with no hardware: simulated label station (PNG files), "
        "receipt printer, price-check scanner and shelf sensor, and a broker of its own (mosquitto if "
        "installed, else an embedded one). It prints the commands to try next. Ctrl-C stops everything.",
        [
            "store-gateway demo",
            "store-gateway demo --dir /tmp/demo",
            "store-gateway demo --dir /tmp/demo scan 3017620422003   (while the demo runs)",
        ],
        "README.md (See it work)",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("store-gateway-demo"),
        metavar="DIR",
        help="where state, labels and prints go (default: ./store-gateway-demo)",
    )
    demo.add_argument(
        "demo_command",
        nargs="*",
        metavar="scan CODE",
        help="type CODE into the scanner of the demo running in --dir, and print its answer",
    )
    demo.set_defaults(func=cmd_demo)

    hq = _sub(
        sub,
        "hq",
        "head-office side tool: push prices, send commands, watch events",
        "The head-office side of the MQTT link, for operations by hand: push a price file, send one "
        "command, watch a store's events; and `ingest`, every store's events into PostgreSQL. The broker "
        "options come before the sub-command.",
        [
            "store-gateway hq --broker mqtt://127.0.0.1:1883 watch --store 0042",
            "store-gateway hq --broker mqtts://mqtt.hq.example:8883 --ca-file ca.pem "
            "--cert-file hq.pem --key-file hq.key push-prices --store 0042 prices.csv",
        ],
        "docs/mqtt-api.md (topics, commands, events)",
    )
    hq.add_argument(
        "--broker",
        required=True,
        metavar="URL",
        help="mqtt://host:port or mqtts://host:port; ingest also amqp://, amqps://, nats:// (required)",
    )
    hq.add_argument("--prefix", default="retail", help="the stores' uplink.topic_prefix (default: retail)")
    hq.add_argument("--ca-file", type=Path, metavar="PEM", help="mqtts: the broker's CA (default: the system's CAs)")
    hq.add_argument("--cert-file", type=Path, metavar="PEM", help="mqtts: client certificate (with --key-file)")
    hq.add_argument("--key-file", type=Path, metavar="PEM", help="mqtts: the client certificate's key")
    hq.add_argument("--username", help="MQTT user name (default: none)")
    hq.add_argument("--password-file", type=Path, metavar="PATH", help="a file holding the MQTT password")
    hq_sub = hq.add_subparsers(dest="hq_command", required=True, metavar="HQ_COMMAND")
    push = _sub(
        hq_sub,
        "push-prices",
        "send a price CSV as price.set commands",
        "Send a price CSV to a store as price.set commands and wait for every answer (or, with --group, "
        "publish it once to a group and then report every store: applied, rejected, no answer). Columns: sku, price, "
        "currency, and optionally gtin, name, promo_price, promo_until, valid_from, version, net_quantity, "
        "net_unit. Comma- or semicolon-separated, UTF-8 (with or without BOM) or Windows-1252, as Excel "
        "and LibreOffice write them; with ';' a decimal comma (1,20) is read as 1.20. Every bad line is "
        "reported and nothing is sent. Without a version column every item gets the push's time.",
        [
            "store-gateway hq --broker mqtt://127.0.0.1:1883 push-prices --store 0042 prices.csv",
            "store-gateway hq --broker mqtt://127.0.0.1:1883 push-prices --store 0042 --chunk 500 prix.csv",
            "store-gateway hq --broker mqtt://127.0.0.1:1883 push-prices --group fr --stores fr-stores.txt prices.csv",
        ],
        "docs/mqtt-api.md (price.set)",
    )
    push_target = push.add_mutually_exclusive_group(required=True)
    push_target.add_argument("--store", metavar="ID", help="the store's id (this or --group is required)")
    push_target.add_argument(
        "--group", metavar="NAME", help="publish once to the group, then follow every store (--stores or --db)"
    )
    push.add_argument("file", type=Path, metavar="FILE.csv", help="the price file")
    push.add_argument("--chunk", type=int, default=1000, metavar="N", help="items per command (default: 1000)")
    push.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="seconds to wait for answers (default: 120)"
    )
    push.add_argument("--quiet", action="store_true", help="no progress bars")
    _group_options(push)
    command = _sub(
        hq_sub,
        "command",
        "send one command and print its command_result",
        "Send one command to a store (or a group of stores) and print the store's command_result as JSON. "
        "Exit 1 if it was rejected or no answer came within --timeout. With --group and --stores or --db: "
        "a table of every store (applied / rejected with the first error / no answer), exit 1 unless all applied.",
        [
            "store-gateway hq --broker mqtt://127.0.0.1:1883 command --store 0042 stock.adjust "
            '\'{"sku": "A1", "delta": -2, "reason": "breakage"}\'',
            "store-gateway hq --broker mqtt://127.0.0.1:1883 command --store 0042 print "
            '\'{"printer": "till-1", "document": "test_page"}\'',
        ],
        "docs/mqtt-api.md (every command and its data)",
    )
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--store", metavar="ID", help="send to this store (this or --group is required)")
    target.add_argument(
        "--group",
        metavar="NAME",
        help="send to every store of this group; with --stores or --db, follow each store's answer",
    )
    command.add_argument("name", metavar="NAME", help="the command type, e.g. price.set, stock.adjust, print")
    command.add_argument("json", metavar="JSON", help="the command's data as a JSON object")
    command.add_argument("--id", help="command id (default: a new UUID)")
    command.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="seconds to wait for the answer (default: 30)"
    )
    command.add_argument("--no-wait", action="store_true", help="do not wait for the command_result")
    command.add_argument("--quiet", action="store_true", help="no progress bar (--group)")
    _group_options(command)
    watch = _sub(
        hq_sub,
        "watch",
        "print every event of a store as one JSON line",
        "Print every event a store sends to head office, one JSON line each, until Ctrl-C, --count or --timeout.",
        [
            "store-gateway hq --broker mqtt://127.0.0.1:1883 watch --store 0042",
            "store-gateway hq --broker mqtt://127.0.0.1:1883 watch --store '*' --kind device --count 10",
        ],
        "docs/mqtt-api.md (events)",
    )
    watch.add_argument("--store", required=True, metavar="ID", help="store id, or '*' for every store (required)")
    watch.add_argument("--kind", action="append", help="only this event kind, e.g. scan (repeatable; default: all)")
    watch.add_argument("--count", type=int, metavar="N", help="stop after this many events (default: never)")
    watch.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this many seconds (default: never)")
    ingest = _sub(
        hq_sub,
        "ingest",
        "land every store's events in PostgreSQL, exactly once (extra store-gateway[hq])",
        "Consume every store's events durably (MQTT persistent session, RabbitMQ quorum queue P.hq.events, "
        "NATS JetStream stream HQ_EVENTS) and write them into PostgreSQL in batches, acknowledging each "
        "message only after its transaction committed. Duplicates are dropped and counted, seq gaps are "
        "recorded and closed. A progress line per --progress seconds on stderr; SIGTERM commits the batch "
        "in hand and exits 0.",
        [
            "store-gateway hq --broker amqp://ingest:secret@127.0.0.1:5672/ ingest --db postgresql://hq@127.0.0.1/hq",
            "store-gateway hq --broker nats://127.0.0.1:4222 ingest --db postgresql://hq@127.0.0.1/hq --once",
            "store-gateway hq --broker mqtt://127.0.0.1:1883 ingest --db postgresql://hq@127.0.0.1/hq "
            "--share hq --client-id hq-ingest-1",
        ],
        "docs/ingest.md",
    )
    ingest.add_argument("--db", required=True, metavar="DSN", help="postgresql://user@host:port/database (required)")
    ingest.add_argument(
        "--batch", type=_positive_int, default=500, metavar="N", help="messages per transaction (default: 500)"
    )
    ingest.add_argument("--once", action="store_true", help="drain what is queued, then exit")
    ingest.add_argument(
        "--idle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --once: this long without a message means drained (default: 2)",
    )
    ingest.add_argument("--share", metavar="NAME", help="MQTT: split the load with $share/NAME/... (Mosquitto only)")
    ingest.add_argument("--client-id", metavar="ID", help="MQTT: this worker's fixed client id (default: hq-ingest)")
    ingest.add_argument(
        "--progress", type=float, default=10.0, metavar="SECONDS", help="seconds between progress lines (default: 10)"
    )
    hq.set_defaults(func=cmd_hq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:  # Ctrl-C on `status --watch`, `hq watch`: the person is done
        return 0
    except BrokenPipeError:
        # the reader went away (`status --json | head`): that is its choice, not an error; and
        # Python must not complain again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
