"""Sending a collector's batches to the store: replay of the spilled ones in order, then
the unsent; a store that is down spills them (or, where nothing can be spilled, keeps them
in memory up to max_unsent_rows); a batch the store refuses is written leaner or set aside.

Functions of an AttentionCollector `c`, run on its background thread: they read and change
its unsent batches, spill folder and engine, and call its `_note_*` hooks (which the worker
process's collector extends).
"""

from __future__ import annotations

import dataclasses
import logging

from collectors.gil import _yield_gil
from collectors.spill import UnreadableSpill
from monitor.store.engine import PG_CONNECT_TIMEOUT_S, Cutter, one_line, refused, schema_behind
from monitor.store.writer import FlushBatch, write_batch

log = logging.getLogger("attnmon.collector")


def send_all(c) -> None:
    """Replay spilled batches in order, then the unsent ones; spill what fails (or,
    where it cannot be spilled, keep it in memory up to `max_unsent_rows`)."""
    try:
        engine = c._get_engine()
        if c._spill is not None:
            for path in c._spill.pending():
                batch = load_spilled(c, path)
                if batch is None:
                    continue
                if write_or_set_aside(c, engine, batch, path) and batch.collector_id == c.collector_id:
                    c._note_written(batch)
                c._spill.remove(path)
        while c._unsent:
            batch = c._unsent[0]
            if write_or_set_aside(c, engine, batch):
                c._note_written(batch)
            c._unsent.popleft()
            _yield_gil()
    except Exception as exc:  # the store is down or refusing: keep everything
        hint = ("; the store's schema is older than this collector's: run `attnmon db upgrade` (what "
                "waits is written then)" if schema_behind(exc) else "")
        c._log_rarely(logging.WARNING, "attnmon collector: store write failed (%s); %s%s",
                      one_line(exc, c._engine.url if c._engine is not None else None),
                      "spilling" if c._spill else "keeping in memory", hint)
        if c._spill is not None:
            spill_unsent(c)
        bound_unsent(c)


def write_or_set_aside(c, engine, batch: FlushBatch, path=None) -> bool | None:
    """Write the batch; True, or False when it was written before. If the store refuses
    its values (not the store being down), it would be refused at every try and hold
    back every batch behind it: try it without its raw events, then without its deployment
    row too (the values most likely to blame: callers' ids), else set it aside (None): moved to
    bad/ for a person (`path`: its spill file), or dropped, and counted."""
    try:
        return store_write(engine, c._cutter, batch, c.write_timeout_s)
    except Exception as exc:
        if not refused(exc):
            raise
        why = one_line(exc, engine.url)
    # without the raw events first: a deployment row left out is never written again,
    # and the baselines need it
    leaner = [dataclasses.replace(batch, events=[])] if batch.events else []
    if batch.deployments:
        leaner.append(dataclasses.replace(batch, events=[], deployments=[]))
    for lean in leaner:
        try:
            written = store_write(engine, c._cutter, lean, c.write_timeout_s)
        except Exception as exc:
            if not refused(exc):
                raise
            continue
        if batch.deployments and not lean.deployments:
            c._deployment_written = True  # (else every batch would carry it again)
        log.error("attnmon collector: the store refused batch %d (%s); written without its %d raw "
                  "event(s)%s", batch.batch_seq, why, len(batch.events),
                  "" if lean.deployments or not batch.deployments else " and deployment row")
        return written
    where = "dropped"
    if c._spill is not None:
        try:
            where = f"moved to {c._spill.quarantine(path or c._spill.put(batch))}"
        except OSError as exc:
            where = f"dropped (it could not be set aside: {exc})"
    if batch.collector_id == c.collector_id:
        c._count_dropped(batch.n_requests)
        c._note_set_aside(batch)
    log.error("attnmon collector: the store refused batch %d of %s (%s): %s, counted as dropped; the "
              "batches behind it go on", batch.batch_seq, batch.collector_id, why, where)
    return None


def store_write(engine, cutter: Cutter | None, batch: FlushBatch, write_timeout_s: float) -> bool:
    """write_batch, cut off on a server or proxy that stopped answering: once it has
    taken longer than its statements could on a live server, which ends each after
    write_timeout_s (a slow write that makes progress is never cut: it would be cut
    again at every replay, and hold back every batch behind it)."""
    if cutter is None:
        return write_batch(engine, batch)
    # the pre-ping, write_batches, deployments, rows, events, health, commit; a
    # duplicate's check; and a new connection's connect_timeout
    statements = 4 + len(batch.deployments) + bool(batch.aggregates) + bool(batch.events) + bool(batch.health)
    with cutter.deadline(statements * write_timeout_s + PG_CONNECT_TIMEOUT_S):
        return write_batch(engine, batch)


def load_spilled(c, path) -> FlushBatch | None:
    """A spilled batch, or None: gone (another process replayed it) or unreadable, which
    is moved aside so that it does not hold back the files after it."""
    try:
        return c._spill.load(path)
    except FileNotFoundError:
        return None
    except UnreadableSpill as exc:
        try:
            dest = c._spill.quarantine(path)
        except OSError as move_exc:
            log.error("attnmon collector: unreadable spill file %s, and it could not be moved "
                      "aside (%s); skipped", exc, move_exc)
            return None
        c._bad_spill_files += 1
        log.error("attnmon collector: unreadable spill file (%s), moved to %s; its batch is lost",
                  exc, dest)
        return None


def spill_unsent(c) -> None:
    """Spill the unsent batches in order; stop at the first that cannot be written (disk
    full, not writable): it and those after it stay in memory."""
    while c._unsent:
        batch = c._unsent[0]
        try:
            c._spill.put(batch)
        except OSError as exc:
            c._log_rarely(logging.ERROR, "attnmon collector: cannot spill to %s (%s); keeping "
                          "%d batch(es) in memory", c._spill.path, exc, len(c._unsent))
            return
        c._unsent.popleft()
        c._note_spilled(batch)


def bound_unsent(c) -> None:
    """Drop the oldest unsent batches (counted as dropped) while the rows held in memory
    exceed `max_unsent_rows`, keeping the newest: the minutes alerts look at."""
    held = sum(_rows_of(b) for b in c._unsent)
    lost = 0
    while len(c._unsent) > 1 and held > c.max_unsent_rows:
        batch = c._unsent.popleft()
        held -= _rows_of(batch)
        lost += batch.n_requests
        if batch.deployments:
            c._deployment_written = False  # the next batch carries it again
    if lost:
        c._count_dropped(lost)
        c._log_rarely(logging.ERROR, "attnmon collector: store unreachable and nowhere to spill; "
                      "dropping the oldest unsent batches (%d requests now; max_unsent_rows=%d)",
                      lost, c.max_unsent_rows)


def _rows_of(batch: FlushBatch) -> int:
    """What a batch holds in memory, in rows (aggregate rows and raw events)."""
    return len(batch.aggregates) + len(batch.events)
