"""The background thread: vectors/s through validation, metrics and sketching.

A batch entry, queued by the real `observe_batch`, goes through `c._to_blocks` (packing,
labels, `monitor.metrics.validate`) and `c._summarise` (metrics of every head and of the
head mean, head diversity, `monitor.sketch.build`, top-K of items and attributes) again
and again, on one core. Sketches of one minute merge into the collector's accumulator as
they do between two flushes. Sampling is off (sample_rate=0): it is not part of the path
measured. Vectors are counted as requests × layers × heads (the head-mean rows are work
on top). The bare reference is numpy's entropy of the same per-head vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.report import Row
from benchmarks.workload import T0, catalogue, quiet_collector, requests, retire, take_entry

BATCH, LAYERS, HEADS, LENGTH = 2_048, 2, 2, 50
RATE_GOAL = 1_000_000
RATIO_GOAL = 3.0


def timed(fn: Callable[[], object], min_time: float, min_reps: int = 3) -> list[float]:
    """Seconds per call of `fn`, after one warm-up call, until both limits are reached."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _entries() -> dict[str, tuple]:
    rng = np.random.default_rng(2)
    r = requests(rng, catalogue(rng), BATCH, LAYERS, HEADS, LENGTH, min_length=LENGTH)
    c = quiet_collector(queue_size=10**9)
    out = {}
    try:
        variants = {
            "no ids": {},
            "ids + 2 attrs": {"item_ids": r.item_ids,
                              "attributes": {"brand": r.brand, "category": r.category}},
            # object arrays, as pandas columns hand them over
            "ids + 2 attrs (object arrays)": {
                "item_ids": r.item_ids,
                "attributes": {"brand": r.brand.astype(object),
                               "category": r.category.astype(object)},
            },
        }
        for name, kw in variants.items():
            c.observe_batch(r.weights, lengths=r.lengths, cohorts=r.cohorts,
                            timestamps=T0 + 10, **kw)
            out[name] = take_entry(c)
    finally:
        retire(c)
    return out


def _bare_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(-1)


def _floor(flat: np.ndarray) -> Callable[[], None]:
    """The logs and row sorts that `_summarise` cannot do without, alone: a log of every
    per-head weight (entropy) and of every head-mean weight, float64 logs of each head
    and of each pair's mixture for head diversity (float32 loses the JS of similar
    heads), and an integer row sort of the per-head and head-mean rows (top-3, Gini).
    What it costs beside the bare entropy bounds the ratio any numpy pipeline of these
    metrics can reach, before validation, sums, histograms and top-K."""
    n, L = flat.shape
    heads = flat.reshape(-1, HEADS, L)
    mean = np.ascontiguousarray(heads.mean(axis=1))
    pairs = HEADS * (HEADS - 1) // 2
    div = np.concatenate([heads.reshape(-1, L), np.repeat(mean, pairs, axis=0)]).astype(np.float64)
    bufs = [np.empty_like(x) for x in (flat, mean, div)]

    def step() -> None:
        for x, out in zip((flat, mean, div), bufs, strict=True):
            np.log(x, out=out)
        for x in (flat, mean):
            x.view(np.int32).copy().sort(axis=1)

    return step


def run(quick: bool) -> list[Row]:
    min_time = 0.5 if quick else 6.0
    entries = _entries()
    vectors = BATCH * LAYERS * HEADS
    some = next(iter(entries.values()))
    flat = np.ascontiguousarray(some[1].reshape(vectors, LENGTH))
    bare_t = float(np.median(timed(lambda: _bare_entropy(flat), min_time)))
    bare_rate = vectors / bare_t
    floor_t = float(np.median(timed(_floor(flat), min_time)))
    rows = [Row("floor: the logs and row sorts alone", "rate", vectors / floor_t, "vec/s", bare_rate,
                "numpy -(p*log p).sum(-1)", goal="(report: bounds the ratio)",
                extra={"ms_per_batch": 1e3 * floor_t})]
    for name, entry in entries.items():
        c = quiet_collector(queue_size=10**9, sample_rate=0.0, clock=lambda: T0 + 30)

        def step(c=c, entry=entry) -> None:
            for block in c._to_blocks([entry]):
                c._summarise(block)

        try:
            times = timed(step, min_time)
            assert c.stats.accepted > 0 and not c.stats.rejected, c.stats
        finally:
            retire(c)
        rate = vectors / float(np.median(times))
        row = Row(f"background, {name}", "rate", rate, "vec/s", bare_rate,
                  "numpy -(p*log p).sum(-1)", goal="≥ 1M/s and ≤ 3×",
                  extra={"batch": [BATCH, LAYERS, HEADS, LENGTH], "reps": len(times),
                         "ms_per_batch": 1e3 * float(np.median(times))})
        row.met = bool(rate >= RATE_GOAL and row.ratio <= RATIO_GOAL)
        rows.append(row)
    return rows
