"""ProcessCollector's worker process: one that hangs is replaced, one that cannot take
its options says why (once), the interpreter that runs it, and its settings in
attnmon.yaml."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
from test_process_collector import T0, batch, stored_n, wait_for
from test_process_collector_faults import T_OPEN, gone

import collectors.process as process
from collectors import AttentionCollector, ProcessCollector


def test_a_worker_that_stops_answering_is_killed_and_replaced(sqlite_url):
    rng = np.random.default_rng(21)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, hang_after_s=2.0,
                         restart_every_s=0.0)
    handed = 0
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)  # held (an open minute) by the worker
        handed += 40
        assert wait_for(lambda: c.stats.accepted == 40)
        first = c.worker_pid
        os.kill(first, signal.SIGSTOP)  # hung: it reads nothing and reports nothing
        # before the watchdog: this worker stayed, every later call was dropped, for good
        deadline = time.monotonic() + 20
        while c.worker_pid in (None, first) and time.monotonic() < deadline:
            c.observe_batch(w, item_ids=ids, timestamps=T0)
            handed += 40
            time.sleep(0.2)
        assert c.worker_pid not in (None, first)
        assert wait_for(lambda: gone(first), 5)  # killed and reaped
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 60)
        handed += 40
        assert c.flush(timeout=30)
    finally:
        c.close()
    st = c.stats
    assert st.written == stored_n(sqlite_url, "v1") >= 40  # the new worker writes
    assert st.dropped >= 40  # what the stopped one held, at least
    assert st.written + st.dropped == handed


def _watched_with_a_lock(sqlite_url: str) -> tuple[ProcessCollector, sqlite3.Connection]:
    """A collector whose hang watch (2 s) is shorter than its write timeout (6 s), and a
    second connection to hold SQLite's lock with."""
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, hang_after_s=2.0,
                         write_timeout_s=6.0)
    return c, sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=10)


def test_a_flush_waiting_on_the_store_is_not_taken_for_a_hang(sqlite_url):
    # another writer holds SQLite's lock for longer than hang_after_s: the worker's flush
    # waits (up to write_timeout_s) and reports meanwhile, so it is not killed
    rng = np.random.default_rng(22)
    w, ids, _ = batch(rng)
    c, lock = _watched_with_a_lock(sqlite_url)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush(timeout=30)
        pid = c.worker_pid
        lock.execute("BEGIN EXCLUSIVE")
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 60)
        started = time.monotonic()
        assert not c.flush(timeout=30)  # kept in memory: no spill_dir
        assert time.monotonic() - started > 5  # it did wait on the lock, past hang_after_s
        lock.rollback()
        assert c.flush(timeout=30)
        assert c.worker_pid == pid
    finally:
        lock.close()
        c.close()
    assert c.stats.dropped == 0 and c.stats.written == 80 == stored_n(sqlite_url, "v1")


def test_a_worker_closing_on_a_locked_store_is_not_taken_for_hung(sqlite_url):
    # close(): the worker's first flush fails on the lock (6 s), its collector's close()
    # waits on it again, silent; the lock goes at 9.5 s and the write gets through. The
    # watch (2 s) killed it at ~8 s and the 40 were lost; close() has a timeout of its own.
    rng = np.random.default_rng(25)
    w, ids, _ = batch(rng)
    c, lock = _watched_with_a_lock(sqlite_url)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)  # an open minute: held until close
        assert wait_for(lambda: c.stats.accepted == 40)
        lock.execute("BEGIN EXCLUSIVE")
        closing = threading.Thread(target=c.close, kwargs={"timeout": 60})
        closing.start()
        time.sleep(9.5)
        lock.rollback()
        closing.join(60)
    finally:
        lock.close()
        c.close()
    assert c.stats.written == 40 and c.stats.dropped == 0


def _unimportable_clock():
    return T0


