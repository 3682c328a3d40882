"""Handing a backlog's memory back to the OS once it is sent, where glibc keeps it.

When ProcessCollector's worker falls behind (it is starting, the host is busy, the store
is slow) the serving process's queue fills, up to queue_size calls, and the sender thread
then pickles it all at once. Once that is sent and freed, glibc keeps the memory for reuse
rather than returning it. In benchmarks.soak_rss the RSS did not grow per request (flat
for 20 minutes), but kept each backlog's high-water mark: 10-15 MB from the worker's
start, 34 MB more from a 30 s stop of the worker (3,000 calls queued), for good.

So after a send of at least TRIM_AFTER_BYTES (a backlog: a look at the queue in steady
state sends far less) the sender thread calls glibc's `malloc_trim(0)`, at most every
TRIM_EVERY_S; after that stop (16 MB sent at once) the RSS rose 3-6 MB. Not after every
send, nor on a timer: a trim walks every arena's free chunks with that arena locked, and
a serving thread that allocates meanwhile waits (3-41 ms after that stop; on a
fragmented heap of 1 GB the first trim took 0.15 s, of 5 GB in four threads' arenas 1 s
and then 0.25 s each). Never on a serving thread. Where
there is no glibc (musl, macOS) there is nothing to call and nothing is done.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

TRIM_AFTER_BYTES = 8 << 20  # 8 MiB sent at once; at 8,000 requests/s a look sent 1.5 MB (max 4.5)
TRIM_EVERY_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # (TypeError: Windows has no CDLL(None))
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


MALLOC_TRIM = _malloc_trim()


class Trimmer:
    """`sent(nbytes)` after each look at the queue (nbytes 0 when nothing was sent), once
    what was sent is freed: trims after a send of at least `after_bytes`, or at the first
    look `every_s` after the last trim if that one came sooner. `trim` None: never."""

    def __init__(self, trim: Callable[[int], int] | None, after_bytes: int = TRIM_AFTER_BYTES,
                 every_s: float = TRIM_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self._trim, self._after, self._every_s, self._clock = trim, after_bytes, every_s, clock
        self._last = -float("inf")
        self._due = False

    def sent(self, nbytes: int) -> None:
        if self._trim is None:
            return
        self._due = self._due or nbytes >= self._after
        if self._due and (now := self._clock()) - self._last >= self._every_s:
            self._last, self._due = now, False
            self._trim(0)
