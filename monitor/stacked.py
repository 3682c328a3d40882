"""Many series' sketches as stacked arrays (one row per series), merged with a few array
sums instead of a Python loop per series: a window's minutes (monitor.evaluate) and a
trailing baseline's hour partials (monitor.baselines). Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.sketch import BINS, POSITIONS, M, Sketch, decode_many, merge_encoded
from monitor.topk import TopK, merge_many


@dataclass
class Stacked:
    """Merged sketches of many series, stacked: one row of each array per series, in
    `keys` order. Top-K summaries, which only some series carry, are kept by row index."""

    keys: list[tuple]
    n: np.ndarray  # (S,) int64
    rejected: np.ndarray  # (S,) int64
    sums: np.ndarray  # (S, M)
    sumsq: np.ndarray  # (S, M)
    hist: np.ndarray  # (S, M, BINS) int64
    pos: np.ndarray  # (S, POSITIONS)
    topk: dict[int, tuple[TopK | None, dict[str, TopK]]]

    @classmethod
    def of(cls, sketches: dict[tuple, Sketch]) -> Stacked:
        sks = list(sketches.values())
        return cls(list(sketches), np.array([s.n for s in sks], dtype=np.int64),
                   np.array([s.rejected for s in sks], dtype=np.int64),
                   np.array([s.sums for s in sks]).reshape(len(sks), M),
                   np.array([s.sumsq for s in sks]).reshape(len(sks), M),
                   np.array([s.hist for s in sks], dtype=np.int64).reshape(len(sks), M, BINS),
                   np.array([s.pos for s in sks]).reshape(len(sks), POSITIONS),
                   {i: (s.items, s.attrs) for i, s in enumerate(sks) if s.items is not None or s.attrs})

    def sketch(self, i: int) -> Sketch:
        """Series i's merged sketch (its arrays are views of these)."""
        items, attrs = self.topk.get(i, (None, {}))
        return Sketch(int(self.n[i]), int(self.rejected[i]), self.sums[i], self.sumsq[i], self.hist[i],
                      self.pos[i], items, attrs)

    def sketches(self) -> dict[tuple, Sketch]:
        return {k: self.sketch(i) for i, k in enumerate(self.keys)}


@dataclass
class Window(Stacked):
    """Every series' sketch merged over a window (a WindowReader caches each minute as a
    Stacked). `keys` are the series in the order they first appear (oldest minute first).
    Per minute with data (oldest first), `minute_n` and `minute_sums` hold each series'
    count and metric sums (0 where a series has no row that minute)."""

    minute_n: np.ndarray  # (S, minutes) int64
    minute_sums: np.ndarray  # (S, minutes, M)
    present: np.ndarray  # (S, minutes) bool: the series has a row that minute


def merge_stacked(minutes: list[Stacked]) -> Window:
    """The window of these minutes (oldest first): equal, series by series, to merge_all of
    its minute sketches in minute order (the float sums are added in that order too)."""
    index: dict[tuple, int] = {}
    for mn in minutes:
        for k in mn.keys:
            index.setdefault(k, len(index))
    S, W = len(index), len(minutes)
    n, rejected = np.zeros(S, dtype=np.int64), np.zeros(S, dtype=np.int64)
    sums, sumsq = np.zeros((S, M)), np.zeros((S, M))
    hist, pos = np.zeros((S, M, BINS), dtype=np.int64), np.zeros((S, POSITIONS))
    minute_n, minute_sums = np.zeros((S, W), dtype=np.int64), np.zeros((S, W, M))
    present = np.zeros((S, W), dtype=bool)
    parts: dict[int, list[tuple[TopK | None, dict[str, TopK]]]] = {}
    first = np.arange(S)
    for w, mn in enumerate(minutes):
        idx = np.fromiter((index[k] for k in mn.keys), dtype=np.intp, count=len(mn.keys))
        if np.array_equal(idx, first[: len(idx)]):  # the usual case: the same series, in order
            idx = slice(0, len(idx))  # (in place, no gather and scatter)
        n[idx] += mn.n  # a series has one row per minute: idx holds no repeats
        rejected[idx] += mn.rejected
        sums[idx] += mn.sums
        sumsq[idx] += mn.sumsq
        hist[idx] += mn.hist
        pos[idx] += mn.pos
        minute_n[idx, w] = mn.n
        minute_sums[idx, w] = mn.sums
        present[idx, w] = True
        for i, tk in mn.topk.items():
            parts.setdefault(i if isinstance(idx, slice) else int(idx[i]), []).append(tk)
    seen = present.sum(axis=1)
    topk = {}
    for i, tks in parts.items():
        if len(tks) == 1 and seen[i] == 1:  # as merge_all of one sketch: kept as it is
            topk[i] = (tks[0][0], dict(tks[0][1]))
            continue
        items = [it for it, _ in tks if it is not None]
        names = dict.fromkeys(name for _, at in tks for name in at)
        topk[i] = (merge_many(items) if items else None,
                   {name: merge_many([at[name] for _, at in tks if name in at]) for name in names})
    return Window(list(index), n, rejected, sums, sumsq, hist, pos, topk, minute_n, minute_sums, present)


def stack_encoded(series: dict[tuple, list]) -> Stacked:
    """Stacked.of({key: merge_encoded(rows)}) of each series' encoded rows `(payload, n,
    rejected, sums, sumsq)` (as merge_encoded takes them), for less work: the series with
    one row (most: compacted minutes, hour partials) are decoded together (decode_many),
    with no Sketch built for each."""
    keys = list(series)
    S = len(keys)
    one = [i for i, k in enumerate(keys) if len(series[k]) == 1]
    rows = [series[keys[i]][0] for i in one]
    hist, pos, topk = decode_many([r[0] for r in rows])
    n = np.array([int(r[1]) for r in rows], dtype=np.int64)
    rejected = np.array([int(r[2]) for r in rows], dtype=np.int64)
    sums = np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), M)
    sumsq = np.array([r[4] for r in rows], dtype=np.float64).reshape(len(rows), M)
    if len(one) == S:
        return Stacked(keys, n, rejected, sums, sumsq, hist, pos, topk)
    out = Stacked(keys, np.zeros(S, dtype=np.int64), np.zeros(S, dtype=np.int64), np.zeros((S, M)),
                  np.zeros((S, M)), np.zeros((S, M, BINS), dtype=np.int64), np.zeros((S, POSITIONS)), {})
    for whole, part in ((out.n, n), (out.rejected, rejected), (out.sums, sums), (out.sumsq, sumsq),
                        (out.hist, hist), (out.pos, pos)):
        whole[one] = part
    out.topk = {one[j]: tk for j, tk in topk.items()}
    for i in sorted(set(range(S)) - set(one)):
        s = merge_encoded(series[keys[i]])
        out.n[i], out.rejected[i] = s.n, s.rejected
        out.sums[i], out.sumsq[i], out.hist[i], out.pos[i] = s.sums, s.sumsq, s.hist, s.pos
        if s.items is not None or s.attrs:
            out.topk[i] = (s.items, s.attrs)
    return out
