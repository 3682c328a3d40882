"""The `alerts` section of attnmon.yaml: rule files, receivers, routing and delivery.

Secrets never sit in the file: each is named by an environment variable (`*_env`) or a
file (`*_file`) and read when a receiver is built.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alerts.globs import check_patterns


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """A secret from the environment (`env`) or a file (`file`), never inline."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def read(self) -> str:
        from monitor.errors import ConfigError

        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError([(f"env {self.env}", "(unset)", "the secret's variable is not set")], "alerts")
            return value
        try:
            return Path(self.file).read_text().strip()
        except OSError as exc:
            raise ConfigError([(f"file {self.file}", "(unreadable)", exc.strerror or str(exc))], "alerts") from None


class AlertmanagerReceiver(_Strict):
    url: str  # base URL, e.g. http://alertmanager:9093 (POST {url}/api/v2/alerts)
    resend_interval_s: float = Field(60, gt=0)  # firing alerts are re-posted this often
    timeout_s: float = Field(10, gt=0)


class PagerDutyReceiver(_Strict):
    routing_key: Secret
    url: str = "https://events.pagerduty.com/v2/enqueue"
    timeout_s: float = Field(10, gt=0)


class SlackReceiver(_Strict):
    webhook_url: Secret  # incoming webhook URLs carry their token
    timeout_s: float = Field(10, gt=0)


class WebhookReceiver(_Strict):
    url: str | None = None
    url_secret: Secret | None = None  # when the URL itself carries a token
    timeout_s: float = Field(10, gt=0)
    max_alerts: int = Field(0, ge=0)  # as Alertmanager's: alerts per message, 0 = all

    @model_validator(mode="after")
    def _one_url(self) -> WebhookReceiver:
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("give exactly one of url or url_secret")
        return self


class EmailReceiver(_Strict):
    host: str
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: Secret | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout_s: float = Field(10, gt=0)


class ReceiverConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    alertmanager: AlertmanagerReceiver | None = None
    pagerduty: PagerDutyReceiver | None = None
    slack: SlackReceiver | None = None
    webhook: WebhookReceiver | None = None
    email: EmailReceiver | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ReceiverConfig:
        kinds = [k for k in ("alertmanager", "pagerduty", "slack", "webhook", "email") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(f"a receiver has exactly one of alertmanager, pagerduty, slack, webhook, email (got {kinds or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("alertmanager", "pagerduty", "slack", "webhook", "email") if getattr(self, k))


class Route(_Strict):
    """Which receivers get an alert: the first matching child routes (all of them when
    `continue` is set), else this route's receiver. Matchers are label globs."""

    receiver: str | None = None
    match: dict[str, tuple[str, ...]] = {}  # label -> globs, as a rule's match (alerts.globs)
    group_by: list[str] = ["alertname", "model", "version"]
    group_wait_s: float = Field(30, ge=0)  # collect a group's first alerts this long before sending
    continue_: bool = Field(False, alias="continue")
    routes: list[Route] = []

    @field_validator("match", mode="before")
    @classmethod
    def _globs(cls, v) -> dict[str, tuple[str, ...]]:
        if not isinstance(v, dict):
            raise ValueError(f"expected a mapping of label to glob(s), got {type(v).__name__}")
        return {str(k): check_patterns(str(k), x) for k, x in v.items()}


class DeliveryConfig(_Strict):
    backoff_initial_s: float = Field(5, gt=0)
    backoff_max_s: float = Field(300, gt=0)
    max_age_s: float = Field(86_400, gt=0)  # then a notification is marked failed with its error


WATCHDOG_KINDS = ("alertmanager", "webhook")  # a pagerduty one would page, slack or email post, every minute


class WatchdogConfig(_Strict):
    """The dead-man's switch (alerts/watchdog.py): where `AttnmonWatchdog` is sent while
    the leader evaluates. Not routed by `alerts.route`: only these receivers get it."""

    receivers: list[str] = []  # alertmanager or webhook receivers; empty: sent nowhere
    labels: dict[str, str] = {}  # added to its labels, e.g. {env: prod} to tell installations apart

    @field_validator("labels")
    @classmethod
    def _not_its_name(cls, v: dict[str, str]) -> dict[str, str]:
        if "alertname" in v:
            raise ValueError("alertname is the watchdog's own (AttnmonWatchdog): route on it, do not set it")
        if "severity" in v:  # a severity route (a pager's) would take an alert that always fires
            raise ValueError("severity is the watchdog's own (none, so that no severity route takes it): do not set it")
        return v


class AlertsConfig(_Strict):
    rules: list[str] = []  # rule files; empty: the shipped default pack
    external_url: str | None = None  # Grafana base URL, for links in notifications
    # where the README is served: a default rule's alert links base#runbook-<rule, lowercased>
    runbook_base_url: str | None = None
    receivers: list[ReceiverConfig] = []
    route: Route = Route()
    delivery: DeliveryConfig = DeliveryConfig()
    watchdog: WatchdogConfig = WatchdogConfig()

    @field_validator("runbook_base_url")
    @classmethod
    def _linkable(cls, v: str | None) -> str | None:
        from urllib.parse import urlsplit

        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
            raise ValueError("not an http(s) URL (e.g. https://github.com/you/attnmon/blob/main/README.md)")
        if "#" in v:
            raise ValueError("has a '#': attnmon adds the anchor (#runbook-<rule>)")
        return v

    @model_validator(mode="after")
    def _routes_name_receivers(self) -> AlertsConfig:
        names = {r.name for r in self.receivers}
        dup = sorted({r.name for r in self.receivers if [x.name for x in self.receivers].count(r.name) > 1})
        if dup:
            raise ValueError(f"receiver names must be unique: {dup}")
        missing: list[str] = []

        def walk(route: Route) -> None:
            if route.receiver is not None and route.receiver not in names:
                missing.append(route.receiver)
            for child in route.routes:
                walk(child)

        walk(self.route)
        if missing:
            raise ValueError(f"route names unknown receiver(s) {sorted(set(missing))}; known: {sorted(names)}")
        kinds = {r.name: r.kind for r in self.receivers}
        unknown = [n for n in self.watchdog.receivers if n not in names]
        if unknown:
            raise ValueError(f"watchdog.receivers names unknown receiver(s) {unknown}; known: {sorted(names)}")
        wrong = [f"{n} ({kinds[n]})" for n in self.watchdog.receivers if kinds[n] not in WATCHDOG_KINDS]
        if wrong:
            raise ValueError(f"watchdog.receivers: {', '.join(wrong)} cannot take the watchdog, an alert that always "
                             "fires (a pagerduty receiver would page for good, slack or email post at every "
                             "evaluation); name an alertmanager or webhook receiver (a dead-man's-switch URL)")
        return self
