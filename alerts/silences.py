"""Silences: label matchers and a time range that stop notifications, not evaluation.

    >>> sid = create(engine, ["model=demo-sasrec", "severity!=critical"],
    ...              timedelta(hours=2), "deploy of v3", "alice", now)     # doctest: +SKIP

A matcher is `name=value` (equal), `name!=value`, `name=~regex` or `name!~regex` (whole
value). A silence is active from `starts_at` until `ends_at` and expires by itself;
`expire` ends one early. Alerts stay evaluated and keep their state while silenced:
the deliver job marks their notifications `silenced` instead of sending them, and sends
a firing one after all if its silence ends while the alert still fires.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from monitor.errors import NOT_GIVEN, ConfigError
from monitor.store import tables as t
from monitor.store.maintenance import as_utc

_OPS = ("=~", "!~", "!=", "=")  # longest first: `a!=b` is not `a!` = `b`
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # = != =~ !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = str(labels.get(self.name, ""))
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = re.fullmatch(self.value, v) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    for op in _OPS:
        name, sep, value = text.partition(op)
        if sep:
            name = name.strip()
            if not _NAME.match(name):
                break
            if op in ("=~", "!~"):
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ConfigError([("--match", text, f"bad regular expression: {exc}")], "argument") from None
            return Matcher(name, op, value)
    raise ConfigError([("--match", text, "expected NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")], "argument")


def alert_label_names(rules, stored: Iterable[str] = ()) -> set[str]:
    """The label names alerts carry: alertname and severity, a series' labels, those the
    rules add, and (`stored`) those of alerts already in the store."""
    from alerts.state import EXTRA_SERIES_LABELS, SERIES_LABELS

    return {"alertname", "severity", *SERIES_LABELS, *EXTRA_SERIES_LABELS,
            *(k for r in rules for k in r.labels), *stored}


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def silences(self, labels: Mapping[str, str], now: datetime) -> bool:
        return self.active(now) and all(m.matches(labels) for m in self.matchers)

    def as_dict(self, now: datetime) -> dict:
        return {
            "id": self.id, "matchers": [str(m) for m in self.matchers],
            "starts_at": self.starts_at.isoformat(), "ends_at": self.ends_at.isoformat(),
            "created_by": self.created_by, "comment": self.comment,
            "created_at": self.created_at.isoformat(), "active": self.active(now),
        }


def silenced(silences: Iterable[Silence], labels: Mapping[str, str], now: datetime) -> bool:
    return any(s.silences(labels, now) for s in silences)


def _from_row(r: Mapping) -> Silence:
    ms = tuple(Matcher(m["name"], m["op"], m["value"]) for m in r["matchers"])
    return Silence(r["id"], ms, as_utc(r["starts_at"]), as_utc(r["ends_at"]), r["created_by"],
                   r["comment"], as_utc(r["created_at"]))


def create(engine: Engine, matchers: Sequence[str | Matcher], duration: timedelta, comment: str,
           created_by: str, now: datetime, starts_at: datetime | None = None) -> str:
    """A new silence from `starts_at` (default now) for `duration`; returns its id."""
    ms = [m if isinstance(m, Matcher) else parse_matcher(m) for m in matchers]
    if not ms:
        raise ConfigError([("--match", NOT_GIVEN, "give at least one matcher (a silence of everything is too easy to forget)")], "argument")
    if duration <= timedelta(0):
        raise ConfigError([("--for", str(duration), "must be positive")], "argument")
    if not comment.strip():
        raise ConfigError([("--comment", comment, "say why (the next on-call reads it)")], "argument")
    start = as_utc(starts_at or now)
    sid = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(t.silences.insert().values(
            id=sid, matchers=[{"name": m.name, "op": m.op, "value": m.value} for m in ms],
            starts_at=start, ends_at=start + duration, created_by=created_by[:200],
            comment=comment, created_at=as_utc(now),
        ))
    return sid


def load(conn: Connection, now: datetime | None = None, *, include_expired: bool = False) -> list[Silence]:
    """Silences not yet expired at `now` (all of them with include_expired), oldest first."""
    s = t.silences
    q = select(s).order_by(s.c.created_at, s.c.id)
    if not include_expired and now is not None:
        q = q.where(s.c.ends_at > now)
    return [_from_row(r) for r in conn.execute(q).mappings()]


def expire(engine: Engine, silence_id: str, now: datetime) -> bool:
    """End a silence now; False when no such silence is still running."""
    s = t.silences
    with engine.begin() as conn:
        n = conn.execute(update(s).where(s.c.id == silence_id, s.c.ends_at > now).values(ends_at=now)).rowcount
    return bool(n)
