"""`attnmon report`: the main panels as PNG images, from the dashboards' own SQL.

Each panel marked `report=True` runs through the same expander as in the tests
(`dashboards.sql.expand`, on the store's dialect: SQLite for the demo, PostgreSQL in
production) and is drawn with matplotlib: time series with the alert thresholds as
dashed lines, heatmaps with a labelled colour bar, tables as tables; deployments are
vertical lines named by version on every time axis.

    >>> report(make_engine("sqlite:///attnmon-out/demo.db"), Path("report"))  # doctest: +SKIP
    [PosixPath('report/overview-traffic.png'), ...]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from dashboards.run import (
    context,
    missing_tables,
    resolve_variables,
    run_panel,
    shape_problems,
    variable_options,
    wide,
)
from dashboards.spec import Dashboard, Panel
from monitor.store import tables as t
from monitor.store.maintenance import as_utc, served_minutes

INTERVALS = [timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 360, 720, 1440)]
MAX_POINTS = 240
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
DASHES = ["-", "--", ":", "-."]
_SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?")


@dataclass(frozen=True)
class Rendered:
    path: Path
    dashboard: str
    panel: str
    problems: tuple[str, ...] = ()  # why nothing was drawn (empty: drawn)


def interval_for(start: datetime, end: datetime) -> timedelta:
    """The smallest round interval that keeps a series under MAX_POINTS points."""
    for iv in INTERVALS:
        if (end - start) / iv <= MAX_POINTS:
            return iv
    return INTERVALS[-1]


def data_range(conn: Connection, model: str) -> tuple[datetime, datetime]:
    """From the model's first minute to the end of its last served one. An hour row
    (rolled up by `attnmon maintain`) holds its hour at its start: its end is its last
    minute with traffic (minute_mask), not its first."""
    wa = t.window_aggregates
    newest = conn.execute(
        select(wa.c.bucket_seconds, func.min(wa.c.bucket_start), func.max(wa.c.bucket_start))
        .where(wa.c.model == model).group_by(wa.c.bucket_seconds)
    ).all()
    if not newest:
        raise LookupError(f"no aggregates for model {model!r} in the store")
    ends = []
    for seconds, _, last in newest:
        masks = conn.execute(select(wa.c.minute_mask).where(
            wa.c.model == model, wa.c.bucket_seconds == seconds, wa.c.bucket_start == last)).scalars()
        served = max(max(served_minutes(last, seconds, mask), default=0) for mask in masks)
        ends.append(datetime.fromtimestamp(60 * (served + 1), UTC))
    return min(as_utc(lo) for _, lo, _ in newest), max(ends)


def latest_model(conn: Connection) -> str:
    """The model of the newest deployment that has data (a version marked deployed before
    its first request has none yet)."""
    d, wa = t.deployments, t.window_aggregates
    models = conn.execute(select(d.c.model).order_by(d.c.deployed_at.desc())).scalars().all()
    if not models:
        raise LookupError("the store has no deployments: nothing to report on")
    for model in dict.fromkeys(models):
        if conn.execute(select(wa.c.id).where(wa.c.model == model).limit(1)).first() is not None:
            return model
    raise LookupError(f"no model has data yet (deployed: {', '.join(dict.fromkeys(models))})")


def deployments(conn: Connection, model: str, start: datetime, end: datetime) -> pd.DataFrame:
    d = t.deployments
    rows = conn.execute(
        select(d.c.deployed_at, d.c.version)
        .where(d.c.model == model, d.c.deployed_at >= start, d.c.deployed_at <= end)
        .order_by(d.c.deployed_at)
    ).all()
    return pd.DataFrame({"time": [as_utc(r[0]) for r in rows], "version": [r[1] for r in rows]})


def _shown(text: str, values: dict) -> str:
    for name in sorted(values, key=len, reverse=True):
        v = values[name]
        text = text.replace(f"${name}", ", ".join(v) if isinstance(v, list) else str(v))
    return text


# -- drawing ---------------------------------------------------------------------------------


def _deploy_lines(ax, deploys: pd.DataFrame, line: str = "#444") -> None:
    from matplotlib import transforms

    trans = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for when, version in zip(deploys["time"], deploys["version"], strict=True):
        ax.axvline(when, color=line, linestyle=(0, (4, 3)), linewidth=1.4, zorder=5)
        ax.text(when, 1.01, f"{version} deployed", transform=trans, fontsize=8, color="#222",
                ha="center", va="bottom", fontweight="bold")


def _time_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")


def _style(name: str, versions: list[str], seen: dict[str, int]) -> dict:
    version = name.split(" ")[0]
    colour = PALETTE[versions.index(version) % len(PALETTE)] if version in versions else None
    rest = name[len(version):]
    dash = DASHES[seen.setdefault(rest, len(seen)) % len(DASHES)] if colour else "-"
    return {"color": colour, "linestyle": dash}


def _ylabel(panel: Panel, df: pd.DataFrame) -> str:
    values = [c for c in df.columns if c not in ("time", "metric")]
    label = values[0] if len(values) == 1 else ", ".join(values)
    return {"reqpm": f"{label} per minute", "percentunit": f"{label} (share of attention)",
            "s": f"{label} (s)"}.get(panel.unit, label)


def _timeseries(ax, panel: Panel, df: pd.DataFrame, versions: list[str]) -> None:
    w = wide(df)
    seen: dict[str, int] = {}
    for name in w.columns:
        s = w[name]
        # gaps stay gaps (a value absent from a window is not interpolated); sparse
        # series get markers so that a lone point shows
        inner = s.loc[s.first_valid_index():s.last_valid_index()]
        marker = "o" if inner.isna().any() or s.notna().sum() <= 3 else None
        ax.plot(s.index, s.to_numpy(), label=name, linewidth=1.4, marker=marker, markersize=2.5,
                **_style(str(name), versions, seen))
    for th in panel.thresholds:
        ax.axhline(th.value, color="#d62728", linestyle="--", linewidth=1.2)
        ax.annotate(f"threshold: {th.label} {th.op} {th.value:g}", (0.995, th.value),
                    xycoords=("axes fraction", "data"), fontsize=8, color="#d62728", va="bottom", ha="right")
    lo = panel.min if panel.min is not None else None
    hi = panel.max if panel.max is not None else None
    if lo is not None and hi is None:  # room above the data, not a line along the top edge
        top = max([float(w.max().max()), *(th.value for th in panel.thresholds)])
        hi = top + 0.08 * (top - lo) if top > lo else None
    ax.set_ylim(bottom=lo, top=hi)
    ax.set_ylabel(_ylabel(panel, df))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _time_axis(ax)


def _heatmap(fig, ax, panel: Panel, df: pd.DataFrame) -> None:
    import numpy as np

    w = wide(df)
    times = w.index
    step = (times[1] - times[0]) if len(times) > 1 else pd.Timedelta(minutes=1)
    edges = times.append(pd.DatetimeIndex([times[-1] + step]))
    values = w.to_numpy(dtype=float).T  # bins × time
    mesh = ax.pcolormesh(edges, np.arange(len(w.columns) + 1), np.ma.masked_invalid(values),
                         cmap="viridis", vmin=panel.min, vmax=panel.max, shading="flat")
    ax.set_yticks(np.arange(len(w.columns)) + 0.5)
    ax.set_yticklabels([str(c) for c in w.columns], fontsize=8)
    value = [c for c in df.columns if c not in ("time", "metric")]
    ax.set_ylabel("head" if "metric" in df.columns else "position band")
    bar = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04)
    bar.set_label(value[0] if "metric" in df.columns and len(value) == 1 else "share of attention")
    if panel.unit == "percentunit":
        from matplotlib.ticker import PercentFormatter

        bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    _time_axis(ax)


def _table(ax, df: pd.DataFrame) -> None:
    import textwrap

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, datetime):
            return f"{as_utc(v):%Y-%m-%d %H:%M}"
        if isinstance(v, str) and _SQLITE_TIME.fullmatch(v):  # SQLite hands timestamps back as text
            return v[:16]
        return "" if v is None else str(v)

    shown = df.head(24)
    ax.axis("off")
    tbl = ax.table(cellText=[[cell(v) for v in row] for row in shown.itertuples(index=False)],
                   colLabels=[textwrap.fill(str(c).replace("_", " "), 12) for c in shown.columns],
                   loc="upper center", cellLoc="right", colLoc="center")
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(8)
    tbl.scale(1, 1.3)
    for (row, _col), c in tbl.get_celld().items():
        if row == 0:
            c.set_facecolor("#e8e8e8")
            c.set_height(c.get_height() * 2)


def render(panel: Panel, frames: list[pd.DataFrame], path: Path, *, title: str,
           deploys: pd.DataFrame, versions: list[str], span: tuple[datetime, datetime]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = frames[0]
    table = panel.kind == "table"
    height = 1.0 + 0.3 * min(len(df), 24) if table else 4.6
    fig, ax = plt.subplots(figsize=(12, height))
    if not table:
        # fixed margins rather than a layout engine: half the drawing time, same look
        left = 0.1 if panel.kind == "heatmap" else 0.07
        fig.subplots_adjust(left=left, right=0.84 if panel.kind == "timeseries" else 0.93, bottom=0.12, top=0.87)
    try:
        if panel.kind == "timeseries":
            _timeseries(ax, panel, df, versions)
        elif panel.kind == "heatmap":
            _heatmap(fig, ax, panel, df)
        else:
            _table(ax, df)
        if not table:
            # every time axis spans the report's range, so the panels line up
            ax.set_xlim(*(pd.Timestamp(x) for x in span))
            _deploy_lines(ax, deploys, line="white" if panel.kind == "heatmap" else "#444")
        ax.set_title(title, loc="left", fontsize=11, pad=6 if table else 16)
        fig.savefig(path, dpi=110, bbox_inches="tight" if table else None, pil_kwargs={"compress_level": 3})
    finally:
        plt.close(fig)


# -- the command -----------------------------------------------------------------------------


def _overrides(conn: Connection, board: Dashboard, model: str, start: datetime, end: datetime) -> dict:
    values: dict = {"model": model} if any(v.name == "model" and not v.multi for v in board.variables) else {}
    if any(v.name == "model" and v.multi for v in board.variables):
        values["model"] = [model]
    names = [v.name for v in board.variables]
    if "layer" in names:
        # the deepest layer: the one closest to the prediction
        layers = variable_options(conn, board, board.variable("layer"), values, start, end)
        if layers:
            values["layer"] = layers[-1]
    return values


def report(engine: Engine, out: Path, *, boards: tuple[Dashboard, ...], model: str | None = None,
           start: datetime | None = None, end: datetime | None = None) -> list[Rendered]:
    """Render every report panel of `boards` into `out`; returns what was written."""
    rendered: list[Rendered] = []
    with engine.connect() as conn:
        model = model or latest_model(conn)
        lo, hi = data_range(conn, model)
        start, end = start or lo, end or hi
        if start >= hi or end <= lo:
            raise LookupError(f"model {model!r} has no data from {start:%Y-%m-%d %H:%M} to "
                              f"{end:%Y-%m-%d %H:%M} UTC (its data: {lo:%Y-%m-%d %H:%M} to {hi:%Y-%m-%d %H:%M})")
        out.mkdir(parents=True, exist_ok=True)  # (not before: a refused report leaves no folder)
        interval = interval_for(start, end)
        deploys = deployments(conn, model, start, end)
        versions = deploys["version"].tolist()
        for board in boards:
            panels = [p for p in board.panels if p.report]
            if not panels:
                continue
            values = resolve_variables(conn, board, start, end, _overrides(conn, board, model, start, end))
            ctx = context(board, values, start, end, interval)
            for panel in panels:
                path = out / f"{board.uid.removeprefix('attnmon-')}-{panel.key}.png"
                missing = missing_tables(conn, panel.needs)
                if missing:
                    rendered.append(Rendered(path, board.uid, panel.key, (f"no table {missing}",)))
                    continue
                frames = run_panel(conn, panel, ctx)
                problems = shape_problems(panel, panel.queries[0], frames[0])
                if problems:
                    rendered.append(Rendered(path, board.uid, panel.key, tuple(problems)))
                    continue
                render(panel, frames, path, title=f"{board.title.split('· ')[-1]} — {_shown(panel.title, values)}",
                       deploys=deploys, versions=versions, span=(start, end))
                rendered.append(Rendered(path, board.uid, panel.key))
    return rendered
