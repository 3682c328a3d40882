"""Receivers: a Notification in a peer's wire format, sent with a timeout.

    alertmanager  POST {url}/api/v2/alerts; `resend(alerts)` while firing
    pagerduty     Events API v2, one incident per dedup_key
    slack         incoming webhook (text + blocks)
    webhook       Alertmanager's webhook JSON (version 4), for existing tooling
    email         SMTP (STARTTLS / implicit TLS, login)

Each has `name`, `kind`, `send(notification)` (raises DeliveryError(retry=...)), a pure
`payload(notification)` (`message` for email) and `close()`. Secrets are read once, by
`build`, and never appear in errors, logs or repr().

    >>> receiver = build(config.alerts.receivers[0])  # ConfigError if a secret is unset
    >>> receiver.send(notification)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

from alerts.config import ReceiverConfig
from alerts.model import Receiver
from alerts.receivers._http import shown_url
from alerts.receivers._text import utc_now
from alerts.receivers.alertmanager import Alertmanager
from alerts.receivers.email import Email
from alerts.receivers.pagerduty import PagerDuty
from alerts.receivers.slack import Slack
from alerts.receivers.webhook import Webhook
from monitor.errors import NOT_GIVEN, ConfigError

__all__ = ["Alertmanager", "Email", "PagerDuty", "Slack", "Webhook", "build"]


def build(cfg: ReceiverConfig, *, clock: Callable[[], datetime] = utc_now) -> Receiver:
    """The receiver `cfg` describes, its secrets read now (ConfigError if one is missing
    or a URL is not http(s)). `clock` gives "now" for endsAt and "25 min ago"."""
    kind = cfg.kind
    c = getattr(cfg, kind)
    field = f"receivers.{cfg.name}.{kind}"
    if kind == "alertmanager":
        _check_url(f"{field}.url", c.url, secret=False)
        return Alertmanager(
            cfg.name, c.url, resend_interval_s=c.resend_interval_s, timeout_s=c.timeout_s, clock=clock
        )
    if kind == "pagerduty":
        _check_url(f"{field}.url", c.url, secret=False)
        return PagerDuty(cfg.name, routing_key=_read(f"{field}.routing_key", c.routing_key), url=c.url, timeout_s=c.timeout_s, clock=clock)
    if kind == "slack":
        url = _read(f"{field}.webhook_url", c.webhook_url)
        _check_url(f"{field}.webhook_url", url, secret=True)
        return Slack(cfg.name, webhook_url=url, timeout_s=c.timeout_s, clock=clock)
    if kind == "webhook":
        secret = c.url_secret is not None
        url = _read(f"{field}.url_secret", c.url_secret) if secret else c.url
        _check_url(f"{field}.url" + ("_secret" if secret else ""), url, secret=secret)
        return Webhook(cfg.name, url=url, url_is_secret=secret, timeout_s=c.timeout_s, max_alerts=c.max_alerts)
    if kind == "email":
        if c.username and c.password is None:
            raise ConfigError([(f"{field}.password", NOT_GIVEN, "a username needs a password")], "alerts")
        return Email(
            cfg.name,
            host=c.host,
            port=c.port,
            starttls=c.starttls,
            username=c.username,
            password=_read(f"{field}.password", c.password) if c.password is not None else None,
            sender=c.sender,
            to=c.to,
            timeout_s=c.timeout_s,
            clock=clock,
        )
    raise AssertionError(f"unknown receiver kind {kind!r}")  # ReceiverConfig allows no other


def _read(field: str, secret) -> str:
    """A secret's value; a missing one is an error naming the receiver's field too."""
    try:
        return secret.read()
    except ConfigError as exc:
        raise ConfigError([(f"{field} ({where})", value, msg) for where, value, msg in exc.problems],
                          "alerts") from None


def _check_url(field: str, url: str, *, secret: bool) -> None:
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError([(field, shown_url(url, secret=secret), "not an http(s) URL")], "alerts")
