"""ProcessCollector under faults: values the worker cannot load, a worker that is
terminated, hangs or dies after spilling, big batches. What was handed in ends written,
rejected or dropped, and is counted once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import func, select
from test_process_collector import T0, batch, stored_n, wait_for

from collectors import AttentionCollector, ProcessCollector, process
from collectors.collector import one_entry
from monitor import Store
from monitor.store import migrate
from monitor.store import tables as t
from monitor.store.engine import make_engine

T_OPEN = 4_102_444_800.0  # 2100: a minute still open, so the worker holds it until a flush


def gone(pid: int) -> bool:
    return subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def exited(pid: int) -> bool:
    """Gone, or a zombie (exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Brand:
    """A type of the serving code's own, passed as attribute values."""

    def __init__(self, n: int):
        self.n = n

    def __str__(self) -> str:
        return f"brand-{self.n}"


class LockedBrand(Brand):
    """One that cannot be pickled at all."""

    def __init__(self, n: int):
        super().__init__(n)
        self.lock = threading.Lock()


def test_values_of_the_callers_own_types_are_taken_as_in_process(sqlite_url, monkeypatch):
    # a module the worker cannot import (as the serving app's __main__ would be)
    nowhere = types.ModuleType("attnmon_nowhere")
    nowhere.Brand = type("Brand", (Brand,), {"__module__": "attnmon_nowhere"})
    monkeypatch.setitem(sys.modules, "attnmon_nowhere", nowhere)
    rng = np.random.default_rng(8)
    w, ids, brand = batch(rng)
    unloadable = np.array([[nowhere.Brand(j % 3) for j in range(30)] for _ in range(40)], dtype=object)
    locked = np.array([[LockedBrand(j % 3) for j in range(30)] for _ in range(40)], dtype=object)
    # the reference: the in-process collector given their str() (it would key each
    # object apart, text alike or not, which splits a value's share between them)
    as_text = np.vectorize(str)(unloadable)
    stats = {}
    for cls, version in ((AttentionCollector, "in"), (ProcessCollector, "out")):
        c = cls(sqlite_url, model="m", version=version, sample_rate=0.0)
        a, b = (as_text, as_text) if cls is AttentionCollector else (unloadable, locked)
        c.observe_batch(w, item_ids=ids, attributes={"brand": brand}, timestamps=T0)
        c.observe_batch(w, item_ids=ids, attributes={"brand": a}, timestamps=T0)
        c.observe_batch(w, item_ids=ids, attributes={"brand": b}, timestamps=T0)
        c.observe(w[0], item_ids=ids[0], attributes={"brand": list(b[0])}, timestamp=T0)
        c.observe(w[0], item_ids=ids[0], cohort=nowhere.Brand(1), timestamp=T0)  # not a str: bad_label
        assert c.flush(timeout=20) is True
        c.close()
        stats[version] = c.stats
    assert stats["out"].accepted == stats["in"].accepted == 121
    assert stats["out"].rejected == stats["in"].rejected == {"bad_label": 1}
    assert stats["out"].written == 121 and stats["out"].dropped == 0
    assert stored_n(sqlite_url, "out") == stored_n(sqlite_url, "in") == 121
    s = Store(sqlite_url)
    ka, kb = s.sketches("m", by=("layer",), version="in"), s.sketches("m", by=("layer",), version="out")
    assert ka.keys() == kb.keys()
    for key, sk_in in ka.items():
        assert sk_in.attrs["brand"].shares() == kb[key].attrs["brand"].shares()
        assert "brand-1" in sk_in.attrs["brand"].shares()


class Pending:
    """On-device summaries whose copy resolves to `value` (size requests)."""

    def __init__(self, value, size: int):
        self.value, self.size = value, size

    def ready(self) -> bool:
        return True

    def resolve(self):
        return self.value


def test_summaries_that_cannot_cross_cost_only_themselves(sqlite_url, monkeypatch):
    nowhere = types.ModuleType("attnmon_nowhere")
    nowhere.Brand = type("Brand", (Brand,), {"__module__": "attnmon_nowhere"})
    monkeypatch.setitem(sys.modules, "attnmon_nowhere", nowhere)
    rng = np.random.default_rng(9)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush(timeout=20)
        worker = c.worker_pid
        c.observe_summaries(Pending(SimpleNamespace(cohorts=None, x=LockedBrand(1)), 5))  # cannot be pickled here
        c.observe_summaries(Pending(SimpleNamespace(cohorts=None, x=nowhere.Brand(1)), 7))  # nor loaded there
        c.observe_batch(w, item_ids=ids, timestamps=T0 + 1)
        assert c.flush(timeout=20)
        assert c.worker_pid == worker  # (the one that could not be loaded did not end it)
    finally:
        c.close()
    st = c.stats
    assert st.written == 80 == stored_n(sqlite_url, "v1") and st.dropped == 12


def test_a_terminated_worker_writes_what_it_holds_and_is_not_counted_as_losing_it(sqlite_url):
    rng = np.random.default_rng(10)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, restart_every_s=0.2)
    try:
        for i in range(5):
            c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + i)
        assert wait_for(lambda: c.stats.accepted == 200)
        first = c.worker_pid
        os.kill(first, signal.SIGTERM)  # as a service manager stops it: it writes what it holds
        assert wait_for(lambda: gone(first) and stored_n(sqlite_url, "v1") == 200)
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + 60)
        assert wait_for(lambda: c.flush(timeout=10))
        assert c.worker_pid not in (None, first)
    finally:
        c.close()
    st = c.stats
    assert stored_n(sqlite_url, "v1") == st.written == 240 and st.dropped == 0


