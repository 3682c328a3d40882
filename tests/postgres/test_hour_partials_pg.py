"""Baselines on PostgreSQL: two builders storing the same hour partial or baseline at
once (a daemon taking over while the one before finishes its cycle, `attnmon evaluate`
beside the daemon)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from monitor import baselines as bl
from monitor.stacked import Stacked
from monitor.stacked_payload import HOUR_STACK
from monitor.store import make_engine
from monitor.store import tables as t
from tests.test_evaluate_fast import _sketch

HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)
PARTIAL = Stacked.of({("*", "0", "*"): _sketch(np.random.default_rng(3), 40),
                      ("c", "0", "1"): _sketch(np.random.default_rng(4), 30, items=False)})
STORES = {
    HOUR_STACK: lambda e: bl._store_hour(e, "m", "v1", HOUR, PARTIAL),
    "trailing": lambda e: bl._store(e, "m", "v1", "trailing", "trailing@x", HOUR, HOUR + timedelta(hours=1),
                                    PARTIAL.sketches()),
}


@pytest.mark.parametrize("kind", list(STORES))
def test_two_builders_storing_the_same_rows_at_once_both_succeed(pg_clean_url, monkeypatch, kind):
    engine = make_engine(pg_clean_url)
    inserted, release = threading.Event(), threading.Event()
    insert = bl.bulk_insert

    def held(conn, *args):  # the first builder's rows are in, not yet committed
        insert(conn, *args)
        if threading.current_thread().name == "first":
            inserted.set()
            release.wait(30)

    monkeypatch.setattr(bl, "bulk_insert", held)
    errors = []

    def store():
        try:
            STORES[kind](engine)
        except Exception as exc:  # noqa: BLE001 - what the test reports
            errors.append(exc)

    first = threading.Thread(target=store, name="first")
    first.start()
    assert inserted.wait(30)
    second = threading.Thread(target=store, name="second")
    second.start()
    second.join(1)  # (it waits on the first one's rows: the unique key)
    release.set()
    first.join(30)
    second.join(30)
    assert not errors  # the unique key refused the second's rows: it failed
    bs = t.baseline_sketches
    with engine.connect() as conn:
        n = conn.execute(select(bs.c.n).where(bs.c.kind == kind)).scalars().all()
    assert sorted(n) == sorted([int(PARTIAL.n.sum())] if kind == HOUR_STACK else PARTIAL.n.tolist())
    engine.dispose()
