"""The evaluation cycle's fast paths give what the plain ones give.

- stats: the per-row (M, BINS) functions equal the 1-D ones row by row;
- series_statistics equals the per-metric statistics functions, and batch_statistics
  (every series of a cycle at once) equals series_statistics series by series;
- sketch: from_parts / merge_encoded equal Sketch.from_row / merge_all;
- store writes: drift_results written by one executemany (SQLite) hold exactly what the
  SQLAlchemy insert wrote, with the same count and idempotency;
- Baselines: hour partials kept across cycles give the baseline a fresh process reads,
  and when the baseline slides an hour only the new hour is merged from minute rows.
(PostgreSQL's COPY paths: tests/postgres/test_evaluate_fast_pg.py.)
"""

from __future__ import annotations

import gc
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import func, select, text

from monitor import baselines as bl
from monitor import stats as st
from monitor.config import EvaluateConfig
from monitor.demo import START, Segment, stream
from monitor.evaluate import (
    COL,
    WindowReader,
    _write_dicts,
    batch_statistics,
    evaluate_cycle,
    series_statistics,
    write_results,
)
from monitor.metrics import ALL_METRICS
from monitor.sketch import BINS, EDGES, M, Sketch, build, from_parts, merge_all, merge_encoded
from monitor.store import make_engine, migrate
from monitor.store import tables as t
from monitor.topk import TopK

T = lambda minutes: datetime.fromtimestamp(START + 60 * minutes, UTC)  # noqa: E731
TOL = 1e-12


# --- stats: one histogram per row ------------------------------------------------------------
def _hists(rng: np.random.Generator, rows: int) -> np.ndarray:
    h = rng.integers(0, rng.choice([2, 10, 1000, 10**7]), (rows, BINS))
    for i in range(rows):  # empty bins, sometimes all of them
        h[i, rng.choice(BINS, rng.integers(0, BINS + 1), replace=False)] = 0
    return h


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL


@pytest.mark.parametrize("seed", range(5))
def test_row_statistics_equal_the_1d_functions(seed):
    rng = np.random.default_rng(seed)
    edges = [EDGES[m] for m in ALL_METRICS]
    for _ in range(200):
        p, q = _hists(rng, M), _hists(rng, M)
        psi, js, wd = st.histogram_drift_rows(p, q, edges)
        assert np.array_equal(psi, st.psi_rows(p, q), equal_nan=True)
        assert np.array_equal(js, st.js_distance_rows(p, q), equal_nan=True)
        assert np.array_equal(wd, st.wasserstein_hist_rows(p, q, edges), equal_nan=True)
        for i in range(M):
            assert _close(psi[i], st.psi(p[i], q[i])), (i, psi[i], st.psi(p[i], q[i]))
            assert _close(js[i], st.js_distance(p[i], q[i]))
            assert _close(wd[i], st.wasserstein_hist(p[i], q[i], edges[i]))
        eps = float(rng.choice([1e-4, 1e-2, 0.5]))
        assert all(_close(a, st.psi(p[i], q[i], eps)) for i, a in enumerate(st.psi_rows(p, q, eps)))


def test_row_statistics_reject_what_the_1d_functions_reject():
    ok = np.ones((3, BINS))
    edges = [EDGES["top1"]] * 3
    for bad in (-ok, ok * np.nan, ok * np.inf):
        for fn in (st.psi_rows, st.js_distance_rows):
            with pytest.raises(ValueError):
                fn(ok, bad)
        with pytest.raises(ValueError):
            st.wasserstein_hist_rows(bad, ok, edges)
    with pytest.raises(ValueError):
        st.psi_rows(ok, np.ones((3, BINS - 1)))  # shapes differ
    with pytest.raises(ValueError):
        st.js_distance_rows(np.ones(BINS), np.ones(BINS))  # 1-D: use js_distance
    with pytest.raises(ValueError):
        st.wasserstein_hist_rows(ok, ok, edges[:2])  # one edges array per row
    with pytest.raises(ValueError):
        st.wasserstein_hist_rows(ok, ok, [np.arange(5.0)] * 3)  # bins and edges disagree
    with pytest.raises(ValueError):
        st.wasserstein_hist(ok[0], ok[0], np.arange(5.0))
    with pytest.raises(ValueError):  # bad edges raise even for an all-zero histogram
        st.wasserstein_hist(np.zeros(3), ok[0, :3], np.array([0.0, 2.0, 1.0, 3.0]))


def test_js_profile_pads_the_shorter_profile():
    p, q = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0])
    assert st.js_profile(p, q) == st.js_distance(p, np.array([1.0, 2.0, 0.0]))
    assert st.js_profile(q, q) == 0.0