def test_options_the_worker_cannot_load_are_reported_once_and_every_call_is_counted(
        sqlite_url, monkeypatch, caplog):
    # a clock from a module the serving process has and the worker does not
    nowhere = types.ModuleType("attnmon_nowhere")
    nowhere.clock = _unimportable_clock
    monkeypatch.setitem(sys.modules, "attnmon_nowhere", nowhere)
    monkeypatch.setattr(_unimportable_clock, "__module__", "attnmon_nowhere")
    monkeypatch.setattr(_unimportable_clock, "__qualname__", "clock")
    starts = []
    popen = subprocess.Popen
    monkeypatch.setattr(process.subprocess, "Popen", lambda *a, **k: starts.append(1) or popen(*a, **k))
    rng = np.random.default_rng(23)
    w, ids, _ = batch(rng)
    caplog.set_level(logging.ERROR, "attnmon.collector")
    c = ProcessCollector(sqlite_url, model="m", version="v1", clock=_unimportable_clock, restart_every_s=0.0)
    try:
        for i in range(10):
            c.observe_batch(w, item_ids=ids, timestamps=T0 + i)
            time.sleep(0.2)
        assert not c.flush(timeout=10)
    finally:
        c.close()
    # before: a new worker every restart_every_s, each dying on the same options
    assert len(starts) == 1
    assert c.stats.dropped == 400 and c.stats.written == 0
    assert "could not take the collector's options" in caplog.text and "attnmon_nowhere" in caplog.text


def test_an_option_from_main_is_refused_at_construction(sqlite_url, monkeypatch):
    main = sys.modules["__main__"]

    def clock():
        return T0

    clock.__module__, clock.__qualname__ = "__main__", "attnmon_test_clock"
    monkeypatch.setattr(main, "attnmon_test_clock", clock, raising=False)
    with pytest.raises(ValueError, match=r"clock=.* __main__, which the worker process cannot import"):
        ProcessCollector(sqlite_url, model="m", version="v1", clock=clock)
    AttentionCollector(sqlite_url, model="m", version="v1", clock=clock).close()  # in process: fine


def test_python_names_the_worker_s_interpreter(sqlite_url, tmp_path):
    # a wrapper that records it ran, then runs this interpreter
    marker = tmp_path / "ran"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\ntouch {marker}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    rng = np.random.default_rng(24)
    w, ids, _ = batch(rng)
    with ProcessCollector(sqlite_url, model="m", version="v1", python=wrapper) as c:  # (a Path)
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush(timeout=30)
    assert marker.exists() and stored_n(sqlite_url, "v1") == 40


def test_an_interpreter_that_dies_at_once_is_retried_ever_more_slowly(sqlite_url, tmp_path, monkeypatch, caplog):
    # not a python that can run the worker: it exits before its first report. It was
    # started again at every call (with restart_every_s=0: every 50 ms), for good
    fake = tmp_path / "not-python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    starts = []
    popen = subprocess.Popen
    monkeypatch.setattr(process.subprocess, "Popen", lambda *a, **k: starts.append(time.monotonic()) or popen(*a, **k))
    caplog.set_level(logging.ERROR, "attnmon.collector")
    rng = np.random.default_rng(26)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", python=fake, restart_every_s=0.0)
    try:
        deadline = time.monotonic() + 4.5
        n = 0
        while time.monotonic() < deadline:
            c.observe_batch(w, item_ids=ids, timestamps=T0)
            n += 40
            time.sleep(0.05)
    finally:
        c.close(timeout=5)
    assert 2 <= len(starts) <= 4  # at 0, then 1 s, 2 s, 4 s later
    assert all(b - a >= 0.9 for a, b in zip(starts, starts[1:], strict=False))
    assert c.stats.dropped == n and c.stats.written == 0
    assert "before its first report" in caplog.text and str(fake) in caplog.text


def test_a_worker_that_dies_soon_after_it_reported_is_retried_more_slowly(sqlite_url, caplog):
    # one the OOM killer ends as it replays a spill backlog reports first, then dies: it
    # was started again every restart_every_s (here 0), a new interpreter each time.
    # Now each such death in a row after the first doubles the least time between starts.
    caplog.set_level(logging.ERROR, "attnmon.collector")
    rng = np.random.default_rng(27)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", restart_every_s=0.0)
    try:
        for deaths, delay in ((1, 0.0), (2, 1.0), (3, 2.0)):  # one alone: an operator's kill
            c.observe_batch(w, item_ids=ids, timestamps=T0)  # starts one (after the delay)
            assert wait_for(lambda: c._proc is not None and c._reported, 30)  # past its imports
            os.kill(c._proc.pid, signal.SIGKILL)
            assert wait_for(lambda: c._proc is None, 10)  # seen gone
            assert c._short_deaths == deaths and c._restart_delay() == delay
            time.sleep(delay)
    finally:
        c.close(timeout=10)
    # (its log line says so once the rate limit lets it: "… s after it started (2 in a row)")


