"""The collector against a real PostgreSQL, including the store going away and back."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from collectors import AttentionCollector
from monitor import Store
from monitor.metrics import compute
from monitor.store import make_engine

T0 = 1_800_000_000.0


def test_summary_equals_numpy_on_postgres(pg_clean_url):
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(30), size=(500, 2, 2)).astype(np.float32)
    with AttentionCollector(pg_clean_url, model="m", version="v1", clock=lambda: T0 + 3600) as c:
        c.observe_batch(w, item_ids=rng.integers(0, 50, (500, 30)), cohorts="web", timestamps=T0)
    df = Store(pg_clean_url).summary("m", by=["version", "layer", "head"])
    for layer in range(2):
        for head in range(2):
            row = df[(df.layer == str(layer)) & (df["head"] == str(head))].iloc[0]
            assert row["n"] == 500
            assert row["entropy_norm"] == pytest.approx(
                compute(w[:, layer, head].astype(np.float64), np.full(500, 30))[:, 1].mean(), rel=1e-6
            )


def test_hostile_strings_on_postgres(pg_clean_url):
    hostile = ["'; DROP TABLE window_aggregates; --", "é€😀", "a" * 200]
    w = np.full((4, 3), 1 / 3, np.float32)
    ids = np.array([[h] * 3 for h in hostile] + [["ok", "n\x00ul", "ok"]], dtype=object)
    with AttentionCollector(pg_clean_url, model="m", version="v1", sample_rate=1.0,
                            clock=lambda: T0 + 3600) as c:
        c.observe_batch(w, item_ids=ids, cohorts=hostile + ["x"], timestamps=T0)
        c.flush()
        assert c.stats.rejected == {"bad_value": 1}
    with Store(pg_clean_url) as store:
        df = store.summary("m", by=["cohort"])
        assert sorted(df["cohort"]) == sorted(hostile + ["x"])
        assert df.loc[df["cohort"] == "x", ["n", "rejected"]].values.tolist() == [[0, 1]]  # its one row rejected
        (sk,) = store.sketches("m", by=["cohort", "head"], cohort="*", head="*").values()
        assert set(sk.items.keys) == set(hostile)


def test_store_down_spills_then_replays_without_double_counting(own_database, tmp_path):
    db = own_database
    url = db.url
    rng = np.random.default_rng(1)
    spill = tmp_path / "spill"
    clock = [T0]
    c = AttentionCollector(url, model="m", version="v1", spill_dir=spill, flush_interval_s=0.05,
                           clock=lambda: clock[0])
    sent = 0

    def send(n):
        nonlocal sent
        w = rng.dirichlet(np.ones(10), size=(n, 2)).astype(np.float32)
        c.observe_batch(w, item_ids=rng.integers(0, 20, (n, 10)), timestamps=clock[0])
        sent += n
        assert c.flush()

    send(100)  # written while the store is up
    assert c.stats.written == 100 and not list(spill.rglob("*.json.gz"))
    db.block(True)
    for minute in range(1, 4):  # the store refuses every connection for three minutes
        clock[0] = T0 + 60 * minute
        send(50)
    assert len(list(spill.rglob("*.json.gz"))) >= 3
    assert c.stats.spilled == 150
    db.block(False)
    clock[0] = T0 + 300
    send(25)
    c.close()
    assert not list(spill.rglob("*.json.gz"))
    stats = c.stats
    assert stats.accepted == sent == 275 and stats.written == 275
    df = Store(url).summary("m", by=["layer"])
    assert df["n"].tolist() == [275]
    # and the health rows say the same
    with make_engine(url).connect() as conn:
        acc = conn.execute(text("SELECT sum(accepted), sum(observed) FROM collector_health")).one()
    assert tuple(acc) == (275, 275)


def test_aggregate_rows_copied_in_are_the_rows_given(pg_clean_url):
    """write_batch loads window_aggregates with a binary COPY on PostgreSQL: every value
    comes back as given (floats to the bit, bytes, times, NULLs), and a replay adds nothing."""
    from sqlalchemy import select

    from monitor.store import tables
    from monitor.store.writer import FlushBatch, write_batch

    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(20), size=(300, 2, 2)).astype(np.float32)
    c = AttentionCollector(pg_clean_url, model="m", version="v1", clock=lambda: T0 + 3600)
    c._start = lambda: None  # driven by hand
    c.observe_batch(w, item_ids=rng.integers(0, 40, (300, 20)), cohorts=list(rng.choice(["a", "b"], 300)),
                    timestamps=T0 + rng.uniform(0, 120, 300))
    c._drain()
    batch = c._take_batch(T0 + 3600, None)
    c._q.clear()
    c._closed = True
    batch.aggregates[0]["collector_id"] = None  # as compacted rows have it
    batch.aggregates[1]["sum_top1"] = 1.0 / 3.0
    engine = make_engine(pg_clean_url)
    try:
        assert write_batch(engine, batch)
        assert not write_batch(engine, FlushBatch(batch.collector_id, batch.batch_seq, batch.written_at,
                                                  aggregates=batch.aggregates))
        wa = tables.window_aggregates
        cols = [col for col in wa.columns if col.name != "id"]
        with engine.connect() as conn:
            got = [dict(r._mapping) for r in conn.execute(select(*cols).order_by(wa.c.id))]
    finally:
        engine.dispose()
    want = [{col.name: r.get(col.name) for col in cols} for r in batch.aggregates]
    for r in got:
        r["payload"] = bytes(r["payload"])
    assert got == want


def test_a_forked_child_does_not_share_a_given_engines_connection(pg_clean_url):
    """A collector given `engine=` (no URL): the child of a fork gets its own connection,
    never the parent's pooled socket (two processes on one socket corrupt both)."""
    import os

    engine = make_engine(pg_clean_url)
    c = AttentionCollector(engine=engine, model="m", version="v1", clock=lambda: T0 + 3600)
    try:
        with c._get_engine().connect() as conn:  # pooled: checked in, not closed
            parent = conn.execute(text("select pg_backend_pid()")).scalar_one()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: what its collector thread would use, then a real write
            code = 1
            try:
                with c._get_engine().connect() as conn:
                    child = conn.execute(text("select pg_backend_pid()")).scalar_one()
                c.observe(np.ones(4) / 4, timestamp=T0)
                c.close()
                os.write(w, f"{child} {c.stats.written}".encode())
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        child, written = map(int, os.read(r, 100).split())
        assert child != parent and written == 1
        with c._get_engine().connect() as conn:  # the parent's connection still works
            assert conn.execute(text("select 1")).scalar_one() == 1
    finally:
        c.close()
        engine.dispose()


