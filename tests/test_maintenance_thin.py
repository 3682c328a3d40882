"""Thinning old drift results: one window in every window length, so the kept ones tile."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from alerting import drift_row
from sqlalchemy import select

from monitor.config import Config
from monitor.daemon import maintain_store
from monitor.evaluate import write_results
from monitor.store import make_engine, tables
from monitor.store.maintenance import THINNED_KEY, as_utc, thin_results

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
SERIES = [dict(head=h, statistic=s) for h in ("1", "2") for s in ("delta.entropy_norm", "mean.top1")]


def _write(engine, first_end: datetime, minutes: int) -> None:
    write_results(engine, [drift_row(first_end + timedelta(minutes=m), float(m), **s)
                           for m in range(minutes) for s in SERIES])


def _ends(engine) -> dict[tuple, list[datetime]]:
    dr = tables.drift_results
    out = defaultdict(list)
    with engine.connect() as conn:
        for head, stat, end in conn.execute(select(dr.c.head, dr.c.statistic, dr.c.window_end)
                                            .order_by(dr.c.window_end)):
            out[head, stat].append(as_utc(end))
    return dict(out)


def _cursor(engine) -> str | None:
    ds = tables.daemon_state
    with engine.connect() as conn:
        return conn.execute(select(ds.c.value).where(ds.c.key == THINNED_KEY)).scalar()


def check_old_results_thin_to_windows_that_tile(url: str) -> None:
    engine = make_engine(url)
    old = NOW - timedelta(days=5, hours=3)  # 180 minutes, 5 days ago
    recent = NOW - timedelta(days=1)
    _write(engine, old, 180)
    _write(engine, recent, 60)
    steps = []
    deleted = thin_results(engine, NOW - timedelta(days=3), 15, batch=100, progress=lambda: steps.append(1))
    ends = _ends(engine)
    assert deleted == len(SERIES) * (180 - 12)
    assert len(steps) >= deleted // 100  # a transaction, and a step, per batch
    for key, series in ends.items():
        thinned = [e for e in series if e < recent]
        assert [e.minute % 15 for e in thinned] == [0] * 12, key
        # consecutive kept windows (15 minutes long) meet: every old minute is in one of them
        assert all(b - a == timedelta(minutes=15) for a, b in pairwise(thinned))
        assert thinned[0] == old and thinned[-1] == old + timedelta(minutes=165)
        assert [e for e in series if e >= recent] == [recent + timedelta(minutes=m) for m in range(60)]
    assert _cursor(engine) == (NOW - timedelta(days=3)).isoformat(timespec="seconds")
    assert thin_results(engine, NOW - timedelta(days=3), 15) == 0
    engine.dispose()


def test_old_results_thin_to_windows_that_tile(sqlite_url):
    check_old_results_thin_to_windows_that_tile(sqlite_url)


def test_each_call_thins_only_what_no_call_has(sqlite_url):
    engine = make_engine(sqlite_url)
    _write(engine, NOW - timedelta(hours=2), 60)
    assert thin_results(engine, NOW - timedelta(hours=1), 15) == len(SERIES) * 56
    # a result written late behind the cursor (a backfill) is not looked for again: the
    # cursor keeps each call to the new span, not the whole history
    write_results(engine, [drift_row(NOW - timedelta(minutes=119), 0.0, **s) for s in SERIES])
    _write(engine, NOW - timedelta(hours=1), 30)
    assert thin_results(engine, NOW - timedelta(minutes=30), 15) == len(SERIES) * 28
    for series in _ends(engine).values():
        assert NOW - timedelta(minutes=119) in series
        assert [e for e in series if e >= NOW - timedelta(hours=1)] == [
            NOW - timedelta(hours=1), NOW - timedelta(minutes=45)]
    engine.dispose()


def test_the_maintain_job_thins_by_the_window_length_after_the_configured_days(sqlite_url):
    engine = make_engine(sqlite_url)
    _write(engine, NOW - timedelta(days=40), 60)  # past retention: deleted, never thinned
    _write(engine, NOW - timedelta(days=2, hours=1), 60)
    _write(engine, NOW - timedelta(hours=1), 60)
    default = maintain_store(engine, Config(store_url=sqlite_url), NOW).maintenance
    assert default.results_deleted == len(SERIES) * 60 and default.results_thinned == 0  # 3 days
    cfg = Config(store_url=sqlite_url, evaluate={"window_minutes": 10},
                 retention={"drift_results_thin_after_days": 1})
    assert maintain_store(engine, cfg, NOW).maintenance.results_thinned == len(SERIES) * 54
    for series in _ends(engine).values():
        assert [e.minute for e in series if e < NOW - timedelta(days=1)] == [0, 10, 20, 30, 40, 50]
        assert len([e for e in series if e >= NOW - timedelta(days=1)]) == 60
    engine.dispose()


def test_one_minute_windows_are_not_thinned(sqlite_url):
    engine = make_engine(sqlite_url)
    _write(engine, NOW - timedelta(hours=2), 30)
    assert thin_results(engine, NOW, 1) == 0
    assert all(len(s) == 30 for s in _ends(engine).values())
    engine.dispose()


def _write_windows(engine, first_end: datetime, minutes: int, length: int) -> None:
    """Results of `length`-minute windows ending at each of `minutes` minutes."""
    rows = []
    for m in range(minutes):
        for s in SERIES:
            row = drift_row(first_end + timedelta(minutes=m), float(m), **s)
            rows.append(row | {"window_start": row["window_end"] - timedelta(minutes=length)})
    write_results(engine, rows)


def _uncovered(engine, start: datetime, end: datetime) -> dict[tuple, list[datetime]]:
    """Per series, the minutes in [start, end) that no kept result's window holds."""
    dr = tables.drift_results
    held = defaultdict(set)
    with engine.connect() as conn:
        for head, stat, w0, w1 in conn.execute(select(dr.c.head, dr.c.statistic, dr.c.window_start,
                                                      dr.c.window_end)):
            m = as_utc(w0)
            while m < as_utc(w1):
                held[head, stat].add(m)
                m += timedelta(minutes=1)
    minutes = [start + timedelta(minutes=i) for i in range(int((end - start) / timedelta(minutes=1)))]
    return {key: gone for key in held if (gone := [m for m in minutes if m not in held[key]])}


