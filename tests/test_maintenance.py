"""Compaction, hourly roll-up and retention keep every reader's answer the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from collectors import AttentionCollector
from monitor import Store
from monitor.store import make_engine, tables
from monitor.store.maintenance import maintain, merge_buckets, purge

T0 = 1_800_000_000.0


def _write_two_collectors(url, minutes=3, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(2):
        with AttentionCollector(url, model="m", version="v1", sample_rate=0.5,
                                clock=lambda: T0 + 7200, seed=k) as c:
            for m in range(minutes):
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


def test_purge_keeps_recent_events(sqlite_url):
    _write_two_collectors(sqlite_url, minutes=1)
    engine = make_engine(sqlite_url)
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=2)
    assert purge(engine, now, events_days=7, write_batches_days=14).events_deleted == 0
    assert purge(engine, now, events_days=1, write_batches_days=1).events_deleted > 0
