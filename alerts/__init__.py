"""Alerting: rules, the alert state machine, silences, the notification outbox, receivers.

    >>> from alerts import AlertService, load_rule_set
    >>> service = AlertService(config.alerts, engine)            # doctest: +SKIP

Names resolve on first use (PEP 562), like monitor.store: importing `alerts.config` (as
monitor.config does) or the pure `alerts.state` pulls in no SQL or HTTP library.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AlertService", "AlertView", "DeliveryError", "Notification", "Outbox", "Receiver", "Rule",
    "evaluate_alerts", "load_rule_set",
]

_EXPORTS: dict[str, tuple[str, str]] = {
    "AlertService": ("alerts.service", "AlertService"),
    "AlertView": ("alerts.model", "AlertView"),
    "DeliveryError": ("alerts.model", "DeliveryError"),
    "Notification": ("alerts.model", "Notification"),
    "Outbox": ("alerts.outbox", "Outbox"),
    "Receiver": ("alerts.model", "Receiver"),
    "Rule": ("alerts.rules", "Rule"),
    "evaluate_alerts": ("alerts.cycle", "evaluate_alerts"),
    "load_rule_set": ("alerts.rules", "load_rule_set"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
