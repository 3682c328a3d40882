"""/livez and a stuck leader: a job with no step of progress for `stuck_after_s` is
"stuck" (503), so that a liveness probe restarts the leader and a follower takes over;
a long catch-up or a long maintenance run that makes steps is not.

Progress time is the daemon's `monotonic` (a fake one here); the jobs run in a thread
while the test reads /livez.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import event

from alerts.config import AlertsConfig
from collectors import AttentionCollector
from monitor.config import Config, DaemonConfig
from monitor.daemon import Daemon
from monitor.store import maintenance, make_engine
from tests.alerting import FakeReceiver
from tests.test_daemon import T0, _get, at, config, minutes, produce


@pytest.fixture
def store(sqlite_url: str) -> str:
    produce(sqlite_url)
    return sqlite_url


def test_the_stuck_bound_comes_from_the_jobs_timeouts_unless_set():
    assert DaemonConfig().stuck_bound_s() == 2 * (900 + 60)  # 32 minutes at the defaults
    assert DaemonConfig(statement_timeout_s=30, lock_timeout_s=5).stuck_bound_s() == 70
    # a statement may run for ever: a long one cannot be told from a stuck one
    assert DaemonConfig(statement_timeout_s=0).stuck_bound_s() is None
    # PostgreSQL counts a statement's lock waits in its statement_timeout: with no
    # lock_timeout each statement is still bounded, so /livez still tells a stuck job
    assert DaemonConfig(lock_timeout_s=0).stuck_bound_s() == 2 * 900
    assert DaemonConfig(stuck_after_s=120, statement_timeout_s=0).stuck_bound_s() == 120
    assert DaemonConfig(stuck_after_s=0).stuck_bound_s() is None  # never
    with pytest.raises(ValueError, match="stuck_after_s"):
        Config(daemon={"stuck_after_s": -1})


def test_livez_is_503_stuck_when_a_job_makes_no_progress_for_stuck_after_s(store):
    clock = [1000.0]
    entered, release = threading.Event(), threading.Event()

    def hang(_engine, _result) -> None:  # an evaluation that never returns
        entered.set()
        release.wait(30)

    with Daemon(config(store, stuck_after_s=600), clock=lambda: at(20), monotonic=lambda: clock[0]) as daemon:
        daemon.cycle_hooks.insert(0, hang)
        daemon.listen()
        assert daemon.acquire()
        job = threading.Thread(target=daemon.run_job, args=("evaluate",), daemon=True)
        job.start()
        try:
            assert entered.wait(30)
            base = f"http://127.0.0.1:{daemon.http_port}"
            clock[0] += 600
            assert _get(f"{base}/livez") == (200, {"status": "alive", "leader": True})
            clock[0] += 1
            code, body = _get(f"{base}/livez")
            assert code == 503 and body["status"] == "stuck" and body["leader"] is True
            assert body["stuck"] == {"job": "evaluate", "running_s": 601.0, "since_progress_s": 601.0,
                                     "stuck_after_s": 600.0}
        finally:
            release.set()
            job.join(30)
        assert _get(f"{base}/livez") == (200, {"status": "alive", "leader": True})  # it ended


def test_a_stuck_job_is_logged_once_by_the_lease_thread(store, caplog):
    clock = [0.0]
    entered, release = threading.Event(), threading.Event()

    def hang(_engine, _now) -> None:
        entered.set()
        release.wait(30)

    with Daemon(config(store, stuck_after_s=60), clock=lambda: at(20), monotonic=lambda: clock[0],
                deliver_hooks=[hang]) as daemon:
        assert daemon.acquire()
        job = threading.Thread(target=daemon.run_job, args=("deliver",), daemon=True)
        job.start()
        try:
            assert entered.wait(30)
            with caplog.at_level("ERROR", "attnmon.daemon"):
                daemon._tell_stuck()
                clock[0] = 61
                daemon._tell_stuck()
                daemon._tell_stuck()
        finally:
            release.set()
            job.join(30)
    told = [r.getMessage() for r in caplog.records if "is stuck" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("job deliver has made no progress for 61s")


def test_a_long_catch_up_that_makes_progress_is_never_stuck(store):
    """Forty missed windows, each taking half of stuck_after_s: the run takes twenty
    times the bound, but each window is a step."""
    clock = [0.0]
    seen = []
    now = [at(20)]

    def slow_window(_engine, _result) -> None:
        clock[0] += 300
        seen.append(daemon.alive())

    with Daemon(config(store, stuck_after_s=600), clock=lambda: now[0], monotonic=lambda: clock[0]) as daemon:
        daemon.tick()
        daemon.cycle_hooks.append(slow_window)
        now[0] = at(60)
        catch_up = daemon.tick()["evaluate"].result
    assert [w.window_end for w in catch_up.windows] == minutes(20, 59)
    assert clock[0] == 20 * 600
    assert seen and all(code == 200 and body["status"] == "alive" for code, body in seen)


def test_a_long_maintenance_run_that_makes_progress_is_never_stuck(store, monkeypatch):
    """Each merge chunk, span of bands and retention delete is a step: maintenance over
    weeks of rows to roll up is long but never stuck."""
    clock = [0.0]
    seen = []
    real = maintenance._merge_chunk

    def slow_chunk(*args, **kwargs):
        clock[0] += 300
        seen.append(daemon.alive())
        return real(*args, **kwargs)

    monkeypatch.setattr(maintenance, "_merge_chunk", slow_chunk)
    # chunks of one bucket: the store's 50 minutes of rows roll up in dozens of steps
    monkeypatch.setattr(maintenance.merge_buckets, "__kwdefaults__",
                        {**maintenance.merge_buckets.__kwdefaults__, "chunk": 1})
    with Daemon(config(store, stuck_after_s=600), clock=lambda: at(20) + timedelta(days=10),
                monotonic=lambda: clock[0]) as daemon:
        assert daemon.acquire()
        run = daemon.run_job("maintain")
    assert run.ok and run.result.maintenance.merged_groups > 0
    assert len(seen) > 4 and clock[0] > 2 * 600
    assert all(code == 200 for code, _ in seen)


def test_a_follower_and_an_idle_leader_are_never_stuck(store):
    clock = [0.0]
    with Daemon(config(store, stuck_after_s=1), clock=lambda: at(20), monotonic=lambda: clock[0]) as daemon:
        clock[0] = 1e6
        assert daemon.alive() == (200, {"status": "alive", "leader": False})
        daemon.tick()
        clock[0] = 2e6
        assert daemon.alive() == (200, {"status": "alive", "leader": True})


def test_no_bound_no_stuck(store):
    with Daemon(config(store, stuck_after_s=0), clock=lambda: at(20), monotonic=time.monotonic) as daemon:
        assert daemon.stuck_after_s is None and daemon.stuck() is None


def _one_version(url: str, spans: tuple[tuple[int, int], ...]) -> None:
    """v1 of model "m" alone (trailing baselines), 20 vectors in each minute of `spans`."""
    rng = np.random.default_rng(1)
    with AttentionCollector(url, model="m", version="v1", sample_rate=0, clock=lambda: T0 + 200_000) as c:
        for first, last in spans:
            for minute in range(first, last):
                w = rng.dirichlet(np.ones(10), size=(20, 2)).astype(np.float32)
                c.observe_batch(w, cohorts="web", timestamps=T0 + 60 * minute + 5)


def test_a_first_window_that_builds_a_day_of_baselines_is_never_stuck(sqlite_url):
    """The first window of a store with a day of history builds its trailing baseline's
    24 hour partials, each a few statements. Here each statement takes half a minute
    of a slow store (well within its 15-minute statement_timeout_s) and stuck_after_s is
    ten minutes: each hour partial is a step, so the window, an hour long, is not stuck.
    (A window's other steps, its reading and its alert rules, are a dozen statements.)"""
    _one_version(sqlite_url, ((0, 30), (1500, 1530)))
    clock = [0.0]
    seen = []
    engine = make_engine(sqlite_url)

    @event.listens_for(engine, "before_cursor_execute")
    def a_slow_statement(*_args) -> None:
        clock[0] += 30
        seen.append(daemon.stuck())

    try:
        with Daemon(config(sqlite_url, stuck_after_s=600), engine=engine, clock=lambda: at(1530),
                    monotonic=lambda: clock[0]) as daemon:
            assert daemon.acquire()
            run = daemon.run_job("evaluate")
    finally:
        engine.dispose()
    assert run.ok and run.result.windows[0].written > 0
    assert run.result.windows[0].versions == (("m", "v1"),)
    assert len(seen) > 60  # the day of hour partials was built in this window
    assert [s for s in seen if s is not None] == []


class _SlowAlertmanager(FakeReceiver):
    """An Alertmanager receiver whose every post takes `each_s` (of the daemon's monotonic)."""

    def __init__(self, clock: list[float], each_s: float, seen: list):
        super().__init__("am")
        self.clock, self.each_s, self.seen, self.daemon = clock, each_s, seen, None
        self.resent = 0

    def send(self, notification) -> None:
        self.clock[0] += self.each_s
        super().send(notification)

    def resend(self, alerts, external_url=None, *, keep_for_s=None) -> None:
        self.clock[0] += self.each_s
        self.resent += 1
        self.seen.append(self.daemon.stuck())


def test_re_sending_many_firing_groups_to_a_slow_alertmanager_is_never_stuck(store):
    """Each firing group re-sent to Alertmanager is a step of the deliver job, as each group
    sent is: four groups whose posts take 200 s each (well within their deadline) are 800 s,
    longer than stuck_after_s, but no one of them is."""
    clock = [0.0]
    seen: list = []
    am = _SlowAlertmanager(clock, 200, seen)
    cfg = config(store, stuck_after_s=600)
    cfg = cfg.model_copy(update={"alerts": AlertsConfig(
        receivers=[{"name": "am", "alertmanager": {"url": "http://127.0.0.1:9", "resend_interval_s": 60,
                                                   "timeout_s": 100}}],
        route={"receiver": "am", "group_by": ["alertname", "model", "version", "cohort", "layer", "head"]})})
    now = [at(20)]
    with Daemon(cfg, clock=lambda: now[0], monotonic=lambda: clock[0], receivers={"am": am}) as daemon:
        am.daemon = daemon
        for minute in range(20, 36):
            now[0] = at(minute)
            daemon.tick()
    assert len(am.sent) >= 4 and am.resent >= 4 * 4  # four firing groups, re-sent each minute
    assert [s for s in seen if s is not None] == []


def test_on_sqlite_the_same_bound_holds(store):
    """Decided: statement timeouts do not bind SQLite, yet a SQLite daemon hung on a lock in
    its process must be restarted too, and a SQLite store's steps take seconds."""
    with Daemon(config(store), clock=lambda: at(20)) as daemon:
        assert daemon.stuck_after_s == 2 * (daemon.config.daemon.statement_timeout_s
                                            + daemon.config.daemon.lock_timeout_s)