def _sketch(rng: np.random.Generator, n: int, shift: float = 0.0, items: bool = True) -> Sketch:
    from monitor.metrics import compute

    w = rng.dirichlet(np.ones(20) * (1 + shift), size=n)
    lengths = np.full(n, 20)
    values = np.column_stack([compute(w, lengths), rng.uniform(0, 1, n)])  # + head_diversity
    (s,) = build(np.zeros(n, dtype=np.int64), 1, values, w, lengths)
    keys = np.array([f"i{k}" for k in range(40)], dtype=object)
    if items:
        s.items = TopK.from_counts(keys, rng.exponential(1.0, 40) * (rng.random(40) < 0.8), 16)
    s.attrs = {"brand": TopK.from_counts(keys[:12], rng.exponential(1.0, 12), 8)}
    return s


@pytest.mark.parametrize("head", ["3", "*"])
def test_series_statistics_equal_the_per_metric_functions(head):
    rng = np.random.default_rng(1)
    base, cur = _sketch(rng, 2000), _sketch(rng, 500, shift=0.5)
    cfg = EvaluateConfig(metrics=["entropy_norm", "top1", "distance", "gini", "top1"],
                         statistics=["mean", "delta", "psi", "js", "wasserstein"], statistics_by_metric={})
    got = {name: (v, b) for name, v, b, _ in series_statistics(cur, base, cfg, head, [(cur.n, cur.sums)])}
    metrics = ["entropy_norm", "top1", "distance", "gini"] + (["head_diversity"] if head == "*" else [])
    bstd = bl.sketch_std(base)
    for m in metrics:
        j = COL[m]
        cm, bm = cur.sums[j] / cur.n, base.sums[j] / base.n
        assert got[f"mean.{m}"] == (float(cm), float(bm))
        assert got[f"delta.{m}"][0] == st.delta_sd(cm, bm, bstd[j])
        assert _close(got[f"psi.{m}"][0], st.psi(base.hist[j], cur.hist[j]))
        assert _close(got[f"js.{m}"][0], st.js_distance(base.hist[j], cur.hist[j]))
        assert _close(got[f"wasserstein.{m}"][0], st.wasserstein_hist(base.hist[j], cur.hist[j], EDGES[m]))
    assert not any(k.endswith("head_diversity") for k in got) or head == "*"
    assert {k.split(".", 1)[0] for k in got} >= {"mean", "delta", "psi", "js", "wasserstein", "items",
                                                 "mover", "cusum"}
    # by default only what the rules and dashboards read: mean, delta, psi
    lean = [name for name, *_ in series_statistics(cur, base, EvaluateConfig(), head, [(cur.n, cur.sums)])]
    assert {n.split(".", 1)[0] for n in lean} == {"mean", "delta", "psi", "js", "items", "mover", "lift", "cusum"}
    assert not [n for n in lean if n.startswith("wasserstein.") or n.split(".")[1] in ALL_METRICS and
                n.startswith("js.")]  # js.position_profile and js.attr.* stay
    # ... and for the metrics no shipped rule or dashboard reads the mean of, PSI alone
    per_metric = {m: sorted(n.split(".")[0] for n in lean if n.split(".", 1)[1] == m and not n.startswith("cusum."))
                  for m in ALL_METRICS}
    assert per_metric["entropy_norm"] == per_metric["recency5"] == ["delta", "mean", "psi"]
    assert per_metric["top1"] == per_metric["distance"] == per_metric["gini"] == ["psi"]
    assert per_metric["head_diversity"] == (["psi"] if head == "*" else [])
    # lift.attr.*: the value that grew most times over, judged on the baseline's upper bound
    btk = base.attrs["brand"]
    upper = {k: v + btk.bound() / btk.total for k, v in btk.shares().items()}
    want = st.top_lift({k: upper.get(k, btk.bound() / btk.total) for k in cur.attrs["brand"].shares()},
                       cur.attrs["brand"].shares())
    value, bval = got["lift.attr.brand"]
    assert bval == 1.0 and value == (1.0 if want is None else want[2] / max(want[1], 1e-3))
    # a statistic that is not finite is left out, as before
    empty = Sketch(n=cur.n, sums=cur.sums, sumsq=cur.sumsq, pos=cur.pos)  # zero histograms
    names = [name for name, *_ in series_statistics(empty, base, cfg, head)]
    assert "psi.top1" not in names and "mean.top1" in names


def _cusum_end(per_minute: list, base: Sketch, m: str = "entropy_norm") -> float | None:
    """stats.cusum's last value on the minutes with data (None: no minute had data)."""
    j = COL[m]
    xs = [s[j] / n for n, s in per_minute if n > 0]
    if not xs:
        return None
    bmean = base.sums[j] / base.n
    return float(st.cusum(xs, float(bmean), float(bl.sketch_std(base)[j]))[-1])


