"""Annotation templates: `{{name}}` and `{{name|pct}}`, filled from an alert's context.

    >>> render("{{series}}: entropy {{value}} (baseline {{baseline_value}})",
    ...        {"series": "m@v2 layer 1 head 2", "value": -3.2149, "baseline_value": 0.0})
    'm@v2 layer 1 head 2: entropy -3.21 (baseline 0)'
    >>> render("top-10 items hold {{value|pct}}", {"value": 0.4812})
    'top-10 items hold 48.1%'

Variables (see `VARIABLES`): the series text, the value and its baseline, the alert's
labels (rule labels included), the window and `detail.<key>` from a result's detail
(e.g. `{{detail.value}}`: the attribute value that moved most). `check` names unknown
variables, so `attnmon alerts check` catches a typo before it reaches an on-call phone.
Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlencode, urlsplit, urlunsplit

_VAR = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*(?:\|\s*(\w+)\s*)?\}\}")
FILTERS = ("pct",)
VARIABLES = (
    "series", "alertname", "severity", "statistic", "model", "version", "cohort", "layer",
    "head", "baseline_kind", "receiver", "value", "baseline_value", "change", "n",
    "n_baseline", "window_start", "window_end",
)
# the dashboards a rule's links may open (a rule's `dashboard`), by uid (dashboards/*.py);
# each has the model, version, cohort, layer and head variables a link sets
DASHBOARDS = {"overview": "attnmon-overview", "heads": "attnmon-heads", "items": "attnmon-items"}
LINK_MARGIN_MS = 3_600_000  # a link shows an hour before an incident began and after it ended
ROLLUP = "*"


def fmt(x: object) -> str:
    """Numbers as a person reads them: -3.21, 0.263, 17, 1,234, 2.5e-05; None as n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, datetime):
        return x.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    v = float(x)
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1e-3:
        return f"{v:.3g}"
    return f"{v:.2g}"


def pct(x: object) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
        return fmt(x)
    return f"{100 * x:.3g}%"


def series_text(labels: Mapping[str, str]) -> str:
    """'demo-sasrec@v2 layer 1 head 2 (cohort web)'; roll-ups ('*') are left out."""
    model, version = labels.get("model", ROLLUP), labels.get("version", ROLLUP)
    parts = ["attnmon" if model == ROLLUP else model if version == ROLLUP else f"{model}@{version}"]
    layer, head = labels.get("layer", ROLLUP), labels.get("head", ROLLUP)
    if layer != ROLLUP:
        parts.append(f"layer {layer}" + (f" head {head}" if head != ROLLUP else " (all heads)"))
    if labels.get("receiver"):
        parts.append(f"receiver {labels['receiver']}")
    cohort = labels.get("cohort", ROLLUP)
    if cohort != ROLLUP:
        parts.append(f"(cohort {cohort})")
    return " ".join(parts)


def render(template: str, context: Mapping[str, object]) -> str:
    """Fill `{{name}}` / `{{name|pct}}`; a name without a value renders as n/a."""

    def sub(m: re.Match) -> str:
        name, filt = m.group(1), m.group(2)
        value = _lookup(context, name)
        return pct(value) if filt == "pct" else fmt(value)

    return _VAR.sub(sub, template)


def _lookup(context: Mapping[str, object], name: str) -> object:
    if name.startswith("detail."):
        detail = context.get("detail")
        return detail.get(name[7:]) if isinstance(detail, Mapping) else None
    return context.get(name)


def check(template: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a template: unknown variables or filters (empty: fine)."""
    problems = []
    for m in _VAR.finditer(template):
        name, filt = m.group(1), m.group(2)
        if not (name in VARIABLES or name in extra or name.startswith("detail.")):
            problems.append(f"unknown variable {{{{{name}}}}}; known: {', '.join(VARIABLES + extra)}, detail.<key>")
        if filt is not None and filt not in FILTERS:
            problems.append(f"unknown filter |{filt} in {{{{{m.group(0)[2:-2].strip()}}}}}; known: {', '.join(FILTERS)}")
    opened, closed = template.count("{{"), template.count("}}")
    if opened != len(_VAR.findall(template)) or closed != opened:
        problems.append("unbalanced or malformed {{ }}")
    return problems


def strip_credentials(url: str) -> str:
    """A URL without its user:password@ part (an external_url must never leak one)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def dashboard_url(external_url: str, labels: Mapping[str, str], since: datetime | None = None,
                  until: datetime | None = None, dashboard: str = "overview") -> str:
    """A dashboard (`DASHBOARDS`) on the alert's series (model, version, and the cohort,
    layer and head it has: "*" is a roll-up those variables offer), from an hour before
    `since` (the incident's start) to now, or to an hour after `until` (its resolve), so
    that the link of a resolved incident still shows it later."""
    query: dict[str, str] = {}
    if labels.get("model", ROLLUP) != ROLLUP:
        query["var-model"] = labels["model"]
    if labels.get("version", ROLLUP) != ROLLUP:
        query["var-version"] = labels["version"]
    for name in ("cohort", "layer", "head"):
        if labels.get(name):
            query[f"var-{name}"] = labels[name]
    if since is not None:
        query["from"] = str(_ms(since) - LINK_MARGIN_MS)
        query["to"] = str(_ms(until) + LINK_MARGIN_MS) if until is not None else "now"
    base = strip_credentials(external_url).rstrip("/")
    return f"{base}/d/{DASHBOARDS[dashboard]}" + (f"?{urlencode(query)}" if query else "")


def dashboard_of(url: str | None) -> str | None:
    """Which of `DASHBOARDS` a link made by `dashboard_url` opens (None: another link)."""
    path = urlsplit(url).path if url else ""
    return next((name for name, uid in DASHBOARDS.items() if path.endswith(f"/d/{uid}")), None)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
