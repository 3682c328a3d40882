"""One evaluation cycle: every active series' window against its baseline.

Reads sketches only (the window's minute rows and the materialised baseline), so its
cost grows with series × window minutes, not with traffic. Writes `drift_results`, one
row per (series, statistic, window end); the unique key makes a rerun a no-op.
Against a `retrain` baseline (new weights) a head is compared with its matched baseline
head (monitor.heads), not with the head of the same index.

The window is merged as arrays (each minute's sketches stacked once, WindowReader), and
the statistics of every series are computed at once (batch_statistics, equal to the
per-series and per-metric functions); the cyclic garbage collector is held during a cycle
(monitor.baselines.gc_paused), which allocates tens of thousands of long-lived objects.
After a cycle the daemon builds the next hour's trailing baselines when their hours are
closed (prepare_baselines), so that the cycle at the hour turnover does not.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import BigInteger, Column, MetaData, Table, func, select
from sqlalchemy.engine import Engine

from monitor import stats
from monitor.baselines import (
    RETRAIN,
    BaselineRef,
    Baselines,
    choose,
    deployments,
    gc_paused,
    trailing_end,
)
from monitor.config import EvaluateConfig
from monitor.heads import match_heads
from monitor.metrics import ALL_METRICS
from monitor.sketch import EDGES, M, Sketch
from monitor.stacked import Stacked, Window, merge_stacked, stack_encoded
from monitor.store import tables as t
from monitor.store import upsert
from monitor.store.bulk import bind_rows, copy_rows, sqlite_insert
from monitor.store.maintenance import as_utc
from monitor.topk import TopK

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
    versions: tuple[tuple[str, str], ...] = ()  # the (model, version)s with data in the window


def window_for(at: datetime, cfg: EvaluateConfig) -> tuple[datetime, datetime]:
    """The window a cycle at `at` evaluates: whole minutes, ending `lag_minutes` ago."""
    e = as_utc(at).timestamp()
    end = datetime.fromtimestamp(e - e % 60, UTC) - timedelta(minutes=cfg.lag_minutes)
    return end - timedelta(minutes=cfg.window_minutes), end


class WindowReader:
    """Minute sketches of the recent past, decoded once and reused by overlapping windows.

    A cheap aggregate query fingerprints every minute in the window (row count, summed n,
    newest id); only minutes whose fingerprint changed (new, late or compacted rows) have
    their payloads read again, every series of the minute at once. Each minute is kept
    stacked, so a window is merged with a few array sums per minute.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        # minute -> (fingerprint, that minute's merged sketches stacked, series in row order)
        self._cache: dict[datetime, tuple[tuple, Stacked]] = {}

    def read_window(self, start: datetime, end: datetime) -> Window:
        """Every series with rows in [start, end), merged."""
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
                    self._cache[m] = (fps[m], stack_encoded(series))
        for m in [m for m in self._cache if m not in fps]:
            del self._cache[m]
        return merge_stacked([self._cache[m][1] for m in sorted(self._cache)])

    def read(self, start: datetime, end: datetime):
        """Merged sketch and per-minute (n, sums) of every series with rows in [start, end)."""
        win = self.read_window(start, end)
        merged = win.sketches()
        per_minute = {k: [(int(win.minute_n[i, w]), win.minute_sums[i, w]) for w in np.flatnonzero(win.present[i])]
                      for i, k in enumerate(win.keys)}
        return merged, per_minute


def _metrics(cfg: EvaluateConfig, head: str) -> list[str]:
    return list(dict.fromkeys(list(cfg.metrics) + (["head_diversity"] if head == ROLLUP else [])))


def written_statistics(cfg: EvaluateConfig) -> list[str]:
    """The statistic names a cycle can write with this config, as globs (attribute names
    are the data's: `js.attr.*`)."""
    out = [f"{w}.{m}" for m in _metrics(cfg, ROLLUP) for w in cfg.statistics_for(m)]
    out += ["js.position_profile", "items.top10_share", "items.hhi", "items.new_in_top",
            "js.attr.*", "mover.attr.*", "lift.attr.*", *(f"cusum.{m}" for m in CUSUM_METRICS)]
    return out


def is_written(statistic: str, cfg: EvaluateConfig) -> bool:
    """Whether a statistic glob (a rule's) matches something a cycle writes."""
    return any(fnmatch.fnmatchcase(w, statistic) or fnmatch.fnmatchcase(statistic, w)
               for w in written_statistics(cfg))


