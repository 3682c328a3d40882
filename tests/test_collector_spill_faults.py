"""The collector's own disk and memory faults: an unreadable spill file, a spill_dir that
cannot be written, a store down with nowhere to spill. Nothing accepted may vanish
uncounted, and one bad file must not hold back the store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import func, select
from test_collector import T0, dirichlet, stored_n

from collectors import AttentionCollector
from monitor.store import make_engine, migrate, tables
from monitor.store.tables import window_aggregates as wa


def _run_minutes(c, clock, rng, minutes, per_minute=50, written=True):
    """`written`: what flush() must say (False: what it took waits in memory)."""
    for minute in minutes:
        clock[0] = T0 + 60 * minute
        c.observe_batch(dirichlet(rng, (per_minute,), 8), timestamps=clock[0])
        assert c.flush() is written


def test_an_unreadable_spill_file_is_moved_aside_and_the_rest_is_written(sqlite_url, tmp_path, caplog):
    spill = tmp_path / "spill"
    spill.mkdir()
    # a truncated file (a disk fault, a partial copy), sorted before the collector's own
    bad = spill / "aaa-host-1-deadbeef-000000000001.json.gz"
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    rng, clock = np.random.default_rng(1), [T0]
    c = AttentionCollector(sqlite_url, model="m", version="v1", spill_dir=spill,
                           flush_interval_s=0.05, clock=lambda: clock[0])
    _run_minutes(c, clock, rng, range(3))
    c.close()
    assert stored_n(sqlite_url) == 150 == c.stats.written
    assert c.stats.spilled == 0 and c.stats.bad_spill_files == 1
    assert list(spill.glob("*.json.gz")) == []
    assert (spill / "bad" / bad.name).read_bytes() == b"\x1f\x8b\x08garbage"  # kept for a person
    assert any("unreadable spill file" in r.getMessage() and bad.name in r.getMessage() for r in caplog.records)


def test_a_spill_dir_that_cannot_be_written_keeps_batches_in_memory(tmp_path):
    db = tmp_path / "later" / "store.db"  # the directory does not exist yet: store down
    url = f"sqlite:///{db}"
    spill = tmp_path / "spill"
    rng, clock = np.random.default_rng(2), [T0]
    c = AttentionCollector(url, model="m", version="v1", spill_dir=spill,
                           flush_interval_s=0.05, clock=lambda: clock[0])
    shutil.rmtree(spill)
    spill.write_text("not a directory")  # every write into it fails (NotADirectoryError)
    _run_minutes(c, clock, rng, range(4), written=False)
    st = c.stats
    assert st.accepted == 200 and st.spilled == st.written == st.dropped == 0
    assert sum(b.n_requests for b in c._unsent) == 200  # (flush() writes open minutes too)
    db.parent.mkdir()
    migrate.upgrade(url)
    assert c.flush()  # the store is back: written now
    c.close()
    assert stored_n(url) == 200 == c.stats.written == c.stats.accepted


def test_spilling_to_a_full_disk_leaves_no_partial_file(tmp_path):
    """A real write error (the file size limit, EFBIG, as a full disk would give ENOSPC):
    put raises, and no .tmp file stays behind to fill the disk further."""
    script = textwrap.dedent(f"""
        import resource, secrets, signal
        from datetime import datetime, UTC
        from collectors.spill import SpillDir
        from monitor.store.writer import FlushBatch
        sd = SpillDir({str(tmp_path / "spill")!r})
        batch = FlushBatch(collector_id="c", batch_seq=1, written_at=datetime.now(UTC),
                           deployments=[], aggregates=[], events=[{{"x": secrets.token_hex(100_000)}}],
                           health=[], n_requests=1)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        try:
            sd.put(batch)
        except OSError as exc:
            print("raised", type(exc).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("raised")
    assert list((tmp_path / "spill").iterdir()) == []


def test_store_down_and_no_spill_dir_drops_the_oldest_beyond_the_bound(tmp_path):
    db = tmp_path / "later" / "store.db"
    url = f"sqlite:///{db}"
    rng, clock = np.random.default_rng(3), [T0]
    # each minute's batch holds 4 aggregate rows (cohort "default" and "*", heads 0 and
    # "*") and no events: a bound of 8 rows keeps the newest two minutes
    c = AttentionCollector(url, model="m", version="v1", sample_rate=0.0, max_unsent_rows=8,
                           flush_interval_s=0.05, clock=lambda: clock[0])
    _run_minutes(c, clock, rng, range(6), written=False)
    assert [len(b.aggregates) for b in c._unsent] == [4, 4]
    st = c.stats
    assert st.accepted == 300 and st.dropped == 200 and st.written == 0
    db.parent.mkdir()
    migrate.upgrade(url)
    c.close()
    assert stored_n(url) == 100 == c.stats.written
    engine = make_engine(url)
    with engine.connect() as conn:
        minutes = {r[0].replace(tzinfo=None) for r in conn.execute(select(wa.c.bucket_start).distinct())}
    engine.dispose()
    assert minutes == {datetime.fromtimestamp(T0 + 60 * m, UTC).replace(tzinfo=None) for m in (4, 5)}


def test_closing_with_batches_the_store_never_took_counts_them_and_says_so(tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/missing/store.db"  # its directory never exists
    rng, clock = np.random.default_rng(4), [T0]
    c = AttentionCollector(url, model="m", version="v1", flush_interval_s=0.05, clock=lambda: clock[0])
    _run_minutes(c, clock, rng, range(2), written=False)
    c.close(timeout=5)
    assert c.stats.accepted == 100 == c.stats.dropped and c.stats.pending_batches == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("store write failed (StoreError: store at sqlite:///" in m and "does not exist" in m
               for m in messages)
    assert any("(100 requests) that could be neither written nor spilled" in m for m in messages)


def test_a_file_the_process_cannot_open_for_now_is_not_called_unreadable(tmp_path, monkeypatch):
    """Out of descriptors (EMFILE) is the process's state, not the file's: the file stays
    where it is, to be replayed at the next flush; EIO or a corrupt body moves it aside."""
    import errno
    import gzip

    import pytest

    from collectors.spill import SpillDir, UnreadableSpill

    sd = SpillDir(tmp_path / "spill")
    path = sd.path / "c-000000000001.json.gz"
    path.write_bytes(b"")
    for code, moved in ((errno.EMFILE, False), (errno.ENFILE, False), (errno.EIO, True)):
        def fail(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(gzip, "open", fail)
        with pytest.raises(UnreadableSpill if moved else OSError) as info:
            sd.load(path)
        assert isinstance(info.value, UnreadableSpill) is moved, code


def collector_before_the_upgrade(url, tmp_path, caplog):
    """A collector deployed before its store was upgraded (the README says: upgrade first):
    its writes fail on the missing column and are spilled, the log says what to run, and
    the upgrade lets everything through, counted once. (Run on PostgreSQL too.)"""
    import logging

    migrate.upgrade(url, "0005")  # before window_aggregates.minute_mask
    rng, clock = np.random.default_rng(9), [T0]
    caplog.set_level(logging.WARNING, "attnmon.collector")
    c = AttentionCollector(url, model="m", version="v1", spill_dir=tmp_path / "spill",
                           flush_interval_s=0.05, clock=lambda: clock[0])
    try:
        _run_minutes(c, clock, rng, range(2))
        assert c.stats.spilled == 100 and c.stats.written == 0
        assert "run `attnmon db upgrade`" in caplog.text
        migrate.upgrade(url)
        _run_minutes(c, clock, rng, range(2, 3))
        assert c.stats.written == 150
    finally:
        c.close()
    assert stored_n(url) == 150


def test_a_collector_newer_than_its_store_says_to_upgrade(tmp_path, caplog):
    collector_before_the_upgrade(f"sqlite:///{tmp_path / 'old.db'}", tmp_path, caplog)


def test_a_write_waiting_on_a_sqlite_lock_gives_up_after_write_timeout_s(sqlite_url, tmp_path):
    # another process holds SQLite's write lock (a long transaction, a backup): the write
    # fails after write_timeout_s and is spilled. make_engine's PRAGMA busy_timeout (10 s,
    # run on every connection) replaced the driver's timeout, so a write waited 10 s
    # whatever write_timeout_s said
    import sqlite3
    import time

    import numpy as np

    from collectors import AttentionCollector

    path = sqlite_url.removeprefix("sqlite:///")
    t0 = 1_800_000_000.0
    c = AttentionCollector(sqlite_url, model="m", version="v1", spill_dir=tmp_path / "spill",
                           write_timeout_s=0.5, clock=lambda: t0 + 3600)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock
        c.observe_batch(np.full((5, 4), 0.25, np.float32), timestamps=t0)
        started = time.monotonic()
        assert c.flush(timeout=30)
        took = time.monotonic() - started
        assert c.stats.spilled == 5 and c.stats.written == 0
        assert took < 5, took
    finally:
        holder.rollback()
        holder.close()
        c.close()
    assert c.stats.written == 5  # replayed at close, once the lock was released


def test_a_batch_sqlite_refuses_is_set_aside_and_the_rest_goes_on(sqlite_url, tmp_path):
    # (tests/postgres/test_collector_pg.py has the PostgreSQL one, with a CHECK constraint)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER attnmon_test_no_poison BEFORE INSERT ON window_aggregates "
                             "WHEN NEW.cohort = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END")
    engine.dispose()
    rng, clock = np.random.default_rng(11), [T0]
    c = AttentionCollector(sqlite_url, model="m", version="v1", flush_interval_s=0.05, sample_rate=0.0,
                           clock=lambda: clock[0])  # no spill_dir: set aside means dropped
    try:
        c.observe_batch(dirichlet(rng, (20,), 8), cohorts="poison", timestamps=T0)
        assert c.flush()
        c.observe_batch(dirichlet(rng, (20,), 8), cohorts="web", timestamps=T0 + 60)
        assert c.flush()
    finally:
        c.close()
    assert c.stats.written == 20 and c.stats.dropped == 20
    assert stored_n(sqlite_url, cohort="web") == 20


def test_a_batch_whose_raw_events_sqlite_refuses_keeps_its_deployment_row(sqlite_url, tmp_path):
    """A new version's first batch, refused for one raw event, is written without its raw
    events but with its deployment row: that row is never sent again, and the baselines
    (previous_version) need it."""
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER attnmon_test_no_poison BEFORE INSERT ON attention_events "
                             "WHEN NEW.request_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END")
    rng = np.random.default_rng(12)
    c = AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=1.0, clock=lambda: T0 + 3600)
    try:
        c.observe_batch(dirichlet(rng, (20,), 8), request_ids=["poison", *map(str, range(19))], timestamps=T0)
        assert c.flush()
    finally:
        c.close()
    assert c.stats.written == 20 and c.stats.dropped == 0
    assert stored_n(sqlite_url) == 20
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.attention_events)).scalar_one() == 0
        assert conn.execute(select(tables.deployments.c.version)).scalars().all() == ["v1"]
    engine.dispose()


