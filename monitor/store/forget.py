"""Forgetting the item ids a store already holds: `attnmon forget-items --before TIME`.

`hash_item_ids` keeps raw ids out of what collectors write from then on; what they wrote
before keeps them: minute rows for `retention.minute_aggregates_days`, their hour roll-ups
for good, raw events for `retention.events_days`, materialised baselines for two days,
the items.top10_share results' detail (its ten items) for `retention.drift_results_days`.
This removes the top-K item list from every sketch (minute and hour rows, materialised
baselines) of the roll-up series that starts before `before`, the item ids of raw
events from before it and the item detail of results whose window starts before it.
Counts, histograms, positions, attribute top-K, metric sums and every result's value
stay, so every statistic but the item ones (`items.*`) reads as before. Rows without
item lists are left alone, so a second run finds nothing to do: the way to check that a
merge running at the same moment (maintenance rewrites rows it read) brought none back.
A payload that cannot be read is logged, counted and left as it is (maintenance skips
it too): one bad row must not keep every other id in the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, bindparam, cast, null, select, update
from sqlalchemy.engine import Engine

from monitor.sketch import decode_payload, encode_payload
from monitor.stacked_payload import HOUR_STACK, decode_stacked, encode_stacked, is_stacked
from monitor.store import tables as t
from monitor.store.maintenance import as_utc

log = logging.getLogger("attnmon.forget")

ROLLUP = "*"  # the only series whose sketches carry items (DESIGN §4: keeps rows small)
CHUNK = 500  # rows rewritten a transaction
# stacked hour partials rewritten a transaction: each holds an hour of every series of a
# version (megabytes; tens of them at 10,000 series), so 500 would be gigabytes in memory
STACK_CHUNK = 1
CLEAR_CHUNK = 5000  # rows whose column is set to NULL a transaction (no payload to rewrite)


@dataclass(frozen=True)
class Forgotten:
    sketches: int  # window_aggregates rows whose item list was removed
    baselines: int  # baseline_sketches rows likewise
    results: int  # drift_results whose detail (the top items) was removed
    events: int  # attention_events whose item ids were removed
    unreadable: int = 0  # sketch rows left as they were: their payload cannot be read


def forget_items(engine: Engine, before: datetime, *, model: str | None = None, chunk: int = CHUNK,
                 clear_chunk: int = CLEAR_CHUNK) -> Forgotten:
    before = as_utc(before)
    wa, bs, ev, dr = t.window_aggregates, t.baseline_sketches, t.attention_events, t.drift_results
    sketches, bad_sketches = _strip(engine, wa, [wa.c.bucket_start < before, _rollup(wa)], model, chunk)
    baselines, bad_baselines = _strip(engine, bs, [bs.c.window_start < before, _rollup(bs)], model, chunk)
    # a stacked hour partial (one row of every series) holds the roll-ups' items too
    stacks, bad_stacks = _strip(engine, bs, [bs.c.window_start < before, bs.c.kind == HOUR_STACK], model,
                                min(chunk, STACK_CHUNK))
    # items.top10_share names its ten items; no other result's detail holds item ids
    results = _clear(engine, dr, dr.c.detail, [dr.c.window_start < before, dr.c.statistic.like("items.%")],
                     model, clear_chunk)
    events = _clear(engine, ev, ev.c.item_ids, [ev.c.ts < before], model, clear_chunk)
    return Forgotten(sketches, baselines + stacks, results, events, bad_sketches + bad_baselines + bad_stacks)


def _chunks(engine: Engine, table, columns: list, where: list, model: str | None, chunk: int):
    """(connection, rows) of `table`'s matching rows, `chunk` at a time in id order, each
    chunk in a transaction of its own (committed when the next is asked for): a week of
    raw events in one would hold SQLite's write lock, or PostgreSQL's row locks against
    retention, for as long as it takes. Each row is (id, *columns)."""
    if model is not None:
        where = [*where, table.c.model == model]
    last = None
    while True:
        q = select(table.c.id, *columns).where(*where).order_by(table.c.id).limit(chunk)
        if last is not None:
            q = q.where(table.c.id > last)
        with engine.begin() as conn:
            rows = conn.execute(q).all()
            if not rows:
                return
            last = rows[-1][0]
            yield conn, rows


def _clear(engine: Engine, table, column, where: list, model: str | None, chunk: int) -> int:
    """Set `column` to SQL NULL where it holds something, `chunk` rows a transaction."""
    # SQL NULL, not JSON null: a JSON column's None is the text 'null' unless said so
    where = [*where, column.is_not(None), cast(column, Text) != "null"]
    done = 0
    for conn, rows in _chunks(engine, table, [], where, model, chunk):
        ids = [r[0] for r in rows]
        done += conn.execute(update(table).where(table.c.id.in_(ids)).values({column.name: null()})).rowcount
    return done


def _rollup(table):
    return (table.c.cohort == ROLLUP) & (table.c.head == ROLLUP)


def _strip(engine: Engine, table, where: list, model: str | None, chunk: int) -> tuple[int, int]:
    """Rewrite the payloads with an item list of the rows `where` selects, `chunk` rows a
    transaction, in id order: (rows rewritten, rows whose payload cannot be read)."""
    rewrite = update(table).where(table.c.id == bindparam("row_id")).values(payload=bindparam("new_payload"))
    done = bad = 0
    for conn, rows in _chunks(engine, table, [table.c.payload], where, model, chunk):
        changed, unreadable = [], []
        for row_id, payload in rows:
            try:
                new = _without_items(payload)
            except ValueError as exc:
                unreadable.append(row_id)
                why = exc
                continue
            if new is not None:
                changed.append({"row_id": row_id, "new_payload": new})
        if unreadable:
            log.warning("%s rows %s: a payload cannot be read (%s); left as they are, item ids and all",
                        table.name, unreadable, why)
        if changed:
            conn.execute(rewrite, changed)
        done += len(changed)
        bad += len(unreadable)
    return done, bad


def _without_items(payload: bytes) -> bytes | None:
    """The payload without its item lists; None if it holds none. ValueError if unreadable."""
    if is_stacked(payload):
        st = decode_stacked(payload)
        if all(items is None for items, _ in st.topk.values()):
            return None
        st.topk = {i: (None, attrs) for i, (_, attrs) in st.topk.items() if attrs}
        return encode_stacked(st)
    sk = decode_payload(payload)
    if sk.items is None:
        return None
    sk.items = None
    return encode_payload(sk)
