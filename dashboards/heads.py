"""Heads and positions: per-head heatmaps over time, and where in the history the
attention falls.

Where the attention falls:
- the position profile as a heatmap: time × bands of distance from the latest item
  (0, 1, 2, 3-4, 5-9, 10-19, 20-49, 50-99, 100-255 back, and what lies beyond), each
  cell the share of attention in that band, from the `pos_*` band columns of
  window_aggregates (monitor.store.positions);
- mean look-back distance and the attention-sink mass, by version;
- the shift of the full profile against its baseline, `js.position_profile`, per head,
  from drift_results (the evaluator reads the payload).
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
    VERSION,
    mean,
    series_filter,
)
from dashboards.spec import Dashboard, Panel, Query
from monitor.store import positions

UID = "attnmon-heads"
HEAD_LABEL = "'layer ' || layer || ' · head ' || head"


def _head_heatmap(key: str, title: str, metric: str, description: str, **kw) -> Panel:
    sql = (
        f"SELECT {TIME_GROUP}, {HEAD_LABEL} AS metric, {mean(metric)} AS {metric}\n"
        f"FROM window_aggregates\nWHERE {series_filter(layer=None, head=None)} AND head <> {ALL}"
        " AND $__timeFilter(bucket_start)\nGROUP BY 1, 2 ORDER BY 1, 2"
    )
    return Panel(key, title, "heatmap", (Query(sql),), description, width=12, height=10, **kw)


def _line(key: str, title: str, select: str, description: str, **kw) -> Panel:
    sql = (
        f"SELECT {TIME_GROUP}, version AS metric, {select}\n"
        f"FROM window_aggregates\nWHERE {series_filter()} AND $__timeFilter(bucket_start)\n"
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return Panel(key, title, "timeseries", (Query(sql),), description, width=8, **kw)


# vectors of rows that have bands (rows from before migration 0004 may not, yet): the
# denominator of every band's share, so that such a row makes a gap, not a dip
BAND_N = f"SUM(CASE WHEN {positions.COLUMNS[0]} IS NOT NULL THEN n END)"


def position_profile_sql() -> str:
    """Time buckets × position bands: each band's share of the attention, bands named
    for a person (`latest`, `1 back`, ..., `256+ back`: never numbers, so that Grafana
    takes them as ordinal bucket labels), nearest first."""
    shares = [f'  SUM({c}) / NULLIF({BAND_N}, 0) AS "{label}"'
              for c, label in zip(positions.COLUMNS, positions.LABELS, strict=True)]
    # what the profile does not hold (histories longer than it): vectors sum to 1
    rest = " + ".join(f"SUM({c})" for c in positions.COLUMNS)
    shares.append(f'  ({BAND_N} - ({rest})) / NULLIF({BAND_N}, 0) AS "{positions.REST_LABEL}"')
    return (
        f"SELECT {TIME_GROUP},\n" + ",\n".join(shares) + "\n"
        f"FROM window_aggregates\nWHERE {series_filter()} AND $__timeFilter(bucket_start)\n"
        "GROUP BY 1 ORDER BY 1"
    )


def build() -> Dashboard:
    entropy = _head_heatmap(
        "head-entropy", "entropy_norm per head over time", "entropy_norm",
        "Each row is one head (the cohort and versions selected above). A row turning dark is "
        "a head whose attention collapsed onto few items.",
        min=0, max=1, report=True,
    )
    top1 = _head_heatmap(
        "head-top1", "Largest weight (top1) per head over time", "top1",
        "A row turning bright is a head putting most of its attention on one item.",
        min=0, max=1,
    )
    bands = Panel(
        "position-bands",
        "Position profile: share of attention by distance from the latest item (layer $layer, head $head)",
        "heatmap",
        (Query(position_profile_sql()),),
        "Each column is a time bucket, each row a band of positions counted back from the "
        "most recent interaction (bottom: the latest item; `256+ back`: beyond the 256 "
        "positions the sketches keep); a cell is the share of attention that fell there. "
        "Attention moving up after a deploy is the model looking further back (or losing "
        "the order of the history); moving down, a recency shift.",
        unit="percentunit",
        min=0,
        width=12,
        height=10,
        report=True,
    )
    profile_shift = Panel(
        "position-profile-shift",
        "Position-profile shift vs baseline (JS distance) per head",
        "heatmap",
        (
            Query(
                f"SELECT $__timeGroupAlias(window_end, $__interval), {HEAD_LABEL} AS metric,"
                " MAX(value) AS js_position_profile\n"
                f"FROM drift_results\nWHERE {series_filter(layer=None, head=None)}"
                " AND statistic = 'js.position_profile' AND $__timeFilter(window_end)\n"
                "GROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "Jensen–Shannon distance between each head's full position profile and its "
        "baseline's (computed by the evaluator from the sketches). The default rule "
        "alerts above 0.1.",
        min=0,
        width=12,
        height=10,
        report=True,
    )
    distance = _line(
        "distance", "How far back it looks: mean distance from the end", f"{mean('distance')} AS distance",
        "Attention-weighted distance from the most recent item (the layer and head selected above).",
    )
    sink = _line(
        "sink", "Attention sink: mass on the oldest position", f"{mean('sink')} AS sink",
        "A rise is attention parking on the first position (an attention sink, or padding "
        "that is not masked).", unit="percentunit",
    )
    recency = _line(
        "recency", "Recency: mass on the last 1 and last 5 items",
        f"{mean('recency1')} AS recency1, {mean('recency5')} AS recency5",
        "Share of attention on the most recent item and on the five most recent.",
        unit="percentunit", min=0, max=1,
    )
    diversity = Panel(
        "head-diversity",
        "Head diversity per layer (mean pairwise JS distance between heads)",
        "timeseries",
        (
            Query(
                f"SELECT {TIME_GROUP}, version || ' · layer ' || layer AS metric,"
                f" {mean('head_diversity')} AS head_diversity\n"
                f"FROM window_aggregates\nWHERE {series_filter(layer=None, head=ALL)}"
                " AND $__timeFilter(bucket_start)\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "Near 0: the layer's heads attend alike (redundant or collapsed heads).",
        width=12,
        min=0,
    )
    table = Panel(
        "head-table",
        "Per-head means over the time range",
        "table",
        (
            Query(
                "SELECT version, layer, head, SUM(n) AS vectors,\n"
                + ",\n".join(
                    f"  {mean(m)} AS {m}"
                    for m in ("entropy_norm", "top1", "gini", "recency5", "distance", "sink")
                )
                + f"\nFROM window_aggregates\nWHERE {series_filter(layer=None, head=None)}"
                " AND $__timeFilter(bucket_start)\n"
                "GROUP BY version, layer, head ORDER BY version, LENGTH(layer), layer, head <> '*', LENGTH(head), head",
                format="table",
            ),
        ),
        width=12,
    )
    return Dashboard(
        UID,
        "attnmon · Heads and positions",
        "Per-head attention entropy and concentration over time, and where in the history "
        "the attention falls.",
        (MODEL, VERSION, COHORT, LAYER, HEAD),
        (entropy, top1, bands, profile_shift, distance, sink, recency, diversity, table),
        (DEPLOYMENTS,),
    )
