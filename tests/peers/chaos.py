"""The crash proof: the real gateway SIGKILLed at random moments under a mixed workload, and what it lost.

Head office sends prices, stock adjustments and print jobs (one every `interval_s`); a pty scanner
in count mode scans; labels on a loopback OpenEPaperLink access point follow the prices; a loopback
ESC/POS printer prints. The gateway process is killed `rounds` times at a random moment (from its
start up to `max_life_s` later, so also mid-start and mid-commit), started again each time, and at
the end left to finish. Then everything is counted from what the peers received (head office's
events, the printer's bytes, the access point's uploads) and from the state database: commands lost,
applied twice, answered twice; events lost (seq gaps), duplicated (by id); print jobs printed twice
or lost; labels stuck in `sent`; and SQLite's integrity check. Used by tests/reliability and by
bench/chaos.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from gateway import outbox
from gateway.config import load_config
from tests.peers.escpos_printer import CUT, EscposPrinterPeer, text_of
from tests.peers.hq import GatewayProcess, HeadOffice, head_office, write_config
from tests.peers.mosquitto import MosquittoBroker
from tests.peers.oepl_ap import FakeAccessPoint
from tests.peers.pty_scanner import PtyScanner
from tests.peers.tcp_proxy import TcpProxy

SKUS = [f"K{n:02d}" for n in range(12)]


def _gtin13(n: int) -> str:
    body = f"376{n:09d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


GTINS = {sku: _gtin13(n) for n, sku in enumerate(SKUS)}
LABELS = [f"00000000C0FFEE{n:02X}" for n in range(len(SKUS))]
STOCK = 100_000  # on hand of every sku at the start: every applied stock.adjust takes one


@dataclass
class ChaosFigures:
    """What the crashes cost (every count but the totals must be 0)."""

    rounds: int
    seconds: float
    commands_sent: int = 0
    commands_lost: int = 0
    commands_applied_twice: int = 0
    commands_answered_twice: int = 0
    events_received: int = 0
    events_lost: int = 0
    events_duplicated: int = 0
    seq_gaps: int = 0
    print_jobs: int = 0
    printed_twice: int = 0
    print_jobs_lost: int = 0
    print_jobs_interrupted: int = 0
    labels_stuck_sent: int = 0
    outbox_left: int = 0
    integrity: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failures(self) -> dict[str, int]:
        """The counts that must be zero, and those that are not."""
        keys = (
            "commands_lost",
            "commands_applied_twice",
            "commands_answered_twice",
            "events_lost",
            "seq_gaps",
            "printed_twice",
            "print_jobs_lost",
            "labels_stuck_sent",
            "outbox_left",
        )
        bad = {key: getattr(self, key) for key in keys if getattr(self, key)}
        if self.integrity != "ok":
            bad["integrity"] = 1
        return bad


def _read(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


class _Workload:
    """Head office and the store's devices doing a day's work, as fast as `interval_s` allows."""

    def __init__(self, hq: HeadOffice, scanner: PtyScanner, rng: random.Random) -> None:
        self.hq = hq
        self.scanner = scanner
        self.rng = rng
        self.version = 1
        self.sent: dict[str, str] = {}  # command id -> type
        self.notes: set[str] = set()  # print jobs sent (their note)
        self.adjusts: dict[str, str] = {}  # stock.adjust command id -> sku
        self.scans = 0

    async def setup(self) -> None:
        items = [{"sku": s, "price": "1.00", "currency": "EUR", "gtin": GTINS[s], "version": 1} for s in SKUS]
        await self._send("price.set", {"items": items})
        await self._send("stock.set", {"items": [{"sku": s, "on_hand": STOCK, "version": 1} for s in SKUS]})
        labels = [{"label": mac, "sku": sku, "station": "ap-1"} for mac, sku in zip(LABELS, SKUS, strict=True)]
        await self._send("label.assign", {"items": labels})

    async def _send(self, name: str, data: dict[str, Any]) -> str:
        command_id = await self.hq.send(name, data)
        self.sent[command_id] = name
        return command_id

    async def step(self) -> None:
        roll = self.rng.random()
        sku = self.rng.choice(SKUS)
        if roll < 0.3:
            self.version += 1
            cents = self.rng.randrange(100, 9999)
            item = {"sku": sku, "price": f"{cents // 100}.{cents % 100:02d}", "currency": "EUR"}
            await self._send("price.set", {"items": [{**item, "version": self.version}]})
        elif roll < 0.6:
            command_id = await self._send("stock.adjust", {"sku": sku, "delta": -1, "reason": "sale"})
            self.adjusts[command_id] = sku
        elif roll < 0.75:
            note = f"chaos-{uuid.uuid4().hex[:12]}"
            self.notes.add(note)
            await self._send("print", {"printer": "till-1", "document": "test_page", "note": note})
        else:
            self.scans += 1
            self.scanner.scan(GTINS[sku])  # count mode: a scan and a stock event

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(interval_s)


def _config_extra(printer: EscposPrinterPeer, ap: FakeAccessPoint, scanner: PtyScanner) -> str:
    return f"""
