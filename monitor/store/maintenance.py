"""Keeping the store small: compaction, hourly roll-up and retention.

Compaction merges the rows that several collectors (or several flushes) wrote for one
series and bucket into one row, once the bucket is closed. The roll-up merges old minute
rows into hour rows. Both are exact (sketches merge), so every reader keeps working
across them; merged rows get their position bands from the merged sketch, and a roll-up
row records which of its minutes had rows (`minute_mask`). Rows from before migration
0004 that its upgrade left without bands get them from their payload
(`fill_position_bands`). Retention deletes raw sampled events and old batch keys.

`progress()`, when given, is called after each step (a merge chunk committed, a span of
bands, a retention delete): the daemon's /livez tells a long run that moves from a stuck one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, and_, bindparam, cast, delete, func, or_, select, tuple_, update
from sqlalchemy.engine import Engine

from monitor.sketch import Sketch, decode_payload
from monitor.store import positions
from monitor.store import tables as t
from monitor.store.upsert import put_state

log = logging.getLogger("attnmon.maintenance")

SERIES = ("model", "version", "cohort", "layer", "head")
ROLLUP_SECONDS = 3600  # the width of the rows old minutes are rolled up into
Progress = Callable[[], object]


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class MaintenanceResult:
    merged_groups: int = 0
    rows_removed: int = 0
    events_deleted: int = 0
    batches_deleted: int = 0
    results_deleted: int = 0
    bands_filled: int = 0
    health_deleted: int = 0
    results_thinned: int = 0


def as_utc(ts: datetime) -> datetime:
    """SQLite hands timestamps back naive; the store only ever holds UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _bucket(ts: datetime, seconds: int) -> datetime:
    epoch = as_utc(ts).timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def minute_mask(rows, target: datetime, target_seconds: int) -> int | None:
    """The minutes of the bucket at `target` that `rows` (of that bucket) hold, as the
    window_aggregates.minute_mask of their merge: bit i for its minute i, None for all of
    them. A row's own mask NULL means all of its bucket (a minute row; an hour rolled up
    before migration 0006, so counted as 60 minutes, as before it). Minutes, not rows:
    several collectors' rows of one minute set one bit, and an hour row merged again with
    late minute rows keeps its bits (a late minute it already holds is not added twice)."""
    mask = 0
    for r in rows:
        own = r["minute_mask"]
        if own is None:
            own = (1 << (r["bucket_seconds"] // 60)) - 1
        offset = int((as_utc(r["bucket_start"]) - target).total_seconds()) // 60
        mask |= own << offset
    return None if mask == (1 << (target_seconds // 60)) - 1 else mask


def served_minutes(bucket_start: datetime, bucket_seconds: int, mask: int | None) -> list[int]:
    """The minutes (since the epoch) a window_aggregates row holds traffic of."""
    first = int(as_utc(bucket_start).timestamp()) // 60
    return [first + i for i in range(bucket_seconds // 60) if mask is None or (mask >> i) & 1]


def rows_in(start: datetime, end: datetime) -> tuple:
    """Where-clauses for the window_aggregates rows that hold traffic of [start, end): a
    minute row whose minute starts in it, and an hour row (rolled up by `maintain`) whose
    hour overlaps it. An hour row across an edge also holds traffic just outside the
    window; readers that count minutes take its served minutes inside (served_minutes),
    and leaving it out would leave out the minutes inside too: a version deployed at 10:30
    would lose 10:30-10:59."""
    wa = t.window_aggregates
    return (wa.c.bucket_start > start - timedelta(seconds=ROLLUP_SECONDS), wa.c.bucket_start < end,
            or_(wa.c.bucket_start >= start, wa.c.bucket_seconds > 60))


RACE_RETRIES = 3


class _Raced(Exception):
    """Rows this merge read were deleted before it deleted them: another merge (a second
    `attnmon maintain`, or a daemon that lost its lead) got there first. Inserting this
    merge's row as well would count those rows twice, so its chunk is rolled back."""


def merge_buckets(
    engine: Engine,
    before: datetime,
    *,
    source_seconds: int = 60,
    target_seconds: int = 60,
    chunk: int = 500,
    progress: Progress = _nothing,
) -> MaintenanceResult:
    """Merge rows of `source_seconds` buckets starting before `before` into one row per
    series and `target_seconds` bucket. With equal sizes this is compaction (only groups
    of more than one row are touched); 60 → 3600 is the hourly roll-up. Each transaction
    merges groups of at most `chunk` source buckets in all."""
    wa = t.window_aggregates
    groups = rows_removed = 0
    source = (wa.c.bucket_seconds == source_seconds, wa.c.bucket_start < before)
    # an hour of source rows at a time: a store with weeks to catch up (maintenance
    # failing, or minute_aggregates_days lowered) would otherwise read every key at once
    span = max(target_seconds, ROLLUP_SECONDS)
    lo = _first_start(engine, *source)
    while lo is not None:
        hi = _bucket(lo, span) + timedelta(seconds=span)
        g, r = _merge_slice(engine, (*source, wa.c.bucket_start >= lo, wa.c.bucket_start < hi),
                            source_seconds, target_seconds, chunk, progress)
        groups, rows_removed = groups + g, rows_removed + r
        lo = _first_start(engine, *source, wa.c.bucket_start >= hi)
    return MaintenanceResult(merged_groups=groups, rows_removed=rows_removed)


def _first_start(engine: Engine, *where) -> datetime | None:
    wa = t.window_aggregates
    with engine.connect() as conn:
        return conn.execute(select(func.min(wa.c.bucket_start)).where(*where)).scalar()


def _merge_slice(engine: Engine, where: tuple, source_seconds: int, target_seconds: int,
                 chunk: int, progress: Progress = _nothing) -> tuple[int, int]:
    """merge_buckets over the source rows `where` selects: (groups, rows removed)."""
    wa = t.window_aggregates
    groups = rows_removed = 0
    with engine.connect() as conn:
        q = select(*[wa.c[c] for c in SERIES], wa.c.bucket_start).where(*where)
        if source_seconds == target_seconds:
            q = q.group_by(*[wa.c[c] for c in SERIES], wa.c.bucket_start).having(func.count() > 1)
        else:
            q = q.distinct()
        keys = conn.execute(q).all()
    progress()
    targets: dict[tuple, list[datetime]] = {}
    for *series, start in keys:
        targets.setdefault((*series, _bucket(start, target_seconds)), []).append(start)
    # one order for every merge, so that two at once on PostgreSQL lock rows alike (no deadlock)
    items = sorted(targets.items())
    for part in _chunks(items, chunk):
        for _ in range(RACE_RETRIES):
            try:
                g, r = _merge_chunk(engine, part, source_seconds, target_seconds)
            except _Raced:
                continue
            groups += g
            rows_removed += r
            progress()
            break
        else:
            log.warning("another maintenance run kept merging the same rows; %d groups are left "
                        "for the next run", len(part))
    return groups, rows_removed


def _chunks(items: list, size: int):
    """`items` (target, source starts) in runs of at most `size` source buckets (one
    target at least): a transaction's size in rows, as a roll-up target holds up to 60
    minutes. On SQLite it holds the one write lock that collectors wait for."""
    part, held = [], 0
    for item in items:
        if part and held + len(item[1]) > size:
            yield part
            part, held = [], 0
        part.append(item)
        held += len(item[1])
    if part:
        yield part


def _merge_chunk(engine: Engine, part: list, source_seconds: int, target_seconds: int) -> tuple[int, int]:
    """Merge each (series, target bucket) of `part` in one transaction: (groups, rows removed)."""
    wa = t.window_aggregates
    groups = rows_removed = 0
    with engine.begin() as conn:
        for (*series, target), starts in part:
            same_series = [wa.c[c] == v for c, v in zip(SERIES, series, strict=True)]
            cond = and_(*same_series, wa.c.bucket_seconds == source_seconds, wa.c.bucket_start.in_(starts))
            if target_seconds != source_seconds:
                # an hour row written by an earlier roll-up of the same hour joins in
                cond = cond | and_(*same_series, wa.c.bucket_seconds == target_seconds,
                                   wa.c.bucket_start == target)
            rows = conn.execute(select(wa).where(cond)).mappings().all()
            # compaction needs two rows; a roll-up, one source row (another merge may have
            # taken them since the keys were read)
            sources = sum(r["bucket_seconds"] == source_seconds for r in rows)
            if sources < (2 if source_seconds == target_seconds else 1):
                continue
            try:
                merged = Sketch()
                for r in rows:
                    merged = merged.merge(Sketch.from_row(r))
            except ValueError as exc:
                # skipped, not raised: one bad row would stop every later run, retention too
                log.warning("window_aggregates rows %s: a payload cannot be read (%s); left unmerged",
                            [r["id"] for r in rows], exc)
                continue
            gone = conn.execute(delete(wa).where(wa.c.id.in_([r["id"] for r in rows]))).rowcount
            if gone != len(rows):
                raise _Raced
            new = merged.to_row()
            new.update(positions.band_sums(merged.pos))
            new.update(dict(zip(SERIES, series, strict=True)))
            new.update(
                bucket_start=target,
                bucket_seconds=target_seconds,
                minute_mask=minute_mask(rows, target, target_seconds),
                collector_id=None,
                written_at=max(r["written_at"] for r in rows),
            )
            conn.execute(wa.insert().values(**new))
            groups += 1
            rows_removed += len(rows) - 1
    return groups, rows_removed


BANDS_CURSOR = "maintenance.position_bands"  # daemon_state: how far fill_position_bands read


def fill_position_bands(engine: Engine, *, limit: int = 100_000, scan: int = 2_000_000,
                        span: int = 10_000, progress: Progress = _nothing) -> int:
    """Derive, from their payloads, the position bands of rows that have none; returns
    how many rows got them.

    Rows without bands (NULL) are history from before migration 0004 beyond what its
    upgrade filled, and rows that collectors still running older code write during an
    upgrade. A cursor in daemon_state (key BANDS_CURSOR: the ids read above and below)
    makes each call read only ids no call has read: first the rows written since the
    last call, then older history, newest first, in ranges of `span` ids, at most `scan`
    ids and `limit` filled rows per call, so an hourly maintain job works through a
    large store a slice at a time at a bounded cost. A payload that cannot be read is
    logged and left NULL."""
    wa, ds = t.window_aggregates, t.daemon_state
    with engine.connect() as conn:
        lowest, highest = conn.execute(select(func.min(wa.c.id), func.max(wa.c.id))).one()
        saved = conn.execute(select(ds.c.value).where(ds.c.key == BANDS_CURSOR)).scalar()
    if highest is None:
        return 0
    cursor = json.loads(saved) if saved else {"above": highest, "below": highest + 1}
    above, below = int(cursor["above"]), int(cursor["below"])
    filled = read = 0
    while above < highest and filled < limit and read < scan:  # new rows, oldest first
        top = min(above + span, highest)
        filled += _fill_range(engine, above + 1, top + 1)
        read, above = read + top - above, top
        progress()
    while below > lowest and filled < limit and read < scan:  # history, newest first
        bottom = max(lowest, below - span)
        filled += _fill_range(engine, bottom, below)
        read, below = read + below - bottom, bottom
        progress()
    # an upsert: a delete and an insert let a second maintainer at once fail on the key
    # the first had just inserted (PostgreSQL)
    with engine.begin() as conn:
        put_state(conn, BANDS_CURSOR, json.dumps({"above": above, "below": below}), datetime.now(UTC))
    return filled


def _fill_range(engine: Engine, lo: int, hi: int) -> int:
    """Fill the rows without bands whose id is in [lo, hi), in one transaction."""
    wa = t.window_aggregates
    stmt = (
        update(wa)
        .where(wa.c.id == bindparam("row_id"))
        .values({name: bindparam(f"v_{name}") for name in positions.COLUMNS})
    )
    with engine.begin() as conn:
        rows = conn.execute(select(wa.c.id, wa.c.payload).where(
            wa.c.id >= lo, wa.c.id < hi, wa.c[positions.COLUMNS[0]].is_(None))).all()
        params = []
        for row_id, payload in rows:
            try:
                pos = decode_payload(payload).pos
            except ValueError as exc:
                log.warning("window_aggregates row %s: %s; its position bands stay NULL", row_id, exc)
                continue
            params.append({"row_id": row_id, **{f"v_{k}": v for k, v in positions.band_sums(pos).items()}})
        if params:
            conn.execute(stmt, params)
    return len(params)


# Rows a retention delete removes per transaction: a backlog (retention lowered, a week
# of maintenance missed) would be one statement past statement_timeout_s, retried and
# failing for ever, and one transaction holding its locks and WAL the while.
PURGE_BATCH = 50_000


def purge(engine: Engine, now: datetime, *, events_days: float, write_batches_days: float,
          drift_results_days: float | None = None, health_days: float | None = None,
          progress: Progress = _nothing, batch: int = PURGE_BATCH) -> MaintenanceResult:
    """Delete raw sampled events, batch keys, drift results and collector health minutes
    past their retention, `batch` rows a transaction (each kept if a later one fails)."""
    hd = dr = 0
    if health_days is not None:  # one row per collector and minute: 52M a year at 100
        ch = t.collector_health
        hd = _delete_before(engine, ch, ch.c.minute, now - timedelta(days=health_days), batch, progress)
    if drift_results_days is not None:
        d = t.drift_results
        dr = _delete_before(engine, d, d.c.window_end, now - timedelta(days=drift_results_days), batch, progress)
    ae = t.attention_events
    ev = _delete_before(engine, ae, ae.c.ts, now - timedelta(days=events_days), batch, progress)
    wb = t.write_batches
    wbn = _delete_before(engine, wb, wb.c.written_at, now - timedelta(days=write_batches_days), batch, progress)
    return MaintenanceResult(events_deleted=ev, batches_deleted=wbn, results_deleted=dr, health_deleted=hd)


def _delete_before(engine: Engine, table, column, cut: datetime, batch: int, progress: Progress) -> int:
    """Delete the rows of `table` whose `column` is before `cut`, `batch` at a time, each
    in a transaction of its own (a step for progress); the rows deleted."""
    return _delete_where(engine, table, column < cut, batch, progress)


def _delete_where(engine: Engine, table, where, batch: int, progress: Progress, *, to_the_end: bool = False) -> int:
    """Delete the rows of `table` where `where` holds, as `_delete_before` does.
    `to_the_end`: until a batch deletes nothing, not just fewer than `batch` (a second
    maintainer's delete of the same rows makes a batch short while rows are left)."""
    key = list(table.primary_key.columns)
    total = 0
    while True:
        chosen = select(*key).where(where).limit(batch)
        if len(key) == 1:
            stmt = delete(table).where(key[0].in_(chosen.scalar_subquery()))
        else:  # (write_batches: collector and sequence; row values, SQLite 3.15 on)
            stmt = delete(table).where(tuple_(*key).in_(chosen))
        with engine.begin() as conn:
            n = conn.execute(stmt).rowcount or 0
        total += n
        progress()
        if n == 0 or (n < batch and not to_the_end):
            return total


THINNED_KEY = "maintenance.drift_results_thinned_to"  # daemon_state: results thinned up to here
THIN_SPAN_MINUTES = 60  # the window ends one thinning statement covers (at least one step)


def thin_results(engine: Engine, before: datetime, every_minutes: int, *, not_before: datetime | None = None,
                 batch: int = PURGE_BATCH, progress: Progress = _nothing) -> int:
    """Of the drift results whose window ends before `before`, keep those ending on a
    multiple of `every_minutes` since the epoch and delete the others; the rows deleted.

    With `every_minutes` the evaluation window's length, the kept windows tile time: every
    minute is still in one kept result, at a fifteenth of the rows for 15-minute windows
    (evaluate writes a window ending at every minute). Older history reads at that
    resolution. Results of windows shorter than `every_minutes` (evaluate.window_minutes
    raised since they were written) keep those ending on a multiple of their own length
    too, so their minutes stay tiled. A cursor in daemon_state (THINNED_KEY) makes each
    call read only what no call has thinned; `not_before` (the retention cut) skips what
    retention deletes."""
    if every_minutes < 2:
        return 0
    dr, ds = t.drift_results, t.daemon_state
    step = every_minutes * 60
    with engine.connect() as conn:
        saved = conn.execute(select(ds.c.value).where(ds.c.key == THINNED_KEY)).scalar()
        start = cursor = as_utc(datetime.fromisoformat(saved)) if saved else None
        if start is None:  # the first call: from the oldest result
            oldest = conn.execute(select(func.min(dr.c.window_end))).scalar()
            if oldest is None:
                return 0
            start = as_utc(oldest)
    if not_before is not None:
        start = max(start, as_utc(not_before))
    lo, end = _bucket(start, step), _bucket(before, step)  # whole steps: a kept end on each edge
    # a result of a shorter window (written before window_minutes was raised) stays when
    # its end is a multiple of its own length: those are what tile its minutes
    end_s, start_s = _epoch_seconds(dr.c.window_end, engine), _epoch_seconds(dr.c.window_start, engine)
    length = end_s - start_s
    also = [or_(length >= step, end_s % func.nullif(length, 0) != 0)]
    # nothing at or behind the cursor: a call with another window length thinned it, and
    # the cursor (its kept end) need not be a multiple of this one's
    if cursor is not None:
        also.append(dr.c.window_end > cursor)
    span = timedelta(seconds=step * max(1, THIN_SPAN_MINUTES // every_minutes))
    total = 0
    while lo < end:
        hi = min(lo + span, end)
        keep = [lo + timedelta(seconds=s) for s in range(0, int((hi - lo).total_seconds()), step)]
        # open ranges between kept ends: no equality on stored timestamps, and a result at
        # an odd second (none is written) goes with its step's others
        where = and_(or_(*(and_(dr.c.window_end > k, dr.c.window_end < k + timedelta(seconds=step))
                           for k in keep)), *also)
        total += _delete_where(engine, dr, where, batch, progress, to_the_end=True)  # the cursor passes it
        with engine.begin() as conn:
            put_state(conn, THINNED_KEY, hi.isoformat(timespec="seconds"), datetime.now(UTC), only_forward=True)
        lo = hi
    return total


def _epoch_seconds(column, engine: Engine):
    """A timestamp column as whole seconds since the epoch, in SQL (SQLite, PostgreSQL)."""
    if engine.dialect.name == "sqlite":
        return cast(func.strftime("%s", column), BigInteger)
    return cast(func.extract("epoch", column), BigInteger)


def maintain(
    engine: Engine,
    now: datetime,
    *,
    events_days: float = 7,
    minute_aggregates_days: float = 3,
    write_batches_days: float = 14,
    drift_results_days: float | None = None,
    health_days: float | None = None,
    thin_results_after_days: float | None = None,
    thin_every_minutes: int = 15,
    closed_after_s: float = 120,
    fill_bands: int = 100_000,
    progress: Progress = _nothing,
) -> MaintenanceResult:
    """Everything above, in the order that keeps every reader exact."""
    c = merge_buckets(engine, now - timedelta(seconds=closed_after_s), progress=progress)
    r = merge_buckets(
        engine, now - timedelta(days=minute_aggregates_days), source_seconds=60, target_seconds=ROLLUP_SECONDS,
        progress=progress,
    )
    # after the merges, which give their rows bands: only untouched old rows are left
    f = fill_position_bands(engine, limit=fill_bands, progress=progress) if fill_bands > 0 else 0
    p = purge(engine, now, events_days=events_days, write_batches_days=write_batches_days,
              drift_results_days=drift_results_days, health_days=health_days, progress=progress)
    thinned = 0
    if thin_results_after_days is not None:  # after the purge: nothing it deletes is read
        kept_from = now - timedelta(days=drift_results_days) if drift_results_days is not None else None
        thinned = thin_results(engine, now - timedelta(days=thin_results_after_days), thin_every_minutes,
                               not_before=kept_from, progress=progress)
    return MaintenanceResult(
        merged_groups=c.merged_groups + r.merged_groups,
        rows_removed=c.rows_removed + r.rows_removed,
        events_deleted=p.events_deleted,
        batches_deleted=p.batches_deleted,
        results_deleted=p.results_deleted,
        bands_filled=f,
        health_deleted=p.health_deleted,
        results_thinned=thinned,
    )
