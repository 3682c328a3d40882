"""A leader whose lock session ended before it noticed (a frozen host waking up, a
partition healing) must not run jobs beside the daemon that took the lead over."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError
from test_daemon_pg import at, produce

from monitor.config import Config
from monitor.daemon import Daemon, read_watermark, write_watermark
from monitor.leadership import SILENT_LEASES
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


# -- a leader frozen with its connection open (SIGSTOP, a hung process) ------------------


def heartbeat(url: str) -> tuple[str, float] | None:
    """The lead.heartbeat row: its value and its age in seconds (the server's clock)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT value, extract(epoch FROM clock_timestamp() - updated_at) "
                                    "FROM daemon_state WHERE key = 'lead.heartbeat'")).first()
    finally:
        engine.dispose()
    return (row[0], float(row[1])) if row else None


def silence(url: str, seconds: float, value: str | None = None) -> None:
    """Make the heartbeat `seconds` old, as a leader frozen that long leaves it."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE daemon_state SET updated_at = clock_timestamp() - make_interval(secs => :s), "
                              "value = coalesce(:v, value) WHERE key = 'lead.heartbeat'"), {"s": seconds, "v": value})
    finally:
        engine.dispose()


def lock_pid(daemon: Daemon) -> int:
    return daemon._leadership._conn.execute(text("SELECT pg_backend_pid()")).scalar()


FROZEN_LEASE_S = 1.0


def frozen_config(url: str, **daemon: object) -> Config:
    """A short lease, for a leader that never beats after taking the lock: its lease thread
    is never started and it runs no job, so its sessions sit idle (or idle in transaction)
    with the server, as a SIGSTOPped daemon's do. (A backdated heartbeat alone is not a
    freeze: the follower also looks at the sessions.)"""
    return Config.model_validate({"store_url": url, "evaluate": {"min_samples": 5},
                                  "daemon": {"listen": "127.0.0.1:0", "lease_s": FROZEN_LEASE_S, **daemon}})


def take_over(follower: Daemon, within_s: float = 30) -> None:
    """The follower tries to lead, as its lease thread does, until it has ended the frozen
    leader and leads: about SILENT_LEASES x lease_s."""
    deadline = time.monotonic() + within_s
    while not follower.acquire():
        assert time.monotonic() < deadline, "the follower did not take the frozen leader's lead"
        time.sleep(0.1)


def test_the_leader_beats_with_its_lock_and_at_each_check(pg_clean_url):
    with Daemon(config(pg_clean_url)) as a:
        assert heartbeat(pg_clean_url) is None
        assert a.acquire()
        value, age = heartbeat(pg_clean_url)
        assert value.split() == [str(lock_pid(a)), a.id] and age < 5
        assert a.id.startswith(f"{os.getpid()}-") and a.id.endswith(f"@{socket.gethostname()}")
        silence(pg_clean_url, 100)
        assert a._still_leading()  # before each job, window and group, and every lease_s
        assert heartbeat(pg_clean_url)[1] < 5


def test_a_follower_ends_a_silent_leaders_session_and_it_runs_no_job(pg_clean_url, caplog):
    produce(pg_clean_url)
    with Daemon(frozen_config(pg_clean_url)) as a, Daemon(frozen_config(pg_clean_url)) as b:
        assert a.acquire() and not b.acquire()
        old = lock_pid(a)
        assert not b.acquire()  # not yet silent 3 x lease_s
        take_over(b)  # a stays frozen
        assert b.is_leader
        assert f"the leader (server process {old}) has not beaten for " in caplog.text
        assert heartbeat(pg_clean_url)[0].split()[0] == str(lock_pid(b))
        # the frozen leader wakes: its dead connection says at once that it leads no more
        for job in a.jobs:
            assert a.run_job(job, at(30)) is None, job
        assert not a.is_leader and read_watermark(a.engine) is None
        assert b.run_job("evaluate", at(30)).ok



def test_a_stale_beat_of_a_leader_whose_session_just_ran_ends_nothing(pg_clean_url, caplog):
    """The heartbeat is old but the leader's lock session ran a statement a moment ago: it
    is kept from beating (a lock), not frozen."""
    with Daemon(config(pg_clean_url)) as a, Daemon(config(pg_clean_url)) as b:
        assert a.acquire()
        silence(pg_clean_url, 10_000)
        assert not b.acquire() and not b.acquire()
        assert a._still_leading() and not b.is_leader
    told = [r.getMessage() for r in caplog.records if "is not frozen" in r.getMessage()]
    assert len(told) == 1 and "none now" in told[0], told


@pytest.mark.parametrize(("named", "host"), [("", None), ("&application_name=recs-monitor", None),
                                             ("", "récos-ü.example")])
def test_a_transaction_the_silent_leader_was_frozen_in_is_rolled_back_not_waited_for(pg_clean_url, named, host,
                                                                                       monkeypatch):
    """Its job sessions are ended too: a row it locked does not hold up the new leader
    (for lock_timeout_s, on every try while it stays frozen), and what it had not
    committed is never committed when it wakes. Also with a URL that names its sessions:
    the daemon's own name is how a follower finds them; and on a host named in other
    letters than ASCII's, which PostgreSQL turns to '?' (before 16) or '\\xNN' in a name."""
    if host:
        monkeypatch.setattr(socket, "gethostname", lambda: host)
    cfg = frozen_config(pg_clean_url + named, lock_timeout_s=2)
    with Daemon(cfg) as a, Daemon(cfg) as b:
        assert a.acquire()
        write_watermark(a.engine, at(20))
        with a.engine.connect() as frozen:
            tx = frozen.begin()
            frozen.execute(text("UPDATE daemon_state SET value = :v WHERE key = 'evaluate.watermark'"),
                           {"v": at(25).isoformat(timespec="seconds")})
            try:
                take_over(b)  # a stays frozen in its transaction
                write_watermark(b.engine, at(21))  # not held up by a's row lock
                with pytest.raises(OperationalError):
                    tx.commit()  # a wakes: its transaction is gone
            finally:
                frozen.invalidate()
        assert read_watermark(b.engine) == at(21)