def histogram_drift(pairs: list[tuple[Sketch, Sketch]], metrics: list[str],
                    which: tuple[str, ...] = ("psi", "js", "wasserstein")) -> np.ndarray:
    """(psi, js, wasserstein) of `metrics` for many (current, baseline) pairs at once:
    shape (3, pairs, metrics); row by row equal to stats.psi, js_distance, wasserstein_hist.
    Only the statistics in `which` are computed; the others are NaN."""
    if not pairs or not metrics:
        return np.full((3, len(pairs), len(metrics)), np.nan)
    idx = [COL[m] for m in metrics]
    ch = np.concatenate([c.hist[idx] for c, _ in pairs])
    bh = np.concatenate([b.hist[idx] for _, b in pairs])
    edges = [EDGES[m] for m in metrics] * len(pairs)
    got = stats.histogram_drift_rows(bh, ch, edges, which=which)
    return np.stack(got).reshape(3, len(pairs), len(metrics))


def series_statistics(
    cur: Sketch, base: Sketch, cfg: EvaluateConfig, head: str, per_minute: list | None = None,
) -> list[tuple[str, float, float | None, dict | None]]:
    """(statistic, value, baseline_value, detail) for one series. Pure.

    `per_minute`: the window's (n, sums) of each minute with data, oldest first (CUSUM)."""
    minute_n = minute_sums = None
    if per_minute:
        minute_n = np.array([[n for n, _ in per_minute]], dtype=np.int64)
        minute_sums = np.array([[np.asarray(s, dtype=np.float64) for _, s in per_minute]]).reshape(1, -1, M)
    return batch_statistics([cur], [base], [head], cfg, minute_n, minute_sums)[0]


