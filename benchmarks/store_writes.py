"""Store writes: rows/s through `write_batch`, beside a raw bulk load of the same rows.

The rows are real: window_aggregates rows from collectors' `_take_batch` (the sizing
traffic) and attention_events rows from a collector sampling every request. One batch is
one `write_batch` call, one transaction, as a collector's flush is. The bare reference
loads the same rows, converted from the same dicts, in one transaction per batch:
- PostgreSQL: a raw psycopg `COPY ... FROM STDIN (FORMAT BINARY)` (the reference: the
  fastest raw load), and the same COPY in text format (reported beside it), into a table
  made `LIKE <table> INCLUDING ALL` (same columns, defaults and indexes; logged, not
  TEMP, so it pays for WAL as the real table does);
- SQLite: a raw sqlite3 `executemany` INSERT into the same table of a second migrated
  file (no goal: DESIGN.md sets one for PostgreSQL only).
All are timed interleaved, batch by batch.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from psycopg.types.json import Json
from sqlalchemy import Table, text

from benchmarks import pg
from benchmarks.report import Row
from monitor.store import make_engine, migrate
from monitor.store import tables as t
from monitor.store.writer import FlushBatch, write_batch

COPY_GOAL = 0.5  # write_batch rows/s ≥ 0.5 × COPY rows/s, i.e. cost ratio ≤ 2


def columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


def cycle_rows(pool: list[dict], n: int, key: str, step: timedelta, batch_no: int) -> list[dict]:
    """n rows from the pool, each pass over it shifted in time (a later minute)."""
    out = []
    for i in range(n):
        k, r = divmod(i + batch_no * n, len(pool))
        row = dict(pool[r])
        row[key] = row[key] + step * k
        out.append(row)
    return out


def make_batch(kind: str, rows: list[dict], seq: int, collector_id: str) -> FlushBatch:
    return FlushBatch(
        collector_id=collector_id,
        batch_seq=seq,
        written_at=datetime.now(UTC),
        aggregates=rows if kind == "aggregates" else [],
        events=rows if kind == "events" else [],
        n_requests=0,
    )


def _pg_value(v):
    return Json(v) if isinstance(v, list | dict) else v


def pg_types(engine, table: str, cols: list[str]) -> list[str]:
    """The server's type name of each column, for a binary COPY's `set_types`."""
    q = text(
        "SELECT column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = :t"
    )
    with engine.connect() as conn:
        types = dict(conn.execute(q, {"t": table}).all())
    return [types[c] for c in cols]


def copy_pg(engine, table: str, cols: list[str], rows: list[dict],
            types: list[str] | None = None) -> None:
    """COPY in text format, or in binary when the column types are given."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        fmt = " (FORMAT BINARY)" if types else ""
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN{fmt}") as cp:
                if types:
                    cp.set_types(types)
                for r in rows:
                    cp.write_row(tuple(_pg_value(r.get(c)) for c in cols))
        conn.commit()
    finally:
        raw.close()


def _sqlite_value(v):
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


def executemany_sqlite(engine, table: str, cols: list[str], rows: list[dict]) -> None:
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        conn.executemany(sql, [tuple(_sqlite_value(r.get(c)) for c in cols) for r in rows])
        conn.commit()
    finally:
        raw.close()