def test_a_worker_dying_before_it_answers_a_flush_costs_what_it_held_once(sqlite_url, monkeypatch):
    rng = np.random.default_rng(11)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, restart_every_s=0.1)
    ask = ProcessCollector._ask
    dying = {"on": False}

    def ask_after_a_kill(self, msg):  # the batch is on its way; the worker dies before answering
        if dying["on"] and msg[0] == "flush":
            dying["on"] = False
            self._proc.kill()
            self._proc.wait()
        return ask(self, msg)

    monkeypatch.setattr(ProcessCollector, "_ask", ask_after_a_kill)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)
        assert c.flush(timeout=20)
        dying["on"] = True
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + 1)
        assert c.flush(timeout=20) is False
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + 2)
        assert wait_for(lambda: c.flush(timeout=10))
    finally:
        c.close()
    st = c.stats
    assert stored_n(sqlite_url, "v1") == st.written == 80 and st.dropped == 40


def test_a_worker_killed_after_it_replayed_its_spill_counts_what_it_held(tmp_path):
    db = tmp_path / "later" / "store.db"  # the store is down: its directory is not there yet
    url = f"sqlite:///{db}"
    rng = np.random.default_rng(12)
    w, ids, _ = batch(rng)
    c = ProcessCollector(url, model="m", version="v1", sample_rate=0.0, spill_dir=tmp_path / "spill",
                         restart_every_s=0.1)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)
        assert c.flush(timeout=20) and c.stats.spilled == 40
        db.parent.mkdir()
        migrate.upgrade(url)
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + 60)
        assert c.flush(timeout=20)  # the spill replayed, then this batch: 80 written
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + 120)  # held, not written
        assert wait_for(lambda: c.stats.accepted == 120)
        worker = c.worker_pid
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: gone(worker))
        assert wait_for(lambda: c.flush(timeout=10))
    finally:
        c.close()
    st = c.stats
    assert stored_n(url, "v1") == st.written == 80 and st.dropped == 40


