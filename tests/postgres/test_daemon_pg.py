"""The daemon on a real PostgreSQL: one leader among several, takeover, the store going away.

The daemons are real `attnmon run` processes in simulated time running 60 times faster
than real time (ATTNMON_FAKE_NOW="... x60"), so a new window ends about every second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml
from sqlalchemy import func, select, text

from collectors import AttentionCollector
from monitor.config import Config
from monitor.daemon import Daemon, read_watermark, write_watermark
from monitor.leadership import SILENT_LEASES
from monitor.store import make_engine, tables

T0 = 1_800_000_000.0  # an hour boundary
SPEED = 60
KEY = ("model", "version", "cohort", "layer", "head", "statistic", "window_end")


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(T0 + 60 * minutes, UTC)


def produce(url: str) -> None:
    """v1 for 10 minutes, then v2 (compared with v1's last minutes) for 40 minutes."""
    rng = np.random.default_rng(0)
    for version, first, last, conc in (("v1", 0, 10, 1.0), ("v2", 10, 50, 0.3)):
        with AttentionCollector(url, model="m", version=version, sample_rate=0, clock=lambda: T0 + 7200) as c:
            for minute in range(first, last):
                w = rng.dirichlet(np.full(10, conc), size=(20, 2)).astype(np.float32)
                c.observe_batch(w, item_ids=rng.integers(0, 50, (20, 10)), cohorts="web",
                                timestamps=T0 + 60 * minute + 5)


class Clock:
    """Simulated time shared by the test and its daemons: at(20) when created, x60."""

    def __init__(self) -> None:
        self.real0 = time.time()

    def now(self) -> datetime:
        return at(20) + timedelta(seconds=(time.time() - self.real0) * SPEED)

    def spec(self) -> str:
        return f"{self.now().isoformat()} x{SPEED}"


def write_config(tmp_path: Path, url: str, **daemon) -> Path:
    path = tmp_path / "attnmon.yaml"
    body = {"store_url": url, "evaluate": {"min_samples": 5}, "daemon": {"listen": "127.0.0.1:0", **daemon}}
    path.write_text(yaml.safe_dump(body))
    return path


class Proc:
    """An `attnmon run` process, its log and its /healthz."""

    def __init__(self, cfg: Path, clock: Clock, name: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNMON_") or k == "ATTNMON_TEST_PG_URL"}
        env["ATTNMON_FAKE_NOW"] = clock.spec()
        self.log = cfg.parent / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(cfg)], env=env, cwd=cfg.parent,
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )
        self.base: str | None = None

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if "serving /healthz, /livez and /metrics on " in line:
                    self.base = line.rsplit(" ", 1)[-1]
                    return
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"did not start serving:\n{self.log.read_text()}")

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.health()
            if predicate(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: last /healthz {body}\n{self.log.read_text()}")
            time.sleep(0.05)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def wm(body: dict) -> datetime | None:
    return datetime.fromisoformat(body["watermark"]) if body["watermark"] else None


def check_every_window_once(url: str) -> list[datetime]:
    """Each (series, statistic, window end) once, windows contiguous, none missing a row."""
    dr = tables.drift_results
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(dr)).scalar_one()
            distinct = conn.execute(
                select(func.count()).select_from(select(*[dr.c[k] for k in KEY]).distinct().subquery())
            ).scalar_one()
            ends = [e.astimezone(UTC) for e in conn.execute(select(dr.c.window_end).distinct().order_by(dr.c.window_end)).scalars()]
        assert total == distinct > 0
        assert ends == [ends[0] + timedelta(minutes=i) for i in range(len(ends))], "a window is missing"
        # evaluating the same windows again finds every row already there
        cfg = Config(store_url=url, evaluate={"min_samples": 5})
        with Daemon(cfg, engine=engine) as daemon:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM daemon_state"))
            write_watermark(engine, ends[0] - timedelta(minutes=1))
            again = daemon.evaluate(ends[-1] + timedelta(minutes=1))
        assert [w.window_end for w in again.windows] == ends and again.written == 0
        return ends
    finally:
        engine.dispose()


