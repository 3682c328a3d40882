"""What a receiver is handed: one notification (a group of alerts) for one receiver.

The state machine (alerts/state.py) and the outbox (alerts/outbox.py) build these;
receivers (alerts/receivers/) only turn them into a peer's wire format and send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol


class DeliveryError(Exception):
    """A send failed. `retry` says whether trying again later may help (5xx, 429,
    timeouts, refused connections) or not (400: the payload itself is wrong)."""

    def __init__(self, message: str, *, retry: bool, retry_after_s: float | None = None):
        self.retry = retry
        self.retry_after_s = retry_after_s  # the receiver's Retry-After, when it gave one
        super().__init__(message)


# The annotation attnmon adds to an alert that ended without being resolved: the series
# stopped being compared with the baseline it fired against (a version's first day after
# its deploy is over, a pin removed). Its text says so; receivers show it instead of
# "resolved", and PagerDuty's incident is left open for a person to close.
ENDED = "ended"

# The annotation attnmon adds to a delta.* or psi.* alert: what its metric did in the
# window, from the mean.* row of the same series and baseline ("entropy_norm fell from
# 0.824 to 0.311"). A rule's own `observed` annotation wins.
OBSERVED = "observed"


@dataclass(frozen=True)
class AlertView:
    fingerprint: str
    rule: str
    severity: Literal["critical", "warning", "info", "none"]  # none: the watchdog's (alerts/watchdog.py)
    status: Literal["firing", "resolved"]
    labels: dict[str, str]  # alertname, severity, model, version, cohort, layer, head, ...
    annotations: dict[str, str]  # summary, runbook, description, dashboard, ...
    value: float | None
    baseline_value: float | None
    starts_at: datetime
    ends_at: datetime | None  # set when resolved
    generator_url: str | None = None

    @property
    def ended(self) -> str | None:
        """Why the alert ended unresolved (see ENDED), or None."""
        return self.annotations.get(ENDED) if self.status == "resolved" else None


@dataclass(frozen=True)
class Notification:
    receiver: str
    group_key: str  # alerts grouped by the route's group_by labels
    status: Literal["firing", "resolved"]  # "firing" if any alert in the group fires
    alerts: tuple[AlertView, ...]
    group_labels: dict[str, str] = field(default_factory=dict)
    dedup_key: str = ""  # stable per incident: a receiver sees one incident per alert group
    external_url: str | None = None  # Grafana (or attnmon) link for the whole group

    @property
    def common_labels(self) -> dict[str, str]:
        if not self.alerts:
            return {}
        common = dict(self.alerts[0].labels)
        for a in self.alerts[1:]:
            common = {k: v for k, v in common.items() if a.labels.get(k) == v}
        return common

    @property
    def common_annotations(self) -> dict[str, str]:
        if not self.alerts:
            return {}
        common = dict(self.alerts[0].annotations)
        for a in self.alerts[1:]:
            common = {k: v for k, v in common.items() if a.annotations.get(k) == v}
        return common


class Receiver(Protocol):
    name: str

    def send(self, notification: Notification) -> None:
        """Deliver or raise DeliveryError. Must not log or raise secrets."""
