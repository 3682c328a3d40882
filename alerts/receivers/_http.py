"""One JSON POST with a timeout, its answer classified, secrets kept out of sight.

Secrets here are a Slack webhook URL (its path is its token), a webhook `url_secret`, a
PagerDuty routing key. They never reach an exception, a log line or a repr():

- errors name a secret URL by scheme and host only (`shown_url`), and any text we quote
  (an exception's, a peer's answer) has the secret's parts replaced by `***` (`scrub`);
- httpx logs every request's full URL at INFO on the `httpx` logger, so a filter on that
  logger scrubs every secret a receiver registered (`register_secret`).
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from alerts.model import DeliveryError

log = logging.getLogger("attnmon.alerts.receivers")
USER_AGENT = "attnmon-alerts/0.1"


def shown_url(url: str, *, secret: bool) -> str:
    """The URL as errors show it: scheme://host[:port] for a secret URL; otherwise
    without user info, query or fragment (they may carry tokens too)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    base = f"{parts.scheme}://{host}{port}"
    return base if secret else base + parts.path


def secret_parts(value: str) -> dict[str, str]:
    """The strings that give `value` away, each with what replaces it: a secret URL
    becomes scheme://host/***; its path, query and password are hidden on their own too
    (httpx may print a URL normalised, so the whole string is not enough)."""
    parts = {value: "***"}
    try:
        split = urlsplit(value)
        if split.scheme and split.netloc:
            parts[value] = shown_url(value, secret=True) + "/***"
            parts[split.path + (f"?{split.query}" if split.query else "")] = "/***"
            parts[str(httpx.URL(value).raw_path, "ascii")] = "/***"
            parts[split.query] = parts[split.password or ""] = "***"
    except (ValueError, httpx.InvalidURL):
        pass
    return {p: r for p, r in parts.items() if len(p) > 1}


def scrub(text: str, secrets: dict[str, str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, secrets[secret])
    return text


class _ScrubSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            hidden = scrub(message, self.secrets)
            if hidden != message:
                record.msg, record.args = hidden, ()
        return True


_HTTPX_LOG_FILTER = _ScrubSecrets()
logging.getLogger("httpx").addFilter(_HTTPX_LOG_FILTER)


def register_secret(value: str) -> dict[str, str]:
    """Scrub `value` from httpx's log lines from now on; returns its parts for `scrub`."""
    parts = secret_parts(value)
    _HTTPX_LOG_FILTER.secrets.update(parts)
    return parts


def rfc3339(when: datetime) -> str:
    """UTC, millisecond precision, `Z` (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity: such values are sent as null."""
    return float(x) if x is not None and math.isfinite(x) else None


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks us to wait (delay-seconds or an HTTP date, RFC
    9110 §10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retryable(status: int) -> bool:
    """5xx, 429 (rate limited) and 408 (timeout) may pass later; any other 4xx means
    the request itself is wrong, and a 3xx that we were sent elsewhere (we don't follow)."""
    return status >= 500 or status in (408, 429)


class JsonPoster:
    """POSTs JSON to one URL with a timeout; raises DeliveryError on anything but 2xx.

    `what` names the receiver in messages ("slack receiver 'oncall'"). `secrets` are
    strings to scrub from messages; a secret URL (`url_is_secret`) is added to them.
    """

    def __init__(
        self,
        url: str,
        *,
        what: str,
        timeout_s: float,
        url_is_secret: bool = False,
        secrets: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.what = what
        self.shown = shown_url(url, secret=url_is_secret)
        self.timeout_s = timeout_s
        self._url = url
        self._secrets = {**(secrets or {}), **(register_secret(url) if url_is_secret else {})}
        self._client = httpx.Client(
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,  # a redirect must not carry a token to another host
            headers={"User-Agent": USER_AGENT},
        )

    def post(self, body: Any) -> httpx.Response:
        content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        headers = {"Content-Type": "application/json"}
        try:
            response = self._client.post(self._url, content=content, headers=headers)
        except httpx.TimeoutException:
            raise DeliveryError(
                f"{self.what}: no answer from {self.shown} within {self.timeout_s:g} s", retry=True
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise DeliveryError(f"{self.what}: bad URL {self.shown}: {self._scrub(exc)}", retry=False) from None
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS, proxy: may pass later
            raise DeliveryError(
                f"{self.what}: cannot reach {self.shown}: {type(exc).__name__}: {self._scrub(exc)}",
                retry=True,
            ) from None
        if not response.is_success:
            answer = self._scrub(response.text.strip()[:200])
            after = response.headers.get("Retry-After")
            raise DeliveryError(
                f"{self.what}: HTTP {response.status_code} from {self.shown}"
                + (f": {answer}" if answer else "")
                + (f" (Retry-After: {after})" if after else ""),
                retry=retryable(response.status_code),
                retry_after_s=retry_after_s(after),
            )
        log.debug("%s: HTTP %d from %s", self.what, response.status_code, self.shown)
        return response

    def _scrub(self, text: object) -> str:
        return scrub(str(text), self._secrets)

    def close(self) -> None:
        self._client.close()
