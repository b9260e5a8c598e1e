"""Seq gaps of one store (gateway.ingest.gaps): opened, split and closed, checked against the missing seqs."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.ingest.events import BadMessage, IncomingEvent, read_event
from gateway.ingest.gaps import StoreSeqs

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def missing(state: StoreSeqs) -> set[int]:
    return {seq for gap in state.open_gaps for seq in range(gap.first, gap.last + 1)}


def test_a_jump_opens_a_gap_that_splits_then_closes() -> None:
    state = StoreSeqs("s", 0)
    state.place([1, 2, 7], NOW)
    assert [(g.first, g.last) for g in state.open_gaps] == [(3, 6)]
    state.place([5], NOW)
    assert sorted((g.first, g.last) for g in state.open_gaps) == [(3, 4), (6, 6)]
    state.place([3, 6], NOW)
    assert [(g.first, g.last) for g in state.open_gaps] == [(4, 4)]
    state.place([4], NOW)
    assert state.open_gaps == [] and state.last_seq == 7
    assert (state.opened, state.closed, state.reused) == (1, 2, 0)


def test_a_seq_seen_before_under_a_new_id_is_counted_not_a_gap() -> None:
    state = StoreSeqs("s", 3)
    state.place([2], NOW)
    assert state.open_gaps == [] and state.reused == 1


@given(st.permutations(list(range(1, 40))), st.lists(st.integers(1, 8), min_size=1, max_size=40))
def test_open_gaps_are_exactly_the_missing_seqs(order: list[int], sizes: list[int]) -> None:
    state, seen, start = StoreSeqs("s", 0), set[int](), 0
    for size in sizes * 40:
        batch = order[start : start + size]
        if not batch:
            break
        start += size
        state.place(batch, NOW)
        seen |= set(batch)
        assert missing(state) == set(range(1, max(seen) + 1)) - seen
        assert state.last_seq == max(seen)
    assert state.open_gaps == []


def test_every_bad_field_is_named() -> None:
    bad = read_event("r/stores/a1/events/scan", b'{"id": "", "store": "b2", "type": "sc an", "seq": 0, "at": "x"}')
    assert isinstance(bad, BadMessage)
    fields = [e.split(":")[0] for e in bad.errors]
    assert fields == ["id", "store", "type", "seq", "at", "data"]
    assert read_event("r/stores/a1/events/scan", b"[1]").errors == [  # type: ignore[union-attr]
        "payload: must be a JSON object (the event envelope)"
    ]
    good = read_event(
        "r/stores/a1/events/scan",
        b'{"id": "e1", "store": "a1", "type": "scan", "seq": 4, "at": "2026-12-03T10:00:00+01:00", "data": {"k": 1}}',
    )
    assert isinstance(good, IncomingEvent)
    assert (good.store, good.seq, good.at, good.data) == ("a1", 4, NOW, '{"k":1}')