def test_one_leader_among_two_and_the_other_takes_over_when_it_is_killed(pg_clean_url, tmp_path):
    produce(pg_clean_url)
    lease_s = 1.0
    cfg = write_config(tmp_path, pg_clean_url, evaluate_every_s=0.5, lease_s=lease_s)
    clock = Clock()
    procs = [Proc(cfg, clock, "a"), Proc(cfg, clock, "b")]
    try:
        for p in procs:
            p.wait_serving()
        # one leads and evaluates; the other waits
        deadline = time.monotonic() + 15
        while True:
            bodies = [p.health() for p in procs]
            leaders = [i for i, b in enumerate(bodies) if b["leader"]]
            assert len(leaders) <= 1, bodies
            if leaders and bodies[leaders[0]]["watermark"] and wm(bodies[leaders[0]]) >= at(21):
                break
            assert time.monotonic() < deadline, bodies
            time.sleep(0.1)
        leader, follower = procs[leaders[0]], procs[1 - leaders[0]]
        for _ in range(5):  # and it stays that way
            assert [p.health()["leader"] for p in (leader, follower)] == [True, False]
            time.sleep(0.1)
        assert follower.health()["last_run"]["evaluate"] is None  # a follower runs nothing

        leader.kill()  # SIGKILL: no goodbye, PostgreSQL frees the lock with the session
        killed = time.monotonic()
        took_over = follower.wait_for(lambda b: b["leader"], 4 * lease_s, "takeover")
        assert time.monotonic() - killed <= 2 * lease_s + 0.5, took_over
        before = wm(took_over)
        follower.wait_for(lambda b: wm(b) >= before + timedelta(minutes=2), 10,
                          "the new leader evaluates new windows")
        assert follower.terminate() == 0
    finally:
        for p in procs:
            p.kill()
    ends = check_every_window_once(pg_clean_url)
    assert ends[0] in (at(19), at(20)) and len(ends) >= 4
    log = follower.log.read_text()
    assert "another daemon leads" in log and "took the lead" in log and "gave the lead" in log


def test_a_frozen_leader_is_ended_by_the_follower_and_steps_down_when_it_wakes(pg_clean_url, tmp_path):
    """SIGSTOP keeps the leader's connection (its kernel answers keepalives): only its
    silent heartbeat tells the follower, which ends its session and takes over."""
    produce(pg_clean_url)
    lease_s, every_s = 0.5, 3.0
    cfg = write_config(tmp_path, pg_clean_url, evaluate_every_s=every_s, deliver_every_s=600, lease_s=lease_s)
    clock = Clock()
    a = Proc(cfg, clock, "a")
    b = None
    try:
        a.wait_serving()
        first = a.wait_for(lambda body: body["leader"] and body["last_run"]["evaluate"], 15, "a leads")
        b = Proc(cfg, clock, "b")
        b.wait_serving()
        b.wait_for(lambda body: not body["leader"] and body["watermark"], 10, "b follows")
        # freeze a just after an evaluate run, so that none is in flight
        ran = a.wait_for(lambda body: body["last_run"]["evaluate"] != first["last_run"]["evaluate"],
                         2 * every_s + 5, "a's next evaluate")["last_run"]
        a.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        took_over = b.wait_for(lambda body: body["leader"], 10 * lease_s + 5, "takeover")
        took = time.monotonic() - stopped
        # silent past 3 x lease_s (its last beat up to a lease before the stop), then seen
        # within a lease
        assert (SILENT_LEASES - 1) * lease_s <= took <= (SILENT_LEASES + 1) * lease_s + 1.5, took
        b.wait_for(lambda body: body["last_run"]["evaluate"] and wm(body) > wm(took_over), 10,
                   "the new leader evaluates")
        time.sleep(max(0.0, stopped + every_s + 1 - time.monotonic()))  # a's evaluate is overdue
        a.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        # its lease thread's check (or its overdue job's) finds the session ended
        a.wait_for(lambda body: not body["leader"], 10, "a steps down")
        assert time.monotonic() - woke <= 2 * lease_s + 1
        time.sleep(2 * every_s)
        after = a.health()
        assert not after["leader"] and after["last_run"] == ran, after  # it ran no job
        assert b.health()["leader"]
        assert a.terminate() == 0 and b.terminate() == 0
    finally:  # SIGKILL ends a stopped process too
        for p in (a, b):
            if p is not None:
                p.kill()
    check_every_window_once(pg_clean_url)
    assert "lost the lead" in a.log.read_text()
    assert "has not beaten for" in b.log.read_text() and "ended its session to take the lead" in b.log.read_text()


