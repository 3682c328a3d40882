"""The alerting side of `attnmon run`: what the daemon calls, and what /metrics shows.

    >>> service = AlertService(config.alerts, engine, registry=registry, clock=clock)  # doctest: +SKIP
    >>> daemon.cycle_hooks.append(service.after_cycle)      # after each evaluated window
    >>> daemon.deliver_hooks.append(service.deliver)        # every daemon.deliver_every_s

The watchdog (alerts/watchdog.py) counts each new window's alert evaluation in
`after_cycle` (not a window evaluated before) and is sent by the next `deliver`.

Rules are loaded (and their templates checked) once, here: a bad rule file stops the
daemon at start, not at the first crossing. /metrics reads counts the jobs refreshed;
a scrape runs no SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.engine import Engine

from alerts.config import AlertsConfig
from alerts.cycle import AlertCycle, evaluate_alerts
from alerts.model import Receiver
from alerts.outbox import Counts, DeliverResult, Outbox, counts
from alerts.rules import Rule, load_rule_set
from alerts.watchdog import KEEP_INTERVALS, Watchdog
from monitor.store.maintenance import as_utc

log = logging.getLogger("attnmon.alerts")

SEVERITIES = ("critical", "warning", "info")
PRUNE_EVERY = timedelta(hours=1)


class _Metrics:
    def __init__(self, registry: CollectorRegistry, receivers: list[str]):
        self.firing = Gauge("attnmon_alerts_firing", "Alerts firing", ["severity"], registry=registry)
        self.pending = Gauge("attnmon_alerts_pending", "Alerts pending (condition true, `for` not yet reached)", ["severity"], registry=registry)
        self.n_pending = Gauge("attnmon_notifications_pending", "Notifications waiting in the outbox (first try or backoff)", ["receiver"], registry=registry)
        self.n_failed = Gauge("attnmon_notifications_failed", "Notifications given up on in the last 24 h", ["receiver"], registry=registry)
        self.transitions = Counter("attnmon_alert_transitions", "Alert transitions", ["transition"], registry=registry)
        self.sends = Counter("attnmon_notification_sends", "Messages sent, by receiver and outcome (delivered, retry, failed, resent, resend_error, watchdog, watchdog_error)", ["receiver", "outcome"], registry=registry)
        self.receivers = set(receivers)
        for sev in SEVERITIES:
            self.firing.labels(sev)
            self.pending.labels(sev)
        for tr in ("firing", "resolved"):
            self.transitions.labels(tr)
        for r in receivers:
            self.n_pending.labels(r)
            self.n_failed.labels(r)

    def show(self, c: Counts) -> None:
        for sev in set(SEVERITIES) | {s for _, s in c.alerts}:
            self.firing.labels(sev).set(c.alerts.get(("firing", sev), 0))
            self.pending.labels(sev).set(c.alerts.get(("pending", sev), 0))
        self.receivers |= set(c.pending) | set(c.failed)
        for r in self.receivers:
            self.n_pending.labels(r).set(c.pending.get(r, 0))
            self.n_failed.labels(r).set(c.failed.get(r, 0))


class AlertService:
    """Rules, the state machine and the outbox for one daemon.

    `receivers` (name -> Receiver) replaces building them from the config (tests);
    `registry` gets the alerting metrics; `clock` is the daemon's. `watchdog_keep_s`:
    how long Alertmanager holds each watchdog (the daemon's: 4 evaluation intervals);
    `who` names the daemon in it.
    """

    def __init__(self, config: AlertsConfig, engine: Engine, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 receivers: Mapping[str, Receiver] | None = None, rules: list[Rule] | None = None,
                 rng=None, watchdog_keep_s: float = KEEP_INTERVALS * 60.0, who: str = ""):
        self.config = config
        self.engine = engine
        self.clock = clock
        self.rules = rules if rules is not None else load_rule_set(config.rules)
        self.outbox = Outbox(engine, config, receivers, rng=rng)
        self.watchdog = Watchdog(config, self.outbox.receiver, keep_for_s=watchdog_keep_s,
                                 deadline_s=self.outbox._deadline_s, clock=clock, who=who)
        self._metrics = _Metrics(registry, [r.name for r in config.receivers]) if registry is not None else None
        self._pruned: datetime | None = None
        self.last_cycle: AlertCycle | None = None
        self.last_delivery: DeliverResult | None = None
        # the daemon's "still the leader, not stopping": delivery stops between groups
        self.keep_going: Callable[[], bool] = lambda: True

    def after_cycle(self, engine: Engine, result) -> AlertCycle:
        """A daemon cycle hook: alert states after the window `result` (a CycleResult) ended."""
        cycle = evaluate_alerts(engine, self.rules, self.config, result.window_start, result.window_end, self.clock())
        if cycle.evaluated:  # not a window done before (an evaluation that cannot get past it)
            self.watchdog.evaluated()
        for tr in cycle.transitions:
            log.info("%s %s: %s", tr.kind, tr.alert.rule, tr.alert.annotations.get("summary", tr.alert.fingerprint))
            if self._metrics:
                self._metrics.transitions.labels(tr.kind).inc()
        self._refresh(engine, self.clock())
        self.last_cycle = cycle
        return cycle

    def deliver(self, engine: Engine, now: datetime) -> DeliverResult:
        """A daemon deliver hook: send what is due, re-send to Alertmanager, prune hourly."""
        now = as_utc(now)
        res = self.outbox.deliver(now, keep_going=self.keep_going)
        for key, n in self.watchdog.send(self.keep_going).items():
            res.sends[key] = res.sends.get(key, 0) + n
        if self._metrics:
            for (receiver, outcome), n in res.sends.items():
                self._metrics.sends.labels(receiver, outcome).inc(n)
        if self._pruned is None or now - self._pruned >= PRUNE_EVERY:
            self.outbox.prune(now)
            self._pruned = now
        self._refresh(engine, now)
        self.last_delivery = res
        return res

    def refresh_metrics(self, engine: Engine, now: datetime) -> None:
        """Read the store's alert and outbox counts into the gauges. A follower's lease
        does, so that every daemon shows the store's counts, not none or a stale one."""
        self._refresh(engine, as_utc(now))

    def _refresh(self, engine: Engine, now: datetime) -> None:
        if self._metrics:
            self._metrics.show(counts(engine, now))
