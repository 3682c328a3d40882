"""Helpers for the alerting tests: drift rows written straight into a store, rules and
configs built in code, and fake receivers that implement the Receiver protocol (the real
receivers and their peers are tested in tests/test_receivers*.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from alerts.config import AlertsConfig
from alerts.cycle import evaluate_alerts
from alerts.model import DeliveryError, Notification
from alerts.rules import Rule
from monitor.evaluate import write_results

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rule(name: str = "Collapse", **kw) -> Rule:
    spec = {"name": name, "statistic": "delta.entropy_norm", "op": "<", "threshold": -1.0,
            "for": "2m", "keep_firing_for": "5m", "severity": "critical",
            "annotations": {"summary": "{{series}}: entropy moved {{value}} SDs"}}
    spec.update(kw)
    return Rule.model_validate(spec)


def config(receivers: Iterable[str] = ("pager",), route: Mapping | None = None, **kw) -> AlertsConfig:
    spec = {
        "receivers": [{"name": r, "webhook": {"url": "http://127.0.0.1:9/hook"}} for r in receivers],
        "route": route if route is not None else {"receiver": next(iter(receivers), None), "group_wait_s": 0},
        **kw,
    }
    return AlertsConfig.model_validate(spec)


def drift_row(end: datetime, value: float, *, statistic: str = "delta.entropy_norm", model: str = "m",
              version: str = "v2", cohort: str = "*", layer: str = "1", head: str = "2",
              baseline_kind: str = "trailing", baseline_value: float | None = 0.0, n: int = 1000,
              detail: dict | None = None) -> dict:
    return {"model": model, "version": version, "cohort": cohort, "layer": layer, "head": head,
            "statistic": statistic, "value": value, "baseline_value": baseline_value,
            "baseline_kind": baseline_kind, "window_start": end - timedelta(minutes=15), "window_end": end,
            "n_current": n, "n_baseline": 10 * n, "detail": detail, "computed_at": end}


def cycle(engine, rules, cfg: AlertsConfig, minute: float, rows: Iterable[dict] = (), now: datetime | None = None):
    """Write the window's drift rows (ending at `minute`), then evaluate the alerts."""
    end = at(minute)
    rows = list(rows)
    if rows:
        write_results(engine, rows)
    return evaluate_alerts(engine, rules, cfg, end - timedelta(minutes=15), end, now or end)


class FakeReceiver:
    """Records what it is sent; `failures` are raised by the first sends, in order."""

    def __init__(self, name: str, failures: Iterable[Exception] = ()):
        self.name = name
        self.failures = list(failures)
        self.sent: list[Notification] = []
        self.calls = 0

    def send(self, notification: Notification) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(notification)


def failing(n: int, message: str = "HTTP 503 from the peer", retry: bool = True) -> list[DeliveryError]:
    return [DeliveryError(message, retry=retry) for _ in range(n)]


def shifted_rows(minute: float, heads: Iterable[int] = range(10), layers: Iterable[int] = (1,),
                 value: float = -3.0, **kw) -> list[dict]:
    """One window's rows where every (layer, head) given crosses the test rule."""
    return [drift_row(at(minute), value, layer=str(ly), head=str(h), **kw) for ly in layers for h in heads]
