"""The daemon on SQLite: catch-up, crash safety, signals, /healthz and /metrics.

Data: model "m", v1 for 10 minutes, then v2 (a deployment, so v2's windows are compared
with v1's last minutes: `previous_version`) for 40 minutes, 20 vectors a minute.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError

import monitor.daemon as d
from alerts.config import Route
from collectors import AttentionCollector
from monitor.config import Config, GrafanaConfig
from monitor.daemon import WATERMARK_KEY, Daemon, fake_clock, read_watermark
from monitor.errors import StoreError
from monitor.health import HealthServer, parse_listen
from monitor.store import make_engine, tables

T0 = 1_800_000_000.0  # an hour boundary
KEY = ("model", "version", "cohort", "layer", "head", "statistic", "window_end")


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(T0 + 60 * minutes, UTC)


def produce(url: str, v2_minutes: int = 40) -> None:
    rng = np.random.default_rng(0)
    for version, first, last, conc in (("v1", 0, 10, 1.0), ("v2", 10, 10 + v2_minutes, 0.3)):
        with AttentionCollector(url, model="m", version=version, sample_rate=0, clock=lambda: T0 + 7200) as c:
            for minute in range(first, last):
                w = rng.dirichlet(np.full(10, conc), size=(20, 2)).astype(np.float32)
                c.observe_batch(w, item_ids=rng.integers(0, 50, (20, 10)), cohorts="web",
                                timestamps=T0 + 60 * minute + 5)


def config(url: str, **daemon) -> Config:
    return Config(store_url=url, evaluate={"min_samples": 5}, daemon={"listen": "127.0.0.1:0", **daemon})


def results(url: str) -> dict[tuple, float]:
    """(series, statistic, window end) -> value, for every drift_results row."""
    dr = tables.drift_results
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*[dr.c[k] for k in KEY], dr.c.value)).all()
            assert conn.execute(select(func.count()).select_from(dr)).scalar_one() == len(rows)
    finally:
        engine.dispose()
    out = {}
    for *key, value in rows:
        key[-1] = key[-1].replace(tzinfo=UTC)
        assert tuple(key) not in out
        out[tuple(key)] = value
    return out


def window_ends(url: str) -> list[datetime]:
    return sorted({k[-1] for k in results(url)})


def minutes(first: int, last: int) -> list[datetime]:
    return [at(m) for m in range(first, last + 1)]


def set_watermark(url: str, end: datetime | None) -> None:
    ds = tables.daemon_state
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(delete(ds).where(ds.c.key == WATERMARK_KEY))
        if end is not None:
            conn.execute(ds.insert().values(key=WATERMARK_KEY, value=end.isoformat(), updated_at=at(0)))
    engine.dispose()


def watermark(url: str) -> datetime | None:
    engine = make_engine(url)
    try:
        return read_watermark(engine)
    finally:
        engine.dispose()


@pytest.fixture
def store(sqlite_url: str) -> str:
    produce(sqlite_url)
    return sqlite_url


# -- in process, simulated time -------------------------------------------------------


def test_catch_up_after_a_gap_evaluates_each_missed_window_once(store):
    now = [at(20)]
    with Daemon(config(store), clock=lambda: now[0]) as daemon:
        first = daemon.tick()["evaluate"].result
        # a new store: only the current window (ends a minute ago, for late data)
        assert [w.window_end for w in first.windows] == [at(19)]
        assert first.windows[0].series == 6 and first.written > 0  # v2: web and *, heads 0, 1, *
        assert window_ends(store) == [at(19)]

        now[0] = at(60)  # the daemon was away for 40 minutes
        catch_up = daemon.tick()["evaluate"].result
        assert [w.window_end for w in catch_up.windows] == minutes(20, 59)
        assert all(w.written > 0 for w in catch_up.windows) and catch_up.skipped == 0
        assert window_ends(store) == minutes(19, 59)
        assert watermark(store) == daemon.watermark == at(59)
        before = results(store)

        # nothing new: no window, no row
        assert daemon.run_job("evaluate").result.windows == ()
        # a watermark lost (or a crash before it moved): the rerun writes nothing
        set_watermark(store, at(19))
        again = daemon.run_job("evaluate").result
        assert len(again.windows) == 40 and again.written == 0
        assert results(store) == before


def test_the_evaluate_job_prepares_baselines_after_its_last_window_and_survives_a_failure(
    store, monkeypatch, caplog
):
    import monitor.daemon as dm

    calls = []
    monkeypatch.setattr(dm, "prepare_baselines", lambda engine, result, cfg, b: calls.append(result) or [])
    now = [at(20)]
    with Daemon(config(store), clock=lambda: now[0]) as daemon:
        daemon.tick()
        now[0] = at(25)
        done = daemon.tick()["evaluate"].result.windows
        assert [r.window_end for r in calls] == [at(19), done[-1].window_end]  # once a run, after the last
        assert calls[-1].versions == (("m", "v1"), ("m", "v2"))  # the versions with data in the window

        def broken(*a):
            raise RuntimeError("store went away")

        monkeypatch.setattr(dm, "prepare_baselines", broken)
        now[0] = at(26)
        with caplog.at_level("WARNING", logger="attnmon.daemon"):
            job = daemon.tick()["evaluate"]
        assert job.result.windows and watermark(store) == at(25)  # the results stand
        assert "preparing the next hour's baselines failed" in caplog.text


def test_the_prepared_baselines_log_names_their_model(store, monkeypatch, caplog):
    # Two models with a version of the same name: a line without the model could be either.
    import monitor.daemon as dm
    from monitor.baselines import BaselineRef

    def ref(version):
        return BaselineRef("trailing", "trailing@2026-11-20T10:00:00+00:00", version, at(0), at(60))

    monkeypatch.setattr(dm, "prepare_baselines", lambda *a: [("shop", ref("v1")), ("search", ref("v1"))])
    with Daemon(config(store), clock=lambda: at(20)) as daemon, caplog.at_level("INFO", logger="attnmon.daemon"):
        daemon.tick()
    lines = [r.getMessage() for r in caplog.records if "prepared baseline" in r.getMessage()]
    assert lines == ["prepared baseline trailing@2026-11-20T10:00:00+00:00 of shop v1",
                     "prepared baseline trailing@2026-11-20T10:00:00+00:00 of search v1"]


def test_catch_up_is_bounded_and_older_windows_are_skipped_with_a_warning(store, caplog):
    cfg = config(store).model_copy(update={"evaluate": config(store).evaluate.model_copy(update={"catchup_max_windows": 5})})
    now = [at(20)]
    registry = CollectorRegistry()
    with Daemon(cfg, clock=lambda: now[0], registry=registry) as daemon:
        daemon.tick()
        now[0] = at(60)
        with caplog.at_level(logging.WARNING, "attnmon.daemon"):
            got = daemon.tick()["evaluate"].result
    assert [w.window_end for w in got.windows] == minutes(55, 59) and got.skipped == 35
    assert "35 windows ending" in caplog.text and "catchup_max_windows=5" in caplog.text
    assert window_ends(store) == [at(19), *minutes(55, 59)]
    assert registry.get_sample_value("attnmon_daemon_windows_skipped_total") == 35
    assert registry.get_sample_value("attnmon_daemon_windows_evaluated_total") == 6


def test_tick_runs_due_jobs_and_a_failed_job_is_retried_and_counted(store, caplog):
    now = [at(20)]
    calls = []

    def hook(engine, when):
        calls.append(when)
        if len(calls) == 2:
            raise RuntimeError("receiver down")

    cfg = config(store, deliver_every_s=60, maintain_every_s=600, retry_s=5)
    registry = CollectorRegistry()
    with Daemon(cfg, clock=lambda: now[0], registry=registry, deliver_hooks=[hook]) as daemon:
        assert sorted(daemon.tick()) == ["deliver", "evaluate"]  # maintain: one interval later
        now[0] += timedelta(seconds=30)
        assert daemon.tick() == {}
        now[0] += timedelta(seconds=30)
        with caplog.at_level(logging.ERROR, "attnmon.daemon"):
            runs = daemon.tick()
        assert runs["deliver"].ok is False and runs["deliver"].error == "RuntimeError: receiver down"
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
            f"job deliver failed on {daemon.store} (1 in a row; retrying in 5s): RuntimeError: receiver down"
        ]
        now[0] += timedelta(seconds=5)  # retried retry_s later, not an interval later
        assert daemon.tick()["deliver"].ok
        now[0] = at(20) + timedelta(seconds=600)
        assert sorted(daemon.tick()) == ["deliver", "evaluate", "maintain"]
        status, body = daemon.health()
    assert len(calls) == 4
    assert registry.get_sample_value("attnmon_daemon_job_errors_total", {"job": "deliver"}) == 1
    assert registry.get_sample_value("attnmon_daemon_job_runs_total", {"job": "deliver"}) == 4
    assert registry.get_sample_value("attnmon_daemon_job_runs_total", {"job": "maintain"}) == 1
    assert body["errors"] == {"evaluate": 0, "deliver": 1, "maintain": 0}


def test_healthz_is_503_once_the_evaluation_lags(store):
    now = [at(20)]
    registry = CollectorRegistry()
    with Daemon(config(store), clock=lambda: now[0], registry=registry) as daemon:
        assert daemon.health()[0] == 200 and daemon.health()[1]["status"] == "starting"
        daemon.tick()
        server = HealthServer("127.0.0.1:0", daemon.health, registry)
        server.start()
        try:
            code, body = _get(f"{server.url}/healthz")
            assert code == 200 and body["status"] == "ok" and body["lag_s"] == 60
            now[0] = at(30)  # ten minutes without an evaluation
            code, body = _get(f"{server.url}/healthz")
            assert code == 503 and body["status"] == "lagging" and body["lag_s"] == 660
            assert _get(f"{server.url}/nope")[0] == 404
        finally:
            server.close()


def test_livez_stays_200_while_healthz_says_the_evaluation_lags(store):
    """A liveness probe must not restart a daemon because the evaluation lags (a
    follower reports the leader's lag): /livez answers for the process itself, and says
    503 only when its scheduler or lease thread has stopped."""
    now = [at(20)]
    with Daemon(config(store, evaluate_every_s=3600), clock=lambda: now[0], healthy_lag_s=300) as daemon:
        daemon.start()
        base = f"http://127.0.0.1:{daemon.http_port}"
        deadline = time.monotonic() + 20
        while not daemon.health()[1]["last_run"]["evaluate"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the first run, at start
        now[0] = at(60)  # forty minutes without an evaluation
        assert _get(f"{base}/healthz")[0] == 503
        assert _get(f"{base}/livez") == (200, {"status": "alive", "leader": True})
        scheduler = daemon._scheduler
        scheduler.shutdown(wait=True)  # what a dead scheduler looks like
        assert _get(f"{base}/livez") == (503, {"status": "scheduler_stopped", "leader": True})
        daemon._scheduler = None  # (stopped already: close() has no scheduler to stop)


def test_a_second_daemon_on_the_same_sqlite_file_follows(store):
    with Daemon(config(store)) as first, Daemon(config(store)) as second:
        assert first.acquire() and first.is_leader
        assert not second.acquire() and not second.is_leader
        assert second.run_job("evaluate") is None  # a follower runs nothing
        first.stop()  # gives the lead back
        assert second.acquire()


def test_fake_clock_and_listen_parsing():
    ticks = [100.0]
    frozen = fake_clock("2026-11-20T08:00Z", monotonic=lambda: ticks[0])
    fast = fake_clock("2026-11-20T08:00:00+00:00 x60", monotonic=lambda: ticks[0])
    ticks[0] += 2
    assert frozen() == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert fast() == datetime(2026, 11, 20, 8, 2, tzinfo=UTC)
    with pytest.raises(Exception, match="ATTNMON_FAKE_NOW"):
        fake_clock("yesterday")
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_listen("localhost")


# -- real processes -------------------------------------------------------------------


def _write_config(tmp_path: Path, url: str, **daemon) -> Path:
    path = tmp_path / "attnmon.yaml"
    body = {"store_url": url, "evaluate": {"min_samples": 5}, "daemon": {"listen": "127.0.0.1:0", **daemon}}
    path.write_text(yaml.safe_dump(body))
    return path


def _env(fake_now: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNMON_") or k == "ATTNMON_TEST_PG_URL"}
    env["ATTNMON_FAKE_NOW"] = fake_now
    return env


def _attnmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "monitor", *args]


def _once(cfg: Path, fake_now: str) -> dict:
    done = subprocess.run(
        _attnmon("run", "--once", "--config", str(cfg), "--format", "json"),
        env=_env(fake_now), cwd=cfg.parent, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait_watermark(url: str, proc: subprocess.Popen, least: datetime) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        wm = watermark(url)
        if wm is not None and wm >= least:
            return
        assert proc.poll() is None, f"it exited ({proc.returncode}) before the watermark reached {least}"
        time.sleep(0.01)
    raise AssertionError(f"the watermark did not reach {least}")


def test_sigkill_then_sigterm_mid_catch_up_then_once_evaluate_every_window_exactly_once(store, tmp_path):
    # the same data, evaluated without interruption, is the reference
    reference = tmp_path / "reference.db"
    with sqlite3.connect(store.removeprefix("sqlite:///")) as src, sqlite3.connect(reference) as dst:
        src.backup(dst)  # the WAL too, which a file copy would miss
    ref_url = f"sqlite:///{reference}"
    now = [at(5)]
    with Daemon(config(ref_url), clock=lambda: now[0]) as daemon:
        daemon.tick()
        now[0] = at(70)
        assert len(daemon.tick()["evaluate"].result.windows) == 65

    cfg = _write_config(tmp_path, store)
    set_watermark(store, at(4))  # as the reference's first tick left it
    # 65 windows behind: kill -9 once it is well into the backlog
    proc = subprocess.Popen(
        _attnmon("run", "--once", "--config", str(cfg)), env=_env(at(70).isoformat()),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_watermark(store, proc, at(15))
        proc.kill()
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    killed_at = watermark(store)
    assert at(15) <= killed_at < at(69)

    # the daemon picks up there; SIGTERM in the middle: it ends the window at hand, exits 0
    proc, _ = _start(cfg, at(70).isoformat(), tmp_path / "daemon.log")
    try:
        _wait_watermark(store, proc, killed_at + timedelta(minutes=10))
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - signalled < 5
    finally:
        _reap(proc)
    termed_at = watermark(store)
    assert killed_at + timedelta(minutes=10) <= termed_at < at(60)  # stopped between windows

    rest = _once(cfg, at(70).isoformat())
    assert rest["windows"] == (at(69) - termed_at) // timedelta(minutes=1)
    assert rest["watermark"] == at(69).isoformat() and rest["skipped_windows"] == 0
    got = results(store)
    assert sorted({k[-1] for k in got}) == minutes(11, 64)  # the windows that hold v2 data
    assert got.keys() == results(ref_url).keys()
    assert got == pytest.approx(results(ref_url))


def _reap(proc: subprocess.Popen) -> None:
    """Kill `proc` if a failed test left it running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _start(cfg: Path, fake_now: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`attnmon run` in the background; returns it and its base URL once it serves."""
    proc = subprocess.Popen(
        _attnmon("run", "--config", str(cfg)), env=_env(fake_now), cwd=cfg.parent,
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "serving /healthz, /livez and /metrics on " in line:
                return proc, line.rsplit(" ", 1)[-1]
        if proc.poll() is not None:
            raise AssertionError(f"attnmon run exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"attnmon run did not start serving:\n{log.read_text()}")


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            code, body, ctype = resp.status, resp.read().decode(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        code, body, ctype = exc.code, exc.read().decode(), exc.headers["Content-Type"]
    return code, json.loads(body) if ctype == "application/json" else body


def test_run_serves_healthz_and_metrics_and_exits_0_on_sigterm(store, tmp_path):
    cfg = _write_config(tmp_path, store, evaluate_every_s=0.5)
    log = tmp_path / "daemon.log"
    proc, base = _start(cfg, at(30).isoformat(), log)
    try:
        assert base.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, body = _get(f"{base}/healthz")
            if body["last_run"]["evaluate"]:
                break
            time.sleep(0.1)
        assert code == 200, body
        assert body["status"] == "ok" and body["leader"] is True and body["lag_s"] == 60
        assert body["watermark"] == at(29).isoformat()
        assert set(body["last_run"]) == {"evaluate", "deliver", "maintain"}
        assert body["last_run"]["evaluate"] == at(30).isoformat() and body["last_run"]["maintain"] is None

        code, text = _get(f"{base}/metrics")
        assert code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("attnmon_daemon_is_leader", ())] == 1
        assert samples[("attnmon_daemon_evaluate_lag_seconds", ())] == 60
        assert samples[("attnmon_daemon_watermark_timestamp_seconds", ())] == at(29).timestamp()
        assert samples[("attnmon_daemon_job_last_run_timestamp_seconds", (("job", "evaluate"),))] == at(30).timestamp()
        assert samples[("attnmon_daemon_series_evaluated", ())] == 6
        assert samples[("attnmon_daemon_windows_evaluated_total", ())] >= 1
        assert samples[("attnmon_daemon_results_written_total", ())] == len(results(store))
        for job in ("evaluate", "deliver", "maintain"):
            assert samples[("attnmon_daemon_job_errors_total", (("job", job),))] == 0

        # a second daemon on the same file waits: the lock is held by the process
        with Daemon(config(store)) as other:
            assert not other.acquire()

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        _reap(proc)
    text = log.read_text()
    assert "SIGTERM: finishing the running job, then exiting" in text
    assert "gave the lead" in text and "Traceback" not in text
    with Daemon(config(store)) as other:  # the lock was given back
        assert other.acquire()


def test_a_second_sigterm_exits_at_once_while_a_job_waits_on_the_store(store, tmp_path):
    cfg = _write_config(tmp_path, store, evaluate_every_s=0.2)
    log = tmp_path / "daemon.log"
    proc, base = _start(cfg, f"{at(30).isoformat()} x60", log)  # a new window every second
    lock = sqlite3.connect(store.removeprefix("sqlite:///"), timeout=5)
    try:
        deadline = time.monotonic() + 20
        while not _get(f"{base}/healthz")[1]["watermark"] and time.monotonic() < deadline:
            time.sleep(0.1)
        first = _get(f"{base}/healthz")[1]["watermark"]
        assert first, log.read_text()
        lock.execute("BEGIN IMMEDIATE")  # the next window's results wait on the write lock (10 s)
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None, log.read_text()  # finishing the running job
        again = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 128 + signal.SIGTERM
        assert time.monotonic() - again < 3
    finally:
        lock.rollback()
        lock.close()
        _reap(proc)
    text = log.read_text()
    assert "SIGTERM: finishing the running job, then exiting" in text
    assert "SIGTERM again: exiting now, without waiting for the running job" in text and "Traceback" not in text
    assert watermark(store) is not None  # what was committed stays; the next run goes on from it


def test_a_taken_port_is_one_clear_error(store, tmp_path, capsys):
    from monitor.cli import main

    with Daemon(config(store)) as first:
        first.start()
        taken = first.http_port
        cfg = _write_config(tmp_path, store, listen=f"127.0.0.1:{taken}")
        assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"daemon.listen='127.0.0.1:{taken}': cannot listen there: Address already in use" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_waits_for_a_store_that_refuses_connections_and_says_so_on_healthz(tmp_path):
    # nothing listens on the port: every connection is refused, as when PostgreSQL is down
    url = f"postgresql+psycopg://attnmon:s3cret-pw@127.0.0.1:{_free_port()}/attnmon"
    cfg = _write_config(tmp_path, url)
    log = tmp_path / "daemon.log"
    proc, base = _start(cfg, at(30).isoformat(), log)
    try:
        deadline = time.monotonic() + 20
        while True:
            code, body = _get(f"{base}/healthz")
            if body["status"] == "store_unreachable" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == 503 and body["status"] == "store_unreachable", body
        assert "Connection refused" in body["error"] and "s3cret-pw" not in body["error"]
        assert _get(f"{base}/livez") == (200, {"status": "alive", "leader": False})  # waiting is alive
        assert body["leader"] is False and body["watermark"] is None
        time.sleep(3.5)  # tries at 0, 1 and 3 s: one log line for one cause
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        _reap(proc)
    text = log.read_text()
    assert text.count("waiting for it (/healthz: 503 store_unreachable)") == 1, text
    assert "attnmon:***@" in text and "s3cret-pw" not in text and "Traceback" not in text


def test_wait_for_store_tries_again_until_the_store_answers_then_the_daemon_leads(store, monkeypatch):
    real, tries, seen = d.require_schema, [], []

    def flaky(engine):
        tries.append(time.monotonic())
        if len(tries) <= 2:
            try:
                raise OperationalError("SELECT 1", {}, Exception(f"server closed the connection ({len(tries)})"))
            except OperationalError as exc:
                raise StoreError(f"store at x: try {len(tries)} failed", "x") from exc
        real(engine)

    monkeypatch.setattr(d, "require_schema", flaky)
    with Daemon(config(store), clock=lambda: at(20)) as daemon:
        daemon.listen()
        base = f"http://127.0.0.1:{daemon.http_port}"

        class Stop:  # reads /healthz between the tries
            def wait(self, timeout):
                seen.append(_get(f"{base}/healthz"))
                return False

        assert daemon.wait_for_store(Stop()) is True
        assert len(tries) == 3
        assert [(code, body["status"], body["error"]) for code, body in seen] == [
            (503, "store_unreachable", "store at x: try 1 failed"),
            (503, "store_unreachable", "store at x: try 2 failed"),
        ]
        code, body = _get(f"{base}/healthz")
        assert (code, body["status"]) == (200, "starting") and "error" not in body
        assert daemon.tick()["evaluate"].ok and daemon.is_leader


def test_wait_for_store_ends_when_stopped_and_backs_off(store, monkeypatch):
    waits: list[float] = []

    def down(engine):
        try:
            raise OperationalError("SELECT 1", {}, Exception("refused"))
        except OperationalError as exc:
            raise StoreError("store at x: refused", "x") from exc

    class Stop:
        def wait(self, timeout):
            waits.append(timeout)
            return len(waits) == 7

    monkeypatch.setattr(d, "require_schema", down)
    with Daemon(config(store)) as daemon:
        assert daemon.wait_for_store(Stop(), max_wait_s=10) is False
    assert waits == [1, 2, 4, 8, 10, 10, 10]


def test_run_with_a_schema_behind_exits_2_at_once(tmp_path, capsys):
    from monitor.cli import main

    db = tmp_path / "old.db"
    sqlite3.connect(db).close()  # a store no `db upgrade` has run on
    cfg = _write_config(tmp_path, f"sqlite:///{db}")
    started = time.monotonic()
    assert main(["run", "--config", str(cfg)]) == 2
    assert time.monotonic() - started < 10
    assert "run `attnmon db upgrade`" in capsys.readouterr().err


# -- the annotate job (a grafana: section), against the stand-in Grafana ----------------------


def grafana_config(store: str, grafana_url: str, **grafana) -> Config:
    return config(store, retry_s=5).model_copy(
        update={"grafana": GrafanaConfig(url=grafana_url, **grafana)})


def posted(state) -> list[tuple[int, str]]:
    return [(a["time"], a["text"]) for a in state.annotations]


def expected_events(url: str, now: datetime) -> list:
    from dashboards.annotate import events

    engine = make_engine(url)
    try:
        return events(engine, now - timedelta(days=7))
    finally:
        engine.dispose()


def test_no_grafana_section_no_annotate_job(store):
    with Daemon(config(store), clock=lambda: at(20)) as daemon:
        assert daemon.jobs == ("evaluate", "deliver", "maintain")
        assert "annotate" not in daemon.tick()
        with pytest.raises(ValueError, match="unknown job"):
            daemon.run_job("annotate")


def test_annotate_job_posts_each_event_once_across_restarts(store, monkeypatch):
    from test_dashboards_grafana import TOKEN, fake_grafana

    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    now = [at(20)]
    with fake_grafana() as (url, state):
        cfg = grafana_config(store, url)
        registry = CollectorRegistry()
        with Daemon(cfg, clock=lambda: now[0], registry=registry) as daemon:
            assert daemon.jobs[-1] == "annotate"
            runs = daemon.tick()
            assert list(runs) == ["evaluate", "deliver", "annotate"]  # after the evaluation
            first = runs["annotate"].result
            want = expected_events(store, now[0])
            assert first.posted == len(want) >= 2 and first.already == 0
            assert [t for t, _ in posted(state)] == [e.epoch_ms for e in want]
            assert "m v2 deployed (collector)" in {text for _, text in posted(state)}
            now[0] += timedelta(seconds=30)  # not due yet (every 60 s)
            assert "annotate" not in daemon.tick()
            now[0] = at(40)  # twenty minutes on: alerts may have moved, deployments not
            again = daemon.tick()["annotate"].result
            assert again.already == first.posted
            assert registry.get_sample_value("attnmon_daemon_job_runs_total", {"job": "annotate"}) == 2
        total = len(state.annotations)
        # a restart (a new daemon, engine and client) posts nothing twice
        with Daemon(cfg, clock=lambda: now[0]) as daemon:
            result = daemon.tick()["annotate"].result
        assert result.posted == 0 and result.already == total == len(expected_events(store, now[0]))
        assert len(set(posted(state))) == len(state.annotations) == total
        assert all(r["auth"] == f"Bearer {TOKEN}" for r in state.requests)
        assert all("dashboardUID" not in a for a in state.annotations)  # organisation-wide


def test_grafana_down_is_logged_retried_and_the_daemon_keeps_running(store, monkeypatch, tmp_path, caplog):
    from test_dashboards_grafana import TOKEN, FakeGrafana, fake_grafana

    token = tmp_path / "grafana-token"
    token.write_text(TOKEN + "\n")
    monkeypatch.delenv("ATTNMON_GRAFANA_TOKEN", raising=False)
    state = FakeGrafana()
    with fake_grafana(state) as (url, _):
        port = int(url.rsplit(":", 1)[1])
    # Grafana is down: nothing listens on its port any more
    cfg = grafana_config(store, url, token={"file": str(token)}, timeout_s=2)
    now = [at(20)]
    registry = CollectorRegistry()
    with Daemon(cfg, clock=lambda: now[0], registry=registry) as daemon:
        with caplog.at_level(logging.ERROR, "attnmon.daemon"):
            runs = daemon.tick()
        assert runs["evaluate"].ok and runs["deliver"].ok  # the other jobs go on
        assert runs["annotate"].ok is False and "Grafana: post annotation failed (unreachable)" in runs["annotate"].error
        [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert line.startswith(f"job annotate failed on {daemon.store} (1 in a row; retrying in 5s): GrafanaError")
        assert TOKEN not in caplog.text
        now[0] += timedelta(seconds=2)
        assert "annotate" not in daemon.tick()  # retried retry_s later
        now[0] += timedelta(seconds=3)
        assert daemon.tick()["annotate"].ok is False  # still down: still failing, still running
        with fake_grafana(state, port):  # back, on the same address
            now[0] += timedelta(seconds=5)
            back = daemon.tick()["annotate"]
            assert back.ok and back.result.posted == len(expected_events(store, now[0]))
            assert daemon.tick(now[0] + timedelta(seconds=61))["annotate"].result.posted == 0
        status, body = daemon.health()
    assert body["errors"]["annotate"] == 2 and body["last_run"]["annotate"] is not None
    assert registry.get_sample_value("attnmon_daemon_job_errors_total", {"job": "annotate"}) == 2
    assert len(set(posted(state))) == len(state.annotations)


@pytest.mark.parametrize("peer", ["silent", "trickle"])
def test_a_grafana_that_hangs_or_trickles_fails_the_run_in_time_and_loses_nothing(store, monkeypatch, caplog, peer):
    """Grafana accepts the connection, then answers nothing, or a byte a second: the
    annotate run ends within 2 x grafana.timeout_s, well before daemon.stuck_after_s
    (/livez never says stuck), with one error logged, and is retried; Grafana back on
    that address gets every event, once. A trickle held the run, and /livez went stuck."""
    from contextlib import ExitStack

    from peers import silent_port, trickling_port
    from test_dashboards_grafana import TOKEN, FakeGrafana, fake_grafana

    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    now = [at(20)]
    with ExitStack() as slow:
        port = slow.enter_context(silent_port() if peer == "silent" else trickling_port(1.0))
        cfg = config(store, retry_s=5, stuck_after_s=30).model_copy(
            update={"grafana": GrafanaConfig(url=f"http://127.0.0.1:{port}", timeout_s=2)})
        with Daemon(cfg, clock=lambda: now[0]) as daemon:
            stuck, watching = [], threading.Event()

            def watch() -> None:  # what /livez would say while the run waits on Grafana
                while not watching.wait(0.05):
                    stuck.append(daemon.stuck())

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            with caplog.at_level(logging.ERROR, "attnmon.daemon"):
                runs = daemon.tick()
            watching.set()
            watcher.join(5)
            run = runs["annotate"]
            assert run.ok is False and run.duration_s < 12  # the trickle alone takes hours
            assert run.error == "GrafanaError: Grafana: post annotation failed (no answer): none complete within 2 s"
            assert runs["evaluate"].ok and stuck and not any(stuck)
            [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert line.startswith("job annotate failed on") and "retrying in 5s" in line
            assert daemon.alive()[0] == 200
            slow.close()  # the slow server goes; Grafana comes back on its address
            state = FakeGrafana()
            with fake_grafana(state, port):
                now[0] += timedelta(seconds=5)
                back = daemon.tick()["annotate"]
            assert back.ok and back.result.posted == len(expected_events(store, now[0])) == len(state.annotations)


def test_annotate_job_runs_on_the_scheduler(store, monkeypatch):
    from test_dashboards_grafana import TOKEN, fake_grafana

    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    with fake_grafana() as (url, state):
        with Daemon(grafana_config(store, url, annotate_every_s=3600)) as daemon:
            daemon.start()
            job = daemon._scheduler.get_job("annotate")
            assert (job.coalesce, job.max_instances, job.trigger.interval) == (True, 1, timedelta(hours=1))
            deadline = time.monotonic() + 20
            while daemon.health()[1]["last_run"]["annotate"] is None and time.monotonic() < deadline:
                time.sleep(0.05)
            # the first run is at start, as evaluate's: both deployments
            assert {"m v1 deployed (collector)", "m v2 deployed (collector)"} <= {t for _, t in posted(state)}
            assert daemon.health()[1]["errors"]["annotate"] == 0


def test_an_unreadable_grafana_token_is_a_config_error_at_start(store, monkeypatch, tmp_path):
    from monitor.errors import ConfigError

    monkeypatch.delenv("ATTNMON_GRAFANA_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="grafana.token"):
        Daemon(grafana_config(store, "http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="grafana.token"):
        Daemon(grafana_config(store, "http://127.0.0.1:9", token={"file": str(tmp_path / "none")}))


def test_a_grafana_timeout_that_would_make_livez_say_stuck_is_a_config_error(store, monkeypatch):
    from monitor.errors import ConfigError

    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", "t")
    url = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"grafana.timeout_s=30.0: a call to Grafana may take 2 x timeout_s, "
                                          r"which must stay under daemon.stuck_after_s \(60 s\)"):
        Daemon(config(store, stuck_after_s=60).model_copy(update={"grafana": GrafanaConfig(url=url, timeout_s=30)}))
    for daemon_cfg in ({"stuck_after_s": 61}, {"stuck_after_s": 0}, {}):  # under it, never stuck, the default
        with Daemon(config(store, **daemon_cfg).model_copy(update={"grafana": GrafanaConfig(url=url, timeout_s=30)})):
            pass


def test_run_once_needs_no_grafana_token(store, tmp_path, monkeypatch, capsys):
    """`run --once` (a cron job) never annotates Grafana: a config shared with the daemon,
    whose token the cron environment lacks, still evaluates. The daemon still refuses it."""
    from monitor.cli import main

    monkeypatch.delenv("ATTNMON_GRAFANA_TOKEN", raising=False)
    monkeypatch.setenv("ATTNMON_FAKE_NOW", datetime.fromtimestamp(T0 + 7200, UTC).isoformat())
    cfg = tmp_path / "attnmon.yaml"
    cfg.write_text(yaml.safe_dump({"store_url": store, "evaluate": {"min_samples": 5},
                                   "grafana": {"url": "http://127.0.0.1:9"}}))
    assert main(["run", "--once", "--config", str(cfg), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] > 0
    assert main(["run", "--config", str(cfg)]) == 2
    assert "grafana.token" in capsys.readouterr().err


LOOPBACK = {"listen": "127.0.0.1:0"}


def test_a_rule_on_a_statistic_the_evaluator_does_not_write_is_warned_about(store, tmp_path, caplog):
    rules = tmp_path / "mine.yaml"
    rules.write_text("rules:\n"
                     "  - {name: TopOneMean, statistic: mean.top1, op: '>', threshold: 0.5}\n"
                     "  - {name: AnyBrand, statistic: js.attr.brand, op: '>', threshold: 0.3}\n"
                     "  - {name: GiniPsi, statistic: psi.gini, op: '>', threshold: 0.3}\n")
    with caplog.at_level("WARNING", logger="attnmon.daemon"):
        with Daemon(Config(store_url=store, alerts={"rules": [str(rules)]}, daemon=LOOPBACK)):
            pass
    assert "rule TopOneMean reads mean.top1" in caplog.text  # PSI alone for top1 by default
    assert "AnyBrand" not in caplog.text and "GiniPsi" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="attnmon.daemon"):
        with Daemon(Config(store_url=store, evaluate={"statistics": ["mean", "psi"]},
                           alerts={"rules": [str(rules)]}, daemon=LOOPBACK)):
            pass
        with Daemon(Config(store_url=store, daemon=LOOPBACK)):  # the shipped rules read what is written
            pass
    assert "cannot fire" not in caplog.text


def test_delivery_goes_on_only_while_this_daemon_leads(store):
    """The outbox stops between groups once the daemon has lost the lead or is stopping
    (tests/test_alerts_delivery_faults.py: what the outbox does with that answer)."""
    with Daemon(config(store), clock=lambda: at(20)) as daemon:
        assert daemon.alerts.keep_going() is False  # not the leader yet
        assert daemon.acquire()
        assert daemon.alerts.keep_going() is True
        daemon._leader = False  # what _lease does when the lock's connection is gone
        assert daemon.alerts.keep_going() is False
        daemon._leader = True
        daemon._stop.set()
        assert daemon.alerts.keep_going() is False


def test_a_job_that_fails_while_the_daemon_stops_does_not_hang_the_stop(store, caplog):
    """SIGTERM waits for the running job; one that then fails (the store going down with
    the daemon, a session ended under it) used to ask the stopping scheduler for a retry
    and wait on it forever, while the scheduler waited for the job: the process never
    exited."""
    started = threading.Event()

    def failing_on_stop(_engine, _now) -> None:
        if started.is_set():
            return
        started.set()
        assert daemon._stop.wait(20), "stop() never came"
        time.sleep(0.2)  # stop() is in the scheduler's shutdown by now
        raise RuntimeError("store went away")

    with Daemon(config(store), clock=lambda: at(20), deliver_hooks=[failing_on_stop]) as daemon:
        daemon.start()
        assert started.wait(20), "the deliver job did not start"
        stopping = threading.Thread(target=daemon.stop, daemon=True)
        with caplog.at_level(logging.ERROR, "attnmon.daemon"):
            stopping.start()
            stopping.join(20)
        assert not stopping.is_alive(), "stop() hangs: the failed job waits on the stopping scheduler"
    assert "job deliver failed" in caplog.text


def test_a_daemon_with_no_receivers_says_nobody_will_be_notified(store, caplog):
    with caplog.at_level(logging.WARNING, "attnmon.daemon"), Daemon(config(store), clock=lambda: at(20)):
        pass
    assert any("no alert receivers are configured" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg = Config(store_url=store, daemon={"listen": "127.0.0.1:0"}, alerts={
        "receivers": [{"name": "hook", "webhook": {"url": "http://127.0.0.1:9/x"}}], "route": {"receiver": "hook"}})
    with caplog.at_level(logging.WARNING, "attnmon.daemon"), Daemon(cfg, clock=lambda: at(20)):
        pass
    assert not any("no alert receivers" in r.getMessage() or "names no receiver" in r.getMessage()
                   for r in caplog.records)
    # receivers, but a root route without one: what no child route matches reaches nobody
    only_critical = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"route": Route(
        routes=[Route(match={"severity": "critical"}, receiver="hook")])})})
    with caplog.at_level(logging.WARNING, "attnmon.daemon"), Daemon(only_critical, clock=lambda: at(20)):
        pass
    assert any("alerts.route names no receiver" in r.getMessage() for r in caplog.records)


def test_maintenance_is_not_starved_by_restarts_more_often_than_its_interval(store):
    """A daemon restarted every 30 minutes (rollouts, a crash loop, preemptible nodes) with
    maintain_every_s=3600 must still maintain hourly: raw events past their retention
    would otherwise be kept for good. When it is due is kept in the store."""
    cfg = config(store, maintain_every_s=3600)
    maintained = []
    for start in range(0, 150, 30):  # five lives of 30 minutes each
        with Daemon(cfg, clock=lambda: at(20)) as daemon:
            for minute in (start, start + 15, start + 29):
                if "maintain" in daemon.tick(at(20 + minute)):
                    maintained.append(minute)
    assert maintained == [60, 120]
    # a daemon whose interval is now shorter than what the store says is due runs sooner
    with Daemon(config(store, maintain_every_s=600), clock=lambda: at(20)) as daemon:
        assert "maintain" not in daemon.tick(at(20 + 150))
        assert "maintain" in daemon.tick(at(20 + 160))


def test_a_watermark_ahead_of_the_clock_is_said_not_silent(store, caplog):
    # a leader whose clock ran ahead (or a run with ATTNMON_FAKE_NOW) wrote it: this
    # daemon evaluates nothing until its clock gets there, and must say so
    from monitor.daemon import write_watermark

    now = [at(20)]
    engine = make_engine(store)
    write_watermark(engine, at(20) + timedelta(hours=3))
    engine.dispose()
    caplog.set_level(logging.WARNING, "attnmon.daemon")
    with Daemon(config(store), clock=lambda: now[0], registry=CollectorRegistry()) as daemon:
        runs = daemon.tick()
        assert runs["evaluate"].ok
        code, body = daemon.health()
    assert code == 503 and body["status"] == "watermark_ahead" and body["lag_s"] < 0
    assert "ahead of this daemon's clock" in caplog.text


def test_attnmon_maintain_drops_old_materialised_baselines_as_the_daemon_job_does(sqlite_url, capsys):
    from monitor.cli import main

    now = datetime.now(UTC).replace(microsecond=0)  # `maintain --now` refuses the future
    bs = tables.baseline_sketches
    row = dict(model="m", version="v1", cohort="*", layer="0", head="*", window_start=now - timedelta(days=9),
               n=1, rejected=0, sums=[], sumsq=[], payload=b"", computed_at=now - timedelta(days=3))
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(bs.insert(), [
                row | {"kind": "trailing", "ref": "old", "window_end": now - timedelta(days=2, minutes=1)},
                row | {"kind": "hour", "ref": "old", "window_end": now - timedelta(days=3)},
                row | {"kind": "trailing", "ref": "new", "window_end": now - timedelta(days=1)},
                row | {"kind": "pinned", "ref": "kept", "window_end": now - timedelta(days=8)},  # never pruned
                # a deploy's predecessor baseline ends at the deploy and is read for 24 h after it
                row | {"kind": "previous_version", "ref": "old", "window_end": now - timedelta(days=3, minutes=1)},
                row | {"kind": "retrain", "ref": "new", "window_end": now - timedelta(days=2, hours=12)},
            ])
        assert main(["maintain", "--store", sqlite_url, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["baselines_pruned"] == 3
        with engine.connect() as conn:
            assert set(conn.execute(select(bs.c.kind, bs.c.ref)).all()) == {
                ("trailing", "new"), ("pinned", "kept"), ("retrain", "new")}
        with Daemon(config(sqlite_url), clock=lambda: now + timedelta(days=2)) as daemon:  # the job, the same way
            assert daemon.maintain().baselines_pruned == 2
    finally:
        engine.dispose()


def test_every_daemon_shows_the_stores_alerts_on_metrics_not_a_stale_count(store):
    """attnmon_alerts_firing and the outbox gauges count rows of the store. A follower
    showed 0 while alerts fired, and a daemon that lost the lead kept its last count
    forever: `attnmon_alerts_firing > 0` stayed true on it after the alert resolved."""
    al = tables.alerts
    engine = make_engine(store)
    with engine.begin() as conn:
        conn.execute(al.insert().values(fingerprint="f", rule="r", severity="critical", labels={},
                                        annotations={}, state="firing", active_at=at(25), fired_at=at(26),
                                        last_true_at=at(29), last_eval_at=at(29)))
    ra, rb = CollectorRegistry(), CollectorRegistry()

    def firing(registry: CollectorRegistry) -> float:
        return registry.get_sample_value("attnmon_alerts_firing", {"severity": "critical"})

    with Daemon(config(store), clock=lambda: at(30), registry=ra) as a, \
            Daemon(config(store), clock=lambda: at(30), registry=rb) as b:
        assert a.acquire() and a.run_job("deliver").ok and firing(ra) == 1
        b._lease()  # a follower's lease: it reads what the leader writes
        assert not b.is_leader and firing(rb) == 1
        with engine.begin() as conn:
            conn.execute(al.update().values(state="resolved"))
        a._leadership.release()  # a loses its lock (as its session ending does on PostgreSQL)
        assert b.acquire() and b.run_job("deliver").ok and firing(rb) == 0
        a._lease()  # a notices, and follows
        assert not a.is_leader and firing(ra) == 0
    engine.dispose()


# -- the host's wall clock stepping (NTP, a VM restored) ------------------------------


def _runs(daemon: Daemon) -> dict[str, float]:
    return {job: daemon.registry.get_sample_value("attnmon_daemon_job_runs_total", {"job": job})
            for job in daemon.jobs}


def _step(daemon: Daemon, by: timedelta) -> None:
    """Leave every job due `by` later, as a wall clock stepped back by `by` does:
    APScheduler computes its wait from the wall clock, then sleeps on a monotonic one.
    (Under the scheduler's lock: the lease thread sees the whole step at once.)"""
    scheduler = daemon._scheduler
    with scheduler._jobstores_lock:
        for job in scheduler.get_jobs():
            scheduler.modify_job(job.id, next_run_time=job.next_run_time + by)


def _started(daemon: Daemon) -> None:
    daemon.start()
    deadline = time.monotonic() + 20
    while not all(daemon.health()[1]["last_run"][j] for j in ("evaluate", "deliver")):
        assert time.monotonic() < deadline, "the first runs, at start, never came"
        time.sleep(0.02)


def test_a_wall_clock_stepped_back_an_hour_stalls_the_jobs_for_about_lease_s_not_an_hour(store, caplog):
    lease_s = 0.3
    with Daemon(config(store, lease_s=lease_s), clock=lambda: at(20)) as daemon:
        _started(daemon)
        before = _runs(daemon)
        with caplog.at_level(logging.WARNING, "attnmon.daemon"):
            _step(daemon, timedelta(hours=1))
            stepped = time.monotonic()
            deadline = stepped + 10
            while any(_runs(daemon)[j] == before[j] for j in daemon.jobs):
                assert time.monotonic() < deadline, f"still waiting after 10 s: {_runs(daemon)} (before: {before})"
                time.sleep(0.02)
            took = time.monotonic() - stepped
            time.sleep(4 * lease_s)  # more lease turns: the step is said once
        assert took < lease_s + 5, took  # not the hour the step would cost
        # every job ran once, and goes on an interval later, from the new time
        assert _runs(daemon) == {j: before[j] + 1 for j in daemon.jobs}
        now = datetime.now(UTC)
        for job in daemon._scheduler.get_jobs():
            ahead = (job.next_run_time - now).total_seconds()
            assert 0 < ahead <= job.trigger.interval.total_seconds(), (job.id, ahead)
    said = [r.getMessage() for r in caplog.records if "stepped back" in r.getMessage()]
    assert len(said) == 1, said
    assert re.search(r"\(deliver in 36\d\ds, evaluate in 36\d\ds, maintain in 7[12]\d\ds\)", said[0]), said[0]


def test_a_wall_clock_stepped_forward_an_hour_runs_each_job_at_most_once_and_pulls_nothing(store, caplog):
    """The runs an hour's step forward skipped are coalesced into one (coalesce=True), or
    dropped as missed when the last is older than misfire_grace_s; either way the next
    run is at most an interval away. The lease thread leaves jobs that are overdue alone."""
    lease_s = 0.3
    with Daemon(config(store, lease_s=lease_s), clock=lambda: at(20)) as daemon:
        _started(daemon)
        before = _runs(daemon)
        with caplog.at_level(logging.WARNING, "attnmon.daemon"):
            _step(daemon, -timedelta(hours=1))
            time.sleep(4 * lease_s)
        after = _runs(daemon)
        assert all(before[j] <= after[j] <= before[j] + 1 for j in daemon.jobs), (before, after)
        now = datetime.now(UTC)
        for job in daemon._scheduler.get_jobs():
            ahead = (job.next_run_time - now).total_seconds()
            assert 0 < ahead <= job.trigger.interval.total_seconds(), (job.id, ahead)
    assert not [r for r in caplog.records if "stepped" in r.getMessage()]