def test_spill_files_and_the_dirs_it_makes_are_private_to_the_collector_user(tmp_path):
    """A spill file holds raw events (users' histories, request ids): under the usual
    umask 022 it must not be readable by other users of the host, nor a file moved to bad/."""
    import dataclasses
    import stat

    from collectors.spill import SpillDir
    from monitor.store.writer import FlushBatch

    old = os.umask(0o022)
    try:
        sd = SpillDir(tmp_path / "spool" / "attnmon")
        batch = FlushBatch(collector_id="c", batch_seq=1, written_at=datetime.now(UTC), deployments=[],
                           aggregates=[], events=[{"item_ids": ["a", "b"]}], health=[], n_requests=1)
        path = sd.put(batch)
        moved = sd.quarantine(sd.put(dataclasses.replace(batch, batch_seq=2)))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(path) == 0o600 and mode(moved) == 0o600
    assert mode(sd.path) == 0o700 and mode(moved.parent) == 0o700


def test_collectors_of_two_stores_sharing_a_spill_dir_replay_only_their_own(tmp_path):
    """Staging and production on one host, one spill_dir, both stores down: each store,
    once back, gets exactly its own collector's predictions and none of the other's."""
    spill, clock, rng = tmp_path / "spill", [T0], np.random.default_rng(8)
    urls = [f"sqlite:///{tmp_path / name / 'store.db'}" for name in ("a", "b")]  # no folders: down
    a, b = (AttentionCollector(u, model="m", version="v1", sample_rate=0.0, spill_dir=spill,
                               clock=lambda: clock[0]) for u in urls)
    _run_minutes(a, clock, rng, [0, 1], per_minute=30)
    _run_minutes(b, clock, rng, [0, 1], per_minute=70)
    assert a.stats.spilled == 60 and b.stats.spilled == 140
    (tmp_path / "a").mkdir()
    migrate.upgrade(urls[0])
    a.close()
    assert stored_n(urls[0]) == 60 == a.stats.written
    assert sum(1 for _ in spill.rglob("*.json.gz")) >= 2  # b's batches wait for b's store
    (tmp_path / "b").mkdir()
    migrate.upgrade(urls[1])
    b.close()
    assert stored_n(urls[1]) == 140 == b.stats.written
    assert list(spill.rglob("*.json.gz")) == []