def test_close_gives_up_on_a_hung_worker_within_its_timeout_and_counts_the_loss(sqlite_url):
    rng = np.random.default_rng(13)
    w, ids, _ = batch(rng, L=200)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, queue_size=20)
    c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)
    assert wait_for(lambda: c.stats.accepted == 40)  # the worker holds them
    worker = c.worker_pid
    os.kill(worker, signal.SIGSTOP)  # hung: it reads nothing and answers nothing
    try:
        handed = 40
        for i in range(100):  # fills the pipe, then the queue: the serving calls drop and count
            c.observe_batch(w, item_ids=ids, timestamps=T_OPEN + i)
            handed += 40
            time.sleep(0.002)
        start = time.monotonic()
        c.close(timeout=2)
        assert time.monotonic() - start < 10
        assert wait_for(lambda: gone(worker), 5)  # killed and reaped, not left stopped
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGCONT)
    st = c.stats
    assert st.written == 0 == stored_n(sqlite_url, "v1") and st.dropped == handed


@pytest.mark.parametrize("value", ["5", float("nan"), -1.0, None])
def test_a_bad_restart_every_s_is_refused_here(sqlite_url, value):
    # (a str reached the sender thread, which failed on it at the first call: every
    # observation lost, uncounted)
    with pytest.raises(ValueError, match="restart_every_s="):
        ProcessCollector(sqlite_url, model="m", version="v1", restart_every_s=value)


