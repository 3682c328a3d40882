"""Dashboard specs to Grafana dashboard JSON, with grafana-foundation-sdk's builders.

The SDK has no SQL query type: `SqlTarget` is the few lines it takes (a dataquery whose
JSON is the PostgreSQL datasource's `{refId, rawSql, format, rawQuery, editorMode}`).

    >>> from dashboards.catalog import dashboards
    >>> board = to_json(dashboards()[0])
    >>> board["uid"], board["panels"][0]["targets"][0]["format"]
    ('attnmon-overview', 'time_series')
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import heatmap as heatmap_m

from dashboards.spec import (
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    TAG,
    Dashboard,
    Panel,
    Query,
    Threshold,
    Variable,
)

DATASOURCE = dash_m.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
GRID = 24
# the store holds minute buckets: never group finer than that, whatever the panel width
MIN_INTERVAL = "1m"


class RawSql(cogvariants.Dataquery):
    """A PostgreSQL datasource target in code mode."""

    def __init__(self, ref_id: str, sql: str, fmt: str):
        self.ref_id, self.sql, self.fmt = ref_id, sql, fmt

    def to_json(self) -> dict[str, Any]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "rawSql": self.sql,
            "format": self.fmt,
            "rawQuery": True,
            "editorMode": "code",
        }


class SqlTarget(cogbuilder.Builder[RawSql]):
    def __init__(self, query: Query):
        self._internal = RawSql(query.ref_id, query.sql, query.format)

    def build(self) -> RawSql:
        return self._internal


def _steps(thresholds: tuple[Threshold, ...]) -> dash_b.ThresholdsConfig:
    # the base step is the colour below the first threshold: good for ">" rules, bad for "<"
    low_is_bad = bool(thresholds) and thresholds[0].op in ("<", "<=")
    steps = [dash_m.Threshold(value=None, color="red" if low_is_bad else "green")]
    steps += [dash_m.Threshold(value=t.value, color="green" if low_is_bad else "red") for t in thresholds]
    return dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE).steps(steps)


def _common(builder, panel: Panel, panel_id: int, x: int, y: int):
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .datasource(DATASOURCE)
        .grid_pos(dash_m.GridPos(h=panel.height, w=panel.width, x=x, y=y))
    )
    if panel.description:
        builder = builder.description(panel.description)
    for q in panel.queries:
        builder = builder.with_target(SqlTarget(q))
    if panel.unit:
        builder = builder.unit(panel.unit)
    if panel.min is not None:
        builder = builder.min(panel.min)
    if panel.max is not None:
        builder = builder.max(panel.max)
    return builder.thresholds(_steps(panel.thresholds))


def _panel(panel: Panel, panel_id: int, x: int, y: int):
    if panel.kind == "timeseries":
        b = _common(timeseries_b.Panel(), panel, panel_id, x, y).interval(MIN_INTERVAL)
        b = b.legend(
            common_b.VizLegendOptions().display_mode(common_m.LegendDisplayMode.LIST)
            .placement(common_m.LegendPlacement.BOTTOM).show_legend(True)
        )
        if panel.thresholds:
            b = b.thresholds_style(
                common_b.GraphThresholdsStyleConfig().mode(common_m.GraphThresholdsStyleMode.DASHED)
            )
        return b
    if panel.kind == "heatmap":
        # rows come bucketed from SQL: one field per bin (a head, a position band), so
        # no calculation, and the bins are labels (ordinal), not numeric bounds
        color = heatmap_b.HeatmapColorOptions().mode(heatmap_m.HeatmapColorMode.SCHEME).scheme("Viridis")
        color = color.scale(heatmap_m.HeatmapColorScale.LINEAR).steps(64)
        if panel.min is not None:
            color = color.min(panel.min)
        if panel.max is not None:
            color = color.max(panel.max)
        return (
            _common(heatmap_b.Panel(), panel, panel_id, x, y)
            .interval(MIN_INTERVAL)
            .calculate(False)
            .rows_frame(heatmap_b.RowsHeatmapOptions().layout(common_m.HeatmapCellLayout.UNKNOWN))
            .color(color)
            .cell_values(heatmap_b.CellValues().unit(panel.unit or "none").decimals(3))
        )
    if panel.kind == "table":
        return _common(table_b.Panel(), panel, panel_id, x, y)
    if panel.kind == "stat":
        return _common(stat_b.Panel(), panel, panel_id, x, y)
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _variable(v: Variable) -> dash_b.QueryVariable:
    refresh = (
        dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED if v.on_time_range
        else dash_m.VariableRefresh.ON_DASHBOARD_LOAD
    )
    b = (
        dash_b.QueryVariable(v.name)
        .label(v.label)
        .query(v.query)
        .datasource(DATASOURCE)
        .refresh(refresh)
        .sort(dash_m.VariableSort.DISABLED)  # the SQL orders the options
        .multi(v.multi)
        .include_all(v.include_all)
        .allow_custom_value(False)
    )
    if v.default == "$__all":
        b = b.current(dash_m.VariableOption(text="All", value="$__all", selected=True))
    elif v.default is not None:
        b = b.current(dash_m.VariableOption(text=v.default, value=v.default, selected=True))
    return b


class _SqlAnnotationTarget(cogbuilder.Builder[Any]):
    # AnnotationTarget in the SDK is the built-in Grafana datasource's; ours is SQL
    def __init__(self, sql: str):
        self._internal = RawSql("Anno", sql, "table")

    def build(self) -> RawSql:
        return self._internal


def layout(panels: tuple[Panel, ...]) -> list[tuple[int, int]]:
    """Left to right, wrapping when a panel would pass the 24-column grid."""
    x = y = row_h = 0
    out = []
    for p in panels:
        if not 1 <= p.width <= GRID:
            raise ValueError(f"panel {p.key}: width {p.width} is not in 1..{GRID}")
        if x + p.width > GRID:
            x, y, row_h = 0, y + row_h, 0
        out.append((x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return out


def builder(board: Dashboard) -> dash_b.Dashboard:
    b = (
        dash_b.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags([TAG])
        .editable()
        .timezone("utc")
        .time(board.time_from, "now")
        .refresh(board.refresh)
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(
            dash_b.DashboardLink("attnmon dashboards")
            .type(dash_m.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .annotation(
            dash_b.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dash_m.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
    )
    for a in board.annotations:
        b = b.annotation(
            dash_b.AnnotationQuery()
            .name(a.name)
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color(a.color)
            .target(_SqlAnnotationTarget(a.sql))
        )
    for v in board.variables:
        b = b.with_variable(_variable(v))
    for i, (panel, (x, y)) in enumerate(zip(board.panels, layout(board.panels), strict=True), start=1):
        b = b.with_panel(_panel(panel, i, x, y))
    return b


def to_json(board: Dashboard) -> dict[str, Any]:
    """The dashboard's JSON model, as Grafana stores it (no `id`: upserts go by uid)."""
    return json.loads(json.dumps(builder(board).build(), cls=JSONEncoder))
