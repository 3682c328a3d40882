"""PostgreSQL's COPY paths of the evaluation cycle hold what SQLAlchemy's inserts held."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from monitor import baselines as bl
from monitor.evaluate import _STAGE_TABLE, _write_dicts, write_results
from monitor.sketch import Sketch
from monitor.store import bulk, make_engine, migrate
from monitor.store import tables as t
from monitor.topk import TopK
from tests.test_evaluate_fast import check_writes_equal_the_sqlalchemy_insert, drift_rows


@pytest.fixture
def two_schemas(pg_url):
    from tests.conftest import _pg_schema

    with _pg_schema(pg_url) as a, _pg_schema(pg_url) as b:
        for url in (a, b):
            migrate.upgrade(url)
        yield a, b


def test_writes_equal_the_sqlalchemy_insert(two_schemas, monkeypatch):
    used = []
    binary_types = bulk._binary_types
    monkeypatch.setattr(bulk, "_binary_types", lambda *a: used.append(binary_types(*a)) or used[-1])
    import monitor.evaluate as ev

    targets = []
    copy = ev.copy_rows
    monkeypatch.setattr(ev, "copy_rows", lambda conn, target, *a: targets.append(target) or copy(conn, target, *a))
    check_writes_equal_the_sqlalchemy_insert(*two_schemas)
    assert used and all(used)  # COPY (FORMAT BINARY): every timestamp has its time zone
    # a fresh window goes straight in; a window already written, or a batch the unique
    # key refuses (it repeats rows), through the staging table and ON CONFLICT
    direct, stage = "drift_results", ev._STAGE
    assert [x.split(".")[-1].strip('"') for x in targets] == [direct, stage, stage, direct, stage]


def test_naive_timestamps_go_as_text_and_mean_the_same(two_schemas):
    fast, plain = (make_engine(u) for u in two_schemas)
    try:
        rows = drift_rows(5, 20)
        for r in rows[::2]:
            r["window_start"] = r["window_start"].replace(tzinfo=None)  # read in the session's zone
        rows[3]["value"] = np.float64(0.25)
        assert bulk._binary_types(_STAGE_TABLE, ["window_start"], [[r["window_start"] for r in rows]]) is None
        assert write_results(fast, rows) == _write_dicts(plain, rows) == 20
        assert write_results(fast, rows) == 0
        from tests.test_evaluate_fast import _dump

        assert _dump(fast) == _dump(plain)
    finally:
        fast.dispose()
        plain.dispose()


def _sketches(n: int) -> dict:
    rng = np.random.default_rng(4)
    out = {}
    for i in range(n):
        s = Sketch(n=int(rng.integers(1, 10**6)), rejected=i % 3, sums=rng.normal(size=11) * 1e3,
                   sumsq=rng.random(11) * 1e6, hist=rng.integers(0, 100, (11, 20)), pos=rng.random(256))
        s.sums[i % 11] = -0.0
        keys = np.array([f"k{j}é" for j in range(30)], dtype=object)
        s.attrs = {"brand": TopK.from_counts(keys, rng.random(30), 10)}
        if i % 4 == 0:
            s.items = TopK.from_counts(keys, rng.random(30), 20)
        out[(f"c{i % 5}", str(i % 4), "*" if i % 9 == 0 else str(i))] = s
    return out


def test_stored_baselines_equal_the_sqlalchemy_insert(two_schemas):
    fast, plain = (make_engine(u) for u in two_schemas)
    start = datetime(2026, 11, 20, 8, tzinfo=UTC)
    sk = _sketches(40)
    try:
        for _ in range(2):  # the second replaces the first
            rows = bl._store(fast, "m", "v", "hour", bl._iso(start), start, start + timedelta(hours=1), sk)
        rows += bl._store(fast, "m", "v", "trailing", "empty", start, start, {})  # the "nothing" marker
        with plain.begin() as conn:
            conn.execute(t.baseline_sketches.insert(), [dict(zip(bl._STORE_COLS, r, strict=True)) for r in rows])
        q = text("SELECT model, version, cohort, layer, head, kind, ref, window_start::text, window_end::text, n, "
                 "rejected, sums::text, sumsq::text, payload, computed_at::text FROM baseline_sketches ORDER BY kind, cohort, layer, head")
        with fast.connect() as a, plain.connect() as b:
            got, want = [tuple(r) for r in a.execute(q)], [tuple(r) for r in b.execute(q)]
        assert len(got) == 41 and got == want
        loaded = bl._load(fast, "m", "v", "hour", bl._iso(start), start, start + timedelta(hours=1))
        assert sorted(loaded) == sorted(sk)
        for k, s in sk.items():
            assert loaded[k].sums.tobytes() == s.sums.tobytes()
            assert loaded[k].hist.tobytes() == s.hist.tobytes()
            assert list(loaded[k].attrs["brand"].keys) == list(s.attrs["brand"].keys)
        assert bl._load(fast, "m", "v", "trailing", "empty", start, start) == {}
    finally:
        fast.dispose()
        plain.dispose()
