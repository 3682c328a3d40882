"""The store's network path going silent (a failover's old address, a partition): the
collector's write must fail within its write_timeout_s and spill, not wait on the
kernel's ~15 minutes of TCP retransmissions while its queue fills and drops."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy.engine import make_url

from collectors import AttentionCollector
from monitor import Store
from tests.blackhole import black_hole
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
