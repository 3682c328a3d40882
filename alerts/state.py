"""The alert state machine, Prometheus' semantics, as pure functions over small dataclasses.

Per rule and series, after each evaluation cycle at time `now` (the end of the evaluated
window, so that a catch-up replays exactly what a live run would have done):

    inactive ──true──> pending ──true for `for`──> firing ──false for `keep_firing_for`──> resolved
        ^                 │                          (a true cycle restarts that clock)        │
        └──── false ──────┘ dropped without notice          true again: a new incident ────┘
                                                            (pending, or firing if for = 0)

`keep_firing_for` is what stops flapping storms: a condition that alternates every
cycle keeps the alert firing, and it resolves once, `keep_firing_for` after the last
true cycle. Only the transitions to firing and to resolved notify anyone.

A firing alert whose series is now compared with another baseline (its `baseline_kind`
label: a version's `previous_version` or `retrain` comparison ends a day after its
deploy, a pin is removed) was not judged false: nobody looked. It ends at once, as a
resolve whose `ended` annotation (alerts.model.ENDED) says it was not fixed, so that
on-call is not told the change went away when only the comparison did.

    >>> rows = [{"model": "m", "version": "v2", "cohort": "*", "layer": "1", "head": "2",
    ...          "baseline_kind": "trailing", "statistic": "delta.entropy_norm",
    ...          "value": -3.0, "baseline_value": 0.0, "n_current": 900, "n_baseline": 9000}]
    >>> step = evaluate(rules, observations(rules, rows), {}, now)   # doctest: +SKIP
    >>> step.transitions                                # firing at once when for = 0  # doctest: +SKIP

No SQL here: alerts/cycle.py loads and stores what this decides.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from alerts import template
from alerts.model import ENDED, OBSERVED
from alerts.rules import LABELS, Rule

State = Literal["inactive", "pending", "firing", "resolved"]
ACTIVE: tuple[State, ...] = ("pending", "firing")
SERIES_LABELS = (*LABELS, "statistic")  # what identifies a series' result, with its statistic
EXTRA_SERIES_LABELS = ("receiver",)  # synthetic health statistics may add these


def fingerprint(rule: str, series: Mapping[str, str]) -> str:
    """16 hex digits, stable across processes and versions: the rule's name and the
    series' labels (sorted), never anything that changes while the alert lives."""
    canon = json.dumps({"rule": rule, "series": {k: str(v) for k, v in sorted(series.items())}},
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Observation:
    """A result row that crosses a rule's threshold in this cycle."""

    rule: Rule
    series: Mapping[str, str]  # model, version, cohort, layer, head, baseline_kind, statistic (+ receiver)
    value: float
    baseline_value: float | None
    n: int = 0
    n_baseline: int = 0
    detail: Mapping[str, object] | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    means: tuple[float, float] | None = None  # (window, baseline) of the statistic's metric, from mean.*

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule.name, self.series)


@dataclass(frozen=True)
class Phase:
    state: State = "inactive"
    active_at: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    last_true_at: datetime | None = None


def next_phase(p: Phase, holds: bool, now: datetime, for_: timedelta, keep_firing_for: timedelta) -> Phase:
    """One cycle of the state machine. Pure; the heart of the module."""
    if holds:
        if p.state in ("inactive", "resolved"):  # a new incident
            p = Phase("pending", active_at=now, last_true_at=now)
        else:
            p = replace(p, last_true_at=now)
        if p.state == "pending" and now - p.active_at >= for_:
            p = replace(p, state="firing", fired_at=now)
        return p
    if p.state == "pending":
        return replace(p, state="inactive")  # dropped without notice
    if p.state == "firing" and (p.last_true_at is None or now - p.last_true_at >= keep_firing_for):
        return replace(p, state="resolved", resolved_at=now)
    return p


@dataclass(frozen=True)
class AlertState:
    """A row of the `alerts` table."""

    fingerprint: str
    rule: str
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    phase: Phase
    value: float | None = None
    baseline_value: float | None = None
    last_eval_at: datetime | None = None

    @property
    def state(self) -> State:
        return self.phase.state


@dataclass(frozen=True)
class Transition:
    kind: Literal["firing", "resolved"]
    alert: AlertState  # as it is after the transition
    at: datetime


@dataclass(frozen=True)
class Step:
    """What one cycle changed: every alert touched (to be stored) and the transitions."""

    alerts: tuple[AlertState, ...] = ()
    transitions: tuple[Transition, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)  # state -> alerts touched


def labels_for(rule: Rule, series: Mapping[str, str]) -> dict[str, str]:
    """alertname and severity, the series labels, then the rule's own labels (which
    may add to but not override alertname and severity)."""
    out = {k: str(v) for k, v in series.items()}
    out.update({k: str(v) for k, v in rule.labels.items()})
    out["alertname"] = rule.name
    out["severity"] = rule.severity
    return out


