"""The serving calls both collectors share (AttentionCollector, ProcessCollector).

What runs on the caller's thread: a check of the queue's length, private copies of the
arguments (collectors.entries), an append. No validation, numpy maths or SQL: that waits
for the collector's background thread (or ProcessCollector's worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Self

from collectors.entries import (
    _READERS,
    _epoch,
    _requests,
    _timestamps,
    batch_entry,
    entry_size,
    one_entry,
)
from collectors.options import config_options

WAIT_FOR_THREAD = "calls wait in the queue, then are dropped (counted), until one starts"


class ServingCalls:
    """The serving calls both collectors share (AttentionCollector, ProcessCollector): a
    queue check, private copies, then the collector's own `_put`. Never raise unless
    the collector is strict."""

    _WORKER_OPTIONS = False  # from_config passes attnmon.yaml's collector.worker

    def observe(
        self,
        weights,
        item_ids: Sequence | None = None,
        cohort: str | None = None,
        attributes: Mapping[str, Sequence] | None = None,
        request_id: str | None = None,
        timestamp: float | datetime | None = None,
    ) -> None:
        """One prediction: weights (L,), (heads, L) or (layers, heads, L); `timestamp`
        epoch seconds or an aware datetime (None: now). Never raises unless strict: an
        argument it cannot read rejects the call (counted by reason)."""
        if len(self._q) >= self._capacity:
            self._drop(1)
            return
        try:
            ts = self.clock() if timestamp is None else _epoch(timestamp)
            entry = one_entry(weights, item_ids, cohort, attributes, request_id, ts)
        except Exception as exc:
            entry = self._unreadable(1, exc, timestamp=timestamp, weights=weights, item_ids=item_ids,
                                     attributes=attributes)
        self._put(entry)

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
        column is the most recent interaction, as SASRec pads); `timestamps` one for all
        or one per row (epoch seconds or aware datetimes; None: now)."""
        if len(self._q) >= self._capacity:
            self._drop(_requests(weights))
            return
        try:
            ts = self.clock() if timestamps is None else _timestamps(timestamps)
            entry = batch_entry(weights, item_ids, lengths, cohorts, attributes, request_ids, ts, padding)
        except Exception as exc:
            entry = self._unreadable(_requests(weights), exc, timestamps=timestamps, weights=weights,
                                     item_ids=item_ids, lengths=lengths, cohorts=cohorts,
                                     attributes=attributes, request_ids=request_ids)
        self._put(entry)

    def _unreadable(self, n: int, exc: Exception, **args) -> tuple:
        """The queue entry of a call with an argument that cannot be read: its `n`
        requests are rejected on the background thread, counted like any other rejection
        (a strict collector raises there). Which argument, and so the reason, is found
        again here, off the fast path."""
        reason, detail = "bad_value", f"{type(exc).__name__}: {exc}"
        for name, value in args.items():
            if value is not None:
                reason_of, read = _READERS[name]
                try:
                    read(value)
                except Exception as e:
                    reason, detail = reason_of, f"{name}: {type(e).__name__}: {e}"
                    break
        self._log_rarely(logging.WARNING, "attnmon collector %s %s: a call was rejected (%s): %s",
                         self.model, self.version, reason, detail, key=("unreadable", reason))
        return ("rejected", n, self.clock(), reason, detail)

    def _started(self, thread: threading.Thread, what: str, then: str) -> bool:
        """Start `thread`; False when the OS refuses it (a pids limit): logged, not the
        serving call's error, and the next call tries again."""
        try:
            thread.start()
        except RuntimeError as exc:
            self._log_rarely(logging.ERROR, "attnmon collector %s %s: could not start its %s (%s); %s",
                             self.model, self.version, what, exc, then)
            return False
        return True

    def _exit_begin(self) -> None:
        """(A hook: ProcessCollector starts its close here, before any collector waits.)"""

    def _drop(self, n: int) -> None:
        with self._lock:
            self._dropped_hot += n
        if self._closed:
            self._log_rarely(logging.WARNING, "attnmon collector %s %s: observed after close(); dropped "
                             "(counted in stats.dropped)", self.model, self.version)

    def _drop_left(self) -> None:
        """Drop and count what is in the queue once the thread has taken its last."""
        n = 0
        while True:
            try:
                n += entry_size(self._q.popleft())
            except IndexError:
                break
        if n:
            self._drop(n)

    @property
    def closed(self) -> bool:
        """True once close() has run: later observations are dropped and counted."""
        return self._closed

    @classmethod
    def from_config(cls, model: str, version: str, *, config=None, **kwargs) -> Self:
        """A collector set up from attnmon.yaml's `collector:` section and `store_url`
        (with their environment overrides, ATTNMON_COLLECTOR__* and ATTNMON_STORE_URL);
        keyword arguments win. `config`: a loaded `monitor.config.Config` (default:
        `load_config()`, which reads ./attnmon.yaml if it exists)."""
        return cls(model=model, version=version, **config_options(config, kwargs, worker=cls._WORKER_OPTIONS))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
