"""AttentionCollector on SQLite: what it writes, what it rejects, and that it loses nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from collectors import AttentionCollector, InvalidAttention
from monitor import Store
from monitor.metrics import compute
from monitor.store import make_engine, tables

T0 = 1_800_000_000.0  # a minute boundary


def fixed_clock(t: float = T0 + 3600):
    return lambda: t


def dirichlet(rng, shape, L):
    return rng.dirichlet(np.ones(L), size=shape).astype(np.float32)


def count_rows(url, table, **where):
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            q = select(func.count()).select_from(table)
            for k, v in where.items():
                q = q.where(table.c[k] == v)
            return conn.execute(q).scalar_one()
    finally:
        engine.dispose()


def stored_n(url, model="m", **filters):
    """Accepted requests per the store: layer 0's head-'*' roll-up over all cohorts."""
    with Store(url) as store:
        df = store.summary(model, by=["layer"], **filters)
    return int(df.loc[df["layer"] == "0", "n"].sum()) if len(df) else 0


def test_batch_means_equal_numpy(sqlite_url):
    rng = np.random.default_rng(1)
    B, ly, h, L = 300, 2, 3, 40
    w = dirichlet(rng, (B, ly, h), L)
    lengths = rng.integers(1, L + 1, B)
    for i, n in enumerate(lengths):  # left padding, renormalised valid part
        w[i, :, :, : L - n] = 0
        w[i, :, :, L - n :] /= w[i, :, :, L - n :].sum(-1, keepdims=True)
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(w, lengths=lengths, cohorts="web", timestamps=T0 + 10)
    df = Store(sqlite_url).summary("m", by=["layer", "head"])
    for layer in range(ly):
        for head in range(h):
            expect = compute(w[:, layer, head].astype(np.float64), lengths).mean(axis=0)
            row = df[(df["layer"] == str(layer)) & (df["head"] == str(head))].iloc[0]
            assert row["n"] == B
            assert row["entropy_norm"] == pytest.approx(expect[1], rel=1e-5)
            assert row["distance"] == pytest.approx(expect[8], rel=1e-5)
        mean = w[:, layer].mean(axis=1).astype(np.float64)
        star = Store(sqlite_url).summary("m", by=["layer"], head="*")
        got = star[star["layer"] == str(layer)].iloc[0]
        assert got["top1"] == pytest.approx(compute(mean, lengths)[:, 2].mean(), rel=1e-5)
        assert 0 < got["head_diversity"] <= 1


def test_right_padding_equals_left_padding(sqlite_url, tmp_path):
    rng = np.random.default_rng(2)
    B, L = 50, 20
    lengths = rng.integers(1, L + 1, B)
    left = np.zeros((B, L), np.float32)
    right = np.full((B, L), np.nan, np.float32)  # garbage in padding must not matter
    for i, n in enumerate(lengths):
        v = rng.dirichlet(np.ones(n))
        left[i, L - n :] = v
        right[i, :n] = v
    other = f"sqlite:///{tmp_path}/right.db"
    from monitor.store import migrate

    migrate.upgrade(other)
    for url, w, pad in ((sqlite_url, left, "left"), (other, right, "right")):
        with AttentionCollector(url, model="m", version="v1", clock=fixed_clock()) as c:
            c.observe_batch(w, lengths=lengths, padding=pad, timestamps=T0)
    a = Store(sqlite_url).summary("m", by=["head"])
    b = Store(other).summary("m", by=["head"])
    assert a["n"].tolist() == b["n"].tolist() == [B]
    for m in ("entropy_norm", "recency1", "sink", "distance"):
        assert a[m].iloc[0] == pytest.approx(b[m].iloc[0], rel=1e-6)


