"""Every dashboard query, run on a store holding the demo story (v1, then a defective
v2), with Grafana's interpolation reproduced by dashboards.sql. This module runs them on
SQLite (the demo's store and `attnmon report`'s); tests/postgres/test_dashboards_pg.py
imports `load_story` and `check_every_query` to run the same on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect

from dashboards.catalog import dashboards
from dashboards.run import (
    context,
    fetch,
    missing_tables,
    resolve_variables,
    run_panel,
    shape_problems,
    wide,
)
from dashboards.sql import expand
from monitor.demo import DEFECT, MODEL, START, Segment, stream
from monitor.evaluate import backfill
from monitor.quality import TEST_EVALUATE
from monitor.store import make_engine, migrate, tables

T = lambda minutes: datetime.fromtimestamp(START + 60 * minutes, UTC)  # noqa: E731
RANGE = (T(0), T(122))  # the dashboards' time range in these tests
DEPLOY = T(90)  # v2 goes live


def _rejections(url: str) -> None:
    """A few minutes of v2 traffic with broken rows, so that rejections have reasons."""
    from collectors import AttentionCollector

    rng = np.random.default_rng(3)
    clock = [START + 60 * 100]
    with AttentionCollector(url, model=MODEL, version="v2", clock=lambda: clock[0], flush_interval_s=3600) as c:
        for minute in range(100, 104):
            clock[0] = START + 60 * minute
            w = rng.dirichlet(np.ones(8), size=(20, 2, 4)).astype(np.float32)
            w[:3, 0, 0, 0] = np.nan  # nan
            w[3:5, 1, 1] *= 2.0  # not_normalised
            c.observe_batch(w, lengths=np.full(20, 8), timestamps=clock[0] + np.linspace(1, 50, 20))
        clock[0] += 120
        c.flush()


def _alerts(engine) -> None:
    """Alert states and outbox rows as alerts/ writes them (when its tables exist)."""
    if not inspect(engine).has_table("alerts"):
        return
    labels = {"alertname": "AttentionEntropyCollapse", "model": MODEL, "version": "v2", "cohort": "*",
              "layer": "1", "head": "2", "baseline_kind": "previous_version", "severity": "critical"}
    # executemany: every row names every column
    base = dict(severity="critical", annotations={"summary": "layer 1 head 2: entropy collapsed"},
                baseline_value=0.0, last_eval_at=T(120), fired_at=None, resolved_at=None)
    with engine.begin() as conn:
        conn.execute(tables.alerts.insert(), [
            dict(base, fingerprint="f" * 32, rule="AttentionEntropyCollapse", labels=labels, state="firing",
                 value=-3.2, active_at=T(93), fired_at=T(95), last_true_at=T(120)),
            dict(base, fingerprint="e" * 32, rule="PositionProfileShift", severity="warning",
                 labels=dict(labels, alertname="PositionProfileShift"), state="resolved", value=0.02,
                 active_at=T(92), fired_at=T(94), resolved_at=T(110), last_true_at=T(100)),
            dict(base, fingerprint="d" * 32, rule="ItemConcentrationSpike", severity="warning",
                 labels=dict(labels, alertname="ItemConcentrationSpike", head="*"), state="pending",
                 value=0.07, active_at=T(119), last_true_at=T(120)),
        ])
        note = dict(fingerprint="f" * 32, rule="AttentionEntropyCollapse", group_key="{}", transition="firing",
                    active_at=T(93), event_at=T(95), dedup_key="k", payload={}, next_attempt_at=T(96),
                    created_at=T(95), last_error=None, delivered_at=None)
        conn.execute(tables.notifications.insert(), [
            dict(note, receiver="slack", status="failed", attempts=5, last_attempt_at=T(99),
                 last_error="HTTP 500 from hooks.slack.com"),
            dict(note, receiver="pagerduty", status="delivered", attempts=1, last_attempt_at=T(95),
                 delivered_at=T(95)),
            dict(note, receiver="webhook", status="pending", attempts=2, last_attempt_at=T(97),
                 last_error="connection refused"),
        ])


def top_items_row(version: str, layer: str, end: datetime, top: list | None, **kw) -> dict:
    """An `items.top10_share` drift_results row whose detail lists the top items, as the
    evaluator's contract says: {"top": [{"item", "share", "baseline_share"}, ...]}."""
    detail = None if top is None else {"top": [
        {"item": item, "share": share, "baseline_share": base} for item, share, base in top]}
    row = dict(model=MODEL, version=version, cohort="*", layer=layer, head="*", statistic="items.top10_share",
               value=sum(t[1] for t in top or []), baseline_value=0.1, baseline_kind="previous_version",
               window_start=end - timedelta(minutes=15), window_end=end, n_current=1000, n_baseline=1000,
               detail=detail, computed_at=end)
    return row | kw


