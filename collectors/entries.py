"""Queue entries: what the serving calls append, made on the caller's thread.

An entry is a tuple whose first element names its kind ("one", "batch", "summaries",
"blocks", "rejected"). Making one copies what the caller may reuse and nothing more: the
arguments are read and checked on the background thread (collectors.block). `_READERS`
names the argument a call could not be copied for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import numpy as np


def _requests(weights) -> int:
    """How many requests a batch call holds, as far as can be told without reading it."""
    try:
        return len(weights)
    except Exception:  # (a scalar, a 0-d array)
        return 1


def one_entry(weights, item_ids, cohort, attributes, request_id, ts: float) -> tuple:
    """`observe`'s queue entry: private copies of what the caller may reuse."""
    return (
        "one",
        np.array(weights, copy=True),
        None if item_ids is None else _copy(item_ids),
        cohort,
        None if attributes is None else {k: _copy(v) for k, v in attributes.items()},
        request_id,
        ts,
    )


def batch_entry(weights, item_ids, lengths, cohorts, attributes, request_ids, ts, padding: str) -> tuple:
    """`observe_batch`'s queue entry: private copies of what the caller may reuse."""
    return (
        "batch",
        np.array(weights, copy=True),
        None if item_ids is None else _copy(item_ids),
        None if lengths is None else _copy(lengths),
        cohorts if cohorts is None or isinstance(cohorts, str) else list(cohorts),
        None if attributes is None else {k: _copy(v) for k, v in attributes.items()},
        None if request_ids is None else list(request_ids),
        ts,
        padding,
    )


def entry_size(entry: tuple) -> int:
    """Requests in a queue entry (what a full queue drops)."""
    if entry[0] == "batch":
        return len(entry[1]) if entry[1].ndim >= 1 else 1
    if entry[0] == "summaries":
        return int(getattr(entry[1], "size", 1))
    if entry[0] == "rejected":
        return entry[1]
    return 1


def _copy(values) -> np.ndarray:
    """A private copy as an array; mixed types (bytes beside str) become an object array."""
    try:
        return np.array(values, copy=True)
    except (TypeError, ValueError, UnicodeDecodeError):
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out


def _attributes(attributes) -> dict:
    if not isinstance(attributes, Mapping):
        raise TypeError(f"must be a mapping of name to values, got {type(attributes).__name__}")
    return {k: _copy(v) for k, v in attributes.items()}


def _epoch(ts: float | datetime) -> float:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (UTC)")
        return ts.timestamp()
    if isinstance(ts, np.datetime64):
        raise ValueError("a numpy datetime64 has no time zone: give epoch seconds or aware datetimes")
    return float(ts)


def _timestamps(ts) -> float | np.ndarray:
    """A batch's times: one for all (epoch seconds or an aware datetime), or one per
    request, as float64 epoch seconds."""
    if np.isscalar(ts) or isinstance(ts, datetime):
        return _epoch(ts)
    a = np.asarray(ts)
    if a.ndim == 0:
        return _epoch(a.item())
    if a.dtype.kind in "iuf":
        return a.astype(np.float64)  # (a copy)
    return np.array([_epoch(t) for t in a.reshape(-1)], dtype=np.float64).reshape(a.shape)


# What `_unreadable` reads each argument with, to name the one a call failed on
_READERS: dict[str, tuple[str, Callable]] = {
    "timestamp": ("bad_timestamp", _epoch),
    "timestamps": ("bad_timestamp", _timestamps),
    "weights": ("shape", lambda w: np.array(w, copy=True)),
    "item_ids": ("bad_value", _copy),
    "lengths": ("length_mismatch", _copy),
    "cohorts": ("bad_label", lambda c: c if isinstance(c, str) else list(c)),
    "attributes": ("bad_value", _attributes),
    "request_ids": ("bad_value", list),
}
