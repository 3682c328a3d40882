"""Alertmanager: `POST {url}/api/v2/alerts`, re-sent while firing.

Alertmanager identifies an alert by its labels and forgets a firing one when its
`endsAt` passes, so a firing alert is posted with `endsAt = now + 4 × resend_interval`
and re-posted (`resend`) every `resend_interval` — as Prometheus does. A resolved alert
is posted once more with `endsAt` = its resolution time, in the past.

Alerts go in POSTs of at most BATCH_SIZE, in order, as Prometheus' notifier sends them
(a group of 1,000 series was one 8.5 MB request). When a batch fails with a retryable
error (peer down, 5xx, 429, timeout) the send stops and raises it: the outbox retries
the whole notification, and re-posting the batches that got through is harmless, since
Alertmanager identifies an alert by its labels and keeps the latest post. A batch
refused for good (other 4xx: its content) does not stop the later batches, which may be
fine; the send then raises that refusal.

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

from alerts.model import AlertView, DeliveryError, Notification
from alerts.receivers._http import JsonPoster, finite, rfc3339
from alerts.receivers._text import is_link, utc_now

_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")
# Prometheus sent 64 alerts per POST up to 3.3 (notifier.go `maxBatchSize`); 3.4 made it
# a flag, --alertmanager.notification-batch-size, default 256. Ours carry long
# annotations (~8.5 KB an alert): 64 keeps a POST near 0.5 MB.
BATCH_SIZE = 64


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
        batch_size: int = BATCH_SIZE,
        clock: Callable[[], datetime] = utc_now,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.timeout_s = timeout_s  # per read; the outbox bounds a whole send by a multiple
        self.resend_interval_s = resend_interval_s
        self.batch_size = batch_size
        self._clock = clock
        self._poster = JsonPoster(
            url.rstrip("/") + "/api/v2/alerts",
            what=f"alertmanager receiver {name!r}",
            timeout_s=timeout_s,
            transport=transport,
        )

    def send(self, notification: Notification) -> None:
        self._post(notification.alerts, notification.external_url)

    def resend(self, alerts: Iterable[AlertView], external_url: str | None = None, *,
               keep_for_s: float | None = None) -> None:
        """Re-post firing alerts so that Alertmanager keeps them; resolved ones are skipped.
        `keep_for_s` sets their endsAt (default 4 × resend_interval_s from now): the
        watchdog's follows the evaluation's rhythm, not this receiver's."""
        self._post([a for a in alerts if a.status == "firing"], external_url, keep_for_s)

    def payload(self, alerts: Iterable[AlertView], external_url: str | None = None,
                keep_for_s: float | None = None) -> list[dict[str, Any]]:
        now = self._clock()
        keep_until = now + timedelta(seconds=keep_for_s if keep_for_s is not None else 4 * self.resend_interval_s)
        return [self._alert(a, keep_until, now, external_url) for a in alerts]

    def _post(self, alerts: Iterable[AlertView], external_url: str | None, keep_for_s: float | None = None) -> None:
        body = self.payload(alerts, external_url, keep_for_s)
        size = self.batch_size
        batches = [body[i : i + size] for i in range(0, len(body), size)]
        refused: DeliveryError | None = None
        for k, batch in enumerate(batches, 1):
            try:
                self._poster.post(batch)
            except DeliveryError as exc:
                where = f" (batch {k} of {len(batches)}, {len(batch)} alerts)" if len(batches) > 1 else ""
                error = DeliveryError(f"{exc}{where}", retry=exc.retry, retry_after_s=exc.retry_after_s)
                if exc.retry:  # the outbox re-sends every batch; Alertmanager dedups by labels
                    raise error from None
                refused = refused or error  # this batch's content: the others may still pass
        if refused is not None:
            raise refused

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
        # Alertmanager refuses the whole POST (422) when generatorURL is not a URI, and a
        # rule's `dashboard` annotation may be plain text
        link = next((u for u in (a.generator_url, external_url) if u and is_link(u)), None)
        if link:
            body["generatorURL"] = link
        return body

    def close(self) -> None:
        self._poster.close()

    def __repr__(self) -> str:
        return f"Alertmanager(name={self.name!r}, url={self._poster.shown!r})"
