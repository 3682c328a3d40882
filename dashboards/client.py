"""The Grafana HTTP API through `grafana-client`, with attnmon's errors.

The token comes from $ATTNMON_GRAFANA_TOKEN or a file (a service account token with
the Editor role on the attnmon folder, plus data source creation for `push`). It is
sent as `Authorization: Bearer ...` and never appears in an error message.

Each call is bounded as a whole (`dashboards.bounded`): a Grafana that accepts the
connection and then hangs or trickles is cut after `timeout` (2 × `timeout` at most).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from monitor.errors import NOT_GIVEN, AttnmonError, ConfigError

TOKEN_ENV = "ATTNMON_GRAFANA_TOKEN"
NOT_JSON = ("the answer was not JSON, so not Grafana's API: a proxy's sign-in page? (check the Grafana URL "
            "and what stands in front of it)")
T = TypeVar("T")


class GrafanaError(AttnmonError):
    """Grafana answered an error, or gave no answer (status 0): could not be reached
    (`connected` False) or the answer broke off or was cut (`connected` True). `reason`
    is the `status` word of Grafana's answer when it gave one (412: "version-mismatch")."""

    def __init__(self, action: str, status: int, message: str, reason: str | None = None,
                 connected: bool = True):
        self.action, self.status, self.message, self.reason = action, status, message, reason
        self.connected = bool(status) or connected
        super().__init__(f"Grafana: {action} failed ({self.where}): {message}")

    @property
    def where(self) -> str:
        """What failed, in two words: "HTTP 403", "no answer" or "unreachable"."""
        if self.status:
            return f"HTTP {self.status}"
        return "no answer" if self.connected else "unreachable"

    @property
    def fatal(self) -> bool:
        """No other call can succeed either: Grafana cannot be reached, or it refuses the token."""
        return self.status == 401 or not self.connected


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
    """A `GrafanaApi` for `url` (http://host:3000, with any sub-path); `timeout` bounds
    the connection and each read, and each call as a whole (see `dashboards.bounded`)."""
    from grafana_client import GrafanaApi

    from dashboards.bounded import BoundedSession

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError([("--grafana-url", url, "not an http(s) URL")], "argument")
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    # grafana-client's session bounds each read only: a trickling Grafana would hold a call
    session = BoundedSession(timeout, pool_maxsize=api.client.session_pool_size)
    session.headers.update(api.client.s.headers)  # its User-Agent (and org id, were one set)
    api.client.s.close()
    api.client.s = session
    return api


def call(action: str, fn: Callable[..., T], *args: Any, allow: tuple[int, ...] = (), **kwargs: Any) -> T | None:
    """fn(*args, **kwargs), with grafana-client's exceptions as GrafanaError; a status
    listed in `allow` returns None instead (e.g. 404 for "not there yet")."""
    from grafana_client.client import GrafanaException
    from niquests.exceptions import JSONDecodeError, RequestException

    try:
        answer = fn(*args, **kwargs)
    except JSONDecodeError:  # a whole answer (2xx, not text/*) that is not JSON: not a transport error
        raise GrafanaError(action, 200, NOT_JSON) from None
    except RequestException as exc:  # refused, DNS, TLS, reset: grafana-client lets these through
        raise _no_answer(action, exc) from None
    except GrafanaException as exc:
        status = int(exc.status_code or 0)
        if not status:  # a timeout (or cut), the transport's exception as its cause
            raise _no_answer(action, exc.__cause__ or exc) from None
        if status in allow:
            return None
        response = exc.response
        message, reason = (response.get("message"), response.get("status")) if isinstance(response, dict) else (None, None)
        raise GrafanaError(action, status, " ".join(str(message or exc.message).split()),
                           reason if isinstance(reason, str) else None) from None
    if isinstance(answer, str):  # grafana-client hands back a text/* body as it is
        raise GrafanaError(action, 200, NOT_JSON)
    return answer


def _no_answer(action: str, exc: BaseException) -> GrafanaError:
    """The error for a call Grafana gave no answer to (`exc`: the transport's exception)."""
    from niquests.exceptions import ConnectionError, Timeout

    from dashboards.bounded import Overdue, no_connection

    if no_connection(exc):
        return GrafanaError(action, 0, type(exc).__name__, connected=False)
    if isinstance(exc, Overdue):
        detail = str(exc)
    elif isinstance(exc, Timeout):
        detail = f"none within the read timeout ({type(exc).__name__})"
    elif isinstance(exc, ConnectionError):  # reset, closed: urllib3's words are short and hold no secret
        detail = f"the connection broke off ({' '.join(str(exc).split())[:200]})"
    else:  # the body broke off (ChunkedEncodingError), ...
        detail = f"the answer broke off ({type(exc).__name__})"
    return GrafanaError(action, 0, detail)
