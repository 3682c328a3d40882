"""Slack incoming webhook: a message a person can act on at 3 a.m.

`text` is the notification's fallback (phones, screen readers); `blocks` carry the same:
what, where, value vs baseline, since when, the runbook's first sentence, the links.
The webhook URL is the secret (its path is the token): errors show its host only.

    >>> slack = Slack("oncall", webhook_url="https://hooks.slack.com/services/T/B/X")
    >>> slack.send(notification)  # 200 ok; 400/403/404/410 → no retry; 429/5xx → retry
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from alerts.model import Notification
from alerts.receivers._http import JsonPoster
from alerts.receivers._text import Digest, digest, truncate, utc_now

ICON = {"firing": ":red_circle:", "resolved": ":large_green_circle:"}
MAX_HEADER = 150  # Slack's limits: header text, section text, fallback text
MAX_SECTION = 3000
MAX_TEXT = 3000


def escape(text: str) -> str:
    """Slack mrkdwn: &, < and > are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, label: str) -> str:
    safe = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{escape(label)}>"


class Slack:
    kind = "slack"

    def __init__(
        self,
        name: str,
        *,
        webhook_url: str,
        timeout_s: float = 10,
        clock: Callable[[], datetime] = utc_now,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.timeout_s = timeout_s  # per read; the outbox bounds a whole send by a multiple
        self._clock = clock
        self._poster = JsonPoster(
            webhook_url,
            what=f"slack receiver {name!r}",
            timeout_s=timeout_s,
            url_is_secret=True,
            transport=transport,
        )

    def send(self, notification: Notification) -> None:
        self._poster.post(self.payload(notification))

    def payload(self, n: Notification) -> dict[str, Any]:
        d = digest(n, now=self._clock())
        return {"text": truncate(fallback(d), MAX_TEXT), "blocks": blocks(d)}

    def close(self) -> None:
        self._poster.close()

    def __repr__(self) -> str:
        return f"Slack(name={self.name!r}, webhook_url={self._poster.shown + '/***'!r})"


def fallback(d: Digest) -> str:
    parts = [f"{ICON.get(d.status, '')} {d.title}: {d.what}"]
    if d.where:
        parts.append(d.where)
    parts.append(f"since {d.since}")
    return escape(" | ".join(parts))


def blocks(d: Digest) -> list[dict[str, Any]]:
    main = [f"*What:* {escape(d.what)}"]
    if d.where:
        main.append(f"*Where:* `{escape(d.where)}`")
    if d.count == 1 and d.series:
        main.append(f"*Value:* {escape(d.series[0])}")
    main.append(f"*Since:* {escape(d.since)}")
    out: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(f"{ICON.get(d.status, '')} {d.title}", MAX_HEADER), "emoji": True},
        },
        _section("\n".join(main)),
    ]
    if d.count > 1:
        lines = [f"• {escape(s)}" for s in d.series]
        if d.more:
            lines.append(f"_and {d.more} more_")
        out.append(_section("*Series:*\n" + "\n".join(lines)))
    if d.runbook:
        out.append(_section(f"*Runbook:* {escape(d.runbook)}"))
    links = [link(u, t) for u, t in ((d.dashboard_url, "Dashboard"), (d.runbook_url, "Runbook")) if u]
    context = " · ".join([f"severity {d.severity}", *links, "attnmon"])
    out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return out


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, MAX_SECTION)}}
