"""Baselines: what a series' current window is compared with (DESIGN §5).

- `previous_version`: in a version's first `previous_version_hours` after its
  deployment, the previous version's last `baseline_hours` before that deployment;
- `pinned`: a named window a person pinned (`attnmon baseline pin`);
- `trailing`: otherwise the series' own `baseline_hours`, ending `trailing_gap_hours`
  before the window, aligned to the hour.

A baseline is merged once per series and reference and kept in `baseline_sketches`;
a trailing one is the sum of hourly partial sketches, each merged once from minute rows.
So an evaluation cycle reads a handful of rows per series, whatever the traffic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import and_, delete, select
from sqlalchemy.engine import Engine

from monitor.config import EvaluateConfig
from monitor.sketch import Sketch
from monitor.store import tables as t
from monitor.store.maintenance import as_utc

SeriesKey = tuple[str, str, str]  # (cohort, layer, head)
ANY_VERSION = "*"
_EMPTY = ""  # cohort label of the marker row saying "built, and there was nothing"


@dataclass(frozen=True)
class BaselineRef:
    kind: str  # previous_version | pinned | trailing
    ref: str  # what it is built from, e.g. "v1@2026-11-20T10:00:00+00:00"
    version: str  # the version whose traffic it holds ("*" = any)
    start: datetime
    end: datetime


def _iso(ts: datetime) -> str:
    return as_utc(ts).isoformat(timespec="seconds")


def _floor_hour(ts: datetime) -> datetime:
    e = as_utc(ts).timestamp()
    return datetime.fromtimestamp(e - e % 3600, UTC)


def deployments(engine: Engine, model: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.deployments).where(t.deployments.c.model == model).order_by(t.deployments.c.deployed_at)
        ).mappings().all()
    return [dict(r, deployed_at=as_utc(r["deployed_at"])) for r in rows]


def active_pin(engine: Engine, model: str) -> dict | None:
    pb = t.pinned_baselines
    with engine.connect() as conn:
        row = conn.execute(
            select(pb).where(pb.c.model == model, pb.c.active.is_(True)).order_by(pb.c.created_at.desc())
        ).mappings().first()
    return dict(row) if row else None


def choose(
    engine: Engine, model: str, version: str, window_end: datetime, cfg: EvaluateConfig,
    deps: list[dict] | None = None, pin: dict | None | bool = False,
) -> BaselineRef:
    """The baseline a (model, version) window ending at `window_end` is compared with."""
    deps = deployments(engine, model) if deps is None else deps
    window_end = as_utc(window_end)
    mine = next((d for d in deps if d["version"] == version), None)
    if mine is not None:
        since = window_end - mine["deployed_at"]
        before = [d for d in deps if d["deployed_at"] < mine["deployed_at"] and d["version"] != version]
        if before and timedelta(0) <= since <= timedelta(hours=cfg.previous_version_hours):
            prev = before[-1]
            at = mine["deployed_at"]
            return BaselineRef(
                "previous_version", f"{prev['version']}@{_iso(at)}", prev["version"],
                at - timedelta(hours=cfg.baseline_hours), at,
            )
    pin = active_pin(engine, model) if pin is False else pin
    if pin:
        return BaselineRef(
            "pinned", pin["name"], pin["version"] or ANY_VERSION,
            as_utc(pin["window_start"]), as_utc(pin["window_end"]),
        )
    end = _floor_hour(window_end - timedelta(hours=cfg.trailing_gap_hours))
    start = end - timedelta(hours=cfg.baseline_hours)
    return BaselineRef("trailing", f"trailing@{_iso(end)}", version, start, end)


# --- materialisation -------------------------------------------------------------------


def _merge_rows(engine: Engine, model: str, version: str, start: datetime, end: datetime) -> dict[SeriesKey, Sketch]:
    wa = t.window_aggregates
    conds = [wa.c.model == model, wa.c.bucket_start >= start, wa.c.bucket_start < end]
    if version != ANY_VERSION:
        conds.append(wa.c.version == version)
    out: dict[SeriesKey, Sketch] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(wa).where(*conds)).mappings():
            key = (row["cohort"], row["layer"], row["head"])
            s = Sketch.from_row(row)
            out[key] = out[key].merge(s) if key in out else s
    return out


def _store(engine: Engine, model: str, version: str, kind: str, ref: str, start: datetime,
           end: datetime, sketches: dict[SeriesKey, Sketch]) -> None:
    now = datetime.now(UTC)
    rows = []
    items = sketches.items() if sketches else [((_EMPTY, _EMPTY, _EMPTY), Sketch())]
    for (cohort, layer, head), s in items:
        r = s.to_row()
        rows.append(
            {
                "model": model, "version": version, "cohort": cohort, "layer": layer, "head": head,
                "kind": kind, "ref": ref, "window_start": start, "window_end": end,
                "n": r["n"], "rejected": r["rejected"],
                "sums": [float(x) for x in s.sums], "sumsq": [float(x) for x in s.sumsq],
                "payload": r["payload"], "computed_at": now,
            }
        )
    bs = t.baseline_sketches
    with engine.begin() as conn:
        # a concurrent builder of the same reference wrote the same sums: keep one
        conn.execute(delete(bs).where(bs.c.model == model, bs.c.version == version,
                                      bs.c.kind == kind, bs.c.ref == ref))
        conn.execute(bs.insert(), rows)


def _load(engine: Engine, model: str, version: str, kind: str, ref: str) -> dict[SeriesKey, Sketch] | None:
    bs = t.baseline_sketches
    with engine.connect() as conn:
        rows = conn.execute(
            select(bs).where(bs.c.model == model, bs.c.version == version, bs.c.kind == kind, bs.c.ref == ref)
        ).mappings().all()
    if not rows:
        return None
    out = {}
    for r in rows:
        if r["cohort"] == _EMPTY:
            continue
        s = Sketch.from_row({"payload": r["payload"], "n": r["n"], "rejected": r["rejected"],
                             **_sum_cols(r["sums"], r["sumsq"])})
        out[(r["cohort"], r["layer"], r["head"])] = s
    return out


def _sum_cols(sums, sumsq) -> dict[str, float]:
    from monitor.metrics import ALL_METRICS

    sums = json.loads(sums) if isinstance(sums, str) else sums
    sumsq = json.loads(sumsq) if isinstance(sumsq, str) else sumsq
    cols = {f"sum_{m}": v for m, v in zip(ALL_METRICS, sums, strict=True)}
    cols.update({f"sumsq_{m}": v for m, v in zip(ALL_METRICS, sumsq, strict=True)})
    return cols


class Baselines:
    """Materialised baselines, with an in-process cache for the daemon's cycles."""

    def __init__(self, engine: Engine, cfg: EvaluateConfig, cache_size: int = 64):
        self.engine, self.cfg = engine, cfg
        self._cache: dict[tuple, dict[SeriesKey, Sketch]] = {}
        self._cache_size = cache_size

    def get(self, model: str, ref: BaselineRef) -> dict[SeriesKey, Sketch]:
        key = (model, ref.kind, ref.ref, ref.version)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        got = _load(self.engine, model, ref.version, ref.kind, ref.ref)
        if got is None:
            got = self._build(model, ref)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = got
        return got

    def _build(self, model: str, ref: BaselineRef) -> dict[SeriesKey, Sketch]:
        if ref.kind != "trailing":
            got = _merge_rows(self.engine, model, ref.version, ref.start, ref.end)
        else:
            got = {}
            hour = ref.start
            while hour < ref.end:
                part = self._hour(model, ref.version, hour)
                for k, s in part.items():
                    got[k] = got[k].merge(s) if k in got else s
                hour += timedelta(hours=1)
        _store(self.engine, model, ref.version, ref.kind, ref.ref, ref.start, ref.end, got)
        return got

    def _hour(self, model: str, version: str, hour: datetime) -> dict[SeriesKey, Sketch]:
        ref = _iso(hour)
        got = _load(self.engine, model, version, "hour", ref)
        if got is None:
            got = _merge_rows(self.engine, model, version, hour, hour + timedelta(hours=1))
            _store(self.engine, model, version, "hour", ref, hour, hour + timedelta(hours=1), got)
        return got


def prune(engine: Engine, older_than: datetime) -> int:
    """Drop materialised trailing baselines and hour partials no cycle will read again."""
    bs = t.baseline_sketches
    with engine.begin() as conn:
        res = conn.execute(
            delete(bs).where(and_(bs.c.kind.in_(["trailing", "hour"]), bs.c.window_end < older_than))
        )
    return res.rowcount or 0


def sketch_std(s: Sketch) -> np.ndarray:
    """Per-metric standard deviation of the vectors a sketch summarises."""
    if s.n < 2:
        return np.full(len(s.sums), np.nan)
    mean = s.sums / s.n
    return np.sqrt(np.maximum(s.sumsq / s.n - mean * mean, 0.0))
