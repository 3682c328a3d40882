"""The serving call: `observe()` per call, beside a bare `deque.append(arr.copy())`.

The collector's thread is kept from draining (its `_start` is a no-op, `_thread` a
placeholder, the queue huge), so each call does exactly what it does in production when
the queue has room:
a length check, the clock, a copy, a tuple, an append. The two are timed call by call,
interleaved, with the garbage collector off: both queues grow alike, so allocator
effects (which dominate p99) hit both the same way.
"""

from __future__ import annotations

import gc
import time
from collections import deque

import numpy as np

from benchmarks.report import Row
from benchmarks.workload import quiet_collector, retire

HEADS, LENGTH = 4, 50
P50_GOAL_NS = 5_000
RATIO_GOAL = 3.0


def _timed_calls(n: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    arr = rng.dirichlet(np.ones(LENGTH), size=HEADS).astype(np.float32)
    c = quiet_collector(queue_size=10**12)
    # as if its thread were running: observe() then skips the `_start()` call, as in
    # production (the no-op `_start` stays, should anything call it)
    c._thread = object()
    bare_q: deque = deque()
    observe, append, copy = c.observe, bare_q.append, arr.copy
    clock = time.perf_counter_ns
    t_obs = np.empty(n, dtype=np.int64)
    t_bare = np.empty(n, dtype=np.int64)
    try:
        for _ in range(warmup):
            observe(arr)
            append(copy())
        c._q.clear()
        bare_q.clear()
        gc.collect()
        gc.disable()
        try:
            for i in range(n):
                t0 = clock()
                observe(arr)
                t1 = clock()
                append(copy())
                t2 = clock()
                t_obs[i] = t1 - t0
                t_bare[i] = t2 - t1
        finally:
            gc.enable()
        assert len(c._q) == n and c.stats.dropped == 0
    finally:
        retire(c)
        bare_q.clear()
    return t_obs, t_bare


def _timer_floor(n: int = 10_000) -> float:
    """What two back-to-back perf_counter_ns calls read: included in both columns."""
    clock = time.perf_counter_ns
    t = np.empty(n, dtype=np.int64)
    for i in range(n):
        t0 = clock()
        t[i] = clock() - t0
    return float(np.median(t))


def run(quick: bool) -> list[Row]:
    n = 20_000 if quick else 100_000
    t_obs, t_bare = _timed_calls(n, warmup=2_000 if quick else 10_000)
    floor = _timer_floor()
    p50, p99 = np.percentile(t_obs, [50, 99])
    b50, b99 = np.percentile(t_bare, [50, 99])
    extra = {"calls": n, "timer_floor_ns": floor, "shape": [HEADS, LENGTH], "dtype": "float32",
             "p999_ns": float(np.percentile(t_obs, 99.9)),
             "bare_p999_ns": float(np.percentile(t_bare, 99.9))}
    name = f"observe() ({HEADS}×{LENGTH} f32)"
    rows = [
        Row(f"{name} p50", "time", float(p50), "ns", float(b50), "deque.append(arr.copy()) p50",
            goal="≤ 5 µs and ≤ 3×", extra=extra),
        Row(f"{name} p99", "time", float(p99), "ns", float(b99), "deque.append(arr.copy()) p99",
            goal="(report)", extra=extra),
    ]
    rows[0].met = bool(p50 <= P50_GOAL_NS and rows[0].ratio is not None and rows[0].ratio <= RATIO_GOAL)
    return rows