def batch_statistics(
    curs: list[Sketch], bases: list[Sketch], heads: list[str], cfg: EvaluateConfig,
    minute_n: np.ndarray | None = None, minute_sums: np.ndarray | None = None,
) -> list[list[tuple[str, float, float | None, dict | None]]]:
    """series_statistics of many (current, baseline, head) at once: the per-metric and
    position statistics and CUSUM as array operations over every series, the top-K ones
    (roll-ups only) series by series. `minute_n` (series, minutes) and `minute_sums`
    (series, minutes, M): each minute's count and sums, 0 where a series has none. Pure."""
    T = len(curs)
    if T == 0:
        return []
    cn = np.array([c.n for c in curs], dtype=np.float64)[:, None]
    bn = np.array([b.n for b in bases], dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cmean = np.array([c.sums for c in curs]).reshape(T, M) / cn
        bmean = np.array([b.sums for b in bases]).reshape(T, M) / bn
        bsumsq = np.array([b.sumsq for b in bases]).reshape(T, M)
        bstd = np.sqrt(np.maximum(bsumsq / bn - bmean * bmean, 0.0))  # as sketch_std, row by row
        bstd[bn[:, 0] < 2] = np.nan
        delta = (cmean - bmean) / np.maximum(bstd, stats.STD_FLOOR)  # stats.delta_sd
    union = _metrics(cfg, ROLLUP)
    wanted = {m: cfg.statistics_for(m) for m in union}
    drift = histogram_drift(list(zip(curs, bases, strict=True)), union,
                            tuple({w for ws in wanted.values() for w in ws}))  # (3, T, metrics)
    position = stats.js_distance_rows(np.array([b.pos for b in bases]), np.array([c.pos for c in curs]))
    cusum = _cusum_rows(cmean, bmean, bstd, minute_n, minute_sums)
    # Python floats once, per array (float(x) of each numpy scalar would cost more)
    cm, bm, dl, dr = cmean.tolist(), bmean.tolist(), delta.tolist(), drift.tolist()
    pos_js = position.tolist()
    cols = {h: [(m, COL[m], union.index(m), wanted[m]) for m in _metrics(cfg, h)] for h in set(heads)}
    out = []
    for i in range(T):
        rows: list[tuple[str, float, float | None, dict | None]] = []
        for m, j, u, want in cols[heads[i]]:
            for w in want:
                if w == "mean":
                    rows.append((f"mean.{m}", cm[i][j], bm[i][j], None))
                elif w == "delta":
                    rows.append((f"delta.{m}", dl[i][j], 0.0, None))
                else:
                    rows.append((f"{w}.{m}", dr[_DRIFT_AT[w]][i][u], 0.0, None))
        rows.append(("js.position_profile", pos_js[i], 0.0, None))
        cur, base = curs[i], bases[i]
        if cur.items is not None and base.items is not None or cur.attrs:
            rows += _topk_statistics(cur, base)
        for name, value in cusum[i]:
            rows.append((name, value, 0.0, None))
        out.append([r for r in rows if r[1] is not None and math.isfinite(r[1])])
    return out


_DRIFT_AT = {"psi": 0, "js": 1, "wasserstein": 2}  # histogram_drift's first axis


def _cusum_rows(cmean, bmean, bstd, minute_n, minute_sums) -> list[list[tuple[str, float]]]:
    """Per series, (cusum.<metric>, the end of its path) over the minutes with data: the
    stats.cusum recursion run on every series at once (a minute without data is skipped)."""
    T = len(cmean)
    out: list[list[tuple[str, float]]] = [[] for _ in range(T)]
    if minute_n is None or minute_sums is None or minute_n.shape[1] == 0:
        return out
    has = minute_n > 0
    any_data = has.any(axis=1)
    for m in CUSUM_METRICS:
        j = COL[m]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = minute_sums[:, :, j] / np.where(has, minute_n, 1)
            scale = np.maximum(bstd[:, j], stats.STD_FLOOR)
            z = (x - bmean[:, j][:, None]) / scale[:, None]
        hi, lo = np.zeros(T), np.zeros(T)
        last_nan = np.zeros(T, dtype=bool)  # stats.cusum: a NaN step ends the path on NaN
        for w in range(x.shape[1]):
            zt = z[:, w]
            nan = np.isnan(zt)
            step = has[:, w] & ~nan
            last_nan = np.where(has[:, w], nan, last_nan)
            # fmax: Python's max(0.0, nan) is 0.0, as stats.cusum computes it
            np.copyto(hi, np.fmax(0.0, hi + zt - 0.5), where=step)
            np.copyto(lo, np.fmax(0.0, lo - zt - 0.5), where=step)
        end = np.where(last_nan, np.nan, np.maximum(hi, lo)).tolist()
        for i in np.flatnonzero(any_data):
            out[i].append((f"cusum.{m}", end[i]))
    return out


def _shares(tk: TopK) -> tuple[list[str], np.ndarray]:
    """(keys, shares) of TopK.shares() as a key list and an array (nothing when total <= 0)."""
    if tk.total <= 0:
        return [], np.empty(0)
    return tk.keys.tolist(), tk.counts / tk.total


class _Aligned:
    """Two TopKs' shares over the union of their keys, as arrays, aligned once per
    (baseline, current) pair for the array forms of stats.shares_js, top_movers, top_lift."""

    def __init__(self, base: TopK, cur: TopK):
        bkeys, bsh = _shares(base)
        ckeys, csh = _shares(cur)
        index = {k: i for i, k in enumerate(bkeys)}
        self.cur_at = np.fromiter((index.setdefault(k, len(index)) for k in ckeys), dtype=np.intp,
                                  count=len(ckeys))
        self.keys = list(index)
        self.b = np.zeros(len(index))
        self.b[: len(bkeys)] = bsh
        self.c = np.zeros(len(index))
        self.c[self.cur_at] = csh
        self.ckeys, self.csh = ckeys, csh

    def js(self) -> float:
        """stats.shares_js(base, cur)."""
        return stats.shares_js_arrays(self.keys, self.b, self.c)

    def movers(self, n: int) -> list[tuple[str, float, float]]:
        """stats.top_movers(base, cur, n)."""
        return stats.top_movers_arrays(self.keys, self.b, self.c, n)

    def lift(self, slack: float, min_rise: float) -> tuple[str, float, float] | None:
        """stats.top_lift({k: base share + slack for k in cur}, cur, min_rise)."""
        return stats.top_lift_arrays(self.ckeys, self.b[self.cur_at] + slack, self.csh, min_rise)


def _topk_statistics(cur: Sketch, base: Sketch) -> list[tuple[str, float, float | None, dict | None]]:
    """The item and attribute-value statistics of one series (roll-ups carry top-K): equal
    to the stats functions on TopK.shares() (tests/test_evaluate_fast.py)."""
    out: list[tuple[str, float, float | None, dict | None]] = []
    if cur.items is not None and base.items is not None:
        cs = stats.ShareMap(zip(*_shares(cur.items), strict=True))
        bs = stats.ShareMap(zip(*_shares(base.items), strict=True))
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
        btk = base.attrs[name]
        pair = _Aligned(btk, tk)
        out.append((f"js.attr.{name}", pair.js(), 0.0, None))
        movers = pair.movers(3)
        if movers:
            key, b, c = movers[0]
            detail = {"value": key, "baseline_share": b, "share": c,
                      "movers": [{"value": k, "baseline_share": bb, "share": cc} for k, bb, cc in movers]}
            out.append((f"mover.attr.{name}", abs(c - b), b, detail))
        # the baseline's upper bound for each current value: a value its top-K dropped
        # is not "new" unless it beats that bound too (as rollback-check reads it)
        slack = btk.bound() / btk.total if btk.total > 0 else 0.0
        lifted = pair.lift(slack, LIFT_MIN_RISE)
        lift_value, lift_detail = 1.0, None
        if lifted:
            key, b, c = lifted
            lift_value = c / max(b, 1e-3)
            lift_detail = {"value": key, "baseline_share": b, "share": c}
        out.append((f"lift.attr.{name}", lift_value, 1.0, lift_detail))
    return out


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
    window = reader.read_window(start, end)
    merged = window.sketches()
    row_of = {k: i for i, k in enumerate(window.keys)}
    now = datetime.now(UTC)
    rows: list[tuple] = []  # in _RESULT_COLS order
    todo: list[tuple] = []  # (key, current, baseline, ref, baseline head) of the series evaluated
    skipped = 0
    refs: dict[tuple[str, str], BaselineRef] = {}
    deps: dict[str, list] = {}
    for model, version in sorted({k[:2] for k in merged}):
        if model not in deps:
            deps[model] = deployments(engine, model)
        refs[(model, version)] = choose(engine, model, version, end, cfg, deps=deps[model])
    got: dict[tuple[str, str], dict] = {}
    for model in deps:  # each model's baselines at once: one late-data query for the versions built
        mv = [k for k in refs if k[0] == model]
        got.update(zip(mv, baselines.get_all(model, [refs[k] for k in mv]), strict=True))
    pairs: dict[tuple[str, str], dict[str, dict[str, str]]] = {}  # retrains: layer -> head -> baseline head
    for key in sorted(merged):
        model, version, cohort, layer, head = key
        cur = merged[key]
        ref, sketches = refs[(model, version)], got[(model, version)]
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
    at_rows = [row_of[item[0]] for item in todo]
    per_series = batch_statistics([x[1] for x in todo], [x[2] for x in todo], [x[0][4] for x in todo], cfg,
                                  window.minute_n[at_rows], window.minute_sums[at_rows])
    for (key, cur, base, ref, base_head), found in zip(todo, per_series, strict=True):
        model, version, cohort, layer, head = key
        for stat, value, bval, detail in found:
            if base_head != head and stat in _SAYS_MATCHED:
                detail = {**(detail or {}), "baseline_head": base_head}
            rows.append((model, version, cohort, layer, head, stat, value, bval, ref.kind, start, end,
                         cur.n, base.n, detail, now))
    written = _write_tuples(engine, rows)
    return CycleResult(start, end, len(todo), skipped, written, tuple(sorted(refs)))


# How long after the newest hour of the next hour's trailing baseline closed that baseline
# is built (by prepare_baselines, after a cycle's results are written): rows of that hour
# arriving later than this go to the baselines after it (monitor.baselines, late data).
PREPARE_AFTER = timedelta(minutes=45)


def prepare_baselines(engine: Engine, result: CycleResult, cfg: EvaluateConfig,
                      baselines: Baselines) -> list[tuple[str, BaselineRef]]:
    """Build now the trailing baselines the cycles of the next hour will read, so that the
    cycle at the hour turnover does not merge an hour of minute rows and 24 partials
    (seconds) before writing its results. The daemon calls this after each cycle; it
    does work about once an hour per version, late in the hour. Returns what it built, as
    (model, ref): a ref does not name its model, and models often share version names."""
    ahead = result.window_end + timedelta(hours=1)
    if result.window_end - trailing_end(ahead, cfg) < PREPARE_AFTER:
        return []  # not yet this hour: no query either (most cycles)
    built = []
    deps: dict[str, list] = {}
    for model, version in result.versions:
        if model not in deps:
            deps[model] = deployments(engine, model)
        ref = choose(engine, model, version, ahead, cfg, deps=deps[model])
        if ref.kind != "trailing" or baselines.holds(model, ref):
            continue
        built.append((model, ref))
    for model in deps:  # one late-data query for a model's versions
        baselines.get_all(model, [ref for m, ref in built if m == model])
    return built


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

    Returns how many were inserted. Rows with every column: multi-row inserts on SQLite;
    on PostgreSQL (psycopg) a COPY straight into the table when nobody wrote the window
    yet, else COPY into a temporary table then one INSERT ... SELECT; otherwise (or on
    another driver) SQLAlchemy's insert.
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
    stmt = (
        upsert.insert(engine, t.drift_results, "drift_results")
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
    # many rows a statement; what it inserted is the connection's change count (a row the
    # unique key ignores changes nothing)
    with engine.begin() as conn:
        bound = bind_rows(conn.dialect, t.drift_results, _RESULT_COLS, tuples)
        q = conn.dialect.identifier_preparer.quote
        head = (f"INSERT INTO {conn.dialect.identifier_preparer.format_table(t.drift_results)} "
                f"({', '.join(q(c) for c in _RESULT_COLS)})")
        tail = f"ON CONFLICT ({', '.join(q(c) for c in _RESULT_KEY)}) DO NOTHING"
        raw = conn.connection.driver_connection
        before = raw.total_changes
        sqlite_insert(conn, head, bound, tail)
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