@pytest.mark.parametrize(
    "call, reason",
    [
        (dict(weights=np.array([0.5, np.nan, 0.5])), "nan"),
        (dict(weights=np.array([1.2, -0.2])), "negative"),
        (dict(weights=np.array([0.2, 0.2])), "not_normalised"),
        (dict(weights=np.zeros(0)), "empty"),
        (dict(weights=np.ones((1, 1, 1, 2)) / 2), "shape"),
        (dict(weights=np.array(["a", "b"])), "dtype"),
        (dict(weights=np.ones(3) / 3, item_ids=[1, 2]), "length_mismatch"),
        (dict(weights=np.ones(5000) / 5000), "too_long"),
        (dict(weights=np.ones(2) / 2, cohort="x\x00y"), "bad_label"),
        (dict(weights=np.ones(2) / 2, cohort="c" * 10_000), "bad_label"),
        (dict(weights=np.ones(2) / 2, item_ids=["ok", "a\x00b"]), "bad_value"),
        (dict(weights=np.ones(2) / 2, item_ids=[b"\xff\xfe", "ok"]), "bad_value"),
        (dict(weights=np.ones(2) / 2, item_ids=["x" * 10_000, "ok"]), "bad_value"),
        (dict(weights=np.ones(2) / 2, attributes={"brand": ["a"]}), "length_mismatch"),
    ],
)
def test_each_rejection_reason_is_counted(sqlite_url, call, reason):
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe(np.ones(4) / 4, timestamp=T0)  # a good one beside it
        c.observe(**call, timestamp=T0)
        c.flush()
        stats = c.stats
    assert stats.rejected == {reason: 1}
    assert stats.accepted == 1 and stats.observed == 2
    assert stored_n(sqlite_url) == 1
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        row = conn.execute(select(tables.collector_health)).mappings().all()
    assert sum(r["rejected_by_reason"].get(reason, 0) for r in row) == 1


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        (lambda w: w.__setitem__((3, 0, 5), np.nan), "nan"),
        (lambda w: w.__setitem__((3, 1, 5), -0.5), "negative"),
        (lambda w: w.__setitem__((3, 1), w[3, 1] * 2), "not_normalised"),
    ],
)
def test_strict_raises_naming_row_and_keeps_valid_rows(sqlite_url, bad_row, reason):
    rng = np.random.default_rng(3)
    w = dirichlet(rng, (8, 2), 10)
    bad_row(w)
    with AttentionCollector(sqlite_url, model="m", version="v1", strict=True, clock=fixed_clock()) as c:
        with pytest.raises(InvalidAttention) as err:
            c.observe_batch(w, timestamps=T0)
        assert err.value.reason == reason and err.value.row == 3
        assert f"({reason})" in str(err.value) and "row 3" in str(err.value)
    assert stored_n(sqlite_url) == 7


def test_batch_level_mismatches_reject_the_batch_not_the_collector(sqlite_url):
    w = np.full((4, 6), 1 / 6, np.float32)
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(w, lengths=np.array([6, 6]), timestamps=T0)  # wrong length count
        c.observe_batch(w, lengths=np.array([6, 7, 6, 6]), timestamps=T0)  # 7 > L
        c.observe_batch(w, cohorts=["a", "b"], timestamps=T0)
        c.observe_batch(w, item_ids=np.zeros((4, 5)), timestamps=T0)
        c.observe_batch(w, timestamps=T0)
        c.flush()
        stats = c.stats
    assert stats.rejected == {"length_mismatch": 4 + 1 + 4 + 4}
    assert stats.accepted == 3 + 4
    assert stored_n(sqlite_url) == 7


def test_hostile_labels_and_values_are_stored_verbatim(sqlite_url):
    hostile = ["'; DROP TABLE window_aggregates; --", 'a"b', "<script>x</script>", "é€😀", "a;b"]
    w = np.full((len(hostile), 5), 0.2, np.float32)
    ids = np.array([[h] * 5 for h in hostile], dtype=object)
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=1.0, clock=fixed_clock()) as c:
        c.observe_batch(w, item_ids=ids, cohorts=hostile, attributes={"brand": ids}, timestamps=T0)
    with Store(sqlite_url) as store:
        df = store.summary("m", by=["cohort"])
        assert sorted(df["cohort"]) == sorted(hostile)
        sk = store.sketches("m", by=["cohort", "head"], cohort="*", head="*")
        (only,) = sk.values()
        assert set(only.items.keys) == set(hostile)
        assert set(only.attrs["brand"].keys) == set(hostile)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        events = conn.execute(select(tables.attention_events.c.item_ids)).scalars().all()
    assert sorted(e[0] for e in events) == sorted(hostile)


