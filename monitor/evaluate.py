"""One evaluation cycle: every active series' window against its baseline.

Reads sketches only (the window's minute rows and the materialised baseline), so its
cost grows with series × window minutes, not with traffic. Writes `drift_results`, one
row per (series, statistic, window end); the unique key makes a rerun a no-op.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from monitor import stats
from monitor.baselines import Baselines, choose, deployments, sketch_std
from monitor.config import EvaluateConfig
from monitor.metrics import ALL_METRICS
from monitor.sketch import EDGES, Sketch, merge_all
from monitor.store import tables as t
from monitor.store.maintenance import as_utc

COL = {m: i for i, m in enumerate(ALL_METRICS)}
CUSUM_METRICS = ("entropy_norm",)
ROLLUP = "*"


@dataclass(frozen=True)
class CycleResult:
    window_start: datetime
    window_end: datetime
    series: int  # series evaluated (enough samples on both sides)
    skipped: int  # series below min_samples
    written: int  # rows inserted (0 on a rerun)


def window_for(at: datetime, cfg: EvaluateConfig) -> tuple[datetime, datetime]:
    """The window a cycle at `at` evaluates: whole minutes, ending `lag_minutes` ago."""
    e = as_utc(at).timestamp()
    end = datetime.fromtimestamp(e - e % 60, UTC) - timedelta(minutes=cfg.lag_minutes)
    return end - timedelta(minutes=cfg.window_minutes), end


class WindowReader:
    """Minute sketches of the recent past, decoded once and reused by overlapping windows.

    A cheap aggregate query fingerprints every (series, minute) in the window (row
    count, summed n, newest id); only minutes whose fingerprint changed (new, late or
    compacted rows) have their payloads read again.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._cache: dict[tuple, tuple[tuple, Sketch]] = {}

    def read(self, start: datetime, end: datetime):
        """Merged sketch and per-minute (n, sums) of every series with rows in [start, end)."""
        wa = t.window_aggregates
        labels = [wa.c.model, wa.c.version, wa.c.cohort, wa.c.layer, wa.c.head]
        where = (wa.c.bucket_start >= start, wa.c.bucket_start < end, wa.c.bucket_seconds == 60)
        fq = select(*labels, wa.c.bucket_start, func.count(), func.sum(wa.c.n), func.max(wa.c.id))
        with self.engine.connect() as conn:
            fps = {(tuple(r[:5]), as_utc(r[5])): tuple(r[6:]) for r in conn.execute(fq.where(*where).group_by(*labels, wa.c.bucket_start))}
            stale = {k for k, fp in fps.items() if self._cache.get(k, (None,))[0] != fp}
            if stale:
                minutes = sorted({m for _, m in stale})
                fresh: dict[tuple, list[Sketch]] = defaultdict(list)
                for row in conn.execute(select(wa).where(*where, wa.c.bucket_start.in_(minutes))).mappings():
                    key = (tuple(row[c] for c in ("model", "version", "cohort", "layer", "head")), as_utc(row["bucket_start"]))
                    if key in stale:
                        fresh[key].append(Sketch.from_row(row))
                for key, parts in fresh.items():
                    self._cache[key] = (fps[key], merge_all(parts))
        for key in [k for k in self._cache if k not in fps]:
            del self._cache[key]
        by_series: dict[tuple, list] = defaultdict(list)
        for (series, _minute), (_, sk) in sorted(self._cache.items(), key=lambda kv: kv[0][1]):
            by_series[series].append(sk)
        merged = {k: merge_all(v) for k, v in by_series.items()}
        per_minute = {k: [(s.n, s.sums) for s in v] for k, v in by_series.items()}
        return merged, per_minute


