"""Email over SMTP: the Slack message's content as plain text, with a simple HTML part.

STARTTLS when `starttls` (never falling back to plain text), implicit TLS on port 465
(as Alertmanager does; `implicit_tls` overrides), login when a username is given. The password stays out of
errors and repr().

    >>> mail = Email("ops", host="smtp.example.com", sender="attnmon@example.com", to=["ops@example.com"])
    >>> mail.send(notification)  # 4xx replies, refused connections → retry; 5xx → no retry
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import socket
import ssl
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from alerts.model import DeliveryError, Notification
from alerts.receivers._http import register_secret, scrub
from alerts.receivers._text import Digest, digest, plain_text, truncate, utc_now

IMPLICIT_TLS_PORT = 465
MAX_SUBJECT = 200


def subject(d: Digest) -> str:
    where = f" {d.where}" if d.where else ""
    text = f"[{d.status.upper()}:{d.count}] {d.rule} ({d.severity}){where}"
    return truncate(" ".join(text.split()), MAX_SUBJECT)  # one line: a header has no newlines


def html_body(d: Digest) -> str:
    e = html.escape
    rows = [("What", e(d.what))] + ([("Ended", e(d.ended))] if d.ended else [])
    if d.where:
        rows.append(("Where", f"<code>{e(d.where)}</code>"))
    if d.count == 1 and d.series:
        rows.append(("Value", e(d.series[0])))
    rows.append(("Since", e(d.since)))
    if d.runbook or d.runbook_url:
        text = e(d.runbook or "open")
        rows.append(("Runbook", f'<a href="{e(d.runbook_url)}">{text}</a>' if d.runbook_url else text))
    if d.dashboard_url:
        rows.append(("Dashboard", f'<a href="{e(d.dashboard_url)}">{e(d.dashboard_url)}</a>'))
    if d.silence:
        rows.append(("Silence", f"<code>{e(d.silence)}</code>"))
    table = "".join(f"<tr><th align=left>{k}</th><td>{v}</td></tr>" for k, v in rows)
    series = ""
    if d.count > 1:
        items = "".join(f"<li>{e(s)}</li>" for s in d.series)
        more = f"<li>and {d.more} more</li>" if d.more else ""
        series = f"<p>Series:</p><ul>{items}{more}</ul>"
    return f"<html><body><h2>{e(d.title)}</h2><table>{table}</table>{series}</body></html>"


def _retry_for(code: int) -> bool:
    return not 500 <= code < 600  # SMTP 4xx: transient; 5xx: permanent


class Email:
    kind = "email"

    def __init__(
        self,
        name: str,
        *,
        host: str,
        sender: str,
        to: list[str],
        port: int = 587,
        starttls: bool = True,
        username: str | None = None,
        password: str | None = None,
        implicit_tls: bool | None = None,
        timeout_s: float = 10,
        clock: Callable[[], datetime] = utc_now,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.name = name
        self.host, self.port, self.starttls = host, port, starttls
        # TLS from the first byte: by default on port 465 only, as Alertmanager does
        self.implicit_tls = port == IMPLICIT_TLS_PORT if implicit_tls is None else implicit_tls
        self.sender, self.to = sender, list(to)
        self.timeout_s = timeout_s
        self._username, self._password = username, password
        self._secrets = register_secret(password) if password else {}
        self._clock = clock
        self._ssl = ssl_context or ssl.create_default_context()
        self._what = f"email receiver {name!r}"

    def message(self, n: Notification) -> EmailMessage:
        d = digest(n, now=self._clock())
        msg = EmailMessage()
        msg["Subject"] = subject(d)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="attnmon")
        # one thread per incident: firing and resolved mails of a group refer to one id
        thread = hashlib.sha256((n.dedup_key or n.group_key).encode()).hexdigest()[:32]
        msg["References"] = msg["In-Reply-To"] = f"<{thread}@attnmon>"
        msg.set_content(plain_text(d))
        msg.add_alternative(html_body(d), subtype="html")
        return msg

    def send(self, notification: Notification) -> None:
        msg = self.message(notification)
        where = f"{self.host}:{self.port}"
        try:
            with self._connect() as smtp:
                if self.starttls and not self.implicit_tls:
                    smtp.starttls(context=self._ssl)  # raises if not offered: no plain fallback
                if self._username:
                    smtp.login(self._username, self._password or "")
                smtp.send_message(msg, from_addr=self.sender, to_addrs=self.to)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"{self._what}: {where} refused every recipient ({self._scrub(exc.recipients)})",
                retry=all(_retry_for(c) for c in codes),
            ) from None
        except smtplib.SMTPResponseException as exc:  # auth, sender, data refused
            reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise DeliveryError(
                f"{self._what}: {where} answered {exc.smtp_code} {self._scrub(reply)}",
                retry=_retry_for(exc.smtp_code),
            ) from None
        except smtplib.SMTPNotSupportedError as exc:  # no STARTTLS / AUTH offered: config
            raise DeliveryError(f"{self._what}: {where}: {self._scrub(exc)}", retry=False) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, timed out, TLS, dropped
            raise DeliveryError(
                f"{self._what}: cannot deliver via {where}: {type(exc).__name__}: {self._scrub(exc)}",
                retry=True,
            ) from None

    def _connect(self) -> smtplib.SMTP:
        # the host name for EHLO without a DNS lookup (smtplib's getfqdn() can stall)
        local = socket.gethostname()
        if self.implicit_tls:
            return smtplib.SMTP_SSL(self.host, self.port, local, timeout=self.timeout_s, context=self._ssl)
        return smtplib.SMTP(self.host, self.port, local, timeout=self.timeout_s)

    def _scrub(self, text: object) -> str:
        return scrub(str(text), self._secrets)

    def close(self) -> None:
        """Nothing held between sends: one SMTP session per notification."""

    def __repr__(self) -> str:
        auth = f", username={self._username!r}, password='***'" if self._username else ""
        return f"Email(name={self.name!r}, host={self.host!r}, port={self.port}{auth})"
