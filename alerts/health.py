"""Synthetic statistics: the monitor's own health, in the shape of drift_results rows.

Some things on-call must hear about are not drift: no data arriving, collectors
rejecting the input, notifications not getting through. The alert evaluator computes
these itself at each cycle, from the store, as rows shaped like drift_results rows
(never written there), so that rules, fingerprints, silences and routing treat them
like any other statistic:

| statistic | series | value | from |
| --- | --- | --- | --- |
| `health.no_data_minutes` | per model (`version="*"`) | minutes from the end of the newest minute of data with an accepted vector (of a rolled-up hour: its last served minute) to the window's end | window_aggregates |
| `health.rejected_ratio` | per model and version | rejected / (accepted + rejected) in the window; `n` = their sum | collector_health |
| `health.notifications_failed` | per receiver (label `receiver`) | notifications that failed for good in the last hour, plus pending ones that failed `FAILING_ATTEMPTS` times or more | notifications |

Cohort, layer and head are `"*"` and baseline_kind is `"none"`. A model silent for
longer than `NO_DATA_FORGET` counts as retired: it drops out (and its alert resolves).
`detail` feeds the templates: `{{detail.last_data}}`, `{{detail.reasons}}`,
`{{detail.top_reason}}`, `{{detail.last_error}}`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from monitor.store import tables as t
from monitor.store.maintenance import as_utc, served_minutes

NO_DATA = "health.no_data_minutes"
REJECTED = "health.rejected_ratio"
NOTIFICATIONS_FAILED = "health.notifications_failed"
STATISTICS = (NO_DATA, REJECTED, NOTIFICATIONS_FAILED)
NO_DATA_FORGET = timedelta(days=7)
FAILED_LOOKBACK = timedelta(hours=1)
FAILING_ATTEMPTS = 3
ROLLUP = "*"


def _row(statistic: str, value: float, *, model: str = ROLLUP, version: str = ROLLUP, n: int = 0,
         detail: dict | None = None, **extra: str) -> dict:
    return {"model": model, "version": version, "cohort": ROLLUP, "layer": ROLLUP, "head": ROLLUP,
            "baseline_kind": "none", "statistic": statistic, "value": float(value),
            "baseline_value": None, "n_current": n, "n_baseline": 0, "detail": detail, **extra}


def _data_end(conn: Connection, model: str, seconds: int, start: datetime) -> datetime:
    """The end of the last minute with data among `model`'s rows of the bucket at `start`.
    An hour row (`attnmon maintain` rolls minutes older than a few days up) ends with its
    last served minute (minute_mask), not the hour: a model silent since 3-7 days ago
    would otherwise read up to 59 minutes less silent once its last minutes roll up."""
    if seconds == 60:
        return start + timedelta(minutes=1)
    wa = t.window_aggregates
    masks = conn.execute(select(wa.c.minute_mask).where(
        wa.c.model == model, wa.c.bucket_seconds == seconds, wa.c.bucket_start == start)).scalars()
    minutes = [m for mask in masks for m in served_minutes(start, seconds, mask)]
    if not minutes:  # merged away since the newest bucket was read: the bucket's end
        return start + timedelta(seconds=seconds)
    return datetime.fromtimestamp(60 * (max(minutes) + 1), UTC)


def no_data(conn: Connection, window_end: datetime) -> list[dict]:
    wa, end = t.window_aggregates, as_utc(window_end)
    out = []
    for model in conn.execute(select(t.models.c.name).order_by(t.models.c.name)).scalars():
        # n > 0: a minute whose every request was rejected is no data (the monitor is
        # as blind as with none). The newest such bucket comes from the end of the
        # (model, bucket_start, version, n) index; grouping by bucket_seconds, which the
        # index lacks, read a table row per index entry: 6-10 s a cycle on SQLite with a
        # day of minute rows at 1,080 series.
        newest = conn.execute(select(func.max(wa.c.bucket_start)).where(
            wa.c.model == model, wa.c.bucket_start >= end - NO_DATA_FORGET, wa.c.bucket_start < end,
            wa.c.n > 0)).scalar()
        if newest is None:
            continue  # never sent data, or retired
        # an hour row and a minute row may start together: the hour's served minutes end later
        seconds = conn.execute(select(func.max(wa.c.bucket_seconds)).where(
            wa.c.model == model, wa.c.bucket_start == newest, wa.c.n > 0)).scalar()
        # (an hour row that starts earlier but holds later minutes than the newest minute
        # row needs a minute written days late, after its hour was rolled up: the next
        # maintenance merges it, and the model is days silent either way)
        last = min(_data_end(conn, model, seconds, as_utc(newest)), end)
        minutes = (end - last).total_seconds() // 60
        out.append(_row(NO_DATA, minutes, model=model, detail={"last_data": last.strftime("%Y-%m-%d %H:%M UTC")}))
    return out


def rejected_ratio(conn: Connection, window_start: datetime, window_end: datetime) -> list[dict]:
    ch = t.collector_health
    where = (ch.c.minute >= as_utc(window_start), ch.c.minute < as_utc(window_end))
    reasons: dict[tuple[str, str], Counter] = {}
    for model, version, by_reason in conn.execute(
        select(ch.c.model, ch.c.version, ch.c.rejected_by_reason).where(*where, ch.c.rejected > 0)
    ):
        reasons.setdefault((model, version), Counter()).update(by_reason or {})
    out = []
    q = (select(ch.c.model, ch.c.version, func.sum(ch.c.accepted), func.sum(ch.c.rejected))
         .where(*where).group_by(ch.c.model, ch.c.version).order_by(ch.c.model, ch.c.version))
    for model, version, accepted, rejected in conn.execute(q):
        n = int(accepted or 0) + int(rejected or 0)
        if n == 0:
            continue
        why = reasons.get((model, version), Counter())
        detail = {"reasons": ", ".join(f"{k} {v}" for k, v in why.most_common(5)) or "none",
                  "top_reason": why.most_common(1)[0][0] if why else "none",
                  "rejected": int(rejected or 0)}
        out.append(_row(REJECTED, int(rejected or 0) / n, model=model, version=version, n=n, detail=detail))
    return out


def notifications_failed(conn: Connection, now: datetime) -> list[dict]:
    nt = t.notifications
    failing = or_(
        and_(nt.c.status == "failed", nt.c.last_attempt_at >= as_utc(now) - FAILED_LOOKBACK),
        # (a row being retried is `sending` while the retry is in flight: it still counts)
        and_(nt.c.status.in_(("pending", "sending")), nt.c.attempts >= FAILING_ATTEMPTS),
    )
    counts = dict(conn.execute(select(nt.c.receiver, func.count()).where(failing).group_by(nt.c.receiver)).all())
    out = []
    for receiver in sorted(counts):
        last_error = conn.execute(
            select(nt.c.last_error).where(failing, nt.c.receiver == receiver)
            .order_by(nt.c.last_attempt_at.desc(), nt.c.id.desc()).limit(1)
        ).scalar()
        out.append(_row(NOTIFICATIONS_FAILED, counts[receiver], n=int(counts[receiver]),
                        detail={"last_error": last_error or ""}, receiver=receiver))
    return out


def health_rows(conn: Connection, window_start: datetime, window_end: datetime, now: datetime,
                wanted: tuple[str, ...] = STATISTICS) -> list[dict]:
    """The synthetic statistics of one cycle (only those in `wanted`)."""
    rows: list[dict] = []
    if NO_DATA in wanted:
        rows += no_data(conn, window_end)
    if REJECTED in wanted:
        rows += rejected_ratio(conn, window_start, window_end)
    if NOTIFICATIONS_FAILED in wanted:
        rows += notifications_failed(conn, now)
    return rows