def annotate(rule: Rule, obs: Observation, labels: Mapping[str, str], active_at: datetime | None,
             external_url: str | None, runbook_url: str | None = None) -> dict[str, str]:
    """The rule's annotations rendered for this series, with what attnmon adds: `observed`,
    `dashboard` (with an external URL) and `runbook_url` (unless the rule has its own)."""
    change = None
    if obs.baseline_value is not None and math.isfinite(obs.value):
        change = obs.value - obs.baseline_value
    ctx: dict[str, object] = {
        **labels, "series": template.series_text(labels), "value": obs.value,
        "baseline_value": obs.baseline_value, "change": change, "n": obs.n,
        "n_baseline": obs.n_baseline, "window_start": obs.window_start,
        "window_end": obs.window_end, "detail": obs.detail,
    }
    out = {k: template.render(v, ctx) for k, v in rule.annotations.items()}
    if obs.means is not None and OBSERVED not in out:
        out[OBSERVED] = observed_text(obs.series["statistic"], *obs.means)
    if external_url:
        out["dashboard"] = template.dashboard_url(external_url, labels, active_at, dashboard=rule.dashboard)
    if runbook_url and "runbook_url" not in out:
        out["runbook_url"] = runbook_url
    return out


def observed_text(statistic: str, cur: float, base: float) -> str:
    """What the statistic's metric did: "entropy_norm fell from 0.824 to 0.311", with as
    many digits as it takes to tell the two apart (a -3 SD move of a steady head can be
    in the fourth digit: "fell from 0.824 to 0.824" said nothing moved)."""
    metric = statistic.partition(".")[2]
    if cur == base:
        return f"{metric} stayed at {template.fmt(cur)}"
    a, b = template.fmt(base), template.fmt(cur)
    for digits in range(4, 16):
        if a != b:
            break
        a, b = f"{base:,.{digits}g}", f"{cur:,.{digits}g}"
    return f"{metric} {'fell' if cur < base else 'rose'} from {a} to {b}"


_WITH_MEAN = ("delta.", "psi.")


def mean_of(statistic: str) -> str | None:
    """The mean.* statistic beside a delta.* or psi.* one."""
    return f"mean.{statistic.partition('.')[2]}" if statistic.startswith(_WITH_MEAN) else None


def observations(rules: Iterable[Rule], rows: Iterable[Mapping[str, object]],
                 window: tuple[datetime, datetime] | None = None) -> dict[str, Observation]:
    """Rows (drift_results or synthetic health statistics) that cross a rule, by fingerprint."""
    rows = list(rows)
    stats = {str(r["statistic"]) for r in rows}
    means = {_mean_key(r): (float(r["value"]), float(r["baseline_value"])) for r in rows
             if str(r["statistic"]).startswith("mean.") and r.get("baseline_value") is not None
             and math.isfinite(float(r["value"])) and math.isfinite(float(r["baseline_value"]))}
    out: dict[str, Observation] = {}
    for rule in rules:
        wanted = {s for s in stats if fnmatch.fnmatchcase(s, rule.statistic)}
        if not wanted:
            continue
        for r in rows:
            if r["statistic"] not in wanted:
                continue
            labels = {k: str(r[k]) for k in SERIES_LABELS}
            labels.update({k: str(r[k]) for k in EXTRA_SERIES_LABELS if r.get(k) is not None})
            if not rule.applies(labels["statistic"], labels):
                continue
            value = float(r["value"])
            base = r.get("baseline_value")
            base = None if base is None else float(base)
            if not math.isfinite(value) or not rule.crosses(value, base, int(r.get("n_current") or 0)):
                continue
            obs = Observation(
                rule, labels, value, base, int(r.get("n_current") or 0), int(r.get("n_baseline") or 0),
                r.get("detail") if isinstance(r.get("detail"), Mapping) else None,
                *(window or (None, None)),
                means.get(_mean_key({**r, "statistic": mean_of(labels["statistic"])})),
            )
            out[obs.fingerprint] = obs
    return out


def _mean_key(row: Mapping[str, object]) -> tuple:
    return tuple(str(row.get(k, "")) for k in SERIES_LABELS)


def _compared_key(labels: Mapping[str, object]) -> tuple:
    return tuple(str(labels.get(k, "")) for k in (*SERIES_LABELS, *EXTRA_SERIES_LABELS) if k != "baseline_kind")


def comparisons(rows: Iterable[Mapping[str, object]]) -> dict[tuple, frozenset[str]]:
    """The baseline kinds each series' statistic was compared with in a cycle's rows."""
    out: dict[tuple, set[str]] = {}
    for r in rows:
        out.setdefault(_compared_key(r), set()).add(str(r.get("baseline_kind", "")))
    return {k: frozenset(v) for k, v in out.items()}


DEPLOY_KINDS = frozenset({"previous_version", "retrain"})  # a version's first day: the one it replaced
_DEPLOY_ENDED = ("the comparison with the version it replaced ended (it lasts the first "
                 "evaluate.previous_version_hours after a deploy)")
