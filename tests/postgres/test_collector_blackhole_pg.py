"""The store's network path going silent (a failover's old address, a partition): the
collector's write must fail within its write_timeout_s and spill, not wait on the
kernel's ~15 minutes of TCP retransmissions while its queue fills and drops."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from collectors import AttentionCollector
from monitor import Store
from monitor.store import make_engine
from tests.blackhole import StalledProxy, black_hole
from tests.peers import unavailable

T0 = 1_800_000_000.0


@pytest.fixture
def hole_url(pg_clean_url, tmp_path):
    url = make_url(pg_clean_url)
    try:
        with black_hole(url.host or "127.0.0.1", url.port or 5432, tmp_path) as hole:
            yield hole, url.set(host=hole.host).render_as_string(hide_password=False)
    except OSError as exc:
        unavailable(f"no black-holed path to PostgreSQL: {exc}")


def test_a_silent_network_fails_the_write_in_seconds_and_it_is_spilled(hole_url, pg_clean_url, tmp_path):
    hole, url = hole_url
    w = np.full((40, 4), 0.25, np.float32)
    c = AttentionCollector(url, model="m", version="v1", spill_dir=tmp_path / "spill",
                           write_timeout_s=2.0, clock=lambda: T0 + 3600)
    try:
        c.observe_batch(w, timestamps=T0)
        assert c.flush(timeout=20) and c.stats.written == 40  # a pooled connection, through the hole
        hole.cut()
        c.observe_batch(w, timestamps=T0 + 60)
        started = time.monotonic()
        # before TCP user timeouts: the write waited on its unacknowledged packets (about
        # 15 minutes), and this flush timed out with nothing spilled
        assert c.flush(timeout=30)
        assert c.stats.spilled == 40 and c.stats.written == 40
        assert time.monotonic() - started < 30
        hole.restore()
        c.observe_batch(w, timestamps=T0 + 120)
        assert c.flush(timeout=30)
        assert c.stats.written == 120  # the spilled batch replayed, and the new one
    finally:
        hole.restore()
        c.close()
    with Store(pg_clean_url) as store:
        assert int(store.summary("m", by=["layer"])["n"].sum()) == 120


W = np.full((40, 4), 0.25, np.float32)


@pytest.fixture
def proxied(pg_clean_url, tmp_path):
    """A collector (write_timeout_s=1, a spill_dir) whose store is behind a StalledProxy,
    with its first 40 requests written: a connection in its pool, the deployment row."""
    url = make_url(pg_clean_url)
    proxy = StalledProxy(url.host or "127.0.0.1", url.port or 5432)
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    c = AttentionCollector(via, model="m", version="v1", spill_dir=tmp_path / "spill",
                           write_timeout_s=1.0, clock=lambda: T0 + 3600)
    try:
        c.observe_batch(W, timestamps=T0)
        assert c.flush(timeout=20) and c.stats.written == 40
        yield proxy, c
    finally:
        proxy.close()
        c.close()


def test_a_server_that_stops_answering_mid_write_is_cut_off_and_the_write_spilled(proxied, pg_clean_url):
    # a frozen server (paused VM, hung storage) or pooler: the connection stays open, TCP
    # acknowledges, and no answer comes, not even the server's own timeout error. The
    # collector cuts its connection once the write has taken longer than its statements
    # could on a live server (write_timeout_s each, ~6 here: 11 s) and spills.
    proxy, c = proxied
    blocker = make_engine(pg_clean_url)
    try:
        with blocker.connect() as conn:
            conn.execute(text("LOCK TABLE window_aggregates IN ACCESS EXCLUSIVE MODE"))
            c.observe_batch(W, timestamps=T0 + 60)
            done = {}
            flushing = threading.Thread(target=lambda: done.update(ok=c.flush(timeout=30)))
            started = time.monotonic()
            flushing.start()
            time.sleep(0.5)  # the write is in flight, waiting on the lock
            proxy.stall()  # ...and its answer (lock_timeout's error, after 1 s) never comes
            flushing.join(40)
            conn.rollback()
        assert done["ok"]  # before: the write waited until the proxy resumed; flush gave up
        assert c.stats.spilled == 40 and time.monotonic() - started < 30
        proxy.resume()
        c.observe_batch(W, timestamps=T0 + 120)
        assert c.flush(timeout=30)
        assert c.stats.written == 120
    finally:
        proxy.resume()
        blocker.dispose()
    with Store(pg_clean_url) as store:
        assert int(store.summary("m", by=["layer"])["n"].sum()) == 120


def test_a_slow_write_that_makes_progress_is_not_cut(proxied):
    # every packet takes 0.15 s each way: the write's round trips add up to several
    # write_timeout_s, but each statement is answered. Cut at 2 × write_timeout_s (the
    # first cut-off), it was spilled, and cut again at every replay: never written.
    proxy, c = proxied
    proxy.delay_s = 0.15
    c.observe_batch(W, timestamps=T0 + 60)
    started = time.monotonic()
    assert c.flush(timeout=60)
    assert c.stats.written == 80 and c.stats.spilled == 0
    assert time.monotonic() - started > 2  # it did take longer than 2 × write_timeout_s
