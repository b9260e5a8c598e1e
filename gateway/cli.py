"""The `store-gateway` command (contract.md §1). Exit codes: 0 success, 1 runtime failure, 2 bad usage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.config import Config, ConfigError, load_config, summary


def _load(path: Path) -> Config:
    try:
        return load_config(path)
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

    try:
        return asyncio.run(daemon.run(config))
    except KeyboardInterrupt:
        return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.path)
    print(summary(config))
    print("configuration OK")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway import status

    config = _load(args.config)
    try:
        report = status.collect(config.state.path, config)
    except FileNotFoundError as exc:
        print(f"state.path: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(status.render_json(report))
    else:
        print(status.render_text(report, ZoneInfo(config.store.timezone)))
    return 0


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


def cmd_hq(args: argparse.Namespace) -> int:
    import aiomqtt

    from gateway import hq

    broker = _broker(args)
    assert isinstance(broker, hq.BrokerOptions)
    try:
        if args.hq_command == "push-prices":
            result = asyncio.run(
                hq.push_prices(
                    broker,
                    args.store,
                    args.file,
                    chunk_size=args.chunk,
                    timeout_s=args.timeout,
                    progress=not args.quiet,
                )
            )
            return 0 if result.rejected == 0 and result.answered == result.commands else 1
        if args.hq_command == "command":
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
                )
            )
            return 1 if answer is not None and answer.get("status") == "rejected" else 0
        if args.hq_command == "watch":
            asyncio.run(hq.watch(broker, args.store, kinds=args.kind, count=args.count, timeout_s=args.timeout))
            return 0
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="store-gateway",
        description="Store-side daemon: shelf labels, printers, scanners, sensors, a local price and stock "
        "cache, and a durable MQTT link to head office.",
    )
    parser.add_argument("--version", action="version", version=f"store-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, required=True, help="the TOML config file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("path", type=Path)
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="show the gateway's state from its database")
    status.add_argument("--config", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="run the whole gateway with simulated devices and its own broker")
    demo.add_argument("--dir", type=Path, default=Path("store-gateway-demo"), help="where state, labels and prints go")
    demo.add_argument("demo_command", nargs="*", help="`scan CODE` types a code into the running demo's scanner")
    demo.set_defaults(func=cmd_demo)

    hq = sub.add_parser("hq", help="head-office side tool: push prices, send commands, watch events")
    hq.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    hq.add_argument("--prefix", default="retail", help="topic prefix (default: retail)")
    hq.add_argument("--ca-file", type=Path)
    hq.add_argument("--cert-file", type=Path)
    hq.add_argument("--key-file", type=Path)
    hq.add_argument("--username")
    hq.add_argument("--password-file", type=Path)
    hq_sub = hq.add_subparsers(dest="hq_command", required=True, metavar="HQ_COMMAND")
    push = hq_sub.add_parser("push-prices", help="send a price CSV as price.set commands")
    push.add_argument("--store", required=True)
    push.add_argument("file", type=Path)
    push.add_argument("--chunk", type=int, default=1000, help="items per command (default 1000)")
    push.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for answers")
    push.add_argument("--quiet", action="store_true", help="no progress bars")
    command = hq_sub.add_parser("command", help="send one command and print its command_result")
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--store")
    target.add_argument("--group")
    command.add_argument("name", help="e.g. price.set, stock.adjust, print")
    command.add_argument("json", help="the command's data as a JSON object")
    command.add_argument("--id", help="command id (default: a new UUID)")
    command.add_argument("--timeout", type=float, default=30.0)
    command.add_argument("--no-wait", action="store_true", help="do not wait for the command_result")
    watch = hq_sub.add_parser("watch", help="print every event of a store as one JSON line")
    watch.add_argument("--store", required=True, help="store id, or '*' for every store")
    watch.add_argument("--kind", action="append", help="only this event kind (repeatable)")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.add_argument("--timeout", type=float, help="stop after this many seconds")
    hq.set_defaults(func=cmd_hq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as exc:
        return int(exc.code or 0)