@pytest.mark.parametrize("seed", range(3))
def test_batch_statistics_equal_series_statistics_series_by_series(seed):
    """Many series at once, as a cycle computes them: per-head and roll-up series, with and
    without top-K, minutes missing here and there, a baseline of one vector (no std)."""
    rng = np.random.default_rng(seed)
    cfg = EvaluateConfig(statistics=["mean", "delta", "psi", "js", "wasserstein"],
                         statistics_by_metric={"gini": ["wasserstein", "mean"]})
    curs, bases, heads, minutes = [], [], [], []
    for i in range(12):
        base = _sketch(rng, int(rng.integers(50, 800)), items=bool(i % 3))
        cur = _sketch(rng, int(rng.integers(50, 800)), shift=float(rng.uniform(0, 1)), items=bool(i % 3))
        if i % 4 == 0:
            cur.attrs = {}
        if i == 5:  # one vector: its std is NaN, so delta and cusum are left out
            base = Sketch(n=1, sums=base.sums / base.n, sumsq=(base.sums / base.n) ** 2,
                          hist=base.hist, pos=base.pos)
        W = 6
        n = rng.integers(0, 40, W) * (rng.random(W) < 0.7)  # some minutes empty
        if i == 7:
            n[:] = 0  # no minute with data: no cusum row
        sums = rng.uniform(0, 1, (W, M)) * n[:, None]
        curs.append(cur)
        bases.append(base)
        heads.append("*" if i % 2 else str(i))
        minutes.append((n, sums))
    minute_n = np.array([n for n, _ in minutes])
    minute_sums = np.array([s for _, s in minutes])
    got = batch_statistics(curs, bases, heads, cfg, minute_n, minute_sums)
    assert len(got) == len(curs)
    for i, rows in enumerate(got):
        per_minute = [(int(n), s) for n, s in zip(*minutes[i], strict=True) if n > 0]
        one = series_statistics(curs[i], bases[i], cfg, heads[i], per_minute)
        assert [r[0] for r in rows] == [r[0] for r in one]
        for a, b in zip(rows, one, strict=True):
            assert _close(a[1], b[1]) and (a[2] == b[2] or _close(a[2], b[2])) and a[3] == b[3], (a, b)
        found = dict((r[0], r[1]) for r in rows)
        end = _cusum_end(per_minute, bases[i])
        if end is None or not math.isfinite(end):
            assert "cusum.entropy_norm" not in found
        else:
            assert found["cusum.entropy_norm"] == end
        assert ("delta.top1" in found) == (i != 5)
        assert {n for n in found if n.endswith(".gini")} == {"mean.gini", "wasserstein.gini"}
        assert ("items.hhi" in found) == (curs[i].items is not None and bases[i].items is not None)


def _topk(rng: np.random.Generator, keys: np.ndarray, k: int, ties: bool) -> TopK:
    mass = rng.exponential(1.0, len(keys)) * (rng.random(len(keys)) < 0.7)
    if ties:
        mass = np.round(mass * 4) / 4  # equal shares, equal moves and lifts
    return TopK.from_counts(keys, mass, k)


@pytest.mark.parametrize("seed", range(8))
def test_topk_statistics_equal_the_stats_functions(seed):
    """The array version of the item and attribute statistics against stats.shares_js,
    top_movers, top_lift, top_share, hhi and new_in_top on TopK.shares()."""
    from monitor.evaluate import LIFT_MIN_RISE, _topk_statistics

    rng = np.random.default_rng(seed)
    keys = np.array([f"v{k:03d}" for k in range(60)], dtype=object)
    ties = bool(seed % 2)
    base, cur = Sketch(n=10), Sketch(n=10)
    base.items, cur.items = _topk(rng, keys, 32, ties), _topk(rng, keys[10:], 32, ties)
    base.attrs = {"brand": _topk(rng, keys[:40], 16, ties), "empty": TopK.empty(8)}
    cur.attrs = {"brand": _topk(rng, keys[20:], 16, ties), "empty": _topk(rng, keys, 8, ties),
                 "new": _topk(rng, keys, 8, ties)}  # "new": no baseline side, no rows
    got = {r[0]: r for r in _topk_statistics(cur, base)}
    cs, bs = cur.items.shares(), base.items.shares()
    assert got["items.top10_share"][1:3] == (st.top_share(cs, 10), st.top_share(bs, 10))
    assert got["items.hhi"][1:3] == (st.hhi(cs), st.hhi(bs))
    assert got["items.new_in_top"][1] == st.new_in_top(cs, base.items, 10)
    assert [d["item"] for d in got["items.top10_share"][3]["top"]] == \
        [k for k, _ in sorted(cs.items(), key=lambda kv: -kv[1])[:10]]
    for name in ("brand", "empty"):
        btk, ctk = base.attrs[name], cur.attrs[name]
        b, c = btk.shares(), ctk.shares()
        assert _close(got[f"js.attr.{name}"][1], st.shares_js(b, c))
        movers = st.top_movers(b, c, n=3)
        assert [(m["value"], m["baseline_share"], m["share"]) for m in got[f"mover.attr.{name}"][3]["movers"]] \
            == movers
        slack = btk.bound() / btk.total if btk.total > 0 else 0.0
        want = st.top_lift({k: b.get(k, 0.0) + slack for k in c}, c, LIFT_MIN_RISE)
        _, value, bval, detail = got[f"lift.attr.{name}"]
        assert bval == 1.0
        if want is None:
            assert (value, detail) == (1.0, None)
        else:
            assert (detail["value"], detail["baseline_share"], detail["share"]) == want
            assert value == want[2] / max(want[1], 1e-3)
    assert not [k for k in got if k.endswith(".new")]


