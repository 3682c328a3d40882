"""drift_results: the unique key leads with window_end; the other two indexes go

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Written by hand, in full, like 0002–0004: no imports from monitor.*.

Every evaluation cycle inserts ~18 rows per series, all with the newest window_end. With
the key (model, version, cohort, layer, head, statistic, window_end) those rows land all
over the key's B-tree; keyed (window_end, statistic, model, version, cohort, layer, head)
they append at its right edge. The same key also serves what the indexes
(window_end, statistic) and (model, version, window_end) served: the alert evaluator's
and the dashboards' reads by window and statistic, a version's results over a time range
(the window_end range, then statistic, model and version within the key), retention by
window_end. So both go. Measured with 19,476 rows a cycle: on SQLite the insert took
200 -> ~100 ms; on PostgreSQL the COPY 202 -> 144 ms with the key reordered and the
(model, version, window_end) index gone. That index also held ~1 GB a day at one cycle a
minute over 1,000 series.

On a store with results the upgrade rebuilds the key: on PostgreSQL under an exclusive
lock on drift_results (minutes for a month of results), on SQLite by copying the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "uq_drift_results_series_statistic_window_end"
OLD = ["model", "version", "cohort", "layer", "head", "statistic", "window_end"]
NEW = ["window_end", "statistic", "model", "version", "cohort", "layer", "head"]


def upgrade() -> None:
    with op.batch_alter_table("drift_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_results_window_end_statistic"))
        batch_op.drop_index(batch_op.f("ix_drift_results_model_version_window_end"))
        batch_op.drop_constraint(NAME, type_="unique")
        batch_op.create_unique_constraint(NAME, NEW)


def downgrade() -> None:
    with op.batch_alter_table("drift_results", schema=None) as batch_op:
        batch_op.drop_constraint(NAME, type_="unique")
        batch_op.create_unique_constraint(NAME, OLD)
        batch_op.create_index(
            batch_op.f("ix_drift_results_window_end_statistic"), ["window_end", "statistic"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_drift_results_model_version_window_end"), ["model", "version", "window_end"],
            unique=False,
        )
