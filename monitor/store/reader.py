"""Reading the store back, for notebooks, scripts and the jobs.

`Store.summary` adds up the per-metric sums of the sketch rows in SQL, so a week costs
what a minute costs and the means are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from monitor.metrics import ALL_METRICS
from monitor.sketch import Sketch
from monitor.store import tables as t
from monitor.store.engine import make_engine
from monitor.store.maintenance import as_utc

LABELS = ("version", "cohort", "layer", "head")
ROLLUP = "*"


class Store:
    """A handle on the store at `url` (any SQLAlchemy URL).

    >>> store = Store("sqlite:///attnmon.db")
    >>> store.summary(model="sasrec", by=["version", "layer", "head"])
    """

    def __init__(self, url: str | None = None, *, engine=None):
        if engine is None:
            if url is None:
                raise ValueError("Store needs a url or an engine")
            engine = make_engine(url)
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _where(self, model, start, end, by, filters):
        wa = t.window_aggregates
        conds = [wa.c.model == model]
        if start is not None:
            conds.append(wa.c.bucket_start >= _utc(start, "start"))
        if end is not None:
            conds.append(wa.c.bucket_start < _utc(end, "end"))
        for label in LABELS:
            value = filters.get(label)
            if value is not None:
                conds.append(wa.c[label] == str(value))
            elif label in ("cohort", "head"):
                # roll-ups are their own rows: group over the concrete values, or read
                # the roll-up when the label is not asked for (never both: no double count)
                conds.append(wa.c[label] != ROLLUP if label in by else wa.c[label] == ROLLUP)
        return conds

    def summary(
        self,
        model: str,
        start: datetime | None = None,
        end: datetime | None = None,
        by: Sequence[str] = ("version", "layer", "head"),
        **filters: str | int | None,
    ) -> pd.DataFrame:
        """One row per group of `by` (any of version, cohort, layer, head) with `n`,
        `rejected` and the mean of every metric, from the sketches in [start, end). A
        group whose every request was rejected has n 0 and NaN means.

        A label not in `by` reads its roll-up: cohort "*" (all cohorts) and head "*"
        (the layer's head-averaged attention, which also carries head_diversity).
        Pass `cohort="mobile"`, `head="*"`, ... to pick values explicitly.
        """
        by = _labels(by, filters)
        wa = t.window_aggregates
        cols = [wa.c[b] for b in by]
        aggs = [func.sum(wa.c.n).label("n"), func.sum(wa.c.rejected).label("rejected")]
        aggs += [func.sum(wa.c[f"sum_{m}"]).label(m) for m in ALL_METRICS]
        q = select(*cols, *aggs).where(*self._where(model, start, end, by, filters))
        if cols:
            q = q.group_by(*cols).order_by(*cols)
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(q).mappings().all(), columns=[*by, "n", "rejected", *ALL_METRICS])
        df["n"] = df["n"].fillna(0).astype("int64")
        df["rejected"] = df["rejected"].fillna(0).astype("int64")
        # a group whose every request was rejected stays, with NaN means: it is news
        df = df[(df["n"] > 0) | (df["rejected"] > 0)].reset_index(drop=True)
        n = df["n"].where(df["n"] > 0).astype(float)
        for m in ALL_METRICS:
            df[m] = df[m].astype(float) / n
        if "head" in by:  # per-head series carry no head_diversity
            df.loc[df["head"] != ROLLUP, "head_diversity"] = np.nan
        return df

    def sketches(
        self,
        model: str,
        start: datetime | None = None,
        end: datetime | None = None,
        by: Sequence[str] = LABELS,
        **filters: str | int | None,
    ) -> dict[tuple, Sketch]:
        """Merged sketches per group of `by`, for the statistics that need histograms,
        position profiles or top-K summaries."""
        by = _labels(by, filters)
        wa = t.window_aggregates
        q = select(wa).where(*self._where(model, start, end, by, filters))
        out: dict[tuple, Sketch] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                key = tuple(row[b] for b in by)
                s = Sketch.from_row(row)
                out[key] = out[key].merge(s) if key in out else s
        return out


def _labels(by: Sequence[str] | str, filters: dict) -> tuple[str, ...]:
    """`by` as a tuple (one label may be given as a string), checked with the filters: a
    misspelt filter would otherwise read every value of its label."""
    by = (by,) if isinstance(by, str) else tuple(by)
    names = ", ".join(LABELS)
    for b in by:
        if b not in LABELS:
            raise ValueError(f"by={b!r}: not a label (labels: {names})")
    for k in filters:
        if k not in LABELS:
            raise ValueError(f"{k}={filters[k]!r}: not a label to filter on (labels: {names})")
    return by


def _utc(ts: datetime, name: str) -> datetime:
    """The store holds UTC: an aware time is converted, a naive one taken as UTC (SQLite
    would compare an aware time's own fields, PostgreSQL a naive one in its session zone)."""
    if not isinstance(ts, datetime):
        raise ValueError(f"{name}={ts!r}: must be a datetime")
    return as_utc(ts)
