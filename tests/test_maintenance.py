"""Compaction, hourly roll-up and retention keep every reader's answer the same."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import and_, delete, func, select, update

from collectors import AttentionCollector
from monitor import Store
from monitor.sketch import Sketch
from monitor.store import maintenance, make_engine, positions, tables
from monitor.store.maintenance import (
    BANDS_CURSOR,
    fill_position_bands,
    maintain,
    merge_buckets,
    minute_mask,
    purge,
    served_minutes,
)

T0 = 1_800_000_000.0


def _write_two_collectors(url, minutes=3, seed=0, first=0):
    """Two collectors each write the minutes first, first + 1, ... of T0's hour."""
    rng = np.random.default_rng(seed)
    for k in range(2):
        with AttentionCollector(url, model="m", version="v1", sample_rate=0.5,
                                clock=lambda: T0 + 7200, seed=k) as c:
            for m in range(first, first + minutes):
                w = rng.dirichlet(np.ones(12), size=(40, 2)).astype(np.float32)
                c.observe_batch(w, item_ids=rng.integers(0, 30, (40, 12)),
                                cohorts=rng.choice(["a", "b"], 40).tolist(),
                                attributes={"brand": rng.choice(["x", "y"], (40, 12))},
                                timestamps=T0 + 60 * m + 5)


def _rows(url):
    engine = make_engine(url)
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(tables.window_aggregates)).scalar_one()


def test_compaction_merges_rows_exactly(sqlite_url):
    _write_two_collectors(sqlite_url)
    store = Store(sqlite_url)
    before = store.summary("m", by=["version", "cohort", "layer", "head"])
    sk_before = store.sketches("m")
    n_before = _rows(sqlite_url)
    res = merge_buckets(store.engine, datetime.fromtimestamp(T0 + 7200, UTC))
    assert res.merged_groups == n_before // 2 and _rows(sqlite_url) == n_before // 2
    after = store.summary("m", by=["version", "cohort", "layer", "head"])
    pd.testing.assert_frame_equal(before, after, rtol=1e-12)
    sk_after = store.sketches("m")
    for key, s in sk_before.items():
        np.testing.assert_array_equal(s.hist, sk_after[key].hist)
        np.testing.assert_allclose(s.pos, sk_after[key].pos, rtol=1e-12)
    # compaction is idempotent: nothing left to merge
    assert merge_buckets(store.engine, datetime.fromtimestamp(T0 + 7200, UTC)).merged_groups == 0



def _total_n(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.sum(tables.window_aggregates.c.n))).scalar_one()


def merge_while_another_merges(url, monkeypatch, before, **kw) -> None:
    """Run merge_buckets in a thread that stops after reading its first group's rows,
    run a second one to the end meanwhile, then let the first go on: what two `attnmon
    maintain` runs, or a daemon that lost its lead and its successor, can do."""
    engine = make_engine(url)
    n_before = _total_n(engine)
    read, other_done = threading.Event(), threading.Event()
    real = Sketch.from_row

    def from_row(row):
        if threading.current_thread().name == "first" and not read.is_set():
            read.set()
            other_done.wait(30)
        return real(row)

    monkeypatch.setattr(maintenance.Sketch, "from_row", staticmethod(from_row))
    results, errors = [], []

    def first():
        try:
            results.append(merge_buckets(engine, before, **kw))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=first, name="first")
    thread.start()
    try:
        assert read.wait(30)
        second = merge_buckets(make_engine(url), before, **kw)
    finally:
        other_done.set()
        thread.join(60)
    assert not errors and not thread.is_alive()
    # every row is counted once: before the fix the first run inserted its merge of rows
    # the second had already merged and deleted
    assert _total_n(engine) == n_before
    assert second.merged_groups > 0 and results[0].merged_groups == 0
    # nothing is left to merge
    assert merge_buckets(engine, before, **kw).merged_groups == 0
    # the merged rows hold minutes 0-2 (_write_two_collectors): a minute row's NULL is its minute
    assert _masks(engine) == ({3600: {0b111}} if kw.get("target_seconds") == 3600 else {60: {None}})


def _masks(engine) -> dict[int, set]:
    """The minute_mask values of the rows, by bucket width."""
    wa = tables.window_aggregates
    out: dict[int, set] = {}
    with engine.connect() as conn:
        for seconds, mask in conn.execute(select(wa.c.bucket_seconds, wa.c.minute_mask).distinct()):
            out.setdefault(seconds, set()).add(mask)
    return out


