"""Initial schema: every table of monitor/store/tables.py as of the first release.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written by hand, in full, and importing nothing from monitor.*: tables.py will move on,
and this file must keep creating exactly what it created. Constraint and index names
follow the naming convention of tables.metadata (pk_/fk_/uq_/ix_<table>_<columns>).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABEL = 200
TS = sa.DateTime(timezone=True)
# BigInteger keys autoincrement on PostgreSQL; SQLite autoincrements INTEGER PRIMARY KEY only.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(LABEL), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_models"),
    )
    op.create_table(
        "deployments",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(LABEL), nullable=False),
        sa.Column("version", sa.String(LABEL), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("deployed_at", TS, nullable=False),
        sa.Column("weights_id", sa.String(LABEL), nullable=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_deployments_model_models"),
        sa.UniqueConstraint("model", "version", name="uq_deployments_model_version"),
    )
    # sum_<metric> / sumsq_<metric> for the metrics of monitor.metrics.ALL_METRICS at
    # this revision, in its order; a new metric needs a new migration.
    op.create_table(
        "window_aggregates",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(LABEL), nullable=False),
        sa.Column("version", sa.String(LABEL), nullable=False),
        sa.Column("cohort", sa.String(LABEL), nullable=False),
        sa.Column("layer", sa.String(16), nullable=False),
        sa.Column("head", sa.String(16), nullable=False),
        sa.Column("bucket_start", TS, nullable=False),
        sa.Column("bucket_seconds", sa.Integer(), nullable=False),
        sa.Column("collector_id", sa.String(64), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("sum_entropy", sa.Float(53), nullable=False),
        sa.Column("sum_entropy_norm", sa.Float(53), nullable=False),
        sa.Column("sum_top1", sa.Float(53), nullable=False),
        sa.Column("sum_top3", sa.Float(53), nullable=False),
        sa.Column("sum_eff_support", sa.Float(53), nullable=False),
        sa.Column("sum_gini", sa.Float(53), nullable=False),
        sa.Column("sum_recency1", sa.Float(53), nullable=False),
        sa.Column("sum_recency5", sa.Float(53), nullable=False),
        sa.Column("sum_distance", sa.Float(53), nullable=False),
        sa.Column("sum_sink", sa.Float(53), nullable=False),
        sa.Column("sum_head_diversity", sa.Float(53), nullable=False),
        sa.Column("sumsq_entropy", sa.Float(53), nullable=False),
        sa.Column("sumsq_entropy_norm", sa.Float(53), nullable=False),
        sa.Column("sumsq_top1", sa.Float(53), nullable=False),
        sa.Column("sumsq_top3", sa.Float(53), nullable=False),
        sa.Column("sumsq_eff_support", sa.Float(53), nullable=False),
        sa.Column("sumsq_gini", sa.Float(53), nullable=False),
        sa.Column("sumsq_recency1", sa.Float(53), nullable=False),
        sa.Column("sumsq_recency5", sa.Float(53), nullable=False),
        sa.Column("sumsq_distance", sa.Float(53), nullable=False),
        sa.Column("sumsq_sink", sa.Float(53), nullable=False),
        sa.Column("sumsq_head_diversity", sa.Float(53), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("written_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_window_aggregates"),
    )
    op.create_index(
        "ix_window_aggregates_model_bucket_start_version",
        "window_aggregates",
        ["model", "bucket_start", "version"],
    )
    op.create_index(
        "ix_window_aggregates_bucket_seconds_bucket_start",
        "window_aggregates",
        ["bucket_seconds", "bucket_start"],
    )
    op.create_table(
        "write_batches",
        sa.Column("collector_id", sa.String(64), nullable=False),
        sa.Column("batch_seq", sa.BigInteger(), nullable=False),
        sa.Column("written_at", TS, nullable=False),
        sa.Column("n_aggregates", sa.Integer(), nullable=False),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("collector_id", "batch_seq", name="pk_write_batches"),
    )
    op.create_table(
        "attention_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(LABEL), nullable=False),
        sa.Column("version", sa.String(LABEL), nullable=False),
        sa.Column("cohort", sa.String(LABEL), nullable=False),
        sa.Column("request_id", sa.String(LABEL), nullable=True),
        sa.Column("ts", TS, nullable=False),
        sa.Column("collector_id", sa.String(64), nullable=False),
        sa.Column("n_layers", sa.Integer(), nullable=False),
        sa.Column("n_heads", sa.Integer(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("item_ids", sa.JSON(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=True),
        sa.Column("entropy_norm", sa.Float(53), nullable=True),
        sa.Column("top1", sa.Float(53), nullable=True),
        sa.Column("recency5", sa.Float(53), nullable=True),
        sa.Column("distance", sa.Float(53), nullable=True),
        sa.Column("gini", sa.Float(53), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_attention_events"),
    )
    op.create_index(
        "ix_attention_events_model_version_ts", "attention_events", ["model", "version", "ts"]
    )
    op.create_index("ix_attention_events_request_id", "attention_events", ["request_id"])
    op.create_index("ix_attention_events_ts", "attention_events", ["ts"])
    op.create_table(
        "collector_health",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("collector_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(LABEL), nullable=False),
        sa.Column("version", sa.String(LABEL), nullable=False),
        sa.Column("minute", TS, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("observed", sa.BigInteger(), nullable=False),
        sa.Column("accepted", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("rejected_by_reason", sa.JSON(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.Column("spilled", sa.BigInteger(), nullable=False),
        sa.Column("written", sa.BigInteger(), nullable=False),
        sa.Column("queue_depth", sa.Integer(), nullable=False),
        sa.Column("replayed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_collector_health"),
    )
    op.create_index(
        "ix_collector_health_collector_id_minute", "collector_health", ["collector_id", "minute"]
    )
    op.create_index("ix_collector_health_minute", "collector_health", ["minute"])


def downgrade() -> None:
    # Children before parents (deployments references models); dropping a table drops
    # its indexes.
    for table in (
        "collector_health",
        "attention_events",
        "write_batches",
        "window_aggregates",
        "deployments",
        "models",
    ):
        op.drop_table(table)
