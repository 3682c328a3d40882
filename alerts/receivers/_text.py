"""What a person reads at 3 a.m., shared by Slack, email and PagerDuty: what fired, where,
the value against its baseline, since when (UTC), the runbook, the links and the
`attnmon alerts silence` command that silences the group.

    >>> d = digest(notification, now=datetime.now(UTC))
    >>> d.title
    'FIRING: AttentionEntropyCollapse (critical), 3 series'
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from alerts.model import OBSERVED, AlertView, Notification
from alerts.template import dashboard_of, dashboard_url, fmt
from monitor.errors import ConfigError

# the series labels, in the order a person scans them; other labels follow, sorted
LABEL_ORDER = ("model", "version", "cohort", "layer", "head", "statistic", "baseline_kind")
_NOT_WHERE = {"alertname", "severity"}
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
MAX_SERIES = 10
LAST_SEEN = "last seen firing: "  # before a resolved series' value: it is not the current one
MAX_RUNBOOK = 1500  # the whole runbook: its first sentence restates the "what", the action follows


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Digest:
    status: str  # "firing" | "resolved" | "ended" (a resolve that fixed nothing: alerts.model.ENDED)
    rule: str  # the rule, or rules joined by ", " when a group mixes them
    severity: str  # the group's worst
    count: int
    what: str
    where: str  # the labels every series shares, "model=sasrec version=v42"
    series: tuple[str, ...]  # one line per series: its own labels, value vs baseline
    more: int  # series left out of `series`
    since: str
    runbook: str | None  # the runbook, up to MAX_RUNBOOK characters
    runbook_url: str | None
    dashboard_url: str | None
    ended: str | None = None  # why it ended unresolved, when status is "ended"
    silence: str | None = None  # the command line that silences the group, while it fires

    @property
    def title(self) -> str:
        n = f", {self.count} series" if self.count != 1 else ""
        status = "ENDED, NOT FIXED" if self.status == "ended" else self.status.upper()
        return f"{status}: {self.rule} ({self.severity}){n}"


def digest(n: Notification, *, now: datetime, max_series: int = MAX_SERIES) -> Digest:
    alerts = n.alerts
    common = n.common_labels
    annotations = n.common_annotations
    first = worst_first(alerts)[0] if alerts else None
    rules = list(dict.fromkeys(a.rule for a in alerts))
    severity = min((a.severity for a in alerts), key=lambda s: _SEVERITY_RANK.get(s, 9), default="")
    where = labels_text({k: v for k, v in common.items() if k not in _NOT_WHERE})

    if "summary" in annotations:
        what = annotations["summary"]
    elif len(alerts) == 1 and first is not None:
        what = first.annotations.get("summary", first.rule)
    elif first is not None and "summary" in first.annotations:
        what = f"{first.annotations['summary']} (and {len(alerts) - 1} more series)"
    else:
        what = f"{', '.join(rules)} on {len(alerts)} series"

    shown = worst_first(alerts)[:max_series]
    series = tuple(_series_line(a, common) for a in shown)

    runbook = annotations.get("runbook") or (first.annotations.get("runbook") if first else None)
    runbook_url = annotations.get("runbook_url") or (first.annotations.get("runbook_url") if first else None)
    if runbook and is_link(runbook):
        runbook_url, runbook = runbook_url or runbook, None
    dashboard = annotations.get("dashboard") or annotations.get("dashboard_url")
    if not dashboard and n.external_url and alerts:  # each series has its own: one for what they share
        dashboard = _group_link(n)
    if not dashboard and first is not None:
        dashboard = first.generator_url
    ended = next((a.ended for a in alerts if a.ended), None) if n.status == "resolved" else None
    return Digest(
        status="ended" if ended else n.status,
        rule=", ".join(rules) or "(no alerts)",
        severity=severity,
        count=len(alerts),
        what=what,
        where=where,
        series=series,
        more=len(alerts) - len(shown),
        since=_since(n, now),
        runbook=truncate(" ".join(runbook.split()), MAX_RUNBOOK) if runbook else None,
        runbook_url=runbook_url if runbook_url and is_link(runbook_url) else None,
        dashboard_url=dashboard if dashboard and is_link(dashboard) else None,
        ended=ended,
        silence=silence_command(n) if n.status == "firing" else None,
    )


def _group_link(n: Notification) -> str:
    """The dashboard on what a group's series share: the one their own links open (else
    the overview), from its first start to now, or while resolved, to its last end."""
    opened = {dashboard_of(a.annotations.get("dashboard")) for a in n.alerts}
    ends = [_aware(a.ends_at) for a in n.alerts if a.ends_at is not None]
    until = max(ends) if n.status == "resolved" and ends else None
    return dashboard_url(n.external_url, n.common_labels, min(_aware(a.starts_at) for a in n.alerts), until=until,
                         dashboard=opened.pop() if len(opened) == 1 and None not in opened else "overview")


SILENCE_FOR = "2h"
_SILENCE_BY = ("alertname", "model", "version")  # without group labels


def silence_command(n: Notification) -> str | None:
    """`attnmon alerts silence` for this group: its group labels (else the alert name,
    model and version its alerts share), each quoted for a POSIX shell."""
    labels = {k: v for k, v in n.group_labels.items() if v != ""}
    if not labels:
        labels = {k: n.common_labels[k] for k in _SILENCE_BY if n.common_labels.get(k)}
    if not labels:
        return None
    matchers = " ".join(f"--match {shlex.quote(_equal(k, v))}" for k, v in labels.items())
    return (f"attnmon alerts silence {matchers} --for {SILENCE_FOR}"
            f" --comment {shlex.quote('on-call: investigating')}")


def _equal(name: str, value: str) -> str:
    """A matcher `attnmon alerts silence` reads as "name is exactly value": `name=value`,
    unless the value would turn it into another operator ('~beta' into the regex `=~`,
    'a!=b' into an error); then the value as an escaped whole-value regex."""
    from alerts.silences import Matcher, parse_matcher

    text = f"{name}={value}"
    try:
        if parse_matcher(text) == Matcher(name, "=", value):
            return text
    except ConfigError:
        pass
    return f"{name}=~{re.escape(value)}"


def labels_text(labels: dict[str, str]) -> str:
    keys = [k for k in LABEL_ORDER if k in labels] + sorted(k for k in labels if k not in LABEL_ORDER)
    return " ".join(f"{k}={labels[k]}" for k in keys)


def number(x: float | None) -> str:
    return fmt(x)


# What a statistic's value is, by its prefix (monitor/evaluate.py). delta, psi, js, ...
# rows carry baseline_value 0 by construction (the value is already the change), so
# "vs baseline 0" would say nothing; mean and items rows carry the baseline's own level.
_CHANGE_UNITS = {"delta": "{} SDs from the baseline mean", "psi": "PSI {}", "js": "JS distance {}",
                 "wasserstein": "Wasserstein distance {}", "cusum": "CUSUM {}"}


def _kind(a: AlertView) -> str:
    return a.labels.get("statistic", "").partition(".")[0]


def value_text(a: AlertView) -> str:
    """The value in its statistic's terms: "-3.21 SDs from the baseline mean", "PSI 0.413",
    "0.311 vs baseline 0.824"."""
    kind, v, b = _kind(a), number(a.value), a.baseline_value
    if kind in _CHANGE_UNITS:
        return _CHANGE_UNITS[kind].format(v)
    if kind == "lift":
        return f"{v} times the baseline share"
    if kind == "mover":
        return f"share moved by {v}" + (f" from {number(b)}" if b is not None else "")
    return v if b is None else f"{v} vs baseline {number(b)}"


def magnitude(a: AlertView) -> float:
    """How far the series is from its baseline, in its statistic's terms (for ordering)."""
    if a.value is None or a.value != a.value:
        return -1.0
    kind = _kind(a)
    if kind in _CHANGE_UNITS or kind == "mover" or a.baseline_value is None:
        return abs(a.value)
    return abs(a.value - a.baseline_value)


