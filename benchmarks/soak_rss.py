"""The serving process's resident memory under a ProcessCollector, over a long run.

`python -m benchmarks.soak_rss [--minutes 25] [--calls-per-s 200] [--string-ids]
[--stall-at-min M [--stall-s 30]] [--out rss.csv]`

A serving loop on the main thread, paced: each tick calls `observe` (one prediction) or
`observe_batch` (1-4 left-padded predictions), alternately, with the shapes of a SASRec in
production: 2 layers x 4 heads, histories of 5-50 items, item ids, two attributes (brand
names and category ids), after a "forward" that makes and frees a score array over a
200,000-item catalogue. The worker writes to SQLite in a temporary folder. Every 30 s it
prints the serving process's RSS (/proc/self/statm), its growth per request since the
first minute (the imports and the worker's start are over by then), the queue's depth
and glibc's heap (mallinfo2: allocated, and free but kept). `--stall-at-min` stops the
worker for `--stall-s` (SIGSTOP), as a busy host or a slow store would: the queue fills,
then drains. Linux only. See `collectors.trim` for what it found.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from collectors import ProcessCollector
from monitor.store import migrate

try:
    from collectors import trim
except ImportError:  # (a collector from before collectors.trim: run it as the baseline)
    trim = None

LAYERS, HEADS, MIN_LEN, MAX_LEN = 2, 4, 5, 50
N_ITEMS = 200_000  # the catalogue a prediction scores: a (batch, N_ITEMS) float32 temporary
EVERY_S = 30.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _mallinfo2():
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc 2.33+
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype = _MallInfo2
    return fn


MALLINFO2 = _mallinfo2()


def malloc_mb() -> str:
    """glibc's heap, all arenas: what is allocated, and what is free but kept."""
    if MALLINFO2 is None:
        return ""
    m = MALLINFO2()
    return f"  malloc: used {(m.uordblks + m.hblkhd) / 2**20:6.1f} MB, free kept {m.fordblks / 2**20:6.1f} MB"


def _ids(rng, shape, strings: bool):
    ids = rng.integers(0, 200_000, shape)
    if not strings:
        return ids
    return np.array([f"sku-{i}" for i in ids.flat], dtype=object).reshape(shape)


def _one(rng, strings: bool):
    n = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    w = rng.dirichlet(np.ones(n), size=(LAYERS, HEADS)).astype(np.float32)
    ids = _ids(rng, n, strings)
    ids = list(ids) if strings else ids
    attrs = {"brand": [f"brand-{i}" for i in rng.integers(0, 500, n)], "category": rng.integers(0, 40, n)}
    return w, ids, attrs


def _batch(rng, strings: bool):
    b = int(rng.integers(1, 5))
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, b)
    width = int(lengths.max())
    w = np.zeros((b, LAYERS, HEADS, width), np.float32)
    for i, n in enumerate(lengths):
        w[i, :, :, width - n:] = rng.dirichlet(np.ones(n), size=(LAYERS, HEADS))
    ids = _ids(rng, (b, width), strings)
    brand = np.array([f"brand-{i}" for i in rng.integers(0, 500, b * width)]).reshape(b, width)
    return w, ids, lengths, {"brand": brand, "category": rng.integers(0, 40, (b, width))}


def _forward(scores_of: int) -> None:
    """The model's big temporaries: scores over the catalogue, made and freed (as a forward's
    are; glibc raises its mmap threshold when such a block is freed, so that later blocks
    of this size come from the arenas)."""
    scores = np.empty((scores_of, N_ITEMS), np.float32)
    scores.fill(0.5)
    scores.argmax(axis=1)


class TimedTrim:
    """malloc_trim, timed: what each call holds the arenas for (a serving thread that
    allocates meanwhile waits)."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, pad: int) -> int:
        t0 = time.perf_counter()
        try:
            return self.fn(pad)
        finally:
            self.times.append(time.perf_counter() - t0)


def run(minutes: float, calls_per_s: float, out: Path | None, strings: bool = False,
        stall_at_min: float | None = None, stall_s: float = 30.0) -> None:
    rng = np.random.default_rng(7)
    timed = None
    if trim is not None and trim.MALLOC_TRIM is not None:
        timed = trim.MALLOC_TRIM = TimedTrim(trim.MALLOC_TRIM)
    lines = ["elapsed_s,rss_mb,requests"]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'soak.db'}"
        migrate.upgrade(url)
        c = ProcessCollector(url, "sasrec", "soak", spill_dir=Path(tmp) / "spill")
        requests, tick = 0, 0
        start = nxt = time.monotonic()
        next_report, base = start, None
        end = start + minutes * 60
        stall = None if stall_at_min is None else start + stall_at_min * 60
        while nxt < end:
            nxt += 1.0 / calls_per_s
            if (wait := nxt - time.monotonic()) > 0:
                time.sleep(wait)
            if tick % 2 == 0:
                w, ids, attrs = _one(rng, strings)
                _forward(1)
                rid = f"req-{requests}" if strings else None
                c.observe(w, item_ids=ids, attributes=attrs, cohort="web", request_id=rid)
                requests += 1
            else:
                w, ids, lengths, attrs = _batch(rng, strings)
                _forward(len(lengths))
                rids = [f"req-{requests + k}" for k in range(len(lengths))] if strings else None
                c.observe_batch(w, item_ids=ids, lengths=lengths, attributes=attrs,
                                cohorts=["web", "app"] * 2 if len(lengths) == 4 else "app", request_ids=rids)
                requests += len(lengths)
            tick += 1
            now = time.monotonic()
            if stall is not None and now >= stall and c.worker_pid is not None:
                # a worker that falls behind (a busy host, a slow store): the queue fills
                pid, stall = c.worker_pid, None
                os.kill(pid, signal.SIGSTOP)
                threading.Timer(stall_s, os.kill, (pid, signal.SIGCONT)).start()
                print(f"worker stopped for {stall_s:.0f} s", flush=True)
            if now >= next_report:
                next_report += EVERY_S
                rss = rss_mb()
                if base is None and now - start >= 60:
                    base = (rss, requests)
                per = ((rss - base[0]) * 2**20 / max(requests - base[1], 1)) if base else float("nan")
                print(f"{now - start:7.0f} s  rss {rss:7.1f} MB  requests {requests:9d}  "
                      f"since 1 min {per:6.1f} B/request  queue {c.stats.queue_depth}{malloc_mb()}", flush=True)
                lines.append(f"{now - start:.0f},{rss:.2f},{requests}")
        c.close()
        print(f"stats: {c.stats}")
    if timed is not None and timed.times:
        ms = np.array(timed.times) * 1e3
        print(f"malloc_trim: {len(ms)} calls, median {np.median(ms):.2f} ms, max {ms.max():.2f} ms")
    if out is not None:
        out.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--calls-per-s", type=float, default=200.0)
    p.add_argument("--out", type=Path, help="write the samples as CSV")
    p.add_argument("--string-ids", action="store_true",
                   help="item ids as strings (object arrays, lists) and a request id per request")
    p.add_argument("--stall-at-min", type=float,
                   help="stop the worker (SIGSTOP) this many minutes in, for --stall-s: a backlog")
    p.add_argument("--stall-s", type=float, default=30.0)
    a = p.parse_args(argv)
    run(a.minutes, a.calls_per_s, a.out, a.string_ids, a.stall_at_min, a.stall_s)


if __name__ == "__main__":
    main()
