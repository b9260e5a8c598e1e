"""Prometheus metrics of one running gateway (`GET /metrics`).

Two kinds of figures. Those that happen in the daemon (commands applied, scans answered, events
acknowledged, reconnects) are counted where they happen, in this process's own registry (not
prometheus-client's global one: several gateways may run in one test process). Those that are
state (outbox depth, labels by state, print jobs, devices, database size) are read from the state
database when a scrape asks for them, so they cost nothing between scrapes and are never stale.

The uplink keeps plain integers per event kind (`Uplink.published_by_kind`) on its hot path; they
are turned into a counter here, at scrape time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.timeutil import epoch_ms, utc_now

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Command apply: one group commit (an fsync of the SD card) is most of it.
_COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Scan to reply: the budget is 5 ms at p99 (design.md).
_SCAN_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25)


class UplinkFigures(Protocol):
    """What the metrics read from the uplink (gateway.uplink.Uplink has these)."""

    @property
    def state(self) -> str: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def published_by_kind(self) -> Mapping[str, int]: ...


@dataclass
class StateFigures:
    """The state-database figures of one scrape."""

    outbox_depth: int = 0
    outbox_oldest_age_s: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    print_jobs: dict[str, int] = field(default_factory=dict)
    devices: list[tuple[str, str, str]] = field(default_factory=list)  # (id, kind, status)
    db_bytes: int = 0


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def read_state_figures(conn: sqlite3.Connection, db_path: Path, configured: Iterable[tuple[str, str]]) -> StateFigures:
    """One scrape's state figures, read on the database's reader thread."""
    figures = StateFigures()
    depth, oldest = conn.execute("SELECT count(*), min(created_ms) FROM outbox").fetchone()
    figures.outbox_depth = int(depth)
    if oldest is not None:
        figures.outbox_oldest_age_s = max(0.0, (epoch_ms(utc_now()) - int(oldest)) / 1000)
    if _table_exists(conn, "labels"):
        figures.labels = {str(r[0]): int(r[1]) for r in conn.execute("SELECT state, count(*) FROM labels GROUP BY 1")}
    if _table_exists(conn, "print_jobs"):
        rows = conn.execute("SELECT state, count(*) FROM print_jobs GROUP BY 1")
        figures.print_jobs = {str(r[0]): int(r[1]) for r in rows}
    known = {str(r[0]): (str(r[1]), str(r[2])) for r in conn.execute("SELECT id, kind, status FROM devices")}
    for kind, device_id in configured:
        status = known.get(device_id, (kind, "unknown"))[1]
        figures.devices.append((device_id, kind, status))
    for suffix in ("", "-wal"):
        path = Path(f"{db_path}{suffix}")
        if path.exists():
            figures.db_bytes += path.stat().st_size
    return figures


class Metrics:
    """The counters and histograms the daemon updates as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.commands = Counter(
            "gateway_commands",
            "Commands from head office, by type and the status of their command_result.",
            ["type", "status"],
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "gateway_command_apply_seconds",
            "Time from a command's arrival to its committed command_result.",
            buckets=_COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.scan_reply_seconds = Histogram(
            "gateway_scan_reply_seconds",
            "Time from a scan read on the scanner's port to its reply written back.",
            buckets=_SCAN_BUCKETS,
            registry=self.registry,
        )
        self.uplink: UplinkFigures | None = None

    def watch_uplink(self, uplink: UplinkFigures) -> None:
        self.uplink = uplink

    def render(self, state: StateFigures) -> bytes:
        """The Prometheus text exposition of everything, with `state` read for this scrape."""
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_ScrapeCollector(state, self.uplink))
        return generate_latest(self.registry) + generate_latest(scrape)


class _ScrapeCollector:
    """State figures and the uplink's plain counters, as metric families."""

    def __init__(self, state: StateFigures, uplink: UplinkFigures | None) -> None:
        self.state = state
        self.uplink = uplink

    def collect(self) -> Iterable[Metric]:
        state = self.state
        yield GaugeMetricFamily("gateway_outbox_depth", "Events waiting in the outbox.", value=state.outbox_depth)
        yield GaugeMetricFamily(
            "gateway_outbox_oldest_age_seconds",
            "Age of the oldest event waiting in the outbox (0 when it is empty).",
            value=state.outbox_oldest_age_s,
        )
        labels = GaugeMetricFamily("gateway_labels", "Shelf labels by state.", labels=["state"])
        for name in ("pending", "sent", "confirmed", "failed"):
            labels.add_metric([name], state.labels.get(name, 0))
        yield labels
        jobs = GaugeMetricFamily("gateway_print_jobs", "Print jobs kept in the queue, by status.", labels=["status"])
        for name in ("queued", "printing", "printed", "failed"):
            jobs.add_metric([name], state.print_jobs.get(name, 0))
        yield jobs
        up = GaugeMetricFamily(
            "gateway_device_up", "1 while a configured device is online, else 0.", labels=["device", "kind", "status"]
        )
        for device_id, kind, status in state.devices:
            up.add_metric([device_id, kind, status], 1 if status == "online" else 0)
        yield up
        yield GaugeMetricFamily(
            "gateway_state_db_bytes", "Size of the state database and its WAL.", value=state.db_bytes
        )
        uplink = self.uplink
        yield GaugeMetricFamily(
            "gateway_uplink_connected",
            "1 while the link to head office is up.",
            value=1 if uplink is not None and uplink.state == "online" else 0,
        )
        yield CounterMetricFamily(
            "gateway_uplink_reconnects",
            "Connections to head office made again after a loss, since start.",
            value=0 if uplink is None else uplink.reconnects,
        )
        published = CounterMetricFamily(
            "gateway_events_published",
            "Events head office's broker acknowledged (PUBACK), by kind, since start.",
            labels=["kind"],
        )
        for kind, count in sorted((uplink.published_by_kind if uplink is not None else {}).items()):
            published.add_metric([kind], count)
        yield published
