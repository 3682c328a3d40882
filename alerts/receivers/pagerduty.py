"""PagerDuty Events API v2: one incident per alert group (`dedup_key`), triggered while
any of its alerts fires and resolved with it. An alert that ended without being fixed
(alerts.model.ENDED: its comparison ended) sends no resolve: the incident stays open for
a person to close, since a resolve is all PagerDuty would show.

    >>> pd = PagerDuty("pager", routing_key="R0...", url="https://events.pagerduty.com/v2/enqueue")
    >>> pd.send(notification)  # 202 → done; 400 → DeliveryError(retry=False); 429/5xx → retry
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from alerts.model import OBSERVED, DeliveryError, Notification
from alerts.receivers._http import JsonPoster, finite, register_secret, rfc3339
from alerts.receivers._text import digest, is_link, labels_text, truncate, utc_now, worst_first

URL = "https://events.pagerduty.com/v2/enqueue"
# our severities are a subset of PagerDuty's (critical, error, warning, info)
SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_DETAILS_SERIES = 50  # an event is at most 512 KB; a group can be large


def dedup_key(n: Notification) -> str:
    """The notification's dedup_key (else its group_key), hashed when over 255 chars:
    the same group always gets the same key, so the resolve finds its incident."""
    key = n.dedup_key or n.group_key
    if not key:  # PagerDuty would make one up, and the resolve could not find the incident
        raise DeliveryError("notification has neither dedup_key nor group_key", retry=False)
    if len(key) > MAX_DEDUP_KEY:
        key = "attnmon-" + hashlib.sha256(key.encode()).hexdigest()
    return key


def summary(n: Notification, rule: str, where: str) -> str:
    """The page's headline: the rule, how many series, and what the worst one says."""
    count = len(n.alerts)
    shared = n.common_annotations.get("summary")
    worst = worst_first(n.alerts)
    if shared or count == 1:
        text = shared or worst[0].annotations.get("summary") or "firing"
        return f"{rule}: {text} ({count} series)"
    first = worst[0].annotations.get("summary")
    head = f"{rule} on {count} series" + (f" of {where}" if where else "")
    return head + (f": {first}, and {count - 1} more" if first else "")


def rounded(x: float | None) -> float | None:
    """6 significant digits, as the Alertmanager annotations: -2.91, not -2.9099999999999997."""
    x = finite(x)
    return None if x is None else float(f"{x:.6g}")


class PagerDuty:
    kind = "pagerduty"

    def __init__(
        self,
        name: str,
        *,
        routing_key: str,
        url: str = URL,
        timeout_s: float = 10,
        clock: Callable[[], datetime] = utc_now,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.timeout_s = timeout_s  # per read; the outbox bounds a whole send by a multiple
        self._routing_key = routing_key
        self._clock = clock
        self._poster = JsonPoster(
            url,
            what=f"pagerduty receiver {name!r}",
            timeout_s=timeout_s,
            secrets=register_secret(routing_key),
            transport=transport,
        )

    def send(self, notification: Notification) -> None:
        event = self.payload(notification)
        if event is not None:
            self._poster.post(event)

    def payload(self, n: Notification) -> dict[str, Any] | None:
        """The event to post; None for a resolve of a group with an alert that ended unfixed."""
        if n.status != "firing" and any(a.ended for a in n.alerts):
            return None
        event: dict[str, Any] = {
            "routing_key": self._routing_key,
            "dedup_key": dedup_key(n),
            "event_action": "trigger" if n.status == "firing" else "resolve",
        }
        if n.status != "firing":
            return event
        d = digest(n, now=self._clock())
        firing = [a for a in n.alerts if a.status == "firing"] or list(n.alerts)
        common = n.common_labels
        model, version = common.get("model"), common.get("version")
        payload: dict[str, Any] = {
            "summary": truncate(summary(n, d.rule, d.where), MAX_SUMMARY),
            "source": f"{model}@{version}" if model and version else model or "attnmon",
            "severity": SEVERITY.get(d.severity, "error"),
            "class": d.rule,
        }
        if firing:
            payload["timestamp"] = rfc3339(min(a.starts_at for a in firing))
        if model:
            payload["component"] = model
        if version:
            payload["group"] = version
        payload["custom_details"] = {
            "where": d.where,
            "since": d.since,
            "series": [
                {
                    "labels": labels_text({k: v for k, v in a.labels.items() if k not in ("alertname", "severity")}),
                    "status": "ended" if a.ended else a.status,  # (alerts.model.ENDED: not fixed)
                    "value": rounded(a.value),
                    "baseline_value": rounded(a.baseline_value),
                    **({OBSERVED: a.annotations[OBSERVED]} if OBSERVED in a.annotations else {}),
                }
                for a in worst_first(n.alerts)[:MAX_DETAILS_SERIES]
            ],
            "series_total": len(n.alerts),
            **({"runbook": d.runbook} if d.runbook else {}),
            **({"silence": d.silence} if d.silence else {}),
        }
        event["payload"] = payload
        links = [(d.dashboard_url, "Dashboard"), (d.runbook_url, "Runbook")]
        event["links"] = [{"href": href, "text": text} for href, text in links if href]
        event["client"] = "attnmon"
        if n.external_url and is_link(n.external_url):
            event["client_url"] = n.external_url
        return event

    def close(self) -> None:
        self._poster.close()

    def __repr__(self) -> str:
        return f"PagerDuty(name={self.name!r}, url={self._poster.shown!r}, routing_key='***')"