def test_topk_lift_picks_the_largest_lift_then_the_smallest_key():
    from monitor.evaluate import LIFT_MIN_RISE, _topk_statistics

    keys = np.array([f"b{k}" for k in range(10)], dtype=object)
    base, cur = Sketch(n=10), Sketch(n=10)
    base.attrs = {"brand": TopK.from_counts(keys, np.array([10.0] * 8 + [1.0, 1.0]), 16)}
    # b8 and b9 both grow 1 -> 6 (the same lift), b7 grows less than the minimum rise
    cur.attrs = {"brand": TopK.from_counts(keys, np.array([10.0] * 7 + [10.5, 6.0, 6.0]), 16)}
    c, b = cur.attrs["brand"].shares(), base.attrs["brand"].shares()
    want = st.top_lift(b, c, LIFT_MIN_RISE)
    assert want is not None and want[0] == "b8"
    detail = {r[0]: r for r in _topk_statistics(cur, base)}["lift.attr.brand"][3]
    assert (detail["value"], detail["baseline_share"], detail["share"]) == want


# --- sketch: decoding rows -------------------------------------------------------------------
def _parts(s: Sketch) -> tuple:
    r = s.to_row()
    return (r["payload"], r["n"], r["rejected"], [r[f"sum_{m}"] for m in ALL_METRICS],
            [r[f"sumsq_{m}"] for m in ALL_METRICS])


def _row(parts: tuple) -> dict:
    payload, n, rejected, sums, sumsq = parts
    return {"payload": payload, "n": n, "rejected": rejected,
            **{f"sum_{m}": v for m, v in zip(ALL_METRICS, sums, strict=True)},
            **{f"sumsq_{m}": v for m, v in zip(ALL_METRICS, sumsq, strict=True)}}


