"""Helpers every CLI module shares: opening the store, printing text or JSON, times."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from monitor.config import CENTURY_DAYS, CENTURY_S, Config
from monitor.errors import ConfigError


def open_store(config: Config):
    """An engine on the configured store, which must be at the newest schema."""
    from monitor.store import make_engine, require_schema

    engine = make_engine(config.store_url)
    require_schema(engine)
    return engine


def no_such_model(conn, model: str) -> ConfigError:
    """The error for a --model the store does not know, naming the models it does."""
    from sqlalchemy import select

    from monitor.store import tables as t

    models = conn.execute(select(t.models.c.name).order_by(t.models.c.name)).scalars().all()
    return ConfigError([("--model", model, f"no such model in the store (models: "
                         f"{', '.join(models) or 'none yet'})")], "argument")


def emit(fmt: str, text: str, data) -> None:
    """`text` for people, or `data` as JSON with --format json."""
    print(json.dumps(data, default=str) if fmt == "json" else text)


# What a command adds to or takes from a time (a baseline's day, retention, a --since)
# must stay inside datetime's years 1 to 9999: times from the Unix epoch to year 9000,
# durations up to a century, as the config's durations (CENTURY_DAYS).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
TIME_RANGE = f"out of range: use a time from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)"
DURATION_RANGE = f"out of range: at most {CENTURY_DAYS:,}d (100 years)"


def parse_time(value: str, what: str = "time") -> datetime:
    """ISO 8601 (a time without zone is UTC), or `now`, or `now-2h` (the past) /
    `now+30m` (the future), with s, m, h or d; from EARLIEST to LATEST."""
    v = value.strip()
    if v.startswith("now"):
        rest = v[3:].strip()
        if not rest:
            return datetime.now(UTC)
        bad = ConfigError([(what, value, "use now, now-2h (2 hours ago) or now+2h (in 2 hours); "
                                         "units s, m, h or d")], "argument")
        if rest[0] not in "+-":
            raise bad
        try:
            delta = parse_duration(rest[1:].strip(), what)
        except ConfigError as exc:
            if exc.problems[0][2] == DURATION_RANGE:
                raise ConfigError([(what, value, DURATION_RANGE)], "argument") from None
            raise bad from None
        return datetime.now(UTC) + (delta if rest[0] == "+" else -delta)
    try:
        ts = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError([(what, value, "not an ISO 8601 time (e.g. 2026-11-20T08:00Z) or now-2h")], "argument") from None
    try:
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except OverflowError:  # (0001-01-01T00:00+05:00 is before year 1 in UTC)
        raise ConfigError([(what, value, TIME_RANGE)], "argument") from None
    if not EARLIEST <= ts < LATEST:
        raise ConfigError([(what, value, TIME_RANGE)], "argument")
    return ts


def parse_duration(value: str, what: str = "duration") -> timedelta:
    """A non-negative number and s, m, h or d: `90s`, `30m`, `2h`, `1.5d`; at most a century."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        n, unit = float(value[:-1]), value[-1]
        if not math.isfinite(n) or n < 0:
            raise ValueError(value)
        seconds = n * units[unit]
    except (ValueError, KeyError, IndexError):
        raise ConfigError([(what, value, "use a number and s, m, h or d (e.g. 2h)")], "argument") from None
    return within_century(timedelta(seconds=seconds) if seconds <= CENTURY_S else None, what, value)


def within_century(span: timedelta | None, what: str, value) -> timedelta:
    """`span`, or the error naming `what` when it is over a century (None: too large for a
    timedelta at all)."""
    if span is None or span > timedelta(seconds=CENTURY_S):
        raise ConfigError([(what, value, DURATION_RANGE)], "argument")
    return span