@pytest.mark.parametrize("kw", [{}, {"source_seconds": 60, "target_seconds": 3600}],
                         ids=["compaction", "roll-up"])
def test_two_merges_at_once_count_every_row_once(sqlite_url, monkeypatch, kw):
    _write_two_collectors(sqlite_url)
    merge_while_another_merges(sqlite_url, monkeypatch, datetime.fromtimestamp(T0 + 7200, UTC), **kw)


def test_hourly_rollup_and_retention(sqlite_url):
    _write_two_collectors(sqlite_url, minutes=5)
    store = Store(sqlite_url)
    before = store.summary("m", by=["cohort", "layer", "head"])
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=3, hours=2)
    res = maintain(store.engine, now, events_days=1, minute_aggregates_days=3)
    engine = store.engine
    with engine.connect() as conn:
        secs = conn.execute(select(tables.window_aggregates.c.bucket_seconds).distinct()).scalars().all()
        events = conn.execute(select(func.count()).select_from(tables.attention_events)).scalar_one()
    assert secs == [3600]
    assert events == 0 and res.events_deleted > 0
    after = store.summary("m", by=["cohort", "layer", "head"])
    pd.testing.assert_frame_equal(before, after, rtol=1e-12)
    # a later roll-up of the same hour merges into the existing hour row
    _write_two_collectors(sqlite_url, minutes=1, seed=5)
    maintain(store.engine, now, events_days=1, minute_aggregates_days=3)
    assert store.summary("m", by=["layer"])["n"].tolist() == [2 * 40 * 6]
    with engine.connect() as conn:
        hours = conn.execute(
            select(func.count()).select_from(tables.window_aggregates)
            .where(tables.window_aggregates.c.cohort == "*", tables.window_aggregates.c.head == "*")
        ).scalar_one()
    assert hours == 1  # one layer, one hour: one roll-up row


def test_the_rollup_records_the_minutes_of_its_hour_that_had_rows(sqlite_url):
    """rollback-check counts an hour row as the minutes it records (minute_mask): several
    collectors' rows of one minute are one minute, and late minute rows rolled into an
    existing hour row add the minutes it did not hold yet."""
    engine = make_engine(sqlite_url)
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=4)
    _write_two_collectors(sqlite_url, minutes=3, first=10)
    merge_buckets(engine, now)  # compaction: still minute rows, each its one minute
    assert _masks(engine) == {60: {None}}
    maintain(engine, now, minute_aggregates_days=3)
    assert _masks(engine) == {3600: {0b111 << 10}}
    # late rows: minute 11 again (another collector's spill, replayed) and minutes 40-41
    _write_two_collectors(sqlite_url, minutes=1, first=11, seed=1)
    _write_two_collectors(sqlite_url, minutes=2, first=40, seed=2)
    maintain(engine, now, minute_aggregates_days=3)
    (mask,) = _masks(engine)[3600]
    assert served_minutes(datetime.fromtimestamp(T0, UTC), 3600, mask) == [
        int(T0) // 60 + m for m in (10, 11, 12, 40, 41)]
    assert Store(engine=engine).summary("m", by=["layer"])["n"].tolist() == [2 * 40 * 6]
    # an hour rolled up before migration 0006 (NULL: all 60 minutes, as it was counted
    # then) stays whole when late minutes join it
    with engine.begin() as conn:
        conn.execute(update(tables.window_aggregates).values(minute_mask=None))
    _write_two_collectors(sqlite_url, minutes=1, first=50, seed=3)
    maintain(engine, now, minute_aggregates_days=3)
    assert _masks(engine) == {3600: {None}}
    # and a full hour of minutes is NULL too: every minute of its bucket
    hour = datetime.fromtimestamp(T0, UTC)
    assert minute_mask([{"bucket_start": hour + timedelta(minutes=m), "bucket_seconds": 60, "minute_mask": None}
                        for m in range(60)], hour, 3600) is None


def test_purge_keeps_recent_events(sqlite_url):
    _write_two_collectors(sqlite_url, minutes=1)
    engine = make_engine(sqlite_url)
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=2)
    assert purge(engine, now, events_days=7, write_batches_days=14).events_deleted == 0
    assert purge(engine, now, events_days=1, write_batches_days=1).events_deleted > 0