def test_a_big_batch_crosses_without_copies_in_the_serving_process(sqlite_url):
    rng = np.random.default_rng(14)
    w = rng.dirichlet(np.ones(200), size=(4096, 2, 2)).astype(np.float32)  # 13 MB
    lengths = rng.integers(1, 201, 4096)  # left padding
    w[np.broadcast_to((np.arange(200) < 200 - lengths[:, None])[:, None, None, :], w.shape)] = 0
    w /= w.sum(axis=-1, keepdims=True)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    try:
        c.observe_batch(w[:1], timestamps=T0)
        assert c.flush(timeout=30)  # the worker is up
        tracemalloc.start()
        try:
            c.observe_batch(w, lengths=lengths, timestamps=T0)  # its copy: w.nbytes
            assert c.flush(timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        c.close()
    # a pickle of the entry and a frame around it held two more copies, and built them
    # under the GIL (about 40 ms for 50 MB): the array now goes down the pipe as it is
    assert peak < 1.5 * w.nbytes
    assert c.stats.written == 4097 == stored_n(sqlite_url, "v1")


def test_the_sender_yields_the_gil_by_time_not_by_entry(sqlite_url, monkeypatch):
    rng = np.random.default_rng(15)
    w = rng.dirichlet(np.ones(50), size=(2, 2)).astype(np.float32)
    entries = [one_entry(w, rng.integers(0, 1000, 50), "web", None, None, T0) for _ in range(5000)]
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    me, yields, real_sleep = threading.get_ident(), [], time.sleep
    try:  # this thread sends, in the sender's place
        c._send_entries(entries[:1], 0)
        assert c._ask(("flush", 1))  # the worker is up
        monkeypatch.setattr(process.time, "sleep", lambda s: (
            yields.append(s) if s == 0 and threading.get_ident() == me else None, real_sleep(s))[1])
        start = time.perf_counter()
        c._send_entries(entries, 0)
        sending = time.perf_counter() - start
        monkeypatch.undo()
        assert c._ask(("flush", 2))
    finally:
        c._end_worker()
    # a GIL yield after each entry (~0.1 ms each) cost several times the pickling: the
    # sender fell behind ~7,000 single calls a second, and the serving side dropped them.
    # A count, not a timing: however slow the machine, yields are at most one per YIELD_S.
    assert len(yields) <= sending / process.YIELD_S + 1, (len(yields), sending)
    assert c.stats.written == 5001 == stored_n(sqlite_url, "v1")


def test_hostile_inputs_are_rejected_for_the_reasons_given_in_process(sqlite_url):
    w = np.random.default_rng(16).dirichlet(np.ones(4), size=(3, 2, 2)).astype(np.float32)
    batches = [
        dict(item_ids=[["a", b"b", 3, 4.5]] * 3, attributes={"brand": [["x", b"\xff\xfe", "y", "z"]] * 3}),
        dict(item_ids=[["a\x00b", "c", "d", "e"]] * 3),
        dict(cohorts=["c" * 10_000, "web", "x\x00y"]),
        dict(attributes={"k" * 10_000: [["a"] * 4] * 3}),
        dict(attributes={"brand": [["v" * 10_000] * 4] * 3}),
        dict(request_ids=["r1", b"r2", None]),
        dict(lengths=np.array([4, 3.0, "x"], dtype=object)),
        dict(padding="middle"),
    ]
    singles = [
        dict(item_ids=["a", b"\x00", "c", "d"], cohort=b"web"),
        dict(attributes={"brand": ["a", "b"]}),
        dict(attributes={"brand": [b"a", "b", 1, None]}),
    ]
    stats = {}
    for cls, version in ((AttentionCollector, "in"), (ProcessCollector, "out")):
        with cls(sqlite_url, model="m", version=version, sample_rate=1.0, seed=1) as c:
            for kw in batches:
                c.observe_batch(w, timestamps=T0, **kw)
            for kw in singles:
                c.observe(w[0], timestamp=T0, **kw)
            c.observe_batch(w.astype(object), timestamps=T0)
        stats[version] = c.stats
    assert stats["out"] == stats["in"] and stats["in"].written == 5
    assert stats["in"].rejected == {"bad_label": 6, "length_mismatch": 7, "bad_value": 6, "dtype": 3, "shape": 3}
    assert stored_n(sqlite_url, "out") == stored_n(sqlite_url, "in") == 5


def test_interpreter_exit_without_close_writes_what_two_workers_hold(sqlite_url):
    script = textwrap.dedent(f"""
        import threading, time
        import numpy as np
        from collectors import ProcessCollector
        rng = np.random.default_rng(0)
        w = rng.dirichlet(np.ones(30), size=(40, 2, 2)).astype(np.float32)
        a = ProcessCollector({sqlite_url!r}, model="m", version="a", sample_rate=0.0)
        b = ProcessCollector({sqlite_url!r}, model="m", version="b", sample_rate=0.0)
        def serve(c):
            for i in range(25):
                c.observe_batch(w, timestamps={T_OPEN})
                c.observe(w[0], timestamp={T_OPEN})
        threads = [threading.Thread(target=serve, args=(c,)) for c in (a, b) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        while min(c.stats.accepted + c.stats.dropped for c in (a, b)) < 4 * 25 * 41:
            time.sleep(0.05)  # the workers hold them (their minute is open): exit now
        print(a.stats.dropped, b.stats.dropped)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dropped = [int(x) for x in proc.stdout.split()]
    assert [stored_n(sqlite_url, v) for v in "ab"] == [4 * 25 * 41 - d for d in dropped]


def test_drops_reach_collector_health_when_no_call_follows_them(sqlite_url):
    rng = np.random.default_rng(17)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, restart_every_s=0.1)
    try:
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)
        assert wait_for(lambda: c.stats.accepted == 40)
        worker = c.worker_pid
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: gone(worker))
        assert wait_for(lambda: c.flush(timeout=10))  # a new worker, told of the 40 lost; no calls
    finally:
        c.close()
    assert c.stats.dropped == 40
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.sum(t.collector_health.c.dropped))).scalar() == 40
    finally:
        engine.dispose()


def test_on_device_summaries_reach_the_worker_without_torch(sqlite_url):
    from test_collector_summaries import reduce, traffic

    from collectors.torch import Summaries

    rng = np.random.default_rng(18)
    W, lengths, cohorts, ts, items, brand, rids = traffic(rng)
    fields = vars(reduce(W, lengths, cohorts, ts, item_ids=items, attributes={"brand": brand}))
    s = Summaries(**{k: v for k, v in fields.items() if k != "cohorts"})  # (a property there)
    stats = {}
    for cls, version in ((AttentionCollector, "in"), (ProcessCollector, "out")):
        c = cls(sqlite_url, model="m", version=version, sample_rate=0.0)
        try:
            c.observe_summaries(Pending(s, len(s.codes)))
            assert c.flush(timeout=30)
            if cls is ProcessCollector:
                # loading a collectors.torch.Summaries imported torch there: 1.4 s (while
                # the pipe waits) and 175 MB more per worker, for a few arrays
                with open(f"/proc/{c.worker_pid}/maps") as maps:
                    assert "libtorch" not in maps.read()
        finally:
            c.close()
        stats[version] = c.stats
    assert stats["out"] == stats["in"] and stats["in"].written > 0


def test_at_exit_a_slow_worker_is_left_to_finish_not_killed(sqlite_url, tmp_path):
    # close() at exit waits 10 s; a worker slower than that (here: stopped for a while,
    # as a store that takes its time) still writes what it holds once the process is gone
    script = textwrap.dedent(f"""
        import os, signal, time
        import numpy as np
        from collectors import ProcessCollector
        c = ProcessCollector({sqlite_url!r}, model="m", version="v1", sample_rate=0.0)
        w = np.random.default_rng(0).dirichlet(np.ones(20), size=(50, 1, 2)).astype(np.float32)
        c.observe_batch(w, timestamps={T_OPEN})
        while c.stats.accepted < 50:
            time.sleep(0.05)
        print(c.worker_pid, flush=True)
        os.kill(c.worker_pid, signal.SIGSTOP)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out, err = tmp_path / "out", tmp_path / "err"  # (files: the worker keeps its stderr open)
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.run([sys.executable, "-c", script], env=env, stdout=o, stderr=e, timeout=60)
    assert proc.returncode == 0, err.read_text()
    worker = int(out.read_text().split()[0])
    try:
        assert not gone(worker)
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGCONT)
    assert wait_for(lambda: stored_n(sqlite_url, "v1") == 50, timeout=30)
    assert wait_for(lambda: gone(worker), 10)


def test_a_call_that_ends_while_close_runs_is_counted(sqlite_url, monkeypatch):
    import collectors.serving as collector

    rng = np.random.default_rng(19)
    w, ids, _ = batch(rng)
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0)
    c.observe_batch(w, item_ids=ids, timestamps=T0)
    assert c.flush(timeout=20)
    copying = threading.Event()
    make = collector.batch_entry

    def slow_copy(*args):  # a big batch's copy, on a serving thread, as close() runs
        copying.set()
        time.sleep(0.5)
        return make(*args)

    monkeypatch.setattr(collector, "batch_entry", slow_copy)
    serving = threading.Thread(target=c.observe_batch, args=(w,), kwargs={"timestamps": T0})
    serving.start()
    assert copying.wait(5)
    c.close()
    serving.join()
    st = c.stats
    assert len(c._q) == 0 and st.written == 40 and st.dropped == 40