def _same(a: Sketch, b: Sketch) -> None:
    assert (a.n, a.rejected) == (b.n, b.rejected)
    for f in ("sums", "sumsq", "hist", "pos"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f
    assert list(a.attrs) == list(b.attrs)
    for x, y in [(a.items, b.items), *((a.attrs[k], b.attrs[k]) for k in a.attrs)]:
        assert (x is None) == (y is None)
        if x is not None:
            assert (x.k, x.total, list(x.keys)) == (y.k, y.total, list(y.keys))
            assert x.counts.tobytes() == y.counts.tobytes()


def test_merge_encoded_equals_merge_all_of_the_decoded_rows():
    rng = np.random.default_rng(2)
    sketches = [_sketch(rng, int(rng.integers(1, 300)), items=bool(rng.random() < 0.7)) for _ in range(40)]
    for s in sketches[::3]:
        s.attrs["category"] = TopK.from_counts(np.array(["a", "b", "c"], dtype=object), rng.random(3), 2)
        s.rejected = int(rng.integers(0, 5))
    parts = [_parts(s) for s in sketches]
    for k in (0, 1, 2, 7, 40):
        _same(merge_encoded(parts[:k]), merge_all([Sketch.from_row(_row(p)) for p in parts[:k]]))
    for p in parts[:5]:
        _same(from_parts(*p), Sketch.from_row(_row(p)))


def test_stacked_rows_equal_merge_encoded_series_by_series():
    """stack_encoded: series of one row decoded together (keyless headers sliced, top-K ones
    decoded), series of several merged; each equal to merge_encoded of its rows."""
    from monitor.stacked import stack_encoded

    rng = np.random.default_rng(7)
    series = {}
    for i in range(30):
        rows = []
        for _ in range(1 if i % 4 else 3):
            s = _sketch(rng, int(rng.integers(1, 300)), items=i % 5 == 0)
            if i % 3:
                s.attrs = {}  # a per-head series: no top-K at all
            s.pos[int(rng.integers(0, 20)):] = 0.0  # positions held up to some length
            rows.append(_parts(s))
        series[("m", "v", "c", "0", str(i))] = rows
    for got in (series, {k: v for k, v in series.items() if len(v) == 1}):
        stacked = stack_encoded(got)
        assert stacked.keys == list(got)
        for i, k in enumerate(got):
            _same(stacked.sketch(i), merge_encoded(got[k]))
    bad = {("m", "v", "c", "0", "x"): [(b"AS1" + b"garbage", 1, 0, [0.0] * M, [0.0] * M)]}
    with pytest.raises(ValueError, match="corrupt attnmon sketch payload"):
        stack_encoded(bad)


def test_merge_encoded_onto_a_sketch_continues_the_merge():
    rng = np.random.default_rng(5)
    sketches = [_sketch(rng, int(rng.integers(1, 300)), items=bool(rng.random() < 0.5)) for _ in range(30)]
    parts = [_parts(s) for s in sketches]
    decoded = [Sketch.from_row(_row(p)) for p in parts]
    first = merge_encoded(parts[:10])
    for rows in (parts[10:], parts[10:11], []):
        _same(merge_encoded(rows, first), merge_all([first, *decoded[10 : 10 + len(rows)]]))
    # counts, sums and histograms as one merge of all; top-K summaries within their bound
    folded, whole = merge_encoded(parts[10:], first), merge_encoded(parts)
    for f in ("sums", "sumsq", "hist", "pos"):
        assert getattr(folded, f).tobytes() == getattr(whole, f).tobytes()
    assert (folded.n, folded.rejected) == (whole.n, whole.rejected)
    assert folded.attrs["brand"].total == whole.attrs["brand"].total


def test_from_parts_and_merge_encoded_reject_garbage():
    good = _parts(_sketch(np.random.default_rng(3), 50))
    for payload in (b"", b"AS1junk", good[0][:-1], good[0] + b"x"):
        bad = (payload, *good[1:])
        with pytest.raises(ValueError):
            from_parts(*bad)
        with pytest.raises(ValueError):
            merge_encoded([good, bad])


def test_floats_read_what_json_reads():
    vals = [0.1, -0.0, 1e-310, 1e300, float("nan"), float("inf"), float("-inf"), 123456789.123,
            5e-324, 2.0**60, -7.25]
    assert len(vals) == M
    text_ = json.dumps(vals)
    got = bl._floats(text_)
    want = json.loads(text_)
    assert [repr(x) for x in got] == [repr(float(x)) for x in want]
    assert bl._floats(json.dumps([1] * M)) == [1.0] * M  # ints (as a hand-made row) -> floats
    assert bl._floats("[" + ",".join(["1e3"] * M) + "]") == [1000.0] * M
    with pytest.raises(ValueError):
        bl._floats(json.dumps([1.0] * (M - 1)))
    with pytest.raises(ValueError):
        bl._floats("[1.0, oops]")


def test_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with bl.gc_paused():
        assert not gc.isenabled()
        with bl.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), bl.gc_paused():
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with bl.gc_paused():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()


# --- drift_results writes ----------------------------------------------------------------------
def drift_rows(minute: int, n: int = 300, off: int = 0) -> list[dict]:
    end = T(minute)
    plus2 = timezone(timedelta(hours=2))
    out = []
    for i in range(off, off + n):
        out.append({
            "model": "m", "version": "v\t1", "cohort": "c'o\nh\\", "layer": str(i % 4),
            "head": "*" if i % 7 == 0 else str(i % 9), "statistic": f"s.{i}",
            "value": i / 7.0 if i % 11 else -0.0, "baseline_value": None if i % 5 == 0 else 1e-300 * i,
            "baseline_kind": "trailing",
            "window_start": (end - timedelta(minutes=15)).astimezone(plus2) if i % 2 else end - timedelta(minutes=15),
            "window_end": end, "n_current": 10**12 + i, "n_baseline": i,
            "detail": None if i % 3 else {"value": "é\"x", "share": 0.1 * i, "movers": [1, None]},
            "computed_at": end,
        })
    return out


def _dump(engine) -> list[tuple]:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # ids in order, not their values: a COPY the unique key refused used up a few
            q = ("SELECT model, version, cohort, layer, head, statistic, value::text, baseline_value::text, "
                 "baseline_kind, window_start::text, window_end::text, n_current, n_baseline, detail::text, "
                 "detail IS NULL, computed_at::text FROM drift_results ORDER BY id")
        else:
            q = ("SELECT id, model, version, cohort, layer, head, statistic, value, baseline_value, baseline_kind, "
                 "window_start, window_end, n_current, n_baseline, detail, detail IS NULL, computed_at, "
                 "typeof(value), typeof(baseline_value), typeof(detail) FROM drift_results ORDER BY id")
        return [tuple(r) for r in conn.execute(text(q))]


def _batches() -> list[list[dict]]:
    return [drift_rows(1), drift_rows(1), drift_rows(1, 300, 150), drift_rows(2, 10) + drift_rows(2, 10), []]


