"""Weight to units, levels with hysteresis, hands on the shelf, silent sensors."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.sensors import parse_json_reading
from gateway.config import ShelfConfig
from gateway.shelves import ShelfTracker, SilenceWatch, StabilityFilter

SLOT = ShelfConfig(sensor="s", sku="A1", unit_weight_g=400, tare_g=50, capacity=12, low=3)


def feed(tracker: ShelfTracker, weights: list[float]) -> list[tuple[int, str]]:
    changes = []
    for weight in weights:
        change = tracker.add(weight)
        if change is not None:
            changes.append((change.units, change.level))
    return changes


def test_weights_become_units_and_levels() -> None:
    tracker = ShelfTracker(SLOT)
    assert feed(tracker, [50 + 12 * 400] * 5) == [(12, "ok")]
    assert feed(tracker, [50 + 3 * 400] * 5) == [(3, "low")]
    assert feed(tracker, [50] * 5) == [(0, "empty")]
    assert feed(tracker, [50 + 20 * 400] * 5) == [(12, "ok")]  # never above capacity
    assert feed(tracker, [0] * 5) == [(0, "empty")]  # never below zero


def test_a_hand_on_the_shelf_for_two_seconds_changes_nothing() -> None:
    tracker = ShelfTracker(SLOT)
    feed(tracker, [50 + 8 * 400] * 5)
    rng = random.Random(1)
    # readings every 0.25 s: 2 s of a hand pressing, lifting, putting back
    hand = [50 + 8 * 400 + rng.uniform(-900, 1500) for _ in range(8)]
    assert feed(tracker, hand + [50 + 8 * 400] * 5) == []
    assert tracker.units == 8


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.floats(min_value=0.0, max_value=8.0))
def test_noise_around_the_threshold_changes_the_level_at_most_once(seed: int, noise_g: float) -> None:
    tracker = ShelfTracker(SLOT)
    feed(tracker, [50 + 6 * 400] * 5)
    rng = random.Random(seed)
    # the slot holds exactly `low + 0.5` units' worth: the worst place to hover
    weights = [50 + 3.5 * 400 + rng.uniform(-noise_g, noise_g) for _ in range(300)]
    changes = feed(tracker, weights)
    assert len(changes) <= 1


def test_stability_filter_needs_agreement() -> None:
    f = StabilityFilter(window=3, tolerance_g=10)
    assert f.add(100) is None and f.add(105) is None
    assert f.add(102) == 102
    assert f.add(500) is None


def test_silence_is_reported_once_and_recovery_once() -> None:
    watch = SilenceWatch(interval_s=10)
    assert watch.heard(0.0) is True  # first reading: online
    assert watch.heard(5.0) is False
    assert watch.check(14.0) is False
    assert watch.check(16.0) is True
    assert watch.check(30.0) is False  # once
    assert watch.heard(31.0) is True  # back


def test_json_shapes() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    assert parse_json_reading("s", now, b'{"weight_g": 2405.5}').weight_g == 2405.5  # type: ignore[union-attr]
    assert parse_json_reading("s", now, b'{"weight": 2.4, "unit": "kg"}').weight_g == 2400.0  # type: ignore[union-attr]
    assert parse_json_reading("s", now, b'{"HX711": {"Weight": 1.5}}').weight_g == 1500.0  # type: ignore[union-attr]
    assert parse_json_reading("s", now, b'{"count": 4, "battery": 90}').count == 4  # type: ignore[union-attr]
    assert parse_json_reading("s", now, b'{"occupancy": true}').presence is True  # type: ignore[union-attr]
    for bad in (b"nope", b"[1]", b'{"weight": "heavy"}', b'{"temperature": 20}'):
        assert parse_json_reading("s", now, bad) is None