[[printers]]
id = "till-1"
url = "{printer.url}"
timeout_s = 1.0

[[label_stations]]
id = "ap-1"
backend = "openepaperlink"
url = "{ap.url}"

[[scanners]]
id = "aisle"
port = "{scanner.path}"
mode = "count"
"""


async def _settle(db_path: Path, hq: HeadOffice, sent: set[str], timeout_s: float) -> None:
    """Wait until every command is answered, the printer queue and label sends are done, the outbox empty."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answered = {e["data"]["command_id"] for e in hq.events if e["type"] == "command_result"}
        busy = _read(
            db_path,
            "SELECT (SELECT count(*) FROM print_jobs WHERE state IN ('queued', 'printing'))"
            " + (SELECT count(*) FROM labels WHERE state IN ('pending', 'sent'))"
            " + (SELECT count(*) FROM outbox)",
        )[0][0]
        if sent <= answered and busy == 0:
            return
        await asyncio.sleep(0.25)


async def run_chaos(
    broker: MosquittoBroker,
    workdir: Path,
    *,
    rounds: int,
    seed: int = 1,
    interval_s: float = 0.04,
    max_life_s: float = 2.5,
    settle_s: float = 90.0,
) -> ChaosFigures:
    """Kill the gateway `rounds` times under load; count what was lost or doubled."""
    rng = random.Random(seed)
    started = time.monotonic()
    store = f"chaos{seed}"
    printer = EscposPrinterPeer()
    ap = await FakeAccessPoint().start()
    for mac in LABELS:
        ap.add_tag(mac)
    scanner = PtyScanner(workdir, "aisle")
    config_path = write_config(workdir, broker, store=store, extra=_config_extra(printer, ap, scanner))
    db_path = workdir / "state.db"
    gateway = GatewayProcess(config_path, workdir / "gateway.log")
    figures = ChaosFigures(rounds=rounds, seconds=0.0)
    try:
        async with head_office(broker, store, client_id=f"hq-{store}") as hq:
            gateway.start()
            await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s, timeout=30)
            work = _Workload(hq, scanner, rng)
            await work.setup()
            stop = asyncio.Event()
            sender = asyncio.create_task(work.run(stop, interval_s))
            try:
                for _ in range(rounds):
                    await asyncio.sleep(rng.uniform(0.05, max_life_s))
                    gateway.kill()
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    gateway.start()
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await sender
            await _settle(db_path, hq, set(work.sent), settle_s)
            assert gateway.terminate() == 0, gateway.log[-3000:]
            await asyncio.sleep(0.5)  # the last events' copies on their way to head office
            _count(figures, hq, work, printer, db_path)
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        printer.close()
        await ap.stop()
        scanner.close()
    figures.seconds = round(time.monotonic() - started, 1)
    return figures