def _top_items(engine) -> None:
    """Top-items lists on the story's layer roll-ups, half a minute after its last
    window: the evaluator's windows end on whole minutes, so these never collide with
    the rows it writes (with or without a list of its own)."""
    end = T(121) + timedelta(seconds=30)
    rows = [top_items_row(v, layer, end, [(f"item-{k}", 0.3 / (k + 1), None if k == 2 else 0.02)
                                          for k in range(10)])
            for v in ("v1", "v2") for layer in ("0", "1")]
    with engine.begin() as conn:
        conn.execute(tables.drift_results.insert(), rows)


def load_story(url: str) -> None:
    """The demo story on the store at `url` (migrated, empty): 90 minutes of v1, then
    30 of a defective v2, its drift results, some rejected input, daemon state, alerts."""
    stream(url, [Segment("v1", 90), Segment("v2", 30, DEFECT)], rate=100)
    _rejections(url)
    engine = make_engine(url)
    try:
        # v2's last 12 windows against v1 (the only baseline 2 hours of traffic allow):
        # six as if v2 ran v1's weights (previous_version), six as a retrain, so that the
        # rules of both kinds have results; each window costs a second or so
        deps = tables.deployments
        with engine.begin() as conn:
            conn.execute(deps.update().values(weights_id="w1"))
        backfill(engine, T(110), T(116), TEST_EVALUATE)
        with engine.begin() as conn:
            conn.execute(deps.update().where(deps.c.version == "v2").values(weights_id="w2"))
        backfill(engine, T(116), T(122), TEST_EVALUATE)
        # and some of v1's last windows against a pinned hour, for the rules that judge
        # neither a retrain nor a same-weights deploy (AttentionEntropyDistributionShift)
        with engine.begin() as conn:
            conn.execute(tables.pinned_baselines.insert().values(
                model=MODEL, name="first-hour", version="v1", window_start=T(0), window_end=T(45),
                active=True, created_at=T(90), comment=None))
        backfill(engine, T(86), T(90), TEST_EVALUATE)
        with engine.begin() as conn:
            conn.execute(tables.daemon_state.insert().values(
                key="evaluate.watermark", value=T(120).isoformat(), updated_at=T(121)))
        _alerts(engine)
        _top_items(engine)
    finally:
        engine.dispose()


def check_every_query(url: str) -> dict[str, list[str]]:
    """Run every variable, panel and annotation query; assert each returns rows of the
    shape its panel reads. Returns {dashboard uid: [panel keys skipped]} (a table of a
    later migration missing)."""
    skipped: dict[str, list[str]] = {}
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for board in dashboards():
                values = resolve_variables(conn, board, *RANGE)
                assert all(values[v.name] for v in board.variables), (board.uid, values)
                ctx = context(board, values, *RANGE)
                for panel in board.panels:
                    if missing_tables(conn, panel.needs):
                        skipped.setdefault(board.uid, []).append(panel.key)
                        continue
                    frames = run_panel(conn, panel, ctx)
                    for query, df in zip(panel.queries, frames, strict=True):
                        problems = shape_problems(panel, query, df)
                        assert not problems, (board.uid, panel.key, problems, df.head())
                for ann in board.annotations:
                    if missing_tables(conn, ann.needs):
                        continue
                    df = fetch(conn, expand(ann.sql, ctx, conn.dialect.name))
                    assert len(df) and {"time", "text", "tags"} <= set(df.columns), (board.uid, ann.name)
    finally:
        engine.dispose()
    return skipped


@pytest.fixture(scope="module")
def story_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'store.db'}"
    migrate.upgrade(url)
    load_story(url)
    return url


