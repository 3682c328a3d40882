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
from sqlalchemy import select, update
from test_item_hashing import IDS, LONE, T0, leaks, observe

from collectors import AttentionCollector
from monitor.cli import main
from monitor.sketch import decode_payload
from monitor.store import make_engine, tables

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
    assert forget(store_url, "--before", at)[1] == {
        "before": at,
        "model": None,
        "sketches": 0,
        "baselines": 0,
        "events": 0,
        "unreadable": 1,
    }
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