def check_results_of_shorter_windows_than_todays_keep_every_minute(url: str) -> None:
    """window_minutes raised from 15 to 30: the last days' results are of 15-minute
    windows. Keeping one in every 30 minutes of them left half of each hour in none."""
    engine = make_engine(url)
    first = NOW - timedelta(days=5)
    _write_windows(engine, first, 120, 15)
    assert thin_results(engine, NOW - timedelta(days=3), 30) == len(SERIES) * (120 - 8)
    assert _uncovered(engine, first - timedelta(minutes=15), first + timedelta(minutes=105)) == {}
    for series in _ends(engine).values():
        assert sorted({e.minute for e in series}) == [0, 15, 30, 45]
    engine.dispose()


def test_results_of_shorter_windows_than_todays_keep_every_minute(sqlite_url):
    check_results_of_shorter_windows_than_todays_keep_every_minute(sqlite_url)


def test_a_new_window_length_does_not_thin_again_behind_the_cursor(sqlite_url):
    """window_minutes lowered from 15 to 10 with the cursor at :15, not a multiple of 10:
    the first span started at :10 and took the kept :15 (its 15-minute window in no
    other kept result) though the 15-minute thinning had left it as the tile of :00-:15."""
    engine = make_engine(sqlite_url)
    first = NOW - timedelta(days=5)
    _write_windows(engine, first, 120, 15)
    thin_results(engine, first + timedelta(minutes=15), 15)
    assert _cursor(engine) == (first + timedelta(minutes=15)).isoformat(timespec="seconds")
    thin_results(engine, NOW - timedelta(days=3), 10)
    assert _uncovered(engine, first - timedelta(minutes=15), first + timedelta(minutes=105)) == {}
    for series in _ends(engine).values():
        assert first + timedelta(minutes=15) in series
    engine.dispose()
