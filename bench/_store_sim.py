"""Many simulated stores in one process, speaking the contract exactly as the gateway does (for bench/fleet.py).

Each store: fixed client id `store-gateway-<id>`, persistent session (clean session off), retained
`online` state with a retained `offline` last will, subscriptions to its own commands and its group's,
events with ids and a seq that rises by one per event, kept in an outbox until the broker's PUBACK and
sent again in seq order after a reconnect, and one `command_result` per command (`duplicate` for an id
seen before).

The parent drives it through stdin, one word a line: `rate R` (events per second per store), `burst N`
(N events per store at once), `report` (one JSON line on stdout: created, acknowledged, outbox),
`exit` (drain the outboxes, write every acknowledged id to --out, exit). It prints `ready` once every
store is connected and subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Store:
    """One simulated store: its outbox, seq, the commands it has answered and what the broker acknowledged."""

    id: str
    host: str
    port: int
    prefix: str
    group: str
    seq: int = 0
    outbox: deque[tuple[str, str, bytes]] = field(default_factory=deque)  # (event id, topic, payload)
    acked: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    reconnects: int = 0

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        event_id = os.urandom(16).hex()
        envelope = {"id": event_id, "store": self.id, "type": kind, "seq": self.seq, "at": now_text(), "data": data}
        topic = f"{self.prefix}/stores/{self.id}/events/{kind}"
        self.outbox.append((event_id, topic, json.dumps(envelope, separators=(",", ":")).encode()))
        self.wake.set()

    def command(self, topic: str, payload: bytes) -> None:
        try:
            command = json.loads(payload)
            command_id = command["id"]
            name = topic.rsplit("/commands/", 1)[-1].replace("/", ".")
        except (ValueError, KeyError, TypeError):
            self.event("command_result", {"command_id": None, "status": "rejected", "applied": 0, "skipped": 0,
                                          "errors": [{"field": "payload", "message": "not a command envelope"}]})  # fmt: skip
            return
        if command_id in self.answered:
            result = {"command_id": command_id, "status": "duplicate", "applied": 0, "skipped": 0, "errors": []}
        else:
            self.answered.add(command_id)
            items = command.get("data", {}).get("items")
            applied = len(items) if isinstance(items, list) else 1
            result = {"command_id": command_id, "status": "applied", "applied": applied, "skipped": 0, "errors": []}
        self.event("command_result", result | {"type": name})

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected (reconnecting with backoff) until `stop` and an empty outbox."""
        state = f"{self.prefix}/stores/{self.id}/gateway/state"
        offline = json.dumps({"state": "offline", "version": "sim", "started_at": now_text()}).encode()
        delay = 0.5
        while not (stop.is_set() and not self.outbox):
            client = aiomqtt.Client(
                self.host, self.port, identifier=f"store-gateway-{self.id}", clean_session=False, keepalive=20,
                will=aiomqtt.Will(state, offline, qos=1, retain=True), timeout=15, max_inflight_messages=20,
            )  # fmt: skip
            try:
                async with client:
                    online = json.dumps({"state": "online", "version": "sim", "started_at": now_text()})
                    await client.publish(state, online.encode(), qos=1, retain=True)
                    await client.subscribe(f"{self.prefix}/stores/{self.id}/commands/#", qos=1)
                    await client.subscribe(f"{self.prefix}/groups/{self.group}/commands/#", qos=1)
                    self.connected.set()
                    delay = 0.5
                    async with asyncio.TaskGroup() as tasks:
                        listener = tasks.create_task(self._listen(client))
                        await self._send(client, stop)
                        listener.cancel()
                    return
            except (aiomqtt.MqttError, OSError, TimeoutError, ExceptionGroup) as exc:
                if isinstance(exc, ExceptionGroup) and exc.subgroup((aiomqtt.MqttError, OSError, TimeoutError)) is None:
                    raise
                self.connected.clear()
                self.reconnects += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.command(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]

    async def _send(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self.outbox):
            if not self.outbox:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except TimeoutError:
                    continue
                continue
            event_id, topic, payload = self.outbox[0]
            await client.publish(topic, payload, qos=1)  # returns on PUBACK; on error the loop reconnects
            self.outbox.popleft()
            self.acked.append(event_id)


async def ticker(stores: list[Store], rate: list[float], stop: asyncio.Event) -> None:
    """Events at `rate[0]` per second per store, spread evenly over the stores."""
    n = 0
    while not stop.is_set():
        if rate[0] <= 0:
            await asyncio.sleep(0.1)
            continue
        interval = 1.0 / (rate[0] * len(stores))
        started = time.monotonic()
        for store in stores:
            if stop.is_set() or rate[0] <= 0:
                break
            n += 1
            store.event("scan", {"scanner": "till", "code": str(n), "sku": None, "mode": "count"})
            behind = started + n * interval - time.monotonic()
            if behind > 0:
                await asyncio.sleep(behind)
        n = 0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--nodes", required=True, help="host:port,host:port,... (store i uses node i %% n)")
    parser.add_argument("--prefix", default="retail")
    parser.add_argument("--group", default="fleet")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    nodes = [(n.split(":")[0], int(n.split(":")[1])) for n in args.nodes.split(",")]
    stores = [
        Store(f"s{i:04d}", *nodes[i % len(nodes)], prefix=args.prefix, group=args.group)
        for i in range(args.first, args.first + args.count)
    ]
    stop = asyncio.Event()
    rate = [0.0]
    runners = []
    for store in stores:  # connect gradually: a connection storm is not what is measured
        runners.append(asyncio.create_task(store.run(stop)))
        await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in stores)), 300)
    print("ready", flush=True)
    tick = asyncio.create_task(ticker(stores, rate, stop))
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "rate":
            rate[0] = float(line[1])
        elif line[0] == "burst":
            for _ in range(int(line[1])):
                for store in stores:
                    store.event("scan", {"scanner": "till", "code": "burst", "sku": None, "mode": "count"})
        elif line[0] == "report":
            print(json.dumps({
                "created": sum(s.seq for s in stores), "acked": sum(len(s.acked) for s in stores),
                "outbox": sum(len(s.outbox) for s in stores), "reconnects": sum(s.reconnects for s in stores),
                "connected": sum(s.connected.is_set() for s in stores),
            }), flush=True)  # fmt: skip
        elif line[0] == "exit":
            break
    rate[0] = 0
    stop.set()
    await tick
    await asyncio.wait_for(asyncio.gather(*runners), 120)
    with open(args.out, "w") as out:  # noqa: ASYNC230 - the end of the run, nothing else to do
        json.dump({s.id: {"acked": s.acked, "seq": s.seq} for s in stores}, out)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
