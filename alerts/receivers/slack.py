"""Slack incoming webhook: a message a person can act on at 3 a.m.

`text` is the notification's fallback (phones, screen readers); `blocks` carry the same:
what, where, value vs baseline, since when, the runbook, the links, how to silence it.
The webhook URL is the secret (its path is the token): errors show its host only.

Label values, summaries and series are data: `*`, `_`, `~` and backticks in them would be
read as mrkdwn formatting, and mrkdwn has no way to escape those. So data goes only in
`plain_text` text objects (shown as written, emoji codes too), and mrkdwn carries only our
own words: the bold labels ("What:") and the links. The fallback `text` is sent with
`"mrkdwn": false` (no formatting parsed), and &, < and > in it are escaped, as Slack asks
of any message text.

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

ICON = {"firing": ":red_circle:", "resolved": ":large_green_circle:", "ended": ":warning:"}
# Slack's limits: header text; section text and fallback text; a field's text; fields
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_TEXT = 3000
MAX_FIELD = 2000
MAX_FIELDS = 10


def escape(text: str) -> str:
    """&, < and > are control characters in the text Slack parses (mrkdwn, the fallback)."""
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
        return {"text": truncate(fallback(d), MAX_TEXT), "mrkdwn": False, "blocks": blocks(d)}

    def close(self) -> None:
        self._poster.close()

    def __repr__(self) -> str:
        return f"Slack(name={self.name!r}, webhook_url={self._poster.shown + '/***'!r})"


def fallback(d: Digest) -> str:
    parts = [f"{ICON.get(d.status, '')} {d.title}: {d.what}"] + ([d.ended] if d.ended else [])
    if d.where:
        parts.append(d.where)
    parts.append(f"since {d.since}")
    return escape(" | ".join(parts))


def blocks(d: Digest) -> list[dict[str, Any]]:
    main = [("What", d.what)] + ([("Ended", d.ended)] if d.ended else [])
    if d.where:
        main.append(("Where", d.where))
    if d.count == 1 and d.series:
        main.append(("Value", d.series[0]))
    main.append(("Since", d.since))
    out: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(f"{ICON.get(d.status, '')} {d.title}", MAX_HEADER), "emoji": True},
        },
        _fields(main),
    ]
    if d.count > 1:
        lines = [f"• {s}" for s in d.series] + ([f"and {d.more} more"] if d.more else [])
        out.append({"type": "section", "text": _mrkdwn("*Series:*")})
        out.append({"type": "section", "text": _plain("\n".join(lines), MAX_SECTION)})
    if d.runbook:
        out.append(_fields([("Runbook", d.runbook)]))
    if d.silence:
        out.append(_fields([("Silence", d.silence)]))
    links = [link(u, t) for u, t in ((d.dashboard_url, "Dashboard"), (d.runbook_url, "Runbook")) if u]
    context = " · ".join([f"severity {escape(d.severity)}", *links, "attnmon"])
    out.append({"type": "context", "elements": [_mrkdwn(context)]})
    return out


def _fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """A section of (label, data) pairs, two columns: the label in bold mrkdwn, the data
    as plain text."""
    fields = [f for label, data in pairs for f in (_mrkdwn(f"*{label}:*"), _plain(data, MAX_FIELD))]
    return {"type": "section", "fields": fields[:MAX_FIELDS]}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, MAX_SECTION)}


def _plain(data: str, limit: int) -> dict[str, Any]:
    # emoji off: a ":fire:" in a label value stays text
    return {"type": "plain_text", "text": truncate(data, limit) or "(empty)", "emoji": False}
