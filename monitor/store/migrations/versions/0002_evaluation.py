"""evaluation: drift results, baselines, daemon state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Write the operations by hand, in full: a migration must not import from monitor.*
(tables.py moves on; this file must keep meaning what it meant). Check with
`attnmon db check` that tables.py and the migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "baseline_sketches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("cohort", sa.String(length=200), nullable=False),
        sa.Column("layer", sa.String(length=16), nullable=False),
        sa.Column("head", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("sums", sa.JSON(), nullable=False),
        sa.Column("sumsq", sa.JSON(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_baseline_sketches")),
        sa.UniqueConstraint(
            "model",
            "version",
            "cohort",
            "layer",
            "head",
            "kind",
            "ref",
            name="uq_baseline_sketches_series_kind_ref",
        ),
    )
    op.create_table(
        "daemon_state",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_daemon_state")),
    )
    op.create_table(
        "drift_results",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("cohort", sa.String(length=200), nullable=False),
        sa.Column("layer", sa.String(length=16), nullable=False),
        sa.Column("head", sa.String(length=16), nullable=False),
        sa.Column("statistic", sa.String(length=120), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.Column("baseline_value", sa.Float(precision=53), nullable=True),
        sa.Column("baseline_kind", sa.String(length=20), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_current", sa.BigInteger(), nullable=False),
        sa.Column("n_baseline", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_results")),
        sa.UniqueConstraint(
            "model",
            "version",
            "cohort",
            "layer",
            "head",
            "statistic",
            "window_end",
            name="uq_drift_results_series_statistic_window_end",
        ),
    )
    with op.batch_alter_table("drift_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_drift_results_model_version_window_end"),
            ["model", "version", "window_end"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_drift_results_window_end_statistic"),
            ["window_end", "statistic"],
            unique=False,
        )

    op.create_table(
        "pinned_baselines",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pinned_baselines")),
    )


def downgrade() -> None:
    op.drop_table("pinned_baselines")
    with op.batch_alter_table("drift_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_results_window_end_statistic"))
        batch_op.drop_index(batch_op.f("ix_drift_results_model_version_window_end"))

    op.drop_table("drift_results")
    op.drop_table("daemon_state")
    op.drop_table("baseline_sketches")
