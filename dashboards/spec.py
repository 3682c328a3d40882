"""What a dashboard is, independent of Grafana's JSON: small frozen dataclasses.

One spec feeds three consumers: `dashboards.grafana` builds Grafana JSON from it,
`dashboards.report` renders its panels with matplotlib, and the tests run every query
against a real store. The SQL is written once, in Grafana's PostgreSQL macro language
(`$__timeFilter(col)`, `$__timeGroupAlias(col, $__interval)`, `${model:sqlstring}`,
`IN (${version:sqlstring})`), restricted to what PostgreSQL and SQLite both accept;
`dashboards.sql.expand` turns it into either dialect.

    >>> from dashboards.catalog import dashboards
    >>> [p.key for p in dashboards()[1].panels][:2]
    ['head-entropy', 'head-top1']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_UID = "attnmon-pg"
FOLDER_UID = "attnmon"
FOLDER_TITLE = "attnmon"
TAG = "attnmon"

Kind = Literal["timeseries", "heatmap", "table", "stat"]
Format = Literal["time_series", "table"]


@dataclass(frozen=True)
class Query:
    """One SQL target, in the subset both PostgreSQL and SQLite run (see common.py)."""

    sql: str
    format: Format = "time_series"
    ref_id: str = "A"


@dataclass(frozen=True)
class Threshold:
    """A line drawn on a time series: an alert rule's threshold, for instance."""

    value: float
    op: str  # ">", ">=", "<", "<=": which side is bad
    label: str = ""


@dataclass(frozen=True)
class Panel:
    key: str  # stable, file-name safe: tests and `attnmon report` name panels by it
    title: str
    kind: Kind
    queries: tuple[Query, ...]
    description: str = ""
    unit: str = ""
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    thresholds: tuple[Threshold, ...] = ()
    report: bool = False  # rendered by `attnmon report`
    needs: tuple[str, ...] = ()  # tables beyond the core schema (e.g. "alerts")


@dataclass(frozen=True)
class Variable:
    """A template variable filled from SQL; the first option is the default unless
    `default` names one."""

    name: str
    label: str
    query: str
    multi: bool = False
    include_all: bool = False
    default: str | None = None
    on_time_range: bool = False  # re-query when the time range changes


@dataclass(frozen=True)
class Annotation:
    """An annotation query: rows of `time`, optional `timeend`, `text`, `tags`."""

    name: str
    sql: str
    color: str
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]
    annotations: tuple[Annotation, ...] = ()
    time_from: str = "now-6h"
    refresh: str = "1m"

    def panel(self, key: str) -> Panel:
        for p in self.panels:
            if p.key == key:
                return p
        raise KeyError(f"{self.uid} has no panel {key!r}")

    def variable(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(f"{self.uid} has no variable {name!r}")
