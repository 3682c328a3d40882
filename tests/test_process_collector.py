"""ProcessCollector: the same results as AttentionCollector, with the work in a worker
process; and what happens when the worker, or the serving process, dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from collectors import AttentionCollector, ProcessCollector
from monitor import Store
from monitor.store import tables as t
from monitor.store.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000.0  # a minute boundary, long closed


def batch(rng, B=40, layers=2, heads=2, L=30):
    w = rng.dirichlet(np.ones(L), size=(B, layers, heads)).astype(np.float32)
    ids = rng.integers(0, 500, (B, L))
    brand = rng.choice(["acme", "other", "x*y`z"], (B, L))
    return w, ids, brand


def stored_n(url: str, version: str) -> int:
    wa = t.window_aggregates
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(wa.c.n), 0)).where(
                wa.c.version == version, wa.c.cohort == "*", wa.c.layer == "0", wa.c.head == "*")).scalar())
    finally:
        engine.dispose()


def wait_for(cond, timeout=20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_writes_what_the_in_process_collector_writes(sqlite_url):
    rng = np.random.default_rng(1)
    batches = [batch(rng) for _ in range(6)]
    bad = batches[2][0].copy()
    bad[3, 0, 1, 0] = np.nan  # one rejected request
    batches[2] = (bad, *batches[2][1:])
    kw = dict(sample_rate=0.0, topk_items=64)
    for cls, version in ((AttentionCollector, "in"), (ProcessCollector, "out")):
        with cls(sqlite_url, model="m", version=version, **kw) as c:
            for i, (w, ids, brand) in enumerate(batches):
                c.observe_batch(w, item_ids=ids, attributes={"brand": brand}, cohorts="web",
                                timestamps=T0 + 20 * i)
            c.observe(batches[0][0][0], item_ids=batches[0][1][0], cohort="web", timestamp=T0 + 5)
        if cls is ProcessCollector:
            assert c.stats.accepted == 6 * 40 and c.stats.rejected == {"nan": 1}
            assert c.stats.written == c.stats.accepted and c.stats.dropped == 0
    s = Store(sqlite_url)
    by = ["version", "cohort", "layer", "head"]
    a = s.summary("m", by=by).set_index(by)
    assert set(a.index.get_level_values("version")) == {"in", "out"}
    inn, out = a.xs("in", level="version"), a.xs("out", level="version")
    assert (inn["n"] == out["n"]).all() and inn["n"].sum() > 0
    np.testing.assert_allclose(inn.to_numpy(float), out.to_numpy(float), rtol=1e-12, equal_nan=True)
    # the top-K items and attribute values too (kept on the roll-ups: cohort and head "*")
    by = ("layer",)
    ka, kb = s.sketches("m", by=by, version="in"), s.sketches("m", by=by, version="out")
    assert ka.keys() == kb.keys()
    assert any(x.items is not None for x in ka.values()) and any(x.attrs for x in ka.values())
    for key, sk_in in ka.items():
        np.testing.assert_array_equal(sk_in.hist, kb[key].hist)
        assert (sk_in.items is None) == (kb[key].items is None)
        if sk_in.items is not None:
            assert sk_in.items.shares() == kb[key].items.shares()
        assert sk_in.attrs.keys() == kb[key].attrs.keys()
        assert all(sk_in.attrs[a].shares() == kb[key].attrs[a].shares() for a in sk_in.attrs)


def test_bad_options_are_refused_here_with_the_same_errors(sqlite_url):
    with pytest.raises(ValueError, match="sample_rate=2"):
        ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=2)
    with pytest.raises(ValueError, match="store_url='notaurl': not a SQLAlchemy URL"):
        ProcessCollector("notaurl", model="m", version="v1")
    with pytest.raises(ValueError, match="strict=True"):
        ProcessCollector(sqlite_url, model="m", version="v1", strict=True)
    with pytest.raises(ValueError, match="engine="):
        ProcessCollector(model="m", version="v1", engine=make_engine(sqlite_url))
    with pytest.raises(ValueError, match="picklable"):
        ProcessCollector(sqlite_url, model="m", version="v1", clock=lambda: T0)
    with pytest.raises(ValueError, match="version="):
        ProcessCollector(sqlite_url, model="m", version="v$__timeFrom()")
    with pytest.raises(ValueError, match="weights_id="):  # (it did not fit PostgreSQL's column)
        ProcessCollector(sqlite_url, model="m", version="v1", weights_id="w" * 300)


def test_close_flushes_and_later_calls_are_dropped_and_counted(sqlite_url):
    rng = np.random.default_rng(2)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    w, ids, _ = batch(rng)
    c.observe_batch(w, item_ids=ids)
    pid = c.worker_pid or wait_for(lambda: c.worker_pid) and c.worker_pid
    c.close()
    assert c.closed and c.worker_pid is None
    assert stored_n(sqlite_url, "v1") == 40
    assert wait_for(lambda: subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0, 5)
    c.observe_batch(w)
    assert c.stats.dropped == 40 and c.stats.written == 40
    assert c.flush() is True  # (nothing to do)


def test_a_killed_worker_loses_only_what_it_held_and_a_new_one_takes_over(sqlite_url):
    rng = np.random.default_rng(3)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, restart_every_s=0.2)
    try:
        w, ids, _ = batch(rng)
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush()
        first = c.worker_pid
        # handed over, not yet written; the worker's stats (once a second) say it holds them
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 60)
        assert wait_for(lambda: c.stats.accepted == 80)
        os.kill(first, signal.SIGKILL)
        # the next flush may find it dead (False) or start a new one at once (True)
        assert wait_for(lambda: c.flush(timeout=10))
        assert c.stats.dropped == 40
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 120)
        assert c.flush(timeout=20) is True
        assert c.worker_pid not in (None, first)
    finally:
        c.close()
    st = c.stats
    assert stored_n(sqlite_url, "v1") == st.written == 80
    assert st.dropped == 40 and st.observed == st.written + st.dropped
    # the next worker's health rows carry the drops: the monitor's own dashboards see them
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(t.collector_health.c.dropped))).scalar() == 40
    engine.dispose()


def test_a_worker_that_cannot_start_costs_the_calls_and_is_said(sqlite_url, monkeypatch, caplog):
    monkeypatch.setattr("collectors.process.sys.executable", "/nonexistent/python3")
    rng = np.random.default_rng(6)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, restart_every_s=0.1)
    try:
        c.observe_batch(w, item_ids=ids)
        assert c.flush(timeout=10) is False
        time.sleep(0.2)
        c.observe_batch(w, item_ids=ids)
        assert c.flush(timeout=10) is False
        assert c.stats.dropped == 80 and c.stats.written == 0 and c.worker_pid is None
        assert "could not start" in caplog.text and "dropped (and counted)" in caplog.text
    finally:
        c.close()


def test_the_worker_writes_what_it_holds_when_the_serving_process_is_killed(sqlite_url):
    script = textwrap.dedent(f"""
        import os, signal, time
        import numpy as np
        from collectors import ProcessCollector
        c = ProcessCollector({sqlite_url!r}, model="m", version="v1", sample_rate=0.0,
                             flush_interval_s=3600)
        w = np.random.default_rng(0).dirichlet(np.ones(20), size=(50, 1, 2)).astype(np.float32)
        for i in range(10):
            c.observe_batch(w, timestamps={T0} + i)
        while c.stats.accepted < 500:  # the worker has them (its hourly flush is far off)
            time.sleep(0.05)
        print(c.worker_pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker = int(proc.stdout.split()[0])
    assert wait_for(lambda: stored_n(sqlite_url, "v1") == 500, timeout=30)
    assert wait_for(lambda: subprocess.run(["kill", "-0", str(worker)], capture_output=True).returncode != 0, 10)


def test_a_forked_child_runs_a_worker_of_its_own(sqlite_url):
    rng = np.random.default_rng(4)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush()
        parent_worker = c.worker_pid
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            ok = c.worker_pid is None
            c.observe_batch(w[:10], item_ids=ids[:10], timestamps=T0)
            ok = ok and c.flush(timeout=30) and c.worker_pid not in (None, parent_worker)
            c.close()
            os._exit(0 if ok and c.stats.written == 10 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's worker still works
        assert c.worker_pid == parent_worker
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 60)
        assert c.flush()
    finally:
        c.close()
    assert c.stats.written == 80
    assert stored_n(sqlite_url, "v1") == 90


def test_a_full_queue_drops_the_newest_and_counts(sqlite_url):
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, queue_size=2)
    c._start = lambda: None  # no sender thread: the queue stays as the calls leave it
    rng = np.random.default_rng(5)
    w, ids, _ = batch(rng)
    for _ in range(5):
        c.observe_batch(w, item_ids=ids)
    assert len(c._q) == 2 and c.stats.dropped == 3 * 40