def series_statistics(
    cur: Sketch, base: Sketch, cfg: EvaluateConfig, head: str, per_minute: list | None = None
) -> list[tuple[str, float, float | None, dict | None]]:
    """(statistic, value, baseline_value, detail) for one series. Pure."""
    out: list[tuple[str, float, float | None, dict | None]] = []
    cmean, bmean, bstd = cur.sums / cur.n, base.sums / base.n, sketch_std(base)
    metrics = list(cfg.metrics) + (["head_diversity"] if head == ROLLUP else [])
    for m in dict.fromkeys(metrics):
        j = COL[m]
        out.append((f"mean.{m}", float(cmean[j]), float(bmean[j]), None))
        out.append((f"delta.{m}", stats.delta_sd(cmean[j], bmean[j], bstd[j]), 0.0, None))
        out.append((f"psi.{m}", stats.psi(base.hist[j], cur.hist[j]), 0.0, None))
        out.append((f"js.{m}", stats.js_distance(base.hist[j], cur.hist[j]), 0.0, None))
        out.append((f"wasserstein.{m}", stats.wasserstein_hist(base.hist[j], cur.hist[j], EDGES[m]), 0.0, None))
    out.append(("js.position_profile", stats.js_profile(base.pos, cur.pos), 0.0, None))
    if cur.items is not None and base.items is not None:
        cs, bs = cur.items.shares(), base.items.shares()
        out.append(("items.top10_share", stats.top_share(cs, 10), stats.top_share(bs, 10), None))
        out.append(("items.hhi", stats.hhi(cs), stats.hhi(bs), None))
        out.append(("items.new_in_top", stats.new_in_top(cs, set(bs), 10), 0.0, None))
    for name, tk in cur.attrs.items():
        if name not in base.attrs:
            continue
        cs, bs = tk.shares(), base.attrs[name].shares()
        out.append((f"js.attr.{name}", stats.shares_js(bs, cs), 0.0, None))
        movers = stats.top_movers(bs, cs, n=3)
        if movers:
            key, b, c = movers[0]
            detail = {"value": key, "baseline_share": b, "share": c,
                      "movers": [{"value": k, "baseline_share": bb, "share": cc} for k, bb, cc in movers]}
            out.append((f"mover.attr.{name}", abs(c - b), b, detail))
    if per_minute:
        for m in CUSUM_METRICS:
            j = COL[m]
            xs = np.array([s[j] / n for n, s in per_minute if n > 0])
            if len(xs):
                path = stats.cusum(xs, float(bmean[j]), float(bstd[j]))
                out.append((f"cusum.{m}", float(path[-1]), 0.0, None))
    return [(name, v, b, d) for name, v, b, d in out if v is not None and np.isfinite(v)]


def evaluate_cycle(
    engine: Engine, at: datetime, cfg: EvaluateConfig, baselines: Baselines | None = None,
    reader: WindowReader | None = None,
) -> CycleResult:
    """Evaluate the window a cycle at `at` covers and write its drift_results."""
    start, end = window_for(at, cfg)
    baselines = baselines or Baselines(engine, cfg)
    reader = reader or WindowReader(engine)
    merged, minutes = reader.read(start, end)
    now = datetime.now(UTC)
    rows: list[dict] = []
    skipped = evaluated = 0
    refs: dict[tuple[str, str], object] = {}
    deps: dict[str, list] = {}
    for key in sorted(merged):
        model, version, cohort, layer, head = key
        cur = merged[key]
        if (model, version) not in refs:
            if model not in deps:
                deps[model] = deployments(engine, model)
            refs[(model, version)] = choose(engine, model, version, end, cfg, deps=deps[model])
        ref = refs[(model, version)]
        base = baselines.get(model, ref).get((cohort, layer, head))
        if base is None or cur.n < cfg.min_samples or base.n < cfg.min_samples:
            skipped += 1
            continue
        evaluated += 1
        per_minute = minutes[key]
        for stat, value, bval, detail in series_statistics(cur, base, cfg, head, per_minute):
            rows.append(
                {
                    "model": model, "version": version, "cohort": cohort, "layer": layer, "head": head,
                    "statistic": stat, "value": value, "baseline_value": bval,
                    "baseline_kind": ref.kind, "window_start": start, "window_end": end,
                    "n_current": cur.n, "n_baseline": base.n, "detail": detail, "computed_at": now,
                }
            )
    written = write_results(engine, rows)
    return CycleResult(start, end, evaluated, skipped, written)


def write_results(engine: Engine, rows: list[dict]) -> int:
    """Insert, ignoring rows whose (series, statistic, window end) is already there."""
    if not rows:
        return 0
    dialect = engine.dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"drift_results upsert on {dialect}")
    stmt = (
        insert(t.drift_results)
        .on_conflict_do_nothing(
            index_elements=["model", "version", "cohort", "layer", "head", "statistic", "window_end"]
        )
        .returning(t.drift_results.c.id)
    )
    written = 0
    with engine.begin() as conn:
        for i in range(0, len(rows), 2000):
            # RETURNING counts what was inserted; executemany's rowcount is not reliable
            written += len(conn.execute(stmt, rows[i : i + 2000]).all())
    return written


def backfill(engine: Engine, start: datetime, end: datetime, cfg: EvaluateConfig) -> list[CycleResult]:
    """One cycle per minute for cycles at start, start+1m, ..., < end."""
    baselines, reader = Baselines(engine, cfg), WindowReader(engine)
    out = []
    at = as_utc(start)
    while at < as_utc(end):
        out.append(evaluate_cycle(engine, at, cfg, baselines, reader))
        at += timedelta(minutes=1)
    return out