def test_a_frozen_leaders_session_waiting_on_its_own_lock_still_reads_as_frozen(pg_clean_url):
    """Two of its jobs froze, one waiting for a row the other holds (lock_timeout_s 0:
    it waits for ever). That wait is on itself, not a sign of life: it is taken over."""
    cfg = frozen_config(pg_clean_url, lock_timeout_s=0)
    update = text("UPDATE daemon_state SET value = 'x' WHERE key = 'evaluate.watermark'")
    with Daemon(cfg) as a, Daemon(cfg) as b:
        assert a.acquire()
        write_watermark(a.engine, at(20))
        waited: list[BaseException] = []

        def wait_for_the_row() -> None:
            try:
                with a.engine.connect() as second:
                    second.execute(update)
            except BaseException as exc:  # ended by the new leader
                waited.append(exc)

        with a.engine.connect() as first:
            first.begin()
            first.execute(update)
            waiter = threading.Thread(target=wait_for_the_row)
            waiter.start()
            try:
                # the second job waits on the row before the takeover, as in the case told
                # (a slow thread start would otherwise find the row free after it)
                holder = first.connection.driver_connection.info.backend_pid
                look = make_engine(pg_clean_url)
                deadline = time.monotonic() + 30
                while True:
                    with look.connect() as conn:  # (a transaction each: pg_stat_activity is read afresh)
                        if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                             "AND :holder = ANY(pg_blocking_pids(pid))"), {"holder": holder}).scalar():
                            break
                    assert time.monotonic() < deadline, "the second job never waited on the row"
                    time.sleep(0.05)
                look.dispose()
                take_over(b)
                waiter.join(30)
                assert not waiter.is_alive() and isinstance(waited[0], OperationalError), waited
            finally:
                first.invalidate()
        assert read_watermark(b.engine) == at(20)


def test_a_locked_daemon_state_neither_stops_the_lead_nor_reads_as_a_store_down(pg_clean_url):
    """An operator's transaction holds daemon_state: the beat waits a second at most; the
    lead is still taken and kept, and a follower just follows."""
    holder = make_engine(pg_clean_url)
    with Daemon(config(pg_clean_url)) as a, Daemon(config(pg_clean_url)) as b, holder.connect() as conn:
        conn.execute(text("LOCK TABLE daemon_state IN ACCESS EXCLUSIVE MODE"))
        t0 = time.monotonic()
        assert a.acquire() and a._still_leading()
        assert not b.acquire() and b.health()[1]["status"] != "store_unreachable"
        assert time.monotonic() - t0 < 10
        conn.rollback()
        assert a._still_leading() and heartbeat(pg_clean_url)[0].split()[1] == a.id
    holder.dispose()

