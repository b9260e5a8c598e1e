"""Seq bookkeeping of one store, without a database: what a batch of new seqs does to its gaps.

A seq above `last_seq + 1` opens the gap `(last_seq + 1, seq - 1)`. A seq inside an open gap fills it:
the gap shrinks, splits in two, or closes when its last missing seq arrives (contract.md §5).
A store seen for the first time starts from `last_seq = 0`: its gateway numbers events from 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class Gap:
    """One missing range; `row` is its `seq_gaps` id (None until written)."""

    first: int
    last: int
    found_at: datetime
    row: int | None = None
    closed_at: datetime | None = None
    changed: bool = False


@dataclass(slots=True)
class StoreSeqs:
    """A store's last seq and open gaps, as read (locked) from the database."""

    store: str
    last_seq: int
    gaps: list[Gap] = field(default_factory=list)
    opened: int = 0
    closed: int = 0
    reused: int = 0  # seqs at or below last_seq that were in no gap: a new id for a seq already seen

    def place(self, seqs: list[int], now: datetime) -> None:
        """Account for new (non-duplicate) events' seqs, in any order."""
        for seq in sorted(seqs):
            if seq > self.last_seq:
                if seq > self.last_seq + 1:
                    self.gaps.append(Gap(self.last_seq + 1, seq - 1, now, changed=True))
                    self.opened += 1
                self.last_seq = seq
            else:
                self._fill(seq, now)

    def _fill(self, seq: int, now: datetime) -> None:
        for gap in self.gaps:
            if gap.closed_at is None and gap.first <= seq <= gap.last:
                break
        else:
            self.reused += 1
            return
        gap.changed = True
        if gap.first == gap.last:
            gap.closed_at = now
            self.closed += 1
        elif seq == gap.first:
            gap.first += 1
        elif seq == gap.last:
            gap.last -= 1
        else:  # split: the gap keeps its lower part, a new gap holds the upper part
            self.gaps.append(Gap(seq + 1, gap.last, gap.found_at, changed=True))
            gap.last = seq - 1

    @property
    def open_gaps(self) -> list[Gap]:
        return [gap for gap in self.gaps if gap.closed_at is None]