def test_summary_reads_a_time_range_in_any_zone_on_postgres(pg_clean_url, monkeypatch):
    # a naive time would otherwise be read in the session's zone, not as UTC
    from tests.test_collector import test_summary_reads_a_time_range_in_any_zone

    monkeypatch.setenv("PGTZ", "America/New_York")  # libpq's session zone, read per connection
    test_summary_reads_a_time_range_in_any_zone(pg_clean_url)


def test_a_rejected_long_cohort_does_not_block_the_write(pg_clean_url):
    # a row rejected as bad_label must not become a series: a 201-character cohort does
    # not fit PostgreSQL's label column, and the whole flush, good rows too, would fail
    w = np.full((3, 4), 0.25, np.float32)
    with AttentionCollector(pg_clean_url, model="m", version="v1", clock=lambda: T0 + 3600) as c:
        c.observe_batch(w, cohorts=["web", "c" * 201, "$__timeFrom("], timestamps=T0)
        assert c.flush()
        assert c.stats.rejected == {"bad_label": 2} and c.stats.written == 1
    engine = make_engine(pg_clean_url)
    try:
        with engine.connect() as conn:
            cohorts = set(conn.execute(text("SELECT DISTINCT cohort FROM window_aggregates")).scalars())
    finally:
        engine.dispose()
    assert cohorts == {"web", "*"}  # (and the roll-up over cohorts)


