"""Evaluation cycles: baselines chosen and materialised once, idempotent results, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

from monitor.baselines import Baselines, choose, deployments
from monitor.cli import main
from monitor.config import EvaluateConfig
from monitor.demo import START, Segment, stream
from monitor.evaluate import WindowReader, evaluate_cycle, series_statistics, window_for
from monitor.sketch import Sketch
from monitor.store import make_engine, tables

CFG = EvaluateConfig(baseline_hours=1, trailing_gap_hours=1, min_samples=100)
T = lambda minutes: datetime.fromtimestamp(START + 60 * minutes, UTC)  # noqa: E731


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """150 minutes of v1, then v2 (same weights, harmless) for 30 minutes."""
    from monitor.store import migrate

    path = tmp_path_factory.mktemp("eval") / "store.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 150, weights_id="w1"), Segment("v2", 30, weights_id="w1")], rate=60)
    return url


def test_a_version_after_a_rolled_back_canary_is_compared_with_the_one_that_served(tmp_path):
    """v1 serves, canary v2 for 10 minutes, v1 again (a rollback), then v3: v3 replaced
    v1, not v2 (the version deployed last before it, with 10 minutes of data)."""
    from monitor import baselines
    from monitor.store import migrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 60, weights_id="w1"), Segment("v2", 10, weights_id="w2"),
                 Segment("v1", 50, weights_id="w1"), Segment("v3", 20, weights_id="w1")], rate=20)
    engine = make_engine(url)
    baselines._REPLACED.clear()
    ref = choose(engine, "demo-sasrec", "v3", T(135), CFG)
    assert (ref.kind, ref.version) == ("previous_version", "v1")  # the same weights as v1
    assert T(120) <= ref.end < T(121)
    # nothing served in the day before: the one deployed last
    deps = deployments(engine, "demo-sasrec")
    assert baselines.replaced(engine, "demo-sasrec", T(-60), deps[:2])["version"] == "v2"

def _count(engine, table, **where):
    with engine.connect() as conn:
        q = select(func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return conn.execute(q).scalar_one()


def test_window_is_whole_minutes_ending_a_minute_ago():
    start, end = window_for(datetime(2026, 11, 20, 10, 7, 42, tzinfo=UTC), CFG)
    assert end == datetime(2026, 11, 20, 10, 6, tzinfo=UTC)
    assert start == end - timedelta(minutes=15)


def test_choose_baseline_kinds(two_versions):
    engine = make_engine(two_versions)
    prev = choose(engine, "demo-sasrec", "v2", T(170), CFG)
    assert prev.kind == "previous_version" and prev.version == "v1"
    # first seen by the collector: the first v2 request, within minute 150
    assert T(150) <= prev.end < T(151) and prev.start == prev.end - timedelta(hours=1)
    trailing = choose(engine, "demo-sasrec", "v1", T(140), CFG)
    # hour-aligned, ending trailing_gap_hours before the window
    assert trailing.kind == "trailing" and trailing.end == T(60) and trailing.start == T(0)
    late = choose(engine, "demo-sasrec", "v2", T(150) + timedelta(hours=25), CFG)
    assert late.kind == "trailing"
    # new weights, or weights not known to be the same: the previous version as a retrain
    deps = [dict(d) for d in deployments(engine, "demo-sasrec")]
    for new in ("w2", None):
        deps[-1]["weights_id"] = new
        ref = choose(engine, "demo-sasrec", "v2", T(170), CFG, deps=deps)
        assert (ref.kind, ref.version, ref.start, ref.end) == ("retrain", "v1", prev.start, prev.end)


def test_a_trailing_baseline_never_holds_its_window():
    """A trailing_gap_hours shorter than the window (0 here): the baseline ends at the
    hour boundary before the window starts, not the one before the window ends."""
    from monitor.baselines import trailing_end

    cfg = CFG.model_copy(update={"trailing_gap_hours": 0, "window_minutes": 15})
    for minute in range(0, 120):
        end = T(60) + timedelta(minutes=minute)
        got = trailing_end(end, cfg)
        assert got <= end - timedelta(minutes=15) and got.minute == 0, (end, got)
        assert end - got < timedelta(minutes=75)  # and the nearest such boundary
    assert trailing_end(T(140), CFG) == T(60)  # a gap of an hour, as before


def test_cycle_is_idempotent_and_baselines_are_built_once(two_versions):
    engine = make_engine(two_versions)
    baselines = Baselines(engine, CFG)
    first = evaluate_cycle(engine, T(140), CFG, baselines)
    assert first.series > 0 and first.written > 0
    built = _count(engine, tables.baseline_sketches)
    again = evaluate_cycle(engine, T(140), CFG, Baselines(engine, CFG))  # a fresh process
    assert again.written == 0 and again.series == first.series
    assert _count(engine, tables.baseline_sketches) == built  # read back, not rebuilt
    # the trailing baseline is the sum of hour partials, each built once
    assert _count(engine, tables.baseline_sketches, kind="hour_stack") > 0  # a row per hour and version
    nxt = evaluate_cycle(engine, T(141), CFG, baselines)
    assert nxt.written == first.written  # same series and statistics, next window
    assert _count(engine, tables.baseline_sketches) == built


def test_post_deploy_window_uses_previous_version(two_versions):
    engine = make_engine(two_versions)
    res = evaluate_cycle(engine, T(170), CFG)
    assert res.series > 0
    with engine.connect() as conn:
        kinds = conn.execute(
            select(tables.drift_results.c.baseline_kind).distinct()
            .where(tables.drift_results.c.version == "v2")
        ).scalars().all()
    assert kinds == ["previous_version"]


def test_min_samples_is_respected(two_versions):
    engine = make_engine(two_versions)
    cfg = CFG.model_copy(update={"min_samples": 10**9})
    res = evaluate_cycle(engine, T(120), cfg)
    assert res.series == 0 and res.skipped > 0 and res.written == 0


def test_window_reader_sees_late_and_compacted_rows(sqlite_url):
    from collectors import AttentionCollector

    def write(n):
        with AttentionCollector(sqlite_url, model="m", version="v", clock=lambda: START + 7200) as c:
            c.observe_batch(np.full((n, 4), 0.25, np.float32), timestamps=START + 30)

    engine = make_engine(sqlite_url)
    reader = WindowReader(engine)
    write(10)
    merged, _ = reader.read(T(0), T(15))
    assert {s.n for s in merged.values()} == {10}
    write(5)  # a late collector writes the same minute
    merged, _ = reader.read(T(0), T(15))
    assert {s.n for s in merged.values()} == {15}
    from monitor.store.maintenance import merge_buckets

    merge_buckets(engine, T(60))  # compaction replaces the rows with one
    merged, _ = reader.read(T(0), T(15))
    assert {s.n for s in merged.values()} == {15}


def test_identical_sketches_give_zero_drift():
    rng = np.random.default_rng(0)
    from monitor.metrics import compute
    from monitor.sketch import build

    w = rng.dirichlet(np.ones(20), size=500)
    lengths = np.full(500, 20)
    values = np.column_stack([compute(w, lengths), np.full(500, np.nan)])
    s = build(np.zeros(500, dtype=np.int64), 1, values, w, lengths)[0]
    stats = {name: v for name, v, _, _ in series_statistics(s, s, CFG, "0", [(s.n, s.sums)])}
    for name, v in stats.items():
        if not name.startswith("mean."):
            assert v == pytest.approx(0.0, abs=1e-12), name
    assert stats["mean.entropy_norm"] == pytest.approx(s.sums[1] / s.n)
    assert isinstance(Sketch(), Sketch)


def test_cli_evaluate_backfill_pin_and_deploy_mark(two_versions, capsys):
    store = ["--store", two_versions]
    assert main(["evaluate", *store, "--from", T(120).isoformat(), "--to", T(125).isoformat(),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["window_end"] for o in out] == [(T(k) - timedelta(minutes=1)).isoformat() for k in range(120, 125)]
    # the first window has no baseline yet unless an earlier test of this module wrote one
    written = [o for o in out if o["written"]]
    assert len(written) >= 4
    engine = make_engine(two_versions)
    dr = tables.drift_results
    with engine.connect() as conn:
        ends = conn.execute(select(func.count(dr.c.window_end.distinct())).where(
            dr.c.window_end.between(T(119), T(123)))).scalar_one()
    assert ends >= len(written)
    # a rerun of the backfill adds nothing
    assert main(["evaluate", *store, "--from", T(120).isoformat(), "--to", T(125).isoformat(), "--format", "json"]) == 0
    assert sum(o["written"] for o in json.loads(capsys.readouterr().out)) == 0
    assert main(["evaluate", *store, "--at", T(122).isoformat()]) == 0
    out = capsys.readouterr().out
    assert " 0 results written (evaluated before: its results are kept as they were)" in out

    assert main(["baseline", "pin", *store, "--model", "demo-sasrec", "--name", "quiet-monday",
                 "--from", T(0).isoformat(), "--to", T(60).isoformat(), "--version", "v1"]) == 0
    assert choose(engine, "demo-sasrec", "v1", T(140), CFG).kind == "pinned"
    assert main(["baseline", "pin", *store, "--model", "demo-sasrec", "--name", "quiet-monday",
                 "--from", T(0).isoformat(), "--to", T(60).isoformat()]) == 2
    assert "'quiet-monday' is pinned: a name is never reused" in capsys.readouterr().err
    for bad, what in ((["--model", "nosuch"], "--model='nosuch': no such model in the store (models: demo-sasrec)"),
                      (["--model", "demo-sasrec", "--version", "v7"], "--version='v7': model demo-sasrec has no such version")):
        assert main(["baseline", "pin", *store, *bad, "--name", "other",
                     "--from", T(0).isoformat(), "--to", T(60).isoformat()]) == 2
        assert what in capsys.readouterr().err
    assert main(["baseline", "list", *store, "--format", "json"]) == 0
    pins = json.loads(capsys.readouterr().out)
    assert [(p["name"], p["active"]) for p in pins] == [("quiet-monday", True)]
    assert main(["baseline", "unpin", *store, "quiet-monday"]) == 0
    assert choose(engine, "demo-sasrec", "v1", T(140), CFG).kind == "trailing"
    assert main(["baseline", "unpin", *store, "quiet-monday"]) == 2
    capsys.readouterr()
    assert main(["baseline", "pin", *store, "--model", "demo-sasrec", "--name", "quiet-monday",
                 "--from", T(0).isoformat(), "--to", T(60).isoformat()]) == 2
    assert "'quiet-monday' was pinned before (and unpinned): a name is never reused" in capsys.readouterr().err

    # the collector first saw v2 at minute 150; it really went live at minute 160
    assert main(["deploy", "mark", *store, "--model", "demo-sasrec", "--version", "v2",
                 "--at", T(160).isoformat()]) == 0
    ref = choose(engine, "demo-sasrec", "v2", T(170), CFG)
    assert ref.kind == "previous_version" and ref.end == T(160)
    assert main(["evaluate", *store, "--at", "yesterday-ish"]) == 2
    assert "--at" in capsys.readouterr().err


def _two_heads(url, version, weights_id, sharp_head, minutes, start_minute, rate=200):
    """A layer of two heads, one sharp (most attention on the last item), one flat."""
    from collectors import AttentionCollector

    L, rng = 20, np.random.default_rng(start_minute)
    clock = [START + 60 * start_minute]
    with AttentionCollector(url, model="m", version=version, weights_id=weights_id, clock=lambda: clock[0],
                            flush_interval_s=3600) as col:
        for m in range(minutes):
            clock[0] = START + 60 * (start_minute + m)
            w = np.empty((rate, 1, 2, L))
            flat = rng.dirichlet(np.full(L, 50.0), rate)
            sharp = rng.dirichlet(np.r_[np.full(L - 1, 0.3), 30.0], rate)
            w[:, 0, sharp_head], w[:, 0, 1 - sharp_head] = sharp, flat
            col.observe_batch(w, timestamps=clock[0] + rng.uniform(0, 59, rate))
        clock[0] += 120


@pytest.mark.parametrize("weights", ["same", "new"])
def test_a_retrain_is_compared_head_to_matched_head(sqlite_url, weights):
    """v2 swaps which head is sharp. With the same weights that is a change of each head
    (compared by index); with new weights the heads are relabelled, so each is compared with
    its matched baseline head and nothing moved."""
    _two_heads(sqlite_url, "v1", "w1", sharp_head=0, minutes=60, start_minute=0)
    _two_heads(sqlite_url, "v2", "w1" if weights == "same" else "w2", sharp_head=1, minutes=20, start_minute=60)
    engine = make_engine(sqlite_url)
    evaluate_cycle(engine, T(78), CFG)
    dr = tables.drift_results
    with engine.connect() as conn:
        rows = conn.execute(select(dr.c.head, dr.c.statistic, dr.c.value, dr.c.baseline_value, dr.c.baseline_kind,
                                   dr.c.detail)
                            .where(dr.c.version == "v2", dr.c.cohort == "*",
                                   dr.c.statistic.in_(["mean.entropy_norm", "js.position_profile"]))).all()
    got = {(h, st): (v, b, kind, d) for h, st, v, b, kind, d in rows}
    assert {k for *_, k, _ in got.values()} == {"previous_version" if weights == "same" else "retrain"}
    for head, other in (("0", "1"), ("1", "0")):
        v, b, _, detail = got[(head, "mean.entropy_norm")]
        js = got[(head, "js.position_profile")][0]
        if weights == "same":
            assert abs(v - b) > 0.2 and js > 0.3 and not detail
        else:
            assert abs(v - b) < 0.02 and js < 0.05
            assert detail == {"baseline_head": other}
    # the layer roll-up is compared as is either way
    v, b, _, detail = got[("*", "mean.entropy_norm")]
    assert abs(v - b) < 0.02 and not detail


def test_the_top_items_are_named_in_the_detail(two_versions):
    """items.top10_share carries its ten items, largest first, beside their baseline share."""
    engine = make_engine(two_versions)
    evaluate_cycle(engine, T(140), CFG)
    dr = tables.drift_results
    with engine.connect() as conn:
        rows = conn.execute(select(dr.c.value, dr.c.baseline_value, dr.c.detail)
                            .where(dr.c.statistic == "items.top10_share", dr.c.window_end == window_for(T(140), CFG)[1])
                            ).all()
    assert rows
    for value, baseline_value, detail in rows:
        top = detail["top"]
        shares = [t["share"] for t in top]
        assert len(top) == 10 and shares == sorted(shares, reverse=True)
        assert sum(shares) == pytest.approx(value)  # the statistic is the sum of these ten
        assert all(isinstance(t["item"], str) for t in top)
        # a trailing baseline of the same version: the popular items were popular before
        assert sum(t["baseline_share"] is not None for t in top) >= 8
        assert max(t["baseline_share"] or 0 for t in top) <= baseline_value


def test_a_stored_baseline_of_another_baseline_hours_is_not_reused(tmp_path):
    """After baseline_hours changes (a restarted daemon), a baseline stored under the same
    reference but over the old window is merged again over the new one."""
    from monitor.store import migrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 130, weights_id="w1"), Segment("v2", 10, weights_id="w1")], rate=20)
    engine = make_engine(url)
    short, long = CFG.model_copy(update={"baseline_hours": 1}), CFG.model_copy(update={"baseline_hours": 2})

    def n_baseline(cfg, at):
        assert evaluate_cycle(engine, at, cfg, Baselines(engine, cfg)).written > 0
        dr = tables.drift_results
        with engine.connect() as conn:
            return conn.execute(select(dr.c.n_baseline).where(
                dr.c.window_end == window_for(at, cfg)[1], dr.c.version == "v2", dr.c.cohort == "*",
                dr.c.layer == "0", dr.c.head == "*", dr.c.statistic == "psi.entropy_norm")).scalar_one()

    # v2's previous_version baseline: v1's minutes 71-129, then 11-129 (20 vectors a
    # minute; v2 was first seen within minute 130)
    assert (n_baseline(short, T(140)), n_baseline(long, T(141))) == (59 * 20, 119 * 20)


def test_a_trailing_baseline_of_fractional_hours_holds_its_own_window_only(tmp_path):
    """Trailing baselines are summed from clock-hour partials: with baseline_hours=1.5 its
    window is whole hours, and it holds no traffic past its end (with no gap, none of the
    window it is compared with)."""
    from monitor.store import migrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 200)], rate=20)
    engine = make_engine(url)
    cfg = CFG.model_copy(update={"baseline_hours": 1.5, "trailing_gap_hours": 0})
    ref = choose(engine, "demo-sasrec", "v1", T(196), cfg)
    assert ref.start.minute == 0 and ref.end == T(180) and ref.end - ref.start >= timedelta(hours=1.5)
    assert evaluate_cycle(engine, T(197), cfg).series > 0  # the window ending minute 196
    dr = tables.drift_results
    with engine.connect() as conn:
        n = conn.execute(select(dr.c.n_baseline).where(
            dr.c.cohort == "*", dr.c.layer == "0", dr.c.head == "*", dr.c.statistic == "psi.entropy_norm")).scalar_one()
    assert n == 20 * (ref.end - ref.start) // timedelta(minutes=1)
