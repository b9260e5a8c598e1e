"""Commands that break the decoder itself never block a store: each is answered once and acknowledged.

Through the real process against a real mosquitto. The hostile commands are sent while the gateway
is stopped, more of them than the broker keeps in flight to one client (100 in the test broker,
20 by default), so that one left unacknowledged would hold back every command behind it, then and
after a restart.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.topics import store_command_topic
from tests.peers.hq import GatewayProcess, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker

STORE = "poison"


@dataclass(frozen=True)
class Poison:
    """A hostile command: its bytes for a given id, and the field its rejection must name."""

    name: str
    command: str
    build: Callable[[str], bytes]
    field: str
    has_id: bool = True


def _wrap(command: str, data: bytes, command_id: str) -> bytes:
    return b'{"id":"%s","type":"%s","data":%s}' % (command_id.encode(), command.encode(), data)


def _item(extra: bytes, price: bytes = b'"1.00"', version: bytes = b"7") -> bytes:
    return b'{"items":[{"sku":"P1","price":%s,"currency":"EUR","version":%s%s}]}' % (price, version, extra)


DEEP = b"[" * 10_000 + b"]" * 10_000
HUGE_INT = b"9" * 5_000

POISONS = [
    Poison(
        "a number beyond any float as a price",
        "price.set",
        lambda i: _wrap("price.set", _item(b"", price=b"1e999999"), i),
        "data.items[0].price",
    ),
    Poison(
        "a 5,000-digit integer as a version",
        "price.set",
        lambda i: _wrap("price.set", _item(b"", version=HUGE_INT), i),
        "data.items[0].version",
    ),
    Poison(
        "5,000-digit integer as a delta",
        "stock.adjust",
        lambda i: _wrap("stock.adjust", b'{"sku":"P1","delta":' + HUGE_INT + b',"reason":"count"}', i),
        "data.delta",
    ),
    Poison(
        "arrays nested 10,000 deep in data",
        "stock.adjust",
        lambda i: _wrap("stock.adjust", b'{"sku":' + DEEP + b"}", i),
        "data.sku[0]",
    ),
    Poison(
        "arrays nested 10,000 deep in price items",
        "price.set",
        lambda i: _wrap("price.set", b'{"items":' + DEEP + b"}", i),
        "data.items[0]",
    ),
    Poison(
        "objects nested 10,000 deep",
        "stock.adjust",
        lambda i: _wrap("stock.adjust", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, i),
        "data.a.a",
    ),
    Poison(
        "nesting in an unknown envelope field",
        "stock.adjust",
        lambda i: b'{"extra":' + DEEP + b',"id":"%s","type":"stock.adjust","data":{}}' % i.encode(),
        "extra[0][0]",
    ),
    Poison(
        "a whole command nested 10,000 deep",
        "stock.adjust",
        lambda i: DEEP,
        "[0][0][0]",
        has_id=False,
    ),
    Poison(
        "invalid UTF-8 inside data",
        "price.set",
        lambda i: _wrap("price.set", b'{"items":[{"sku":"\xc3\x28","price":"1","currency":"EUR","version":1}]}', i),
        "data",
    ),
    Poison(
        "invalid UTF-8 as the id",
        "price.set",
        lambda i: b'{"id":"\xff\xfe","type":"price.set","data":{}}',
        "(command)",
        has_id=False,
    ),
    Poison(
        "a price string of 1e400",
        "price.set",
        lambda i: _wrap("price.set", b'{"items":[{"sku":"P1","price":"1e400","currency":"EUR","version":1}]}', i),
        "data.items[0].price",
    ),
    Poison(
        "a promotion ending in the year 10000 (UTC)",
        "price.set",
        lambda i: _wrap(
            "price.set",
            b'{"items":[{"sku":"P1","price":"1","currency":"EUR","version":1,"promo_price":"0.5",'
            b'"promo_until":"9999-12-31T23:59:59-14:00"}]}',
            i,
        ),
        "data.items[0].promo_until",
    ),
    Poison(
        "a reservation expiring in the year 10000 (UTC)",
        "order.reserve",
        lambda i: _wrap(
            "order.reserve",
            b'{"order":"O1","lines":[{"sku":"P1","qty":1}],"expires_at":"9999-12-31T23:59:59-14:00"}',
            i,
        ),
        "data.expires_at",
    ),
    Poison(
        "sent_at in the year 10000 (UTC)",
        "stock.adjust",
        lambda i: (
            b'{"id":"%s","type":"stock.adjust","sent_at":"9999-12-31T23:59:59-14:00",'
            b'"data":{"sku":"P1","delta":1,"reason":"count"}}' % i.encode()
        ),
        "sent_at",
    ),
    Poison(
        "a flash of 1e999 seconds",
        "label.flash",
        lambda i: _wrap("label.flash", b'{"sku":"P1","seconds":1e999}', i),
        "data.seconds",
    ),
    Poison(
        "a 2 MB command",
        "price.set",
        lambda i: _wrap("price.set", b'{"items":[],"pad":"' + b"x" * 2_000_000 + b'"}', i),
        "(command)",
    ),
    Poison("NUL bytes", "price.set", lambda i: b"\x00" * 64, "(command)", has_id=False),
    Poison("an empty message", "price.set", lambda i: b"", "(command)", has_id=False),
    Poison(
        "an id that is a number out of range",
        "price.set",
        lambda i: b'{"id":1e999999,"type":"x","data":{}}',
        "id",
        has_id=False,
    ),
    Poison(
        "NaN as a delta",
        "stock.adjust",
        lambda i: _wrap("stock.adjust", b'{"sku":"P1","delta":NaN,"reason":"count"}', i),
        "(command)",
    ),
]


def command_results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The command_result events, each once (an event may arrive twice: at least once, same id)."""
    unique = {e["id"]: e["data"] for e in events if e["type"] == "command_result"}
    return list(unique.values())


