"""The dead-man's switch: `AttnmonWatchdog`, an alert that fires for as long as the
leading daemon evaluates its alert rules (Prometheus' `Watchdog`). When every daemon is
dead, or the leader is stuck, it stops coming, and a dead-man's-switch service (or an
Alertmanager route to one) says so: the monitor is blind exactly when it is silent.

    >>> dog = Watchdog(config.alerts, outbox.receiver, keep_for_s=240)   # doctest: +SKIP
    >>> dog.evaluated()                  # after each window's alert rules ran
    >>> dog.send(now)                    # the deliver job: once per evaluation since the last

It is sent once per deliver run after a window's alert rules were evaluated, never on a
timer: a stuck evaluation (a deliver job that still runs beside it) sends nothing. Only
to the receivers `alerts.watchdog.receivers` names, alertmanager or webhook ones
(alerts/config.py refuses the others), never through `alerts.route`: an alert that always
fires must reach no receiver, least of all a paging one, that the operator did not name
for it. Not a rule, not in the alerts table or the outbox: nothing to store, and a failed
send is simply tried again by the next deliver run.

To Alertmanager it goes with `endsAt = now + keep_for_s` (the daemon's: 4 evaluations,
at most one a minute), so Alertmanager resolves it that long after the last one; to a webhook as
Alertmanager's webhook JSON, a firing alert (any POST pings healthchecks.io or Dead Man's
Snitch).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from alerts import sending
from alerts.config import AlertsConfig
from alerts.model import AlertView, Notification, Receiver
from alerts.outbox import scrub
from alerts.template import strip_credentials

log = logging.getLogger("attnmon.alerts")

NAME = "AttnmonWatchdog"
SEVERITY = "none"  # as Prometheus' Watchdog: no route on severity takes it by accident
KEEP_INTERVALS = 4  # Alertmanager keeps it this many evaluation intervals after the last send
SUMMARY = "attnmon evaluates its alert rules: this alert always fires while it does"
DESCRIPTION = (
    "A dead-man's switch. The leading attnmon daemon sends it after each evaluation of its alert "
    "rules. When it stops arriving, no daemon evaluates (all are down, or the leader is stuck: "
    "see /livez) and no attnmon alert can fire. Route it to a dead-man's-switch service, never to a pager."
)


class Watchdog:
    """`receiver(name)` gives the Receiver of that name (the outbox's); `keep_for_s` is
    how long Alertmanager holds each send; `deadline_s(name)` bounds one send."""

    def __init__(self, config: AlertsConfig, receiver: Callable[[str], Receiver], *, keep_for_s: float,
                 deadline_s: Callable[[str], float] = lambda name: 30.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), who: str = ""):
        self.receivers = list(config.watchdog.receivers)
        self.labels = {"alertname": NAME, "severity": SEVERITY, **config.watchdog.labels}
        self.keep_for_s = keep_for_s
        self.external_url = strip_credentials(config.external_url) if config.external_url else None
        self._receiver = receiver
        self._deadline_s = deadline_s
        self._clock = clock
        self._who = who
        self._evaluations = 0
        self._since: datetime | None = None  # its startsAt: this daemon's first evaluation
        self._sent: dict[str, int] = {}  # receiver -> evaluations when last sent
        self._running: dict[str, sending.Send] = {}  # sends past their deadline

    def evaluated(self) -> None:
        """An evaluation of the alert rules completed (called in the evaluate job)."""
        if self._since is None:
            self._since = self._clock()
        self._evaluations += 1

    def forget(self) -> None:
        """The lead was lost: the evaluations so far are never sent. Another daemon leads
        and vouches for the store; if this one leads again, only its evaluations from
        then on say it is not stuck."""
        self._sent = dict.fromkeys(self.receivers, self._evaluations)

    def due(self) -> list[str]:
        """The receivers that have not had it since the last evaluation."""
        return [r for r in self.receivers if self._sent.get(r, 0) < self._evaluations]

    def view(self) -> AlertView:
        fingerprint = hashlib.sha256(repr(sorted(self.labels.items())).encode()).hexdigest()[:16]
        annotations = {"summary": SUMMARY, "description": DESCRIPTION}
        if self._who:
            annotations["leader"] = self._who  # which daemon sent it last
        return AlertView(fingerprint=fingerprint, rule=NAME, severity=SEVERITY, status="firing",
                         labels=dict(self.labels), annotations=annotations, value=None, baseline_value=None,
                         starts_at=self._since or self._clock(), ends_at=None)

    def send(self, keep_going: Callable[[], bool] = lambda: True) -> dict[tuple[str, str], int]:
        """Send it to each receiver due; returns (receiver, outcome) -> 1 for outcomes
        `watchdog` (sent) and `watchdog_error`. Never raises: a failure is logged and the
        next run tries again."""
        outcomes: dict[tuple[str, str], int] = {}
        for name in self.due():
            if not keep_going():
                break
            running = self._running.get(name)
            if running is not None:
                if running.running and not running.abandoned:
                    continue  # a send past its deadline: no second one beside it
                del self._running[name]
            evaluations = self._evaluations
            try:
                done = sending.start(name, self._sender(name), [], None, self._deadline_s(name))
                if done.running:
                    self._running[name] = done
                    raise TimeoutError(f"no complete answer within {done.deadline_s:g} s")
                done.raise_failure()
            except Exception as exc:
                outcomes[(name, "watchdog_error")] = 1
                log.warning("sending the watchdog (%s) to %s failed; the next delivery tries again: %s",
                            NAME, name, scrub(str(exc)) or type(exc).__name__)
                continue
            self._sent[name] = evaluations
            outcomes[(name, "watchdog")] = 1
        return outcomes

    def _sender(self, name: str) -> Callable[[], None]:
        receiver = self._receiver(name)
        view = self.view()
        resend = getattr(receiver, "resend", None)  # Alertmanager's: with the watchdog's endsAt
        if resend is not None:
            return lambda: resend([view], self.external_url, keep_for_s=self.keep_for_s)
        note = Notification(receiver=name, group_key=f'watchdog:{{alertname="{NAME}"}}', status="firing",
                            alerts=(view,), group_labels={"alertname": NAME}, dedup_key="attnmon-watchdog",
                            external_url=self.external_url)
        return lambda: receiver.send(note)
