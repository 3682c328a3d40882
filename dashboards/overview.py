"""Overview: traffic, entropy and concentration by version, drift against the alert
rules' thresholds, firing alerts; deployments and alerts as annotations."""

from __future__ import annotations

from dashboards.common import (
    ALERTS,
    ALL,
    COHORT,
    DEPLOYMENTS,
    HEAD,
    LAYER,
    MODEL,
    TIME_GROUP,
    VERSION,
    like_glob,
    mean,
    predictions_per_minute,
    series_filter,
)
from dashboards.spec import Dashboard, Panel, Query, Threshold

UID = "attnmon-overview"
SYNTHETIC = "health."  # rule statistics the alert evaluator derives, not in drift_results


def _by_version(key: str, title: str, metric: str, description: str, **kw) -> Panel:
    sql = (
        f"SELECT {TIME_GROUP}, version || ' · layer ' || layer AS metric, {mean(metric)} AS {metric}\n"
        f"FROM window_aggregates\nWHERE {series_filter(layer=None)} AND $__timeFilter(bucket_start)\n"
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return Panel(key, title, "timeseries", (Query(sql),), description, width=8, **kw)


def drift_panels(rules) -> tuple[Panel, ...]:
    """One panel per alert rule: the statistic's worst series per version, and the
    rule's threshold as a dashed line (the worst series is what would fire)."""
    panels = []
    for rule in rules:
        if rule.statistic.startswith(SYNTHETIC):
            continue  # computed by the alert evaluator, not stored: see the health dashboard
        worst = "MIN" if rule.op in ("<", "<=") else "MAX"
        x = "value - COALESCE(baseline_value, 0)" if rule.compare == "change" else "value"
        where = [
            "model = ${model:sqlstring}",
            "version IN (${version:sqlstring})",
            like_glob("statistic", rule.statistic),
            f"n_current >= {int(rule.min_samples)}",
        ]
        where += [like_glob(label, pattern) for label, pattern in sorted(rule.match.items())]
        shown = f"change of {rule.statistic}" if rule.compare == "change" else rule.statistic
        sql = (
            f"SELECT $__timeGroupAlias(window_end, $__interval), version AS metric, {worst}({x}) AS \"{shown}\"\n"
            f"FROM drift_results\nWHERE {' AND '.join(where)} AND $__timeFilter(window_end)\n"
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        match = rule.match_text()
        panels.append(
            Panel(
                f"drift-{rule.name}",
                f"{rule.name}: {shown} {rule.op} {rule.threshold:g}",
                "timeseries",
                (Query(sql),),
                f"Worst series per version ({worst.lower()} over cohorts, layers and heads"
                f"{'; ' + match if match else ''}); the dashed line is the rule's threshold "
                f"(severity {rule.severity}, for {rule.for_}).",
                width=8,
                thresholds=(Threshold(rule.threshold, rule.op, rule.name),),
                report=rule.name in ("AttentionEntropyCollapse", "PositionProfileShift", "AttributeShareShift"),
            )
        )
    return tuple(panels)


def build(rules) -> Dashboard:
    traffic = Panel(
        "traffic",
        "Predictions per minute by version",
        "timeseries",
        (
            Query(predictions_per_minute(series_filter(cohort=ALL, layer=None, head=ALL))),
        ),
        "Predictions logged by the collectors (all cohorts), per minute.",
        unit="reqpm",
        min=0,
        width=12,
        report=True,
    )
    total = Panel(
        "predictions",
        "Predictions in range",
        "stat",
        (
            Query(
                # each version over its own layers: a retrain may change the depth
                "SELECT SUM(p) AS predictions FROM (\n"
                "  SELECT CAST(SUM(n) AS DOUBLE PRECISION) / NULLIF(COUNT(DISTINCT layer), 0) AS p\n"
                f"  FROM window_aggregates\n  WHERE {series_filter(cohort=ALL, layer=None, head=ALL)}"
                " AND $__timeFilter(bucket_start)\n  GROUP BY version\n) AS v",
                format="table",
            ),
        ),
        unit="short",
        width=6,
    )
    firing_count = Panel(
        "firing-count",
        "Alerts firing",
        "stat",
        (
            Query(
                "SELECT COUNT(*) AS firing FROM alerts\n"
                "WHERE state = 'firing' AND (labels ->> 'model') = ${model:sqlstring}",
                format="table",
            ),
        ),
        width=6,
        thresholds=(Threshold(1, ">=", "firing"),),
        needs=("alerts",),
    )
    entropy = _by_version(
        "entropy", "Attention entropy (entropy_norm) by version", "entropy_norm",
        "Normalised entropy, 0 = all attention on one item, 1 = uniform. A drop is a collapse.",
        min=0, max=1, report=True,
    )
    top1 = _by_version(
        "top1", "Concentration: largest weight (top1) by version", "top1",
        "Mean weight of the most attended history item.", min=0, max=1, unit="percentunit", report=True,
    )
    gini = _by_version(
        "gini", "Concentration: Gini coefficient by version", "gini",
        "Gini of the attention weights (depends on history length; compare versions, not models).",
        min=0, max=1,
    )
    firing = Panel(
        "firing-alerts",
        "Firing and pending alerts",
        "table",
        (
            Query(
                "SELECT state, severity, rule, labels ->> 'version' AS version,\n"
                "  labels ->> 'cohort' AS cohort, labels ->> 'layer' AS layer, labels ->> 'head' AS head,\n"
                "  value, baseline_value, active_at, fired_at, annotations ->> 'summary' AS summary\n"
                "FROM alerts\nWHERE state IN ('firing', 'pending') AND (labels ->> 'model') = ${model:sqlstring}\n"
                "ORDER BY state <> 'firing', severity <> 'critical', active_at DESC",
                format="table",
            ),
        ),
        "Alerts now firing or pending for this model (all time ranges).",
        width=24,
        height=8,
        needs=("alerts",),
    )
    return Dashboard(
        UID,
        "attnmon · Overview",
        "Traffic, attention entropy and concentration by version, drift against the alert "
        "rules' thresholds, and the alerts firing now.",
        (MODEL, VERSION, COHORT, LAYER, HEAD),
        (traffic, total, firing_count, entropy, top1, gini, *drift_panels(rules), firing),
        (DEPLOYMENTS, ALERTS),
    )
