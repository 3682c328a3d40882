"""The notification outbox: transitions in, grouped messages out, at least once.

Enqueue (in the evaluation's own transaction, so a state change and its notifications
commit together): each transition to firing or resolved becomes one `notifications` row
per receiver the route tree selects, due `group_wait_s` later. The unique key
(fingerprint, receiver, transition, active_at) makes a re-evaluated window enqueue
nothing twice.

Deliver (`Outbox.deliver(now)`, the daemon's deliver job):
- a group is (receiver, group key, dedup key); it is due when any of its pending rows is.
  All its pending rows go in ONE `Notification`, with the group's other alerts that
  still fire as context (so a message never reads "resolved" while part of the group
  fires); a message that would read "resolved" also carries the incident's alerts that
  ended unfixed (alerts.model.ENDED), so its last resolve does not read as a fix, nor
  close the incident at PagerDuty. Several pending rows of one alert collapse to the newest.
- success: the rows are `delivered`. `DeliveryError(retry=True)` (or any other
  exception): attempts + 1 and the whole group waits an exponential backoff with jitter,
  `backoff_initial_s · 2^(n-1)` capped at `backoff_max_s`, times a factor drawn from
  [0.75, 1] (so each wait is longer than the one before until the cap). `retry=False`, or
  a row older than `max_age_s` after a failed try: `failed`, with the error (one line,
  URLs cut to scheme://host: never a token).
- silences: a firing row whose labels an active silence matches is `silenced`, not sent;
  so is the resolved row of an incident whose firing was silenced. A resolved row whose
  firing was delivered is always sent (a silence never leaves an incident open at the
  receiver). When a silence ends while the alert still fires, its silenced firing row is
  queued again (its max_age_s counted from then).
- dedup keys: one per group incident, `attnmon-` + hash(group key, active_at of the
  alert that opened it); an alert joining a group while any of its alerts fires gets the
  open incident's key, and a resolve carries its firing's key: it goes to every receiver
  the firing went to (still in the route tree), in the firing's group, even when the
  routes were edited in between. A crash after a send and
  before its commit re-sends the same message with the same key: a receiver that
  deduplicates (PagerDuty, Alertmanager) sees one incident.
- Alertmanager receivers: every `resend_interval_s` the deliver job re-posts the alerts
  the receiver was told are firing (latest row for it: firing, delivered), or
  Alertmanager would resolve them when their `endsAt` passes (4 intervals). A silence
  created after the firing was delivered does not stop these re-sends: they repeat what
  Alertmanager already holds and notify nobody, whereas stopping them would make
  Alertmanager resolve an alert that still fires (its receivers told "resolved", then
  "firing" again when the silence ends). Re-sends are not
  outbox rows: they repeat what is already delivered, and a failed one is simply
  tried again next interval. The interval's clock is in memory and starts at the first
  deliver run, so a restarted daemon re-sends one interval after it starts (well
  within Alertmanager's default 5 min resolve_timeout at the default 60 s).

Only the leading daemon runs the deliver job. Two may overlap for a moment (a leader
that lost its lock and has not noticed yet), so a group's rows are claimed before the
send: status `sending`, next_attempt_at `send deadline + CLAIM_SLACK` ahead (the claim's
token), in a conditional update; a deliverer that finds a row of the group claimed leaves
the whole group alone (a "resolved" must not overtake its "firing"). A daemon killed
mid-send leaves the claim to expire, and the group is sent again (same dedup key). The
job also stops between groups once `keep_going()` is false (lead lost, shutting down).

Each send runs under a deadline of `SEND_DEADLINE_FACTOR × the receiver's timeout_s`
(times its POSTs for an Alertmanager receiver, which posts 64 alerts at a time):
the receivers' timeouts apply to each read, so a peer that answers one byte at a time
could otherwise hold the job (and every other receiver) for hours. A send past its
deadline keeps its rows claimed (renewed each run) and is recorded when it ends (see
alerts/sending.py); meanwhile that receiver gets no other send. One still running after
4 deadlines (2 min at the default timeout) is given up: its rows are retried, and a
second send may then run beside it. A `Retry-After` in the answer (429, 503) sets
the earliest next try when it is later than the backoff.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.engine import Connection, Engine

from alerts import sending
from alerts import silences as sil
from alerts.config import AlertsConfig, ReceiverConfig, Route
from alerts.model import AlertView, DeliveryError, Notification, Receiver
from alerts.receivers.alertmanager import BATCH_SIZE as AM_BATCH_SIZE
from alerts.routing import Target, route
from alerts.state import Transition
from alerts.template import strip_credentials
from monitor.store import tables as t
from monitor.store import upsert
from monitor.store.maintenance import as_utc

log = logging.getLogger("attnmon.alerts")

JITTER = 0.25
SEND_DEADLINE_FACTOR = 3  # connect, write and read may each take a receiver's timeout_s
CLAIM_SLACK = timedelta(seconds=30)  # a claim outlives its send's deadline by this much
RETAIN = timedelta(days=7)  # delivered / failed / silenced rows, resolved alerts
RETAIN_SILENCES = timedelta(days=30)  # after they end
MAX_ERROR = 500


# --- payloads ---------------------------------------------------------------------------


def _iso(ts: datetime | None) -> str | None:
    return as_utc(ts).isoformat() if ts is not None else None


def _num(x: float | None) -> float | None:
    return x if x is None or x == x and abs(x) != float("inf") else None  # JSON has no NaN


def view(tr: Transition, generator_url: str | None = None) -> AlertView:
    a, p = tr.alert, tr.alert.phase
    return AlertView(
        fingerprint=a.fingerprint, rule=a.rule, severity=a.severity, status=tr.kind,
        labels=dict(a.labels), annotations=dict(a.annotations), value=a.value,
        baseline_value=a.baseline_value, starts_at=as_utc(p.fired_at or p.active_at),
        ends_at=as_utc(p.resolved_at) if tr.kind == "resolved" else None,
        generator_url=generator_url or a.annotations.get("dashboard"),
    )


def to_payload(v: AlertView, group_labels: Mapping[str, str]) -> dict:
    return {
        "alert": {
            "fingerprint": v.fingerprint, "rule": v.rule, "severity": v.severity, "status": v.status,
            "labels": dict(v.labels), "annotations": dict(v.annotations), "value": _num(v.value),
            "baseline_value": _num(v.baseline_value), "starts_at": _iso(v.starts_at),
            "ends_at": _iso(v.ends_at), "generator_url": v.generator_url,
        },
        "group_labels": dict(group_labels),
    }


def from_payload(p: Mapping) -> AlertView:
    a = p["alert"]
    return AlertView(
        fingerprint=a["fingerprint"], rule=a["rule"], severity=a["severity"], status=a["status"],
        labels=dict(a["labels"]), annotations=dict(a["annotations"]), value=a.get("value"),
        baseline_value=a.get("baseline_value"), starts_at=as_utc(datetime.fromisoformat(a["starts_at"])),
        ends_at=as_utc(datetime.fromisoformat(a["ends_at"])) if a.get("ends_at") else None,
        generator_url=a.get("generator_url"),
    )


# --- enqueue ----------------------------------------------------------------------------


def new_dedup_key(group_key: str, active_at: datetime) -> str:
    digest = hashlib.sha256(f"{group_key}|{_iso(active_at)}".encode()).hexdigest()[:24]
    return f"attnmon-{digest}"


@dataclass
class _Latest:
    transition: str
    active_at: datetime
    dedup_key: str


def _group_latest(conn: Connection, receiver: str, group_key: str) -> dict[str, _Latest]:
    nt = t.notifications
    q = (select(nt.c.fingerprint, nt.c.transition, nt.c.active_at, nt.c.dedup_key)
         .where(nt.c.receiver == receiver, nt.c.group_key == group_key)
         .order_by(nt.c.event_at, nt.c.id))
    return {fp: _Latest(tr, as_utc(at), dk) for fp, tr, at, dk in conn.execute(q)}


def _dedup_for(latest: dict[str, _Latest], group_key: str, tr: Transition) -> str:
    fp, active_at = tr.alert.fingerprint, as_utc(tr.alert.phase.active_at)
    mine = latest.get(fp)
    if tr.kind == "resolved" and mine and mine.transition == "firing" and mine.active_at == active_at:
        return mine.dedup_key
    open_ = sorted((v.active_at, v.dedup_key) for f, v in latest.items() if f != fp and v.transition == "firing")
    return open_[0][1] if open_ else new_dedup_key(group_key, active_at)


def _insert(conn: Connection):
    nt = t.notifications
    return upsert.insert(conn, nt, "notifications").on_conflict_do_nothing(
        index_elements=["fingerprint", "receiver", "transition", "active_at"]
    ).returning(nt.c.id)


def _receivers_in(tree: Route) -> set[str]:
    return ({tree.receiver} if tree.receiver else set()) | {r for c in tree.routes for r in _receivers_in(c)}


def _targets(conn: Connection, tree: Route, tr: Transition) -> list[Target]:
    """Where a transition goes. A resolve goes where its firing went, in the firing's
    group (so under its dedup key), even when the route tree was edited since: else
    PagerDuty keeps the incident open and Alertmanager re-sends the alert as firing."""
    targets = route(tree, tr.alert.labels)
    if tr.kind != "resolved":
        return targets
    nt = t.notifications
    fired = {rcv: (gk, p.get("group_labels", {})) for rcv, gk, p in conn.execute(
        select(nt.c.receiver, nt.c.group_key, nt.c.payload).where(
            nt.c.fingerprint == tr.alert.fingerprint, nt.c.transition == "firing",
            nt.c.active_at == as_utc(tr.alert.phase.active_at)))}
    out = [replace(x, group_key=fired[x.receiver][0], group_labels=fired[x.receiver][1])
           if x.receiver in fired else x for x in targets]
    routed = {x.receiver for x in targets}
    out += [Target(rcv, gk, labels, 0.0, "") for rcv, (gk, labels) in sorted(fired.items())
            if rcv not in routed and rcv in _receivers_in(tree)]  # (one no longer configured: nowhere)
    return out


def enqueue(conn: Connection, transitions: Iterable[Transition], tree: Route, now: datetime) -> int:
    """Outbox rows for `transitions` (in `conn`'s transaction); returns how many are new."""
    stmt = _insert(conn)
    groups: dict[tuple[str, str], dict[str, _Latest]] = {}
    added = 0
    for tr in transitions:
        v = view(tr)
        for target in _targets(conn, tree, tr):
            key = (target.receiver, target.group_key)
            if key not in groups:
                groups[key] = _group_latest(conn, *key)
            dedup = _dedup_for(groups[key], target.group_key, tr)
            active_at = as_utc(tr.alert.phase.active_at)
            added += len(conn.execute(stmt, [{
                "fingerprint": tr.alert.fingerprint, "rule": tr.alert.rule, "receiver": target.receiver,
                "group_key": target.group_key, "transition": tr.kind, "active_at": active_at,
                "event_at": as_utc(tr.at), "dedup_key": dedup, "payload": to_payload(v, target.group_labels),
                "status": "pending", "attempts": 0,
                "next_attempt_at": as_utc(now) + timedelta(seconds=target.group_wait_s),
                "created_at": as_utc(now),
            }]).all())
            groups[key][tr.alert.fingerprint] = _Latest(tr.kind, active_at, dedup)
    return added


# --- delivery ---------------------------------------------------------------------------

_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)(?:[^/\s?#@]*@)?([^/\s?#]*)\S*", re.I)


def scrub(message: str) -> str:
    """One line, at most MAX_ERROR characters, every URL cut to scheme://host."""
    msg = _URL.sub(lambda m: f"{m.group(1)}{m.group(2)}", " ".join(message.split()))
    return msg if len(msg) <= MAX_ERROR else msg[: MAX_ERROR - 3] + "..."


def backoff_s(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """The wait after the `attempt`-th failed try (1, 2, ...)."""
    # (the exponent capped: a float times 2**1024 overflows, and a receiver down for a day
    # at a 60 s cap reaches that many tries)
    base = min(maximum, initial * 2.0 ** min(attempt - 1, 64))
    return base * (1 - JITTER * rng.random())


@dataclass
class DeliverResult:
    notifications: int = 0  # messages sent successfully
    delivered: int = 0  # rows
    retrying: int = 0
    failed: int = 0
    silenced: int = 0
    requeued: int = 0  # silenced rows whose silence ended while the alert fires
    resent: int = 0  # Alertmanager re-sends (messages)
    errors: list[str] = field(default_factory=list)
    sends: dict[tuple[str, str], int] = field(default_factory=dict)  # (receiver, outcome) -> messages
    claimed_elsewhere: int = 0  # groups another deliverer was sending
    reclaimed: int = 0  # rows whose sender stopped mid-send, pending again
    in_flight: int = 0  # rows of sends past their deadline, still running (recorded later)
    stopped: bool = False  # keep_going() turned false: the rest waits for the next run

    def count(self, receiver: str, outcome: str) -> None:
        self.sends[(receiver, outcome)] = self.sends.get((receiver, outcome), 0) + 1


class _ClaimedElsewhere(Exception):
    """Another deliverer holds some of a group's rows: leave the group to it."""


class _Unavailable(Exception):
    def __init__(self, message: str, retry: bool, retry_after_s: float | None = None):
        self.retry = retry
        self.retry_after_s = retry_after_s
        super().__init__(message)


def _outcome(done: sending.Send) -> _Unavailable | None:
    """A finished send's error, as the outbox records it (None: delivered)."""
    try:
        done.raise_failure()
    except _Unavailable as exc:
        return exc
    except DeliveryError as exc:
        return _Unavailable(scrub(str(exc)) or type(exc).__name__, exc.retry, exc.retry_after_s)
    except Exception as exc:  # a receiver's bug must not stop the job: retry later
        return _Unavailable(scrub(f"{type(exc).__name__}: {exc}"), retry=True)
    return None


class Outbox:
    """Delivers the outbox through `receivers` (name -> Receiver; default: built from
    the config by `alerts.receivers.build`, once each, when first needed)."""

    def __init__(self, engine: Engine, config: AlertsConfig,
                 receivers: Mapping[str, Receiver] | None = None, *,
                 rng: random.Random | None = None,
                 build: Callable[[ReceiverConfig], Receiver] | None = None):
        self.engine = engine
        self.config = config
        self._receivers: dict[str, Receiver] = dict(receivers or {})
        self._injected = receivers is not None
        self._build = build
        self._rng = rng or random.Random()
        self._configs = {rc.name: rc for rc in config.receivers}
        self._last_resend: dict[str, datetime] = {}
        self._running: dict[str, sending.Send] = {}  # receiver -> its send past the deadline
        self._now = datetime.now(UTC)  # deliver() sets both
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.external_url = strip_credentials(config.external_url) if config.external_url else None

    # -- receivers -------------------------------------------------------------------

    def receiver(self, name: str) -> Receiver:
        if name in self._receivers:
            return self._receivers[name]
        rc = self._configs.get(name)
        if rc is None or self._injected:
            raise _Unavailable(f"receiver {name!r} is not configured", retry=False)
        build = self._build
        if build is None:
            from alerts.receivers import build  # the receivers' own module, by another hand
        try:
            self._receivers[name] = build(rc)
        except Exception as exc:  # a missing secret: try again later, the file may appear
            raise _Unavailable(f"cannot set up receiver {name!r}: {scrub(str(exc))}", retry=True) from None
        return self._receivers[name]

    # -- the job ---------------------------------------------------------------------

    def deliver(self, now: datetime, keep_going: Callable[[], bool] = lambda: True) -> DeliverResult:
        """Send what is due at `now`; stop between groups once `keep_going()` is false."""
        now = as_utc(now)
        started = time.monotonic()
        # `now` as the run goes on (sends take time): a claim ends a deadline after it is
        # taken, not after the run began (rows are dated by `now`)
        self._now = now
        self._clock = lambda: now + timedelta(seconds=time.monotonic() - started)
        res = DeliverResult()
        with self.engine.connect() as conn:
            active = sil.load(conn, now)
        res.requeued = self._requeue_unsilenced(now, active)
        self._settle_running(res)
        res.reclaimed = self._release_expired_claims(now)
        nt = t.notifications
        due = (select(nt.c.receiver, nt.c.group_key, nt.c.dedup_key, func.min(nt.c.next_attempt_at))
               .where(nt.c.status == "pending", nt.c.next_attempt_at <= now)
               .group_by(nt.c.receiver, nt.c.group_key, nt.c.dedup_key)
               .order_by(func.min(nt.c.next_attempt_at)))
        with self.engine.connect() as conn:
            groups = [tuple(r[:3]) for r in conn.execute(due)]
        for receiver, group_key, dedup in groups:
            if not keep_going():
                res.stopped = True
                return res
            if receiver in self._running:  # one send at a time per receiver
                continue
            self._deliver_group(receiver, group_key, dedup, now, active, res)
        if keep_going():
            self._resend(now, res, keep_going)
        else:
            res.stopped = True
        return res

    def _requeue_unsilenced(self, now: datetime, active: list[sil.Silence]) -> int:
        nt, al = t.notifications, t.alerts
        q = (select(nt.c.id, nt.c.payload).join(al, al.c.fingerprint == nt.c.fingerprint)
             .where(nt.c.status == "silenced", nt.c.transition == "firing", al.c.state == "firing",
                    al.c.active_at == nt.c.active_at))
        with self.engine.begin() as conn:
            ids = [i for i, p in conn.execute(q) if not sil.silenced(active, p["alert"]["labels"], now)]
            if ids:
                # max_age_s counts from now: a silence longer than it must not leave the row
                # to be given up at its first failed try
                conn.execute(update(nt).where(nt.c.id.in_(ids), nt.c.status == "silenced")
                             .values(status="pending", next_attempt_at=now, created_at=now))
        return len(ids)

    def _deliver_group(self, receiver: str, group_key: str, dedup: str, now: datetime,
                       active: list[sil.Silence], res: DeliverResult) -> None:
        nt = t.notifications
        try:
            with self.engine.begin() as conn:
                if self._in_flight(conn, receiver, group_key, dedup):
                    # a row of the group is being sent: newer ones wait for it, or a
                    # "resolved" could overtake its "firing"
                    raise _ClaimedElsewhere
                send, muted = self._split(conn, receiver, group_key, dedup, now, active)
                if muted:
                    conn.execute(update(nt).where(nt.c.id.in_(muted), nt.c.status == "pending")
                                 .values(status="silenced", last_attempt_at=now))
                fingerprints = {r["fingerprint"] for r in send}
                context = self._context(conn, receiver, group_key, dedup, send)
                deadline = self._deadline_s(receiver, len(fingerprints) + len(context))
                claim = self._claim(conn, [r["id"] for r in send], deadline) if send else None
                if send and claim is None:
                    # undo this transaction (the silenced rows too: the claim's holder decides)
                    raise _ClaimedElsewhere
        except _ClaimedElsewhere:
            res.claimed_elsewhere += 1
            return
        res.silenced += len(muted)
        if not send:
            return
        newest: dict[str, Mapping] = {}
        for r in send:  # ordered by event time: the last one wins
            newest[r["fingerprint"]] = r
        views = [from_payload(r["payload"]) for r in newest.values()] + context
        note = self._notification(receiver, group_key, dedup, views, send[0]["payload"].get("group_labels", {}))
        try:
            rcv = self.receiver(receiver)
        except _Unavailable as exc:
            self._record(send, claim, exc, res)
            return
        running = sending.start(receiver, lambda: rcv.send(note), send, claim, deadline)
        if running.running:  # past its deadline: its outcome is recorded when it has one
            self._running[receiver] = running
            self._note_running(running, res)
            return
        self._record(send, claim, _outcome(running), res)

    @staticmethod
    def _in_flight(conn: Connection, receiver: str, group_key: str, dedup: str) -> bool:
        nt = t.notifications
        return conn.execute(select(nt.c.id).where(
            nt.c.status == "sending", nt.c.receiver == receiver, nt.c.group_key == group_key,
            nt.c.dedup_key == dedup).limit(1)).first() is not None

    def _split(self, conn: Connection, receiver: str, group_key: str, dedup: str, now: datetime,
               active: list[sil.Silence]) -> tuple[list[Mapping], list[int]]:
        """A group's pending rows: those to send, and the ids of those a silence mutes."""
        nt = t.notifications
        rows = conn.execute(
            select(nt).where(nt.c.status == "pending", nt.c.receiver == receiver,
                             nt.c.group_key == group_key, nt.c.dedup_key == dedup)
            .order_by(nt.c.event_at, nt.c.id)
        ).mappings().all()
        send, muted, muted_incidents, sending_incidents = [], [], set(), set()
        for r in rows:
            labels = r["payload"]["alert"]["labels"]
            incident = (r["fingerprint"], as_utc(r["active_at"]))
            if r["transition"] == "firing":
                if sil.silenced(active, labels, now):
                    muted.append(r["id"])
                    muted_incidents.add(incident)
                else:
                    send.append(r)
                    sending_incidents.add(incident)
                continue
            if incident in muted_incidents:
                muted.append(r["id"])
            elif incident in sending_incidents:
                send.append(r)
            else:
                fired = conn.execute(select(nt.c.status).where(
                    nt.c.fingerprint == r["fingerprint"], nt.c.receiver == receiver,
                    nt.c.transition == "firing", nt.c.active_at == r["active_at"])).scalar()
                if fired == "silenced" or (fired is None and sil.silenced(active, labels, now)):
                    muted.append(r["id"])
                else:
                    send.append(r)
        return send, muted

    def _deadline_s(self, name: str, alerts: int = 1) -> float:
        """How long one send of `alerts` alerts to this receiver may take, all of it: its
        timeout_s is per read, and an Alertmanager receiver makes a POST per batch."""
        rcv, rc = self._receivers.get(name), self._configs.get(name)
        timeout = getattr(rcv, "timeout_s", None)
        if timeout is None and rc is not None:
            timeout = getattr(getattr(rc, rc.kind), "timeout_s", None)
        batch = getattr(rcv, "batch_size", None)
        if batch is None and rc is not None and rc.kind == "alertmanager":
            batch = AM_BATCH_SIZE
        posts = max(1, math.ceil(alerts / batch)) if batch else 1
        return SEND_DEADLINE_FACTOR * float(timeout or 10.0) * posts

    def _claim(self, conn: Connection, ids: list[int], deadline_s: float) -> datetime | None:
        """Take the rows for a send of that deadline: the claim's end, which is also its
        token (None: another deliverer has some of them)."""
        nt = t.notifications
        until = self._claim_end(deadline_s)
        n = conn.execute(update(nt).where(nt.c.id.in_(ids), nt.c.status == "pending")
                         .values(status="sending", next_attempt_at=until)).rowcount
        return until if n == len(ids) else None

    def _claim_end(self, deadline_s: float) -> datetime:
        return self._clock() + timedelta(seconds=deadline_s) + CLAIM_SLACK

    def _mine(self, ids: list[int], claim: datetime | None) -> tuple:
        """Where-clauses for rows still under this claim (not released and re-claimed)."""
        nt = t.notifications
        return (nt.c.id.in_(ids), nt.c.status == "sending", nt.c.next_attempt_at == claim)

    @staticmethod
    def _cut_off(running: sending.Send) -> str:
        return f"no complete answer within {running.deadline_s:g} s"

    def _note_running(self, running: sending.Send, res: DeliverResult) -> None:
        """A send past its deadline: say so in the result and on its rows, which stay
        claimed meanwhile."""
        name = running.receiver
        res.in_flight += len(running.rows)
        res.errors.append(f"{name}: {self._cut_off(running)}; still waiting for it")
        msg = f"receiver {name!r}: {self._cut_off(running)}; still waiting for it"
        log.warning("%s", msg)
        with self.engine.begin() as conn:
            conn.execute(update(t.notifications).where(*self._mine([r["id"] for r in running.rows], running.claim))
                         .values(last_error=msg))

    def _settle_running(self, res: DeliverResult) -> None:
        """Sends that ran past their deadline: record those that ended, keep the claims of
        those still running, give up on those running for GIVE_UP_DEADLINES deadlines."""
        for name, running in list(self._running.items()):
            if running.running and not running.abandoned:
                if running.rows:  # renew the claim, so that no other deliverer sends them
                    until = self._claim_end(running.deadline_s)
                    with self.engine.begin() as conn:
                        n = conn.execute(update(t.notifications).where(
                            *self._mine([r["id"] for r in running.rows], running.claim)).values(
                            next_attempt_at=until)).rowcount
                    # (none left under it: another deliverer took them over; its to record)
                    running.rows, running.claim = (running.rows, until) if n else ([], None)
                continue
            error = _outcome(running) if not running.running else _Unavailable(
                f"receiver {name!r}: no answer after {running.give_up_s:g} s; gave up waiting", retry=True)
            if running.rows:
                self._record(running.rows, running.claim, error, res)  # (raises: kept for the next run)
            elif error is not None:
                log.warning("re-sending firing alerts to %s failed: %s", name, error)
            del self._running[name]

    def _release_expired_claims(self, now: datetime) -> int:
        """Rows left `sending` by a deliverer that died mid-send: pending again."""
        nt = t.notifications
        with self.engine.begin() as conn:
            n = conn.execute(update(nt).where(nt.c.status == "sending", nt.c.next_attempt_at <= now)
                             .values(status="pending")).rowcount
        if n:
            log.warning("%d notification(s) were being sent by a daemon that stopped mid-send; "
                        "sending them again (same dedup key)", n)
        return n

    def _record(self, send: list[Mapping], claim: datetime | None, error: _Unavailable | None,
                res: DeliverResult) -> None:
        """What a send did, on the rows it claimed (rows whose claim was released and taken
        by another deliverer meanwhile are that one's to record)."""
        nt = t.notifications
        ids = [r["id"] for r in send]
        pending = self._mine(ids, claim)
        now = self._now
        with self.engine.begin() as conn:
            if error is None:
                n = conn.execute(update(nt).where(*pending).values(
                    status="delivered", delivered_at=now, last_attempt_at=now, attempts=nt.c.attempts + 1)).rowcount
                if n < len(ids):
                    log.info("%d of %d notification(s) to %s were sent, but their claim had been taken "
                             "over meanwhile", len(ids) - n, len(ids), send[0]["receiver"])
                res.notifications += 1
                res.delivered += len(ids)
                res.count(send[0]["receiver"], "delivered")
                return
            d = self.config.delivery
            msg = str(error)
            res.errors.append(f"{send[0]['receiver']}: {msg}")
            too_old = now - timedelta(seconds=d.max_age_s)
            if error.retry:
                expired = [r["id"] for r in send if as_utc(r["created_at"]) <= too_old]
            else:
                expired = ids
            retry = [i for i in ids if i not in set(expired)]
            res.count(send[0]["receiver"], "retry" if retry else "failed")
            if expired:
                note = msg if not error.retry else f"gave up after {d.max_age_s:g}s: {msg}"
                conn.execute(update(nt).where(*self._mine(expired, claim)).values(
                    status="failed", last_attempt_at=now, attempts=nt.c.attempts + 1, last_error=scrub(note)))
                res.failed += len(expired)
            if retry:
                attempt = 1 + max(r["attempts"] for r in send if r["id"] in set(retry))
                wait = backoff_s(attempt, d.backoff_initial_s, d.backoff_max_s, self._rng)
                if error.retry_after_s is not None:  # the receiver asked for a longer pause
                    wait = max(wait, min(error.retry_after_s, d.max_age_s))
                conn.execute(update(nt).where(*self._mine(retry, claim)).values(
                    status="pending", next_attempt_at=now + timedelta(seconds=wait), last_attempt_at=now,
                    attempts=nt.c.attempts + 1, last_error=msg))
                res.retrying += len(retry)
        log.warning("notification to %s failed (%s): %s", send[0]["receiver"],
                    "will retry" if error.retry and not expired else "gave up", msg)

    def _notification(self, receiver: str, group_key: str, dedup: str, views: list[AlertView],
                      group_labels: Mapping[str, str]) -> Notification:
        views.sort(key=lambda v: (v.status != "firing", v.rule, sorted(v.labels.items()), v.fingerprint))
        status = "firing" if any(v.status == "firing" for v in views) else "resolved"
        return Notification(receiver=receiver, group_key=group_key, status=status, alerts=tuple(views),
                            group_labels=dict(group_labels), dedup_key=dedup, external_url=self.external_url)

    def _latest_rows(self, conn: Connection, *where) -> list[Mapping]:
        """The newest row of each (group, alert) for a receiver, with `where` applied."""
        nt = t.notifications
        rank = func.row_number().over(partition_by=(nt.c.group_key, nt.c.fingerprint),
                                      order_by=(nt.c.event_at.desc(), nt.c.id.desc())).label("rank")
        sub = select(nt, rank).where(*where).subquery()
        return conn.execute(select(sub).where(sub.c.rank == 1)).mappings().all()

    def _context(self, conn: Connection, receiver: str, group_key: str, dedup: str,
                 send: list[Mapping]) -> list[AlertView]:
        """The incident's other alerts a message carries: those that still fire, and in a
        message that would read "resolved", those that ended unfixed (alerts.model.ENDED),
        so that the last resolve of such an incident neither reads as a fix nor closes it
        at PagerDuty."""
        nt = t.notifications
        newest = {r["fingerprint"]: r["transition"] for r in send}  # ordered by event time
        rows = self._latest_rows(conn, nt.c.receiver == receiver, nt.c.group_key == group_key,
                                 nt.c.dedup_key == dedup)
        others = [r for r in rows if r["fingerprint"] not in newest and r["status"] == "delivered"]
        firing = [from_payload(r["payload"]) for r in others if r["transition"] == "firing"]
        if firing or "firing" in newest.values():
            return firing
        ended = (from_payload(r["payload"]) for r in others if r["transition"] == "resolved")
        return [v for v in ended if v.ended]

    # -- Alertmanager re-sends -------------------------------------------------------

    def _resend(self, now: datetime, res: DeliverResult, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Re-post each Alertmanager receiver's firing groups; `keep_going()` before each
        group, as for a send (the daemon's /livez counts each as a step)."""
        nt = t.notifications
        for rc in self.config.receivers:
            if rc.kind != "alertmanager":
                continue
            last = self._last_resend.get(rc.name)
            if last is None:  # the interval starts with the first run (delivery just sent them)
                self._last_resend[rc.name] = now
                continue
            if (now - last).total_seconds() < rc.alertmanager.resend_interval_s or rc.name in self._running:
                continue
            self._last_resend[rc.name] = now
            with self.engine.connect() as conn:
                rows = self._latest_rows(conn, nt.c.receiver == rc.name)
            groups: dict[tuple[str, str], list[Mapping]] = {}
            for r in rows:
                # (silenced or not: Alertmanager was told it fires, and it still does)
                if r["transition"] != "firing" or r["status"] != "delivered":
                    continue
                groups.setdefault((r["group_key"], r["dedup_key"]), []).append(r)
            for (group_key, dedup), members in sorted(groups.items()):
                if rc.name in self._running:  # a re-send past its deadline: no second one
                    break
                if not keep_going():
                    res.stopped = True
                    return
                views = [from_payload(r["payload"]) for r in members]
                note = self._notification(rc.name, group_key, dedup, views, members[0]["payload"].get("group_labels", {}))
                try:
                    receiver = self.receiver(rc.name)
                    resend = getattr(receiver, "resend", None)  # Alertmanager's: firing alerts only
                    fn = ((lambda r=resend, n=note: r(n.alerts, n.external_url)) if resend is not None
                          else (lambda r=receiver, n=note: r.send(n)))
                    running = sending.start(rc.name, fn, [], None, self._deadline_s(rc.name, len(views)))
                    if running.running:  # past its deadline: the next interval tries again
                        self._running[rc.name] = running
                        raise _Unavailable(self._cut_off(running), retry=True)
                    running.raise_failure()
                    res.resent += 1
                    res.count(rc.name, "resent")
                except Exception as exc:
                    msg = scrub(str(exc)) or type(exc).__name__
                    res.count(rc.name, "resend_error")
                    res.errors.append(f"{rc.name} (re-send): {msg}")
                    log.warning("re-sending firing alerts to %s failed (next try in %gs): %s",
                                rc.name, rc.alertmanager.resend_interval_s, msg)

    # -- upkeep ----------------------------------------------------------------------

    def prune(self, now: datetime) -> int:
        """Delete rows past retention; never the notification of an alert that still fires."""
        nt, al, si = t.notifications, t.alerts, t.silences
        cutoff = as_utc(now) - RETAIN
        firing = exists().where(al.c.fingerprint == nt.c.fingerprint, al.c.state == "firing",
                                al.c.active_at == nt.c.active_at)
        with self.engine.begin() as conn:
            n = conn.execute(nt.delete().where(nt.c.status.in_(("delivered", "failed", "silenced")),
                                               nt.c.created_at < cutoff, ~firing)).rowcount
            n += conn.execute(al.delete().where(al.c.state.in_(("inactive", "resolved")),
                                                al.c.last_eval_at < cutoff)).rowcount
            n += conn.execute(si.delete().where(si.c.ends_at < as_utc(now) - RETAIN_SILENCES)).rowcount
        return n


@dataclass(frozen=True)
class Counts:
    """What /metrics shows: read in the jobs, never on a scrape."""

    alerts: Mapping[tuple[str, str], int]  # (state, severity) -> n, pending and firing only
    pending: Mapping[str, int]  # receiver -> pending notifications
    failed: Mapping[str, int]  # receiver -> notifications failed in the last 24 h


def counts(engine: Engine, now: datetime) -> Counts:
    nt, al = t.notifications, t.alerts
    with engine.connect() as conn:
        a = {(s, sev): n for s, sev, n in conn.execute(
            select(al.c.state, al.c.severity, func.count()).where(al.c.state.in_(("pending", "firing")))
            .group_by(al.c.state, al.c.severity))}
        p = dict(conn.execute(select(nt.c.receiver, func.count()).where(nt.c.status.in_(("pending", "sending")))
                              .group_by(nt.c.receiver)).all())
        f = dict(conn.execute(select(nt.c.receiver, func.count()).where(and_(
            nt.c.status == "failed", nt.c.last_attempt_at >= as_utc(now) - timedelta(days=1)))
            .group_by(nt.c.receiver)).all())
    return Counts(a, p, f)
