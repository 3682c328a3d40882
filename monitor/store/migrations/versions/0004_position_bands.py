"""position bands: the position profile summed into plain columns of window_aggregates

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Written by hand, in full, like 0002 and 0003: no imports from monitor.*.

Adds nullable `pos_<band>` columns (attention mass summed over a row's vectors, per band
of distance from the end) so that SQL, hence Grafana, can draw the position profile.
Existing rows are backfilled from their sketch payloads, the BACKFILL_ROWS most recently
written (seconds of work: the upgrade is one transaction that holds the table, and
collectors wait for it); older rows stay NULL until the daemon's maintain job
(`monitor.store.maintenance.fill_position_bands`) reads them, newest first, a slice
per run. The payload
reader below is the sketch format "AS1" as of this revision, frozen here like the
tables; a payload it cannot read is left NULL for the maintain job.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BANDS = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, 255))
COLUMNS = [f"pos_{lo}" if lo == hi else f"pos_{lo}_{hi}" for lo, hi in BANDS]
BACKFILL_ROWS = 100_000
CHUNK = 2_000

# sketch payload "AS1": b"AS1" + zlib(<u32 header length> <JSON header> <int64 histograms
# of the 11 metrics x 20 bins> <float64 position profile, header["p"] values> ...)
_MAGIC = b"AS1"
_HIST_BYTES = 8 * 11 * 20


def _bands(payload: bytes) -> list[float] | None:
    data = bytes(payload)
    if data[:3] != _MAGIC:
        return None
    try:
        body = zlib.decompress(data[3:])
        (hlen,) = struct.unpack_from("<I", body)
        p = int(json.loads(body[4 : 4 + hlen].decode("utf-8"))["p"])
        off = 4 + hlen + _HIST_BYTES
        if not 0 <= p <= 256 or off + 8 * p > len(body):
            return None
        pos = struct.unpack_from(f"<{p}d", body, off)
    except (zlib.error, struct.error, ValueError, KeyError, TypeError):
        return None
    return [float(sum(pos[lo : hi + 1])) for lo, hi in BANDS]


def upgrade() -> None:
    with op.batch_alter_table("window_aggregates", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(precision=53), nullable=True))

    conn = op.get_bind()
    # the maintain job's cursor (monitor.store.maintenance.BANDS_CURSOR) from before a
    # downgrade says the rows were read: the new columns need them read again
    ds = sa.table("daemon_state", sa.column("key"))
    conn.execute(sa.delete(ds).where(ds.c.key == "maintenance.position_bands"))
    wa = sa.table("window_aggregates", sa.column("id"), sa.column("payload"),
                  *[sa.column(name) for name in COLUMNS])
    ids = conn.execute(sa.select(wa.c.id).order_by(wa.c.id.desc()).limit(BACKFILL_ROWS)).scalars().all()
    update = (
        sa.update(wa)
        .where(wa.c.id == sa.bindparam("row_id"))
        .values({name: sa.bindparam(f"v_{name}") for name in COLUMNS})
    )
    for i in range(0, len(ids), CHUNK):  # a chunk of payloads in memory at a time
        rows = conn.execute(sa.select(wa.c.id, wa.c.payload).where(wa.c.id.in_(ids[i : i + CHUNK]))).all()
        params = []
        for row_id, payload in rows:
            sums = _bands(payload)
            if sums is not None:
                params.append({"row_id": row_id, **{f"v_{n}": v for n, v in zip(COLUMNS, sums, strict=True)}})
        if params:
            conn.execute(update, params)


def downgrade() -> None:
    with op.batch_alter_table("window_aggregates", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