def test_a_stale_beat_that_is_not_the_holders_ends_nothing(pg_clean_url):
    # an earlier leader's beat, as when a daemon of a release before heartbeats leads
    with Daemon(config(pg_clean_url)) as a, Daemon(config(pg_clean_url)) as b:
        assert a.acquire()
        silence(pg_clean_url, 10_000, value="1 elsewhere:1")
        assert not b.acquire()
        assert a._still_leading() and not b.is_leader


@pytest.fixture
def plain_role(pg_clean_url):
    """A URL on the store for a role that is neither a superuser nor pg_signal_backend."""
    role = f"attnmon_plain_{uuid.uuid4().hex[:8]}"
    url = make_url(pg_clean_url)
    schema = url.query["options"].split("search_path=")[1].split()[0]
    admin = make_engine(pg_clean_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
    try:
        yield url.set(username=role).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_a_follower_that_may_not_see_the_leaders_sessions_says_so_once_and_follows(pg_clean_url, plain_role,
                                                                                 caplog):
    """Blocked or frozen cannot be told apart: ending it could end a live leader, so the
    lead stays with it (as when the follower may not end it) and the follower says why."""
    with Daemon(config(pg_clean_url)) as a, Daemon(config(plain_role)) as b:
        assert a.acquire()  # as postgres: pg_stat_activity hides its state from b
        silence(pg_clean_url, 10_000)
        with caplog.at_level(logging.ERROR, "attnmon.daemon"):
            assert not b.acquire() and not b.acquire()
        told = [r.getMessage() for r in caplog.records if "may not see whether" in r.getMessage()]
        assert len(told) == 1, told
        assert f"server process {lock_pid(a)}" in told[0] and "pg_read_all_stats" in told[0]
        assert a._still_leading() and not b.is_leader


def test_a_follower_not_allowed_to_end_the_session_says_so_once_and_follows(pg_clean_url, plain_role, caplog):
    admin = make_engine(pg_clean_url)
    with admin.begin() as conn:  # it sees the leader's sessions, but may not end them
        conn.execute(text(f'GRANT pg_read_all_stats TO "{make_url(plain_role).username}"'))
    admin.dispose()
    with Daemon(frozen_config(pg_clean_url)) as a, Daemon(frozen_config(plain_role)) as b:
        assert a.acquire()  # as postgres: only a superuser may end its session
        pid = lock_pid(a)
        deadline = time.monotonic() + 30
        with caplog.at_level(logging.ERROR, "attnmon.daemon"):
            while "may not end its session" not in caplog.text:  # once a is silent 3 x lease_s
                assert not b.acquire() and time.monotonic() < deadline
                time.sleep(0.1)
            assert not b.acquire()
        told = [r.getMessage() for r in caplog.records if "may not end its session" in r.getMessage()]
        assert len(told) == 1, told
        assert f"server process {pid}" in told[0] and "pg_signal_backend" in told[0]
        assert a._still_leading() and not b.is_leader


def test_a_slow_leader_under_load_is_never_ended(pg_clean_url, caplog):
    """A leader busy in a long job (here, holding the CPU 10 x the silence bound) still
    beats from its lease thread: the follower beside it never takes over."""
    lease_s = 0.2
    cfg = Config.model_validate({"store_url": pg_clean_url, "evaluate": {"min_samples": 5},
                                 "daemon": {"listen": "127.0.0.1:0", "lease_s": lease_s}})
    busy_s = 10 * SILENT_LEASES * lease_s
    done = threading.Event()

    def long_job(_engine, _now) -> None:
        if done.is_set():
            return
        end = time.monotonic() + busy_s
        while time.monotonic() < end:
            sum(range(1000))  # Python bytecode, holding the GIL as a busy job does
        done.set()

    with Daemon(cfg, deliver_hooks=[long_job]) as a, Daemon(cfg) as b:
        a.start()
        assert a.is_leader
        b.start()
        old = lock_pid(a)
        deadline = time.monotonic() + busy_s + 30
        while not done.is_set():
            assert not b.is_leader and a.is_leader
            assert time.monotonic() < deadline, "the long job did not end"
            time.sleep(0.05)
        time.sleep(2 * lease_s)
        assert a.is_leader and not b.is_leader and lock_pid(a) == old
    assert "ended its session" not in caplog.text and "lost the lead" not in caplog.text


def test_a_leader_finishing_its_job_on_shutdown_beats_until_it_gives_the_lead_back(pg_clean_url, caplog):
    """SIGTERM lets the running job finish (maintain's retention can take minutes): the
    leader beats meanwhile, so a follower does not take it for frozen and end the job's
    session halfway (rolled back, done again; a notification sent but not marked, sent
    twice). Once the lead is given back, the follower takes it."""
    lease_s = 0.2
    cfg = Config.model_validate({"store_url": pg_clean_url, "daemon": {"listen": "127.0.0.1:0", "lease_s": lease_s}})
    busy_s = 10 * SILENT_LEASES * lease_s
    started, finished = threading.Event(), threading.Event()

    def long_job(engine, _now) -> None:
        if started.is_set():
            return
        started.set()
        with engine.connect() as conn:  # a job session: the one a follower would end
            conn.execute(text("SELECT pg_sleep(:s)"), {"s": busy_s})
        finished.set()

    with Daemon(cfg, deliver_hooks=[long_job]) as a, Daemon(cfg) as b:
        a.start()
        assert a.is_leader
        b.start()
        assert started.wait(30), "the deliver job did not start"
        a.stop()  # what SIGTERM does: waits for the running job
        assert finished.is_set(), "the job's session was ended"
        assert not a.is_leader
        deadline = time.monotonic() + 30
        while not b.is_leader:
            assert time.monotonic() < deadline, "the follower did not take the lead given back"
            time.sleep(0.05)
    assert "ended its session" not in caplog.text


OPERATOR_LOCKS = {
    "share mode": "LOCK TABLE daemon_state IN SHARE MODE",
    "heartbeat row for update": "SELECT * FROM daemon_state WHERE key = 'lead.heartbeat' FOR UPDATE",
}


@pytest.mark.parametrize("lock", OPERATOR_LOCKS.values(), ids=OPERATOR_LOCKS.keys())
def test_a_leader_kept_from_beating_by_an_operators_lock_is_not_ended(pg_clean_url, lock, caplog):
    """An operator's transaction left open in psql holds daemon_state past 3 x lease_s:
    the heartbeat goes stale, but the leader's sessions keep trying (they are blocked,
    not frozen), so the follower leaves it the lead and says what holds the table."""
    lease_s = 1.0
    cfg = Config.model_validate({"store_url": pg_clean_url,
                                 "daemon": {"listen": "127.0.0.1:0", "lease_s": lease_s}})
    silent_s = SILENT_LEASES * lease_s
    operator = make_engine(pg_clean_url)
    with Daemon(cfg) as a, Daemon(cfg) as b, operator.connect() as conn:
        a.start()
        assert a.is_leader
        b.start()
        old = lock_pid(a)
        operator_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        conn.execute(text(lock))  # and left open
        held = time.monotonic()
        while time.monotonic() - held < 2 * silent_s or heartbeat(pg_clean_url)[1] <= silent_s + lease_s:
            assert a.is_leader and not b.is_leader
            assert time.monotonic() - held < 60, "the heartbeat did not go stale"
            time.sleep(0.05)
        conn.rollback()
        released = time.monotonic()
        while heartbeat(pg_clean_url)[1] > lease_s:  # it beats again
            assert time.monotonic() - released < 30, "the leader did not beat again"
            time.sleep(0.05)
        assert a.is_leader and not b.is_leader and lock_pid(a) == old
    operator.dispose()
    assert "ended its session" not in caplog.text and "lost the lead" not in caplog.text
    told = [r.getMessage() for r in caplog.records if "is not frozen" in r.getMessage()]
    assert len(told) == 1, told
    assert f"server process {old}" in told[0] and str(operator_pid) in told[0]
