"""Monitor health: the collectors' throughput, rejections by reason, drops and spills,
the daemon's jobs, data freshness and failed notifications.

collector_health holds per-minute deltas (a late write comes as another row for the
same minute): every panel sums.
"""

from __future__ import annotations

from dashboards.common import PER_MINUTE
from dashboards.spec import Dashboard, Panel, Query, Threshold, Variable

UID = "attnmon-health"
MINUTE_GROUP = "$__timeGroupAlias(minute, $__interval)"

MODELS = Variable(
    "model",
    "model",
    # every model collectors registered, not only those with health rows in the range:
    # when all its collectors have died, the model must still be there to show how stale
    "SELECT model FROM deployments GROUP BY model ORDER BY model",
    multi=True,
    include_all=True,
    default="$__all",
)
HEALTH = "model IN (${model:sqlstring}) AND $__timeFilter(minute)"


def _rule_line(rules, statistic: str, scale: float = 1.0) -> tuple[Threshold, ...]:
    """The threshold of the rule on a synthetic health statistic, when the pack has one."""
    return tuple(
        Threshold(r.threshold * scale, r.op, r.name) for r in rules if r.statistic == statistic
    )[:1]


def build(rules=()) -> Dashboard:
    throughput = Panel(
        "throughput",
        "Collector throughput per minute",
        "timeseries",
        (
            Query(
                f"SELECT {MINUTE_GROUP},\n"
                f"  SUM(observed) {PER_MINUTE} AS observed,\n"
                f"  SUM(accepted) {PER_MINUTE} AS accepted,\n"
                f"  SUM(written) {PER_MINUTE} AS written\n"
                f"FROM collector_health\nWHERE {HEALTH}\nGROUP BY 1 ORDER BY 1"
            ),
        ),
        "Vectors observed by the collectors, accepted after validation, and written to the "
        "store (written trails accepted by the flush interval).",
        unit="short",
        min=0,
        report=True,
    )
    rejected = Panel(
        "rejected-by-reason",
        "Rejected input by reason (per minute)",
        "timeseries",
        (
            Query(
                # json_each in FROM: the same words on PostgreSQL (json) and SQLite
                f"SELECT {MINUTE_GROUP}, r.key AS metric,\n"
                f"  SUM(CAST(CAST(r.value AS TEXT) AS BIGINT)) {PER_MINUTE} AS rejected\n"
                "FROM collector_health, json_each(rejected_by_reason) AS r\n"
                f"WHERE {HEALTH}\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "Attention vectors the collectors refused (nan, negative, not_normalised, shape, "
        "length_mismatch, too_long, bad_timestamp, ...). Rejections point at the serving pipeline.",
        unit="short",
        min=0,
        report=True,
    )
    rejected_share = Panel(
        "rejected-share",
        "Share of input rejected",
        "timeseries",
        (
            Query(
                f"SELECT {MINUTE_GROUP}, model AS metric,\n"
                "  CAST(SUM(rejected) AS DOUBLE PRECISION) / NULLIF(SUM(observed), 0) AS rejected_share\n"
                f"FROM collector_health\nWHERE {HEALTH}\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "Rejected / observed. The dashed line is the CollectorRejectingInput rule's threshold.",
        unit="percentunit",
        min=0,
        width=8,
        thresholds=_rule_line(rules, "health.rejected_ratio"),
    )
    losses = Panel(
        "drops-spills",
        "Dropped (queue full) and spilled (store down) per minute",
        "timeseries",
        (
            Query(
                f"SELECT {MINUTE_GROUP},\n"
                f"  SUM(dropped) {PER_MINUTE} AS dropped,\n"
                f"  SUM(spilled) {PER_MINUTE} AS spilled\n"
                f"FROM collector_health\nWHERE {HEALTH}\nGROUP BY 1 ORDER BY 1"
            ),
        ),
        "Dropped vectors are lost (the collector's queue was full); spilled ones wait in "
        "spill_dir and are replayed when the store is back.",
        unit="short",
        min=0,
        width=8,
    )
    queue = Panel(
        "queue-depth",
        "Collector queue depth (max)",
        "timeseries",
        (
            Query(
                f"SELECT {MINUTE_GROUP}, collector_id AS metric, MAX(queue_depth) AS queue_depth\n"
                f"FROM collector_health\nWHERE {HEALTH}\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        width=8,
    )
    freshness = Panel(
        "freshness",
        "Seconds since the newest aggregate",
        "stat",
        (
            Query(
                # $__timeGroup(col, '1s') is the column's epoch seconds on every dialect. The
                # newest row up to the range's end, however old: collectors silent for longer
                # than the range show as that stale, not as "No data". One index probe per
                # model (model, bucket_start), not a scan of its rows.
                "SELECT $__unixEpochTo() - MAX($__timeGroup(newest, '1s')) AS seconds FROM (\n"
                "  SELECT (SELECT MAX(w.bucket_start) FROM window_aggregates w\n"
                "    WHERE w.model = d.model AND w.bucket_start <= $__timeTo()) AS newest\n"
                "  FROM (SELECT model FROM deployments WHERE model IN (${model:sqlstring}) GROUP BY model) AS d\n"
                ") AS m",
                format="table",
            ),
        ),
        "Time from the end of the range to the newest minute in the store, however old: "
        "with the range ending now, how stale the data is. Collectors write closed minutes, so a minute "
        "or two is normal. Past the roll-up age (3 days) the newest row is an hour row, "
        "counted from the hour's start.",
        unit="s",
        width=6,
        # NoAttentionData counts minutes
        thresholds=_rule_line(rules, "health.no_data_minutes", 60.0),
    )
    collectors = Panel(
        "collectors",
        "Collectors in range",
        "table",
        (
            Query(
                "SELECT collector_id, host, pid, model, version, MIN(minute) AS first_minute,"
                " MAX(minute) AS last_minute,\n"
                "  SUM(observed) AS observed, SUM(rejected) AS rejected, SUM(dropped) AS dropped,"
                " SUM(spilled) AS spilled, SUM(written) AS written\n"
                f"FROM collector_health\nWHERE {HEALTH}\n"
                "GROUP BY collector_id, host, pid, model, version ORDER BY MAX(minute) DESC",
                format="table",
            ),
        ),
        width=24,
    )
    jobs = Panel(
        "daemon-jobs",
        "Daemon state: job watermarks and runs",
        "table",
        (
            Query(
                "SELECT key, value, updated_at,\n"
                "  $__unixEpochTo() - $__timeGroup(updated_at, '1s') AS seconds_since_update\n"
                "FROM daemon_state ORDER BY key",
                format="table",
            ),
        ),
        "`evaluate.watermark` is the end of the last evaluated window; with the range "
        "ending now, seconds_since_update is the evaluation job's lag.",
        width=18,
    )
    notifications = Panel(
        "notifications",
        "Notifications by status (per receiver)",
        "timeseries",
        (
            Query(
                "SELECT $__timeGroupAlias(created_at, $__interval), receiver || ' ' || status AS metric,"
                " COUNT(*) AS notifications\n"
                "FROM notifications WHERE $__timeFilter(created_at)\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "Outbox rows by receiver and status: pending, sending (claimed by a send in flight), "
        "delivered, failed, silenced.",
        width=12,
        needs=("notifications",),
    )
    failures = Panel(
        "notification-failures",
        "Failed and retrying notifications",
        "table",
        (
            Query(
                "SELECT receiver, rule, transition, status, attempts, last_error, created_at,"
                " last_attempt_at, next_attempt_at\n"
                "FROM notifications\n"
                "WHERE (status IN ('failed', 'sending') OR (status = 'pending' AND attempts > 0))"
                " AND $__timeFilter(created_at)\nORDER BY created_at DESC LIMIT 50",
                format="table",
            ),
        ),
        "Deliveries that gave up (failed), are being retried (pending after an attempt) or are "
        "in flight (sending; one left by a daemon killed mid-send is sent again when its "
        "claim ends, next_attempt_at).",
        width=12,
        needs=("notifications",),
    )
    return Dashboard(
        UID,
        "attnmon · Monitor health",
        "The monitor's own health: collectors, rejections, drops and spills, the daemon's "
        "jobs, data freshness and notification delivery.",
        (MODELS,),
        (throughput, rejected, rejected_share, losses, queue, freshness, jobs, collectors, notifications, failures),
        time_from="now-3h",
    )
