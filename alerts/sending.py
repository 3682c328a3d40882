"""One send to a receiver, in a thread of its own, waited for at most a deadline.

Receivers' timeouts apply to each read (httpx, smtplib): a peer that answers one byte at a
time would hold a send, and the deliver job with it, for hours. The job waits a deadline
instead; a send still running then is kept here, with the rows it claimed, so that a
later run records what it finally did (and sends nothing twice meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

# a send still running this many deadlines after it started is abandoned (its thread left
# to end): 2 minutes at the default timeout, within Alertmanager's 5-minute resolve_timeout
GIVE_UP_DEADLINES = 4


@dataclass
class Send:
    receiver: str
    rows: list[Mapping]  # the notification rows it claimed ([] for an Alertmanager re-send)
    claim: datetime | None  # the rows' next_attempt_at as claimed: the claim's token
    thread: threading.Thread | None = None
    deadline_s: float = 0.0  # how long the deliver job waited for it
    give_up_s: float = 0.0
    failure: list[BaseException] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def abandoned(self) -> bool:
        return self.running and time.monotonic() - self.started > self.give_up_s

    def raise_failure(self) -> None:
        """Re-raise what the send raised, if anything (in the caller's thread)."""
        if self.failure:
            raise self.failure[0]


def start(receiver: str, fn: Callable[[], None], rows: list[Mapping], claim: datetime | None,
          deadline_s: float) -> Send:
    """Run `fn` in a daemon thread and wait for it at most `deadline_s`."""
    send = Send(receiver, rows, claim, deadline_s=deadline_s, give_up_s=GIVE_UP_DEADLINES * deadline_s)

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the deliver job
            send.failure.append(exc)

    send.thread = threading.Thread(target=run, name=f"attnmon-send-{receiver}", daemon=True)
    send.thread.start()
    send.thread.join(deadline_s)
    return send
