"""What the background thread accumulates between two reads of the collector's `_acc`:
dense per-series rows of counts, sums, histograms and position profiles, and top-K
summaries on interned key ids (`_SeriesStore`). A series is (minute, cohort, layer, head).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from collectors.block import ROLLUP
from monitor import sketch as sk
from monitor.sketch import _key
from monitor.topk import TopK


class _SeriesStore:
    """What the background thread accumulates between two reads of `_acc`: per series
    (minute, cohort, layer, head), dense rows of counts, sums, histograms and position
    profiles, and top-K summaries whose keys are ids into a table of the keys' text.

    A series already in the accumulator `acc` moves into its row when the row is made,
    so that every batch adds to the running total in turn, as Sketch.merge of every
    batch's sketch would: sums add in the same order (the batch's sums are sequential
    from 0.0, so adding into a zeroed row equals taking the first batch's sketch), and
    top-K summaries go through the same merges, on ids. `fold_into` puts the rows back.
    """

    def __init__(self, acc: dict[tuple, sk.Sketch], capacity: int = 64):
        self.acc = acc
        self.index: dict[tuple, int] = {}
        self.labels: list[tuple] = []
        self.items: list[TopK | None] = []
        self.attrs: list[dict[str, TopK]] = []
        self.key_ids: dict[str, int] = {}  # text -> id
        self.key_text: list[str] = []  # id -> text
        # integer keys and numpy str keys seen, sorted, and the ids of their text
        self.sorted_keys = _no_sorted_keys()
        self.dup_ids = False  # whether a summary may hold one id twice
        self._lut = np.full(64, -1, dtype=np.int64)  # scratch of _merge, all -1 between uses
        self._layouts: dict[tuple, np.ndarray] = {}
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "n", None)
        M = sk.M
        fresh = {
            "n": np.zeros(cap, dtype=np.int64),
            "rejected": np.zeros(cap, dtype=np.int64),
            "sums": np.zeros((cap, M)),
            "sumsq": np.zeros((cap, M)),
            "hist": np.zeros((cap, M, sk.BINS), dtype=np.int64),
            "pos": np.zeros((cap, sk.POSITIONS)),
        }
        for name, arr in fresh.items():
            if old is not None:
                prev = getattr(self, name)
                arr[: len(prev)] = prev
            setattr(self, name, arr)

    def row(self, label: tuple) -> int:
        r = self.index.get(label)
        if r is None:
            r = self.index[label] = len(self.labels)
            self.labels.append(label)
            self.items.append(None)
            self.attrs.append({})
            if r >= len(self.n):
                self._alloc(2 * len(self.n))
            old = self.acc.pop(label, None)
            if old is not None:
                self._load(r, old)
        return r

    def _load(self, r: int, s: sk.Sketch) -> None:
        self.n[r], self.rejected[r] = s.n, s.rejected
        self.sums[r], self.sumsq[r], self.hist[r], self.pos[r] = s.sums, s.sumsq, s.hist, s.pos
        self.items[r] = None if s.items is None else self._with_ids(s.items)
        self.attrs[r] = {a: self._with_ids(t) for a, t in s.attrs.items()}

    def _ids(self, text) -> np.ndarray:
        ids = np.empty(len(text), dtype=np.int64)
        table, known = self.key_ids, self.key_text
        for j, v in enumerate(text):
            i = table.get(v)
            if i is None:
                i = table[v] = len(known)
                known.append(v)
            ids[j] = i
        return ids

    def _with_ids(self, t: TopK) -> TopK:
        ids = self._ids(t.keys.tolist())
        if len(np.unique(ids)) < len(ids):
            self.dup_ids = True
        return TopK(t.k, ids, t.counts, t.total)

    def rows_for(self, minute: int, cohort: str, ly: int, h: int) -> np.ndarray:
        """Rows of one (minute, cohort): per layer, heads 0..h-1 then "*"."""
        key = (minute, cohort, ly, h)
        rows = self._layouts.get(key)
        if rows is None:
            rows = self._layouts[key] = np.array([
                self.row((minute, cohort, str(layer), ROLLUP if head == h else str(head)))
                for layer in range(ly) for head in range(h + 1)
            ])
        return rows

    def add_rejected(self, label: tuple) -> None:
        r = self.row(label)  # (first: it may grow the arrays)
        self.rejected[r] += 1

    def add(self, rows, counts, sums, sumsq, hist, pos) -> None:
        """One batch's groups (rows distinct); pos may be shorter than POSITIONS."""
        self.n[rows] += counts
        self.sums[rows] += sums
        self.sumsq[rows] += sumsq
        self.hist[rows] += hist
        self.pos[rows, : pos.shape[1]] += pos

    def intern(self, tops: list[TopK], keys: np.ndarray) -> list[TopK]:
        """The summaries with their key codes (into `keys`) replaced by ids of the text."""
        codes = np.concatenate([t.keys for t in tops]) if tops else np.empty(0, np.int64)
        if not len(codes):
            return [TopK(t.k, np.empty(0, dtype=np.int64), t.counts, t.total) for t in tops]
        used = np.zeros(len(keys), dtype=bool)  # (a table: np.unique would sort or hash)
        used[codes] = True
        uc = np.flatnonzero(used)
        if keys.dtype.kind in "iu" and np.can_cast(keys.dtype, np.int64):
            ids = self._table_ids(keys[uc].astype(np.int64), "num")
        elif keys.dtype.kind == "U":  # str() of an element is the element
            ids = self._table_ids(keys[uc], "str")
        else:
            vals = keys[uc].tolist()
            ids = self._ids(vals if keys.dtype == object else [_key(v) for v in vals])
        if not self.dup_ids and len(ids) > 1:
            s = np.sort(ids)
            if (s[1:] == s[:-1]).any():
                self.dup_ids = True  # two keys with one text (1 and "1"): merges must sum them
        lut = np.empty(int(uc[-1]) + 1, dtype=np.int64)
        lut[uc] = ids
        return [TopK(t.k, lut[t.keys], t.counts, t.total) for t in tops]

    def _table_ids(self, vals: np.ndarray, kind: str) -> np.ndarray:
        """Ids of the text of distinct integer ("num") or numpy str ("str") keys: the
        values seen so far are kept sorted beside their ids, so that only new ones are made
        text and looked up."""
        known, known_ids = self.sorted_keys[kind]
        if len(known):
            at = np.minimum(np.searchsorted(known, vals), len(known) - 1)
            found = known[at] == vals
            ids = np.where(found, known_ids[at], -1)
        else:
            found = np.zeros(len(vals), dtype=bool)
            ids = np.full(len(vals), -1, dtype=np.int64)
        new = np.flatnonzero(~found)
        if len(new):
            ids[new] = self._ids([_key(v) for v in vals[new].tolist()])
            merged = np.concatenate([known, vals[new]])
            order = np.argsort(merged, kind="stable")
            self.sorted_keys[kind] = (merged[order], np.concatenate([known_ids, ids[new]])[order])
        return ids

    def merge_topk(self, row: int, attr: str | None, tk: TopK) -> None:
        if attr is None:
            cur = self.items[row]
            self.items[row] = tk if cur is None else self._merge(cur, tk)
        else:
            d = self.attrs[row]
            cur = d.get(attr)
            d[attr] = tk if cur is None else self._merge(cur, tk)

    def _merge(self, a: TopK, b: TopK) -> TopK:
        """merge_many([a, b]) on ids. With no id twice in a summary, the first-seen order
        of a.keys + b.keys is a's keys then b's new ones, and each sum is a's counter plus
        b's (bincount's 0.0 + a + b, as counters are > 0): found with a lookup table."""
        if self.dup_ids or not (len(a.keys) and len(b.keys)):
            return _merge_ids(a, b)
        na = len(a.keys)
        lut = self._lut
        if len(lut) < len(self.key_text):
            lut = self._lut = np.full(2 * len(self.key_text), -1, dtype=np.int64)
        lut[a.keys] = np.arange(na)
        hit = lut[b.keys]
        lut[a.keys] = -1
        new = hit < 0
        n_new = int(np.count_nonzero(new))
        hit[new] = na + np.arange(n_new)
        keys = np.concatenate([a.keys, b.keys[new]])
        summed = np.zeros(na + n_new)
        summed[:na] = a.counts
        summed[hit] += b.counts
        total = float(sum(s.total for s in (a, b)))
        return TopK._reduced(keys, summed, min(a.k, b.k), total)

    def fold_into(self, acc: dict[tuple, sk.Sketch]) -> None:
        text = np.array(self.key_text, dtype=object) if self.key_text else np.empty(0, dtype=object)

        def keyed(t: TopK | None) -> TopK | None:
            return None if t is None else TopK(t.k, text[t.keys], t.counts, t.total)

        for r, label in enumerate(self.labels):
            s = sk.Sketch(
                int(self.n[r]), int(self.rejected[r]), self.sums[r].copy(),
                self.sumsq[r].copy(), self.hist[r].copy(), self.pos[r].copy(),
                keyed(self.items[r]), {a: keyed(t) for a, t in self.attrs[r].items()},
            )
            old = acc.get(label)
            acc[label] = s if old is None else old.merge(s)
        used = len(self.labels)
        for arr in (self.n, self.rejected, self.sums, self.sumsq, self.hist, self.pos):
            arr[:used] = 0
        self.index.clear()
        self.labels.clear()
        self.items.clear()
        self.attrs.clear()
        self.key_ids.clear()
        self.key_text.clear()
        self.sorted_keys = _no_sorted_keys()
        self.dup_ids = False
        self._layouts.clear()


def _merge_ids(a: TopK, b: TopK) -> TopK:
    """monitor.topk.merge_many([a, b]) of summaries keyed by interned ids (int64): the
    same first-seen order, sums and reduction as with the keys' text."""
    parts = (a, b)
    k = min(s.k for s in parts)
    total = float(sum(s.total for s in parts))
    full = [s for s in parts if len(s.keys)]
    if not full:
        return TopK(k, np.empty(0, dtype=np.int64), np.empty(0), total)
    if len(full) == 1:
        return TopK._reduced(full[0].keys, full[0].counts, k, total)
    codes, uniq = pd.factorize(np.concatenate([a.keys, b.keys]), sort=False)
    summed = np.bincount(codes, weights=np.concatenate([a.counts, b.counts]), minlength=len(uniq))
    return TopK._reduced(np.asarray(uniq, dtype=np.int64), summed, k, total)


def _no_sorted_keys() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    empty_ids = np.empty(0, dtype=np.int64)
    return {"num": (np.empty(0, dtype=np.int64), empty_ids), "str": (np.empty(0, dtype="U1"), empty_ids)}