def worst_first(alerts) -> list[AlertView]:
    """Firing before resolved, the worst severity first, then by rule, the series furthest
    from its baseline first: what a person should read first when a list is cut."""
    return sorted(alerts, key=lambda a: (a.status != "firing", _SEVERITY_RANK.get(a.severity, 9), a.rule,
                                         -magnitude(a)))


def _series_line(a: AlertView, common: dict[str, str]) -> str:
    own = labels_text({k: v for k, v in a.labels.items() if k not in common and k not in _NOT_WHERE})
    status = " (ended, not fixed)" if a.ended else " (resolved)" if a.status == "resolved" else ""
    base = a.labels.get("baseline_kind")
    against = f" ({base} baseline)" if base and (not own or "baseline_kind" not in common) else ""
    observed = a.annotations.get(OBSERVED)  # "entropy_norm fell from 0.824 to 0.311"
    # a series that stopped holding has no newer value stored than its last true cycle's
    last = LAST_SEEN if a.status == "resolved" else ""
    value = f"{last}{observed + ': ' if observed else ''}{value_text(a)}{against}{status}"
    return f"{own}: {value}" if own else value


def utc(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _since(n: Notification, now: datetime) -> str:
    if not n.alerts:
        return ""
    start = min(_aware(a.starts_at) for a in n.alerts)
    if n.status == "firing":
        return f"{utc(start)} ({duration((_aware(now) - start).total_seconds())} ago)"
    end = max((_aware(a.ends_at) for a in n.alerts if a.ends_at is not None), default=_aware(now))
    return f"{utc(start)} until {utc(end)} ({duration((end - start).total_seconds())})"


def is_link(text: str) -> bool:
    return re.fullmatch(r"https?://\S+", text.strip()) is not None


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def plain_text(d: Digest) -> str:
    """The digest as plain text (the email body, the Slack fallback's basis)."""
    lines = [d.title, "", f"What:  {d.what}"]
    if d.ended:
        lines.append(f"Ended: {d.ended}")
    if d.where:
        lines.append(f"Where: {d.where}")
    if d.count == 1 and d.series:
        lines.append(f"Value: {d.series[0]}")
    lines.append(f"Since: {d.since}")
    if d.count > 1:
        lines += ["", "Series:"] + [f"  {s}" for s in d.series]
        if d.more:
            lines.append(f"  and {d.more} more")
    if d.runbook or d.runbook_url:
        lines += ["", f"Runbook: {d.runbook or d.runbook_url}"]
        if d.runbook and d.runbook_url:
            lines.append(f"         {d.runbook_url}")
    if d.dashboard_url:
        lines.append(f"Dashboard: {d.dashboard_url}")
    if d.silence:
        lines += ["", f"Silence: {d.silence}"]
    return "\n".join(lines) + "\n"
