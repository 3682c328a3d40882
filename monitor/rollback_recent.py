"""The candidate's last minutes judged on their own (`rollback-check --recent`, default
rollback.RECENT): an on-call engineer runs the check when something just went wrong, and
30 minutes of a defect hide in 6 hours of good ones.

The window is compared with the same baseline by the same rules as the whole period
(`rollback._Sides.compare`, the heads paired as there); a reason only it shows says since
when, the minute the candidate's per-minute mean most likely changed (`stats.split_point`).
Its same-weights bar (a quarter SD times sqrt(1,000 / n) under 1,000 predictions) is
computed with the rule it belongs to, `rollback._same_weights_shift`, per head.

Built on monitor.rollback's comparison, which imports it only inside `check`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, select

from monitor import stats
from monitor.rollback import (
    COL,
    KEY0,
    MIN_MINUTES,
    MIN_PREDICTIONS,
    ROLLUP,
    SEVERITY,
    Comparison,
    Reason,
    _buckets,
    _count,
    _duration,
    _Sides,
    stopped_serving,
)
from monitor.store import tables as t
from monitor.store.maintenance import as_utc, rows_in


def recent_reasons(sides: _Sides, whole: Comparison, c_start: datetime, window: tuple[datetime, datetime],
                   since_deploy: bool = True) -> tuple[list[Reason], tuple[int, int], bool]:
    """What the candidate's last minutes show that its whole period does not: a defect that
    began after the deployment is averaged away over hours of good minutes.

    Judged by the same rules, the heads paired as over the whole period. With fewer than
    MIN_PREDICTIONS predictions (over at least MIN_MINUTES minutes), only the figures with
    a bootstrap interval count, as warnings: the others (positions, top items, attribute
    shares) move with the sample size alone. Also returns its predictions and minutes, and
    whether it was judged (if not, the one reason is an info one saying why). `since_deploy`:
    the whole period starts at the deployment (else at --since)."""
    r_start, now = window
    rb, r_min = _buckets(sides.engine, sides.model, sides.candidate, r_start, now)
    n, minutes = _count(rb), r_min.get(KEY0, 0)
    full = n >= MIN_PREDICTIONS and minutes >= MIN_MINUTES
    span = f"the last {_duration(now - r_start)}"
    if n == 0 and (stopped := stopped_serving(sides.engine, sides.model, sides.candidate, r_start, now)):
        return [_not_judged(span, r_start, f"the candidate has served nothing since {stopped}")], (0, 0), False
    if n == 0 or minutes < MIN_MINUTES:
        return [_not_judged(span, r_start, f"the candidate has {n:,} predictions over {minutes} minutes there; "
                            f"judging them needs {MIN_MINUTES} minutes with traffic")], (n, minutes), False
    cmp = sides.compare(window, rb, r_min, need=MIN_PREDICTIONS if full else 1, pairs=whole.matching)
    if not cmp.judged:
        why = next((r.text for r in cmp.reasons if r.kind == "data"), "too little data")
        return [_not_judged(span, r_start, why)], (n, minutes), False
    shown = {}
    for r in whole.reasons:
        key = (r.kind, r.series, r.metric)
        shown[key] = min(shown.get(key, 9), SEVERITY[r.severity])
    period = _duration(now - c_start) + (" since the deploy" if since_deploy else
                                         f" since {c_start:%Y-%m-%d %H:%M} UTC (--since)")
    out = []
    for r in cmp.reasons:
        if r.severity == "info" or r.kind == "data" or (not full and r.ci is None):
            continue
        before = shown.get((r.kind, r.series, r.metric), 9)
        if before <= SEVERITY[r.severity]:
            continue  # the whole period already says it
        onset = _onset(sides, r, c_start, now)
        when = f"since about {onset:%Y-%m-%d %H:%M} UTC" if onset else f"since {r_start:%Y-%m-%d %H:%M} UTC"
        shows = "it does not show" if before == 9 else f"it is only {'a warning' if before == 1 else 'info'}"
        text = f"recent change, {when} ({span} judged on their own): {r.text}; averaged over the whole {period} {shows}"
        if not full:
            text += (f" — only {n:,} predictions over {minutes} minutes in {span}, too few to tell "
                     f"(a verdict needs {MIN_PREDICTIONS:,})")
        out.append(replace(r, severity=r.severity if full else "warning", text=text, window="recent"))
    return out, (n, minutes), True


def _not_judged(span: str, r_start: datetime, why: str) -> Reason:
    return Reason("info", "data", "all", "predictions", None, None, None,
                  f"{span} (since {r_start:%Y-%m-%d %H:%M} UTC) not judged on their own: {why}", window="recent")


# a series as _where and _head_reasons name it; a cohort, last, may hold spaces ("smart tv")
_SERIES = re.compile(r"layer (?P<layer>\S+)(?: head (?P<head>\S+)| all heads averaged)?(?:, cohort (?P<cohort>.+))?")


def _onset(sides: _Sides, r: Reason, c_start: datetime, now: datetime) -> datetime | None:
    """When the candidate's per-minute mean of the reason's metric (recency5 for a position
    profile) most likely changed since its deployment (`stats.split_point`); None for
    figures without per-minute means (top items, attribute shares)."""
    metric = "recency5" if r.metric == "position_profile" else r.metric
    m = _SERIES.match(r.series)
    if metric not in COL or m is None:
        return None
    wa = t.window_aggregates
    where = (wa.c.model == sides.model, wa.c.version == sides.candidate, wa.c.cohort == (m["cohort"] or ROLLUP),
             wa.c.layer == m["layer"], wa.c.head == (m["head"] or ROLLUP), *rows_in(c_start, now))
    q = (select(wa.c.bucket_start, func.sum(wa.c.n), func.sum(wa.c[f"sum_{metric}"])).where(*where)
         .group_by(wa.c.bucket_start).order_by(wa.c.bucket_start))
    with sides.engine.connect() as conn:
        rows = conn.execute(q).all()
    k = stats.split_point([float(s or 0) for _, _, s in rows], [float(n or 0) for _, n, _ in rows])
    return None if k is None else max(as_utc(rows[k][0]), c_start)
