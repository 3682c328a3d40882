"""Logging that a failure repeating on every batch cannot turn into a flood.

The collector's thread and the capture's hooks run in the serving process: a store that
stays down, or a capture that fails on every sampled batch, must not write a line (or a
traceback) each time. Their counters (stats, collector_health) keep the full count.
"""

from __future__ import annotations

import logging
import time


class RareLog:
    """`log(level, msg, *args, key=None, **kwargs)` logs each key at most every `every_s`.
    The key is the message by default: its arguments (counts, causes) vary between
    occurrences of one failure; pass `key=` where an argument names a different one."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0):
        self._logger, self._every_s = logger, every_s
        self._last: dict[object, float] = {}

    def __call__(self, level: int, msg: str, *args, key: object = None, **kwargs) -> None:
        key = msg if key is None else key
        now = time.monotonic()
        if now - self._last.get(key, -1e9) > self._every_s:
            self._last[key] = now
            self._logger.log(level, msg, *args, **kwargs)
