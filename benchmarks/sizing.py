"""Storage sizing: bytes per window_aggregates row, from real rows, and what a year costs.

Two serving replicas (two collectors) share 1,000 requests a minute of a model with
2 layers × 4 heads, 3 cohorts, item ids from a 50k-item Zipf catalogue and two attributes
(brand ~200 values, category ~30), for 10 minutes. Their flushes are written with
`write_batch` into a migrated SQLite file; then `maintenance.merge_buckets` compacts
them (one row per series-minute) and rolls the minutes up to an hour row.

A row's size is its `payload` (measured, `length(payload)`) plus its label columns
(measured) plus 8 bytes for every numeric or timestamp column (an estimate; PostgreSQL
adds ~24 bytes of tuple header and its index entries on top).
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import LargeBinary, String, func, select

from benchmarks.report import Row, table
from benchmarks.workload import T0, replicas_traffic
from monitor.store import make_engine, migrate
from monitor.store import tables as t
from monitor.store.maintenance import as_utc, merge_buckets
from monitor.store.writer import FlushBatch, write_batch

LAYERS, HEADS, LENGTH = 2, 4, 50
PER_MINUTE, REPLICAS = 1_000, 2
ROW_GOAL = 4_096
MINUTE_DAYS = 3  # maintain(): minute rows kept 3 days, then rolled up to hours
SERIES = (10, 100, 1_000)
LABELS = ("model", "version", "cohort", "layer", "head", "collector_id")


def fixed_numeric_columns() -> list[str]:
    wa = t.window_aggregates
    return [c.name for c in wa.columns if not isinstance(c.type, String | LargeBinary)]


def traffic(minutes: int) -> list[FlushBatch]:
    return replicas_traffic(
        minutes=minutes, per_minute=PER_MINUTE, replicas=REPLICAS, layers=LAYERS,
        heads=HEADS, length=LENGTH, model="sasrec-retail", version="2026-11-20.1",
    )


def row_stats(engine, bucket_seconds: int) -> dict:
    wa = t.window_aggregates
    labels = sum(func.coalesce(func.length(wa.c[name]), 0) for name in LABELS)
    q = select(
        func.count(),
        func.avg(func.length(wa.c.payload)),
        func.max(func.length(wa.c.payload)),
        func.avg(labels),
    ).where(wa.c.bucket_seconds == bucket_seconds)
    series = select(wa.c.model, wa.c.version, wa.c.cohort, wa.c.layer, wa.c.head,
                    wa.c.bucket_start).where(wa.c.bucket_seconds == bucket_seconds).distinct()
    star = select(func.avg(func.length(wa.c.payload))).where(
        wa.c.bucket_seconds == bucket_seconds, wa.c.head == "*")
    with engine.connect() as conn:
        n, avg_p, max_p, avg_labels = conn.execute(q).one()
        keys = len(conn.execute(series).all())
        avg_star = conn.execute(star).scalar_one()
    fixed = 8 * len(fixed_numeric_columns())
    return {
        "rows": int(n),
        "series_buckets": keys,
        "rows_per_series_bucket": n / keys if keys else None,
        "payload_avg": float(avg_p or 0),
        "payload_max": int(max_p or 0),
        "payload_avg_head_star": float(avg_star or 0),
        "labels_avg": float(avg_labels or 0),
        "fixed_estimate": fixed,
        "row_avg": float(avg_p or 0) + float(avg_labels or 0) + fixed,
        "row_max": int(max_p or 0) + float(avg_labels or 0) + fixed,
    }


def yearly(series: int, minute_row: float, hour_row: float) -> dict:
    minute_rows = series * 1440 * MINUTE_DAYS
    hour_rows = series * 24 * (365 - MINUTE_DAYS)
    return {
        "series": series,
        "mb_per_day": series * 1440 * minute_row / 1e6,
        "gb_per_year": (minute_rows * minute_row + hour_rows * hour_row) / 1e9,
        "gb_per_year_all_minutes": series * 1440 * 365 * minute_row / 1e9,
    }


def measure(minutes: int) -> tuple[dict, list[FlushBatch]]:
    batches = traffic(minutes)
    with tempfile.TemporaryDirectory(prefix="attnmon-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'sizing.db'}"
        migrate.upgrade(url)
        engine = make_engine(url)
        try:
            for b in batches:
                assert write_batch(engine, b)
            before = row_stats(engine, 60)
            with engine.connect() as conn:
                last = conn.execute(select(func.max(t.window_aggregates.c.bucket_start))).scalar_one()
            closed = as_utc(last) + timedelta(minutes=1)
            merge_buckets(engine, closed)
            after = row_stats(engine, 60)
            merge_buckets(engine, closed, source_seconds=60, target_seconds=3600)
            hour = row_stats(engine, 3600)
        finally:
            engine.dispose()
    return {
        "layout": {"layers": LAYERS, "heads": HEADS, "cohorts": 3, "length": LENGTH,
                   "requests_per_minute": PER_MINUTE, "replicas": REPLICAS, "minutes": minutes,
                   "catalogue": 50_000, "brands": 200, "categories": 30},
        "start": T0,
        "minute_rows_before_compaction": before,
        "minute_rows_after_compaction": after,
        "hour_rows": hour,
        "retention": f"minute rows for {MINUTE_DAYS} days, hour rows for the rest of the year",
        "per_year": [yearly(s, after["row_avg"], hour["row_avg"]) for s in SERIES],
        "per_year_at_max_row": [yearly(s, after["row_max"], hour["row_max"]) for s in SERIES],
    }, batches


def rows(result: dict) -> list[Row]:
    after, hour = result["minute_rows_after_compaction"], result["hour_rows"]
    avg = Row("sizing: avg minute row (compacted)", "bytes", after["row_avg"], "B",
              goal="≤ 4 KB (4,096 B)", met=after["row_avg"] <= ROW_GOAL, extra=after)
    return [
        avg,
        Row("sizing: max minute row", "bytes", after["row_max"], "B", goal="(report)"),
        Row("sizing: avg hour row (roll-up)", "bytes", hour["row_avg"], "B", goal="(report)"),
    ]


def details(result: dict) -> str:
    """The sizing section printed under the main table."""
    b = result["minute_rows_before_compaction"]
    a = result["minute_rows_after_compaction"]
    h = result["hour_rows"]
    lay = result["layout"]
    head = (
        f"Sizing — {lay['layers']} layers × {lay['heads']} heads, {lay['cohorts']} cohorts, "
        f"{lay['requests_per_minute']:,} req/min over {lay['replicas']} replicas, "
        f"{lay['minutes']} min; 50k-item Zipf catalogue, brand ~200, category ~30.\n"
        f"Row bytes = payload (measured) + labels (measured, avg {a['labels_avg']:.0f} B) "
        f"+ {a['fixed_estimate']} B fixed ({a['fixed_estimate'] // 8} numeric/timestamp "
        "columns × 8 B, estimated).\n"
    )
    stats = table(
        [
            ("minute, as written", f"{b['rows']}", f"{b['rows_per_series_bucket']:.2f}",
             f"{b['payload_avg']:,.0f}", f"{b['payload_max']:,}", f"{b['payload_avg_head_star']:,.0f}",
             f"{b['row_avg']:,.0f}"),
            ("minute, compacted", f"{a['rows']}", f"{a['rows_per_series_bucket']:.2f}",
             f"{a['payload_avg']:,.0f}", f"{a['payload_max']:,}", f"{a['payload_avg_head_star']:,.0f}",
             f"{a['row_avg']:,.0f}"),
            ("hour roll-up", f"{h['rows']}", f"{h['rows_per_series_bucket']:.2f}",
             f"{h['payload_avg']:,.0f}", f"{h['payload_max']:,}", f"{h['payload_avg_head_star']:,.0f}",
             f"{h['row_avg']:,.0f}"),
        ],
        ("rows", "count", "rows/series-bucket", "payload avg B", "payload max B",
         "payload avg B (head=*)", "row avg B"),
    )
    per_year = table(
        [
            (f"{y['series']:,}", f"{y['mb_per_day']:,.1f}", f"{y['gb_per_year']:,.2f}",
             f"{m['gb_per_year']:,.2f}", f"{y['gb_per_year_all_minutes']:,.1f}")
            for y, m in zip(result["per_year"], result["per_year_at_max_row"], strict=True)
        ],
        ("series", "MB/day (minute rows)", "GB/year (avg row)", "GB/year (max row)",
         "GB/year if minutes kept all year"),
    )
    retention = (
        f"Retention assumed: {result['retention']} (maintain() defaults); 1 row per "
        "series-minute after compaction; a series is one (model, version, cohort, layer, "
        "head), with the per-head and head=\"*\" series of this layout in their proportions."
    )
    return "\n".join([head, stats, "", per_year, retention])
