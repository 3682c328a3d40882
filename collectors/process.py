"""ProcessCollector: AttentionCollector's work in a process of its own.

An AttentionCollector summarises on a thread of the serving process, and that thread's
Python competes with the serving threads for the GIL: each time a serving thread comes
back from the model (torch and numpy release the GIL), it may wait for the collector's
thread. `benchmarks.serving` measures this in the request's p99 and p99.9.

A ProcessCollector takes the same calls and makes the same copies, and a thread sends
them, pickled, down a pipe to `python -m collectors.worker`, which runs an
AttentionCollector with the same options: validation, metrics, sketches and SQL all
happen there. What stays in the serving process is a deque, pickling (a memory copy for
numeric and fixed-width string arrays) and pipe writes, which release the GIL.

- The worker starts with the first call, on the sender thread. If it dies, what it had
  not yet written is lost and counted (about: from its last stats, a second old at most);
  a new one starts, at most every `restart_every_s`. One that reports nothing for
  `hang_after_s` (it reports every second) is killed first, by a watch thread: the
  sender may be blocked writing to it. One that cannot take its options says why, and
  no other is started.
- The serving process exiting, or being killed, ends the worker's input: it writes (or
  spills) what it holds and exits. `close(timeout)` does the same and waits, then kills a
  worker not done by then and counts what it held; at interpreter exit a slow worker is
  left to finish on its own.
- Values other than builtins and numpy cross as their str() (what the in-process
  collector keys them by), so the worker never imports the serving code.
- After `os.fork()` the child starts a worker of its own; the parent's stays the parent's.
- After a backlog is sent (the worker fell behind and the queue filled), the sender
  thread has glibc give the freed memory back to the OS (collectors.trim).
- Not supported: `strict=True` (it validates on the calling thread, for tests and batch
  jobs: use AttentionCollector) and `engine=` (an engine cannot cross to another process:
  give `store_url`).

    >>> with ProcessCollector("postgresql+psycopg://...", model="sasrec", version="v1") as c:
    ...     c.observe_batch(weights, item_ids=history, lengths=lengths)
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from collectors import trim
from collectors.collector import (
    WAIT_FOR_THREAD,
    AttentionCollector,
    CollectorStats,
    ServingCalls,
    _live,
    entry_size,
)
from collectors.rarely import RareLog

log = logging.getLogger("attnmon.collector")

POLL_S = 0.05  # how often the sender looks at the queue: one pipe write per look
OUT_OF_BAND = 1 << 16  # bytes: an array this big is sent as it is, not copied into a pickle
YIELD_S = 0.0005  # the sender's Python between two yields of the GIL (a yield costs ~0.1 ms:
# one after each entry capped the sender at ~7,000 single observe() calls a second)
MIN_HANG_S = 2.0  # hang_after_s: twice the worker's report interval, at least
START_S = 30.0  # a new worker's time to import and report, at least (a slow disk, a busy host)
MAX_BACKOFF_S = 300.0  # the longest wait between starts of workers that die at once
# workers that die in a row within this long of their start, after their first report,
# are started ever more slowly from the second: one the OOM killer ends as it replays a
# spill backlog would otherwise be started again every restart_every_s, a new
# interpreter each time, on the serving host (one such death alone: an operator's kill)
SHORT_LIFE_S = 60.0
EXIT_S = 10.0  # at interpreter exit, the wait for the workers to take and write what is held
_ZERO = CollectorStats(0, 0, {}, 0, 0, 0, 0, 0, 0)


class WorkerDown(Exception):
    """The worker process cannot be reached (it exited, or could not start)."""


class Resolved:
    """On-device summaries resolved in the serving process (the copy waited for on the
    sender thread): what crosses the pipe in place of a PendingSummaries. It carries their
    fields (and `cohorts`, a property of collectors.torch.Summaries), not the Summaries:
    loading one would import torch in the worker, 1.4 s and 175 MB, for a few arrays."""

    def __init__(self, summaries, size: int):
        self._fields, self.size = dict(vars(summaries), cohorts=summaries.cohorts), size

    def ready(self) -> bool:
        return True

    def resolve(self):
        return SimpleNamespace(**self._fields)


class ProcessCollector(ServingCalls):
    """The AttentionCollector interface, with the work done in a worker process.

    Takes AttentionCollector's options (checked here, at construction) and the worker's:
    - `restart_every_s`: the least time between two worker starts;
    - `hang_after_s`: a worker that sends nothing for this long (it reports every second,
      flushing or not) is taken for hung, killed and replaced; what it held is counted as
      dropped. None: never;
    - `python`: the interpreter that runs the worker (default: sys.executable). Give it
      where the serving process is not a python executable (uWSGI embeds one); it
      must import numpy, SQLAlchemy and the store's driver.
    """

    _WORKER_OPTIONS = True

    def __init__(self, store_url: str | None = None, model: str = "", version: str = "", *,
                 restart_every_s: float = 5.0, hang_after_s: float | None = 60.0, python: str | None = None,
                 **options):
        if options.get("engine") is not None:
            raise ValueError("engine=: an engine cannot cross to the worker process; give store_url")
        if options.get("strict"):
            raise ValueError("strict=True validates on the calling thread; use AttentionCollector for it")
        if isinstance(restart_every_s, bool) or not isinstance(restart_every_s, int | float) \
                or not 0 <= restart_every_s < float("inf"):
            raise ValueError(f"restart_every_s={restart_every_s!r}: must be a number of seconds >= 0")
        if hang_after_s is not None and (isinstance(hang_after_s, bool) or not isinstance(hang_after_s, int | float)
                                         or not MIN_HANG_S <= hang_after_s < float("inf")):
            raise ValueError(f"hang_after_s={hang_after_s!r}: must be a number of seconds >= {MIN_HANG_S} (the "
                             "worker reports every second), or None (never)")
        if isinstance(python, os.PathLike):
            python = os.fspath(python)
        executable = shutil.which(python) if isinstance(python, str) and python else None
        if python is not None and executable is None:
            raise ValueError(f"python={python!r}: not an executable file (the worker's interpreter)")
        if store_url is None:
            store_url = os.environ.get("ATTNMON_STORE_URL", "sqlite:///attnmon.db")
        # the same checks, and the same errors, as an in-process collector's
        probe = AttentionCollector(store_url, model, version, **options)
        # relative paths as read here (the probe's): a worker may start after a chdir
        store_url = probe.store_url
        if options.get("spill_dir") is not None:
            options["spill_dir"] = str(probe._spill.root)
        # what AttentionCapture reads of its collector
        self.queue_size, self.clock, self.sample_rate = probe.queue_size, probe.clock, probe.sample_rate
        self.tol, self.max_length, self.strict = probe.tol, probe.max_length, False
        try:
            pickle.dumps(options)
        except Exception as exc:
            raise ValueError(f"the options must be picklable to reach the worker process: {exc}") from None
        for name, value in options.items():
            # pickled by reference to __main__, which in the worker is collectors.worker
            if "__main__" in (getattr(value, "__module__", None), type(value).__module__):
                raise ValueError(f"{name}={value!r} is defined in __main__, which the worker process "
                                 "cannot import: define it in a module of its own")
        self.store_url, self.model, self.version = store_url, model, version
        self.restart_every_s, self.hang_after_s = restart_every_s, hang_after_s
        self.python = executable or sys.executable
        self._spec = {"store_url": store_url, "model": model, "version": version, **options}
        if probe._hash_item_ids:
            # the key as found now ($ATTNMON_HASH_KEY, say): a worker started later must
            # not depend on the variable still being set, nor hash with another key
            self._spec["hash_key"] = probe._hash_key
        self._reset_state()
        _live.add(self)  # (collectors.collector's: closed at exit, reset after a fork)

    @property
    def weights_id(self) -> str | None:
        return self._spec.get("weights_id")

    @weights_id.setter
    def weights_id(self, value: str | None) -> None:
        # AttentionCapture sets it when it wraps the model, before any call; a running
        # worker has written its deployment already
        if self._proc is not None and value != self.weights_id:
            log.warning("attnmon collector %s %s: weights_id set after the worker started; the deployment "
                        "row keeps the old one", self.model, self.version)
        self._spec["weights_id"] = value

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._q: deque = deque()
        self._capacity = self.queue_size  # 0 once closed
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the counters below
        self._flushed = threading.Condition(self._lock)
        self._flush_req = self._flush_done = 0
        self._flush_ok = True
        self._dropped_hot = 0  # dropped here, not yet told to a worker (its health counts them)
        # drops taken from _dropped_hot for the running worker (or in hand), and how many of
        # them its last report has: stats counts the rest, else they were in no count
        # between the sender taking them and that report (stats.dropped went down)
        self._told = self._acked = 0
        self._finished = _ZERO  # the sum of the last stats of workers that ended
        self._current = _ZERO  # the running worker's last stats
        self._settled = 0  # of what it was sent: written, rejected, dropped or spilled (its report)
        self._sent = 0  # requests sent to the running worker
        self._in_hand = 0  # requests the sender took from the queue, not yet sent
        self._proc: subprocess.Popen | None = None
        self._out: Connection | None = None
        self._in: Connection | None = None
        self._thread: threading.Thread | None = None
        self._last_start = -1e18
        self._heard = time.monotonic()  # when the running worker last reported (or started)
        self._reported = False  # whether it has reported yet: until then it may be importing
        self._failed: str | None = None  # why a worker could not take its options
        self._early_deaths = 0  # workers in a row that died before their first report
        self._short_deaths = 0  # ... or after it, within SHORT_LIFE_S of their start
        self._stop = False
        self._give_up = False  # close() timed out: no new worker for what is left
        self._closed = False
        self._exit_by: float | None = None  # set at interpreter exit
        self._log_rarely = RareLog(log)
        self._trimmer = trim.Trimmer(trim.MALLOC_TRIM, trim.TRIM_AFTER_BYTES, trim.TRIM_EVERY_S)

    # --- the serving path: as AttentionCollector's --------------------------------------
    def observe_summaries(self, pending) -> None:
        """On-device summaries (see AttentionCollector.observe_summaries): the sender
        thread waits for the device's copy, and the worker checks and takes them."""
        if len(self._q) >= self._capacity:
            self._drop(getattr(pending, "size", 1))
            return
        self._put(("summaries", pending, None))

    def _put(self, entry: tuple) -> None:
        self._q.append(entry)
        if self._closed:  # close() ran while this call made its copy: no one will send it
            self._drop_left()
        elif self._thread is None:
            self._start()

    # --- control -------------------------------------------------------------------
    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id (None before the first call, or while down)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                sender = threading.Thread(target=self._run, name=f"attnmon-sender-{self.model}", daemon=True)
                if not self._started(sender, "thread", WAIT_FOR_THREAD):
                    return
                self._thread = sender
                if self.hang_after_s is not None:
                    watch = threading.Thread(target=self._watch, args=(sender,), daemon=True,
                                             name=f"attnmon-watch-{self.model}")
                    self._started(watch, "hang watch", "a hung worker is not replaced")

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Have the worker process and write everything observed so far. True when it
        was written (or spilled) within `timeout`."""
        if self._closed:
            return True
        self._start()
        with self._flushed:
            self._flush_req += 1
            want = self._flush_req
        self._wake.set()
        with self._flushed:
            if not self._flushed.wait_for(lambda: self._flush_done >= want, timeout):
                return False
            return self._flush_ok

    def close(self, timeout: float = 30.0) -> None:
        """Flush what was accepted, stop the worker and the thread. Idempotent. A worker
        that has not written what it holds and exited within `timeout` (hung, stopped, a
        store that does not answer) is killed, and what it held is counted as dropped.
        (At interpreter exit it is left to finish instead: no one reads the counts then.)"""
        self._close(timeout, kill=True)

    def _close(self, timeout: float, kill: bool) -> None:
        if self._closed or os.getpid() != self._pid:
            return
        self._capacity = 0
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join(timeout)
            if kill and self._thread.is_alive():
                # the sender waits on the worker (a pipe write, or the answer to close):
                # killing it ends the wait, and the sender counts the loss
                self._give_up = True
                proc = self._proc
                if proc is not None:
                    proc.kill()
                self._thread.join(5.0)
        self._closed = True
        self._drop_left()  # calls that passed the queue check before close() and ended after

    def _exit_begin(self) -> None:
        # every collector's worker closes at once, then each is waited for until one
        # deadline: in turn, N hung workers held the exit N x 10 s
        self._exit_by = time.monotonic() + EXIT_S
        if not self._closed and os.getpid() == self._pid and self._thread is not None:
            self._capacity = 0
            self._stop = True
            self._wake.set()

    def _at_exit(self) -> None:
        # a worker not done in time writes what it holds on its own, once we are gone
        by = self._exit_by if self._exit_by is not None else time.monotonic() + EXIT_S
        self._close(max(by - time.monotonic(), 0.0), kill=False)

    @property
    def stats(self) -> CollectorStats:
        """The workers' counts (the running one's as of its last report, about a second
        old) and what was dropped here."""
        with self._lock:
            hot = self._dropped_hot + max(self._told - self._acked, 0)
            total = _add(self._finished, self._current)
        return CollectorStats(
            observed=total.observed, accepted=total.accepted, rejected=total.rejected,
            dropped=total.dropped + hot, spilled=total.spilled, written=total.written,
            queue_depth=len(self._q) + self._current.queue_depth,
            pending_batches=self._current.pending_batches, bad_spill_files=total.bad_spill_files)

    def _watch(self, sender: threading.Thread) -> None:
        """Kill a worker that has said nothing for hang_after_s (stopped, or stuck): the
        sender, which may be waiting on it, then counts what it held and starts another.
        (A thread of its own: the sender may be blocked in a write to that worker.)"""
        while sender.is_alive():
            sender.join(min(1.0, self.hang_after_s / 4))
            proc = self._proc
            silent = time.monotonic() - self._heard
            limit = self.hang_after_s if self._reported else max(self.hang_after_s, START_S)
            # (closing: the worker may be silent while it writes what it holds, and close()
            # has a timeout of its own)
            if proc is not None and silent > limit and not self._stop and proc.poll() is None:
                self._log_rarely(logging.ERROR, "attnmon collector %s %s: the worker (pid %d) has sent nothing "
                                 "for %.0f s (hung or stopped): killed, and replaced", self.model,
                                 self.version, proc.pid, silent)
                proc.kill()
                self._heard = time.monotonic()

    # --- the sender thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            # read before the queue is drained: what a caller put in before close() is sent
            stop = self._stop
            with self._lock:
                want = self._flush_req
                dropped, self._dropped_hot = self._dropped_hot, 0
                self._told += dropped
            entries = []
            while self._q:
                entries.append(self._q.popleft())
            self._in_hand = sum(entry_size(e) for e in entries) + dropped
            ok = True
            sent = 0
            try:
                if entries or dropped or want > self._flush_done or stop:
                    sent = self._send_entries(entries, dropped)
                    if want > self._flush_done or stop:
                        ok = self._ask(("close",) if stop else ("flush", want))
                if not stop:  # (a closed worker's end of output is no loss)
                    self._read_stats()
            except WorkerDown as exc:
                ok = False
                self._worker_lost(exc, self._in_hand)
            except Exception:  # never let the thread die: the serving path relies on it
                ok = False
                log.exception("attnmon collector: sender step failed")
            if want > self._flush_done:
                with self._flushed:
                    self._flush_done = want
                    self._flush_ok = ok
                    self._flushed.notify_all()
            if stop:
                self._end_worker()
                return
            del entries  # (a backlog: freed before a trim, which can give it back)
            self._trimmer.sent(sent)

    def _send_entries(self, entries: list[tuple], dropped: int) -> int:
        """Pickle the entries and write them to the worker; the bytes written."""
        self._worker()
        items, bufs = [], []  # (requests, pickle, sizes of its buffers); the buffers, in order
        last_yield = time.perf_counter()
        for e in entries:
            n = entry_size(e)
            if e[0] == "summaries":
                try:  # waits for the device's copy, here and not on a serving thread
                    e = ("summaries", Resolved(e[1].resolve(), n), None)
                except Exception as exc:
                    dropped += n
                    self._log_rarely(logging.ERROR, "attnmon collector: on-device summaries lost", exc_info=exc)
                    continue
            big: list[memoryview] = []
            try:
                # a big array goes down the pipe from its own memory (a pipe write releases
                # the GIL) rather than copied into the pickle, and again into the frame
                blob = pickle.dumps(_crossable(e), protocol=5, buffer_callback=lambda b, big=big: (
                    b.raw().nbytes < OUT_OF_BAND or big.append(b.raw())))
            except Exception as exc:  # one call's values must not cost the others theirs
                dropped += n
                self._log_rarely(logging.ERROR, "attnmon collector %s %s: a call's values could not be sent to "
                                 "the worker (%s); dropped (counted)", self.model, self.version, exc)
                continue
            items.append((n, blob, [m.nbytes for m in big]))
            bufs.extend(big)
            if time.perf_counter() - last_yield > YIELD_S:
                time.sleep(0)  # let a serving thread have the GIL
                last_yield = time.perf_counter()
        # counted as sent before the write: a worker stopped in the middle of the message
        # (SIGTERM) writes and reports what it took of it; sent - settled is the rest
        self._sent += sum(n for n, _, _ in items) + dropped
        self._in_hand = 0
        frame = pickle.dumps(("obs", items, dropped), protocol=5)
        self._write(frame, *bufs)
        return len(frame) + sum(m.nbytes for m in bufs)

    def _ask(self, msg: tuple) -> bool:
        """Send a flush or close, and wait for the worker's answer (its stats)."""
        self._write(pickle.dumps(msg, protocol=5))
        while True:
            while not self._in.poll(1.0):
                if self._proc.poll() is not None:
                    raise WorkerDown(f"the worker exited with status {self._proc.returncode}")
            _, stats, token, ok, settled, told = self._recv()
            self._note_stats(stats, settled, told)
            if token is not None:
                return bool(ok)

    def _write(self, *frames) -> None:
        try:
            for frame in frames:
                self._out.send_bytes(frame)
        except OSError as exc:
            raise WorkerDown(f"the worker stopped reading: {exc}") from exc

    def _read_stats(self) -> None:
        """Take the reports the worker sent since the last look, without waiting."""
        inp = self._in
        while inp is not None and inp.poll(0):
            _, stats, _, _, settled, told = self._recv()
            self._note_stats(stats, settled, told)

    def _recv(self) -> tuple:
        try:
            msg = pickle.loads(self._in.recv_bytes())
        except (EOFError, OSError) as exc:
            raise WorkerDown("the worker exited") from exc
        if msg[0] == "failed":
            self._failed = msg[1]
            raise WorkerDown(self._failed_why())
        return msg

    def _failed_why(self) -> str:
        return (f"the worker could not take the collector's options ({self._failed}); no other is started, "
                "as it would fail the same way")

    def _note_stats(self, stats: dict, settled: int, told: int) -> None:
        with self._lock:
            self._current = CollectorStats(**stats)
            self._settled, self._acked = settled, told
        self._heard, self._reported = time.monotonic(), True

    def _worker(self) -> Connection:
        """The running worker's input, starting one if there is none."""
        if self._proc is not None and self._proc.poll() is None:
            return self._out
        if self._proc is not None:
            raise WorkerDown(f"the worker exited with status {self._proc.returncode}")
        if self._give_up:
            raise WorkerDown("closed before the worker finished")
        if self._failed is not None:
            raise WorkerDown(self._failed_why())
        wait = self._last_start + self._restart_delay() - time.monotonic()
        if wait > 0:
            raise WorkerDown(f"the worker is down; the next start in {wait:.1f} s")
        self._last_start = time.monotonic()
        # before the new worker is _proc: the watch thread must not measure its silence
        # from the last report of the one before (it would kill it as it starts)
        self._heard, self._reported = time.monotonic(), False
        env = dict(os.environ)
        # the worker imports this package from where the serving process found it
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            self._proc = subprocess.Popen([self.python, "-m", "collectors.worker"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise WorkerDown(f"the worker could not start: {exc}") from exc
        self._out = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._in = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._sent = 0
        self._write(pickle.dumps(("spec", self._spec), protocol=5))
        return self._out

    def _restart_delay(self) -> float:
        """restart_every_s; doubled for each worker in a row that died before its first
        report (an interpreter that is not a python, or cannot import numpy: it would be
        started, and die, at every call), and for each but the first in a row that died
        within SHORT_LIFE_S of its start, up to MAX_BACKOFF_S."""
        k = self._early_deaths + max(self._short_deaths - 1, 0)
        if not k:
            return self.restart_every_s
        return min(max(self.restart_every_s, 1.0) * 2 ** min(k - 1, 16), MAX_BACKOFF_S)

    def _worker_lost(self, exc: WorkerDown, in_hand: int) -> None:
        """The worker is gone: count what it held and had not written, and what was in
        hand here, as dropped; the next call starts another."""
        try:  # its last reports are still in the pipe: a worker that was stopped (SIGTERM,
            self._read_stats()  # end of input) wrote what it held first, and said so
        except Exception:
            pass
        if self._failed is not None:  # (the pipe breaking is not the news)
            exc = WorkerDown(self._failed_why())
        elif self._proc is not None:
            lived = time.monotonic() - self._last_start
            if not self._reported:
                self._early_deaths += 1
                exc = WorkerDown(f"{exc}, before its first report (is {self.python} a python that imports numpy, "
                                 f"SQLAlchemy and this package?); the next start in {self._restart_delay():.0f} s")
            else:
                self._early_deaths = 0
                self._short_deaths = self._short_deaths + 1 if lived < SHORT_LIFE_S else 0
                if self._short_deaths > 1:
                    exc = WorkerDown(f"{exc}, {lived:.0f} s after it started ({self._short_deaths} in a row); "
                                     f"the next start in {self._restart_delay():.0f} s")
        with self._lock:
            cur = self._current
            unwritten = self._sent - self._settled
            self._finished = _add(self._finished, cur)
            self._current, self._settled = _ZERO, 0
            self._told = self._acked = 0  # (what it was not told is in in_hand, or unwritten)
            # (in_hand: entries taken from the queue; unwritten: what the worker held)
            self._dropped_hot += in_hand + (max(unwritten, 0) if self._proc is not None else 0)
        self._sent = 0
        # reaped before the next call: it would be handed the closed pipes of a worker
        # not yet reaped; then the next call may start another
        self._reap(timeout=5)
        self._log_rarely(logging.ERROR, "attnmon collector %s %s: %s; observations are dropped (and counted) "
                         "until a worker runs again", self.model, self.version, exc)

    def _end_worker(self) -> None:
        if self._proc is None:
            return
        self._reap(timeout=30)
        with self._lock:
            self._finished = _add(self._finished, self._current)
            self._current = _ZERO
            self._told = self._acked = 0

    def _reap(self, timeout: float) -> None:
        """Close the worker's pipes (it reads the end of its input, writes what it holds
        and exits, if a close did not reach it) and wait for it; kill it past `timeout`."""
        self._close_pipes()
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _close_pipes(self) -> None:
        for conn in (self._out, self._in):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._out = self._in = None

    def _after_fork(self) -> None:
        # the worker is the parent's: close this process's copies of its pipes (else the
        # worker would not see the parent's exit) and start afresh, lazily
        self._close_pipes()
        self._reset_state()


# what crosses to the worker as itself: builtins and numpy, nothing the worker must import
_PLAIN = {str, bytes, bytearray, int, float, bool, type(None)}


def _plain(v) -> bool:
    return type(v) in _PLAIN or isinstance(v, np.generic)


def _crossable(e: tuple) -> tuple:
    """The entry with only builtins and numpy values in it. Unpickling anything else would
    import the serving code in the worker (or fail: a class of __main__, a lock). A value
    of another type becomes its str(), which is what the in-process collector keys it by; a
    label (cohort, attribute name, padding) of another type becomes b"", rejected as the
    object would be (bad_label, shape). Summaries are left as they are."""
    if e[0] == "one":
        _, w, ids, cohort, attrs, rid, ts = e
        return ("one", _values(w), _values(ids), _label(cohort), _attrs(attrs), _value(rid), ts)
    if e[0] == "batch":
        _, w, ids, lengths, cohorts, attrs, rids, ts, padding = e
        cohorts = [_label(x) for x in cohorts] if isinstance(cohorts, list) else _label(cohorts)
        if rids is not None:
            rids = [_value(x) for x in rids]
        return ("batch", _values(w), _values(ids), _values(lengths), cohorts, _attrs(attrs),
                rids, ts, _label(padding))
    return e


def _values(a):
    if not isinstance(a, np.ndarray) or a.dtype != object or all(
            t in _PLAIN or issubclass(t, np.generic) for t in set(map(type, a.flat))):
        return a
    out = np.empty(a.shape, dtype=object)
    out.flat[:] = [_value(v) for v in a.flat]
    return out


def _value(v):
    if _plain(v):
        return v
    try:
        return str(v)
    except Exception:
        return "\x00"  # a NUL: the worker rejects the row (bad_value)


def _label(x):
    if _plain(x):
        return x
    return str.__str__(x) if isinstance(x, str) else b""


def _attrs(attrs: dict | None) -> dict | None:
    return None if attrs is None else {_label(k): _values(v) for k, v in attrs.items()}


def _add(a: CollectorStats, b: CollectorStats) -> CollectorStats:
    return CollectorStats(
        observed=a.observed + b.observed, accepted=a.accepted + b.accepted,
        rejected=dict(Counter(a.rejected) + Counter(b.rejected)), dropped=a.dropped + b.dropped,
        spilled=a.spilled + b.spilled, written=a.written + b.written, queue_depth=0, pending_batches=0,
        bad_spill_files=a.bad_spill_files + b.bad_spill_files)