def check_writes_equal_the_sqlalchemy_insert(fast_url: str, plain_url: str) -> None:
    fast, plain = make_engine(fast_url), make_engine(plain_url)
    try:
        counts = [write_results(fast, b) for b in _batches()]
        assert counts == [_write_dicts(plain, b) for b in _batches()] == [300, 0, 150, 10, 0]
        got, want = _dump(fast), _dump(plain)
        assert len(got) == 460 and got == want
    finally:
        fast.dispose()
        plain.dispose()


def test_sqlite_writes_equal_the_sqlalchemy_insert(tmp_path):
    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("fast", "plain")]
    for url in urls:
        migrate.upgrade(url)
    check_writes_equal_the_sqlalchemy_insert(*urls)


def test_rows_without_every_column_take_the_plain_path(sqlite_url):
    engine = make_engine(sqlite_url)
    rows = drift_rows(3, 5)
    for r in rows:
        del r["detail"]  # not given: SQL NULL, not JSON null
    assert write_results(engine, rows) == 5 and write_results(engine, rows) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM drift_results WHERE detail IS NULL")).scalar_one() == 5


# --- Baselines: hour partials ----------------------------------------------------------------
CFG = EvaluateConfig(baseline_hours=2, trailing_gap_hours=0, min_samples=50)


@pytest.fixture(scope="module")
def four_hours(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('hours') / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 250)], rate=20)
    return url


def _baseline_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        _same(a[k], b[k])


def _results(engine, end: datetime) -> dict:
    dr = t.drift_results
    with engine.connect() as conn:
        rows = conn.execute(select(dr).where(dr.c.window_end == end)).mappings().all()
    return {(r["cohort"], r["layer"], r["head"], r["statistic"]): (r["value"], r["baseline_value"]) for r in rows}


def test_hour_partials_are_kept_and_only_the_new_hour_is_merged(four_hours, monkeypatch):
    engine = make_engine(four_hours)
    merged_hours, loads = [], []
    merge_rows, load_hours = bl._merge_rows, bl._load_hours
    monkeypatch.setattr(bl, "_merge_rows", lambda e, m, v, s, end: merged_hours.append(s) or merge_rows(e, m, v, s, end))
    monkeypatch.setattr(bl, "_load_hours", lambda e, m, v, hours, *rest: loads.extend(hours) or load_hours(e, m, v, hours, *rest))
    b, reader = bl.Baselines(engine, CFG), WindowReader(engine)
    first = evaluate_cycle(engine, T(196), CFG, b, reader)  # baseline hours [60, 120), [120, 180)
    assert first.series > 0 and merged_hours == [T(60), T(120)]
    turnover = evaluate_cycle(engine, T(256), CFG, b, reader)  # hours [120, 180), [180, 240)
    assert turnover.series > 0 and merged_hours == [T(60), T(120), T(180)]
    assert loads.count(T(120)) == 1  # kept, not read again
    assert {k[2] for k in b._hours} == {T(120), T(180)}  # hour 60 is no longer needed
    for hour in (T(120), T(180)):  # kept as the store holds them
        _baseline_equal(b._hours[("demo-sasrec", "v1", hour)].sketches(),
                        load_hours(engine, "demo-sasrec", "v1", [hour])[hour].sketches())
    # a trailing baseline from the kept partials is the one a fresh process builds from the store
    ref = bl.choose(engine, "demo-sasrec", "v1", T(255), CFG)
    rebuilt = b._build("demo-sasrec", ref)
    with engine.begin() as conn:
        conn.execute(t.baseline_sketches.delete().where(t.baseline_sketches.c.kind == "trailing"))
    _baseline_equal(rebuilt, bl.Baselines(engine, CFG).get("demo-sasrec", ref))
    # and a fresh process writes the same results (top-K counters are stored as float32)
    before = _results(engine, T(255))
    with engine.begin() as conn:
        conn.execute(t.drift_results.delete())
    assert evaluate_cycle(engine, T(256), CFG, bl.Baselines(engine, CFG)).written == turnover.written
    after = _results(engine, T(255))
    assert after.keys() == before.keys()
    for k, (v, b_) in before.items():
        assert after[k][0] == pytest.approx(v, rel=1e-6, abs=1e-9), k
        assert after[k][1] == pytest.approx(b_, rel=1e-6, abs=1e-9), k


