"""AttentionCollector: the serving-side SDK.

`observe` and `observe_batch` copy their input, append it to a bounded deque and return:
no validation, no numpy maths, no SQL on the serving thread. A background thread drains
the deque, validates and summarises whole blocks at once (monitor.metrics, monitor.sketch),
and every `flush_interval_s` writes the sketches of closed minutes, a sample of raw
events and its own health in one transaction. A store that is down sends the batch to
`spill_dir`; spilled batches are replayed in order, and `(collector_id, batch_seq)` makes
a replay count once.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from collectors.block import Block, block_from_batch, blocks_from_singles, check_block
from collectors.spill import SpillDir
from monitor import metrics as mx
from monitor import sketch as sk
from monitor.errors import InvalidAttention
from monitor.store.writer import FlushBatch, write_batch

log = logging.getLogger("attnmon.collector")

ROLLUP = "*"


@dataclass(frozen=True)
class CollectorStats:
    observed: int
    accepted: int
    rejected: dict[str, int]
    dropped: int
    spilled: int
    written: int
    queue_depth: int
    pending_batches: int


@dataclass
class _Minute:
    """Health counters of one clock minute."""

    observed: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    dropped: int = 0
    spilled: int = 0
    written: int = 0


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class AttentionCollector:
    """Summarise the attention of each prediction and write it to the store.

    >>> with AttentionCollector("sqlite:///attnmon.db", model="sasrec", version="v1") as c:
    ...     c.observe(weights, item_ids=history, cohort="mobile")
    """

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
        tol: float = 1e-3,
        weights_id: str | None = None,
        clock: Callable[[], float] = time.time,
        engine=None,
        seed: int | None = None,
    ):
        from monitor.store.tables import LABEL

        for name, value in (("model", model), ("version", version)):
            if not isinstance(value, str) or not value or len(value) > LABEL or not value.isprintable():
                raise ValueError(f"{name}={value!r}: must be a printable label of 1–{LABEL} characters")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate!r}: must be within [0, 1]")
        if hash_item_ids and not hash_key:
            hash_key = os.environ.get("ATTNMON_HASH_KEY")
            if not hash_key:
                raise ValueError("hash_item_ids=True needs hash_key (or ATTNMON_HASH_KEY)")
        if store_url is None and engine is None:
            store_url = os.environ.get("ATTNMON_STORE_URL", "sqlite:///attnmon.db")
        self.store_url = store_url
        self.model, self.version, self.weights_id = model, version, weights_id
        self.sample_rate = sample_rate
        self.queue_size = queue_size
        self.flush_interval_s = flush_interval_s
        self.strict = strict
        self.max_length = max_length
        self.topk_items, self.topk_attr_values = topk_items, topk_attr_values
        self.late_grace_s = late_grace_s
        self.tol = tol
        self.clock = clock
        self._hash_key = hash_key.encode() if isinstance(hash_key, str) else hash_key
        self._hash_item_ids = hash_item_ids
        self._spill = SpillDir(spill_dir) if spill_dir is not None else None
        self._engine = engine
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
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closed = False
        self._rng = np.random.default_rng(self._seed)
        self._batch_seq = 0
        self._acc: dict[tuple, sk.Sketch] = {}  # (minute, cohort, layer, head) -> sketch
        self._acc_requests: Counter = Counter()  # minute -> accepted requests in _acc
        self._events: list[dict] = []
        self._health: dict[int, _Minute] = {}
        self._unsent: deque[FlushBatch] = deque()
        self._deployment_written = False
        self._first_seen: float | None = None
        self._last_flush = 0.0
        self._totals = _Minute()
        self._dropped_hot = 0
        self._last_error_log = 0.0

    def _after_fork(self) -> None:
        # the parent's thread, queue and connections are not ours: start afresh, lazily
        if self._engine is not None and self.store_url is not None:
            self._engine.dispose(close=False)
            self._engine = None
        self._reset_state()

    # --- the serving path --------------------------------------------------------
    def observe(
        self,
        weights,
        item_ids: Sequence | None = None,
        cohort: str | None = None,
        attributes: Mapping[str, Sequence] | None = None,
        request_id: str | None = None,
        timestamp: float | datetime | None = None,
    ) -> None:
        """One prediction: weights (L,), (heads, L) or (layers, heads, L); never raises
        unless strict."""
        if len(self._q) >= self.queue_size:
            self._drop(1)
            return
        ts = self.clock() if timestamp is None else _epoch(timestamp)
        entry = (
            "one",
            np.array(weights, copy=True),
            None if item_ids is None else _copy(item_ids),
            cohort,
            None if attributes is None else {k: _copy(v) for k, v in attributes.items()},
            request_id,
            ts,
        )
        if self.strict:
            self._strict_enqueue(entry)
            return
        self._q.append(entry)
        if self._thread is None:
            self._start()

    def observe_batch(
        self,
        weights,
        item_ids=None,
        lengths=None,
        cohorts: str | Sequence[str] | None = None,
        attributes: Mapping[str, object] | None = None,
        request_ids: Sequence[str] | None = None,
        timestamps=None,
        padding: str = "left",
    ) -> None:
        """A batch: weights (B, L), (B, heads, L) or (B, layers, heads, L); `lengths`
        (B,) valid positions per row, padded on the `padding` side ("left": the last
        column is the most recent interaction, as SASRec pads)."""
        if len(self._q) >= self.queue_size:
            self._drop(len(weights) if hasattr(weights, "__len__") else 1)
            return
        ts = self.clock() if timestamps is None else timestamps
        entry = (
            "batch",
            np.array(weights, copy=True),
            None if item_ids is None else _copy(item_ids),
            None if lengths is None else _copy(lengths),
            cohorts if cohorts is None or isinstance(cohorts, str) else list(cohorts),
            None if attributes is None else {k: _copy(v) for k, v in attributes.items()},
            None if request_ids is None else list(request_ids),
            ts if np.isscalar(ts) else np.array([_epoch(t) for t in ts], dtype=np.float64),
            padding,
        )
        if self.strict:
            self._strict_enqueue(entry)
            return
        self._q.append(entry)
        if self._thread is None:
            self._start()

    def _drop(self, n: int) -> None:
        with self._lock:
            self._dropped_hot += n

    def _strict_enqueue(self, entry) -> None:
        """Validate now, keep the valid rows, raise for the first invalid one."""
        blocks = self._to_blocks([entry])
        first_bad: tuple[str, int] | None = None
        for block in blocks:
            if block.codes is not None and block.codes.any():
                row = int(np.flatnonzero(block.codes)[0])
                reason = block.reason_names[block.codes[row]]
                bad = (reason, int(block.rows[row]))
                first_bad = bad if first_bad is None or bad[1] < first_bad[1] else first_bad
        self._q.append(("blocks", blocks))
        if self._thread is None:
            self._start()
        if first_bad is not None:
            raise InvalidAttention(first_bad[0], first_bad[1])

    # --- control -------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"attnmon-collector-{self.model}", daemon=True
            )
            self._thread.start()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Process and write everything observed so far, open minutes included.
        True when it was written (or spilled) within `timeout`."""
        if self._closed:
            return True
        if self._thread is None:
            self._start()
        with self._flushed:
            self._flush_req += 1
            want = self._flush_req
        self._wake.set()
        with self._flushed:
            return self._flushed.wait_for(lambda: self._flush_done >= want, timeout)

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
        self._closed = True

    def __enter__(self) -> AttentionCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> CollectorStats:
        t = self._totals
        with self._lock:
            dropped = t.dropped + self._dropped_hot
        return CollectorStats(
            observed=t.observed + self._dropped_hot,
            accepted=t.accepted,
            rejected=dict(t.rejected),
            dropped=dropped,
            spilled=t.spilled,
            written=t.written,
            queue_depth=len(self._q),
            pending_batches=len(self._unsent) + (len(self._spill.pending()) if self._spill else 0),
        )

    # --- the background thread -------------------------------------------------------
    def _run(self) -> None:
        poll = min(0.2, self.flush_interval_s)
        while True:
            self._wake.wait(poll)
            self._wake.clear()
            with self._flushed:
                want = self._flush_req
            try:
                self._drain()
                now = self.clock()
                final = want > self._flush_done or self._stop
                if final or time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self._flush(now, final=final)
            except Exception:  # never let the thread die: the serving path relies on it
                log.exception("attnmon collector: background step failed")
            if want > self._flush_done:
                with self._flushed:
                    self._flush_done = want
                    self._flushed.notify_all()
            if self._stop and not self._q:
                return

    def _drain(self) -> None:
        entries = []
        while self._q:
            entries.append(self._q.popleft())
        if not entries:
            return
        with self._lock:
            dropped, self._dropped_hot = self._dropped_hot, 0
        self._minute_health().dropped += dropped
        self._totals.dropped += dropped
        blocks: list[Block] = []
        raw = []
        for e in entries:
            if e[0] == "blocks":
                blocks.extend(e[1])
            else:
                raw.append(e)
        blocks.extend(self._to_blocks(raw))
        for block in blocks:
            self._summarise(block)

    def _to_blocks(self, entries) -> list[Block]:
        singles = [e for e in entries if e[0] == "one"]
        out = blocks_from_singles(singles, max_length=self.max_length) if singles else []
        for e in entries:
            if e[0] == "batch":
                out.append(block_from_batch(e, max_length=self.max_length))
        for b in out:
            check_block(b, tol=self.tol)
        return out

    def _minute_health(self) -> _Minute:
        m = int(self.clock() // 60)
        h = self._health.get(m)
        if h is None:
            h = self._health[m] = _Minute()
        return h

    def _summarise(self, b: Block) -> None:
        health = self._minute_health()
        n_req = len(b.rows)
        bad = b.codes != 0
        reasons = Counter(b.reason_names[c] for c in b.codes[bad])
        n_ok = n_req - int(bad.sum())
        for t in (health, self._totals):
            t.observed += n_req
            t.accepted += n_ok
            t.rejected.update(reasons)
        if b.layout is not None and bad.any():
            self._count_rejected(b, bad)
        if n_ok == 0 or b.layout is None:
            return
        keep = ~bad
        ly, h = b.layout
        W = b.weights[keep]  # (n, ly, h, L), padding zeroed
        lengths = b.lengths[keep]
        n, L = len(W), W.shape[-1]
        ts = b.ts[keep]
        if self._first_seen is None or ts.min() < self._first_seen:
            self._first_seen = float(ts.min())
        minutes = (ts // 60).astype(np.int64)
        cohorts = b.cohorts[keep]
        ucoh, coh_code = np.unique(cohorts, return_inverse=True)

        per_head = W.reshape(n * ly * h, L)
        mean = W.mean(axis=2)  # (n, ly, L): the layer's head-averaged attention
        mean_rows = mean.reshape(n * ly, L)
        len_head = np.repeat(lengths, ly * h)
        len_mean = np.repeat(lengths, ly)
        v_head = mx.compute(per_head, len_head)
        v_mean = mx.compute(mean_rows, len_mean)
        div = (
            mx.head_diversity(W.reshape(n * ly, h, L), len_mean)
            if h > 1
            else np.zeros(n * ly)
        )
        values = np.empty((len(v_head) + len(v_mean), len(mx.ALL_METRICS)), dtype=np.float64)
        values[: len(v_head), : len(mx.METRICS)] = v_head
        values[: len(v_head), -1] = np.nan  # head_diversity lives on head="*" only
        values[len(v_head) :, : len(mx.METRICS)] = v_mean
        values[len(v_head) :, -1] = div

        # series key of every row: (minute, cohort, layer, head); head h means "*"
        m0 = int(minutes.min())
        C = len(ucoh)
        req_key = (minutes - m0) * C + coh_code  # (n,)
        layer_idx = np.tile(np.repeat(np.arange(ly), h), n)
        head_idx = np.tile(np.arange(h), n * ly)
        key_head = (np.repeat(req_key, ly * h) * ly + layer_idx) * (h + 1) + head_idx
        key_mean = (np.repeat(req_key, ly) * ly + np.tile(np.arange(ly), n)) * (h + 1) + h
        keys = np.concatenate([key_head, key_mean])
        ukeys, group = np.unique(keys, return_inverse=True)
        rows_w = np.concatenate([per_head, mean_rows]).astype(np.float64, copy=False)
        rows_len = np.concatenate([len_head, len_mean])
        sketches = sk.build(group, len(ukeys), values, rows_w, rows_len)

        # items and attribute values: on the head="*" series only (keeps rows small)
        mean_group = group[len(key_head) :]
        valid = np.arange(L)[None, :] >= (L - len_mean)[:, None]
        if b.item_codes is not None:
            codes = np.repeat(b.item_codes[keep], ly, axis=0)
            self._attach_topk(sketches, mean_group, len(ukeys), codes, b.item_keys, mean_rows,
                              valid, self.topk_items, None)
        for name, (acodes, akeys) in (b.attrs or {}).items():
            codes = np.repeat(acodes[keep], ly, axis=0)
            self._attach_topk(sketches, mean_group, len(ukeys), codes, akeys, mean_rows, valid,
                              self.topk_attr_values, name)

        for g, key in enumerate(ukeys.tolist()):
            rest, head = divmod(key, h + 1)
            rest, layer = divmod(rest, ly)
            mi, c = divmod(rest, C)
            label = (m0 + mi, str(ucoh[c]), str(layer), ROLLUP if head == h else str(head))
            old = self._acc.get(label)
            self._acc[label] = sketches[g] if old is None else old.merge(sketches[g])
        for mi, cnt in zip(*np.unique(minutes, return_counts=True)):
            self._acc_requests[int(mi)] += int(cnt)

        if self.sample_rate > 0:
            self._sample(b, keep, v_mean, ly)

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

    def _count_rejected(self, b: Block, bad: np.ndarray) -> None:
        """Rejected requests count on the head="*" series of each layer of their cohort."""
        ly, _ = b.layout
        for ts, cohort in zip(b.ts[bad], b.cohorts[bad]):
            if cohort is None:
                continue
            for layer in range(ly):
                label = (int(ts // 60), str(cohort), str(layer), ROLLUP)
                s = self._acc.get(label)
                if s is None:
                    s = self._acc[label] = sk.Sketch()
                s.rejected += 1

    def _sample(self, b: Block, keep: np.ndarray, v_mean: np.ndarray, ly: int) -> None:
        idx = np.flatnonzero(keep)
        pick = np.flatnonzero(self._rng.random(len(idx)) < self.sample_rate)
        if not len(pick):
            return
        cols = {m: i for i, m in enumerate(mx.METRICS)}
        for p in pick:
            i = idx[p]
            n_i = int(b.lengths[i])
            L = b.weights.shape[-1]
            w = b.weights[i][..., L - n_i :].astype("<f4")
            last = v_mean[p * ly + ly - 1]
            items = None
            if b.item_codes is not None:
                codes = b.item_codes[i, L - n_i :]
                items = [None if c < 0 else str(b.item_keys[c]) for c in codes]
                if self._hash_item_ids:
                    items = [None if x is None else self._hash(x) for x in items]
            attrs = None
            if b.attrs:
                attrs = {
                    name: [None if c < 0 else str(keys[c]) for c in codes_[i, L - n_i :]]
                    for name, (codes_, keys) in b.attrs.items()
                }
            self._events.append(
                {
                    "model": self.model,
                    "version": self.version,
                    "cohort": str(b.cohorts[i]),
                    "request_id": None if b.request_ids is None else b.request_ids[i],
                    "ts": _utc(float(b.ts[i])),
                    "collector_id": self.collector_id,
                    "n_layers": int(w.shape[0]),
                    "n_heads": int(w.shape[1]),
                    "length": n_i,
                    "weights": w.tobytes(),
                    "item_ids": items,
                    "attributes": attrs,
                    **{m: float(last[cols[m]]) for m in ("entropy_norm", "top1", "recency5", "distance", "gini")},
                }
            )

    def _hash(self, item: str) -> str:
        return hmac.new(self._hash_key, item.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    # --- writing -----------------------------------------------------------------------
    def _flush(self, now: float, final: bool) -> None:
        self._last_flush = time.monotonic()
        cutoff = None if final else int((now - self.late_grace_s) // 60)  # minutes < cutoff are closed
        batch = self._take_batch(now, cutoff)
        if batch is not None:
            self._unsent.append(batch)
        self._send_all()

    def _take_batch(self, now: float, cutoff: int | None) -> FlushBatch | None:
        closed = [k for k in self._acc if cutoff is None or k[0] < cutoff]
        hmins = [m for m in self._health if cutoff is None or m < int(now // 60)]
        if not closed and not self._events and not hmins:
            return None
        written_at = _utc(now)
        aggs: list[dict] = []
        rollup: dict[tuple, sk.Sketch] = {}
        n_requests = 0
        for key in sorted(closed):
            s = self._acc.pop(key)
            minute, cohort, layer, head = key
            aggs.append(self._agg_row(minute, cohort, layer, head, s, written_at))
            rk = (minute, ROLLUP, layer, head)
            rollup[rk] = s if rk not in rollup else rollup[rk].merge(s)
        for (minute, cohort, layer, head), s in sorted(rollup.items()):
            aggs.append(self._agg_row(minute, cohort, layer, head, s, written_at))
        for m in {k[0] for k in closed}:
            if cutoff is None or m < cutoff:
                n_requests += self._acc_requests.pop(m, 0)
        events, self._events = self._events, []
        health_rows = []
        for m in sorted(hmins):
            h = self._health.pop(m)
            health_rows.append(self._health_row(m, h))
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

    def _agg_row(self, minute, cohort, layer, head, s: sk.Sketch, written_at) -> dict:
        if cohort != ROLLUP and s.items is not None:
            # top-K items ride on the roll-up only (DESIGN §4: keeps rows small); the
            # per-cohort summaries were needed in memory to merge that roll-up
            s = sk.Sketch(s.n, s.rejected, s.sums, s.sumsq, s.hist, s.pos, None, s.attrs)
        row = s.to_row()
        row.update(
            model=self.model,
            version=self.version,
            cohort=cohort,
            layer=layer,
            head=head,
            bucket_start=_utc(minute * 60),
            bucket_seconds=60,
            collector_id=self.collector_id,
            written_at=written_at,
        )
        return row

    def _health_row(self, minute: int, h: _Minute) -> dict:
        return {
            "collector_id": self.collector_id,
            "model": self.model,
            "version": self.version,
            "minute": _utc(minute * 60),
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "observed": h.observed,
            "accepted": h.accepted,
            "rejected": sum(h.rejected.values()),
            "rejected_by_reason": dict(h.rejected),
            "dropped": h.dropped,
            "spilled": h.spilled,
            "written": h.written,
            "queue_depth": len(self._q),
            "replayed": False,
        }

    def _get_engine(self):
        if self._engine is None:
            from monitor.store.engine import make_engine

            self._engine = make_engine(self.store_url)
        return self._engine

    def _send_all(self) -> None:
        """Replay spilled batches in order, then the unsent ones; spill what fails."""
        try:
            engine = self._get_engine()
            if self._spill is not None:
                for path in self._spill.pending():
                    batch = self._spill.load(path)
                    if write_batch(engine, batch) and batch.collector_id == self.collector_id:
                        self._note_written(batch)
                    self._spill.remove(path)
            while self._unsent:
                batch = self._unsent[0]
                if write_batch(engine, batch):
                    self._note_written(batch)
                self._unsent.popleft()
        except Exception as exc:  # the store is down or refusing: keep everything
            now = time.monotonic()
            if now - self._last_error_log > 30:
                self._last_error_log = now
                log.warning("attnmon collector: store write failed (%s); %s",
                            type(exc).__name__, "spilling" if self._spill else "keeping in memory")
            if self._spill is not None:
                while self._unsent:
                    batch = self._unsent.popleft()
                    self._spill.put(batch)
                    self._note_spilled(batch)

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


def _copy(values) -> np.ndarray:
    """A private copy as an array; mixed types (bytes beside str) become an object array."""
    try:
        return np.array(values, copy=True)
    except (TypeError, ValueError, UnicodeDecodeError):
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out


def _epoch(ts: float | datetime) -> float:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (UTC)")
        return ts.timestamp()
    return float(ts)


# Interpreter exit and fork: flush what was accepted; children start afresh.
_live: weakref.WeakSet[AttentionCollector] = weakref.WeakSet()


def _close_all() -> None:
    for c in list(_live):
        try:
            c.close(timeout=10.0)
        except Exception:
            log.exception("attnmon collector: flush at exit failed")


def _reset_children() -> None:
    for c in list(_live):
        c._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_reset_children)
