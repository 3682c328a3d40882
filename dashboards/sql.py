"""Grafana's query interpolation, reproduced: template variables, then SQL macros.

Grafana turns a panel's `rawSql` into SQL in two steps, and `expand` does the same so
that the tests and `attnmon report` run exactly what Grafana would send:

1. the browser replaces template variables the way the PostgreSQL datasource's
   `interpolateVariable` does: a multi-valued or include-all one as a comma-joined list
   of quoted literals; a single-valued one as its raw text, quotes doubled on Grafana 10+
   but passed through as is on 7-9 (`Context.single_value_escaped=False`). So the
   dashboards never rely on that default: every variable is written `${v:sqlstring}`
   (quoted, quotes doubled, single- or multi-valued, on every Grafana since 7.0);
   `${v:csv}`, `${v:raw}` and `${v:singlequote}` are modelled too, and `$__interval`,
   `$__interval_ms`, `$__from`, `$__to` are built in;
2. the server expands `$__name(args)` macros as the plugin's `macros.go` does
   (`$__timeFilter`, `$__timeFrom`, `$__timeTo`, `$__timeGroup[Alias]`, `$__time`,
   `$__timeEpoch`, `$__unixEpochFilter`, `$__unixEpochGroup[Alias]`, ...).

`dialect="postgresql"` is Grafana's output to the character. `dialect="sqlite"` is the
same macros written for SQLite's storage of timestamps (SQLAlchemy's
`YYYY-MM-DD HH:MM:SS.ffffff` text, UTC), so that a demo store renders the same panels.

    >>> from datetime import datetime, UTC
    >>> ctx = Context(datetime(2026, 11, 20, 8, tzinfo=UTC), datetime(2026, 11, 20, 10, tzinfo=UTC),
    ...               {"model": "demo"})
    >>> expand("SELECT 1 WHERE model = ${model:sqlstring} AND $__timeFilter(ts)", ctx)
    "SELECT 1 WHERE model = 'demo' AND ts BETWEEN '2026-11-20T08:00:00Z' AND '2026-11-20T10:00:00Z'"
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

DIALECTS = ("postgresql", "sqlite")

# public/app/features/templating/template_srv.ts: $var, [[var]], [[var:fmt]], ${var}, ${var:fmt}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
# pkg/tsdb/grafana-postgresql-datasource/macros.go: sExpr
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class MacroError(ValueError):
    """A macro Grafana would reject (unknown name, missing argument, bad interval)."""


@dataclass(frozen=True)
class Context:
    """What Grafana knows when it runs a query: the time range, the variables' current
    values (a list for a multi-value variable), which variables are multi/include-all,
    and the panel's interval."""

    start: datetime
    end: datetime
    values: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    multi: frozenset[str] = frozenset()  # names of multi-value or include-all variables
    interval: timedelta = timedelta(minutes=1)
    # Grafana 10+ doubles the quotes of a single value; 7-9 passed it through as is
    single_value_escaped: bool = True


def expand(sql: str, ctx: Context, dialect: str = "postgresql") -> str:
    """The SQL that Grafana's PostgreSQL datasource (or our SQLite twin) would run."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")
    return expand_macros(interpolate_variables(sql, ctx), ctx, dialect)


# -- step 1: template variables (the browser) ---------------------------------------------


def _quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _builtins(ctx: Context) -> dict[str, str]:
    ms = int(ctx.interval.total_seconds() * 1000)
    return {
        "__interval": format_interval(ctx.interval),
        "__interval_ms": str(ms),
        "__from": str(int(_utc(ctx.start).timestamp() * 1000)),
        "__to": str(int(_utc(ctx.end).timestamp() * 1000)),
        "__range_s": str(int((ctx.end - ctx.start).total_seconds())),
    }


def _format(value: str | Sequence[str], fmt: str | None, multi: bool, escape_single: bool = True) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if fmt is None:  # the SQL datasources' interpolateVariable
        if isinstance(value, str) and not multi:
            return value.replace("'", "''") if escape_single else value
        return ",".join(_quote_literal(v) for v in values)
    if fmt == "raw":
        return ",".join(values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "sqlstring":
        return ",".join(_quote_literal(v) for v in values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    raise MacroError(f"variable format {fmt!r} is not supported here")


def interpolate_variables(sql: str, ctx: Context) -> str:
    builtins = _builtins(ctx)

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in builtins:
            return builtins[name]
        if name not in ctx.values:
            return m.group(0)  # not a variable: Grafana leaves it as written
        return _format(ctx.values[name], fmt, name in ctx.multi, ctx.single_value_escaped)

    return _VARIABLE.sub(replace, sql)


# -- step 2: macros (the server) ----------------------------------------------------------


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval: `5m`, `1h`, `30s`, `1d`, `1h30m`."""
    text = text.strip().strip("'")
    parts = _INTERVAL_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=sum(float(n) * _UNIT_S[u] for n, u in parts))