def test_a_write_held_by_a_lock_gives_up_after_write_timeout_and_spills(pg_clean_url, tmp_path):
    # another session holds window_aggregates (a migration, a VACUUM FULL, a stuck
    # transaction): the write fails after write_timeout_s and is spilled, instead of
    # holding the collector's thread while its queue fills; it is replayed after
    w = np.full((50, 4), 0.25, np.float32)
    blocker = make_engine(pg_clean_url)
    c = AttentionCollector(pg_clean_url, model="m", version="v1", spill_dir=tmp_path / "spill",
                           write_timeout_s=1.0, clock=lambda: T0 + 3600)
    try:
        with blocker.connect() as conn:
            conn.execute(text("LOCK TABLE window_aggregates IN ACCESS EXCLUSIVE MODE"))
            c.observe_batch(w, timestamps=T0)
            assert c.flush(timeout=20)  # spilled, within seconds
            assert c.stats.spilled == 50 and c.stats.written == 0
            conn.rollback()  # the lock is released
        c.observe_batch(w, timestamps=T0 + 60)
        assert c.flush(timeout=20)
        assert c.stats.written == 100
    finally:
        c.close()
        blocker.dispose()
    with Store(pg_clean_url) as store:
        assert int(store.summary("m", by=["layer"])["n"].sum()) == 100


def test_a_collector_newer_than_its_store_says_to_upgrade_on_postgres(pg_empty_url, tmp_path, caplog):
    from tests.test_collector_spill_faults import collector_before_the_upgrade

    collector_before_the_upgrade(pg_empty_url, tmp_path, caplog)


def test_request_ids_postgres_cannot_take_do_not_block_the_writes(pg_clean_url, tmp_path):
    # psycopg cannot adapt numpy's integers, and a 300-character id does not fit the
    # column: either failed the whole batch at every flush, and the batches behind it
    w = np.full((2, 4), 0.25, np.float32)
    with AttentionCollector(pg_clean_url, model="m", version="v1", sample_rate=1.0, spill_dir=tmp_path / "s",
                            clock=lambda: T0 + 3600) as c:
        c.observe_batch(w, request_ids=np.array([1, 2]), timestamps=T0)
        c.observe_batch(w, request_ids=["r" * 300, "ok"], timestamps=T0)
        assert c.flush(timeout=20)
        assert c.stats.written == 4 and c.stats.spilled == 0
    engine = make_engine(pg_clean_url)
    try:
        with engine.connect() as conn:
            ids = conn.execute(text("SELECT request_id FROM attention_events")).scalars().all()
    finally:
        engine.dispose()
    assert sorted(ids, key=str) == ["1", "2", None, "ok"]


def test_a_batch_the_store_refuses_is_set_aside_and_the_rest_goes_on(pg_clean_url, tmp_path):
    # a value the store refuses at every try (here: a constraint of the store's own) used
    # to stay first in line: every later batch was spilled behind it, and none written
    engine = make_engine(pg_clean_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE window_aggregates ADD CONSTRAINT attnmon_test_no_poison "
                          "CHECK (cohort <> 'poison')"))
    spill = tmp_path / "spill"
    w = np.full((30, 4), 0.25, np.float32)
    c = AttentionCollector(pg_clean_url, model="m", version="v1", spill_dir=spill, sample_rate=0.0,
                           clock=lambda: T0 + 3600)
    try:
        c.observe_batch(w, cohorts="poison", timestamps=T0)
        assert c.flush()
        c.observe_batch(w, cohorts="web", timestamps=T0 + 60)
        assert c.flush()
        st = c.stats
    finally:
        c.close()
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE window_aggregates DROP CONSTRAINT attnmon_test_no_poison"))
        engine.dispose()
    assert st.written == 30 and st.dropped == 30 and st.spilled == 0
    assert len(list(spill.glob("*/bad/*"))) == 1  # kept for a person
    with Store(pg_clean_url) as store:
        assert set(store.summary("m", by=["cohort"])["cohort"]) == {"web"}


def test_a_deployment_row_the_store_refuses_costs_only_itself(pg_clean_url, tmp_path):
    # a weights_id longer than the column (set after construction, as AttentionCapture
    # sets it): the batch is written without its deployment row, and the next ones too
    w = np.full((30, 4), 0.25, np.float32)
    c = AttentionCollector(pg_clean_url, model="m", version="v1", spill_dir=tmp_path / "spill",
                           clock=lambda: T0 + 3600)
    c.weights_id = "w" * 300
    try:
        c.observe_batch(w, timestamps=T0)
        assert c.flush()
        c.observe_batch(w, timestamps=T0 + 60)
        assert c.flush()
        assert c.stats.written == 60 and c.stats.spilled == 0 and c.stats.dropped == 0
    finally:
        c.close()


