"""Deployments and alert transitions as Grafana annotations, posted once each.

The daemon's annotate job calls `annotate` every few minutes. What was posted is
recorded in `daemon_state` (one row per annotation, key `grafana.annotation.<hash>` of
the Grafana URL, the target dashboard and the event), so a restart, a second run or a
new leader posts nothing twice; rows older than the look-back are pruned.

Where they go: by default organisation-wide (no dashboard), tagged `attnmon`,
`deployment` or `alert`, `model:<m>`, `version:<v>`, so any team's dashboard can show
them with a tag-filtered annotation query. attnmon's own dashboards read deployments
and alerts straight from the store (SQL annotations, which follow a corrected
`deploy mark --at`); pass `dashboard_uid` to pin the annotations to one dashboard
instead (they then show through its built-in annotation query).

    >>> api = connect(url, load_token())                                   # doctest: +SKIP
    >>> annotate(engine, api, since=now - timedelta(days=7), grafana_url=url)  # doctest: +SKIP
    AnnotateResult(posted=2, already=0)
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from dashboards.client import call
from dashboards.spec import TAG
from monitor.store import tables as t
from monitor.store.maintenance import as_utc

KEY_PREFIX = "grafana.annotation."
ENDED = "ended"  # alerts.model.ENDED, the annotation of an alert that ended unfixed (no alerts/ import here)


@dataclass(frozen=True)
class Event:
    key: str  # what happened, stable across runs: "deployment:<model>:<version>:<time>"
    at: datetime
    tags: tuple[str, ...]
    text: str  # HTML-escaped: Grafana renders an annotation's text as (sanitised) HTML

    @property
    def epoch_ms(self) -> int:
        return int(as_utc(self.at).timestamp() * 1000)


@dataclass(frozen=True)
class AnnotateResult:
    posted: int
    already: int


def _deployments(conn, since: datetime, until: datetime | None) -> list[Event]:
    d = t.deployments
    q = select(d).where(d.c.deployed_at >= since)
    if until is not None:
        q = q.where(d.c.deployed_at < until)
    out = []
    for r in conn.execute(q).mappings():
        at = as_utc(r["deployed_at"])
        weights = f", weights {r['weights_id']}" if r["weights_id"] else ""
        out.append(Event(
            f"deployment:{r['model']}:{r['version']}:{at.isoformat()}",
            at,
            (TAG, "deployment", f"model:{r['model']}", f"version:{r['version']}"),
            html.escape(f"{r['model']} {r['version']} deployed ({r['source']}{weights})", quote=False),
        ))
    return out


def _alerts(conn, since: datetime, until: datetime | None) -> list[Event]:
    if not inspect(conn).has_table(t.alerts.name):
        return []  # a store from before the alerts migration
    a = t.alerts
    out = []
    rows = conn.execute(select(a).where((a.c.fired_at >= since) | (a.c.resolved_at >= since))).mappings()
    for r in rows:
        labels = r["labels"] or {}
        base = (TAG, "alert", r["severity"], r["rule"])
        base += tuple(f"{k}:{labels[k]}" for k in ("model", "version") if labels.get(k))
        series = ", ".join(f"{k}={labels[k]}" for k in ("version", "cohort", "layer", "head") if k in labels)
        summary = (r["annotations"] or {}).get("summary", "")
        # an alert whose comparison ended (alerts.model.ENDED) was not fixed: say so
        end = "ended" if r["state"] == "resolved" and (r["annotations"] or {}).get(ENDED) else "resolved"
        for state, when in (("firing", r["fired_at"]), (end, r["resolved_at"])):
            if when is None:
                continue
            at = as_utc(when)
            if at < since or (until is not None and at >= until):
                continue
            text = f"{r['rule']} {state} ({r['severity']}) [{series}]"
            if state == "firing" and summary:
                text += f": {summary}"
            elif state == "ended":
                text += ": not fixed, it is no longer compared with the baseline it fired against"
            out.append(Event(f"alert:{r['fingerprint']}:{state}:{at.isoformat()}", at, (*base, state),
                             html.escape(text, quote=False)))
    return out


def events(engine: Engine, since: datetime, until: datetime | None = None) -> list[Event]:
    """Deployments and alert transitions from `since` on, oldest first."""
    with engine.connect() as conn:
        found = _deployments(conn, since, until) + _alerts(conn, since, until)
    return sorted(found, key=lambda e: (e.at, e.key))


def _state_key(grafana_url: str, dashboard_uid: str | None, event: Event) -> str:
    digest = hashlib.sha256(f"{grafana_url.rstrip('/')}|{dashboard_uid or ''}|{event.key}".encode())
    return KEY_PREFIX + digest.hexdigest()[:40]


def annotate(engine: Engine, api, *, since: datetime, grafana_url: str,
             dashboard_uid: str | None = None, now: datetime | None = None,
             progress: Callable[[], object] = lambda: None) -> AnnotateResult:
    """Post each event from `since` on that this Grafana has not had yet; `progress()`
    after each (the daemon's /livez tells a long run from a stuck one)."""
    now = now or datetime.now(UTC)
    ds = t.daemon_state
    todo = [(e, _state_key(grafana_url, dashboard_uid, e)) for e in events(engine, since)]
    with engine.connect() as conn:
        done = set(conn.execute(select(ds.c.key).where(ds.c.key.like(KEY_PREFIX + "%"))).scalars())
    posted = 0
    for event, key in todo:
        if key in done:
            continue
        answer = call(
            "post annotation",
            api.annotations.add_annotation,
            dashboard_uid=dashboard_uid,
            time_from=event.epoch_ms,
            tags=list(event.tags),
            text=event.text,  # HTML-escaped: Grafana renders it as (sanitised) HTML
        )
        value = {"event": event.key, "id": (answer or {}).get("id"), "dashboard_uid": dashboard_uid}
        try:
            with engine.begin() as conn:
                conn.execute(ds.insert().values(key=key, value=json.dumps(value), updated_at=now))
        except IntegrityError:
            pass  # recorded by a concurrent run
        posted += 1
        progress()
    with engine.begin() as conn:
        # a row is written after its event, so rows older than the look-back are for
        # events that no later run will consider
        conn.execute(delete(ds).where(ds.c.key.like(KEY_PREFIX + "%"), ds.c.updated_at < since - timedelta(days=1)))
    return AnnotateResult(posted, len(todo) - posted)
