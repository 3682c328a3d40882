"""Run a dashboard's queries against a store, as Grafana would, and shape the rows the
way Grafana's panels read them. Used by the tests (every panel's SQL, on SQLite and
PostgreSQL) and by `attnmon report`.

    >>> engine = make_engine("sqlite:///attnmon.db")                   # doctest: +SKIP
    >>> with engine.connect() as conn:                                  # doctest: +SKIP
    ...     values = resolve_variables(conn, board, start, end)
    ...     frames = run_panel(conn, board, board.panel("traffic"), context(board, values, start, end))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from dashboards.spec import Dashboard, Panel, Query, Variable
from dashboards.sql import Context, expand

Values = Mapping[str, str | Sequence[str]]
ALL = "$__all"


def dialect_of(conn: Connection) -> str:
    name = conn.dialect.name
    if name not in ("postgresql", "sqlite"):
        raise ValueError(f"dashboards support PostgreSQL and SQLite stores, not {name}")
    return name


def context(board: Dashboard, values: Values, start: datetime, end: datetime,
            interval: timedelta = timedelta(minutes=1)) -> Context:
    multi = frozenset(v.name for v in board.variables if v.multi or v.include_all)
    return Context(start, end, dict(values), multi, interval)


def fetch(conn: Connection, sql: str) -> pd.DataFrame:
    """Rows of an already expanded query (no bound parameters: Grafana sends none)."""
    if conn.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("%", "%%")  # psycopg reads % as a placeholder: LIKE 'js.attr.%'
    result = conn.exec_driver_sql(sql)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def resolve_variables(conn: Connection, board: Dashboard, start: datetime, end: datetime,
                      overrides: Values | None = None) -> dict[str, str | list[str]]:
    """Each variable's value, in order (later queries use earlier values): an override,
    else the variable's default when it is among the options ("$__all" = every option),
    else the first option, as Grafana picks on a fresh load."""
    overrides = dict(overrides or {})
    values: dict[str, str | list[str]] = {}
    for var in board.variables:
        if var.name in overrides:
            values[var.name] = overrides[var.name]  # type: ignore[assignment]
            continue
        options = variable_options(conn, board, var, values, start, end)
        if not options:
            raise LookupError(f"{board.uid}: variable {var.name!r} has no options")
        if var.default == ALL and var.include_all:
            values[var.name] = options
        elif var.default in options:
            values[var.name] = var.default  # type: ignore[assignment]
        else:
            values[var.name] = [options[0]] if var.multi else options[0]
    return values


def variable_options(conn: Connection, board: Dashboard, var: Variable, values: Values,
                     start: datetime, end: datetime) -> list[str]:
    """The options a variable's query gives, with the values of the variables before it."""
    sql = expand(var.query, context(board, values, start, end), dialect_of(conn))
    return [str(x) for x in fetch(conn, sql).iloc[:, 0].tolist()]


def missing_tables(conn: Connection, names: Sequence[str]) -> list[str]:
    inspector = inspect(conn)
    return [n for n in names if not inspector.has_table(n)]


def run_query(conn: Connection, query: Query, ctx: Context) -> pd.DataFrame:
    dialect = dialect_of(conn)
    return fetch(conn, expand(query.sql, ctx, dialect))


def run_panel(conn: Connection, panel: Panel, ctx: Context) -> list[pd.DataFrame]:
    return [run_query(conn, q, ctx) for q in panel.queries]


# -- the shapes Grafana reads ----------------------------------------------------------------


def _numeric(s: pd.Series) -> bool:
    converted = pd.to_numeric(s, errors="coerce")
    return bool(converted.notna().any()) and bool((converted.notna() | s.isna()).all())


def to_time(s: pd.Series) -> pd.Series:
    """A `time` column as UTC datetimes: epoch seconds (from $__timeGroupAlias),
    datetimes (PostgreSQL) or SQLAlchemy's text (SQLite)."""
    if _numeric(s):
        return pd.to_datetime(pd.to_numeric(s), unit="s", utc=True)
    return pd.to_datetime(s, utc=True, format="mixed")


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """A time_series result as Grafana turns it into series: indexed by time, one
    column per series, named by `metric` (and the value column when there are several)."""
    values = [c for c in df.columns if c not in ("time", "metric")]
    out = df.assign(time=to_time(df["time"]))
    for c in values:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    if "metric" not in df.columns:
        return out.set_index("time")[values]
    parts = []
    for c in values:
        p = out.pivot_table(index="time", columns="metric", values=c, aggfunc="first", sort=False)
        p.columns = [str(m) if len(values) == 1 else f"{m} {c}" for m in p.columns]
        parts.append(p)
    return pd.concat(parts, axis=1).sort_index()


def shape_problems(panel: Panel, query: Query, df: pd.DataFrame) -> list[str]:
    """What would keep the panel from drawing these rows (empty list: none)."""
    if df.empty:
        return ["returned no rows"]
    named = [c for c in df.columns if not c or c == "?column?"]
    if named:
        return [f"unnamed columns {named}"]
    if query.format == "table":
        if panel.kind == "stat" and not any(_numeric(df[c]) for c in df.columns):
            return ["a stat needs a numeric column"]
        return []
    problems = []
    if "time" not in df.columns:
        return [f"a time series needs a `time` column, got {list(df.columns)}"]
    values = [c for c in df.columns if c not in ("time", "metric")]
    if not values:
        problems.append("no value column")
    problems += [f"column {c!r} is not numeric" for c in values if not _numeric(df[c])]
    t = to_time(df["time"])
    if not t.is_monotonic_increasing:
        problems.append("rows are not sorted by time")
    if panel.kind == "heatmap" and not problems:
        w = wide(df)
        if w.shape[1] < 2 or w.shape[0] < 2:
            problems.append(f"a heatmap needs >= 2 bins and >= 2 time buckets, got {w.shape}")
    return problems
