"""Time is timezone-aware UTC inside and RFC 3339 with an offset at the edges."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """2026-11-24T13:05:00.123Z style, always with an offset."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 time; an offset is required (a time without one is ambiguous in a store)."""
    if not isinstance(text, str):
        raise ValueError("must be an RFC 3339 time string")
    moment = datetime.fromisoformat(text.replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError(f'"{text}" has no UTC offset; write it like 2026-11-24T08:00:00+01:00')
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is in the year 10000 in UTC
        raise ValueError(f'"{text}" is out of range: in UTC it falls outside the years 1 to 9999') from None


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_epoch_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def human_duration(seconds: float) -> str:
    """A duration as a person says it: 45 s, 12 min, 3 h 20 min."""
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