def format_interval(d: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit, as Grafana writes `$__interval`."""
    ms = int(d.total_seconds() * 1000)
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{max(ms, 1)}ms"


def go_float(x: float) -> str:
    """Go's `%v` of a float64 (shortest digits; exponent form from 1e6 or below 1e-4)."""
    if x == 0:
        return "0"
    d = Decimal(repr(float(x)))
    exp = d.adjusted()
    if exp < -4 or exp >= 6:
        digits = "".join(map(str, d.as_tuple().digits)).rstrip("0") or "0"
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{'-' if x < 0 else ''}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def rfc3339nano(t: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time: no fraction when whole, trailing zeros cut."""
    t = _utc(t)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def sqlite_time(t: datetime) -> str:
    """How SQLAlchemy stores a DateTime on SQLite (naive UTC text, sorts as time)."""
    return _utc(t).strftime("%Y-%m-%d %H:%M:%S.%f")


def _epoch(t: datetime) -> int:
    return int(_utc(t).timestamp())


def _need(name: str, args: list[str], n: int, what: str) -> None:
    if len(args) < n or not args[0]:
        raise MacroError(f"macro {name} needs {what}")


def _macro(name: str, args: list[str], ctx: Context, dialect: str) -> str:
    pg = dialect == "postgresql"
    literal = (lambda t: f"'{rfc3339nano(t)}'") if pg else (lambda t: f"'{sqlite_time(t)}'")
    epoch_of = (lambda c: f"extract(epoch from {c})") if pg else (lambda c: f"CAST(strftime('%s', {c}) AS INTEGER)")
    if name == "__time":
        _need(name, args, 1, "a time column")
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        _need(name, args, 1, "a time column")
        return f'{epoch_of(args[0])} as "time"'
    if name == "__timeFilter":
        _need(name, args, 1, "a time column")
        return f"{args[0]} BETWEEN {literal(ctx.start)} AND {literal(ctx.end)}"
    if name == "__timeFrom":
        return literal(ctx.start)
    if name == "__timeTo":
        return literal(ctx.end)
    if name in ("__timeGroup", "__unixEpochGroup"):
        _need(name, args, 2, "a time column and an interval (and an optional fill value)")
        # the third argument (fill mode) is applied by Grafana after the query: ignored here
        s = go_float(parse_interval(args[1]).total_seconds())
        if name == "__unixEpochGroup":
            # SQLite has floor() only when built with its math functions: integer division
            return f"floor(({args[0]})/{s})*{s}" if pg else f"(CAST(({args[0]}) AS INTEGER)/{s})*{s}"
        if pg:
            return f"floor(extract(epoch from {args[0]})/{s})*{s}"
        return f"(CAST(strftime('%s', {args[0]}) AS INTEGER)/{s})*{s}"
    if name in ("__timeGroupAlias", "__unixEpochGroupAlias"):
        return _macro(name.removesuffix("Alias"), args, ctx, dialect) + ' AS "time"'
    if name == "__unixEpochFilter":
        _need(name, args, 1, "a time column")
        return f"{args[0]} >= {_epoch(ctx.start)} AND {args[0]} <= {_epoch(ctx.end)}"
    if name == "__unixEpochFrom":
        return str(_epoch(ctx.start))
    if name == "__unixEpochTo":
        return str(_epoch(ctx.end))
    raise MacroError(f"unknown macro {name!r}")


def expand_macros(sql: str, ctx: Context, dialect: str = "postgresql") -> str:
    # sqleng.Interpolate runs first on the server: the built-ins that are not macros
    builtins = _builtins(ctx)
    sql = sql.replace("$__interval_ms", builtins["__interval_ms"])
    sql = sql.replace("$__interval", builtins["__interval"])
    original = sql

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        # macros.go: `$__timeGroup(...)` directly followed by ',' is the pre-5.3 form,
        # which meant the alias; it looks at the first occurrence in the query
        if name == "__timeGroup":
            at = original.find(m.group(0))
            if at >= 0 and original[at + len(m.group(0)) : at + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        return _macro(name, args, ctx, dialect)

    return _MACRO.sub(replace, sql)
