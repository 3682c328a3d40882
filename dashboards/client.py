"""The Grafana HTTP API through `grafana-client`, with attnmon's errors.

The token comes from $ATTNMON_GRAFANA_TOKEN or a file (a service account token with
the Editor role on the attnmon folder, plus data source creation for `push`). It is
sent as `Authorization: Bearer ...` and never appears in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from monitor.errors import NOT_GIVEN, AttnmonError, ConfigError

TOKEN_ENV = "ATTNMON_GRAFANA_TOKEN"
T = TypeVar("T")


class GrafanaError(AttnmonError):
    """Grafana answered an error, or could not be reached (status 0); `reason` is the
    `status` word of Grafana's answer when it gave one (412: "version-mismatch", ...)."""

    def __init__(self, action: str, status: int, message: str, reason: str | None = None):
        self.action, self.status, self.reason = action, status, reason
        where = f"HTTP {status}" if status else "unreachable"
        super().__init__(f"Grafana: {action} failed ({where}): {message}")


def load_token(token_file: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError([("--token-file", token_file, exc.strerror or str(exc))], "argument") from None
        if not token:
            raise ConfigError([("--token-file", token_file, "the file is empty")], "argument")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError([(TOKEN_ENV, NOT_GIVEN, "not set: give a Grafana token (or --token-file)")], "environment")
    return token


def connect(url: str, token: str, timeout: float = 10.0):
    """A `GrafanaApi` for `url` (http://host:3000, with any sub-path)."""
    from grafana_client import GrafanaApi

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError([("--grafana-url", url, "not an http(s) URL")], "argument")
    return GrafanaApi.from_url(url, credential=token, timeout=timeout)


def call(action: str, fn: Callable[..., T], *args: Any, allow: tuple[int, ...] = (), **kwargs: Any) -> T | None:
    """fn(*args, **kwargs), with grafana-client's exceptions as GrafanaError; a status
    listed in `allow` returns None instead (e.g. 404 for "not there yet")."""
    from grafana_client.client import GrafanaException
    from niquests.exceptions import RequestException

    try:
        answer = fn(*args, **kwargs)
    except RequestException as exc:  # refused, DNS, TLS: grafana-client lets these through
        raise GrafanaError(action, 0, type(exc).__name__) from None
    except GrafanaException as exc:
        status = int(exc.status_code or 0)
        if status in allow:
            return None
        response = exc.response
        message, reason = (response.get("message"), response.get("status")) if isinstance(response, dict) else (None, None)
        raise GrafanaError(action, status, " ".join(str(message or exc.message).split()),
                           reason if isinstance(reason, str) else None) from None
    if isinstance(answer, str):  # grafana-client hands back a text/* body as it is
        raise GrafanaError(action, 200, "the answer was not JSON, so not Grafana's API: a proxy's sign-in "
                           "page? (check the Grafana URL and what stands in front of it)")
    return answer
