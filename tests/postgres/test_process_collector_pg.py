"""ProcessCollector against PostgreSQL going away and coming back: the worker spills,
replays in order, and the store ends with each request once."""

from __future__ import annotations

import time

import numpy as np

from collectors import AttentionCollector, ProcessCollector
from monitor import Store

T0 = 1_800_000_000.0


def test_the_worker_spills_while_the_store_is_down_and_replays_once(own_database, tmp_path):
    db = own_database
    rng = np.random.default_rng(1)
    spill = tmp_path / "spill"
    c = ProcessCollector(db.url, model="m", version="v1", sample_rate=0.0, spill_dir=spill)
    sent = 0

    def send(n: int, minute: int) -> None:
        nonlocal sent
        w = rng.dirichlet(np.ones(10), size=(n, 2)).astype(np.float32)
        c.observe_batch(w, item_ids=rng.integers(0, 20, (n, 10)), timestamps=T0 + 60 * minute)
        sent += n

    try:
        send(100, 0)
        assert c.flush(timeout=30)
        db.block(True)  # connections ended, new ones refused
        send(50, 1)
        assert c.flush(timeout=30)  # spilled
        assert c.stats.spilled == 50 and len(list(spill.rglob("*.json.gz"))) == 1
        db.block(False)
        send(25, 2)
        assert c.flush(timeout=30)  # the spill replayed, then this batch
        assert list(spill.rglob("*.json.gz")) == []
        db.block(True)
        send(30, 3)
        start = time.monotonic()
    finally:
        c.close()
    assert time.monotonic() - start < 20  # close() spills what it cannot write, it does not wait
    st = c.stats
    assert st.written == 175 and st.spilled == 80 and st.dropped == 0 and st.observed == sent
    db.block(False)
    with AttentionCollector(db.url, model="m", version="v1", spill_dir=spill) as later:
        assert later.flush()  # replays the worker's last spill file
    assert Store(db.url).summary("m", by=["layer"])["n"].tolist() == [sent]