@pytest.mark.parametrize("python", ["/nowhere/python3", "", 3])
def test_a_python_that_is_not_an_executable_is_refused(sqlite_url, python):
    with pytest.raises(ValueError, match="python="):
        ProcessCollector(sqlite_url, model="m", version="v1", python=python)


@pytest.mark.parametrize("value", [0, 1.5, -1.0, float("inf"), "60", True])
def test_a_bad_hang_after_s_is_refused(sqlite_url, value):
    with pytest.raises(ValueError, match="hang_after_s="):
        ProcessCollector(sqlite_url, model="m", version="v1", hang_after_s=value)


def test_the_worker_settings_come_from_attnmon_yaml_and_the_environment(tmp_path, sqlite_url, monkeypatch):
    from monitor.config import ConfigError, load_config

    path = tmp_path / "attnmon.yaml"
    path.write_text(f"store_url: {sqlite_url}\ncollector:\n  worker:\n    hang_after_s: 12\n"
                    f"    python: {sys.executable}\n")
    monkeypatch.setenv("ATTNMON_COLLECTOR__WORKER__RESTART_EVERY_S", "2.5")
    cfg = load_config(path)
    c = ProcessCollector.from_config("m", "v1", config=cfg)
    assert (c.hang_after_s, c.restart_every_s, c.python) == (12.0, 2.5, sys.executable)
    assert "hang_after_s" not in c._spec  # the worker's collector is not given them
    c.close()
    AttentionCollector.from_config("m", "v1", config=cfg).close()  # which it would refuse
    path.write_text("collector:\n  worker:\n    hang_after_s: -3\n")
    with pytest.raises(ConfigError, match="hang_after_s"):
        load_config(path)


def test_a_worker_started_long_after_the_last_report_is_not_taken_for_hung(sqlite_url, monkeypatch):
    # the watch thread measures silence from the last report. A worker started a while
    # after the previous one died had, until _worker() reset that clock, the dead one's
    # (old) last report and "reported": a watch look in that moment killed the new worker
    # at once. A slow start (a busy host) widens the moment to a second here.
    w = np.full((40, 4), 0.25, np.float32)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, hang_after_s=2.0,
                         restart_every_s=0.0)
    try:
        c.observe_batch(w, timestamps=T0)
        assert c.flush(timeout=30)
        first = c.worker_pid
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: c._proc is None, 10)  # the sender saw it go
        time.sleep(2.5)  # no worker, nothing to hear: past hang_after_s
        real = process.Connection

        def slow_pipe(*args, **kwargs):
            time.sleep(1.0)
            return real(*args, **kwargs)

        monkeypatch.setattr(process, "Connection", slow_pipe)
        c.observe_batch(w, timestamps=T0 + 60)
        assert c.flush(timeout=30)
    finally:
        c.close()
    assert c.stats.written == 80 and c.stats.dropped == 0


@pytest.mark.parametrize("cut", ["in a message", "in a call's array"])
def test_a_serving_process_gone_in_the_middle_of_a_message_ends_the_worker_cleanly(sqlite_url, cut):
    """The serving process killed while it wrote: the worker read half a message. It
    raised OSError ("got end of file during message"), printed its traceback and exited
    1; what it had taken is written either way, and its last report still goes out."""
    import pickle
    import struct
    from multiprocessing.connection import Connection, Pipe

    from collectors import worker

    r, w = os.pipe()
    conn_in = Connection(r, writable=False)
    report_in, conn_out = Pipe(duplex=False)
    spec = {"store_url": sqlite_url, "model": "m", "version": "v1", "sample_rate": 0.0}

    def frame(b: bytes) -> bytes:
        return struct.pack("!i", len(b)) + b

    out = frame(pickle.dumps(("spec", spec), protocol=5))
    if cut == "in a message":
        out += struct.pack("!i", 1000) + b"x" * 10
    else:  # a call whose one array (400 bytes) follows as a frame of its own, cut short
        out += frame(pickle.dumps(("obs", [(1, b"", [400])], 0), protocol=5)) + struct.pack("!i", 400) + b"y" * 7
    os.write(w, out)
    os.close(w)
    worker.serve(conn_in, conn_out)  # returns: no exception
    reports = []
    while report_in.poll(0):
        reports.append(pickle.loads(report_in.recv_bytes()))
    assert reports and reports[-1][0] == "stats"
    conn_in.close()