def test_at_exit_hung_workers_hold_the_exit_once_not_once_each(sqlite_url, tmp_path):
    # three collectors, their workers stopped: exit waited 10 s for each in turn (30.5 s
    # measured), a 30 s grace period before SIGKILL gone; they are waited for together
    script = textwrap.dedent(f"""
        import os, signal, time
        import numpy as np
        from collectors import ProcessCollector
        w = np.random.default_rng(0).dirichlet(np.ones(20), size=(50, 1, 2)).astype(np.float32)
        cs = [ProcessCollector({sqlite_url!r}, model="m", version=f"v{{i}}", sample_rate=0.0) for i in range(3)]
        for c in cs:
            c.observe_batch(w, timestamps={T_OPEN})
        while min(c.stats.accepted for c in cs) < 50:
            time.sleep(0.05)
        print(*[c.worker_pid for c in cs], flush=True)
        for c in cs:
            os.kill(c.worker_pid, signal.SIGSTOP)
        print(time.time(), flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out, err = tmp_path / "out", tmp_path / "err"  # (files: the workers keep stderr open)
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.run([sys.executable, "-c", script], env=env, stdout=o, stderr=e, timeout=90)
    exited = time.time()
    lines = out.read_text().split("\n")
    workers = [int(p) for p in lines[0].split()]
    for pid in workers:  # left to finish on their own: let them
        if not gone(pid):
            os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 0, err.read_text()
    assert exited - float(lines[1]) < 20  # 10 s for all, and the interpreter's own exit
    assert wait_for(lambda: [stored_n(sqlite_url, f"v{i}") for i in range(3)] == [50] * 3, timeout=30)


def test_a_worker_terminated_in_the_middle_of_a_message_is_not_counted_twice(sqlite_url, monkeypatch):
    # a message of two calls: the worker takes the first (its arrays are in the pickle),
    # is terminated while it waits for the second's big array, and writes the first as it
    # exits. The sender's write of the rest fails: it counted both calls as dropped, the
    # first written too (written + dropped > handed)
    rng = np.random.default_rng(20)
    w, ids, _ = batch(rng)
    big, _, _ = batch(rng, L=300)  # 192 kB of weights: sent as a frame of their own
    c = ProcessCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, restart_every_s=0.1)
    write, gate, at_gate = ProcessCollector._write, threading.Event(), threading.Event()

    def gated(self, *frames):  # the message's first frame, then (once) a wait before the rest
        if len(frames) > 1 and not gate.is_set():
            write(self, frames[0])
            at_gate.set()
            assert gate.wait(30)
            frames = frames[1:]
        write(self, *frames)

    try:
        c.observe_batch(w, item_ids=ids, timestamps=T0)
        assert c.flush(timeout=20)
        worker = c.worker_pid
        os.kill(worker, signal.SIGSTOP)  # the sender waits for its flush's answer meanwhile
        flushing = threading.Thread(target=c.flush, kwargs={"timeout": 30})
        flushing.start()
        time.sleep(0.3)
        c.observe_batch(w, item_ids=ids, timestamps=T_OPEN)  # held by the worker until it closes
        c.observe_batch(big, timestamps=T_OPEN)
        monkeypatch.setattr(ProcessCollector, "_write", gated)
        os.kill(worker, signal.SIGCONT)
        assert at_gate.wait(20)
        time.sleep(1.0)  # the worker has the first call, and waits for the big array
        os.kill(worker, signal.SIGTERM)
        assert wait_for(lambda: exited(worker))  # (not yet reaped: the sender waits at the gate)
        gate.set()
        flushing.join(30)
        assert wait_for(lambda: c.flush(timeout=10))  # a new worker
    finally:
        gate.set()
        c.close()
    st = c.stats
    assert stored_n(sqlite_url, "v1") == st.written == 80
    assert st.dropped == 40 and st.written + st.dropped == 120


@pytest.mark.parametrize("kind", ["ProcessCollector", "AttentionCollector"])
def test_a_thread_the_os_refuses_costs_no_serving_call_and_is_tried_again(sqlite_url, kind):
    # the first call starts the sender (or background) thread; where the OS refuses it (a
    # container's pids limit; here, its stack does not fit the address space) the call
    # raised, the thread was never tried again: flush() never returned True, close()
    # raised, nothing counted
    script = textwrap.dedent(f"""
        import resource, threading
        import numpy as np
        from collectors import {kind} as Collector
        c = Collector({sqlite_url!r}, model="m", version="v1", sample_rate=0.0)
        w = np.full((40, 4), 0.25, np.float32)
        with open("/proc/self/status") as f:
            vm = int(next(x for x in f if x.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
        threading.stack_size(1 << 30)
        try:
            threading.Thread(target=int).start()
            raise SystemExit("the OS took the thread: no test")
        except RuntimeError:
            pass
        c.observe_batch(w, timestamps={T0})
        threading.stack_size(0)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        c.observe_batch(w, timestamps={T0})
        assert c.flush(timeout=30)
        c.close(timeout=10)
        print(c.stats.written, c.stats.dropped)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["80", "0"] and stored_n(sqlite_url, "v1") == 80
    assert proc.stderr.count("could not start its thread") == 1  # said, once
