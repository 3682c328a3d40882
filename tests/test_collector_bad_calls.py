"""Serving calls the collector cannot read never raise into the serving thread (DESIGN §3):
the call's requests are rejected, counted by reason, and nothing else is lost."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import select

from collectors import AttentionCollector, InvalidAttention, ProcessCollector
from monitor import Store
from monitor.store import make_engine, tables

T0 = 1_800_000_000.0  # a minute boundary
GOOD = np.full(4, 0.25, np.float32)
BATCH = np.full((3, 2, 4), 0.25, np.float32)


class NoStr:
    def __str__(self):
        raise RuntimeError("no str for you")


def clock():
    return T0 + 3600


def health_reasons(url) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(tables.collector_health.c.rejected_by_reason)).scalars().all()
    finally:
        engine.dispose()
    out: dict[str, int] = {}
    for r in rows:
        for k, v in r.items():
            out[k] = out.get(k, 0) + v
    return out


def stored_cohorts(url) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(tables.window_aggregates.c.cohort).distinct()).scalars())
    finally:
        engine.dispose()


def stored_n(url) -> int:
    with Store(url) as store:
        df = store.summary("m", by=["layer"])
    return int(df["n"].sum()) if len(df) else 0


ONE = {
    "naive datetime": (dict(timestamp=datetime(2027, 1, 1)), "bad_timestamp"),
    "text timestamp": (dict(timestamp="yesterday"), "bad_timestamp"),
    "NaN timestamp": (dict(timestamp=float("nan")), "bad_timestamp"),
    "milliseconds": (dict(timestamp=T0 * 1000), "bad_timestamp"),
    "before 1970": (dict(timestamp=-60.0), "bad_timestamp"),
    "ragged weights": (dict(weights=[[0.5, 0.5], [1.0]]), "shape"),
    "attributes not a mapping": (dict(attributes=["brand"]), "bad_value"),
    "item id with no str": (dict(item_ids=[NoStr()] * 4), "bad_value"),
    "cohort with no str": (dict(cohort=NoStr()), "bad_label"),
}


@pytest.mark.parametrize("case", ONE)
def test_an_unreadable_observe_is_rejected_not_raised(sqlite_url, case):
    call, reason = ONE[case]
    args = dict(weights=GOOD, timestamp=T0) | call
    c = AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=1.0, clock=clock)
    c._start = lambda: None  # both calls wait in the queue: one drain takes them together
    c.observe(GOOD, timestamp=T0)
    c.observe(args.pop("weights"), **args)  # must not raise
    c.observe(GOOD, timestamp=T0)
    del c._start
    c.close()
    assert c.stats.rejected == {reason: 1}
    assert c.stats.accepted == 2 and c.stats.observed == 3
    assert stored_n(sqlite_url) == 2
    assert health_reasons(sqlite_url) == {reason: 1}


BATCHES = {
    "naive datetimes": (dict(timestamps=[datetime(2027, 1, 1)] * 3), "bad_timestamp"),
    "datetime64 (no zone)": (dict(timestamps=np.array([int(T0)] * 3, dtype="datetime64[s]")), "bad_timestamp"),
    "NaN timestamps": (dict(timestamps=np.array([T0, np.nan, T0])), "bad_timestamp"),
    "ragged weights": (dict(weights=[[[0.5, 0.5]], [[1.0]], [[1.0]]]), "shape"),
    "cohorts not a sequence": (dict(cohorts=5), "bad_label"),
    "request ids not a sequence": (dict(request_ids=5), "bad_value"),
    "attributes not a mapping": (dict(attributes=[("brand", np.zeros((3, 4)))]), "bad_value"),
}


@pytest.mark.parametrize("case", BATCHES)
def test_an_unreadable_batch_is_rejected_not_raised(sqlite_url, case):
    call, reason = BATCHES[case]
    args = dict(weights=BATCH, timestamps=T0) | call
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=clock) as c:
        c.observe_batch(BATCH, timestamps=T0)
        c.observe_batch(args.pop("weights"), **args)  # must not raise
        c.flush()
        stats = c.stats
    rejected = 1 if case == "NaN timestamps" else 3  # (one row's time, or the whole call)
    assert stats.rejected == {reason: rejected}
    assert stats.accepted == 6 - rejected
    assert stored_n(sqlite_url) == 6 - rejected


def test_one_aware_datetime_or_an_array_times_a_batch(sqlite_url):
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=clock) as c:
        c.observe_batch(BATCH, timestamps=datetime.fromtimestamp(T0 + 61, tz=UTC))
        c.observe_batch(BATCH, timestamps=np.array([T0 + 121] * 3, dtype=np.int64))
        c.flush()
        assert c.stats.accepted == 6 and not c.stats.rejected
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            minutes = conn.execute(select(tables.window_aggregates.c.bucket_start).distinct()).scalars().all()
    finally:
        engine.dispose()
    assert sorted(m.replace(tzinfo=UTC).timestamp() for m in minutes) == [T0 + 60, T0 + 120]


def test_strict_raises_naming_the_argument(sqlite_url):
    with AttentionCollector(sqlite_url, model="m", version="v1", strict=True, clock=clock) as c:
        with pytest.raises(InvalidAttention, match=r"\(bad_timestamp\).*timestamp.*timezone-aware") as err:
            c.observe(GOOD, timestamp=datetime(2027, 1, 1))
        assert err.value.reason == "bad_timestamp"
        with pytest.raises(InvalidAttention, match=r"\(bad_value\).*attributes: .*mapping"):
            c.observe_batch(BATCH, attributes=["brand"], timestamps=T0)
        c.flush()
        assert c.stats.rejected == {"bad_timestamp": 1, "bad_value": 3}


def test_a_rejected_cohort_that_is_no_label_writes_no_series(sqlite_url):
    # the rejection of a request counts on its cohort's series, unless the cohort is the
    # reason: a cohort Grafana would read as a macro must not reach window_aggregates
    w = np.full((4, 4), 0.25, np.float32)
    w[3, 0] = np.nan  # rejected as nan, on a good cohort: that one counts on its series
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=clock) as c:
        c.observe_batch(w, cohorts=["web", "$__timeFrom(", "c" * 300, "app"], timestamps=T0)
        c.flush()
        assert c.stats.rejected == {"bad_label": 2, "nan": 1}
    assert stored_cohorts(sqlite_url) == {"web", "app", "*"}
    with Store(sqlite_url) as store:
        (app,) = store.sketches("m", by=["cohort", "head"], cohort="app", head="*").values()
    assert app.rejected == 1 and app.n == 0


def test_process_collector_rejects_unreadable_calls_in_the_worker(sqlite_url):
    # (no test clock: the worker could not import this module to unpickle it)
    with ProcessCollector(sqlite_url, model="m", version="v1") as c:
        c.observe(GOOD)
        c.observe([[0.5, 0.5], [1.0]])
        c.observe(GOOD, timestamp=datetime(2027, 1, 1))
        c.observe_batch(BATCH, cohorts=5)
        assert c.flush(timeout=60)
        stats = c.stats
    assert stats.rejected == {"shape": 1, "bad_timestamp": 1, "bad_label": 3}
    assert stats.accepted == 1
    assert health_reasons(sqlite_url) == {"shape": 1, "bad_timestamp": 1, "bad_label": 3}


def stored_request_ids(url) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(select(tables.attention_events.c.request_id)).scalars(),
                          key=lambda x: (x is None, x))
    finally:
        engine.dispose()


def test_request_ids_the_store_cannot_bind_do_not_block_the_writes(sqlite_url, tmp_path):
    # request ids from a numpy array (np.int64), a uuid.UUID, an object: a sampled row's
    # id went to the store as it was, which SQLite (and psycopg, numpy's) cannot bind and
    # a spill file cannot hold. The batch then failed at every flush, first in line, and
    # nothing after it was ever written. Ids are stored as their text; one that has none
    # that fits the column (or no str at all) is stored as NULL.
    import uuid

    uid = uuid.UUID(int=7)
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=1.0, clock=clock,
                            spill_dir=tmp_path / "spill") as c:
        c.observe_batch(BATCH, request_ids=np.array([1, 2, 3], dtype=np.int64), timestamps=T0)
        c.observe(GOOD, request_id=uid, timestamp=T0)
        c.observe(GOOD, request_id=NoStr(), timestamp=T0)
        c.observe(GOOD, request_id="r" * 300, timestamp=T0)
        assert c.flush(timeout=20)
        c.observe(GOOD, request_id="after", timestamp=T0 + 60)
        assert c.flush(timeout=20)
        assert c.stats.written == 7 and c.stats.spilled == 0 and c.stats.accepted == 7
    assert stored_n(sqlite_url) == 7
    assert stored_request_ids(sqlite_url) == sorted(["1", "2", "3", str(uid), "after"]) + [None, None]