ROUNDS = 8  # 20 kinds x 8 = 160 messages: more than the broker keeps in flight to one client (100)


async def test_hostile_commands_are_each_answered_once_and_never_block_later_ones(
    own_mosquitto: MosquittoBroker, tmp_path: Path, gateway_process: Callable[[Path], GatewayProcess]
) -> None:
    config_path = write_config(tmp_path, own_mosquitto, store=STORE)
    gateway = gateway_process(config_path)
    sent: dict[str, Poison] = {}
    idless: Counter[str] = Counter()
    async with head_office(own_mosquitto, STORE, client_id="hq-poison") as hq:
        gateway.start()  # once, so the broker keeps its session and queues what follows
        await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s)
        assert gateway.terminate() == 0, gateway.log
        for round_ in range(ROUNDS):
            for poison in POISONS:
                command_id = f"{poison.command}-{round_}-{uuid.uuid4().hex[:8]}"
                payload = poison.build(command_id)
                if poison.has_id:
                    sent[command_id] = poison
                else:
                    idless[poison.field] += 1
                await hq.send_raw(store_command_topic("retail", STORE, poison.command), payload)
        gateway.start()
        after = await hq.command("stock.set", {"items": [{"sku": "P1", "on_hand": 5, "version": 1}]})
        assert after["status"] == "applied", after

        results = command_results(hq.events)
        by_id = Counter(r["command_id"] for r in results)
        assert {i: n for i, n in by_id.items() if n != 1 and i is not None} == {}, "each answered exactly once"
        assert set(sent) <= set(by_id), f"unanswered: {sorted(set(sent) - set(by_id))[:5]}"
        for result in results:
            poison = sent.get(result["command_id"])
            if poison is None:
                continue
            assert result["status"] == "rejected", (poison.name, result)
            assert result["errors"][0]["field"] == poison.field, (poison.name, result["errors"])
            assert "internal error" not in json.dumps(result["errors"]), (poison.name, result["errors"])
        unnamed = Counter(r["errors"][0]["field"] for r in results if r["command_id"] is None)
        assert unnamed == idless, "a command whose id cannot be read is still answered, once"

        # A restart (here a crash) offers nothing again: every hostile message was acknowledged.
        gateway.kill()
        answered = len(results)
        gateway.start()
        later = await hq.command("stock.adjust", {"sku": "P1", "delta": 1, "reason": "count"})
        assert later["status"] == "applied", later
        results = command_results(hq.events)
        assert len(results) == answered + 1, [r for r in results[answered:] if r["command_id"] != later["command_id"]]
        assert gateway.terminate() == 0, gateway.log
    log = gateway.log
    assert "could not be recorded" not in log
    assert "Traceback" not in log