def test_spill_files_of_an_older_release_at_the_top_level_are_still_replayed(sqlite_url, tmp_path):
    from collectors.spill import SpillDir

    spill, clock, rng = tmp_path / "spill", [T0], np.random.default_rng(9)
    down = f"sqlite:///{tmp_path / 'none' / 'store.db'}"
    old = AttentionCollector(down, model="m", version="v1", sample_rate=0.0, clock=lambda: clock[0])
    _run_minutes(old, clock, rng, [0], per_minute=40, written=False)
    legacy = SpillDir(spill)  # no store named: where a release before store folders wrote
    for batch in old._unsent:
        legacy.put(batch)
    old._unsent.clear()
    old.close()
    assert len(list(spill.glob("*.json.gz"))) == 1
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, spill_dir=spill,
                            clock=lambda: clock[0]) as c:
        assert c.flush()
    assert stored_n(sqlite_url) == 40
    assert list(spill.rglob("*.json.gz")) == []


def test_one_store_spelled_two_ways_has_one_spill_folder(tmp_path, monkeypatch):
    from collectors.spill import store_folder

    pg = "postgresql+psycopg://postgres:secret@DB.example:5432/attnmon"
    assert store_folder(pg) == store_folder("postgresql://reader@db.example/attnmon?sslmode=require")
    assert store_folder(pg) != store_folder("postgresql://postgres@db.example:5432/other")
    assert store_folder(pg) != store_folder("postgresql://postgres@db.example:6432/attnmon")
    monkeypatch.chdir(tmp_path)
    assert store_folder("sqlite:///attnmon.db") == store_folder(f"sqlite:///{tmp_path}/attnmon.db")
    assert store_folder("sqlite:///attnmon.db") != store_folder(f"sqlite:///{tmp_path}/other.db")
    assert "secret" not in store_folder(pg)


