"""Alertmanager: `POST {url}/api/v2/alerts`, re-sent while firing.

Alertmanager identifies an alert by its labels and forgets a firing one when its
`endsAt` passes, so a firing alert is posted with `endsAt = now + 4 × resend_interval`
and re-posted (`resend`) every `resend_interval` — as Prometheus does. A resolved alert
is posted once more with `endsAt` = its resolution time, in the past.

    >>> am = Alertmanager("am", "http://alertmanager:9093", resend_interval_s=60)
    >>> am.send(notification)           # firing or resolved, as the alerts say
    >>> am.resend(still_firing_alerts)  # every resend_interval_s, from the outbox
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import httpx

from alerts.model import AlertView, Notification
from alerts.receivers._http import JsonPoster, finite, rfc3339
from alerts.receivers._text import utc_now

_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")


def label_name(key: str) -> str:
    """Alertmanager 0.25 takes `[a-zA-Z_][a-zA-Z0-9_]*` only; others answer 400."""
    name = _LABEL_NAME.sub("_", key)
    return f"_{name}" if not name or name[0].isdigit() else name


class Alertmanager:
    kind = "alertmanager"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        resend_interval_s: float = 60,
        timeout_s: float = 10,
        clock: Callable[[], datetime] = utc_now,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.timeout_s = timeout_s  # per read; the outbox bounds a whole send by a multiple
        self.resend_interval_s = resend_interval_s
        self._clock = clock
        self._poster = JsonPoster(
            url.rstrip("/") + "/api/v2/alerts",
            what=f"alertmanager receiver {name!r}",
            timeout_s=timeout_s,
            transport=transport,
        )

    def send(self, notification: Notification) -> None:
        self._post(notification.alerts, notification.external_url)

    def resend(self, alerts: Iterable[AlertView], external_url: str | None = None) -> None:
        """Re-post firing alerts so that Alertmanager keeps them; resolved ones are skipped."""
        self._post([a for a in alerts if a.status == "firing"], external_url)

    def payload(self, alerts: Iterable[AlertView], external_url: str | None = None) -> list[dict[str, Any]]:
        now = self._clock()
        keep_until = now + timedelta(seconds=4 * self.resend_interval_s)
        return [self._alert(a, keep_until, now, external_url) for a in alerts]

    def _post(self, alerts: Iterable[AlertView], external_url: str | None) -> None:
        body = self.payload(alerts, external_url)
        if body:
            self._poster.post(body)

    @staticmethod
    def _alert(a: AlertView, keep_until: datetime, now: datetime, external_url: str | None) -> dict[str, Any]:
        labels = {label_name(k): str(v) for k, v in a.labels.items() if str(v) != ""}
        labels.setdefault("alertname", a.rule)  # at least one label, and AM's grouping key
        labels.setdefault("severity", a.severity)
        annotations = {label_name(k): str(v) for k, v in a.annotations.items()}
        if finite(a.value) is not None:
            annotations.setdefault("value", f"{a.value:.6g}")
        if finite(a.baseline_value) is not None:
            annotations.setdefault("baseline_value", f"{a.baseline_value:.6g}")
        # a resolved alert's end is its resolution time, in the past: AM resolves it at once
        ends = keep_until if a.status == "firing" else (a.ends_at or now)
        body: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(a.starts_at),
            "endsAt": rfc3339(ends),
        }
        link = a.generator_url or external_url
        if link:
            body["generatorURL"] = link
        return body

    def close(self) -> None:
        self._poster.close()

    def __repr__(self) -> str:
        return f"Alertmanager(name={self.name!r}, url={self._poster.shown!r})"
