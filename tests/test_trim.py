"""collectors.trim: after a backlog is sent the sender thread hands the freed memory back
(glibc's malloc_trim), at most every TRIM_EVERY_S, never on a serving thread; without
glibc nothing is called."""

from __future__ import annotations

import ctypes
import platform
import threading

import numpy as np
import pytest

from collectors import ProcessCollector, trim
from collectors.trim import Trimmer


class FakeTrim:
    def __init__(self):
        self.threads: list[str] = []

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.threads.append(threading.current_thread().name)
        return 1


def test_trims_after_a_big_send_at_most_once_an_interval():
    now = [100.0]
    fake = FakeTrim()
    t = Trimmer(fake, after_bytes=1000, every_s=60.0, clock=lambda: now[0])
    for nbytes in (0, 999, 500):  # steady state: small sends never trim
        t.sent(nbytes)
    assert fake.threads == []
    t.sent(1000)  # a backlog sent: trimmed at once
    assert len(fake.threads) == 1
    now[0] = 159.0
    t.sent(5000)  # another within the interval: waits for it
    t.sent(0)
    assert len(fake.threads) == 1
    now[0] = 160.0
    t.sent(0)  # ... and is trimmed at the first look after it, sent or not
    assert len(fake.threads) == 2
    now[0] = 1000.0
    t.sent(0)  # nothing due
    assert len(fake.threads) == 2


def test_no_malloc_trim_is_a_no_op():
    Trimmer(None, after_bytes=0, every_s=0.0).sent(10**9)  # nothing to call, nothing raised


def test_found_only_where_the_c_library_has_it(monkeypatch):
    class NoTrim:  # musl, macOS: a C library without malloc_trim
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoTrim)
    assert trim._malloc_trim() is None

    def windows(name):
        raise TypeError("expected str, got NoneType")

    monkeypatch.setattr(ctypes, "CDLL", windows)
    assert trim._malloc_trim() is None


def _calls(c, rng, n=5):
    for _ in range(n):
        w = rng.dirichlet(np.ones(20), size=(4, 2, 2)).astype(np.float32)
        c.observe_batch(w, item_ids=rng.integers(0, 100, (4, 20)))
        assert c.flush(timeout=60)


def test_the_sender_thread_trims_not_the_serving_thread(sqlite_url, monkeypatch):
    fake = FakeTrim()
    monkeypatch.setattr(trim, "MALLOC_TRIM", fake)
    monkeypatch.setattr(trim, "TRIM_AFTER_BYTES", 1)  # after every send
    monkeypatch.setattr(trim, "TRIM_EVERY_S", 0.0)
    with ProcessCollector(sqlite_url, model="m", version="v") as c:
        _calls(c, np.random.default_rng(0))
        assert c.stats.accepted == 20
    assert len(fake.threads) >= 5
    assert set(fake.threads) == {"attnmon-sender-m"}


def test_not_more_often_than_the_interval(sqlite_url, monkeypatch):
    fake = FakeTrim()
    monkeypatch.setattr(trim, "MALLOC_TRIM", fake)
    monkeypatch.setattr(trim, "TRIM_AFTER_BYTES", 1)
    with ProcessCollector(sqlite_url, model="m", version="v") as c:
        now = [0.0]
        c._trimmer = Trimmer(fake, after_bytes=1, every_s=60.0, clock=lambda: now[0])
        _calls(c, np.random.default_rng(1), n=3)
        assert fake.threads == ["attnmon-sender-m"]  # the first send; then the clock stood still
        now[0] = 60.0
        _calls(c, np.random.default_rng(2), n=3)
    assert fake.threads == ["attnmon-sender-m"] * 2


def test_small_sends_do_not_trim(sqlite_url, monkeypatch):
    fake = FakeTrim()
    monkeypatch.setattr(trim, "MALLOC_TRIM", fake)
    monkeypatch.setattr(trim, "TRIM_EVERY_S", 0.0)
    with ProcessCollector(sqlite_url, model="m", version="v") as c:
        _calls(c, np.random.default_rng(4))  # a few KB a send: under TRIM_AFTER_BYTES
        assert fake.threads == []
        w = np.full((1000, 12, 4, 50), 1 / 50, np.float32)  # one call of 9.6 MB: a backlog's size
        c.observe_batch(w, item_ids=np.arange(50_000).reshape(1000, 50))
        assert c.flush(timeout=60)
        assert c.stats.accepted == 1020
    assert fake.threads == ["attnmon-sender-m"]


def test_works_without_malloc_trim(sqlite_url, monkeypatch):
    monkeypatch.setattr(trim, "MALLOC_TRIM", None)
    monkeypatch.setattr(trim, "TRIM_AFTER_BYTES", 1)
    monkeypatch.setattr(trim, "TRIM_EVERY_S", 0.0)
    with ProcessCollector(sqlite_url, model="m", version="v") as c:
        _calls(c, np.random.default_rng(3))
    assert c.stats.written == 20 and c.stats.dropped == 0


def test_found_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert trim.MALLOC_TRIM is not None and trim.MALLOC_TRIM(0) in (0, 1)
