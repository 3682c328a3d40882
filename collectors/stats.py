"""A collector's counts: since it started (CollectorStats, what `stats` returns), and per
clock minute (the collector_health rows).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CollectorStats:
    """Counts since the collector started. `observed`: requests the background examined
    (accepted + rejected), as collector_health counts them; `dropped` apart: turned away
    by a full queue (or after close), or accepted and then lost."""

    observed: int
    accepted: int
    rejected: dict[str, int]
    dropped: int
    spilled: int
    written: int
    queue_depth: int
    pending_batches: int
    bad_spill_files: int = 0  # unreadable spill files moved to bad/ (their batches lost)


@dataclass
class _Minute:
    """Health counters of one clock minute."""

    observed: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    dropped: int = 0
    spilled: int = 0
    written: int = 0