def test_every_query_on_sqlite(story_url: str) -> None:
    skipped = check_every_query(story_url)
    tables_now = set(inspect(make_engine(story_url)).get_table_names())
    if "alerts" in tables_now:
        assert skipped == {}
    else:  # before migration 0003 only the alert panels wait
        assert all(k in {"firing-count", "firing-alerts", "notifications", "notification-failures"}
                   for keys in skipped.values() for k in keys)


def _values(url: str, uid: str, **overrides):
    board = next(b for b in dashboards() if b.uid == uid)
    engine = make_engine(url)
    with engine.connect() as conn:
        values = resolve_variables(conn, board, *RANGE, overrides)
        return board, values, conn, engine


def test_variables_resolve_to_the_story(story_url: str) -> None:
    board, values, conn, engine = _values(story_url, "attnmon-overview")
    assert values == {"model": MODEL, "version": ["v2", "v1"], "cohort": "*", "layer": "0", "head": "*"}
    board, values, conn, engine = _values(story_url, "attnmon-versions")
    assert values["candidate"] == "v2" and values["baseline"] == "v1"
    engine.dispose()


def test_panels_tell_the_story(story_url: str) -> None:
    """The numbers behind the panels: the collapsed head, the deploy, the rejections."""
    engine = make_engine(story_url)
    with engine.connect() as conn:
        heads = next(b for b in dashboards() if b.uid == "attnmon-heads")
        ctx = context(heads, resolve_variables(conn, heads, *RANGE), *RANGE)
        w = wide(run_panel(conn, heads.panel("head-entropy"), ctx)[0])
        before, after = w[w.index < DEPLOY], w[w.index >= DEPLOY + timedelta(minutes=1)]
        collapsed = "layer 1 · head 2"
        assert before[collapsed].mean() > 0.6 and after[collapsed].mean() < 0.3
        assert abs(after["layer 0 · head 0"].mean() - before["layer 0 · head 0"].mean()) < 0.05

        overview = next(b for b in dashboards() if b.uid == "attnmon-overview")
        ctx = context(overview, resolve_variables(conn, overview, *RANGE), *RANGE)
        traffic = wide(run_panel(conn, overview.panel("traffic"), ctx)[0])
        assert traffic["v1"].dropna().round().eq(100).all()  # rate=100 per minute
        assert traffic["v2"].dropna().index.min() == DEPLOY
        # the collapse crosses its rule's threshold in the worst v2 series
        drift = wide(run_panel(conn, overview.panel("drift-AttentionEntropyCollapse"), ctx)[0])
        assert drift["v2"].max() < -1.0

        health = next(b for b in dashboards() if b.uid == "attnmon-health")
        ctx = context(health, resolve_variables(conn, health, *RANGE), *RANGE)
        reasons = run_panel(conn, health.panel("rejected-by-reason"), ctx)[0]
        assert set(reasons["metric"]) == {"nan", "not_normalised"}
        assert reasons.groupby("metric")["rejected"].sum().to_dict() == {"nan": 12, "not_normalised": 8}
    engine.dispose()



def test_freshness_shows_how_stale_when_collectors_are_silent_past_the_range(story_url: str) -> None:
    """During an outage longer than the range, the health dashboard still lists the model
    and says how old its newest row is, rather than "No data"; in the range it is the
    same figure as before. A range ending before later rows does not see them."""
    from sqlalchemy import func, select

    health = next(b for b in dashboards() if b.uid == "attnmon-health")
    engine = make_engine(story_url)
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(tables.window_aggregates.c.bucket_start))).scalar_one()
        newest = newest.replace(tzinfo=UTC) if newest.tzinfo is None else newest
        mid = T(50) + timedelta(seconds=30)  # v1 wrote every minute: its newest row by then is T(50)
        for start, end in (RANGE, (T(600), T(660)), (T(0), mid)):
            values = resolve_variables(conn, health, start, end)
            assert values["model"] == [MODEL], (start, values)
            seconds = run_panel(conn, health.panel("freshness"), context(health, values, start, end))[0]
            expect = (end - (T(50) if end == mid else newest)).total_seconds()
            assert float(seconds["seconds"].iloc[0]) == expect, (start, end, seconds)
    engine.dispose()


