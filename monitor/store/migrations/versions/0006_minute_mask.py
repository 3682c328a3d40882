"""minute mask: which minutes of a rolled-up row had traffic

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Written by hand, in full, like 0002–0005: no imports from monitor.*.

Adds a nullable `minute_mask` to window_aggregates. Maintenance's roll-up of minute rows
into hour rows sets bit i when minute i of the hour (bit 0: its first) had a row, so
that rollback-check counts the minutes a version served, not the 60 of every hour row.
A mask, not a count: merging late minute rows into an hour row again is an OR, exact
when a late minute is one the hour already holds (a count would add it twice), and a
reader can tell which minutes of an hour row fall inside a window.

NULL means every minute of the row's bucket: minute rows, an hour with traffic in all
60, and hour rows rolled up before this revision (counted as 60, as before). So the
upgrade writes nothing: on PostgreSQL adding a nullable column without a default is a
catalog change (no table rewrite), on SQLite an ALTER TABLE ADD COLUMN. The downgrade
drops it (on SQLite by copying the table); the hour rows keep their sums, and read as
60 minutes again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("window_aggregates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("minute_mask", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("window_aggregates", schema=None) as batch_op:
        batch_op.drop_column("minute_mask")