def test_late_rows_rebuild_the_hour_partial_they_land_in(tmp_path, monkeypatch):
    """A collector that replays its spill after the hour's partial was built: the next
    trailing baseline holding that hour merges it again, late rows included."""
    from collectors import AttentionCollector

    url = f"sqlite:///{tmp_path / 'late.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 250)], rate=20)
    engine = make_engine(url)
    merged_hours = []
    merge_rows = bl._merge_rows
    monkeypatch.setattr(bl, "_merge_rows", lambda e, m, v, s, end: merged_hours.append(s) or merge_rows(e, m, v, s, end))
    b = bl.Baselines(engine, CFG)
    evaluate_cycle(engine, T(196), CFG, b)  # partials of hours [60, 120) and [120, 180) built
    key = ("demo-sasrec", "v1", T(120))
    before = bl._total(b._hours[key])
    rng = np.random.default_rng(5)
    with AttentionCollector(url, model="demo-sasrec", version="v1", clock=lambda: START + 60 * 130 + 5) as c:
        c.observe_batch(rng.dirichlet(np.ones(10), 40), cohorts="web")  # minute 130, written late
    evaluate_cycle(engine, T(256), CFG, b)  # hours [120, 180), [180, 240)
    assert merged_hours == [T(60), T(120), T(120), T(180)]  # hour 120 merged again
    wa = t.window_aggregates
    with engine.connect() as conn:
        rows_n = conn.execute(select(func.sum(wa.c.n)).where(wa.c.bucket_start >= T(120),
                                                            wa.c.bucket_start < T(180))).scalar_one()
    assert bl._total(b._hours[key]) == rows_n > before
    # and a fresh process reads the rebuilt partial, not the stale one
    merged_hours.clear()
    assert bl._total(bl.Baselines(engine, CFG)._hour(*key, expect=rows_n)) == rows_n and merged_hours == []


def test_merge_rows_folds_within_its_buffer(four_hours, monkeypatch):
    engine = make_engine(four_hours)
    whole = bl._merge_rows(engine, "demo-sasrec", "v1", T(60), T(120))
    monkeypatch.setattr(bl, "MERGE_BUFFER_ROWS", 97)
    folded = bl._merge_rows(engine, "demo-sasrec", "v1", T(60), T(120))
    assert list(folded) == list(whole)  # series in the order of their first row
    for key, s in whole.items():
        f = folded[key]
        assert (f.n, f.rejected) == (s.n, s.rejected)
        for name in ("sums", "sumsq", "hist", "pos"):
            assert getattr(f, name).tobytes() == getattr(s, name).tobytes(), (key, name)
        for a, b in [(f.items, s.items), *((f.attrs[n], s.attrs[n]) for n in s.attrs)]:
            assert (a is None) == (b is None)
            if a is not None:
                assert a.total == b.total and len(a.keys) <= a.k


def test_window_reader_merges_each_series_in_minute_order(four_hours):
    engine = make_engine(four_hours)
    reader = WindowReader(engine)
    merged, per_minute = reader.read(T(100), T(115))
    again, _ = reader.read(T(101), T(116))  # one new minute decoded, the rest kept
    wa = t.window_aggregates
    with engine.connect() as conn:
        rows = conn.execute(select(wa).where(wa.c.bucket_start >= T(101), wa.c.bucket_start < T(116),
                                             wa.c.bucket_seconds == 60).order_by(wa.c.bucket_start, wa.c.id)).mappings().all()
    by_series: dict = {}
    for r in rows:
        key = (r["model"], r["version"], r["cohort"], r["layer"], r["head"])
        by_series.setdefault(key, {}).setdefault(r["bucket_start"], []).append(Sketch.from_row(r))
    assert set(again) == set(by_series)
    # series in the order of their first sketch, minutes oldest first (as before)
    order: dict = {}
    for r in rows:  # series in the order of their first row, minutes oldest first
        order.setdefault((r["model"], r["version"], r["cohort"], r["layer"], r["head"]), None)
    assert list(again) == list(order)
    for key, minutes in by_series.items():
        _same(again[key], merge_all([merge_all(v) for _, v in sorted(minutes.items())]))
    assert set(per_minute) == set(merged) and all(len(v) == 15 for v in per_minute.values())


def test_the_next_hours_baseline_is_prepared_late_in_the_hour_and_the_turnover_cycle_reads_it(tmp_path, monkeypatch):
    from monitor.evaluate import PREPARE_AFTER, prepare_baselines

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 250)], rate=20)
    cfg = EvaluateConfig(baseline_hours=2, trailing_gap_hours=1, min_samples=50)
    engine = make_engine(url)
    b, reader = bl.Baselines(engine, cfg), WindowReader(engine)
    early = evaluate_cycle(engine, T(221), cfg, b, reader)  # the window ends at :40
    assert early.versions == (("demo-sasrec", "v1"),)
    assert prepare_baselines(engine, early, cfg, b) == []  # its newest hour closed 40 min ago
    assert PREPARE_AFTER == timedelta(minutes=45)
    late = evaluate_cycle(engine, T(226), cfg, b, reader)  # ends at :45
    built = prepare_baselines(engine, late, cfg, b)
    want = bl.choose(engine, "demo-sasrec", "v1", T(240), cfg)  # what the turnover cycle reads
    assert [(m, r.ref) for m, r in built] == [("demo-sasrec", want.ref)] and want.kind == "trailing"
    assert prepare_baselines(engine, late, cfg, b) == []  # once
    merged = []
    merge_rows = bl._merge_rows
    monkeypatch.setattr(bl, "_merge_rows", lambda *a: merged.append(a[3]) or merge_rows(*a))
    turnover = evaluate_cycle(engine, T(241), cfg, b, reader)
    assert turnover.series > 0 and merged == []  # nothing merged in the cycle itself
    # the same results as a process that builds the baseline in the cycle
    before = _results(engine, T(240))
    with engine.begin() as conn:
        conn.execute(t.drift_results.delete())
        conn.execute(t.baseline_sketches.delete())
    assert evaluate_cycle(engine, T(241), cfg, bl.Baselines(engine, cfg)).written == turnover.written
    assert merged  # (this one did merge minute rows)
    after = _results(engine, T(240))
    assert after.keys() == before.keys()
    for k, (v, b_) in before.items():
        assert after[k][0] == pytest.approx(v, rel=1e-6, abs=1e-9), k
        assert after[k][1] == pytest.approx(b_, rel=1e-6, abs=1e-9), k


