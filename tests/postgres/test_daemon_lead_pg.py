"""A leader whose lock session ended before it noticed (a frozen host waking up, a
partition healing) must not run jobs beside the daemon that took the lead over."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import text
from test_daemon_pg import at, produce

from monitor.config import Config
from monitor.daemon import Daemon, read_watermark, write_watermark
from monitor.store import make_engine


def config(url: str) -> Config:
    # lease_s long: the lease thread never runs here; only the jobs' own checks can notice
    return Config.model_validate({"store_url": url, "evaluate": {"min_samples": 5},
                                  "daemon": {"listen": "127.0.0.1:0", "lease_s": 600}})


def end_lock_session(leader: Daemon, other: Daemon, url: str) -> None:
    """What PostgreSQL does when a leader's keepalives go unanswered: it ends the lock's
    session, and `other` takes the lead. `leader` is not told."""
    pid = leader._leadership._conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = make_engine(url)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        admin.dispose()
    deadline = time.monotonic() + 10
    while not other.acquire():  # the lock is freed once that backend has exited
        assert time.monotonic() < deadline, "the lock was not freed"
        time.sleep(0.05)


def test_a_leader_that_lost_its_lock_unnoticed_runs_no_job(pg_clean_url):
    produce(pg_clean_url)
    with Daemon(config(pg_clean_url)) as a, Daemon(config(pg_clean_url)) as b:
        assert a.acquire() and not b.acquire()
        end_lock_session(a, b, pg_clean_url)
        for job in a.jobs:
            assert a.run_job(job, at(30)) is None, job
        assert not a.is_leader and b.is_leader
        assert read_watermark(a.engine) is None  # a evaluated nothing
        assert b.run_job("evaluate", at(30)).ok


def test_a_catch_up_stops_once_the_lock_is_lost_mid_job(pg_clean_url):
    produce(pg_clean_url)
    engine = make_engine(pg_clean_url)
    write_watermark(engine, at(20))
    engine.dispose()
    with Daemon(config(pg_clean_url)) as a, Daemon(config(pg_clean_url)) as b:
        assert a.acquire() and not b.acquire()

        def lose_the_lead_after_the_first_window(_engine, _result) -> None:
            if a.is_leader and not b.is_leader:
                end_lock_session(a, b, pg_clean_url)

        a.cycle_hooks.append(lose_the_lead_after_the_first_window)
        run = a.run_job("evaluate", at(30))
        assert run is not None and run.ok
        assert [w.window_end for w in run.result.windows] == [at(21)] and not run.result.complete
        assert not a.is_leader
        assert read_watermark(a.engine) == at(21)
        # the new leader goes on from there, each window once
        assert [w.window_end for w in b.run_job("evaluate", at(30)).result.windows] == [
            at(21) + timedelta(minutes=i) for i in range(1, 9)]
