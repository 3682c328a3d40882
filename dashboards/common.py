"""Pieces the five dashboards share: template variables, annotations, SQL fragments.

The SQL is the portable subset PostgreSQL and SQLite both run: `||`, `CASE`,
`NULLIF`, `COALESCE`, `SUBSTR`, `LENGTH`, `CAST(x AS DOUBLE PRECISION)`, `json ->> 'key'`
(SQLite 3.38+) and `json_each` in FROM. Every division goes through NULLIF, since
PostgreSQL raises on a division by zero.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dashboards.spec import Annotation, Variable

# Series roll-ups: cohort "*" is every cohort, head "*" the layer's head-averaged
# attention (the only series with head_diversity and the item top-K).
ROLLUP = "*"
ALL = "'*'"  # the roll-up label as an SQL literal

MODEL = Variable(
    "model",
    "model",
    "SELECT model FROM deployments GROUP BY model ORDER BY MAX(deployed_at) DESC",
)
VERSION = Variable(
    "version",
    "version",
    "SELECT version FROM deployments WHERE model = ${model:sqlstring} ORDER BY deployed_at DESC",
    multi=True,
    include_all=True,
    default="$__all",
)
COHORT = Variable(
    "cohort",
    "cohort (* = all)",
    "SELECT cohort FROM window_aggregates WHERE model = ${model:sqlstring} AND $__timeFilter(bucket_start) "
    "GROUP BY cohort ORDER BY cohort <> '*', cohort",
    default=ROLLUP,
    on_time_range=True,
)
LAYER = Variable(
    "layer",
    "layer",
    "SELECT layer FROM window_aggregates WHERE model = ${model:sqlstring} AND $__timeFilter(bucket_start) "
    "GROUP BY layer ORDER BY LENGTH(layer), layer",
    on_time_range=True,
)
HEAD = Variable(
    "head",
    "head (* = head average)",
    "SELECT head FROM window_aggregates WHERE model = ${model:sqlstring} AND layer = ${layer:sqlstring} "
    "AND $__timeFilter(bucket_start) GROUP BY head ORDER BY head <> '*', LENGTH(head), head",
    default=ROLLUP,
    on_time_range=True,
)



def html_text(expr: str) -> str:
    """`expr` with `&`, `<` and `>` as entities: Grafana renders an annotation's text as
    (sanitised) HTML, and a version or an alert summary is data, not markup."""
    return f"REPLACE(REPLACE(REPLACE({expr}, '&', '&amp;'), '<', '&lt;'), '>', '&gt;')"


DEPLOYMENTS = Annotation(
    "Deployments",
    "SELECT deployed_at AS \"time\", "
    + html_text("'deployed ' || version || COALESCE(' (weights ' || weights_id || ')', '')"
                " || ' [' || source || ']'")
    + " AS text, "
    "'deployment,' || version AS tags "
    "FROM deployments WHERE model = ${model:sqlstring} AND $__timeFilter(deployed_at) ORDER BY 1",
    "blue",
)
ALERTS = Annotation(
    "Alerts (fired → resolved)",
    "SELECT fired_at AS \"time\", resolved_at AS timeend, "
    + html_text("rule || ' (' || severity || ') ' || COALESCE(annotations ->> 'summary', '')")
    + " AS text, "
    "'alert,' || severity || ',' || rule AS tags "
    "FROM alerts WHERE fired_at IS NOT NULL AND (labels ->> 'model') = ${model:sqlstring} "
    "AND (fired_at <= $__timeTo() AND (resolved_at IS NULL OR resolved_at >= $__timeFrom())) "
    "ORDER BY 1",
    "red",
    needs=("alerts",),
)

# time bucket of the aggregates, at the panel's interval (at least a minute: see grafana.py)
TIME_GROUP = "$__timeGroupAlias(bucket_start, $__interval)"
# per minute, whatever the group's width
PER_MINUTE = "* 60000.0 / $__interval_ms"
# the minutes of an hour, 0..59, as a derived table
MINUTES = "(" + " UNION ALL ".join(["SELECT 0 AS i", *[f"SELECT {i}" for i in range(1, 60)]]) + ")"


def predictions_per_minute(where: str) -> str:
    """Predictions per minute by version at the panel's interval, from the rows `where`
    selects (one layer's rows count each prediction once: divided by the layers seen).

    `attnmon maintain` rolls minute rows older than a few days up into hour rows. Grouped
    by its start, an hour row puts the whole hour in one group: at a 5-minute interval, a
    12x spike and then 55 minutes of nothing. So each row is first spread evenly over the
    minutes it holds traffic of (a minute row: its own; an hour row: its minute_mask, NULL
    meaning all 60) and the minutes are grouped: over whole hours the rate is the minute
    rows' exactly, and inside an hour it is the hour's rate over its served minutes.
    Minutes after the range's end are left out, as their minute rows were; an hour row
    that starts before the range is left out whole, as $__timeFilter(bucket_start) has it.
    """
    return (
        "SELECT $__unixEpochGroupAlias(minute, $__interval), version AS metric,\n"
        f"  SUM(share) / NULLIF(COUNT(DISTINCT layer), 0) {PER_MINUTE} AS predictions\n"
        "FROM (\n"
        "  SELECT version, layer, $__timeGroup(bucket_start, '1s') + 60 * k.i AS minute,\n"
        "    CAST(n AS DOUBLE PRECISION) / COUNT(*) OVER (PARTITION BY w.id) AS share\n"
        f"  FROM window_aggregates AS w JOIN {MINUTES} AS k\n"
        "    ON k.i < w.bucket_seconds / 60 AND (w.minute_mask IS NULL OR ((w.minute_mask >> k.i) & 1) = 1)\n"
        f"  WHERE {where} AND $__timeFilter(bucket_start)\n"
        ") AS m\n"
        "WHERE minute <= $__unixEpochTo()\n"
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )


def mean(metric: str) -> str:
    """The exact mean of a metric over the grouped rows (sums and counts merge)."""
    return f"SUM(sum_{metric}) / NULLIF(SUM(n), 0)"


def series_filter(*, version: str = "IN (${version:sqlstring})", cohort: str | None = "${cohort:sqlstring}",
                  layer: str | None = "${layer:sqlstring}",
                  head: str | None = "${head:sqlstring}") -> str:
    """`model = ${model:sqlstring} AND version IN (${version:sqlstring}) AND ...` on the
    series labels."""
    parts = ["model = ${model:sqlstring}", f"version {version}"]
    for label, value in (("cohort", cohort), ("layer", layer), ("head", head)):
        if value is not None:
            parts.append(f"{label} = {value}")
    return " AND ".join(parts)


def like_glob(column: str, pattern: str | Sequence[str]) -> str:
    """A condition matching an fnmatch glob (`mover.attr.*`) as alert rules do: `!` negates,
    `[*]` and `[?]` are a literal star and question mark (`head: "[*]"`: the roll-up); a
    list matches if any plain glob does and no `!` glob does (alerts/globs.py).
    (SQLite's LIKE ignores ASCII case where a wildcard is used; rules do not. Labels are
    written by the collector as given, so this only matters for labels differing in case.)"""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    wanted = [_like(column, p) for p in patterns if not p.startswith("!")]
    parts = [wanted[0] if len(wanted) == 1 else "(" + " OR ".join(wanted) + ")"] if wanted else []
    parts += [f"NOT ({_like(column, p[1:])})" for p in patterns if p.startswith("!")]
    return " AND ".join(parts)


def _like(column: str, pattern: str) -> str:
    parts = [p for p in re.split(r"(\[\*\]|\[\?\]|\*|\?)", pattern) if p]
    if any("[" in p for p in parts if p not in ("[*]", "[?]")):
        raise ValueError(f"character classes are not supported in SQL: {pattern!r}")
    if "*" not in parts and "?" not in parts:
        literal = "".join(p[1] if p in ("[*]", "[?]") else p for p in parts)
        return f"{column} = '{literal.replace(chr(39), chr(39) * 2)}'"
    like = {"*": "%", "?": "_"}
    text = "".join(like.get(p) or (p[1] if p in ("[*]", "[?]") else p).replace("\\", "\\\\")
                   .replace("%", "\\%").replace("_", "\\_").replace("'", "''") for p in parts)
    return f"{column} LIKE '{text}' ESCAPE '\\'"