@pytest.mark.parametrize("shuffle", [False, True])
def test_merged_minutes_equal_merge_all_series_by_series(shuffle):
    """The window's array merge against merge_all of each series' minutes, with minutes in
    the same series order (added in place) or not (gathered), series missing from some
    minutes, and top-K on some series only."""
    from monitor.stacked import Stacked
    from monitor.stacked import merge_stacked as _merge_minutes

    rng = np.random.default_rng(3)
    keys = [("m", "v", c, "0", h) for c in ("a", "*") for h in ("0", "1", "*")]
    minutes, by_series = [], {k: [] for k in keys}
    for w in range(6):
        here = [k for k in keys if w == 0 or rng.random() < 0.8]
        if shuffle:
            here = [here[i] for i in rng.permutation(len(here))]
        sketches = {}
        for k in here:
            sk = _sketch(rng, int(rng.integers(20, 200)), shift=float(rng.uniform(0, 1)), items=k[2] == "*")
            if k[4] != "*":
                sk.attrs = {}
            sketches[k] = sk
            by_series[k].append(sk)
        minutes.append(Stacked.of(sketches))
    win = _merge_minutes(minutes)
    assert set(win.keys) == set(keys)
    for i, k in enumerate(win.keys):
        _same(win.sketch(i), merge_all(by_series[k]))
        assert win.present[i].sum() == len(by_series[k])
        np.testing.assert_array_equal(win.minute_n[i][win.present[i]], [s.n for s in by_series[k]])


def test_kept_hour_partials_are_those_of_cached_trailing_baselines(sqlite_url):
    b = bl.Baselines(make_engine(sqlite_url), CFG)
    h = lambda k: T(60 * k)  # noqa: E731
    ref = bl.BaselineRef("trailing", "trailing@x", "v1", h(2), h(4))
    b._cache[("m", "trailing", "trailing@y", "v2")] = {}  # v2's baseline is still in use
    b._hours = {("m", v, h(k)): {} for v in ("v1", "v2", "v3") for k in range(5)}
    b._forget_hours("m", ref)
    assert sorted(b._hours) == [("m", "v1", h(2)), ("m", "v1", h(3))] + [("m", "v2", h(k)) for k in range(5)]


def test_the_baseline_cache_evicts_the_least_recently_used(monkeypatch):
    """From minute 45 the daemon holds this hour's and the next hour's baseline of every
    version: the one read every cycle must not be the one evicted."""
    monkeypatch.setattr(bl, "_load", lambda e, m, v, kind, ref, *window: {})
    b = bl.Baselines(None, EvaluateConfig(), cache_size=2)
    refs = [bl.BaselineRef("trailing", f"trailing@{h}", "v1", T(0), T(60)) for h in range(3)]
    b.get("m", refs[0])
    b.get("m", refs[1])
    b.get("m", refs[0])  # read again: now the most recent
    b.get("m", refs[2])
    assert b.holds("m", refs[0]) and b.holds("m", refs[2]) and not b.holds("m", refs[1])


def test_stored_sums_parse_at_once_as_row_by_row():
    import json

    rng = np.random.default_rng(4)
    texts = [json.dumps([float(x) for x in rng.standard_normal(M) * 1e3]) for _ in range(5)]
    odd = [*texts, json.dumps([1e-300, float("nan")] + [0.0] * (M - 2)), "[" + ", ".join(["2.5"] * M) + "]"]
    for got in (texts, odd, []):
        want = np.array([bl._floats(x) for x in got], dtype=np.float64).reshape(len(got), M)
        assert bl._floats_many(got).tobytes() == want.tobytes()
    with pytest.raises(ValueError):
        bl._floats_many([*texts, json.dumps([1.0] * (M + 1))])
