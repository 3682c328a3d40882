"""A generic JSON webhook in Alertmanager's webhook format (version 4), so that tools
that already take Alertmanager's webhooks take ours unchanged.

`max_alerts` is Alertmanager's webhook_config option: a message holds at most that many
alerts (0: all; the outbox puts firing ones first) and `truncatedAlerts` counts those
left out. One difference: Alertmanager computes `status`, `commonLabels` and
`commonAnnotations` from the alerts it kept, so they can claim a label that the left-out
alerts do not share; ours hold for the whole group.

    >>> hook = Webhook("tools", url="http://tooling:8080/alerts", max_alerts=100)
    >>> hook.send(notification)  # 2xx ok; 408/429/5xx → retry; other 4xx → no retry
"""

from __future__ import annotations

from typing import Any

import httpx

from alerts.model import AlertView, Notification
from alerts.receivers._http import JsonPoster, rfc3339

# what Alertmanager sends as the endsAt of a firing alert: Go's zero time
ZERO_TIME = "0001-01-01T00:00:00Z"


def alert_json(a: AlertView, external_url: str | None = None) -> dict[str, Any]:
    labels = {k: str(v) for k, v in a.labels.items()}
    labels.setdefault("alertname", a.rule)
    labels.setdefault("severity", a.severity)
    return {
        "status": a.status,
        "labels": labels,
        "annotations": dict(a.annotations),
        "startsAt": rfc3339(a.starts_at),
        "endsAt": rfc3339(a.ends_at) if a.status == "resolved" and a.ends_at else ZERO_TIME,
        "generatorURL": a.generator_url or external_url or "",
        "fingerprint": a.fingerprint,
    }


def webhook_json(n: Notification, max_alerts: int = 0) -> dict[str, Any]:
    """The body Alertmanager's webhook_config would POST for this notification, with at
    most `max_alerts` alerts (0: all)."""
    alerts = [alert_json(a, n.external_url) for a in n.alerts]
    common_labels = {k: str(v) for k, v in n.common_labels.items()}
    if alerts:  # as for each alert, so commonLabels ⊆ every alert's labels
        for key in ("alertname", "severity"):
            values = {x["labels"][key] for x in alerts}
            if len(values) == 1:
                common_labels[key] = values.pop()
    kept = alerts[:max_alerts] if max_alerts else alerts
    return {
        "receiver": n.receiver,
        "status": n.status,
        "alerts": kept,
        "groupLabels": dict(n.group_labels),
        "commonLabels": common_labels,
        "commonAnnotations": dict(n.common_annotations),
        "externalURL": n.external_url or "",
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": len(alerts) - len(kept),
    }


class Webhook:
    kind = "webhook"

    def __init__(
        self,
        name: str,
        *,
        url: str,
        url_is_secret: bool = False,
        timeout_s: float = 10,
        max_alerts: int = 0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.timeout_s = timeout_s  # per read; the outbox bounds a whole send by a multiple
        self.max_alerts = max_alerts
        self._poster = JsonPoster(
            url,
            what=f"webhook receiver {name!r}",
            timeout_s=timeout_s,
            url_is_secret=url_is_secret,
            transport=transport,
        )
        self._url_is_secret = url_is_secret

    def send(self, notification: Notification) -> None:
        self._poster.post(self.payload(notification))

    def payload(self, n: Notification) -> dict[str, Any]:
        return webhook_json(n, self.max_alerts)

    def close(self) -> None:
        self._poster.close()

    def __repr__(self) -> str:
        shown = self._poster.shown + ("/***" if self._url_is_secret else "")
        return f"Webhook(name={self.name!r}, url={shown!r})"
