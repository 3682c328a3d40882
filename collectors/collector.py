"""AttentionCollector: the serving-side SDK.

`observe` and `observe_batch` copy their input, append it to a bounded deque and return:
no validation, no numpy maths, no SQL on the serving thread. `observe_summaries` appends
a batch already reduced on the model's device (collectors.torch, `on_device=True`). A
background thread drains the deque, validates and summarises whole blocks at once
(monitor.metrics, monitor.sketch; for a reduced batch it waits for the device's copy,
checks what the device could not and takes its metrics) into the same accumulators, and
every `flush_interval_s` writes the sketches of closed minutes, a sample of raw events
and its own health in one transaction. A store that is down sends the batch to
`spill_dir`; spilled batches are replayed in order, and `(collector_id, batch_seq)` makes
a replay count once. With no spill_dir, or one that cannot be written (disk full), batches
wait in memory up to `max_unsent_rows` rows; beyond that the oldest are dropped and
counted. A write that takes longer than `write_timeout_s` (a lock held, a stalled
server) fails like a store that is down. An unreadable spill file is moved to `bad/` beside it and counted.

This module holds the collector itself: its options, state, thread and lifecycle. The
parts it runs: collectors.serving and collectors.entries (the serving calls and what they
queue), collectors.block (queued calls into checked blocks), collectors.summarise with
collectors.grouping, collectors.grouptopk and collectors.series (blocks into the
sketches of each series), collectors.rows and collectors.sending (the rows of a flush, and
their writing, spilling and replay), collectors.stats (its counts).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from collectors.block import (
    ROLLUP,
    Block,
    block_from_batch,
    block_from_summaries,
    blocks_from_singles,
    check_block,
    label_problem,
    rejected_block,
)
from collectors.entries import batch_entry, entry_size, one_entry
from collectors.gil import _yield_gil
from collectors.grouping import _taker
from collectors.itemhash import ItemHasher
from collectors.options import _check_options
from collectors.rarely import RareLog
from collectors.rows import Source, _utc, aggregate_rows, event_row, health_row
from collectors.sending import send_all
from collectors.series import _SeriesStore
from collectors.serving import WAIT_FOR_THREAD, ServingCalls
from collectors.spill import SpillDir
from collectors.stats import CollectorStats, _Minute
from collectors.summarise import Values, accumulate, count_rejected, from_summaries, from_weights
from monitor import metrics as mx
from monitor import sketch as sk
from monitor.errors import InvalidAttention
from monitor.store.engine import (
    PG_TIMEOUT_MAX_S,
    Cutter,
    absolute_url,
    redact,
    session_name,
    url_problem,
)
from monitor.store.writer import FlushBatch

# |sum - 1| a row may miss by: bfloat16 rounding of a softmax's outputs misses by up to
# its unit roundoff, 2**-8 (0.0039; 0.0033 measured), and a 1e-3 bar rejected 20-44% of
# a bf16 model's rows. Pre-softmax scores, dropout or unrenormalised cuts miss by far more.
TOL = 5e-3

log = logging.getLogger("attnmon.collector")

# names other modules import from here (collectors.process, collectors.torch, tests)
__all__ = ["ROLLUP", "TOL", "WAIT_FOR_THREAD", "AttentionCollector", "CollectorStats", "ServingCalls",
           "batch_entry", "entry_size", "one_entry"]


class AttentionCollector(ServingCalls):
    """Summarise the attention of each prediction and write it to the store.

    >>> with AttentionCollector("sqlite:///attnmon.db", model="sasrec", version="v1") as c:
    ...     c.observe(weights, item_ids=history, cohort="mobile")
    """

    _TELLS_OF_OTHER_STORES = True  # warn, when made, of other stores' batches in spill_dir

    def __init__(
        self,
        store_url: str | None = None,
        model: str = "",
        version: str = "",
        *,
        sample_rate: float = 0.01,
        queue_size: int = 10_000,
        flush_interval_s: float = 2.0,
        spill_dir: str | os.PathLike | None = None,
        strict: bool = False,
        hash_item_ids: bool = False,
        hash_key: bytes | str | None = None,
        max_length: int = 4096,
        topk_items: int = 512,
        topk_attr_values: int = 128,
        late_grace_s: float = 5.0,
        max_unsent_rows: int = 100_000,
        write_timeout_s: float = 30.0,
        tol: float = TOL,
        weights_id: str | None = None,
        clock: Callable[[], float] = time.time,
        engine=None,
        seed: int | None = None,
    ):
        for name, value in (("model", model), ("version", version), ("weights_id", weights_id)):
            if (value is not None or name != "weights_id") and (problem := label_problem(value)):
                raise ValueError(f"{name}={value!r}: {problem}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate!r}: must be within [0, 1]")
        _check_options(queue_size=queue_size, max_length=max_length, topk_items=topk_items,
                       topk_attr_values=topk_attr_values, flush_interval_s=flush_interval_s,
                       late_grace_s=late_grace_s, tol=tol)
        if not isinstance(max_unsent_rows, int) or max_unsent_rows < 0:
            raise ValueError(f"max_unsent_rows={max_unsent_rows!r}: must be an integer >= 0")
        if isinstance(write_timeout_s, bool) or not isinstance(write_timeout_s, int | float) \
                or not 0 < write_timeout_s <= PG_TIMEOUT_MAX_S:
            raise ValueError(f"write_timeout_s={write_timeout_s!r}: must be a number of seconds > 0 and at most "
                             f"{PG_TIMEOUT_MAX_S:,} (PostgreSQL's limit)")
        if hash_item_ids and not hash_key:
            hash_key = os.environ.get("ATTNMON_HASH_KEY")
            if not hash_key:
                raise ValueError("hash_item_ids=True needs hash_key (or ATTNMON_HASH_KEY)")
        if store_url is None and engine is None:
            store_url = os.environ.get("ATTNMON_STORE_URL", "sqlite:///attnmon.db")
        if store_url is not None and (problem := url_problem(str(store_url))):
            # every write would fail in the background until close() dropped it all
            raise ValueError(f"store_url={redact(str(store_url))!r}: {problem}")
        if store_url is not None:
            # the engine is made at the first write: a relative file (and spill_dir) must
            # mean the folder the collector was made in, not the one the process is in then
            store_url = absolute_url(store_url)
        if spill_dir is not None:
            spill_dir = Path(spill_dir).absolute()
        self.store_url = store_url
        self.model, self.version, self.weights_id = model, version, weights_id
        self.sample_rate = sample_rate
        self.queue_size = queue_size
        self._capacity = queue_size  # what the serving calls check; 0 once closed
        self.flush_interval_s = flush_interval_s
        self.strict = strict
        self.max_length = max_length
        self.topk_items, self.topk_attr_values = topk_items, topk_attr_values
        self.late_grace_s = late_grace_s
        self.max_unsent_rows = max_unsent_rows
        self.write_timeout_s = write_timeout_s
        self.tol = tol
        self.clock = clock
        self._hash_key = hash_key.encode() if isinstance(hash_key, str) else hash_key
        self._hash_item_ids = hash_item_ids
        # item ids are hashed where they are written (events, top-K survivors), not as
        # they are summarised: a minute's top-K is hundreds of ids, its histories far more
        self._hash = ItemHasher(self._hash_key) if hash_item_ids else None
        self._spill = SpillDir(spill_dir, store_url if engine is None else engine.url) \
            if spill_dir is not None else None
        if self._spill is not None and self._TELLS_OF_OTHER_STORES and (others := self._spill.elsewhere()):
            log.warning("attnmon collector: %s holds %d spilled batch(es) of other stores, which only a collector "
                        "of that store replays: %s. If one is this store under another spelling of its URL "
                        "(localhost for 127.0.0.1, a renamed host), move its files into %s", self._spill.root,
                        sum(n for _, n in others), "; ".join(f"{name} ({n})" for name, n in others),
                        self._spill.path)
        self._engine = engine
        self._cutter = None  # cuts the engine's connections when a write overruns (ours only)
        self._seed = seed
        self._reset_state()
        _live.add(self)

    # --- state that a forked child must not share --------------------------------
    def _reset_state(self) -> None:
        self.collector_id = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self._pid = os.getpid()
        self._q: deque = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards counters shared with the serving threads
        self._flushed = threading.Condition(threading.Lock())
        self._flush_req = 0
        self._flush_done = 0
        self._flush_ok = True  # whether the last flush left nothing unsent
        self._thread: threading.Thread | None = None
        self._stop = False
        self._exited = False  # the thread has stopped, its queue empty (under _lock)
        self._closed = False
        self._rng = np.random.default_rng(self._seed)
        self._batch_seq = 0
        self._acc = {}  # (minute, cohort, layer, head) -> sketch; see the property
        self._acc_requests: Counter = Counter()  # minute -> accepted requests in _acc
        self._events: list[dict] = []
        self._health: dict[int, _Minute] = {}
        self._unsent: deque[FlushBatch] = deque()
        self._deployment_written = False
        self._first_seen: float | None = None
        self._last_flush = 0.0
        self._totals = _Minute()
        self._dropped_hot = 0
        self._log_rarely = RareLog(log)
        self._bad_spill_files = 0
        self._resolve_failures = 0

    @property
    def _acc(self) -> dict[tuple, sk.Sketch]:
        """(minute, cohort, layer, head) -> sketch of everything summarised so far.

        The background thread accumulates into `_series` (dense arrays, no Sketch per
        batch); reading `_acc` first folds that into the sketches, in order, so the
        result is the one of merging every batch's sketch as it came."""
        if self._series.labels:
            self._series.fold_into(self._acc_dict)
        return self._acc_dict

    @_acc.setter
    def _acc(self, value: dict[tuple, sk.Sketch]) -> None:
        self._acc_dict = value
        self._series = _SeriesStore(value)

    def _after_fork(self) -> None:
        # the parent's thread, queue and connections are not ours: start afresh, lazily.
        # dispose(close=False) leaves the parent's sockets to the parent; an engine the
        # caller gave us stays ours, with a fresh pool.
        if self._engine is not None:
            self._engine.dispose(close=False)
            if self.store_url is not None:
                self._engine = self._cutter = None
        self._reset_state()

    # --- the serving path (observe, observe_batch: ServingCalls) ---------------------
    def observe_summaries(self, pending) -> None:
        """A batch already reduced on the model's device: what
        `collectors.torch.AttentionCapture(model, collector, on_device=True)` hands over, a
        `PendingSummaries` whose copy to the host may still be in flight.

        Like `observe_batch` it checks the queue and appends, nothing more: `resolve()`
        (which waits for the copy) and the checks of labels, shapes and keys run on the
        background thread, and the result is what the copy path writes for the same rows.
        Never raises unless strict: a strict collector resolves at once, on the caller's
        thread, and raises InvalidAttention for the first invalid row."""
        if len(self._q) >= self._capacity:
            self._drop(getattr(pending, "size", 1))
            return
        if self.strict:
            self._strict_summaries(pending)
            return
        self._enqueue(("summaries", pending, None))

    def _put(self, entry: tuple) -> None:
        if self.strict:
            self._strict_enqueue(entry)
            return
        self._enqueue(entry)

    def _enqueue(self, entry: tuple) -> None:
        self._q.append(entry)
        if self._thread is None:
            self._start()
        elif self._stop:
            # close() ran while this call made its copy: if the thread has taken its last
            # (see _run's end), no one will, and the call would be in no count
            with self._lock:
                exited = self._exited
            if exited:
                self._drop_left()

    def _offer(self, entry: tuple, n: int) -> None:
        """An entry made elsewhere (a ProcessCollector's worker), taken as `observe` takes
        one: dropped and counted when the queue is full."""
        if len(self._q) >= self._capacity:
            self._drop(n)
        else:
            self._put(entry)

    def _strict_summaries(self, pending) -> None:
        s = pending.resolve()
        b = block_from_summaries(s, max_length=self.max_length)
        self._enqueue(("summaries", pending, (s, b)))
        if b.codes.any():
            row = int(np.flatnonzero(b.codes)[0])
            raise InvalidAttention(b.reason_names[b.codes[row]], row)

    def _strict_enqueue(self, entry) -> None:
        """Validate now, keep the valid rows, raise for the first invalid one."""
        blocks = self._to_blocks([entry])
        first_bad: tuple[str, int] | None = None
        for block in blocks:
            if block.codes is not None and block.codes.any():
                row = int(np.flatnonzero(block.codes)[0])
                reason = block.reason_names[block.codes[row]]
                bad = (reason, int(block.rows[row]), block.detail)
                first_bad = bad if first_bad is None or bad[1] < first_bad[1] else first_bad
        self._enqueue(("blocks", blocks))
        if first_bad is not None:
            raise InvalidAttention(*first_bad)

    # --- control -------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=f"attnmon-collector-{self.model}", daemon=True)
            if self._started(thread, "thread", WAIT_FOR_THREAD):
                self._thread = thread

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Process and write everything observed so far, open minutes included.
        True when it was written (or spilled) within `timeout`; False when it was not,
        for example a store that is down with no spill_dir (it waits in memory)."""
        if self._closed:
            return True
        return bool(self._flush_wait(self._flush_ask(), timeout))

    def _flush_ask(self) -> int:
        """Ask the thread for a flush; the token to wait for."""
        if self._thread is None:
            self._start()
        with self._flushed:
            self._flush_req += 1
            want = self._flush_req
        self._wake.set()
        return want

    def _flush_wait(self, want: int, timeout: float | None) -> bool | None:
        """The flush's result (see flush), or None if it is not done within `timeout`."""
        with self._flushed:
            if not self._flushed.wait_for(lambda: self._flush_done >= want, timeout):
                return None
            return self._flush_ok

    def close(self, timeout: float = 30.0) -> None:
        """Flush what was accepted and stop the thread. Idempotent."""
        if self._closed or os.getpid() != self._pid:
            return
        if self._thread is not None or self._q:
            self.flush(timeout)
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:  # no thread ever started (the OS refused it): what waits is lost, and counted
            self._drop_left()
        self._closed = True
        # no thread drains the queue any more: later calls are dropped and counted
        self._capacity = 0
        if self._unsent and (self._thread is None or not self._thread.is_alive()):
            lost = sum(b.n_requests for b in self._unsent)
            self._count_dropped(lost)
            log.error("attnmon collector: closed with %d batch(es) (%d requests) that could be neither "
                      "written nor spilled: they are lost (counted in stats.dropped)",
                      len(self._unsent), lost)
            self._unsent.clear()

    def _at_exit(self) -> None:
        self.close(timeout=10.0)

    @property
    def stats(self) -> CollectorStats:
        t = self._totals
        with self._lock:
            dropped = t.dropped + self._dropped_hot
        return CollectorStats(
            observed=t.observed,  # (examined: accepted + rejected; drops are apart)
            accepted=t.accepted,
            rejected=dict(t.rejected),
            dropped=dropped,
            spilled=t.spilled,
            written=t.written,
            queue_depth=len(self._q),
            pending_batches=len(self._unsent) + (len(self._spill.pending()) if self._spill else 0),
            bad_spill_files=self._bad_spill_files,
        )

    # --- the background thread -------------------------------------------------------
    def _run(self) -> None:
        poll = min(0.2, self.flush_interval_s)
        while True:
            self._wake.wait(poll)
            self._wake.clear()
            with self._flushed:
                want = self._flush_req
            ok = False
            try:
                self._drain()
                now = self.clock()
                final = want > self._flush_done or self._stop
                if final or time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self._flush(now, final=final)
                ok = not self._unsent  # (all written or spilled)
            except Exception:  # never let the thread die: the serving path relies on it
                log.exception("attnmon collector: background step failed")
            if want > self._flush_done:
                with self._flushed:
                    self._flush_done, self._flush_ok = want, ok
                    self._flushed.notify_all()
            if self._stop:
                with self._lock:  # (_enqueue drops what comes after this: one or the other)
                    if not self._q:
                        self._exited = True
                        return

    def _drain(self) -> None:
        with self._lock:  # moved to the totals in one step: stats.dropped never dips
            dropped, self._dropped_hot = self._dropped_hot, 0
            if dropped:  # (now, even with no entry to follow: health rows must have them)
                self._count_dropped(dropped)
        entries = []
        while self._q:
            entries.append(self._q.popleft())
        if not entries:
            return
        blocks: list[Block] = []
        raw, summaries = [], []
        for e in entries:
            if e[0] == "blocks":
                blocks.extend(e[1])
            elif e[0] == "summaries":
                summaries.append(e)
            else:
                raw.append(e)
        blocks.extend(self._to_blocks(raw))
        for block in blocks:
            self._summarise(block)
            _yield_gil()
        for _, pending, checked in summaries:
            try:  # one bad summary must not take the rest of the drain with it
                self._summarise_pending(pending, checked)
            except Exception as exc:
                self._lost(pending, exc)
            _yield_gil()

    def _to_blocks(self, entries) -> list[Block]:
        """The blocks of queued calls, checked. A call that fails to convert (a value no
        check foresaw) is rejected alone, as bad_value: the rest of the drain is kept."""
        singles = [e for e in entries if e[0] == "one"]
        out = self._converted(singles, lambda: blocks_from_singles(singles, max_length=self.max_length))
        for e in entries:
            if e[0] == "batch":
                out += self._converted([e], lambda e=e: [block_from_batch(e, max_length=self.max_length)])
            elif e[0] == "rejected":
                _, n, ts, reason, detail = e
                out.append(rejected_block(n, ts, reason, detail=detail))
        return out

    def _converted(self, entries: list, convert: Callable[[], list[Block]]) -> list[Block]:
        if not entries:
            return []
        try:
            blocks = convert()
            for b in blocks:
                check_block(b, tol=self.tol)
            return blocks
        except Exception as exc:
            if len(entries) > 1:  # find the culprit: the others are converted one by one
                return [b for e in entries for b in self._converted([e], lambda e=e: blocks_from_singles(
                    [e], max_length=self.max_length))]
            self._log_rarely(logging.ERROR, "attnmon collector %s %s: a call could not be read (%s: %s); "
                             "rejected as bad_value", self.model, self.version, type(exc).__name__, exc,
                             key="unconvertible")
            return [rejected_block(entry_size(entries[0]), self.clock(), "bad_value",
                                   detail=f"{type(exc).__name__}: {exc}")]

    def _minute_health(self) -> _Minute:
        m = int(self.clock() // 60)
        h = self._health.get(m)
        if h is None:
            h = self._health[m] = _Minute()
        return h

    # --- summarising: per path, the values; then the same accumulation -----------------
    def _count(self, b: Block) -> tuple[np.ndarray, int]:
        """Count a block's requests in the health of this minute and in the totals, and
        its rejections on their series; the accepted rows (mask) and how many."""
        n_req = len(b.rows)
        bad = b.codes != 0
        n_bad = int(np.count_nonzero(bad))
        reasons = Counter(b.reason_names[c] for c in b.codes[bad]) if n_bad else Counter()
        n_ok = n_req - n_bad
        for t in (self._minute_health(), self._totals):
            t.observed += n_req
            t.accepted += n_ok
            if n_bad:
                t.rejected.update(reasons)
        if b.layout is not None and n_bad:
            count_rejected(self._series, b, bad)
        return ~bad, n_ok

    def _summarise(self, b: Block) -> None:
        """The numpy path: the metrics of the block's rows, then `_accumulate`."""
        keep, n_ok = self._count(b)
        if n_ok == 0 or b.layout is None:
            return
        kept = _taker(keep, n_ok)
        v = from_weights(b, kept)
        self._accumulate(b, kept, v)
        if self.sample_rate > 0:
            self._sample(b, keep, v.v_mean, b.layout[0])

    def _summarise_pending(self, pending, checked: tuple | None) -> None:
        """The on-device path: `pending.resolve()` (it waits for the device's copy), the
        checks the device could not make (block_from_summaries), then `_accumulate` of
        the device's metrics and position profiles. A resolve that raises loses its
        batch: counted as dropped, logged, and the thread goes on."""
        if checked is None:
            try:
                s = pending.resolve()
                b = block_from_summaries(s, max_length=self.max_length)
            except Exception as exc:
                self._lost(pending, exc)
                return
        else:
            s, b = checked
        keep, n_ok = self._count(b)
        if n_ok == 0:
            return
        kept = _taker(keep, n_ok)
        self._accumulate(b, kept, from_summaries(s, b, kept))
        ly, h = b.layout
        m = len(mx.METRICS)
        for j, i in enumerate(np.asarray(s.sample_index).tolist()):  # drawn by the capture
            if keep[i]:
                self._add_event(b, i, s.sample_rows[j], s.values[i, ly - 1, h, :m])

    def _lost(self, pending, exc: Exception) -> None:
        n = int(getattr(pending, "size", 1))
        self._count_dropped(n)
        self._resolve_failures += 1
        self._log_rarely(logging.ERROR, "attnmon collector: on-device summaries lost (%d requests; "
                         "%d batch(es) so far)", n, self._resolve_failures, exc_info=exc)

    def _count_dropped(self, n: int) -> None:
        """Requests accepted and then lost: in this minute's health and in the totals."""
        self._minute_health().dropped += n
        self._totals.dropped += n

    def _accumulate(self, b: Block, kept, v: Values) -> None:
        """Add one batch's accepted requests to the series (collectors.summarise), and to
        the collector's first time seen and requests per minute."""
        g = v.g
        if self._first_seen is None or g.t_min < self._first_seen:
            self._first_seen = g.t_min
        accumulate(self._series, b, kept, v, self.topk_items, self.topk_attr_values)
        if g.one_minute:
            self._acc_requests[int(g.minutes[0])] += len(g.minutes)
        else:
            for mi, cnt in zip(*np.unique(g.minutes, return_counts=True), strict=True):
                self._acc_requests[int(mi)] += int(cnt)

    @staticmethod
    def _attach_topk(sketches, group, n_groups, codes, keys, weights, valid, k, attr) -> None:
        ok = valid & (codes >= 0)
        tops = sk.topk_by_group(group, n_groups, codes, keys, weights, ok, k)
        touched = np.zeros(n_groups, dtype=bool)
        touched[group] = True
        for g in np.flatnonzero(touched):
            if attr is None:
                sketches[g].items = tops[g]
            else:
                sketches[g].attrs[attr] = tops[g]

    def _sample(self, b: Block, keep: np.ndarray, v_mean: np.ndarray, ly: int) -> None:
        idx = np.flatnonzero(keep)
        pick = np.flatnonzero(self._rng.random(len(idx)) < self.sample_rate)
        for p in pick:
            self._add_event(b, idx[p], b.weights[idx[p]], v_mean[p * ly + ly - 1])

    def _add_event(self, b: Block, i: int, w: np.ndarray, last: np.ndarray) -> None:
        """Keep the attention_events row of request `i` of the block (rows.event_row)."""
        self._events.append(event_row(self._source(), b, i, w, last, self._hash))

    # --- writing -----------------------------------------------------------------------
    def _flush(self, now: float, final: bool) -> None:
        self._last_flush = time.monotonic()
        cutoff = None if final else int((now - self.late_grace_s) // 60)  # minutes < cutoff are closed
        batch = self._take_batch(now, cutoff)
        if batch is not None:
            self._unsent.append(batch)
        _yield_gil()
        send_all(self)

    def _take_batch(self, now: float, cutoff: int | None) -> FlushBatch | None:
        closed = [k for k in self._acc if cutoff is None or k[0] < cutoff]
        hmins = [m for m in self._health if cutoff is None or m < int(now // 60)]
        if not closed and not self._events and not hmins:
            return None
        written_at = _utc(now)
        aggs = aggregate_rows(self._source(), self._acc, sorted(closed), written_at, self._hash)
        n_requests = 0
        for m in {k[0] for k in closed}:
            if cutoff is None or m < cutoff:
                n_requests += self._acc_requests.pop(m, 0)
        events, self._events = self._events, []
        health_rows = []
        for m in sorted(hmins):
            h = self._health.pop(m)
            health_rows.append(health_row(self._source(), m, h, len(self._q)))
        self._batch_seq += 1
        deployments = []
        if not self._deployment_written and self._first_seen is not None:
            deployments.append(
                {
                    "model": self.model,
                    "version": self.version,
                    "first_seen": _utc(self._first_seen),
                    "weights_id": self.weights_id,
                }
            )
        return FlushBatch(
            collector_id=self.collector_id,
            batch_seq=self._batch_seq,
            written_at=written_at,
            deployments=deployments,
            aggregates=aggs,
            events=events,
            health=health_rows,
            n_requests=n_requests,
        )

    def _source(self) -> Source:
        return Source(self.model, self.version, self.collector_id)

    def _get_engine(self):
        if self._engine is None:
            from monitor.store.engine import make_engine

            # A write that waits on a lock or a stalled server fails after write_timeout_s
            # and is spilled (or kept), instead of holding the thread while the queue fills.
            # (SQLite: how long to wait for another writer's lock.)
            t = self.write_timeout_s
            self._engine = make_engine(self.store_url, statement_timeout_s=t, lock_timeout_s=t, busy_timeout_s=t,
                                       application_name=self._session_name(), through_pooler=True)
            if self._engine.dialect.name == "postgresql":
                self._cutter = Cutter(self._engine)
        return self._engine

    def _session_name(self) -> str | None:
        """Its sessions' name in pg_stat_activity, so an operator can tell the collectors'
        from other clients (PostgreSQL keeps 63 bytes); a name the URL gives wins."""
        from sqlalchemy.engine import make_url

        if "application_name" in make_url(self.store_url).query:
            return None
        return session_name(f"attnmon-collector {self.model} {self.version}")

    def _note_set_aside(self, batch: FlushBatch) -> None:
        """(A hook: the worker process's collector keeps its own count of spilled batches.)"""

    def _note_written(self, batch: FlushBatch) -> None:
        self._totals.written += batch.n_requests
        self._minute_health().written += batch.n_requests
        if batch.deployments:
            self._deployment_written = True

    def _note_spilled(self, batch: FlushBatch) -> None:
        self._totals.spilled += batch.n_requests
        self._minute_health().spilled += batch.n_requests
        if batch.deployments:
            # the spilled file carries it; it is written when the file is replayed
            self._deployment_written = True


# Interpreter exit and fork: flush what was accepted; children start afresh. Both kinds
# of collector (collectors.process registers its own here) have _at_exit and _after_fork.
_live: weakref.WeakSet = weakref.WeakSet()


def _close_all() -> None:
    live = list(_live)
    for c in live:  # all start at once: exit waits for the slowest, not for each in turn
        try:
            c._exit_begin()
        except Exception:
            log.exception("attnmon collector: close at exit failed")
    for c in live:
        try:
            c._at_exit()
        except Exception:
            log.exception("attnmon collector: flush at exit failed")


def _reset_children() -> None:
    for c in list(_live):
        c._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_reset_children)