_WHY = {**dict.fromkeys(DEPLOY_KINDS, _DEPLOY_ENDED),
        "pinned": "the pinned baseline it fired against is no longer used (unpinned or replaced)"}


def ended_text(kind: str, now_kinds: Iterable[str], last_true_at: datetime | None) -> str:
    """What an alert that ended unresolved tells on-call."""
    why = _WHY.get(kind, f"this series is no longer compared with its {kind} baseline")
    instead = " and ".join(sorted(now_kinds))
    if kind in DEPLOY_KINDS and set(now_kinds) == DEPLOY_KINDS - {kind}:  # still the same comparison, re-marked
        marked = "the same weights as" if kind == "retrain" else "other weights than"
        why = f"its deploy was marked as {marked} the version it replaced (attnmon deploy mark --weights-id)"
    own = (" (the version's own recent traffic: a change present since the deploy does not show in it)"
           if kind in DEPLOY_KINDS and instead == "trailing" else "")
    last = f" It last held at {last_true_at:%Y-%m-%d %H:%M} UTC." if last_true_at is not None else ""
    return (f"Not fixed: {why}; the series is now compared with the {instead} baseline{own}.{last} "
            "Nothing says the change went away: roll back, or close the incident by hand if it was intended.")


def _link_until(alert: AlertState, rule: Rule | None, external_url: str, end: datetime) -> AlertState:
    """The alert with a dashboard link that ends after `end` (its resolve), not at now:
    opened later, it still shows the incident."""
    dashboard = rule.dashboard if rule is not None else template.dashboard_of(alert.annotations.get("dashboard"))
    link = template.dashboard_url(external_url, alert.labels, alert.phase.active_at, until=end,
                                  dashboard=dashboard or "overview")
    return replace(alert, annotations={**alert.annotations, "dashboard": link})


def evaluate(rules: Iterable[Rule], seen: Mapping[str, Observation], prior: Mapping[str, AlertState],
             now: datetime, *, external_url: str | None = None,
             compared: Mapping[tuple, frozenset[str]] | None = None,
             runbook_urls: Mapping[str, str] | None = None) -> Step:
    """One cycle at `now`: the observations that hold (from `observations`) and the
    alerts as they were.

    `prior` holds at least every pending or firing alert and any alert in `seen`. A
    series not in `seen` counts as false; so does every series of a rule removed from
    the pack (its alerts resolve at once). `compared` (from `comparisons` on the cycle's
    rows) says which baselines each series was compared with: a firing alert whose series
    was compared, but not with its own baseline, ends (see the module's docstring).
    `runbook_urls` (rule name -> URL: alerts.rules.runbook_urls) links a rule's runbook.
    """
    compared = compared or {}
    runbook_urls = runbook_urls or {}
    rules = list(rules)
    by_name = {r.name: r for r in rules}
    touched: list[AlertState] = []
    transitions: list[Transition] = []
    for fp in sorted(set(seen) | {fp for fp, a in prior.items() if a.state in ACTIVE}):
        before, obs = prior.get(fp), seen.get(fp)
        rule = obs.rule if obs is not None else by_name.get(before.rule)
        if rule is not None:
            for_, keep = rule.for_, rule.keep_firing_for
        else:
            for_, keep = timedelta(0), timedelta(0)
        old = before.phase if before is not None else Phase()
        phase = next_phase(old, obs is not None, now, for_, keep)
        kinds = compared.get(_compared_key(before.labels)) if obs is None and before is not None else None
        if kinds and old.state == "firing" and rule is not None and before.labels.get("baseline_kind") not in kinds:
            phase = replace(old, state="resolved", resolved_at=now)
            why = ended_text(str(before.labels.get("baseline_kind")), kinds, old.last_true_at)
            alert = replace(before, annotations={**before.annotations, ENDED: why}, phase=phase, last_eval_at=now)
        elif obs is not None:
            labels = labels_for(rule, obs.series)
            alert = AlertState(fp, rule.name, rule.severity, labels,
                               annotate(rule, obs, labels, phase.active_at, external_url,
                                        runbook_urls.get(rule.name)),
                               phase, obs.value, obs.baseline_value, now)
        else:  # keeps what it said when it last held
            alert = replace(before, phase=phase, last_eval_at=now)
        if phase.state == "resolved" and old.state == "firing" and external_url:
            alert = _link_until(alert, rule, external_url, now)
        touched.append(alert)
        if phase.state == "firing" and old.state != "firing":
            transitions.append(Transition("firing", alert, now))
        elif phase.state == "resolved" and old.state == "firing":
            transitions.append(Transition("resolved", alert, now))
    counts: dict[str, int] = {}
    for a in touched:
        counts[a.state] = counts.get(a.state, 0) + 1
    return Step(tuple(touched), tuple(transitions), counts)