def test_from_config_takes_the_collector_section(tmp_path, sqlite_url):
    from monitor.config import load_config

    path = tmp_path / "attnmon.yaml"
    path.write_text(f"store_url: {sqlite_url}\ncollector:\n  sample_rate: 0.5\n  queue_size: 7\n")
    cfg = load_config(path)
    c = ProcessCollector.from_config("m", "v1", config=cfg, restart_every_s=1.0)
    assert (c.store_url, c.sample_rate, c.queue_size, c.restart_every_s) == (sqlite_url, 0.5, 7, 1.0)
    assert c._spec["queue_size"] == 7  # and the worker gets them
    c.close()


def test_close_sends_what_arrived_while_a_send_was_in_flight(sqlite_url, monkeypatch):
    rng = np.random.default_rng(7)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    c.observe_batch(w, item_ids=ids, timestamps=T0)
    assert c.flush()
    send = ProcessCollector._send_entries
    entered = threading.Event()

    def slow(self, entries, dropped):
        if entries:
            entered.set()
            time.sleep(0.3)
        return send(self, entries, dropped)

    monkeypatch.setattr(ProcessCollector, "_send_entries", slow)
    c.observe_batch(w, item_ids=ids, timestamps=T0 + 1)
    assert entered.wait(5)
    c.observe_batch(w, item_ids=ids, timestamps=T0 + 2)  # while the one before is on its way
    c.close()
    assert c.stats.accepted == c.stats.written == 120
    assert stored_n(sqlite_url, "v1") == 120


