"""Writes one collector flush in one transaction; a replayed batch is a no-op.

The batch's `(collector_id, batch_seq)` goes into `write_batches` first: if it is there
already, the batch was written before a crash or a spill replay, and nothing is added.

A collector's `window_aggregates` rows carry their position-band columns, summed from
the sketches' profiles when the rows are made (`AttentionCollector._take_batch`). Rows
that lack them (spill files written before that) get them from their payload when the
batch is made (`FlushBatch.__post_init__`, on the collector's background thread, not in
the write's transaction; monitor.store.positions).

The `window_aggregates` rows, the bulk of a flush, go in through monitor.store.bulk in
the same transaction: a COPY on PostgreSQL with psycopg 3 (an INSERT of many rows costs
more than twice as much), multi-row inserts on SQLite; every other row with INSERTs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from monitor.store import positions
from monitor.store import tables as t
from monitor.store.bulk import bulk_insert
from monitor.store.upsert import INSERTS


@dataclass
class FlushBatch:
    collector_id: str
    batch_seq: int
    written_at: datetime
    deployments: list[dict] = field(default_factory=list)  # model, version, first_seen, weights_id
    aggregates: list[dict] = field(default_factory=list)  # window_aggregates rows
    events: list[dict] = field(default_factory=list)  # attention_events rows
    health: list[dict] = field(default_factory=list)  # collector_health rows
    n_requests: int = 0  # accepted requests whose sketches this batch carries

    def __post_init__(self) -> None:
        # the collectors' rows carry their bands; rows of older spill files do not
        positions.complete(self.aggregates)


def write_batch(engine: Engine, batch: FlushBatch) -> bool:
    """Write the batch; False if it had been written already (nothing changes then)."""
    positions.complete(batch.aggregates)  # rows appended after the batch was made
    try:
        with engine.begin() as conn:
            conn.execute(
                t.write_batches.insert().values(
                    collector_id=batch.collector_id,
                    batch_seq=batch.batch_seq,
                    written_at=batch.written_at,
                    n_aggregates=len(batch.aggregates),
                    n_events=len(batch.events),
                )
            )
            for dep in batch.deployments:
                register_deployment(conn, **dep)
            if batch.aggregates:
                insert_rows(conn, t.window_aggregates, batch.aggregates)
            if batch.events:
                conn.execute(t.attention_events.insert(), batch.events)
            if batch.health:
                conn.execute(t.collector_health.insert(), batch.health)
    except IntegrityError:
        if _already_written(engine, batch):
            return False
        raise
    return True


def insert_rows(conn: Connection, table: Table, rows: list[dict]) -> None:
    """Add `rows` (dicts of the columns but `id`; a missing one is NULL) to `table` in the
    caller's transaction (monitor.store.bulk: COPY on PostgreSQL, multi-row inserts on SQLite)."""
    cols = [c.name for c in table.columns if c.name != "id"]
    bulk_insert(conn, table, cols, [tuple(r.get(c) for c in cols) for r in rows])


def _already_written(engine: Engine, batch: FlushBatch) -> bool:
    with engine.connect() as conn:
        q = select(t.write_batches.c.batch_seq).where(
            t.write_batches.c.collector_id == batch.collector_id,
            t.write_batches.c.batch_seq == batch.batch_seq,
        )
        return conn.execute(q).first() is not None


def register_deployment(
    conn: Connection,
    model: str,
    version: str,
    first_seen: datetime,
    weights_id: str | None = None,
    source: str = "collector",
    deployed_at: datetime | None = None,
) -> bool:
    """Record (model, version) if new; True when this call added it.

    Select-then-insert inside the caller's transaction. The inserts skip a row that a
    concurrent writer added meanwhile (replicas of a new version start together): a
    plain insert failed on the unique key, and the collector's batch lost its raw events.
    """
    if conn.execute(select(t.models.c.name).where(t.models.c.name == model)).first() is None:
        conn.execute(_insert_new(conn, t.models).values(name=model, created_at=first_seen))
    q = select(t.deployments.c.id).where(
        t.deployments.c.model == model, t.deployments.c.version == version
    )
    if conn.execute(q).first() is not None:
        return False
    added = conn.execute(
        _insert_new(conn, t.deployments).values(
            model=model,
            version=version,
            first_seen=first_seen,
            deployed_at=deployed_at or first_seen,
            weights_id=weights_id,
            source=source,
        )
    )
    return added.rowcount != 0


def _insert_new(conn: Connection, table: Table):
    """An insert that adds nothing where the row's key is taken (ON CONFLICT DO NOTHING;
    on another dialect a plain insert)."""
    make = INSERTS.get(conn.dialect.name)
    return table.insert() if make is None else make(table).on_conflict_do_nothing()