@pytest.mark.parametrize("model_known", [False, True])
def test_a_version_another_replica_registers_meanwhile_costs_no_events(pg_clean_url, caplog, model_known):
    """Replicas of a new version start together and each registers it with its first
    write: the one that waited on another's uncommitted deployment row failed on the
    unique key, and its batch was written without its raw events, with an error logged."""
    import threading
    import time
    from datetime import UTC, datetime

    from monitor.store.writer import register_deployment

    engine = make_engine(pg_clean_url)
    w = np.full((20, 4), 0.25, np.float32)
    c = AttentionCollector(pg_clean_url, model="m", version="v1", sample_rate=1.0, clock=lambda: T0 + 3600)
    try:
        if model_known:  # (else the two race on the models row first)
            with engine.begin() as conn:
                register_deployment(conn, "m", "v0", datetime.fromtimestamp(T0 - 86400, UTC))
        with engine.connect() as other, caplog.at_level("ERROR", logger="attnmon"):
            tx = other.begin()  # the other replica's write, its deployment row not yet committed
            register_deployment(other, "m", "v1", datetime.fromtimestamp(T0, UTC))
            c.observe_batch(w, timestamps=T0)
            flushed = threading.Thread(target=c.flush)
            flushed.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until the collector's insert waits on ours
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()")).scalar_one():
                        break
                time.sleep(0.05)
            else:
                pytest.fail("the collector's write never waited on the other replica's row")
            tx.commit()
            flushed.join(30)
        c.close()
        assert c.stats.written == 20
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM attention_events")).scalar_one() == 20
            assert conn.execute(text("SELECT count(*) FROM deployments WHERE version = 'v1'")).scalar_one() == 1
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        c.close()
        engine.dispose()


def test_a_store_in_another_schema_never_replays_this_ones_spilled_batches(pg_clean_url, pg_empty_url, tmp_path):
    """Staging and production in two schemas of one database, one spill_dir: staging's
    schema is not there yet (its writes fail and spill); production's collector, whose
    store is up, must leave staging's batches to staging."""
    from test_collector import stored_n

    from collectors.spill import store_folder

    spill, rng = tmp_path / "spill", np.random.default_rng(3)
    staging = AttentionCollector(pg_empty_url, model="m", version="v1", sample_rate=0.0, spill_dir=spill,
                                 clock=lambda: T0 + 3600)
    staging.observe_batch(rng.dirichlet(np.ones(8), size=(40,)).astype(np.float32), timestamps=T0)
    staging.flush()  # (spilled: the store's tables are not there)
    assert staging.stats.spilled == 40
    staging.close(timeout=1)
    with AttentionCollector(pg_clean_url, model="m", version="v1", sample_rate=0.0, spill_dir=spill,
                            clock=lambda: T0 + 3600) as production:
        production.observe_batch(rng.dirichlet(np.ones(8), size=(10,)).astype(np.float32), timestamps=T0)
        assert production.flush()
    assert stored_n(pg_clean_url) == 10  # production's own, and nothing of staging's
    waiting = list(spill.rglob("*.json.gz"))
    assert waiting and {p.parent.name for p in waiting} == {store_folder(pg_empty_url)}  # for staging


def test_the_collectors_sessions_are_named_in_pg_stat_activity(pg_clean_url):
    """An operator looking at pg_stat_activity tells the collectors' sessions from other
    clients' (they had no application_name); a name the URL gives wins."""
    from sqlalchemy import make_url

    def names(c) -> set[str]:
        with make_engine(pg_clean_url).connect() as conn:
            return set(conn.execute(text("SELECT application_name FROM pg_stat_activity")).scalars())

    with AttentionCollector(pg_clean_url, model="m", version="v1", sample_rate=0.0) as c:
        c.observe(np.full(4, 0.25, np.float32))
        assert c.flush()
        assert "attnmon-collector m v1" in names(c)
    given = make_url(pg_clean_url).update_query_dict({"application_name": "recs-serving"})
    with AttentionCollector(given.render_as_string(hide_password=False), model="m", version="v2",
                            sample_rate=0.0) as c:
        c.observe(np.full(4, 0.25, np.float32))
        assert c.flush()
        assert "recs-serving" in names(c) and "attnmon-collector m v2" not in names(c)
