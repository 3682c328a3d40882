"""attnmon forget-items past the happy path: a payload that cannot be read, results that
name items, raw events in chunks, a model the store does not know.

tests/postgres/test_item_hashing_pg.py runs the store tests here against PostgreSQL too
(through the `store_url` fixture)."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import event, select, update
from test_item_hashing import IDS, LONE, T0, leaks, observe

from collectors import AttentionCollector
from monitor.cli import main
from monitor.config import EvaluateConfig
from monitor.evaluate import evaluate_cycle
from monitor.sketch import decode_payload
from monitor.store import make_engine, tables
from monitor.store.forget import forget_items

NEEDLES = [*IDS, *LONE]


def forget(store_url: str, *more: str) -> tuple[int, dict | str, str]:
    """(exit status, the JSON output (its text when not JSON), stderr) of forget-items."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["forget-items", "--store", store_url, "--format", "json", *more])
    try:
        return rc, json.loads(out.getvalue()), err.getvalue()
    except json.JSONDecodeError:
        return rc, out.getvalue(), err.getvalue()


def test_a_payload_that_cannot_be_read_is_counted_and_the_rest_forgotten(store_url, caplog):
    # the first roll-up row (in id order) corrupt: before, forget-items stopped on it with a
    # traceback, every other row and every raw event keeping its ids, at every run
    with AttentionCollector(store_url, model="m", version="v1", sample_rate=1.0) as c:
        observe(c, np.random.default_rng(3))
    wa = tables.window_aggregates
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            bad = conn.execute(
                select(wa.c.id)
                .where(wa.c.cohort == "*", wa.c.head == "*")
                .order_by(wa.c.id)
                .limit(1)
            ).scalar_one()
            conn.execute(update(wa).where(wa.c.id == bad).values(payload=b"not a payload"))
    finally:
        engine.dispose()
    at = datetime.fromtimestamp(T0 + 3600, UTC).isoformat()
    rc, done, _ = forget(store_url, "--before", at)
    assert rc == 0
    assert done["unreadable"] == 1 and done["sketches"] >= 2 and done["events"] == 201
    assert f"window_aggregates rows [{bad}]: a payload cannot be read" in caplog.text
    assert leaks(store_url, NEEDLES) == set()
    assert forget(store_url, "--before", at)[1] == {"before": at, "model": None, "sketches": 0, "baselines": 0,
                                                    "results": 0, "events": 0, "unreadable": 1}
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(select(wa.c.payload).where(wa.c.id == bad)).scalar_one()
            others = conn.execute(select(wa.c.payload).where(wa.c.id != bad)).scalars().all()
    finally:
        engine.dispose()
    assert bytes(kept) == b"not a payload"  # left as it was
    assert all(decode_payload(p).items is None for p in others)
    # the text says so
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["forget-items", "--store", store_url, "--before", at]) == 0
    assert "1 sketch row whose payload cannot be read was left as it is" in out.getvalue()


def test_the_top_items_of_drift_results_are_forgotten_too(store_url):
    # items.top10_share names its ten items in its detail (the items dashboard reads it,
    # kept retention.drift_results_days): forget-items left them, raw, for 30 days
    with AttentionCollector(store_url, model="m", version="v1", sample_rate=0.0) as c:
        for minute in range(0, 130, 2):
            observe(c, np.random.default_rng(minute), minute0=minute)
    engine = make_engine(store_url)
    cfg = EvaluateConfig(window_minutes=10, lag_minutes=0, baseline_hours=1, trailing_gap_hours=0, min_samples=10)
    dr = tables.drift_results
    try:
        evaluate_cycle(engine, datetime.fromtimestamp(T0 + 60 * 130, UTC), cfg)
        with engine.connect() as conn:
            before = conn.execute(select(dr.c.id, dr.c.statistic, dr.c.value, dr.c.detail).order_by(dr.c.id)).all()
    finally:
        engine.dispose()
    assert ("drift_results", "detail") in leaks(store_url, NEEDLES)
    tops = [r.id for r in before if r.statistic == "items.top10_share"]
    assert len(tops) == 2  # one per layer
    rc, done, _ = forget(store_url, "--before", datetime.fromtimestamp(T0 + 60 * 130, UTC).isoformat())
    assert rc == 0 and done["results"] == 2
    assert leaks(store_url, NEEDLES) == set()
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            after = conn.execute(select(dr.c.id, dr.c.statistic, dr.c.value, dr.c.detail).order_by(dr.c.id)).all()
    finally:
        engine.dispose()
    # the values stay; only the item lists go (other results' detail, attribute values, stays)
    assert [(r.id, r.value) for r in after] == [(r.id, r.value) for r in before]
    assert [r.detail for r in after if r.id not in tops] == [r.detail for r in before if r.id not in tops]
    assert all(r.detail is None for r in after if r.id in tops)


def test_raw_events_are_cleared_a_chunk_a_transaction(store_url):
    # one UPDATE of a week of raw events held SQLite's write lock (collectors wait, then
    # spill) or PostgreSQL's row locks (retention waits) for as long as it took
    with AttentionCollector(store_url, model="m", version="v1", sample_rate=1.0) as c:
        observe(c, np.random.default_rng(3))
    engine = make_engine(store_url)
    touched = []

    @event.listens_for(engine, "after_cursor_execute")
    def count(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE ATTENTION_EVENTS"):
            touched.append(cursor.rowcount)

    try:
        done = forget_items(engine, datetime.fromtimestamp(T0 + 3600, UTC), clear_chunk=50)
    finally:
        engine.dispose()
    assert done.events == 201 and sum(touched) == 201
    assert touched == [50, 50, 50, 50, 1]
    assert leaks(store_url, NEEDLES) == set()


def test_a_model_the_store_does_not_know_is_an_error_not_nothing_to_forget(store_url):
    # a misspelt --model reported "removed ... 0" and exit 0: read as "nothing left"
    with AttentionCollector(store_url, model="m", version="v1", sample_rate=1.0) as c:
        observe(c, np.random.default_rng(3))
    at = datetime.fromtimestamp(T0 + 3600, UTC).isoformat()
    rc, out, err = forget(store_url, "--before", at, "--model", "M")
    assert rc == 2 and out == ""
    assert "--model='M': no such model in the store (models: m)" in err
    assert ("attention_events", "item_ids") in leaks(store_url, NEEDLES)  # nothing done
    rc, done, _ = forget(store_url, "--before", at, "--model", "m")
    assert rc == 0 and done["model"] == "m" and done["events"] == 201
    assert leaks(store_url, NEEDLES) == set()