def test_a_store_folder_that_cannot_be_made_yet_keeps_batches_in_memory(tmp_path, monkeypatch):
    """A full disk (or a read-only spill_dir) when a collector of a new store starts, or
    the first start after an upgrade to store folders: the collector starts, keeps its
    batches in memory as for any spill_dir it cannot write, and spills once it can."""
    import errno
    from pathlib import Path

    db = tmp_path / "later" / "store.db"  # the store is down
    url = f"sqlite:///{db}"
    spill = tmp_path / "spill"
    spill.mkdir()
    mkdir = Path.mkdir

    def full(self, *args, **kwargs):
        if self.parent == spill:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    rng, clock = np.random.default_rng(12), [T0]
    c = AttentionCollector(url, model="m", version="v1", spill_dir=spill, sample_rate=0.0,
                           flush_interval_s=0.05, clock=lambda: clock[0])
    _run_minutes(c, clock, rng, range(2), written=False)
    assert c.stats.spilled == 0 and sum(b.n_requests for b in c._unsent) == 100
    monkeypatch.setattr(Path, "mkdir", mkdir)  # room again
    _run_minutes(c, clock, rng, [2])
    assert c.stats.spilled == 150 and not c._unsent
    assert (c._spill.path / "STORE").exists()
    db.parent.mkdir()
    migrate.upgrade(url)
    c.close()
    assert stored_n(url) == 150 == c.stats.written


@pytest.mark.parametrize("relative", ["sqlite:///attnmon.db", "sqlite:///file:attnmon.db?mode=rw&uri=true"])
def test_relative_paths_are_those_of_the_folder_it_was_made_in(sqlite_url, tmp_path, monkeypatch, relative):
    """The store's file and spill_dir are read when the collector is made (its spill
    folder is named then); a serving process that changes its folder before the first
    write (a daemon's chdir('/')) must not write to a new, empty store file there."""
    monkeypatch.chdir(tmp_path)
    rng, clock = np.random.default_rng(13), [T0]
    c = AttentionCollector(relative, model="m", version="v1", sample_rate=0.0, spill_dir="spill",
                           flush_interval_s=0.05, clock=lambda: clock[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _run_minutes(c, clock, rng, [0])
    c.close()
    assert stored_n(sqlite_url) == 50 == c.stats.written
    assert list(elsewhere.iterdir()) == []