def test_maintain_drops_collector_health_past_its_retention(sqlite_url):
    """collector_health grows a row per collector and minute (52M a year at 100
    collectors): maintenance drops minutes older than retention.collector_health_days,
    and keeps the rest."""
    from monitor.config import Config
    from monitor.daemon import maintain_store

    rng = np.random.default_rng(4)
    for minute_ts in (T0, T0 + 86400 * 10):  # day 0 and day 10
        with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0,
                                clock=lambda ts=minute_ts: ts + 3600) as c:
            c.observe_batch(rng.dirichlet(np.ones(8), size=5).astype(np.float32), timestamps=minute_ts)
    engine = make_engine(sqlite_url)
    ch = tables.collector_health
    day5 = datetime.fromtimestamp(T0 + 86400 * 5, UTC)

    def minutes() -> list[datetime]:
        with engine.connect() as conn:
            return sorted(maintenance.as_utc(m) for m in conn.execute(select(ch.c.minute)).scalars())

    before = minutes()
    old = [m for m in before if m < day5]
    assert old and len(old) < len(before)
    now = datetime.fromtimestamp(T0 + 86400 * 12, UTC)  # day 0 is 12 days old, day 10 is 2
    assert maintain_store(engine, Config(store_url=sqlite_url), now).maintenance.health_deleted == 0  # 30 days
    assert minutes() == before
    week = Config(store_url=sqlite_url, retention={"collector_health_days": 7})
    assert maintain_store(engine, week, now).maintenance.health_deleted == len(old)
    assert minutes() == [m for m in before if m >= day5]
    engine.dispose()


def test_purge_drops_drift_results_past_their_retention(sqlite_url):
    from alerting import drift_row

    from monitor.evaluate import write_results

    engine = make_engine(sqlite_url)
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=40)
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    write_results(engine, [drift_row(old, 1.0, head=str(h)) for h in range(3)]
                  + [drift_row(recent, 1.0, head=str(h)) for h in range(2)])
    assert purge(engine, now, events_days=7, write_batches_days=14).results_deleted == 0  # not asked
    res = maintain(engine, now, drift_results_days=30)
    assert res.results_deleted == 3
    with engine.connect() as conn:
        left = conn.execute(select(tables.drift_results.c.window_end)).scalars().all()
    assert len(left) == 2


def _bands(url, **where):
    wa = tables.window_aggregates
    engine = make_engine(url)
    with engine.connect() as conn:
        q = select(wa.c.model, wa.c.version, wa.c.cohort, wa.c.layer, wa.c.head,
                   func.sum(wa.c.n), *[func.sum(wa.c[c]) for c in positions.COLUMNS],
                   func.count(wa.c[positions.COLUMNS[0]]), func.count())
        rows = conn.execute(q.group_by(wa.c.model, wa.c.version, wa.c.cohort, wa.c.layer, wa.c.head)).all()
    engine.dispose()
    return {tuple(r[:5]): np.array(r[5:], dtype=float) for r in rows}


def test_merged_rows_carry_the_sum_of_their_position_bands(sqlite_url):
    _write_two_collectors(sqlite_url, minutes=5)
    before = _bands(sqlite_url)
    engine = make_engine(sqlite_url)
    merge_buckets(engine, datetime.fromtimestamp(T0 + 7200, UTC))  # compaction
    compacted = _bands(sqlite_url)
    maintain(engine, datetime.fromtimestamp(T0, UTC) + timedelta(days=4), minute_aggregates_days=3)
    rolled = _bands(sqlite_url)
    assert before.keys() == compacted.keys() == rolled.keys()
    for key, b in before.items():
        # n, the band sums, then rows with bands == rows: no NULL anywhere
        for after in (compacted[key], rolled[key]):
            np.testing.assert_allclose(after[:-2], b[:-2], rtol=1e-12)
            assert after[-2] == after[-1]
    engine.dispose()


def _null_bands(engine, *where) -> list[int]:
    """Make rows look written before migration 0004 (or by an older collector); their ids."""
    wa = tables.window_aggregates
    with engine.begin() as conn:
        conn.execute(update(wa).where(*where).values(dict.fromkeys(positions.COLUMNS)))
        return conn.execute(select(wa.c.id).where(*where).order_by(wa.c.id.desc())).scalars().all()


def _filled(engine) -> list[int]:
    wa = tables.window_aggregates
    with engine.connect() as conn:
        q = select(wa.c.id).where(wa.c.pos_0.is_not(None)).order_by(wa.c.id.desc())
        return conn.execute(q).scalars().all()