def test_a_label_grafana_would_read_as_a_macro_is_refused(sqlite_url):
    # Grafana's server expands $name(...) even inside a quoted value: such a cohort or
    # version would break every dashboard panel that lists it
    macro = "v$__timeFrom()x"
    with pytest.raises(ValueError, match=r"version='v\$__timeFrom\(\)x': .*macro"):
        AttentionCollector(sqlite_url, model="m", version=macro)
    w = np.full((3, 4), 0.25, np.float32)
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(w, cohorts=["web", macro, "a $5 (promo)"], timestamps=T0)
        c.flush()
        stats = c.stats
    assert stats.rejected == {"bad_label": 1} and stats.accepted == 2
    with Store(sqlite_url) as store:
        assert sorted(store.summary("m", by=["cohort"])["cohort"]) == ["a $5 (promo)", "web"]


def test_queue_full_drops_newest_and_counts(sqlite_url):
    c = AttentionCollector(sqlite_url, model="m", version="v1", queue_size=5, clock=fixed_clock())
    c._start = lambda: None  # keep the thread from draining: the queue stays full
    for _ in range(12):
        c.observe(np.ones(3) / 3, timestamp=T0)
    assert len(c._q) == 5
    # observed: what the thread examined (accepted + rejected), as in collector_health;
    # drops are apart, before the thread takes them and after (it used to count them in
    # observed until then: a counter that went down)
    assert c.stats.dropped == 7 and c.stats.observed == 0
    del c._start
    c.close()
    assert c.stats.accepted == 5 and c.stats.dropped == 7 and c.stats.observed == 5
    assert stored_n(sqlite_url) == 5
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        health = conn.execute(select(func.sum(tables.collector_health.c.observed),
                                     func.sum(tables.collector_health.c.dropped))).one()
    engine.dispose()
    assert tuple(health) == (5, 7)


def test_stats_dropped_never_dips_while_the_thread_takes_the_drops(sqlite_url, monkeypatch):
    import collectors.collector as cc

    c = AttentionCollector(sqlite_url, model="m", version="v1", queue_size=2, clock=fixed_clock())
    c._start = lambda: None
    for _ in range(6):
        c.observe(np.ones(3) / 3, timestamp=T0)
    assert c.stats.dropped == 4
    health = cc.AttentionCollector._minute_health

    def slow_health(self):  # widens the moment between taking the drops and counting them
        time.sleep(0.2)
        return health(self)

    monkeypatch.setattr(cc.AttentionCollector, "_minute_health", slow_health)
    seen, done = [], threading.Event()

    def read():
        while not done.is_set():
            seen.append(c.stats.dropped)
            time.sleep(0.005)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        c._drain()
    finally:
        done.set()
        reader.join()
        monkeypatch.undo()
        del c._start
        c.close()
    assert min(seen) == 4 and c.stats.dropped == 4  # (it read 0 while they crossed)


def test_sampling_off_hashing_and_deployment(sqlite_url):
    w = np.full((100, 4), 0.25, np.float32)
    ids = np.arange(400).reshape(100, 4)
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, clock=fixed_clock()) as c:
        c.observe_batch(w, item_ids=ids, timestamps=T0)
    assert count_rows(sqlite_url, tables.attention_events) == 0
    with AttentionCollector(sqlite_url, model="m", version="v2", sample_rate=1.0, hash_item_ids=True,
                            hash_key="k", weights_id="abc", clock=fixed_clock()) as c:
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 120, request_ids=[f"r{i}" for i in range(100)])
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        ev = conn.execute(select(tables.attention_events).where(tables.attention_events.c.request_id == "r7")).mappings().one()
        deps = conn.execute(select(tables.deployments).order_by(tables.deployments.c.version)).mappings().all()
    assert len(ev["item_ids"]) == 4 and "28" not in ev["item_ids"] and len(ev["item_ids"][0]) == 32
    assert np.frombuffer(ev["weights"], "<f4").tolist() == [0.25] * 4
    assert [(d["version"], d["weights_id"]) for d in deps] == [("v1", None), ("v2", "abc")]
    assert deps[1]["first_seen"].replace(tzinfo=None).timestamp() == pytest.approx(T0 + 120, abs=1)


