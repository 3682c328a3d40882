"""Summarising a block of accepted requests into the collector's series.

Two paths make a block's values: `from_weights` computes them from the rows (the numpy
path), `from_summaries` takes what the model's device computed (collectors.torch,
`on_device=True`). `accumulate` adds either to the series in the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from collectors.block import ROLLUP, Block, label_ok, time_ok
from collectors.grouping import (
    _group_sums,
    _Groups,
    _head_mean,
    _row_positions,
    _summary_positions,
    group_requests,
)
from collectors.grouptopk import _layer_mass, _MeanPositions, _topk_all_groups, _topk_of_groups
from collectors.series import _SeriesStore
from monitor import metrics as mx
from monitor import sketch as sk


class Values(NamedTuple):
    """A block's accepted requests (n of them), summarised by either path.

    `v_head` (n * layers * heads, METRICS) and `v_mean` (n * layers, METRICS), `div`
    (n * layers,) head_diversity of the head-mean rows; `pos` (R * (layers * heads +
    layers), positions) each group's summed reversed rows, head rows of every group
    then head-mean rows (`_row_positions`); `mean` (n, layers, L) head-mean rows, for
    the top-K of items and attribute values (None: none taken)."""

    g: _Groups
    v_head: np.ndarray
    v_mean: np.ndarray
    div: np.ndarray
    pos: np.ndarray
    mean: np.ndarray | None
    lengths: np.ndarray


def from_weights(b: Block, kept) -> Values:
    """The numpy path: the metrics of the block's rows (`kept`: its accepted ones)."""
    ly, h = b.layout
    S = ly * h  # (layer, head) slots of a request
    W = kept(b.weights)  # (n, ly, h, L), padding zeroed
    lengths = kept(b.lengths)
    n, L = len(W), W.shape[-1]
    mean = _head_mean(W)  # (n, ly, L): the layer's head-averaged attention
    len_mean = np.repeat(lengths, ly)
    v_head = mx.compute(W.reshape(n * S, L), np.repeat(lengths, S))
    v_mean = mx.compute(mean.reshape(n * ly, L), len_mean)
    div = (
        mx.head_diversity(W.reshape(n * ly, h, L), len_mean)
        if h > 1
        else np.zeros(n * ly)
    )
    groups = group_requests(b, kept)
    pos = _row_positions(W.reshape(n, S, L), mean, groups)
    return Values(groups, v_head, v_mean, div, pos, mean, lengths)


def from_summaries(s, b: Block, kept) -> Values:
    """The on-device path: the device's metrics and position profiles of the block's
    accepted rows (`s`: the resolved summaries, `b` their block_from_summaries)."""
    ly, h = b.layout
    m = len(mx.METRICS)
    V = kept(s.values)  # (n, ly, h + 1, ALL_METRICS): the head-mean row last
    n = len(V)
    v_head = V[:, :, :h, :m].reshape(n * ly * h, m)
    v_mean = V[:, :, h, :m].reshape(n * ly, m)
    div = V[:, :, h, m].reshape(n * ly)
    groups = group_requests(b, kept)
    pos = _summary_positions(s.pos, kept(np.asarray(s.groups)), groups, h)
    mean = None if s.mean_rows is None else kept(s.mean_rows)
    return Values(groups, v_head, v_mean, div, pos, mean, kept(b.lengths))