def test_fill_position_bands_reads_history_newest_first_then_new_rows(sqlite_url, caplog):
    _write_two_collectors(sqlite_url, minutes=2)
    expected = _bands(sqlite_url)
    wa = tables.window_aggregates
    engine = make_engine(sqlite_url)
    ids = _null_bands(engine)  # history that migration 0004 did not reach
    with engine.begin() as conn:  # a payload that cannot be read stays NULL, logged
        good = conn.execute(select(wa.c.payload).where(wa.c.id == ids[1])).scalar_one()
        conn.execute(update(wa).where(wa.c.id == ids[1]).values(payload=b"garbage"))
    assert fill_position_bands(engine, limit=3, span=2) == 3
    assert _filled(engine) == [ids[0], *ids[2:4]]  # newest first
    assert "stay NULL" in caplog.text
    assert fill_position_bands(engine, limit=100, scan=4, span=2) == 4  # at most `scan` ids read
    assert _filled(engine) == [ids[0], *ids[2:8]]
    # the maintain job goes on where the last call stopped (nothing to merge: minutes open)
    res = maintain(engine, datetime.fromtimestamp(T0, UTC), closed_after_s=10**9)
    assert (res.bands_filled, res.merged_groups) == (len(ids) - 8, 0)
    assert _filled(engine) == [ids[0], *ids[2:]]
    # ids are read once: a row already passed is not read again (nor a bad payload retried)
    with engine.begin() as conn:
        conn.execute(update(wa).where(wa.c.id == ids[1]).values(payload=good))
    assert fill_position_bands(engine) == 0
    with engine.connect() as conn:
        cursor = conn.execute(select(tables.daemon_state.c.value).where(
            tables.daemon_state.c.key == BANDS_CURSOR)).scalar_one()
    assert json.loads(cursor) == {"above": ids[0], "below": ids[-1]}

    # rows an older collector writes after the upgrade (no bands): the next call reads them
    _write_two_collectors(sqlite_url, minutes=1, seed=9)
    new = _null_bands(engine, wa.c.id > ids[0])
    assert new and fill_position_bands(engine) == len(new)
    assert set(new) <= set(_filled(engine))
    assert fill_position_bands(engine) == 0
    with engine.begin() as conn:  # the unread row aside, every band as written
        conn.execute(update(wa).where(wa.c.id == ids[1]).values(positions.band_sums(
            Sketch.from_row(conn.execute(select(wa).where(wa.c.id == ids[1])).mappings().one()).pos)))
        conn.execute(delete(wa).where(wa.c.id.in_(new)))
    got = _bands(sqlite_url)
    assert got.keys() == expected.keys()
    for key, b in expected.items():
        np.testing.assert_allclose(got[key], b, rtol=1e-12)
    engine.dispose()


def test_a_payload_that_cannot_be_read_holds_up_neither_the_other_merges_nor_retention(sqlite_url, caplog):
    """One unreadable row (fill_position_bands expects them too) must not stop every later
    maintain run: raw events would outlive their retention, and nothing would be merged."""
    _write_two_collectors(sqlite_url, minutes=3)
    engine = make_engine(sqlite_url)
    wa = tables.window_aggregates
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=8)
    with engine.begin() as conn:
        bad = conn.execute(select(wa.c.id, *[wa.c[c] for c in maintenance.SERIES], wa.c.bucket_start)
                           .order_by(wa.c.id)).first()
        conn.execute(update(wa).where(wa.c.id == bad.id).values(payload=b"garbage"))
    n_before = _total_n(engine)
    res = maintain(engine, now, events_days=7)
    assert res.events_deleted > 0 and "cannot be read" in caplog.text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.attention_events)).scalar_one() == 0
        # the bad row's group is left as it was, every other group is an hour row
        left = conn.execute(select(wa.c.id, wa.c.bucket_seconds)
                            .where(*[wa.c[c] == bad._mapping[c] for c in maintenance.SERIES])).all()
        assert bad.id in {r.id for r in left} and all(r.bucket_seconds == 60 for r in left)
        others = conn.execute(select(wa.c.bucket_seconds).distinct().where(
            ~and_(*[wa.c[c] == bad._mapping[c] for c in maintenance.SERIES]))).scalars().all()
    assert others == [3600]
    assert _total_n(engine) == n_before