def test_minutes_and_series_are_separate_rows(sqlite_url):
    w = np.full((6, 2, 4), 0.25, np.float32)
    ts = T0 + np.array([0, 10, 70, 80, 130, 190.0])
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(w, cohorts=["a", "b", "a", "a", "b", "a"], timestamps=ts)
    engine = make_engine(sqlite_url)
    wa = tables.window_aggregates
    with engine.connect() as conn:
        rows = conn.execute(select(wa.c.bucket_start, wa.c.cohort, wa.c.head, wa.c.n)).all()
    minutes = {r[0].replace(tzinfo=None) for r in rows}
    assert len(minutes) == 4
    # per minute: each cohort present plus the cohort "*" roll-up, × (head 0, 1, *)
    assert len(rows) == (3 + 2 + 2 + 2) * 3
    assert sum(r[3] for r in rows if r[1] == "*" and r[2] == "*") == 6


def test_store_down_spills_and_replays_exactly(tmp_path, sqlite_url):
    from monitor.store import migrate

    db = tmp_path / "late" / "store.db"
    url = f"sqlite:///{db}"
    spill = tmp_path / "spill"
    rng = np.random.default_rng(4)
    clock = [T0]
    c = AttentionCollector(url, model="m", version="v1", spill_dir=spill, flush_interval_s=0.05,
                           clock=lambda: clock[0])
    for minute in range(3):
        clock[0] = T0 + 60 * minute
        c.observe_batch(dirichlet(rng, (50,), 8), timestamps=clock[0])
        assert c.flush()
    assert len(list(spill.rglob("*.json.gz"))) >= 2  # the directory does not exist: store down
    db.parent.mkdir()
    migrate.upgrade(url)
    c.observe_batch(dirichlet(rng, (50,), 8), timestamps=clock[0])
    c.close()
    assert list(spill.rglob("*.json.gz")) == []
    assert stored_n(url) == 200 == c.stats.accepted == c.stats.written
    assert c.stats.spilled > 0


def test_replay_of_a_written_batch_counts_once(sqlite_url, tmp_path):
    from collectors.spill import SpillDir
    from monitor.store.writer import write_batch

    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(np.full((10, 2), 0.5, np.float32), timestamps=T0)
        c.flush()
        batch = c._take_batch(T0 + 3600, None)  # nothing left to take
    assert batch is None or not batch.aggregates
    # build a batch, spill it, write it twice
    c2 = AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock())
    c2._summarise(*c2._to_blocks([("batch", np.full((10, 2), 0.5, np.float32), None, None, None, None, None, T0, "left")]))
    batch = c2._take_batch(T0 + 3600, None)
    sd = SpillDir(tmp_path / "spill")
    path = sd.put(batch)
    engine = make_engine(sqlite_url)
    assert write_batch(engine, sd.load(path)) is True
    assert write_batch(engine, sd.load(path)) is False
    assert stored_n(sqlite_url) == 20
    c2.close()


def test_fork_child_collects_on_its_own(sqlite_url):
    c = AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock())
    c.observe(np.ones(4) / 4, timestamp=T0)
    c.flush()
    pid = os.fork()
    if pid == 0:  # child: a fresh thread and connection, lazily
        code = 1
        try:
            assert c._thread is None
            for _ in range(5):
                c.observe(np.ones(4) / 4, timestamp=T0)
            c.close()
            code = 0 if c.stats.accepted == 5 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    c.observe(np.ones(4) / 4, timestamp=T0)
    c.close()
    assert c.stats.accepted == 2
    assert stored_n(sqlite_url) == 7


