"""An HTTP session whose every request is bounded as a whole, not per read.

niquests' timeouts (urllib3's) apply to the connection and to each read: a Grafana that
accepts the connection and then answers a byte at a time (a stalled proxy, a server
swapping) holds a request for as long as it trickles, and the daemon's annotate job with
it. This session cuts a request at `total_s`:

- until the answer's headers are in, a timer closes the session's connections, which
  ends the read in flight at once, and closes them again every CUT_AGAIN_S until the
  request returns: a connection it opens after a close (a redirect's next hop) is cut
  too (a new connection is opened for the next request);
- the body is read as it arrives and dropped once the request has run `total_s`; a body
  that stops dead ends at the read timeout after its last byte, so a request takes at
  most `total_s` + the read timeout (2 × `total_s` as `dashboards.client.connect` sets them).

Either way the request raises `Overdue` (a niquests `Timeout`). One request at a time:
the timer closes every connection of the session.

    >>> session = BoundedSession(10.0)
    >>> session.get("http://grafana:3000/api/health", timeout=10.0)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from typing import Any

import niquests
from niquests.exceptions import (
    ConnectionError,
    ConnectTimeout,
    ProxyError,
    RequestException,
    SSLError,
    Timeout,
)
from niquests.packages.urllib3.exceptions import MaxRetryError

CUT_AGAIN_S = 0.05  # past the deadline, how often the session's connections are closed again


class Overdue(Timeout):
    """No complete answer within the session's `total_s`."""


def no_connection(exc: BaseException) -> bool:
    """True when the request never reached the server (refused, DNS, connect timeout,
    TLS, proxy), False when it did and the answer failed (reset, read timeout, cut)."""
    if isinstance(exc, (ConnectTimeout, ProxyError, SSLError)):
        return True
    # a connection that could not be made comes wrapped in urllib3's MaxRetryError (no
    # retries: the first try is the last); a broken answer comes as it is
    return isinstance(exc, ConnectionError) and bool(exc.args) and isinstance(exc.args[0], MaxRetryError)


class BoundedSession(niquests.Session):
    def __init__(self, total_s: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.total_s = total_s

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> niquests.Response:
        if kwargs.get("stream"):  # the caller reads the body: not ours to bound
            return super().request(method, url, *args, **kwargs)
        deadline = time.monotonic() + self.total_s
        returned = threading.Event()
        cut = threading.Thread(target=self._cut_until, args=(returned,), daemon=True)
        cut.start()
        try:
            response = super().request(method, url, *args, **dict(kwargs, stream=True))
            body = []
            for chunk in response.iter_content(None):  # as it arrives, whatever its size
                body.append(chunk)
                if time.monotonic() > deadline:
                    response.close()
                    raise self._overdue()
            # what .content, .text and .json() read, as niquests sets it after its own read
            response._content = b"".join(body)
            return response
        except Overdue:
            raise
        except RequestException as exc:
            if no_connection(exc) or time.monotonic() < deadline:
                raise
            raise self._overdue() from exc  # the timer's close, or a read timeout past the deadline
        finally:
            returned.set()
            cut.join()  # a close already under way ends before the next request starts

    def _cut_until(self, returned: threading.Event) -> None:
        """At `total_s`, close the session's connections, and again until `returned`: one
        close ends the connections open then, not one the request opens after it."""
        if returned.wait(self.total_s):
            return
        while True:
            self.close()
            if returned.wait(CUT_AGAIN_S):
                return

    def _overdue(self) -> Overdue:
        return Overdue(f"none complete within {self.total_s:g} s")