def interleaved(
    fns: list[Callable[[int], None]], min_time: float, min_reps: int = 3
) -> list[list[float]]:
    """Seconds per call of each fn(i), called in turn, after one warm-up call of each."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn(0)
    start = time.perf_counter()
    i = 1
    while i <= min_reps or time.perf_counter() - start < min_time:
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t0)
        i += 1
    return times


def compare(
    kind: str,
    pool: list[dict],
    n: int,
    write_engine,
    bares: list[Callable[[list[dict]], None]],
    min_time: float,
) -> tuple[list[float], int]:
    """Rows/s of write_batch and of each bare loader, on the same batches of n rows."""
    key, step = ("bucket_start", timedelta(minutes=60)) if kind == "aggregates" else (
        "ts", timedelta(minutes=1))
    cid = f"bench-{uuid.uuid4().hex[:12]}"
    batches: dict[int, list[dict]] = {}

    def rows(i: int) -> list[dict]:
        if i not in batches:
            batches[i] = cycle_rows(pool, n, key, step, i)
        return batches[i]

    def ours(i: int) -> None:
        assert write_batch(write_engine, make_batch(kind, rows(i), i + 1, cid))

    for i in range(4):  # build the first batches' rows outside the timed calls
        rows(i)
    fns = [ours, *[lambda i, b=b: b(rows(i)) for b in bares]]
    times = interleaved(fns, min_time)
    return [n / float(np.median(ts)) for ts in times], len(times[0])


def _row(backend: str, kind: str, rates: list[float], bare_name: str, n: int, reps: int,
         goal: bool, **extra) -> Row:
    ours, bare = rates[0], rates[1]
    row = Row(f"{backend} write_batch {kind}", "rate", ours, "rows/s", bare, bare_name,
              goal="≥ 0.5× COPY (ratio ≤ 2×)" if goal else "(report)",
              extra={"rows_per_batch": n, "reps": reps, **extra})
    if goal:
        row.met = bool(ours >= COPY_GOAL * bare)
    return row


def _sizes(quick: bool) -> dict[str, int]:
    return {"aggregates": 500, "events": 250} if quick else {"aggregates": 2_000, "events": 1_000}


KINDS = (("aggregates", t.window_aggregates), ("events", t.attention_events))


def run_sqlite(pools: dict[str, list[dict]], quick: bool) -> list[Row]:
    min_time = 0.3 if quick else 5.0
    out = []
    with tempfile.TemporaryDirectory(prefix="attnmon-bench-") as tmp:
        urls = [f"sqlite:///{Path(tmp) / name}.db" for name in ("write_batch", "raw")]
        for url in urls:
            migrate.upgrade(url)
        ours_engine, raw_engine = make_engine(urls[0]), make_engine(urls[1])
        try:
            for kind, table in KINDS:
                cols = columns(table)
                n = _sizes(quick)[kind]

                def raw(rows, table=table, cols=cols):
                    executemany_sqlite(raw_engine, table.name, cols, rows)

                rates, reps = compare(kind, pools[kind], n, ours_engine, [raw], min_time)
                out.append(_row("SQLite", kind, rates, "raw sqlite3 executemany", n, reps, False))
        finally:
            ours_engine.dispose()
            raw_engine.dispose()
    return out


def run_postgres(pools: dict[str, list[dict]], pg_url: str, quick: bool) -> list[Row]:
    """write_batch beside binary COPY (the table's reference: the fastest raw load) and
    text COPY (in `extra`)."""
    min_time = 0.3 if quick else 5.0
    out = []
    with pg.temp_schema(pg_url) as url:
        migrate.upgrade(url)
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                for _, table in KINDS:
                    conn.execute(text(
                        f"CREATE TABLE copy_{table.name} (LIKE {table.name} INCLUDING ALL)"))
            for kind, table in KINDS:
                cols = columns(table)
                n = _sizes(quick)[kind]
                target = f"copy_{table.name}"
                types = pg_types(engine, target, cols)

                def binary(rows, target=target, cols=cols, types=types):
                    copy_pg(engine, target, cols, rows, types)

                def textual(rows, target=target, cols=cols):
                    copy_pg(engine, target, cols, rows)

                rates, reps = compare(kind, pools[kind], n, engine, [binary, textual], min_time)
                out.append(_row("PostgreSQL", kind, rates, "raw psycopg COPY (binary)", n, reps,
                                True, text_copy_rows_per_s=rates[2],
                                ratio_to_text_copy=rates[2] / rates[0]))
        finally:
            engine.dispose()
    return out
