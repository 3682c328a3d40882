"""Compaction and roll-up on a real PostgreSQL, where two of them can run at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.test_maintenance import T0, _write_two_collectors, merge_while_another_merges


@pytest.mark.parametrize("kw", [{}, {"source_seconds": 60, "target_seconds": 3600}],
                         ids=["compaction", "roll-up"])
def test_two_merges_at_once_count_every_row_once_on_postgresql(pg_clean_url, monkeypatch, kw):
    _write_two_collectors(pg_clean_url)
    merge_while_another_merges(pg_clean_url, monkeypatch, datetime.fromtimestamp(T0 + 7200, UTC), **kw)


def test_two_maintainers_saving_the_band_cursor_at_once_both_finish(pg_clean_url):
    """`attnmon maintain` beside the daemon (or on two hosts): both save the cursor of
    fill_position_bands at the end. Deleting and inserting its row let the second fail on
    the key the first had just inserted, and skip the retention that comes after it."""
    import threading
    import time

    from sqlalchemy import event, select

    from monitor.store import make_engine, tables
    from monitor.store.maintenance import BANDS_CURSOR, fill_position_bands

    _write_two_collectors(pg_clean_url, minutes=1)
    first, second = make_engine(pg_clean_url), make_engine(pg_clean_url)
    saved = threading.Event()

    @event.listens_for(first, "after_cursor_execute")
    def hold(_conn, _cursor, statement, *_args):
        if "daemon_state" in statement and not statement.lstrip().upper().startswith("SELECT"):
            saved.set()
            time.sleep(1.5)  # the second saves its cursor meanwhile, before this commits

    errors = []

    def run():
        try:
            fill_position_bands(first)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert saved.wait(30)
        fill_position_bands(second)
    finally:
        thread.join(60)
    assert not errors
    with second.connect() as conn:
        assert len(conn.execute(select(tables.daemon_state.c.value)
                                .where(tables.daemon_state.c.key == BANDS_CURSOR)).all()) == 1


def test_a_backlog_is_purged_in_batches_on_postgresql(pg_clean_url):
    from tests.test_maintenance import test_purge_deletes_a_backlog_in_batches_each_kept

    test_purge_deletes_a_backlog_in_batches_each_kept(pg_clean_url)


def test_old_results_thin_to_windows_that_tile_on_postgresql(pg_clean_url):
    from tests.test_maintenance_thin import check_old_results_thin_to_windows_that_tile

    check_old_results_thin_to_windows_that_tile(pg_clean_url)


def test_thinning_beside_another_maintainer_leaves_no_window_behind_its_cursor(pg_clean_url):
    """`attnmon maintain` beside the daemon: a batch whose rows the other maintainer is
    deleting waits for it and comes back short. Stopping at a short batch passed the
    cursor over rows still there, never to be thinned."""
    import threading
    from datetime import timedelta

    from sqlalchemy import event, select, text

    from monitor.store import make_engine, tables
    from monitor.store.maintenance import thin_results
    from tests.test_maintenance_thin import NOW, SERIES, _write

    engine, other = make_engine(pg_clean_url), make_engine(pg_clean_url)
    _write(engine, NOW - timedelta(hours=1), 60)  # 4 series: 224 rows to delete
    dr = tables.drift_results
    holder, done = other.connect(), threading.Event()

    @event.listens_for(engine, "before_cursor_execute")
    def race(_conn, _cursor, statement, *_args):
        if done.is_set() or not statement.lstrip().upper().startswith("DELETE"):
            return
        done.set()  # the other deletes, uncommitted, 5 of the rows this first batch takes
        ids = holder.execute(select(dr.c.id).where(dr.c.window_end > NOW - timedelta(hours=1))
                             .order_by(dr.c.id).limit(5)).scalars().all()
        holder.execute(text("DELETE FROM drift_results WHERE id = ANY(:ids)"), {"ids": ids})
        threading.Timer(1.0, holder.commit).start()

    try:
        thinned = thin_results(engine, NOW, 15, batch=100)
    finally:
        event.remove(engine, "before_cursor_execute", race)
        holder.close()
    with engine.connect() as conn:
        ends = conn.execute(select(dr.c.window_end)).scalars().all()
    assert done.is_set() and thinned + 5 >= len(SERIES) * 56
    assert sorted({e.minute for e in ends}) == [0, 15, 30, 45]
    engine.dispose()
    other.dispose()


def test_results_of_shorter_windows_than_todays_keep_every_minute_on_postgresql(pg_clean_url):
    from tests.test_maintenance_thin import (
        check_results_of_shorter_windows_than_todays_keep_every_minute,
    )

    check_results_of_shorter_windows_than_todays_keep_every_minute(pg_clean_url)