def test_interpreter_exit_flushes(sqlite_url):
    script = textwrap.dedent(
        f"""
        import numpy as np
        from collectors import AttentionCollector
        c = AttentionCollector({sqlite_url!r}, model="m", version="v1", flush_interval_s=3600,
                               clock=lambda: {T0 + 3600})
        for _ in range(123):
            c.observe(np.ones(5) / 5, timestamp={T0})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert stored_n(sqlite_url) == 123


def test_from_config_takes_the_collector_section_and_the_environment(tmp_path, monkeypatch):
    from monitor.config import load_config

    (tmp_path / "attnmon.yaml").write_text(
        f"store_url: sqlite:///{tmp_path}/a.db\n"
        f"collector: {{sample_rate: 0.5, queue_size: 77, spill_dir: {tmp_path}/spill, hash_item_ids: true,"
        " hash_key_env: MY_KEY, max_unsent_rows: 9, write_timeout_s: 4}\n")
    env = {"ATTNMON_COLLECTOR__FLUSH_INTERVAL_S": "7.5"}
    cfg = load_config(tmp_path / "attnmon.yaml", env)
    monkeypatch.setenv("MY_KEY", "k1")
    c = AttentionCollector.from_config("m", "v1", config=cfg, queue_size=5)  # a keyword wins
    assert (c.store_url, c.sample_rate, c.queue_size, c.flush_interval_s, c.max_unsent_rows) == (
        f"sqlite:///{tmp_path}/a.db", 0.5, 5, 7.5, 9)
    assert c._spill.root == Path(tmp_path, "spill") and c._hash_item_ids and c._hash_key == b"k1"
    assert c.write_timeout_s == 4
    with pytest.raises(ValueError, match=r"write_timeout_s=0: must be a number of seconds > 0"):
        AttentionCollector.from_config("m", "v1", config=cfg, write_timeout_s=0)
    # (PostgreSQL refused every connection with it: every write spilled, for good)
    with pytest.raises(ValueError, match=r"write_timeout_s=3000000: .* \(PostgreSQL's limit\)"):
        AttentionCollector.from_config("m", "v1", config=cfg, write_timeout_s=3_000_000)
    engine = make_engine(f"sqlite:///{tmp_path}/b.db")
    given = AttentionCollector.from_config("m", "v1", config=cfg, engine=engine)
    assert given.store_url is None and given._engine is engine  # the engine, not the config's URL
    engine.dispose()
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ValueError, match=r"\$MY_KEY \(collector.hash_key_env\) is empty"):
        AttentionCollector.from_config("m", "v1", config=cfg)


def _store_over_two_minutes(url: str) -> None:
    w = np.full((4, 4), 0.25, np.float32)
    with AttentionCollector(url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(w, cohorts=["web", "web", "app", "app"], timestamps=T0 + np.array([5, 10, 65, 70.0]))


def test_summary_reads_a_time_range_in_any_zone(store_url):
    from datetime import UTC, datetime, timedelta, timezone

    _store_over_two_minutes(store_url)
    second = datetime.fromtimestamp(T0 + 60, UTC)
    berlin = timezone(timedelta(hours=1))
    with Store(store_url) as store:
        for start in (second, second.astimezone(berlin), second.replace(tzinfo=None)):
            # the same instant: only the second minute (2 requests)
            assert store.summary("m", start=start, by=["version"])["n"].tolist() == [2], start
            assert store.summary("m", end=start, by=["version"])["n"].tolist() == [2], start
        with pytest.raises(ValueError, match=r"start='2026-01-01': must be a datetime"):
            store.summary("m", start="2026-01-01")


def test_summary_and_sketches_refuse_a_misspelt_label(store_url):
    _store_over_two_minutes(store_url)
    with Store(store_url) as store:
        # one label may be given as a string
        assert store.summary("m", by="cohort")["cohort"].tolist() == ["app", "web"]
        assert sorted(store.sketches("m", by="cohort")) == [("app",), ("web",)]
        for read in (store.summary, store.sketches):
            with pytest.raises(ValueError, match=r"cohrt='web': not a label to filter on \(labels: version, "):
                read("m", cohrt="web")  # before: sketches read every cohort
            with pytest.raises(ValueError, match=r"by='cohorts': not a label"):
                read("m", by=["cohorts"])


def test_observing_after_close_is_dropped_and_counted_not_queued(sqlite_url, caplog):
    c = AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock())
    c.observe(np.ones(4) / 4, timestamp=T0)
    c.close()
    assert c.closed and c.stats.accepted == 1
    with caplog.at_level("WARNING", logger="attnmon"):
        for _ in range(50):
            c.observe(np.ones(4) / 4, timestamp=T0)
            c.observe_batch(np.full((3, 4), 0.25, np.float32), timestamps=T0)
    # nothing drains the queue of a closed collector: before, every call stayed in it
    assert len(c._q) == 0
    assert c.stats.dropped == 50 * 4 and c.stats.accepted == 1
    assert sum("observed after close()" in r.getMessage() for r in caplog.records) == 1
    assert stored_n(sqlite_url) == 1


def test_the_label_limit_is_the_store_columns_width():
    from collectors.block import MAX_LABEL_CHARS

    assert MAX_LABEL_CHARS == tables.LABEL


def test_a_call_that_ends_after_close_is_counted(sqlite_url):
    # a serving thread passes the queue check, then close() runs (and the thread takes
    # its last) while that call makes its copy: the call appended to a queue no one would
    # drain again, and it was in no count (ProcessCollector's _put already drops it)
    import threading

    in_call, closed = threading.Event(), threading.Event()

    def clock():
        if threading.current_thread().name == "serving" and not in_call.is_set():
            in_call.set()
            closed.wait(10)
        return T0 + 3600

    c = AttentionCollector(sqlite_url, model="m", version="v1", clock=clock)
    c.observe(np.ones(4) / 4, timestamp=T0)
    serving = threading.Thread(target=lambda: c.observe(np.ones(4) / 4), name="serving")
    serving.start()
    assert in_call.wait(10)
    c.close()
    closed.set()
    serving.join(10)
    assert c.stats.accepted == 1 and c.stats.dropped == 1 and c.stats.queue_depth == 0


def test_the_roll_up_label_is_no_cohort(sqlite_url):
    # cohort "*" is the roll-up's own row: a request in a cohort named "*" was written as
    # a row the roll-up reads beside the roll-up itself, and counted twice
    w = np.full((3, 4), 0.25, np.float32)
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(w, cohorts=["web", "*", "app"], timestamps=T0)
        c.observe(np.ones(4) / 4, cohort="*", timestamp=T0)
        c.flush()
        stats = c.stats
    assert stats.rejected == {"bad_label": 2} and stats.accepted == 2
    assert stored_n(sqlite_url) == 2
    with Store(sqlite_url) as store:
        assert store.summary("m", by=["cohort"])["cohort"].tolist() == ["app", "web"]
    for name in ("model", "version"):  # "*" means every model or version in alert labels
        with pytest.raises(ValueError, match=rf"{name}='\*'"):
            AttentionCollector(sqlite_url, **{"model": "m", "version": "v1", name: "*"})


@pytest.mark.parametrize("option, value", [
    ("flush_interval_s", 0), ("flush_interval_s", float("nan")), ("flush_interval_s", float("inf")),
    ("late_grace_s", float("nan")), ("late_grace_s", -1), ("queue_size", 0), ("queue_size", 2.5),
    ("max_length", 0), ("topk_items", -1), ("topk_attr_values", 0), ("tol", float("nan")), ("tol", -0.1),
])
def test_options_that_would_spin_stall_or_lose_data_are_refused(sqlite_url, option, value):
    # as attnmon.yaml's collector section refuses them. Taken, flush_interval_s=0 spun the
    # thread (a third of a core), NaN never wrote but at close, late_grace_s=NaN failed every
    # flush, topk_items=-1 failed every batch after counting it accepted, tol=NaN let any sum pass
    with pytest.raises(ValueError, match=rf"^{option}="):
        AttentionCollector(sqlite_url, model="m", version="v1", **{option: value})


def test_summary_keeps_a_group_whose_every_request_was_rejected(sqlite_url):
    # a version (or cohort) that sends only NaN is the one to see: it vanished from the
    # summary, rejected count and all, as if it had no traffic
    with AttentionCollector(sqlite_url, model="m", version="v1", clock=fixed_clock()) as c:
        c.observe_batch(np.full((3, 4), 0.25), timestamps=T0)
    with AttentionCollector(sqlite_url, model="m", version="v2", clock=fixed_clock()) as c:
        c.observe_batch(np.full((2, 4), 0.25), cohorts="app", timestamps=T0)
        c.observe_batch(np.full((5, 4), np.nan), cohorts="web", timestamps=T0)
    with Store(sqlite_url) as store:
        df = store.summary("m", by=["version", "cohort"])
        only_nan = store.summary("m", by=["version"], cohort="web")
    got = df[["version", "cohort", "n", "rejected"]].values.tolist()
    assert got == [["v1", "default", 3, 0], ["v2", "app", 2, 0], ["v2", "web", 0, 5]]
    assert np.isnan(df["entropy_norm"].iloc[2]) and df["entropy_norm"].iloc[1] == pytest.approx(1.0)
    assert only_nan[["version", "n", "rejected"]].values.tolist() == [["v2", 0, 5]]


def test_a_bfloat16_models_rows_are_accepted_and_dropout_still_rejected(sqlite_url):
    """Rows of a softmax computed in bfloat16 miss 1 by up to its rounding (2**-8); a 1e-3
    bar rejected a third of them. The default takes them all, and still rejects most rows
    taken after dropout (p=0.1), whose sums miss by far more."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 50, generator=gen) * 5
    bf16 = torch.softmax(logits.bfloat16(), -1).float().numpy()
    miss = np.abs(bf16.sum(-1) - 1.0)
    assert (miss > 1e-3).mean() > 0.2 and miss.max() < 2.0**-8  # what the default must absorb
    keep = torch.rand(3000, 50, generator=gen) >= 0.1  # dropout, p=0.1
    dropped = (torch.softmax(logits, -1) * keep / 0.9).numpy()
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0, clock=fixed_clock()) as c:
        c.observe_batch(bf16, timestamps=T0)
        c.flush()
        assert c.stats.accepted == 3000 and not c.stats.rejected, c.stats
        c.observe_batch(dropped, timestamps=T0)
        c.flush()
        assert c.stats.rejected["not_normalised"] > 0.8 * 3000, c.stats
    with AttentionCollector(sqlite_url, model="m", version="v2", sample_rate=0, clock=fixed_clock(), tol=1e-3) as c:
        c.observe_batch(bf16, timestamps=T0)
        c.flush()
        assert c.stats.rejected["not_normalised"] == int((miss > 1e-3).sum()), c.stats



@pytest.mark.parametrize(("url", "problem"), [
    ("notaurl", "not a SQLAlchemy URL"),
    ("/var/lib/attnmon.db", "not a SQLAlchemy URL"),
    ("postgres://u@db/attnmon", "unknown database dialect 'postgres' (PostgreSQL: postgresql+psycopg://...)"),
])
def test_a_store_url_that_can_never_work_is_refused_at_construction(url: str, problem: str) -> None:
    # it was taken, and every write then failed in the background ("keeping in memory")
    # until close() dropped it all: a typo found only by the data missing
    with pytest.raises(ValueError, match=f"^store_url='{re.escape(url)}': {re.escape(problem)}"):
        AttentionCollector(url, model="m", version="v1")