def _count(figures: ChaosFigures, hq: HeadOffice, work: _Workload, printer: EscposPrinterPeer, db_path: Path) -> None:
    results = list({e["id"]: e["data"] for e in hq.events if e["type"] == "command_result"}.values())
    answers = Counter(r["command_id"] for r in results)
    figures.commands_sent = len(work.sent)
    figures.commands_lost = len(set(work.sent) - set(answers))
    figures.commands_answered_twice = sum(1 for n in answers.values() if n > 1)

    # stock.adjust: each applied one took exactly one unit
    applied = {r["command_id"] for r in results if r["status"] == "applied"}
    taken = Counter(sku for command_id, sku in work.adjusts.items() if command_id in applied)
    on_hand = dict(_read(db_path, "SELECT sku, on_hand FROM stock"))
    figures.commands_applied_twice = sum(abs(STOCK - taken[sku] - on_hand.get(sku, STOCK)) for sku in SKUS)

    events = hq.events
    figures.events_received = len(events)
    ids = Counter(e["id"] for e in events)
    figures.events_duplicated = sum(n - 1 for n in ids.values())
    seqs = {e["seq"] for e in events}
    top = max(seqs, default=0)
    figures.seq_gaps = top - len(seqs)
    written = _read(db_path, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")  # the last seq made
    last = int(written[0][0]) if written else top
    figures.events_lost = max(0, last - top) + figures.seq_gaps
    figures.outbox_left = _read(db_path, "SELECT count(*) FROM outbox")[0][0]

    complete = Counter()
    for job in printer.jobs:
        if CUT.search(job[-4:] if len(job) >= 4 else job):
            for note in work.notes:
                if note in text_of(job):
                    complete[note] += 1
    states = dict(_read(db_path, "SELECT json_extract(data, '$.note'), state FROM print_jobs"))
    figures.print_jobs = len(work.notes)
    figures.printed_twice = sum(1 for n in complete.values() if n > 1)
    interrupted = {note for note, state in states.items() if state == "failed"}
    figures.print_jobs_interrupted = len(interrupted)
    applied_notes = {note for note in work.notes if note in states}
    figures.print_jobs_lost = len(applied_notes - set(complete) - interrupted)
    figures.labels_stuck_sent = _read(db_path, "SELECT count(*) FROM labels WHERE state = 'sent'")[0][0]
    figures.integrity = "; ".join(str(r[0]) for r in _read(db_path, "PRAGMA integrity_check"))
    figures.details = {
        "scans_typed": work.scans,
        "scan_events": len({e["id"] for e in events if e["type"] == "scan"}),
        "kinds": dict(Counter(e["type"] for e in events)),
        "results": dict(Counter(r["status"] for r in results)),
    }


def _scan_event(n: int) -> dict[str, Any]:
    return {"scanner": "aisle", "code": f"outage-{n}", "sku": None, "mode": "count"}


async def outage_drain(broker: MosquittoBroker, workdir: Path, *, events: int = 100_000) -> dict[str, Any]:
    """The broker down while `events` events pile up in the outbox; then back: drain rate, order, losses.

    The events are written into the running gateway's state database from outside (as its devices
    would have made them during the outage), with the broker stopped; head office's persistent session
    receives them when the broker is back.
    """
    store = "drain"
    config_path = write_config(workdir, broker, store=store)
    db_path = workdir / "state.db"
    gateway = GatewayProcess(config_path, workdir / "gateway.log")
    try:
        async with head_office(broker, store, client_id="hq-drain") as hq:
            gateway.start()
            await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s, timeout=30)
        broker.stop()
        conn = sqlite3.connect(db_path, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        first = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
        made = outbox.append_many(conn, "scan", (_scan_event(n) for n in range(events)))
        conn.execute("COMMIT")
        ids = {row[0] for row in conn.execute("SELECT id FROM outbox WHERE kind = 'scan'")}
        conn.close()
        broker.start()
        back = time.monotonic()
        async with _scan_counter(broker, store) as scans:
            first_in = await _until(lambda: len(scans) > 0, 120)
            last_in = await _until(lambda: len({event_id for event_id, _ in scans}) >= made, 300)
            await asyncio.sleep(0.5)  # copies sent again after a lost PUBACK would come now
        assert gateway.terminate() == 0, gateway.log[-3000:]
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
    seen: set[str] = set()
    firsts = []
    for event_id, seq in scans:
        if event_id not in seen:
            seen.add(event_id)
            firsts.append(seq)
    return {
        "events": made,
        "lost": len(ids - seen),
        "duplicated": len(scans) - len(seen),
        "in_seq_order": firsts == sorted(firsts) and firsts[0] > first,
        "first_event_after_broker_back_s": round(first_in - back, 2),
        "drain_s": round(last_in - first_in, 2),
        "drain_per_s": round(made / max(0.001, last_in - first_in)),
    }


async def _until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Poll `condition` every 50 ms; the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic()


@contextlib.asynccontextmanager
async def _scan_counter(broker: MosquittoBroker, store: str) -> AsyncIterator[list[tuple[str, int]]]:
    """Head office's persistent session ("hq-drain") collecting (id, seq) of scan events, nothing more:
    a validating collector would be slower than the gateway it measures."""
    scans: list[tuple[str, int]] = []
    client = aiomqtt.Client(broker.host, broker.port, identifier="hq-drain", clean_session=False)

    async def collect() -> None:
        async for message in client.messages:
            event = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            if event.get("type") == "scan":
                scans.append((event["id"], event["seq"]))

    async with client:
        await client.subscribe(f"retail/stores/{store}/events/#", qos=1)
        task = asyncio.create_task(collect())
        try:
            yield scans
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def blackholed_link(broker: MosquittoBroker, workdir: Path, *, scans: int = 40) -> dict[str, Any]:
    """The link goes silent (every byte swallowed, nothing closed) while a scanner keeps scanning:
    how long the gateway takes to notice, against its keepalive, and whether every scan arrives."""
    store = "hole"
    proxy = TcpProxy(broker.port)
    scanner = PtyScanner(workdir, "aisle")
    extra = f'[[scanners]]\nid = "aisle"\nport = "{scanner.path}"\nmode = "count"\n'
    config_path = write_config(workdir, broker, store=store, extra=extra)
    config_path.write_text(config_path.read_text().replace(broker.url, proxy.url))
    keepalive_s = load_config(config_path).uplink.keepalive_s
    db_path = workdir / "state.db"
    gateway = GatewayProcess(config_path, workdir / "gateway.log")
    codes = [f"{n:08d}" for n in range(scans)]
    try:
        async with head_office(broker, store, client_id="hq-hole") as hq:
            gateway.start()
            await hq.wait_for(lambda s: s.get("state") == "online" and "type" not in s, timeout=30)
            await hq.count(lambda e: e["type"] == "device" and e["data"]["status"] == "online", 1)
            for code in codes[: scans // 2]:
                scanner.scan(code)
            await hq.count(lambda e: e["type"] == "scan", scans // 2)
            proxy.blackhole()
            silent = time.monotonic()
            for code in codes[scans // 2 :]:
                scanner.scan(code)
                await asyncio.sleep(0.05)

            def offline() -> bool:
                rows = _read(db_path, "SELECT value FROM meta WHERE key = 'uplink.state'")
                return bool(rows) and rows[0][0] == "offline"

            noticed = await _until(offline, keepalive_s * 4)
            proxy.release()
            await hq.count(lambda e: e["type"] == "scan", scans, timeout=60)
            await asyncio.sleep(0.5)
            got = [e["data"]["code"] for e in hq.events if e["type"] == "scan"]
        assert gateway.terminate() == 0, gateway.log[-3000:]
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        proxy.close()
        scanner.close()
    return {
        "keepalive_s": keepalive_s,
        "noticed_after_s": round(noticed - silent, 2),
        "noticed_in_keepalives": round((noticed - silent) / keepalive_s, 2),
        "scans": scans,
        "lost": len(set(codes) - set(got)),
        "duplicated": len(got) - len(set(got)),
    }