def test_stats_dropped_never_goes_down_while_drops_cross_to_the_worker(sqlite_url):
    # the sender takes the serving side's drops to tell the worker; until the worker's
    # next report has them, stats counted them nowhere: stats.dropped went down (by all
    # the drops) for up to a second, more while a worker starts
    w = np.full(4, 0.25, np.float32)
    c = ProcessCollector(sqlite_url, model="m", version="v1", queue_size=2)
    try:
        for _ in range(50):
            c.observe(w, timestamp=T0)
        seen = [c.stats.dropped]
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            seen.append(c.stats.dropped)
            time.sleep(0.002)
        assert c.flush(timeout=30)
        seen.append(c.stats.dropped)
        assert seen[0] > 0
        assert seen == sorted(seen), sorted(set(seen))
        assert c.stats.dropped + c.stats.observed == 50
    finally:
        c.close()


def test_relative_paths_are_those_of_the_folder_it_was_made_in(sqlite_url, tmp_path, monkeypatch):
    """A relative SQLite file and spill_dir mean what they meant when the collector was
    made (as the checks of its options read them), whenever its worker starts: a serving
    process that changes its folder later (a daemon's chdir('/')) writes to the same store."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(11)
    c = ProcessCollector("sqlite:///attnmon.db", model="m", version="v1", sample_rate=0.0, spill_dir="spill")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    w, ids, _ = batch(rng)
    c.observe_batch(w, item_ids=ids)
    c.close()
    assert c.stats.written == 40
    assert stored_n(sqlite_url, "v1") == 40
    assert not (elsewhere / "attnmon.db").exists() and not (elsewhere / "spill").exists()


def test_other_stores_batches_in_spill_dir_are_told_once(sqlite_url, tmp_path, caplog, capfd):
    """The ProcessCollector's checks (in the serving process's log) say it when it is made;
    its workers, whose log is their stderr, do not say it again at each start."""
    from datetime import UTC, datetime

    from collectors.spill import SpillDir
    from monitor.store.writer import FlushBatch

    said = "spilled batch(es) of other stores"
    other = SpillDir(tmp_path / "spill", "postgresql+psycopg://attnmon@db.example/attnmon")
    other.put(FlushBatch(collector_id="c", batch_seq=1, written_at=datetime.now(UTC), n_requests=1))
    rng = np.random.default_rng(17)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, spill_dir=tmp_path / "spill",
                         restart_every_s=0.1)
    try:
        assert caplog.text.count(said) == 1
        w, ids, _ = batch(rng)
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush(timeout=20)
        first = c.worker_pid
        os.kill(first, signal.SIGKILL)  # a second worker starts, and reads its options again
        assert wait_for(lambda: c.flush(timeout=10))
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 60)
        assert c.flush(timeout=20) and c.worker_pid not in (None, first)
    finally:
        c.close()
    assert c.stats.written == 80  # (both workers ran)
    assert caplog.text.count(said) + capfd.readouterr().err.count(said) == 1
