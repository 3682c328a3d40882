"""The minute rows go to PostgreSQL by COPY inside the flush's transaction: the store
dying in the middle of that COPY loses nothing and counts nothing twice."""

from __future__ import annotations

import numpy as np
import psycopg

from collectors import AttentionCollector
from monitor import Store

T0 = 1_800_000_000.0


def test_the_store_dying_mid_copy_spills_the_batch_and_replays_it_once(own_database, tmp_path, monkeypatch):
    db = own_database
    rng = np.random.default_rng(1)
    clock = [T0]
    kill = {"on": False, "hits": 0}
    write_row = psycopg.Copy.write_row

    def dying_after_first_row(self, row):  # the server goes away once a row is on the wire
        write_row(self, row)
        if kill["on"] and kill["hits"] == 0:
            kill["hits"] += 1
            db.block(True)  # connections terminated, new ones refused

    monkeypatch.setattr(psycopg.Copy, "write_row", dying_after_first_row)
    sent = 0
    c = AttentionCollector(db.url, model="m", version="v1", spill_dir=tmp_path / "spill",
                           flush_interval_s=0.05, clock=lambda: clock[0])

    def send(n: int) -> None:
        nonlocal sent
        w = rng.dirichlet(np.ones(10), size=(n, 2)).astype(np.float32)
        c.observe_batch(w, item_ids=rng.integers(0, 20, (n, 10)), timestamps=clock[0])
        sent += n
        c.flush()

    try:
        send(100)
        kill["on"], clock[0] = True, T0 + 60
        send(50)  # its COPY dies after one row: the transaction is gone, the batch spills
        kill["on"] = False
        assert kill["hits"] == 1 and c.stats.spilled > 0, c.stats
        db.block(False)
        clock[0] = T0 + 300
        send(25)  # the store is back: the spill is replayed, then this batch
    finally:
        c.close()
    assert Store(db.url).summary("m", by=["layer"])["n"].tolist() == [sent]
