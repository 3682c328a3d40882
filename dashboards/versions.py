"""Version comparison: a baseline version and a candidate side by side.

`$candidate` defaults to the newest deployment and `$baseline` to the one before it.
Heads of independently trained versions need not correspond (DESIGN §5): the per-head
table is for versions that share weights; across a retrain, read the layer roll-ups
(head "*").
"""

from __future__ import annotations

from dashboards.common import (
    ALL,
    COHORT,
    DEPLOYMENTS,
    HEAD,
    LAYER,
    MODEL,
    TIME_GROUP,
    mean,
    predictions_per_minute,
    series_filter,
)
from dashboards.spec import Dashboard, Panel, Query, Variable

UID = "attnmon-versions"
PAIR = "IN (${baseline:sqlstring}, ${candidate:sqlstring})"

CANDIDATE = Variable(
    "candidate",
    "candidate",
    "SELECT version FROM deployments WHERE model = ${model:sqlstring} ORDER BY deployed_at DESC",
)
BASELINE = Variable(
    "baseline",
    "baseline",
    "SELECT version FROM deployments WHERE model = ${model:sqlstring} AND version <> ${candidate:sqlstring} "
    "ORDER BY deployed_at DESC",
)
METRICS = ("entropy_norm", "top1", "gini", "recency5", "distance", "head_diversity")


def _side_by_side(metric: str) -> Panel:
    sql = (
        f"SELECT {TIME_GROUP}, version AS metric, {mean(metric)} AS {metric}\n"
        f"FROM window_aggregates\nWHERE {series_filter(version=PAIR)} AND $__timeFilter(bucket_start)\n"
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    note = " (head \"*\" only: the layer roll-up carries it)" if metric == "head_diversity" else ""
    return Panel(
        f"compare-{metric}",
        f"{metric}: $baseline vs $candidate",
        "timeseries",
        (Query(sql),),
        f"Per-minute mean of {metric} in the layer, head and cohort selected above{note}.",
        width=8,
        min=0,
        report=metric == "entropy_norm",
    )


def _side(metric: str, version: str) -> str:
    return (
        f"SUM(CASE WHEN version = ${{{version}:sqlstring}} THEN sum_{metric} END)"
        f" / NULLIF(SUM(CASE WHEN version = ${{{version}:sqlstring}} THEN n END), 0)"
    )


def build() -> Dashboard:
    table_cols = []
    for m in ("entropy_norm", "top1", "recency5"):
        table_cols += [
            f"  {_side(m, 'baseline')} AS {m}_baseline",
            f"  {_side(m, 'candidate')} AS {m}_candidate",
            f"  {_side(m, 'candidate')} - {_side(m, 'baseline')} AS {m}_change",
        ]
    per_head = Panel(
        "compare-heads",
        "Per-head means: $baseline vs $candidate",
        "table",
        (
            Query(
                "SELECT layer, head,\n"
                "  SUM(CASE WHEN version = ${baseline:sqlstring} THEN n ELSE 0 END) AS n_baseline,\n"
                "  SUM(CASE WHEN version = ${candidate:sqlstring} THEN n ELSE 0 END) AS n_candidate,\n"
                + ",\n".join(table_cols)
                + f"\nFROM window_aggregates\nWHERE {series_filter(version=PAIR, layer=None, head=None)}"
                " AND $__timeFilter(bucket_start)\n"
                "GROUP BY layer, head ORDER BY LENGTH(layer), layer, head <> '*', LENGTH(head), head",
                format="table",
            ),
        ),
        "Means over the time range of each version's traffic (the cohort selected above). Compare "
        "head by head only when both versions share weights.",
        width=24,
        height=10,
        report=True,
    )
    drift = Panel(
        "candidate-drift",
        "$candidate against the version before it (post-deploy statistics)",
        "table",
        (
            Query(
                "SELECT statistic, COUNT(*) AS results, MIN(value) AS min_value, AVG(value) AS mean_value,\n"
                "  MAX(value) AS max_value, MAX(window_end) AS last_window\n"
                "FROM drift_results\n"
                "WHERE model = ${model:sqlstring} AND version = ${candidate:sqlstring} AND baseline_kind IN ('previous_version', 'retrain')\n"
                "  AND (statistic IN ('mean.entropy_norm', 'delta.entropy_norm', 'psi.entropy_norm', 'js.position_profile',"
                " 'delta.recency5', 'items.top10_share', 'items.new_in_top')"
                " OR statistic LIKE 'mover.attr.%')\n"
                "  AND $__timeFilter(window_end)\n"
                "GROUP BY statistic ORDER BY statistic",
                format="table",
            ),
        ),
        "Over every series of the candidate in its first day, compared with the previous "
        "version's last day (baseline_kind previous_version with the same weights, retrain "
        "with new weights: heads matched). `attnmon rollback-check` gives the verdict.",
        width=24,
    )
    traffic = Panel(
        "compare-traffic",
        "Predictions per minute: $baseline vs $candidate",
        "timeseries",
        (
            Query(predictions_per_minute(series_filter(version=PAIR, layer=None, head=ALL))),
        ),
        unit="reqpm",
        width=24,
        height=6,
    )
    return Dashboard(
        UID,
        "attnmon · Version comparison",
        "A baseline version and a candidate side by side: per-minute metrics, per-head "
        "means and the candidate's post-deploy drift.",
        (MODEL, CANDIDATE, BASELINE, COHORT, LAYER, HEAD),
        (traffic, *(_side_by_side(m) for m in METRICS), per_head, drift),
        (DEPLOYMENTS,),
        time_from="now-24h",
    )
