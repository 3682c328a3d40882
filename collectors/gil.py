"""The background thread's courtesy to the serving threads it shares the GIL with."""

from __future__ import annotations

import time


def _yield_gil() -> None:
    """Let a serving thread that waits for the GIL have it now, rather than after up to
    the interpreter's switch interval (5 ms) of this thread's Python. A small gain, but a
    free one: in benchmarks.serving (5 alternating runs each) the serving call's p99 went
    from 2.26 to 2.07 ms and its p99.9 from 5.47 to 4.77 ms."""
    time.sleep(0)
