"""The wall clock, watched for steps: what is due at a wall-clock instant follows the clock when it jumps.

A store box without a real-time clock boots with a wrong time and steps it when NTP syncs, by
hours or by decades. asyncio's timers run on the monotonic clock, which does not step, so a price
due "in 40 s" that the clock has just overtaken would still wait its 40 s. The watcher compares
the wall clock with the monotonic clock twice a second; when their difference moves by more than
a second it publishes `ClockStepped` on the bus, and every wall-clock schedule (due prices, which
send the labels rendered for them; reservation expiries) computes its wait again. Timers for
durations (PUBACK timeouts, label confirmations, retries) stay on the monotonic clock.

A clock far from the last time this gateway recorded (a year ahead, or a day behind) is warned
about once: due prices and expiries follow the clock, so a clock ten years ahead applies every
scheduled price and expires every reservation.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.bus import Bus
from gateway.db import get_meta
from gateway.timeutil import from_epoch_ms, human_duration, parse_rfc3339, utc_now

log = logging.getLogger(__name__)

CHECK_S = 0.5
"""How often the wall clock is compared with the monotonic clock."""
STEP_S = 1.0
"""A change of their difference larger than this is a step (NTP slews smaller errors)."""
FAR_AHEAD = timedelta(days=365)
FAR_BEHIND = timedelta(days=1)


@dataclass(frozen=True)
class ClockStepped:
    """The wall clock jumped by `seconds` (negative: backwards); wall-clock schedules wait again."""

    seconds: float


def last_recorded(conn: sqlite3.Connection) -> datetime | None:
    """The latest wall-clock time the state database holds (read before this start writes any)."""
    found: list[datetime] = []
    for key in ("daemon.started_at", "uplink.connected_at", "uplink.disconnected_at"):
        text = get_meta(conn, key)
        if text:
            try:
                found.append(parse_rfc3339(text))
            except ValueError:
                continue
    for sql in (
        "SELECT max(received_ms) FROM inbox",
        "SELECT max(created_ms) FROM outbox",
        "SELECT max(since_ms) FROM devices",
    ):
        value = conn.execute(sql).fetchone()[0]
        if value is not None:
            found.append(from_epoch_ms(int(value)))
    return max(found, default=None)


def _span(seconds: float) -> str:
    seconds = round(seconds)
    days = seconds / 86400
    if days >= 730:
        return f"{days / 365.25:.0f} years"
    if days >= 2:
        return f"{days:.0f} days"
    return human_duration(seconds)


def _offset() -> float:
    return time.time() - time.monotonic()


class WallClock:
    """Watches the wall clock for steps and judges whether it can be right."""

    def __init__(self, bus: Bus, reference: datetime | None = None) -> None:
        self.bus = bus
        self.reference = reference or utc_now()
        """The last time recorded before this start (for a new state database: the clock at its first start)."""
        self.steps = 0
        self._offset = _offset()
        self._warned = False

    async def watch(self) -> None:
        """Run for the life of the daemon: judge the clock once, then look for steps."""
        self.judge()
        while True:
            await asyncio.sleep(CHECK_S)
            self.check()

    def check(self) -> float | None:
        """Look for a step since the last look; announce it and return its size in seconds."""
        offset = _offset()
        step = offset - self._offset
        self._offset = offset
        if abs(step) <= STEP_S:
            return None
        self.steps += 1
        sign = "+" if step > 0 else "-"
        log.info(
            "wall clock stepped by %s%s (now %s); due prices, reservation expiries and label schedules re-armed",
            sign,
            _span(abs(step)),
            utc_now().isoformat(timespec="seconds"),
        )
        self.bus.publish(ClockStepped(step))
        self.judge()
        return step

    def judge(self) -> None:
        """Warn once if the clock is far from the last time this gateway recorded."""
        if self._warned:
            return
        now = utc_now()
        if now - self.reference > FAR_AHEAD:
            ahead = f"{_span((now - self.reference).total_seconds())} ahead of"
        elif self.reference - now > FAR_BEHIND:
            ahead = f"{_span((self.reference - now).total_seconds())} behind"
        else:
            return
        self._warned = True
        log.warning(
            "the wall clock reads %s, %s the last time this gateway recorded (%s): check the clock and NTP. "
            "Scheduled prices and reservation expiries follow the wall clock",
            now.isoformat(timespec="seconds"),
            ahead,
            self.reference.isoformat(timespec="seconds"),
        )
