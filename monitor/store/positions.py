"""Position bands: the sketch's position profile, summed into bands SQL can read.

A sketch's position profile (`Sketch.pos`: attention mass by distance from the end,
0 = the most recent item, up to 255) rides in the binary payload. Grafana's SQL needs
it as plain columns, so every `window_aggregates` row also carries the mass in a few
bands, on the same footing as the `sum_<metric>` columns: the sum over the row's
vectors, so rows add up exactly and `SUM(pos_3_4) / SUM(n)` is the mean share of
attention 3 or 4 items back.

The bands are fine near the end (each of the last three items is its own band: most
attention and most recency shifts are there) and roughly logarithmic further back:

    0 | 1 | 2 | 3-4 | 5-9 | 10-19 | 20-49 | 50-99 | 100-255

Mass beyond 255 positions is not in the profile; `n - Σ bands` is that remainder
(attention vectors sum to 1). NULL bands mark a row written before migration 0004 and
not yet derived from its payload (`monitor.store.maintenance.fill_position_bands`).

    >>> band_sums(np.r_[0.5, 0.25, np.zeros(254)])["pos_1"]
    0.25
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

import numpy as np

POSITIONS = 256  # monitor.sketch.POSITIONS (not imported: tables.py reads this module)
BANDS: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, 255),
)
COLUMNS: tuple[str, ...] = tuple(f"pos_{lo}" if lo == hi else f"pos_{lo}_{hi}" for lo, hi in BANDS)
# what a person reads for each band (dashboards): distance from the most recent item
LABELS: tuple[str, ...] = tuple(
    "latest" if hi == 0 else f"{lo} back" if lo == hi else f"{lo}-{hi} back" for lo, hi in BANDS
)
REST_LABEL = f"{POSITIONS}+ back"

_STARTS = np.array([lo for lo, _ in BANDS])


def band_matrix(pos: np.ndarray) -> np.ndarray:
    """(R, len(BANDS)) band sums of position profiles `pos` (R, POSITIONS) or (POSITIONS,)."""
    pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))
    return np.add.reduceat(pos, _STARTS, axis=1)


def band_sums(pos: np.ndarray) -> dict[str, float]:
    """The band columns of one sketch's position profile (its `pos`, mass summed over
    its vectors)."""
    return dict(zip(COLUMNS, band_matrix(pos)[0].tolist(), strict=True))


def complete(rows: Iterable[MutableMapping[str, object]]) -> int:
    """Add the band columns, derived from the payload, to each `window_aggregates` row
    (a dict, changed in place) that lacks them; returns how many were completed.

    Rows that carry them already are left alone, so a writer that computes them from
    the sketch in memory skips the decoding here."""
    todo = [r for r in rows if COLUMNS[0] not in r]
    if not todo:
        return 0
    from monitor.sketch import decode_payload  # numpy/pandas: not for tables.py's importers

    pos = np.stack([decode_payload(r["payload"]).pos for r in todo])  # type: ignore[arg-type]
    for r, sums in zip(todo, band_matrix(pos).tolist(), strict=True):
        r.update(zip(COLUMNS, sums, strict=True))
    return len(todo)