def _minute_rows(engine, series: int, minutes: int) -> int:
    """Two rows of one vector for each of `series` series and `minutes` minutes from T0."""
    from monitor.store.writer import insert_rows

    start = datetime.fromtimestamp(T0, UTC)
    row = Sketch().to_row() | dict(model="m", version="v1", layer="0", head="*", bucket_seconds=60,
                                   written_at=start, n=1)
    rows = [dict(row, cohort=f"c{s}", bucket_start=start + timedelta(minutes=m))
            for s in range(series) for m in range(minutes) for _ in range(2)]
    with engine.begin() as conn:
        insert_rows(conn, tables.window_aggregates, rows)
    return len(rows)


@pytest.mark.parametrize("kw", [{}, {"source_seconds": 60, "target_seconds": 3600}],
                         ids=["compaction", "roll-up"])
def test_a_long_backlog_is_merged_an_hour_of_keys_at_a_time(sqlite_url, monkeypatch, kw):
    """A store with days of minutes to merge (maintenance failing for a while, or
    minute_aggregates_days lowered) must not have every key read into memory at once: at
    a thousand series that is gigabytes, and the daemon that runs the job is killed."""
    import tracemalloc

    engine = make_engine(sqlite_url)
    before = datetime.fromtimestamp(T0, UTC) + timedelta(days=2)
    _minute_rows(engine, 10, 24 * 60)
    offered = []  # groups per call (not the groups: keeping them would be what is measured)
    monkeypatch.setattr(maintenance, "_merge_chunk", lambda _e, part, *_a: (offered.append(len(part)), (0, 0))[1])
    tracemalloc.start()
    try:
        merge_buckets(engine, before, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # every key at once: 6-9 MB
    assert sum(offered) == (10 * 24 if kw else 10 * 24 * 60)
    # and merged for real, slice by slice, every row is counted once
    monkeypatch.undo()
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(delete(tables.window_aggregates))
    n = _minute_rows(engine, 2, 150)  # three hours, the last one partly
    merge_buckets(engine, before, **kw)
    assert _total_n(engine) == n
    assert _rows(sqlite_url) == (2 * 3 if kw else 2 * 150)


def test_a_rollup_transaction_holds_a_bounded_number_of_rows(sqlite_url):
    """On SQLite a merge's transaction holds the store's one write lock: a chunk of 500
    hours of minutes (seconds to tens of seconds of decoding) made collectors' writes
    time out and spill, and the daemon's own writes fail as 'database is locked'."""
    from sqlalchemy import event

    engine = make_engine(sqlite_url)
    n = _minute_rows(engine, 10, 180)  # 30 series-hours, 3,600 rows
    deleted, per_transaction = [0], []

    @event.listens_for(engine, "after_cursor_execute")
    def count(_conn, cursor, statement, *_args):
        if statement.lstrip().upper().startswith("DELETE"):
            deleted[0] += cursor.rowcount

    @event.listens_for(engine, "commit")
    def commit(_conn):
        per_transaction.append(deleted[0])
        deleted[0] = 0

    before = datetime.fromtimestamp(T0, UTC) + timedelta(days=2)
    merge_buckets(engine, before, source_seconds=60, target_seconds=3600, chunk=100)
    assert sum(per_transaction) == n and _rows(sqlite_url) == 30
    assert max(per_transaction) <= 2 * 100  # the chunk's minutes, two rows each (not compacted)
    assert _total_n(engine) == n


def test_purge_deletes_a_backlog_in_batches_each_kept(sqlite_url):
    """A backlog (retention lowered, maintenance missed for a week) goes `batch` rows a
    transaction: one statement over all of it could pass statement_timeout_s and fail at
    every retry. A batch that fails keeps the ones before it deleted."""
    _write_two_collectors(sqlite_url, minutes=3)  # sampled events and batch keys of T0's hour
    engine = make_engine(sqlite_url)
    ae, wb = tables.attention_events, tables.write_batches

    def count(table) -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar()

    events, batches = count(ae), count(wb)
    assert events > 30 and batches >= 2
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=30)
    steps = []

    def fail_at_the_third() -> None:
        steps.append(count(ae))
        if len(steps) == 3:
            raise RuntimeError("the store went away")

    with pytest.raises(RuntimeError):
        purge(engine, now, events_days=7, write_batches_days=14, batch=10, progress=fail_at_the_third)
    assert steps == [events - 10, events - 20, events - 30] and count(ae) == events - 30  # kept
    done = purge(engine, now, events_days=7, write_batches_days=14, batch=1)
    assert (done.events_deleted, done.batches_deleted) == (events - 30, batches)
    assert count(ae) == count(wb) == 0
