"""One evaluation cycle: every active series' window against its baseline.

Reads sketches only (the window's minute rows and the materialised baseline), so its
cost grows with series × window minutes, not with traffic. Writes `drift_results`, one
row per (series, statistic, window end); the unique key makes a rerun a no-op.
Against a `retrain` baseline (new weights) a head is compared with its matched baseline
head (monitor.heads), not with the head of the same index.

Per series the histogram statistics of all its metrics are computed at once (stats.*_rows,
equal to the per-metric functions); the cyclic garbage collector is held during a cycle
(monitor.baselines.gc_paused), which allocates tens of thousands of long-lived sketches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import BigInteger, Column, MetaData, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from monitor import stats
from monitor.baselines import (
    RETRAIN,
    Baselines,
    choose,
    deployments,
    gc_paused,
    sketch_std,
)
from monitor.config import EvaluateConfig
from monitor.heads import match_heads
from monitor.metrics import ALL_METRICS
from monitor.sketch import EDGES, M, Sketch, merge_all, merge_encoded
from monitor.store import tables as t
from monitor.store.bulk import bind_rows, copy_rows
from monitor.store.maintenance import as_utc

COL = {m: i for i, m in enumerate(ALL_METRICS)}
LIFT_MIN_RISE = 0.02  # lift.attr.*: only values that gained 2 points of attention share
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

    A cheap aggregate query fingerprints every minute in the window (row count, summed n,
    newest id); only minutes whose fingerprint changed (new, late or compacted rows) have
    their payloads read again, every series of the minute at once.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        # minute -> (fingerprint, {series: that minute's merged sketch}), series in row order
        self._cache: dict[datetime, tuple[tuple, dict[tuple, Sketch]]] = {}

    def read(self, start: datetime, end: datetime):
        """Merged sketch and per-minute (n, sums) of every series with rows in [start, end)."""
        wa = t.window_aggregates
        labels = [wa.c.model, wa.c.version, wa.c.cohort, wa.c.layer, wa.c.head]
        where = (wa.c.bucket_start >= start, wa.c.bucket_start < end, wa.c.bucket_seconds == 60)
        fq = select(wa.c.bucket_start, func.count(), func.sum(wa.c.n), func.max(wa.c.id))
        with self.engine.connect() as conn:
            fps = {as_utc(r[0]): tuple(r[1:]) for r in conn.execute(fq.where(*where).group_by(wa.c.bucket_start))}
            stale = sorted(m for m, fp in fps.items() if self._cache.get(m, (None,))[0] != fp)
            if stale:
                cols = [*labels, wa.c.bucket_start, wa.c.payload, wa.c.n, wa.c.rejected,
                        *(wa.c[f"sum_{m}"] for m in ALL_METRICS), *(wa.c[f"sumsq_{m}"] for m in ALL_METRICS)]
                utc: dict[datetime, datetime] = {}  # a few distinct minutes
                fresh: dict[datetime, dict[tuple, list]] = {m: {} for m in stale}
                q = select(*cols).where(*where, wa.c.bucket_start.in_(stale)).order_by(wa.c.id)
                for part in conn.execute(q).partitions(2048):
                    for row in part:
                        m = utc.get(row[5])
                        if m is None:
                            m = utc[row[5]] = as_utc(row[5])
                        fresh[m].setdefault(tuple(row[:5]), []).append(
                            (row[6], row[7], row[8], row[9 : 9 + M], row[9 + M :]))
                for m, series in fresh.items():
                    self._cache[m] = (fps[m], {k: merge_encoded(parts) for k, parts in series.items()})
        for m in [m for m in self._cache if m not in fps]:
            del self._cache[m]
        # series in the order they first appear, oldest minute first; each one's minutes in order
        by_series: dict[tuple, list[Sketch]] = {}
        for m in sorted(self._cache):
            for k, sk in self._cache[m][1].items():
                by_series.setdefault(k, []).append(sk)
        merged = {k: merge_all(sks) for k, sks in by_series.items()}
        per_minute = {k: [(sk.n, sk.sums) for sk in sks] for k, sks in by_series.items()}
        return merged, per_minute


def _metrics(cfg: EvaluateConfig, head: str) -> list[str]:
    return list(dict.fromkeys(list(cfg.metrics) + (["head_diversity"] if head == ROLLUP else [])))


def histogram_drift(pairs: list[tuple[Sketch, Sketch]], metrics: list[str]) -> np.ndarray:
    """(psi, js, wasserstein) of `metrics` for many (current, baseline) pairs at once:
    shape (3, pairs, metrics); row by row equal to stats.psi, js_distance, wasserstein_hist."""
    if not pairs or not metrics:
        return np.zeros((3, len(pairs), len(metrics)))
    idx = [COL[m] for m in metrics]
    ch = np.concatenate([c.hist[idx] for c, _ in pairs])
    bh = np.concatenate([b.hist[idx] for _, b in pairs])
    edges = [EDGES[m] for m in metrics] * len(pairs)
    return np.stack(stats.histogram_drift_rows(bh, ch, edges)).reshape(3, len(pairs), len(metrics))


def series_statistics(
    cur: Sketch, base: Sketch, cfg: EvaluateConfig, head: str, per_minute: list | None = None,
    drift: np.ndarray | None = None,
) -> list[tuple[str, float, float | None, dict | None]]:
    """(statistic, value, baseline_value, detail) for one series. Pure.

    `drift`: this series' (3, metrics) slice of histogram_drift, when the caller computed
    it for many series at once (an evaluation cycle does)."""
    out: list[tuple[str, float, float | None, dict | None]] = []
    cmean, bmean, bstd = cur.sums / cur.n, base.sums / base.n, sketch_std(base)
    metrics = _metrics(cfg, head)
    if metrics:
        # every metric at once: one (metrics, BINS) array per side; equal to the per-metric
        # functions (stats.psi, js_distance, wasserstein_hist) row by row
        idx = [COL[m] for m in metrics]
        psi, js, wd = histogram_drift([(cur, base)], metrics)[:, 0] if drift is None else drift
        cm, bm = cmean[idx], bmean[idx]
        delta = (cm - bm) / np.maximum(bstd[idx], stats.STD_FLOOR)  # stats.delta_sd
        want = set(cfg.statistics)
        for i, m in enumerate(metrics):
            if "mean" in want:
                out.append((f"mean.{m}", float(cm[i]), float(bm[i]), None))
            if "delta" in want:
                out.append((f"delta.{m}", float(delta[i]), 0.0, None))
            if "psi" in want:
                out.append((f"psi.{m}", float(psi[i]), 0.0, None))
            if "js" in want:
                out.append((f"js.{m}", float(js[i]), 0.0, None))
            if "wasserstein" in want:
                out.append((f"wasserstein.{m}", float(wd[i]), 0.0, None))
    out.append(("js.position_profile", stats.js_profile(base.pos, cur.pos), 0.0, None))
    if cur.items is not None and base.items is not None:
        cs, bs = cur.items.shares(), base.items.shares()
        top = sorted(cs.items(), key=lambda kv: -kv[1])[:10]
        # the items themselves, for the items dashboard and the alert's reader
        detail = {"top": [{"item": str(k), "share": float(v),
                           "baseline_share": float(bs[k]) if k in bs else None} for k, v in top]}
        out.append(("items.top10_share", stats.top_share(cs, 10), stats.top_share(bs, 10), detail))
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
        # the baseline's upper bound for each current value: a value its top-K dropped
        # is not "new" unless it beats that bound too (as rollback-check reads it)
        btk = base.attrs[name]
        slack = btk.bound() / btk.total if btk.total > 0 else 0.0
        lifted = stats.top_lift({k: bs.get(k, 0.0) + slack for k in cs}, cs, LIFT_MIN_RISE)
        lift_value, lift_detail = 1.0, None
        if lifted:
            key, b, c = lifted
            lift_value = c / max(b, 1e-3)
            lift_detail = {"value": key, "baseline_share": b, "share": c}
        out.append((f"lift.attr.{name}", lift_value, 1.0, lift_detail))
    if per_minute:
        for m in CUSUM_METRICS:
            j = COL[m]
            xs = np.array([s[j] / n for n, s in per_minute if n > 0])
            if len(xs):
                path = stats.cusum(xs, float(bmean[j]), float(bstd[j]))
                out.append((f"cusum.{m}", float(path[-1]), 0.0, None))
    return [(name, v, b, d) for name, v, b, d in out if v is not None and math.isfinite(v)]


def evaluate_cycle(
    engine: Engine, at: datetime, cfg: EvaluateConfig, baselines: Baselines | None = None,
    reader: WindowReader | None = None,
) -> CycleResult:
    """Evaluate the window a cycle at `at` covers and write its drift_results."""
    with gc_paused():
        return _evaluate_cycle(engine, at, cfg, baselines, reader)


def _evaluate_cycle(
    engine: Engine, at: datetime, cfg: EvaluateConfig, baselines: Baselines | None,
    reader: WindowReader | None,
) -> CycleResult:
    start, end = window_for(at, cfg)
    baselines = baselines or Baselines(engine, cfg)
    reader = reader or WindowReader(engine)
    merged, minutes = reader.read(start, end)
    now = datetime.now(UTC)
    rows: list[tuple] = []  # in _RESULT_COLS order
    todo: list[tuple] = []  # (key, current, baseline, ref, baseline head) of the series evaluated
    skipped = 0
    refs: dict[tuple[str, str], object] = {}
    deps: dict[str, list] = {}
    pairs: dict[tuple[str, str], dict[str, dict[str, str]]] = {}  # retrains: layer -> head -> baseline head
    for key in sorted(merged):
        model, version, cohort, layer, head = key
        cur = merged[key]
        if (model, version) not in refs:
            if model not in deps:
                deps[model] = deployments(engine, model)
            refs[(model, version)] = choose(engine, model, version, end, cfg, deps=deps[model])
        ref = refs[(model, version)]
        sketches = baselines.get(model, ref)
        base_head = head
        if ref.kind == RETRAIN and head != ROLLUP:
            if (model, version) not in pairs:
                pairs[(model, version)] = _matched_heads(merged, model, version, sketches)
            base_head = pairs[(model, version)].get(layer, {}).get(head)
        base = sketches.get((cohort, layer, base_head)) if base_head is not None else None
        if base is None or cur.n < cfg.min_samples or base.n < cfg.min_samples:
            skipped += 1
            continue
        todo.append((key, cur, base, ref, base_head))
    # the histogram statistics of every series in one vectorised pass per metric set
    drift: dict[int, np.ndarray] = {}
    for is_rollup in (False, True):
        part = [i for i, item in enumerate(todo) if (item[0][4] == ROLLUP) == is_rollup]
        got = histogram_drift([todo[i][1:3] for i in part], _metrics(cfg, ROLLUP if is_rollup else ""))
        drift.update((i, got[:, j]) for j, i in enumerate(part))
    for i, (key, cur, base, ref, base_head) in enumerate(todo):
        model, version, cohort, layer, head = key
        for stat, value, bval, detail in series_statistics(cur, base, cfg, head, minutes[key], drift[i]):
            if base_head != head and stat in _SAYS_MATCHED:
                detail = {**(detail or {}), "baseline_head": base_head}
            rows.append((model, version, cohort, layer, head, stat, value, bval, ref.kind, start, end,
                         cur.n, base.n, detail, now))
    written = _write_tuples(engine, rows)
    return CycleResult(start, end, len(todo), skipped, written)


# statistics whose detail names the baseline head a retrain's head was matched to (for a person reading them)
_SAYS_MATCHED = ("mean.entropy_norm", "js.position_profile")


def _matched_heads(merged: dict, model: str, version: str, base: dict) -> dict[str, dict[str, str]]:
    """Per layer, candidate head -> baseline head, matched on the all-cohorts series of the
    current window, so that every cohort of a head is compared with the same baseline head."""
    out: dict[str, dict[str, str]] = {}
    layers = {k[3] for k in merged if k[:3] == (model, version, ROLLUP)}
    for layer in sorted(layers):
        cur = {k[4]: s for k, s in merged.items()
               if k[:4] == (model, version, ROLLUP, layer) and k[4] != ROLLUP}
        old = {h: s for (c, lay, h), s in base.items() if c == ROLLUP and lay == layer and h != ROLLUP}
        out[layer] = match_heads(old, cur)
    return out


_RESULT_COLS = ("model", "version", "cohort", "layer", "head", "statistic", "value", "baseline_value",
                "baseline_kind", "window_start", "window_end", "n_current", "n_baseline", "detail",
                "computed_at")
_RESULT_KEY = ("model", "version", "cohort", "layer", "head", "statistic", "window_end")
# PostgreSQL: rows are COPYed into this per-transaction table, then inserted from it
_STAGE = "attnmon_drift_results_stage"
_STAGE_TYPES = ("text", "text", "text", "text", "text", "text", "float8", "float8", "text",
                "timestamptz", "timestamptz", "int8", "int8", "text", "timestamptz")
# its columns, for copy_rows: drift_results' own types (JSON goes as text) and the row order
_STAGE_TABLE = Table(
    _STAGE, MetaData(), Column("ord", BigInteger), *(Column(c, t.drift_results.c[c].type) for c in _RESULT_COLS)
)


def write_results(engine: Engine, rows: list[dict]) -> int:
    """Insert, ignoring rows whose (series, statistic, window end) is already there.

    Returns how many were inserted. Rows with every column: one executemany of a short
    statement on SQLite, COPY into a temporary table then one INSERT ... SELECT on
    PostgreSQL (psycopg); otherwise (or on another driver) SQLAlchemy's insert.
    """
    if not rows:
        return 0
    cols = set(_RESULT_COLS)
    if all(r.keys() == cols for r in rows):
        return _write_tuples(engine, [tuple(r[c] for c in _RESULT_COLS) for r in rows])
    return _write_dicts(engine, rows)


def _write_tuples(engine: Engine, rows: list[tuple]) -> int:
    """write_results of rows given as tuples in _RESULT_COLS order."""
    if not rows:
        return 0
    if engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite":
        return _write_sqlite(engine, rows)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return _write_pg_copy(engine, rows)
    return _write_dicts(engine, [dict(zip(_RESULT_COLS, r, strict=True)) for r in rows])


def _write_dicts(engine: Engine, rows: list[dict]) -> int:
    if not rows:
        return 0
    dialect = engine.dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"drift_results upsert on {dialect}")
    stmt = (
        insert(t.drift_results)
        .on_conflict_do_nothing(index_elements=list(_RESULT_KEY))
        .returning(t.drift_results.c.id)
    )
    written = 0
    with engine.begin() as conn:
        for i in range(0, len(rows), 2000):
            # RETURNING counts what was inserted; executemany's rowcount is not reliable
            written += len(conn.execute(stmt, rows[i : i + 2000]).all())
    return written


def _write_sqlite(engine: Engine, tuples: list[tuple]) -> int:
    # one short statement, executemany'd; what it inserted is the connection's change
    # count (a row the unique key ignores changes nothing)
    with engine.begin() as conn:
        bound = bind_rows(conn.dialect, t.drift_results, _RESULT_COLS, tuples)
        q = conn.dialect.identifier_preparer.quote
        sql = (
            f"INSERT INTO {conn.dialect.identifier_preparer.format_table(t.drift_results)} "
            f"({', '.join(q(c) for c in _RESULT_COLS)}) "
            f"VALUES ({', '.join('?' * len(_RESULT_COLS))}) "
            f"ON CONFLICT ({', '.join(q(c) for c in _RESULT_KEY)}) DO NOTHING"
        )
        raw = conn.connection.driver_connection
        before = raw.total_changes
        conn.exec_driver_sql(sql, bound)
        return raw.total_changes - before


def _write_pg_copy(engine: Engine, tuples: list[tuple]) -> int:
    # A window nobody wrote yet (the daemon's every cycle): COPY straight into the table.
    # Otherwise, or when a concurrent writer got there first (the unique key refuses the
    # COPY), COPY into a temporary table and INSERT ... SELECT ... ON CONFLICT DO NOTHING
    # (in the rows' order, so ids follow it), whose row count is what was inserted.
    import psycopg

    with engine.begin() as conn:
        bound = bind_rows(conn.dialect, t.drift_results, _RESULT_COLS, tuples)
        dr = t.drift_results
        ends = sorted({r[_RESULT_COLS.index("window_end")] for r in tuples})
        models = sorted({r[0] for r in tuples})
        taken = conn.execute(select(dr.c.id).where(dr.c.window_end.in_(ends), dr.c.model.in_(models)).limit(1)).first()
        if taken is None:
            try:
                with conn.begin_nested():
                    copy_rows(conn, conn.dialect.identifier_preparer.format_table(dr), dr, _RESULT_COLS, bound)
                return len(bound)
            except psycopg.errors.UniqueViolation:
                pass
        q = conn.dialect.identifier_preparer.quote
        target = conn.dialect.identifier_preparer.format_table(t.drift_results)
        cols = ", ".join(q(c) for c in _RESULT_COLS)
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(
                f"CREATE TEMPORARY TABLE {_STAGE} (ord int8, "
                + ", ".join(f"{q(c)} {ty}" for c, ty in zip(_RESULT_COLS, _STAGE_TYPES, strict=True))
                + ") ON COMMIT DROP"
            )
            copy_rows(conn, _STAGE, _STAGE_TABLE, ("ord", *_RESULT_COLS),
                      [(i, *r) for i, r in enumerate(bound)])
            select_cols = ", ".join(f"{q(c)}::json" if c == "detail" else q(c) for c in _RESULT_COLS)
            cur.execute(
                f"INSERT INTO {target} ({cols}) SELECT {select_cols} FROM {_STAGE} ORDER BY ord "
                f"ON CONFLICT ({', '.join(q(c) for c in _RESULT_KEY)}) DO NOTHING"
            )
            written = cur.rowcount
            cur.execute(f"DROP TABLE {_STAGE}")
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
