"""Items and attributes: how concentrated attention is on items, how much lands on
items new to the top, and which attribute values gained or lost attention.

The top-K items and attribute values live in the sketch payload; SQL reaches what the
evaluator derived from them: `items.top10_share`, `items.hhi`, `items.new_in_top` (on
the layer roll-ups, cohort "*" and head "*") and, per attribute, `js.attr.<name>` and
`mover.attr.<name>` whose `detail` JSON names the value that moved most.

Which items those are: each `items.top10_share` row's `detail` lists them,
`{"top": [{"item": "<id as text>", "share": s, "baseline_share": b or null}, ...]}`
(up to 10, largest share first). The "top attended items" table reads that list with
the JSON operators both databases share: `detail -> 'top' -> i` (PostgreSQL: the
array's i-th element; SQLite: `$.top[i]`) for i in 0..9, a constant derived table.
"""

from __future__ import annotations

from dashboards.common import ALL, COHORT, DEPLOYMENTS, HEAD, LAYER, MODEL, VERSION, series_filter
from dashboards.spec import Dashboard, Panel, Query

UID = "attnmon-items"
WINDOW_GROUP = "$__timeGroupAlias(window_end, $__interval)"
ROLLUP = series_filter(cohort=ALL, head=ALL)  # where item statistics exist


def _items(key: str, title: str, statistic: str, description: str, *, baseline: bool, **kw) -> Panel:
    cols = "AVG(value) AS current" + (", AVG(baseline_value) AS baseline" if baseline else "")
    sql = (
        f"SELECT {WINDOW_GROUP}, version AS metric, {cols}\n"
        f"FROM drift_results\nWHERE {ROLLUP} AND statistic = '{statistic}' AND $__timeFilter(window_end)\n"
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return Panel(key, title, "timeseries", (Query(sql),), description, width=8, **kw)


TOP_ITEMS = 10  # the length of items.top10_share's list


def top_items_sql() -> str:
    """The latest window in range that has a top-items list, one row per listed item."""
    indices = " UNION ALL ".join(["SELECT 0 AS i", *[f"SELECT {i}" for i in range(1, TOP_ITEMS)]])
    element = "(d.detail -> 'top' -> k.i)"

    def number(key: str) -> str:
        return f"CAST({element} ->> '{key}' AS DOUBLE PRECISION)"

    latest = (
        "SELECT MAX(window_end) FROM drift_results\n"
        f"    WHERE {ROLLUP} AND statistic = 'items.top10_share'"
        " AND (detail ->> 'top') IS NOT NULL AND $__timeFilter(window_end)"
    )
    return (
        f"SELECT d.version, k.i + 1 AS rank, {element} ->> 'item' AS item,\n"
        f"  {number('share')} AS share,\n"
        f"  {number('baseline_share')} AS baseline_share,\n"
        f"  {number('share')} - {number('baseline_share')} AS change,\n"
        "  d.window_end\n"
        f"FROM drift_results AS d, ({indices}) AS k\n"
        f"WHERE {ROLLUP} AND statistic = 'items.top10_share'\n"
        f"  AND d.window_end = ({latest})\n"
        f"  AND ({element} ->> 'item') IS NOT NULL\n"
        "ORDER BY d.version, rank"
    )


def build() -> Dashboard:
    top10 = _items(
        "items-top10", "Top-10 items' share of attention (layer $layer)", "items.top10_share",
        "Current window vs its baseline. The ItemConcentrationSpike rule fires on a rise of "
        "more than 5 points.", baseline=True, unit="percentunit", min=0, report=True,
    )
    hhi = _items(
        "items-hhi", "Item concentration (Herfindahl index of item shares)", "items.hhi",
        "Sum of squared item shares: 1/HHI is the effective number of attended items.",
        baseline=True, min=0,
    )
    new = _items(
        "items-new", "New entrants: attention on items absent from the baseline's top-K",
        "items.new_in_top",
        "Share of the current top-10's attention held by items the baseline did not rank.",
        baseline=False, unit="percentunit", min=0, report=True,
    )
    top_items = Panel(
        "items-top",
        "Top attended items (layer $layer, latest window)",
        "table",
        (Query(top_items_sql(), format="table"),),
        "The ten items with the largest share of attention in the latest evaluated window "
        "of the time range (all cohorts, the layer's head average), beside their share in "
        "the baseline (empty: not in the baseline's top-K). One item holding much more "
        "than before is what the ItemConcentrationSpike rule fires on.",
        width=12,
        height=10,
        report=True,
    )
    attr_js = Panel(
        "attr-js",
        "Attribute distribution shift (JS distance) per attribute",
        "timeseries",
        (
            Query(
                f"SELECT {WINDOW_GROUP}, version || ' · ' || SUBSTR(statistic, 9) AS metric,"
                " MAX(value) AS js\n"
                f"FROM drift_results\nWHERE {series_filter()} AND statistic LIKE 'js.attr.%'"
                " AND $__timeFilter(window_end)\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "Jensen–Shannon distance between the attention shares of each attribute's values "
        "and the baseline's (the cohort, layer and head selected above).",
        width=12,
        height=10,
        min=0,
    )
    movers = Panel(
        "attr-movers",
        "Largest attribute movers: attention share of the value that moved most",
        "timeseries",
        (
            Query(
                f"SELECT {WINDOW_GROUP},\n"
                "  SUBSTR(statistic, 12) || '=' || (detail ->> 'value') AS metric,\n"
                "  MAX(CAST(detail ->> 'share' AS DOUBLE PRECISION)) AS share\n"
                f"FROM drift_results\nWHERE {series_filter()} AND statistic LIKE 'mover.attr.%'"
                " AND $__timeFilter(window_end)\nGROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        "For each attribute, the value whose share of attention moved most against the "
        "baseline in each window, and its share now (the cohort, layer and head selected above).",
        width=12,
        unit="percentunit",
        min=0,
        report=True,
    )
    mover_table = Panel(
        "attr-mover-table",
        "Attribute values that moved most in the range",
        "table",
        (
            Query(
                "SELECT SUBSTR(statistic, 12) AS attribute, (detail ->> 'value') AS attribute_value,"
                " version,\n"
                "  COUNT(*) AS windows, MAX(value) AS largest_change,\n"
                "  AVG(CAST(detail ->> 'baseline_share' AS DOUBLE PRECISION)) AS baseline_share,\n"
                "  AVG(CAST(detail ->> 'share' AS DOUBLE PRECISION)) AS share\n"
                f"FROM drift_results\nWHERE {series_filter()} AND statistic LIKE 'mover.attr.%'"
                " AND $__timeFilter(window_end)\n"
                "GROUP BY 1, 2, 3 ORDER BY largest_change DESC LIMIT 20",
                format="table",
            ),
        ),
        "`largest_change` is the largest absolute change of the value's share over the "
        "windows where it was its attribute's top mover.",
        width=12,
    )
    return Dashboard(
        UID,
        "attnmon · Items and attributes",
        "Item concentration, new entrants and attribute shares against the baseline.",
        (MODEL, VERSION, COHORT, LAYER, HEAD),
        (top10, hhi, new, top_items, attr_js, movers, mover_table),
        (DEPLOYMENTS,),
    )
