"""window_aggregates index covers n: the baselines' late-data check reads no table rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Written by hand, in full, like 0002–0006: no imports from monitor.*.

The daemon checks, for every hour of a trailing baseline, that the hour's stored partial
holds as many vectors as the hour's minute rows now do (late data: a collector replaying
its spill). That sum of `n` per minute read every row of 24 hours, about 1.4 KB each
with its payload: 1.2 s of a first cycle's 3.7 s on SQLite (1,080 series), 1.1–1.9 s on
PostgreSQL. With `n` as the index's last column the sum is read from the index alone:
0.47 s on SQLite, 0.15 s on PostgreSQL (an index-only scan, once vacuum has marked the
table's pages visible, as autovacuum does).

The index keeps its leading columns (model, bucket_start, version), so every query it
served it still serves. Building it reads the table once. It runs in the upgrade's one
transaction (a failed upgrade leaves the schema as it was), so on PostgreSQL writes to
window_aggregates wait while it builds: seconds per million rows. Collectors whose write
waits past their `write_timeout_s` spill and replay it; nothing is lost.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("ix_window_aggregates_model_bucket_start_version", ["model", "bucket_start", "version"])
NEW = ("ix_window_aggregates_model_bucket_start_version_n", ["model", "bucket_start", "version", "n"])


def _swap(create: tuple[str, list[str]], drop: tuple[str, list[str]]) -> None:
    op.create_index(create[0], "window_aggregates", create[1])
    op.drop_index(drop[0], "window_aggregates")


def upgrade() -> None:
    _swap(NEW, OLD)


def downgrade() -> None:
    _swap(OLD, NEW)
