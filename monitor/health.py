"""The daemon's own HTTP endpoints: `/healthz` and `/livez` (JSON) and Prometheus `/metrics`.

A small `http.server` in a thread, bound to `config.daemon.listen` (loopback unless the
config says otherwise). Port 0 picks a free port; `port` tells which one:

    >>> server = HealthServer("127.0.0.1:0", daemon.health, registry)   # doctest: +SKIP
    >>> server.start(); server.url                                       # doctest: +SKIP
    'http://127.0.0.1:40123'

Scrapes read what the daemon already holds in memory: no SQL on a scrape.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthFn = Callable[[], tuple[int, dict[str, Any]]]


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9464' -> ('127.0.0.1', 9464); '[::1]:0' -> ('::1', 0)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen={listen!r}: expected HOST:PORT (e.g. 127.0.0.1:9464)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper never holds the shutdown up
    health: HealthFn
    live: HealthFn | None
    registry: CollectorRegistry


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            code, body = self.server.health()
            self._send(code, "application/json", json.dumps(body).encode())
        elif path == "/livez" and self.server.live is not None:
            code, body = self.server.live()
            self._send(code, "application/json", json.dumps(body).encode())
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz, /livez or /metrics\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not worth a log line


class HealthServer:
    """Serves `/healthz` from `health()`, `/livez` from `live()` (when given) and
    `/metrics` from `registry`, in a thread."""

    def __init__(self, listen: str, health: HealthFn, registry: CollectorRegistry, live: HealthFn | None = None):
        self.host, port = parse_listen(listen)
        server_class = type(
            "_BoundServer",
            (_Server,),
            {"address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET},
        )
        self._server = server_class((self.host, port), _Handler)
        self._server.health = health
        self._server.live = live
        self._server.registry = registry
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the one picked when the config said 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="attnmon-http", daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
