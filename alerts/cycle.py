"""After an evaluation cycle: load, decide (alerts/state.py), store, enqueue — in one transaction.

    >>> evaluate_alerts(engine, rules, config.alerts, window_start, window_end, now)  # doctest: +SKIP
    AlertCycle(window_end=..., evaluated=True, transitions=(...), enqueued=3)

The rows of the window (drift_results at its end, plus the synthetic health statistics
of alerts/health.py) go through the state machine at `window_end`; the alerts it
touched, the outbox rows of its transitions and the alerts watermark (`daemon_state`
key `alerts.watermark`) commit together. A window at or before the watermark was
evaluated already: a second call (the daemon re-running a window after a crash) does
nothing, so nothing is ever enqueued twice. Two calls at once (a woken ex-leader beside
the new leader) take turns: the watermark row is locked from the check to the commit
(PostgreSQL: `FOR UPDATE`; SQLite: the write lock, taken by the claim), so the second
finds the window done. The window's rows are read before that, in a transaction of their
own, so that SQLite's write lock is held for the decisions and writes only.

A window more than `OUTAGE_TOLERANCE` after the watermark (windows skipped, e.g. a daemon
down past `evaluate.catchup_max_windows`) restarts the `for` clock of pending alerts, as
Prometheus' `rules.alert.for-outage-tolerance` does: `for` means true at every cycle, and
nobody looked in between. Firing alerts keep their state (and resolve if now false).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from alerts import health, outbox
from alerts.config import AlertsConfig
from alerts.rules import Rule, runbook_urls
from alerts.state import (
    ACTIVE,
    AlertState,
    Phase,
    Transition,
    comparisons,
    evaluate,
    mean_of,
    observations,
)
from monitor.store import tables as t
from monitor.store.maintenance import as_utc
from monitor.store.upsert import insert, put_state

WATERMARK_KEY = "alerts.watermark"
OUTAGE_TOLERANCE = timedelta(hours=1)  # Prometheus' default for-outage-tolerance
_DRIFT = ("model", "version", "cohort", "layer", "head", "baseline_kind", "statistic", "value",
          "baseline_value", "n_current", "n_baseline", "detail")


@dataclass(frozen=True)
class AlertCycle:
    window_end: datetime
    evaluated: bool  # False: this window had been evaluated already
    transitions: tuple[Transition, ...] = ()
    enqueued: int = 0  # new outbox rows


def _watermark(conn: Connection) -> datetime | None:
    ds = t.daemon_state
    value = conn.execute(select(ds.c.value).where(ds.c.key == WATERMARK_KEY)).scalar()
    return as_utc(datetime.fromisoformat(value)) if value else None


def _claim_watermark(conn: Connection, now: datetime) -> datetime | None:
    """The watermark, its row locked until this transaction ends. The row is made first
    when missing (as "": no watermark), so that a new store has a row to lock too; on
    SQLite that insert (a write, even when it inserts nothing) takes the write lock."""
    ds = t.daemon_state
    missing = insert(conn, ds, "daemon_state").values(key=WATERMARK_KEY, value="", updated_at=now)
    conn.execute(missing.on_conflict_do_nothing(index_elements=[ds.c.key]))
    value = conn.execute(select(ds.c.value).where(ds.c.key == WATERMARK_KEY).with_for_update()).scalar()
    return as_utc(datetime.fromisoformat(value)) if value else None


def _set_watermark(conn: Connection, end: datetime, now: datetime) -> None:
    put_state(conn, WATERMARK_KEY, as_utc(end).isoformat(timespec="seconds"), now, only_forward=True)


def read_watermark(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return _watermark(conn)


def _rows(conn: Connection, rules: list[Rule], window_end: datetime, window_start: datetime,
          now: datetime) -> list[dict]:
    dr = t.drift_results
    stats = conn.execute(select(dr.c.statistic).where(dr.c.window_end == window_end).distinct()).scalars().all()
    wanted = [s for s in stats if any(fnmatch.fnmatchcase(s, r.statistic) for r in rules)]
    # the mean.* rows beside delta.* and psi.* ones: what the metric did (state.observations)
    wanted += sorted({m for s in wanted if (m := mean_of(s)) in stats} - set(wanted))
    rows: list[dict] = []
    for i in range(0, len(wanted), 500):
        q = select(*[dr.c[c] for c in _DRIFT]).where(dr.c.window_end == window_end,
                                                     dr.c.statistic.in_(wanted[i : i + 500]))
        rows += [dict(r) for r in conn.execute(q).mappings()]
    synthetic = tuple(s for s in health.STATISTICS if any(fnmatch.fnmatchcase(s, r.statistic) for r in rules))
    if synthetic:
        rows += health.health_rows(conn, window_start, window_end, now, synthetic)
    return rows


def _state_of(r) -> AlertState:
    ts = {k: as_utc(r[k]) if r[k] is not None else None
          for k in ("active_at", "fired_at", "resolved_at", "last_true_at", "last_eval_at")}
    phase = Phase(r["state"], ts["active_at"], ts["fired_at"], ts["resolved_at"], ts["last_true_at"])
    return AlertState(r["fingerprint"], r["rule"], r["severity"], dict(r["labels"]), dict(r["annotations"]),
                      phase, r["value"], r["baseline_value"], ts["last_eval_at"])


def _prior(conn: Connection, fingerprints: Iterable[str]) -> dict[str, AlertState]:
    al = t.alerts
    fps = sorted(fingerprints)
    out = {r["fingerprint"]: _state_of(r) for r in conn.execute(select(al).where(al.c.state.in_(ACTIVE))).mappings()}
    for i in range(0, len(fps), 500):
        q = select(al).where(al.c.fingerprint.in_(fps[i : i + 500]), al.c.state.not_in(ACTIVE))
        out.update({r["fingerprint"]: _state_of(r) for r in conn.execute(q).mappings()})
    return out


def _values(a: AlertState) -> dict:
    p = a.phase
    return {
        "rule": a.rule, "severity": a.severity, "labels": dict(a.labels), "annotations": dict(a.annotations),
        "state": p.state, "value": outbox._num(a.value), "baseline_value": outbox._num(a.baseline_value),
        "active_at": p.active_at, "fired_at": p.fired_at, "resolved_at": p.resolved_at,
        "last_true_at": p.last_true_at, "last_eval_at": a.last_eval_at,
    }


def evaluate_alerts(engine: Engine, rules: Iterable[Rule], config: AlertsConfig, window_start: datetime,
                    window_end: datetime, now: datetime | None = None) -> AlertCycle:
    """Alert states after the window ending `window_end`; `now` (default: window_end) is
    when this runs, for the outbox's due times and the notification health statistic."""
    rules = list(rules)
    start, end = as_utc(window_start), as_utc(window_end)
    now = as_utc(now) if now is not None else end
    # the window's rows are read before the watermark is claimed: on SQLite the claim
    # takes the write lock, and the reads can take seconds (health.no_data on days of
    # minute rows) that collectors would wait, then fail after busy_timeout
    with engine.connect() as conn:
        wm = _watermark(conn)
        if wm is not None and end <= wm:
            return AlertCycle(end, False)
        rows = _rows(conn, rules, end, start, now)
    seen = observations(rules, rows, (start, end))
    with engine.begin() as conn:
        wm = _claim_watermark(conn, now)
        if wm is not None and end <= wm:
            return AlertCycle(end, False)
        prior = _prior(conn, seen)
        if wm is not None and end - wm > OUTAGE_TOLERANCE:  # unevaluated windows: `for` starts over
            prior = {fp: replace(a, phase=Phase()) if a.state == "pending" else a for fp, a in prior.items()}
        step = evaluate(rules, seen, prior, end, external_url=config.external_url, compared=comparisons(rows),
                        runbook_urls=runbook_urls(config.runbook_base_url))
        al = t.alerts
        for a in step.alerts:
            if a.fingerprint in prior:
                conn.execute(update(al).where(al.c.fingerprint == a.fingerprint).values(**_values(a)))
            else:
                conn.execute(al.insert().values(fingerprint=a.fingerprint, **_values(a)))
        enqueued = outbox.enqueue(conn, step.transitions, config.route, now)
        _set_watermark(conn, end, now)
    return AlertCycle(end, True, step.transitions, enqueued)
