"""Keeping the store small: compaction, hourly roll-up and retention.

Compaction merges the rows that several collectors (or several flushes) wrote for one
series and bucket into one row, once the bucket is closed. The roll-up merges old minute
rows into hour rows. Both are exact (sketches merge), so every reader keeps working
across them. Retention deletes raw sampled events and old batch keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, func, select
from sqlalchemy.engine import Engine

from monitor.sketch import Sketch
from monitor.store import tables as t

SERIES = ("model", "version", "cohort", "layer", "head")


@dataclass(frozen=True)
class MaintenanceResult:
    merged_groups: int = 0
    rows_removed: int = 0
    events_deleted: int = 0
    batches_deleted: int = 0


def as_utc(ts: datetime) -> datetime:
    """SQLite hands timestamps back naive; the store only ever holds UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _bucket(ts: datetime, seconds: int) -> datetime:
    epoch = as_utc(ts).timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def merge_buckets(
    engine: Engine,
    before: datetime,
    *,
    source_seconds: int = 60,
    target_seconds: int = 60,
    chunk: int = 500,
) -> MaintenanceResult:
    """Merge rows of `source_seconds` buckets starting before `before` into one row per
    series and `target_seconds` bucket. With equal sizes this is compaction (only groups
    of more than one row are touched); 60 → 3600 is the hourly roll-up."""
    wa = t.window_aggregates
    groups = rows_removed = 0
    with engine.connect() as conn:
        q = select(*[wa.c[c] for c in SERIES], wa.c.bucket_start).where(
            wa.c.bucket_seconds == source_seconds, wa.c.bucket_start < before
        )
        if source_seconds == target_seconds:
            q = q.group_by(*[wa.c[c] for c in SERIES], wa.c.bucket_start).having(func.count() > 1)
        else:
            q = q.distinct()
        keys = conn.execute(q).all()
    targets: dict[tuple, list[datetime]] = {}
    for *series, start in keys:
        targets.setdefault((*series, _bucket(start, target_seconds)), []).append(start)
    items = list(targets.items())
    for i in range(0, len(items), chunk):
        with engine.begin() as conn:
            for (*series, target), starts in items[i : i + chunk]:
                cond = and_(
                    *[wa.c[c] == v for c, v in zip(SERIES, series, strict=True)],
                    wa.c.bucket_seconds == source_seconds,
                    wa.c.bucket_start.in_(starts),
                )
                if target_seconds != source_seconds:
                    # an hour row written by an earlier roll-up of the same hour joins in
                    cond = cond | and_(
                        *[wa.c[c] == v for c, v in zip(SERIES, series, strict=True)],
                        wa.c.bucket_seconds == target_seconds,
                        wa.c.bucket_start == target,
                    )
                rows = conn.execute(select(wa).where(cond)).mappings().all()
                if len(rows) <= 1 and source_seconds == target_seconds:
                    continue
                merged = Sketch()
                for r in rows:
                    merged = merged.merge(Sketch.from_row(r))
                conn.execute(delete(wa).where(wa.c.id.in_([r["id"] for r in rows])))
                new = merged.to_row()
                new.update(dict(zip(SERIES, series, strict=True)))
                new.update(
                    bucket_start=target,
                    bucket_seconds=target_seconds,
                    collector_id=None,
                    written_at=max(r["written_at"] for r in rows),
                )
                conn.execute(wa.insert().values(**new))
                groups += 1
                rows_removed += len(rows) - 1
    return MaintenanceResult(merged_groups=groups, rows_removed=rows_removed)


def purge(engine: Engine, now: datetime, *, events_days: float, write_batches_days: float) -> MaintenanceResult:
    """Delete raw sampled events and batch keys past their retention."""
    with engine.begin() as conn:
        ev = conn.execute(
            delete(t.attention_events).where(t.attention_events.c.ts < now - timedelta(days=events_days))
        ).rowcount
        wb = conn.execute(
            delete(t.write_batches).where(
                t.write_batches.c.written_at < now - timedelta(days=write_batches_days)
            )
        ).rowcount
    return MaintenanceResult(events_deleted=ev or 0, batches_deleted=wb or 0)


def maintain(
    engine: Engine,
    now: datetime,
    *,
    events_days: float = 7,
    minute_aggregates_days: float = 3,
    write_batches_days: float = 14,
    closed_after_s: float = 120,
) -> MaintenanceResult:
    """Everything above, in the order that keeps every reader exact."""
    c = merge_buckets(engine, now - timedelta(seconds=closed_after_s))
    r = merge_buckets(
        engine, now - timedelta(days=minute_aggregates_days), source_seconds=60, target_seconds=3600
    )
    p = purge(engine, now, events_days=events_days, write_batches_days=write_batches_days)
    return MaintenanceResult(
        merged_groups=c.merged_groups + r.merged_groups,
        rows_removed=c.rows_removed + r.rows_removed,
        events_deleted=p.events_deleted,
        batches_deleted=p.batches_deleted,
    )