def accumulate(series: _SeriesStore, b: Block, kept, v: Values, topk_items: int,
               topk_attr_values: int) -> None:
    """Add one batch's accepted requests to the series, whichever path made the values:
    sums, histograms and position profiles, and the top-K of items (at most `topk_items`)
    and of each attribute's values (`topk_attr_values`)."""
    g, v_head, v_mean, div, pos, mean, lengths = v
    ly, h = b.layout
    S = ly * h
    n, R = len(g.minutes), len(g.labels)
    # store rows of each group's series: per layer, heads 0..h-1 then "*"
    rows = np.stack([series.rows_for(minute, cohort, ly, h) for minute, cohort in g.labels])
    rows = rows.reshape(R, ly, h + 1)
    rows_head = rows[:, :, :h].reshape(R * S)
    rows_mean = rows[:, :, h].reshape(R * ly)

    # sums and sums of squares, per group in row order (the sums monitor.sketch.build
    # makes)
    M, m = sk.M, len(mx.METRICS)
    s, q = _group_sums([v_head.reshape(n, S * m), v_mean.reshape(n, ly * m), div.reshape(n, ly)], g)
    sums = np.zeros((R * (S + ly), M))
    sumsq = np.zeros((R * (S + ly), M))
    for out, x in ((sums, s), (sumsq, q)):  # x: per group, head rows, mean rows, div
        out[: R * S, : M - 1] = x[:, : S * m].reshape(R * S, m)
        out[R * S :, : M - 1] = x[:, S * m : (S + ly) * m].reshape(R * ly, m)
        out[R * S :, M - 1] = x[:, (S + ly) * m :].reshape(R * ly)
    bounds = g.bounds
    counts = np.concatenate([np.repeat(np.diff(bounds), S), np.repeat(np.diff(bounds), ly)])

    # histograms: bincounts over (group, metric, bin) cells; head rows have no
    # head_diversity (NaN: no bin), head-mean rows have all M metrics
    nb = M * (sk.BINS + 1)
    cells = R * (S + ly) * nb
    hist = np.zeros(cells, dtype=np.int64)
    n_m = len(mx.METRICS)
    for vals, metrics, first_col, per_req, g0 in (
        (v_head, mx.METRICS, 0, S, 0),
        (v_mean, mx.METRICS, 0, ly, R * S),
        (div.reshape(-1, 1), mx.ALL_METRICS[n_m:], n_m, ly, R * S),
    ):
        bins = sk.bin_index(vals, metrics)
        off = (first_col + np.arange(len(metrics))) * (sk.BINS + 1)
        # cell: group g0 + slot (+ the request's group), metric, bin; added in place
        b3 = bins.reshape(n, per_req, len(metrics))
        b3 += (g0 + np.arange(per_req))[:, None] * nb + off
        if g.rq is not None:
            b3 += (g.rq * (per_req * nb))[:, None, None]
        hist += np.bincount(bins.reshape(-1), minlength=cells)
    hist = hist.reshape(R * (S + ly), M, sk.BINS + 1)[:, :, : sk.BINS]
    series.add(np.concatenate([rows_head, rows_mean]), counts, sums, sumsq, hist, pos)

    # items and attribute values: on the head="*" series only (keeps rows small)
    named = []
    if b.item_codes is not None:
        named.append((None, b.item_codes, b.item_keys, topk_items))
    for name, (acodes, akeys) in (b.attrs or {}).items():
        named.append((name, acodes, akeys, topk_attr_values))
    if named and mean is not None:
        positions = None
        mass = _layer_mass(mean)  # once for every key set
        for attr, codes, keys, k in named:
            tops = _topk_all_groups(kept(codes), len(keys), mass, lengths, g.rq, R, k)
            if tops is None:  # too many cells for one dense pass: group by group
                if positions is None:
                    positions = _MeanPositions(mean, lengths, g.rq, g.order, R)
                tops = _topk_of_groups(kept(codes), len(keys), positions, k)
            for row, tk in zip(rows_mean.tolist(), series.intern(tops, keys), strict=True):
                series.merge_topk(row, attr, tk)


def count_rejected(series: _SeriesStore, b: Block, bad: np.ndarray) -> None:
    """Rejected requests count on the head="*" series of each layer of their cohort."""
    ly, _ = b.layout
    usable = {}  # a cohort that is not a label (bad_label) must not become a series
    for ts, cohort in zip(b.ts[bad], b.cohorts[bad], strict=True):
        if not isinstance(cohort, str) or not time_ok(ts):
            continue
        if (ok := usable.get(cohort)) is None:
            ok = usable[cohort] = label_ok(cohort)
        if not ok:
            continue
        for layer in range(ly):
            series.add_rejected((int(ts // 60), str(cohort), str(layer), ROLLUP))
