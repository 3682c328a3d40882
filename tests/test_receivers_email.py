"""The email receiver against aiosmtpd on loopback: plain SMTP, STARTTLS with login
(a self-signed certificate made by the test), implicit TLS; SMTP replies map to
DeliveryError(retry=...), and the password stays out of errors, logs and repr()."""

from __future__ import annotations

import email
import email.policy
import logging
import ssl
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from peers import (
    LOOPBACK,
    T0,
    alert,
    closed_port,
    free_port,
    notification,
    self_signed,
    unavailable,
)

from alerts.model import DeliveryError
from alerts.receivers import Email

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:  # the dev extra brings it
    Controller = None

PASSWORD = "smtp-Pa55w0rd-s3cr3t"


def clock():
    return T0 + timedelta(minutes=25)


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps what it receives; `reject` answers DATA with it."""

    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    reject: str | None = None

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        if self.reject:
            return self.reject
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


def check_login(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"attnmon", PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


@contextmanager
def smtp_server(inbox: Inbox, **options) -> Iterator[int]:
    if Controller is None:
        unavailable("aiosmtpd is not installed (pip install -e '.[dev]')")
    port = free_port()
    controller = Controller(inbox, hostname=LOOPBACK, port=port, ready_timeout=5, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def mailer(port: int, **kw) -> Email:
    options = {"starttls": False, "timeout_s": 5, "clock": clock} | kw
    return Email("ops", host=LOOPBACK, port=port, sender="attnmon@example.com", to=["oncall@example.com", "ml@example.com"], **options)


def text_of(msg: EmailMessage) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def test_plain_smtp_delivers_the_slack_content() -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        mailer(port).send(notification())
    ((mail_from, rcpt, msg),) = inbox.messages
    assert mail_from == "attnmon@example.com" and rcpt == ["oncall@example.com", "ml@example.com"]
    assert msg["From"] == "attnmon@example.com" and msg["To"] == "oncall@example.com, ml@example.com"
    assert msg["Subject"] == (
        "[FIRING:1] AttentionEntropyCollapse (critical) model=sasrec version=v42 cohort=all layer=0 head=1"
    )
    plain, html = text_of(msg)
    for part in (plain, html):
        assert "attention entropy collapsed" in part
        assert "model=sasrec version=v42 cohort=all layer=0 head=1" in part
        assert "-1.8 vs baseline 0" in part
        assert "2026-11-26 03:12:05 UTC (25 min ago)" in part
        assert "The series&#x27; attention now falls" in part or "The series' attention now falls" in part
        assert "https://grafana.example.com/d/attnmon-heads?var-model=sasrec" in part.replace("&amp;", "&")
        assert "Look at the heads" in part  # the whole runbook: what to do
        assert "attnmon alerts silence --match alertname=AttentionEntropyCollapse" in part


def test_a_resolved_group_lists_its_series_and_threads_with_the_firing_mail() -> None:
    inbox = Inbox()
    firing = notification([alert(layer=i // 5, head=i % 5) for i in range(12)])
    resolved = notification([alert(layer=i // 5, head=i % 5, status="resolved") for i in range(12)])
    with smtp_server(inbox) as port:
        m = mailer(port)
        m.send(firing)
        m.send(resolved)
    (_, _, first), (_, _, second) = inbox.messages
    assert second["Subject"] == "[RESOLVED:12] AttentionEntropyCollapse (critical) model=sasrec version=v42 cohort=all"
    assert first["References"] == second["References"] and first["Message-ID"] != second["Message-ID"]
    plain, _ = text_of(second)
    assert "  layer=0 head=0: last seen firing: -1.8 vs baseline 0 (resolved)" in plain
    assert plain.count("-1.8 vs baseline") == 10 and "  and 2 more" in plain
    assert "until 2026-11-26 03:40:05 UTC (28 min)" in plain


def test_starttls_with_login(tls) -> None:
    server_ctx, client_ctx = tls
    inbox = Inbox()
    with smtp_server(
        inbox, tls_context=server_ctx, require_starttls=True, authenticator=check_login, auth_require_tls=True
    ) as port:
        mailer(port, starttls=True, ssl_context=client_ctx, username="attnmon", password=PASSWORD).send(notification())
        with pytest.raises(DeliveryError) as err:  # a wrong password is refused (535): no retry
            mailer(port, starttls=True, ssl_context=client_ctx, username="attnmon", password="wrong-" + PASSWORD).send(
                notification()
            )
        assert err.value.retry is False and "535" in str(err.value)
        with pytest.raises(DeliveryError) as err:  # a certificate we do not trust: never sent in clear
            mailer(port, starttls=True, username="attnmon", password=PASSWORD).send(notification())
        assert err.value.retry is True and "SSLCertVerificationError" in str(err.value)
    assert len(inbox.messages) == 1


def test_implicit_tls(tls) -> None:
    server_ctx, client_ctx = tls
    inbox = Inbox()
    with smtp_server(inbox, ssl_context=server_ctx) as port:
        mailer(port, implicit_tls=True, ssl_context=client_ctx).send(notification())
    assert len(inbox.messages) == 1


def test_smtp_failures_map_to_retry_or_not() -> None:
    with smtp_server(Inbox()) as port:  # offers no STARTTLS: a config error, never a plain fallback
        with pytest.raises(DeliveryError) as err:
            mailer(port, starttls=True).send(notification())
        assert err.value.retry is False and "STARTTLS" in str(err.value)
    with smtp_server(Inbox(reject="451 4.3.0 try again later")) as port:
        with pytest.raises(DeliveryError) as err:
            mailer(port).send(notification())
        assert err.value.retry is True and "451" in str(err.value)
    with smtp_server(Inbox(reject="554 5.6.0 message refused")) as port:
        with pytest.raises(DeliveryError) as err:
            mailer(port).send(notification())
        assert err.value.retry is False and "554" in str(err.value)
    with closed_port() as port, pytest.raises(DeliveryError) as err:
        mailer(port).send(notification())
    assert err.value.retry is True and "ConnectionRefusedError" in str(err.value)


def test_the_password_stays_out_of_errors_logs_and_repr(tls, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server_ctx, client_ctx = tls
    errors = []

    def auth_echoing_password(server, session, envelope, mechanism, auth_data) -> AuthResult:
        # a careless server that quotes the credentials in its refusal
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad password {auth_data.password.decode()}")

    with smtp_server(
        Inbox(), tls_context=server_ctx, authenticator=auth_echoing_password, auth_require_tls=True
    ) as port:
        m = mailer(port, starttls=True, ssl_context=client_ctx, username="attnmon", password=PASSWORD)
        with pytest.raises(DeliveryError) as err:
            m.send(notification())
        errors.append(err.value)
    assert "bad password ***" in str(errors[0])
    with closed_port() as port, pytest.raises(DeliveryError) as err:
        mailer(port, username="attnmon", password=PASSWORD).send(notification())
    errors.append(err.value)

    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail"))  # not the peer's
    for text in [str(e) for e in errors] + ["".join(traceback.format_exception(e)) for e in errors] + [repr(m), ours]:
        assert PASSWORD not in text
    assert "password='***'" in repr(m)


def test_cert_files_are_made_by_the_test(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" in key.read_text()
