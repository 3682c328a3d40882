"""The dashboards across `attnmon maintain`'s hourly roll-up: the same traffic read from
minute rows and, after the roll-up, from hour rows gives the same predictions per minute
(tests/postgres/test_dashboards_rollup_pg.py runs the same check on PostgreSQL).

An hour row holds its whole hour at its first minute; a rate that divides a group's count
by the interval read it as a 12x spike at a 5-minute interval, then nothing for 55 minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import select

from collectors import AttentionCollector
from dashboards.catalog import by_uid
from dashboards.run import context, resolve_variables, run_panel, wide
from monitor.store import make_engine, tables
from monitor.store.maintenance import maintain

HOUR0 = datetime(2026, 11, 20, 8, tzinfo=UTC)  # on the hour, and on 2 hours for the 2h groups
RANGE = (HOUR0, HOUR0 + timedelta(hours=3))
# (version, first minute, last minute + 1, predictions a minute): uniform within each hour
# over the minutes with traffic, so that an even spread over them is exact; v1 is silent in
# minutes 20-29 and v2 starts at 90 (mid-hour) and stops at 170, so the masks have holes
TRAFFIC = [("v1", 0, 20, 30), ("v1", 30, 60, 30), ("v1", 60, 90, 20), ("v2", 90, 120, 25), ("v2", 120, 170, 25)]
PANELS = [("attnmon-overview", "traffic"), ("attnmon-versions", "compare-traffic")]
# ratios of sums over the same rows (means, shares) and totals: hour rows leave them as
# they were wherever a group holds whole hours
RATIOS = [("attnmon-overview", "entropy"), ("attnmon-overview", "predictions"), ("attnmon-heads", "head-entropy"),
          ("attnmon-heads", "position-bands"), ("attnmon-heads", "head-table"), ("attnmon-versions", "compare-heads")]


def write_traffic(url: str) -> dict[str, int]:
    """TRAFFIC through the collector (2 layers, 2 heads); returns the predictions per version."""
    rng = np.random.default_rng(11)
    totals: dict[str, int] = {}
    clock = [0.0]
    for version in ("v1", "v2"):
        clock[0] = HOUR0.timestamp()
        with AttentionCollector(url, model="m", version=version, sample_rate=0, clock=lambda: clock[0],
                                flush_interval_s=3600) as c:
            for v, first, stop, rate in TRAFFIC:
                if v != version:
                    continue
                for minute in range(first, stop):
                    clock[0] = HOUR0.timestamp() + 60 * minute + 30
                    w = rng.dirichlet(np.ones(6), size=(rate, 2, 2)).astype(np.float32)
                    c.observe_batch(w, cohorts="web", timestamps=clock[0])
                totals[version] = totals.get(version, 0) + rate * (stop - first)
            clock[0] += 3600
            c.flush()
    return totals


def rates(url: str, uid: str, key: str, interval: timedelta, span: tuple[datetime, datetime] = RANGE) -> pd.DataFrame:
    """The panel's first query: a time series as Grafana's series, a table as it is."""
    board = by_uid(uid)
    panel = board.panel(key)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = context(board, resolve_variables(conn, board, *span), *span, interval)
            df = run_panel(conn, panel, ctx)[0]
            return df if panel.queries[0].format == "table" else wide(df)
    finally:
        engine.dispose()


def check_rates_survive_the_rollup(url: str) -> None:
    totals = write_traffic(url)
    intervals = (timedelta(minutes=5), timedelta(hours=2))
    before = {(p, iv): rates(url, *p, iv) for p in PANELS for iv in intervals}
    ratios = {p: rates(url, *p, intervals[1]) for p in RATIOS}
    # a range that ends inside an hour (at minute 150): that hour's minutes up to its end
    part = (RANGE[0], RANGE[0] + timedelta(minutes=150))
    part_before = rates(url, *PANELS[0], intervals[0], part)
    engine = make_engine(url)
    try:
        maintain(engine, RANGE[1] + timedelta(days=4))  # every minute is past the roll-up age
        with engine.connect() as conn:
            wa = tables.window_aggregates
            assert set(conn.execute(select(wa.c.bucket_seconds).distinct()).scalars()) == {3600}
    finally:
        engine.dispose()
    for (panel, iv), was in before.items():
        now = rates(url, *panel, iv)
        assert list(now.columns) == list(was.columns) == ["v1", "v2"], panel
        pd.testing.assert_frame_equal(now, was, check_exact=False, rtol=1e-9, obj=f"{panel} at {iv}")
        # per minute: times the group's minutes, the predictions in range
        minutes = iv / timedelta(minutes=1)
        for version, total in totals.items():
            assert abs(now[version].sum() * minutes - total) < 1e-6, (panel, iv, version)
    for panel, was in ratios.items():
        assert len(was) and not was.isna().all().all(), panel
        pd.testing.assert_frame_equal(rates(url, *panel, intervals[1]), was, check_exact=False, rtol=1e-9,
                                      check_dtype=False, obj=str(panel))
    pd.testing.assert_frame_equal(rates(url, *PANELS[0], intervals[0], part), part_before, check_exact=False,
                                  rtol=1e-9)
    assert part_before.index.max() == part[1]
    # the minute rows' rates, as TRAFFIC has them: nothing from a group without traffic
    five = rates(url, *PANELS[0], timedelta(minutes=5))
    t = lambda m: HOUR0 + timedelta(minutes=m)  # noqa: E731
    assert five.loc[t(0), "v1"] == 30 and five.loc[t(60), "v1"] == 20 and t(20) not in five.index
    assert np.isnan(five.loc[t(60), "v2"]) and five.loc[t(90), "v2"] == 25 and five.index.max() == t(165)


def test_rates_survive_the_rollup_on_sqlite(sqlite_url: str) -> None:
    check_rates_survive_the_rollup(sqlite_url)


def test_the_report_s_default_range_ends_at_the_last_served_minute_after_the_rollup(sqlite_url: str) -> None:
    # `attnmon report` without --to: it ended at the last hour row's first minute, and
    # cut off the whole last hour once it was rolled up (v2's last 50 minutes here)
    from dashboards.report import data_range

    write_traffic(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            before = data_range(conn, "m")
        maintain(engine, RANGE[1] + timedelta(days=4))
        with engine.connect() as conn:
            after = data_range(conn, "m")
    finally:
        engine.dispose()
    assert before == after == (HOUR0, HOUR0 + timedelta(minutes=170))
