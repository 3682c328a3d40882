"""A batch's accepted requests grouped by (minute, cohort), and the sums a sketch takes of
each group: metrics' sums and squares, position profiles.

Each sum adds its rows in request order, one after the other from 0.0, in float64: the
numbers monitor.sketch.build makes for the same rows, so that the fast path writes what
the plain one would, to the bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from collectors.block import Block
from monitor import sketch as sk


@dataclass(frozen=True)
class _Groups:
    """A batch's accepted requests grouped by (minute, cohort), groups in first-seen order."""

    labels: list[tuple[int, str]]  # (minute, cohort) of each group
    rq: np.ndarray | None  # (n,) group of each request; None: all in the one group
    order: np.ndarray | None  # the requests by group (a stable order); None: one group
    bounds: np.ndarray  # (R + 1,): group r is order[bounds[r] : bounds[r + 1]]
    minutes: np.ndarray  # (n,) int64
    one_minute: bool
    t_min: float  # the earliest timestamp


def group_requests(b: Block, kept) -> _Groups:
    """The accepted requests grouped by (minute, cohort), groups in first-seen order."""
    ts = kept(b.ts)
    minutes = (ts // 60).astype(np.int64)
    if b.cohort_codes is not None:
        coh_code, ucoh = kept(b.cohort_codes), b.cohort_keys
    else:
        coh_code, ucoh = pd.factorize(kept(b.cohorts), sort=False)
    n = len(minutes)
    m0, m1 = int(minutes.min()), int(minutes.max())
    C = len(ucoh)
    req_key = coh_code if m0 == m1 else (minutes - m0) * C + coh_code
    first = int(req_key[0])
    if (req_key == first).all():
        rq, rkeys, order, bounds = None, [first], None, np.array([0, n])
    else:
        rq, rkeys = pd.factorize(req_key, sort=False)
        rkeys = rkeys.tolist()
        order = np.argsort(rq, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(rq, minlength=len(rkeys)))])
    labels = [(m0 + key // C, str(ucoh[key % C])) for key in rkeys]
    return _Groups(labels, rq, order, bounds, minutes, m0 == m1, float(ts.min()))


def _taker(keep: np.ndarray, n_ok: int) -> Callable[[np.ndarray], np.ndarray]:
    """a -> a[keep], without the copy when every row is kept."""
    if n_ok == len(keep):
        return lambda a: a
    return lambda a: a[keep]


def _row_positions(W: np.ndarray, mean: np.ndarray, g: _Groups) -> np.ndarray:
    """Position profiles of the numpy path: per group, the sum of its rows reversed (the
    most recent position first), head rows `W` (n, layers * heads, L) of every group, then
    head-mean rows `mean` (n, layers, L); float64 sums, as monitor.sketch.build makes them."""
    n, S, L = W.shape
    ly = mean.shape[1]
    R = len(g.labels)
    if g.order is not None:
        W, mean = W[g.order], mean[g.order]
    Lp = min(L, sk.POSITIONS)
    pos = np.empty((R * (S + ly), Lp))
    for r in range(R):
        a, z = g.bounds[r], g.bounds[r + 1]
        pos[r * S : (r + 1) * S] = _seq_sum(W[a:z])[:, ::-1][:, :Lp]
        pos[R * S + r * ly : R * S + (r + 1) * ly] = _seq_sum(mean[a:z])[:, ::-1][:, :Lp]
    return pos


def _summary_positions(pos: np.ndarray, groups: np.ndarray, g: _Groups, h: int) -> np.ndarray:
    """The device's position profiles in `_row_positions`' layout. `pos` (G, layers,
    heads + 1, P) is per group of the capture, `groups` (n,) the capture's group of each
    accepted request: both group by (minute, cohort), so the first request of a group here
    names its group there. (The device summed every row it accepted: a request the
    collector rejects for a bad item id or attribute value stays in its group's profile.)"""
    firsts = g.bounds[:-1] if g.order is None else g.order[g.bounds[:-1]]
    P = pos[groups[firsts]]  # (R, layers, heads + 1, P)
    R, ly, _, Lp = P.shape
    return np.concatenate([P[:, :, :h].reshape(R * ly * h, Lp), P[:, :, h].reshape(R * ly, Lp)])


def _head_mean(W: np.ndarray) -> np.ndarray:
    """W.mean(axis=2), the same numbers (heads added in order, divided as np.mean does),
    without the strided reduction."""
    h = W.shape[2]
    out = W[:, :, 0].copy() if h == 1 else np.add(W[:, :, 0], W[:, :, 1])
    for j in range(2, h):
        out += W[:, :, j]
    if h == 1:
        return out
    if h & (h - 1) == 0:  # 1/h is exact: the same rounding as the divide, ~10x faster
        np.multiply(out, out.dtype.type(1.0 / h), out=out)
    else:  # (a float32 / intp divide goes through float64 and back, as np.mean's does)
        np.true_divide(out, np.intp(h), out=out, casting="unsafe")
    return out


def _group_sums(parts: list[np.ndarray], g: _Groups) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the `_seq_sum` of the rows of `parts` (each (n, width_i), side by side)
    and of their squares, NaN counted as 0 (inf as the largest float): (R, sum of
    widths) each. One array for all parts: a few calls instead of a few per part."""
    x = np.concatenate(parts, axis=1)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0)
    R = len(g.labels)
    s = np.empty((R, x.shape[1]))
    q = np.empty_like(s)
    for r in range(R):
        a, z = g.bounds[r], g.bounds[r + 1]
        xr = x[a:z] if g.order is None else x.take(g.order[a:z], axis=0)
        s[r] = _seq_sum(xr)
        own = g.order is not None  # (xr is a copy: square it in place)
        q[r] = _seq_sum(np.multiply(xr, xr, out=xr if own else None))
    return s, q


def _seq_sum(x: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in float64, one row after the other from 0.0: the numbers of the
    sparse one-hot product in monitor.sketch.build for a group made of these rows."""
    if x[0].size < 16:  # (a reduce to one element would sum pairwise)
        flat = np.cumsum(x.reshape(len(x), -1), axis=0, dtype=np.float64)[-1]
        return flat.reshape(x.shape[1:]) + 0.0
    return np.add.reduce(x, axis=0, dtype=np.float64, initial=0.0)
