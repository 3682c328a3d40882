"""The store rows a collector writes: window_aggregates rows of closed minutes (with their
roll-ups over cohorts and position bands), sampled attention_events rows, and
collector_health rows. What they hold of the collector is its `Source`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np

from collectors.block import MAX_LABEL_CHARS, ROLLUP, Block
from collectors.gil import _yield_gil
from collectors.stats import _Minute
from monitor import metrics as mx
from monitor import sketch as sk
from monitor.store import positions


class Source(NamedTuple):
    """Who writes a row: the collector's model, version and id."""

    model: str
    version: str
    collector_id: str


def aggregate_rows(source: Source, acc: dict[tuple, sk.Sketch], keys: list[tuple], written_at,
                   hasher) -> list[dict]:
    """The window_aggregates rows of the sketches `keys` (sorted), taken out of `acc`,
    then their roll-ups over cohorts; each with its position bands."""
    aggs: list[dict] = []
    profiles: list[np.ndarray] = []  # each row's sketch's position profile
    rollup: dict[tuple, sk.Sketch] = {}
    for key in keys:
        s = acc.pop(key)
        minute, cohort, layer, head = key
        aggs.append(agg_row(source, minute, cohort, layer, head, s, written_at, hasher))
        profiles.append(s.pos)
        rk = (minute, ROLLUP, layer, head)
        rollup[rk] = s if rk not in rollup else rollup[rk].merge(s)
        if len(aggs) % 64 == 0:
            _yield_gil()
    for (minute, cohort, layer, head), s in sorted(rollup.items()):
        aggs.append(agg_row(source, minute, cohort, layer, head, s, written_at, hasher))
        profiles.append(s.pos)
    if aggs:  # the position bands, from the profiles in memory (no payload to decode)
        bands = positions.band_matrix(np.stack(profiles))
        for row, sums in zip(aggs, bands.tolist(), strict=True):
            row.update(zip(positions.COLUMNS, sums, strict=True))
    return aggs


def agg_row(source: Source, minute, cohort, layer, head, s: sk.Sketch, written_at, hasher) -> dict:
    """The window_aggregates row of one sketch (`hasher`: the collector's ItemHasher, or None)."""
    if cohort != ROLLUP and s.items is not None:
        # top-K items ride on the roll-up only (DESIGN §4: keeps rows small); the
        # per-cohort summaries were needed in memory to merge that roll-up
        s = sk.Sketch(s.n, s.rejected, s.sums, s.sumsq, s.hist, s.pos, None, s.attrs)
    elif s.items is not None and hasher is not None:
        # no raw id reaches the store; hashed keys still merge exactly (same key)
        s = dataclasses.replace(s, items=hasher.topk(s.items))
    row = s.to_row()
    row.update(
        model=source.model,
        version=source.version,
        cohort=cohort,
        layer=layer,
        head=head,
        bucket_start=_utc(minute * 60),
        bucket_seconds=60,
        collector_id=source.collector_id,
        written_at=written_at,
    )
    return row


def health_row(source: Source, minute: int, h: _Minute, queue_depth: int) -> dict:
    """The collector_health row of one minute's counters."""
    return {
        "collector_id": source.collector_id,
        "model": source.model,
        "version": source.version,
        "minute": _utc(minute * 60),
        "host": socket.gethostname()[:255],
        "pid": os.getpid(),
        "observed": h.observed,
        "accepted": h.accepted,
        "rejected": sum(h.rejected.values()),
        "rejected_by_reason": dict(h.rejected),
        "dropped": h.dropped,
        "spilled": h.spilled,
        "written": h.written,
        "queue_depth": queue_depth,
        "replayed": False,
    }


def event_row(source: Source, b: Block, i: int, w: np.ndarray, last: np.ndarray, hasher) -> dict:
    """The attention_events row of request `i` of the block: `w` (layers, heads, L) its
    left-padded rows, `last` the METRICS of its last layer's head-mean row."""
    n_i = int(b.lengths[i])
    L = w.shape[-1]
    w = w[..., L - n_i :].astype("<f4")
    items = None
    if b.item_codes is not None:
        codes = b.item_codes[i, L - n_i :]
        items = [None if c < 0 else str(b.item_keys[c]) for c in codes]
        if hasher is not None:
            items = [None if x is None else hasher(x) for x in items]
    attrs = None
    if b.attrs:
        attrs = {
            name: [None if c < 0 else str(keys[c]) for c in codes_[i, L - n_i :]]
            for name, (codes_, keys) in b.attrs.items()
        }
    cols = {m: j for j, m in enumerate(mx.METRICS)}
    return {
        "model": source.model,
        "version": source.version,
        "cohort": str(b.cohorts[i]),
        "request_id": None if b.request_ids is None else _request_id(b.request_ids[i]),
        "ts": _utc(float(b.ts[i])),
        "collector_id": source.collector_id,
        "n_layers": int(w.shape[0]),
        "n_heads": int(w.shape[1]),
        "length": n_i,
        "weights": w.tobytes(),
        "item_ids": items,
        "attributes": attrs,
        **{m: float(last[cols[m]]) for m in ("entropy_norm", "top1", "recency5", "distance", "gini")},
    }


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _request_id(rid) -> str | None:
    """A sampled request's id as the store can take it: its text (an id from a numpy array,
    a UUID), or None where it has none that fits the column. The id as given (np.int64,
    UUID) fails the whole batch's write and its spill, at every flush, holding back every
    batch after it."""
    if rid is None:
        return None
    try:
        text = str.__str__(rid) if isinstance(rid, str) else str(rid)
        text.encode("utf-8")  # (a lone surrogate cannot be stored)
    except Exception:
        return None
    return text if len(text) <= MAX_LABEL_CHARS and "\x00" not in text else None
