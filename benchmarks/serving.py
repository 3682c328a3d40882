"""The serving path while the collector's thread works: request latency, with and without.

`observe()` itself costs about a microsecond (benchmarks.hot_path). What it cannot show is
the collector's background thread competing with the serving threads for the GIL: numpy
releases the GIL inside its loops, but between them the thread runs Python, and a serving
thread that wants the GIL back waits for it (up to the interpreter's switch interval, 5 ms
by default).

A serving loop on the main thread, paced at a fixed rate: each call runs a small model (a
few float32 array operations, which release and retake the GIL like a real forward) and then hands
the batch's attention to the collector (`observe_batch` with item ids and one attribute).
The collector is a real one: its thread validates, computes, sketches and writes to a
SQLite file every 2 s (the defaults). So is the ProcessCollector, whose worker process
does the same while the serving process only copies, pickles and writes to a pipe. The
bare reference is the same loop with `deque.append` of copies in place of the collector
and no thread. Phases alternate (bare, collector, process; twice), each with a collector
of its own, flushed and closed at its end, so that drift in the machine's load hits all
alike and no phase has another's thread around. Latency is each call's own time, from
its start to its end.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.report import Row
from collectors import AttentionCollector, ProcessCollector
from monitor.store import migrate

BATCH, LAYERS, HEADS, LENGTH = 16, 2, 2, 50
CALLS_PER_S = 500  # 8,000 requests/s, 32,000 attention vectors/s
PHASES = 4


def _loop(observe: Callable[[], None], seconds: float, model: Callable[[], None]) -> np.ndarray:
    """Seconds each call took, calls paced at CALLS_PER_S (a late call starts at once)."""
    clock = time.perf_counter
    out = []
    nxt = clock()
    end = nxt + seconds
    while nxt < end:
        nxt += 1.0 / CALLS_PER_S
        while clock() < nxt:
            time.sleep(0)  # yield rather than spin: a serving thread waits on its socket
        t0 = clock()
        model()
        observe()
        out.append(clock() - t0)
    return np.asarray(out)


def run(quick: bool) -> list[Row]:
    rng = np.random.default_rng(5)
    w = rng.dirichlet(np.ones(LENGTH), size=(BATCH, LAYERS, HEADS)).astype(np.float32)
    ids = rng.integers(0, 50_000, (BATCH, LENGTH))
    brand = rng.choice([f"brand-{i}" for i in range(300)], (BATCH, LENGTH))
    x = rng.random((256, 256)).astype(np.float32)
    y = np.empty_like(x)

    def model() -> None:
        # elementwise, one thread: BLAS's own threads would make the reference itself jitter
        for _ in range(4):
            np.tanh(x, out=y)

    seconds = 1.0 if quick else 5.0
    bare_q: deque = deque(maxlen=1000)
    kinds = ("bare", "collector", "process")
    times: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    stats: dict[str, list] = {"collector": [], "process": []}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'serving.db'}"
        migrate.upgrade(url)
        for _ in range(PHASES // 2):
            times["bare"].append(_loop(lambda: bare_q.append((w.copy(), ids.copy(), brand.copy())),
                                       seconds, model))
            # one collector per phase, so that no other phase has its thread around; both
            # flush every 2 s, and the worker process is started before its phase
            for kind, cls in (("collector", AttentionCollector), ("process", ProcessCollector)):
                c = cls(url, model="bench", version=kind, sample_rate=0.01)
                try:
                    c.flush()
                    times[kind].append(_loop(
                        lambda c=c: c.observe_batch(w, item_ids=ids, attributes={"brand": brand}), seconds, model))
                    c.flush()
                finally:
                    c.close()
                stats[kind].append(c.stats)
    bare = np.concatenate(times["bare"]) * 1e9
    rows = []
    for k, label in (("collector", "collector working"), ("process", "ProcessCollector")):
        coll = np.concatenate(times[k]) * 1e9
        extra = {"batch": [BATCH, LAYERS, HEADS, LENGTH], "calls_per_s": CALLS_PER_S,
                 "requests_per_s": BATCH * CALLS_PER_S, "calls": [len(bare), len(coll)],
                 "accepted": sum(x.accepted for x in stats[k]), "dropped": sum(x.dropped for x in stats[k])}
        for q in (50, 99, 99.9):
            rows.append(Row(f"serving call p{q:g}, {label}", "time", float(np.percentile(coll, q)), "ns",
                            float(np.percentile(bare, q)), "the same loop with deque.append",
                            goal="(report)", extra=extra if q == 50 else {}))
    return rows
