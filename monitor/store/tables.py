"""The store's tables (SQLAlchemy Core). Alembic migrations create them; nothing else does.

Series labels are plain columns so that Grafana's SQL and `Store.summary` can group
without decoding anything; per-metric sums are columns for the same reason, and so is
the position profile summed into bands (monitor.store.positions). What SQL never needs
(histograms, the full position profile, top-K) rides in the compact `payload`.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from monitor.metrics import ALL_METRICS
from monitor.store import positions

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

LABEL = 200  # longest model / version / cohort label accepted
TS = DateTime(timezone=True)
# BigInteger primary keys autoincrement on PostgreSQL; SQLite only autoincrements INTEGER.
ID = BigInteger().with_variant(Integer(), "sqlite")

def series_columns() -> list[Column]:
    """The labels of a series, fresh Column objects for each table that carries them."""
    return [
        Column("model", String(LABEL), nullable=False),
        Column("version", String(LABEL), nullable=False),
        Column("cohort", String(LABEL), nullable=False),
        Column("layer", String(16), nullable=False),
        Column("head", String(16), nullable=False),
    ]


models = Table(
    "models",
    metadata,
    Column("name", String(LABEL), primary_key=True),
    Column("created_at", TS, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("model", String(LABEL), ForeignKey("models.name"), nullable=False),
    Column("version", String(LABEL), nullable=False),
    # when the version was first seen by a collector, and when it really went live
    # (`attnmon deploy mark --at` corrects the latter)
    Column("first_seen", TS, nullable=False),
    Column("deployed_at", TS, nullable=False),
    Column("weights_id", String(LABEL)),
    Column("source", String(20), nullable=False),  # collector | manual
    UniqueConstraint("model", "version"),
)

window_aggregates = Table(
    "window_aggregates",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    *series_columns(),
    Column("bucket_start", TS, nullable=False),
    Column("bucket_seconds", Integer, nullable=False),  # 60 (minute) or 3600 (hour roll-up)
    # who wrote it; NULL once rows of several writers are compacted into one
    Column("collector_id", String(64)),
    Column("n", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    *[Column(f"sum_{m}", Float(53), nullable=False) for m in ALL_METRICS],
    *[Column(f"sumsq_{m}", Float(53), nullable=False) for m in ALL_METRICS],
    Column("payload", LargeBinary, nullable=False),
    Column("written_at", TS, nullable=False),
    # (migration 0004) attention mass summed over the row's vectors, per band of distance
    # from the end: pos_0, pos_1, pos_2, pos_3_4, ..., pos_100_255 (see positions.py).
    # NULL: a row from before 0004 whose payload has not been read yet.
    *[Column(name, Float(53)) for name in positions.COLUMNS],
    # (migration 0006) the minutes of the bucket with traffic: bit i = its minute i, set by
    # the hour roll-up (monitor.store.maintenance). NULL: every minute of the bucket (a
    # minute row, a full hour, or an hour rolled up before 0006).
    Column("minute_mask", BigInteger),
    # (migration 0007) n last: the baselines' per-hour sums of n read the index alone
    Index(None, "model", "bucket_start", "version", "n"),
    Index(None, "bucket_seconds", "bucket_start"),
)

# One row per flushed batch: the unique key makes a replayed spill file a no-op.
write_batches = Table(
    "write_batches",
    metadata,
    Column("collector_id", String(64), primary_key=True),
    Column("batch_seq", BigInteger, primary_key=True),
    Column("written_at", TS, nullable=False),
    Column("n_aggregates", Integer, nullable=False),
    Column("n_events", Integer, nullable=False),
)

attention_events = Table(
    "attention_events",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("model", String(LABEL), nullable=False),
    Column("version", String(LABEL), nullable=False),
    Column("cohort", String(LABEL), nullable=False),
    Column("request_id", String(LABEL)),
    Column("ts", TS, nullable=False),
    Column("collector_id", String(64), nullable=False),
    Column("n_layers", Integer, nullable=False),
    Column("n_heads", Integer, nullable=False),
    Column("length", Integer, nullable=False),
    # float32 (layers, heads, length), little-endian, valid positions only
    Column("weights", LargeBinary, nullable=False),
    Column("item_ids", JSON),  # list of str (keyed hashes when hash_item_ids is on)
    Column("attributes", JSON),  # {name: [value per position]}
    # metrics of the last layer's head-averaged attention, for quick SQL and reports
    Column("entropy_norm", Float(53)),
    Column("top1", Float(53)),
    Column("recency5", Float(53)),
    Column("distance", Float(53)),
    Column("gini", Float(53)),
    Index(None, "model", "version", "ts"),
    Index(None, "request_id"),
    Index(None, "ts"),
)

collector_health = Table(
    "collector_health",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("collector_id", String(64), nullable=False),
    Column("model", String(LABEL), nullable=False),
    Column("version", String(LABEL), nullable=False),
    Column("minute", TS, nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("observed", BigInteger, nullable=False),
    Column("accepted", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("rejected_by_reason", JSON, nullable=False),
    Column("dropped", BigInteger, nullable=False),
    Column("spilled", BigInteger, nullable=False),
    Column("written", BigInteger, nullable=False),
    Column("queue_depth", Integer, nullable=False),
    Column("replayed", Boolean, nullable=False, default=False),
    # not unique: counters that change after a minute's row went out (a late write)
    # come as another row for that minute; readers sum
    Index(None, "collector_id", "minute"),
    Index(None, "minute"),
)

# --- evaluation (migration 0002) ----------------------------------------------------

drift_results = Table(
    "drift_results",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    *series_columns(),
    Column("statistic", String(120), nullable=False),
    Column("value", Float(53), nullable=False),
    Column("baseline_value", Float(53)),
    Column("baseline_kind", String(20), nullable=False),
    Column("window_start", TS, nullable=False),
    Column("window_end", TS, nullable=False),
    Column("n_current", BigInteger, nullable=False),
    Column("n_baseline", BigInteger, nullable=False),
    Column("detail", JSON),  # e.g. the attribute value that moved most
    Column("computed_at", TS, nullable=False),
    # named by hand: the conventional name would pass PostgreSQL's 63-character limit.
    # window_end first (migration 0005): each cycle's rows append at the key's right
    # edge, and the key serves every read (by window and statistic, a version's results
    # over a time range, retention), so the table has no other index
    UniqueConstraint(
        "window_end",
        "statistic",
        "model",
        "version",
        "cohort",
        "layer",
        "head",
        name="uq_drift_results_series_statistic_window_end",
    ),
)

# Baselines a person pinned by name (`attnmon baseline pin`).
pinned_baselines = Table(
    "pinned_baselines",
    metadata,
    Column("name", String(LABEL), primary_key=True),
    Column("model", String(LABEL), nullable=False),
    Column("version", String(LABEL)),  # None: whichever version served in the window
    Column("window_start", TS, nullable=False),
    Column("window_end", TS, nullable=False),
    Column("comment", Text),
    Column("created_at", TS, nullable=False),
    Column("active", Boolean, nullable=False),
)

# Materialised baseline sketches, merged once per series and reference (and the hourly
# partial sketches trailing baselines are summed from), so an evaluation cycle never
# re-merges a day of minute rows.
baseline_sketches = Table(
    "baseline_sketches",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    *series_columns(),
    Column("kind", String(20), nullable=False),  # previous_version | retrain | pinned | trailing | hour
    Column("ref", String(LABEL), nullable=False),  # what it was built from
    Column("window_start", TS, nullable=False),
    Column("window_end", TS, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("sums", JSON, nullable=False),
    Column("sumsq", JSON, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("computed_at", TS, nullable=False),
    UniqueConstraint(
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

# Small durable state of the daemon: the evaluation watermark, job runs.
daemon_state = Table(
    "daemon_state",
    metadata,
    Column("key", String(120), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", TS, nullable=False),
)

# --- alerts (migration 0003) ---------------------------------------------------------

# One row per alert (a rule on one series), reused across its incidents: the state
# machine of alerts/state.py. Times are the evaluated windows' ends (the data's time).
alerts = Table(
    "alerts",
    metadata,
    Column("fingerprint", String(32), primary_key=True),  # hash of rule + series labels
    Column("rule", String(120), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("annotations", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # inactive | pending | firing | resolved
    Column("value", Float(53)),
    Column("baseline_value", Float(53)),
    Column("active_at", TS),  # the incident began (went pending)
    Column("fired_at", TS),
    Column("resolved_at", TS),
    Column("last_true_at", TS),
    Column("last_eval_at", TS, nullable=False),
    Index(None, "state"),
)

# The outbox: one row per (alert transition, receiver). The unique key makes a re-run
# of the same transition (a crash before the watermark moved) enqueue nothing.
notifications = Table(
    "notifications",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("fingerprint", String(32), nullable=False),
    Column("rule", String(120), nullable=False),
    Column("receiver", String(120), nullable=False),
    Column("group_key", String(1000), nullable=False),
    Column("transition", String(16), nullable=False),  # firing | resolved
    Column("active_at", TS, nullable=False),  # the alert's incident
    Column("event_at", TS, nullable=False),  # when it fired or resolved
    Column("dedup_key", String(64), nullable=False),  # one per group incident
    Column("payload", JSON, nullable=False),  # the alert as it was at the transition
    Column("status", String(16), nullable=False),  # pending | sending | delivered | failed | silenced
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", TS, nullable=False),
    Column("last_attempt_at", TS),
    Column("last_error", Text),  # one line, never a secret
    Column("created_at", TS, nullable=False),
    Column("delivered_at", TS),
    UniqueConstraint("fingerprint", "receiver", "transition", "active_at", name="uq_notifications_transition"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "receiver", "group_key"),
    Index(None, "created_at"),
)

silences = Table(
    "silences",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("matchers", JSON, nullable=False),  # [{"name", "op", "value"}], all must match
    Column("starts_at", TS, nullable=False),
    Column("ends_at", TS, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Index(None, "ends_at"),
)
