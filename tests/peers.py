"""Real peers for the receiver and Grafana tests, on 127.0.0.1 only, started and stopped by the tests.

- `HttpPeer`: an HTTP server in a thread that records each request and answers with
  scripted statuses (PagerDuty, Slack, webhook, an Alertmanager webhook target).
- `silent_port` / `closed_port`: a port that accepts and never answers, one that refuses.
- `trickling_port`: a port that answers, a byte a second.
- `redirecting_port`: a port that redirects elsewhere, its short body a byte at a time.
- `alertmanager`: Debian's prometheus-alertmanager, run on a free port.
- `self_signed`: a certificate for 127.0.0.1, for the SMTP TLS tests.
- sample notifications (`alert`, `notification`).

Without a peer a test skips, unless ATTNMON_REQUIRE_PEERS=1 (CI), where it fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from alerts.model import AlertView, Notification

REQUIRE_PEERS_ENV = "ATTNMON_REQUIRE_PEERS"
LOOPBACK = "127.0.0.1"


def unavailable(reason: str) -> None:
    """Skip, or fail where CI says the peers must be there."""
    if os.environ.get(REQUIRE_PEERS_ENV, "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} ({REQUIRE_PEERS_ENV} is set, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on: connecting is refused."""
    yield free_port()


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen(8)
        yield s.getsockname()[1]


@contextmanager
def _answering(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A port whose server runs `answer(connection, stop)` for each connection, in a
    thread of its own; `stop` is set when the block ends."""
    stop = threading.Event()
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.1)

    def one(conn: socket.socket) -> None:
        with conn:
            try:
                answer(conn, stop)
            except OSError:  # the client gave up
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def trickling_port(interval_s: float = 1.0, headers_first: bool = False) -> AbstractContextManager[int]:
    """A port whose server reads each request, then answers a 200 with a JSON body one
    byte every `interval_s`: from the status line on, or (`headers_first`) after the
    headers sent whole. Each answer takes hours; all stop when the block ends."""
    body = b'{"id": 1, "message": "Annotation added"' + b" " * 20_000 + b"}"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        if headers_first:
            conn.sendall(head)
        for byte in body if headers_first else head + body:
            if stop.wait(interval_s):
                return
            conn.sendall(bytes([byte]))

    return _answering(answer)


def redirecting_port(location: str, interval_s: float) -> AbstractContextManager[int]:
    """A port whose server answers each request with a 302 to `location`, its headers
    whole and its 8-byte body one byte every `interval_s`."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 8\r\n\r\n" % location.encode())
        for byte in b"redirect":
            if stop.wait(interval_s):
                return
            conn.sendall(bytes([byte]))

    return _answering(answer)


# -- HTTP -------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class HttpPeer:
    """Records every request; answers with `answer` (an Answer, or a function of the
    Request returning one). `url` is its base URL."""

    def __init__(self, answer: Answer | Callable[[Request], Answer] | None = None):
        self.answer = answer or Answer()
        self.requests: queue.Queue[Request] = queue.Queue()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                request = Request("POST", self.path, dict(self.headers), self.rfile.read(length))
                peer.requests.put(request)
                a = peer.answer(request) if callable(peer.answer) else peer.answer
                body = a.body.encode()
                self.send_response(a.status)
                for k, v in a.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> HttpPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def next(self, timeout: float = 5.0) -> Request:
        try:
            return self.requests.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no request reached {self.url} within {timeout} s") from None

    def wait_for(self, predicate: Callable[[Request], bool], timeout: float) -> Request:
        """The first request (from now on) matching `predicate`; others are dropped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                request = self.requests.get(timeout=left)
            except queue.Empty:
                break
            if predicate(request):
                return request
        raise AssertionError(f"no matching request reached {self.url} within {timeout} s")


# -- Alertmanager -----------------------------------------------------------------------


def alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _get(url: str, timeout: float = 1.0) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with opener.open(url, timeout=timeout) as response:
        return response.status


@contextmanager
def alertmanager(workdir: Path, hook_url: str, start_timeout: float = 15.0) -> Iterator[str]:
    """A prometheus-alertmanager on a free loopback port whose one receiver is a webhook
    to `hook_url` (send_resolved); yields its base URL, stops it after."""
    binary = alertmanager_binary()
    if binary is None:
        unavailable("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    config = workdir / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: hook\n"
        "  group_by: [alertname]\n"
        "  group_wait: 1s\n"
        "  group_interval: 2s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: '{hook_url}'\n"
        "        send_resolved: true\n"
    )
    (workdir / "data").mkdir(exist_ok=True)
    log_path = workdir / "alertmanager.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--cluster.listen-address=",  # no gossip: one instance, loopback only
                f"--web.external-url={url}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"alertmanager exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
                try:
                    if _get(f"{url}/-/ready") == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"alertmanager not ready within {start_timeout} s:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- TLS --------------------------------------------------------------------------------


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """(cert, key) PEM files of a one-day certificate for 127.0.0.1 and localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attnmon test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# -- sample notifications ---------------------------------------------------------------

T0 = datetime(2026, 11, 26, 3, 12, 5, tzinfo=UTC)
RUNBOOK = (
    "The series' attention now falls on far fewer history items than in its baseline. "
    "Look at the heads-and-positions dashboard: is it one head or every head?"
)


def alert(
    *,
    rule: str = "AttentionEntropyCollapse",
    severity: str = "critical",
    status: str = "firing",
    layer: int = 0,
    head: int = 1,
    value: float | None = -1.8,
    baseline: float | None = 0.0,
    starts_at: datetime = T0,
    ends_at: datetime | None = None,
    **annotations: str,
) -> AlertView:
    labels = {
        "alertname": rule,
        "severity": severity,
        "model": "sasrec",
        "version": "v42",
        "cohort": "all",
        "layer": str(layer),
        "head": str(head),
    }
    notes = {
        "summary": f"model=sasrec version=v42 layer={layer} head={head}: attention entropy collapsed ({value} SDs from the baseline mean)",
        "runbook": RUNBOOK,
        "dashboard": "https://grafana.example.com/d/attnmon-heads?var-model=sasrec",
        **annotations,
    }
    return AlertView(
        fingerprint=hashlib.sha256(f"{rule}/{layer}/{head}".encode()).hexdigest()[:16],
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        labels=labels,
        annotations=notes,
        value=value,
        baseline_value=baseline,
        starts_at=starts_at,
        ends_at=ends_at if ends_at is not None or status == "firing" else starts_at + timedelta(minutes=28),
        generator_url="https://attnmon.example.com/alerts?rule=" + rule,
    )


def notification(alerts: list[AlertView] | None = None, *, receiver: str = "oncall", **kw: Any) -> Notification:
    alerts = alerts if alerts is not None else [alert()]
    status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    rule = alerts[0].rule if alerts else "none"
    return Notification(
        receiver=receiver,
        group_key=kw.pop("group_key", f'{{}}:{{alertname="{rule}", model="sasrec", version="v42"}}'),
        status=kw.pop("status", status),
        alerts=tuple(alerts),
        group_labels=kw.pop("group_labels", {"alertname": rule, "model": "sasrec", "version": "v42"}),
        dedup_key=kw.pop("dedup_key", f"attnmon-{rule}-sasrec-v42"),
        external_url=kw.pop("external_url", "https://grafana.example.com/d/attnmon-overview"),
        **kw,
    )