def test_report_renders_the_main_panels(story_url: str, tmp_path: Path, capsys) -> None:
    from monitor.cli import main

    out = tmp_path / "report"
    assert main(["report", "--out", str(out), "--store", story_url, "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    images = [Path(p) for p in result["images"]]
    assert result["skipped"] == []
    names = {p.name for p in images}
    assert {"heads-head-entropy.png", "heads-position-bands.png", "overview-traffic.png",
            "overview-drift-AttentionEntropyCollapse.png", "versions-compare-heads.png",
            "health-rejected-by-reason.png", "items-items-top.png"} <= names
    for p in images:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000, p



def test_report_on_a_range_without_data_says_so_and_writes_nothing(story_url: str, tmp_path: Path,
                                                                  capsys) -> None:
    from monitor.cli import main

    out = tmp_path / "report"
    args = ["report", "--out", str(out), "--store", story_url]
    assert main([*args, "--from", "2020-01-01T00:00Z", "--to", "2020-01-02T00:00Z"]) == 2
    err = capsys.readouterr().err
    assert "has no data from 2020-01-01 00:00 to 2020-01-02 00:00 UTC (its data:" in err
    assert not out.exists()
    assert main([*args, "--from", "2020-01-02T00:00Z", "--to", "2020-01-01T00:00Z"]) == 2
    assert "--to='2020-01-01T00:00Z': must be after --from" in capsys.readouterr().err


# -- the position profile and the top items, value by value ------------------------------------


def check_position_profile(url: str) -> None:
    """The heatmap's cells are the bands of the sketches' own position profile; a row
    without bands (from before migration 0004) makes a gap, not a dip."""
    from monitor import Store
    from monitor.store import positions

    heads = next(b for b in dashboards() if b.uid == "attnmon-heads")
    panel = heads.panel("position-bands")
    engine = make_engine(url)
    store = Store(engine=engine)
    try:
        with engine.connect() as conn:
            values = resolve_variables(conn, heads, *RANGE, {"layer": "1"})
            ctx = context(heads, values, *RANGE)
            w = wide(run_panel(conn, panel, ctx)[0])
            assert list(w.columns) == [*positions.LABELS, positions.REST_LABEL]
            assert len(w) == 120 and ((w.sum(axis=1) - 1).abs() < 1e-9).all()  # 2 hours of minutes
            assert (w.to_numpy() > -1e-6).all()  # float32 vectors sum to 1 within ~1e-7
            # short histories (the demo's): nothing beyond 50 back
            assert (w[["50-99 back", "100-255 back", "256+ back"]].abs() < 1e-6).all().all()
            for minute in (10, 95):
                t = T(minute)
                [sk] = store.sketches(MODEL, t, t + timedelta(minutes=1), by=["layer"], layer="1").values()
                want = positions.band_matrix(sk.pos)[0] / sk.n
                np.testing.assert_allclose(w.loc[t].to_numpy()[:-1], want, rtol=1e-9, atol=1e-12)
            # rows without bands: their vectors leave the denominator too
            wa = tables.window_aggregates
            conn.rollback()  # the reads' transaction; the change below is rolled back
            conn.execute(wa.update().where(wa.c.bucket_start >= T(10), wa.c.bucket_start < T(11))
                         .values(dict.fromkeys(positions.COLUMNS)))
            gap = wide(run_panel(conn, panel, ctx)[0])
            conn.rollback()
            assert gap.loc[T(10)].isna().all() and gap.drop(index=T(10)).equals(w.drop(index=T(10)))
    finally:
        engine.dispose()


def test_position_profile_on_sqlite(story_url: str) -> None:
    check_position_profile(story_url)


def check_top_items(url: str, model: str = MODEL) -> None:
    """The latest window in range with a list, per selected version and layer."""
    from dashboards.sql import Context

    items = next(b for b in dashboards() if b.uid == "attnmon-items")
    panel = items.panel("items-top")
    t1, t2, t3 = T(60), T(61), T(62)
    quoted = "it'em \"ü\""
    rows = [
        top_items_row("v2", "0", t1, [("old", 0.5, 0.4)]),
        top_items_row("v2", "0", t2, [("a", 0.3, 0.1), (quoted, 0.2, None), ("c", 0.1, 0.1)]),
        top_items_row("v1", "0", t2, [("z", 0.25, 0.25)]),
        top_items_row("v2", "0", t3, None),  # a row without a list (JSON null): passed over
        top_items_row("v2", "0", t3 + timedelta(seconds=1), None, statistic="items.hhi"),
        top_items_row("v2", "1", t3, [("other layer", 0.9, 0.1)]),
        top_items_row("v2", "0", t3 + timedelta(seconds=2), [("other cohort", 0.9, 0.1)], cohort="web"),
    ]
    rows = [r | {"model": model} for r in rows]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(tables.drift_results.insert(), rows)
        with engine.connect() as conn:
            def run(start, end, versions, layer="0"):
                ctx = Context(start, end, {"model": model, "version": versions, "layer": layer},
                              frozenset({"version"}))
                df = run_panel(conn, panel, ctx)[0]
                assert df.empty or not shape_problems(panel, panel.queries[0], df)
                return [(r.version, int(r.rank), r.item, round(float(r.share), 6),
                         None if r.baseline_share is None or np.isnan(r.baseline_share) else r.baseline_share,
                         None if r.change is None or np.isnan(r.change) else round(float(r.change), 6))
                        for r in df.itertuples()], df

            got, df = run(T(0), T(120), ["v1", "v2"])
            assert got == [("v1", 1, "z", 0.25, 0.25, 0.0),
                           ("v2", 1, "a", 0.3, 0.1, 0.2), ("v2", 2, quoted, 0.2, None, None),
                           ("v2", 3, "c", 0.1, 0.1, 0.0)]
            assert {str(x)[:16] for x in df["window_end"]} == {str(t2.replace(tzinfo=None))[:16]}
            assert [r[2] for r in run(T(0), T(120), ["v2"])[0]] == ["a", quoted, "c"]
            assert run(T(0), t2 - timedelta(seconds=1), ["v2"])[0] == [("v2", 1, "old", 0.5, 0.4, 0.1)]
            assert [r[2] for r in run(T(0), T(120), ["v2"], layer="1")[0]] == ["other layer"]
            assert run(T(0), T(120), ["v3"])[0] == []
    finally:
        engine.dispose()


def test_top_items_on_sqlite(sqlite_url: str) -> None:
    check_top_items(sqlite_url)


def test_predictions_in_range_counts_each_version_by_its_own_layers(sqlite_url: str) -> None:
    """A retrain with another depth: v1 has 2 layers, v2 3. Every prediction writes one
    row per layer, so each version's count is its rows over its own layers; dividing
    the sum over both by every layer seen (3) lost a third of v1's predictions."""
    from collectors import AttentionCollector
    from monitor import Store

    t0 = datetime(2026, 11, 20, 8, tzinfo=UTC)
    rng = np.random.default_rng(5)
    clock = [0.0]
    for version, layers, m0, m1 in (("v1", 2, 0, 30), ("v2", 3, 30, 60)):
        clock[0] = t0.timestamp() + 60 * m0
        with AttentionCollector(sqlite_url, model="m", version=version, sample_rate=0, clock=lambda: clock[0],
                                flush_interval_s=3600) as c:
            for minute in range(m0, m1):
                clock[0] = t0.timestamp() + 60 * minute + 30
                c.observe_batch(rng.dirichlet(np.ones(6), size=(10, layers, 2)).astype(np.float32),
                                cohorts="web", timestamps=clock[0])
            clock[0] += 3600
            c.flush()
    span = (t0, t0 + timedelta(hours=1))
    board = next(b for b in dashboards() if b.uid == "attnmon-overview")
    engine = make_engine(sqlite_url)
    try:
        by_layer = Store(engine=engine).summary("m", *span, by=["version", "layer"])
        want = sum(g["n"].sum() / len(g) for _, g in by_layer.groupby("version"))
        assert want == 600  # 10 a minute for an hour
        with engine.connect() as conn:
            ctx = context(board, resolve_variables(conn, board, *span), *span)
            df = run_panel(conn, board.panel("predictions"), ctx)[0]
            assert float(df["predictions"].iloc[0]) == want
            ctx = context(board, resolve_variables(conn, board, *span, {"version": ["v1"]}), *span)
            assert float(run_panel(conn, board.panel("predictions"), ctx)[0]["predictions"].iloc[0]) == 300
    finally:
        engine.dispose()