def test_store_down_logs_retries_and_catches_up(own_database, tmp_path):
    db = own_database
    url = db.url
    produce(url)
    cfg = write_config(tmp_path, url, evaluate_every_s=0.3, retry_s=0.3, lease_s=2)
    clock = Clock()
    daemon = Proc(cfg, clock, "daemon")
    try:
        daemon.wait_serving()
        daemon.wait_for(lambda b: b["leader"] and b["watermark"], 10, "first evaluation")
        db.block(True)
        down_at = clock.now()
        # its lock's session ended with the others: it steps down at its next job or lease
        down = daemon.wait_for(lambda b: not b["leader"], 5, "the leader notices its lock connection is gone")
        # and /healthz says why, before the lag has grown past its limit
        said = daemon.wait_for(lambda b: b["status"] == "store_unreachable", 10, "healthz names the store")
        assert "s3cret-pw" not in said["error"]
        time.sleep(max(0.0, (down_at + timedelta(minutes=3) - clock.now()).total_seconds() / SPEED))
        db.block(False)
        up_at = clock.now()
        assert up_at - down_at >= timedelta(minutes=3)
        back = daemon.wait_for(lambda b: b["leader"] and wm(b) >= minute(up_at), 15, "catch-up")
        assert back["errors"]["evaluate"] >= down["errors"]["evaluate"]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    ends = check_every_window_once(url)
    assert ends[0] in (at(19), at(20)) and ends[-1] >= minute(up_at) - timedelta(minutes=1)
    log = daemon.log.read_text()
    assert "s3cret-pw" not in log
    said = [line for line in log.splitlines() if "job evaluate failed" in line or "to take the lead" in line]
    assert said and all("postgres:***@" in line for line in said)
    assert "lost the lead" in log and log.count("took the lead") >= 2
    assert "Traceback" not in log
    engine = make_engine(url)
    try:
        assert read_watermark(engine) >= minute(up_at) - timedelta(minutes=1)
    finally:
        engine.dispose()


def test_a_store_down_at_start_is_waited_for_then_led(own_database, tmp_path):
    db = own_database
    produce(db.url)
    db.block(True)
    cfg = write_config(tmp_path, db.url, evaluate_every_s=0.3, lease_s=2)
    daemon = Proc(cfg, Clock(), "daemon")
    try:
        daemon.wait_serving()
        down = daemon.wait_for(lambda b: b["status"] == "store_unreachable", 10, "the store is down")
        assert "not currently accepting connections" in down["error"] and "s3cret-pw" not in down["error"]
        assert not down["leader"]
        time.sleep(1.5)
        assert daemon.proc.poll() is None
        db.block(False)
        daemon.wait_for(lambda b: b["leader"] and b["watermark"], 45, "the lead and a first evaluation")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    log = daemon.log.read_text()
    assert "waiting for it (/healthz: 503 store_unreachable)" in log and "answers: starting" in log
    assert "s3cret-pw" not in log and "Traceback" not in log
    check_every_window_once(db.url)


def test_a_job_waiting_on_a_lock_fails_after_lock_timeout_and_runs_again(pg_clean_url):
    """Another session holds a lock the evaluate job needs (an operator's open
    transaction, a stuck migration): the job fails after daemon.lock_timeout_s, as a
    store that is down does, instead of blocking the daemon for good."""
    produce(pg_clean_url)
    cfg = Config.model_validate({"store_url": pg_clean_url,
                                 "daemon": {"listen": "127.0.0.1:0", "lock_timeout_s": 1, "retry_s": 1}})
    holder = make_engine(pg_clean_url)
    with Daemon(cfg, clock=lambda: at(30)) as daemon:
        assert daemon.acquire()
        with holder.connect() as conn:
            conn.execute(text("LOCK TABLE daemon_state IN ACCESS EXCLUSIVE MODE"))
            t0 = time.monotonic()
            run = daemon.run_job("evaluate", at(30))
            took = time.monotonic() - t0
            conn.rollback()
        assert run is not None and not run.ok and "lock timeout" in run.error
        assert took < 10
        again = daemon.run_job("evaluate", at(30))
        assert again.ok
    holder.dispose()


def test_a_long_lease_still_takes_the_lead(pg_clean_url):
    """lease_s is turned into TCP keepalive settings; past Linux's limit on those
    (32767 s) the lead's connection could never be opened, so no daemon ever led."""
    cfg = Config.model_validate({"store_url": pg_clean_url,
                                 "daemon": {"listen": "127.0.0.1:0", "lease_s": 40_000}})
    with Daemon(cfg, clock=lambda: at(30)) as daemon:
        assert daemon.acquire()
        assert daemon.is_leader
