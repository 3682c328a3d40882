"""`attnmon alerts ...`: check rule files, list alerts, test a receiver, manage silences.

    attnmon alerts check rules.yaml                 # exit 2, naming file, rule and field
    attnmon alerts list [--format json]             # pending, firing, recently resolved
    attnmon alerts test --receiver pagerduty        # one test message, now; exit 2 on failure
    attnmon alerts silence --match model=demo-sasrec --for 2h --comment "deploy v3"
    attnmon alerts silences [--all] [--format json]
    attnmon alerts unsilence ID

Plain functions taking `(config, ...)`, registered on the parser by `register`. JSON
output holds labels, annotations and times, never a receiver's settings or secrets.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

from sqlalchemy import or_, select

from monitor.cli_common import emit as _emit
from monitor.cli_common import open_store as _engine
from monitor.cli_common import within_century
from monitor.config import Config
from monitor.errors import ConfigError

EXIT_ERROR = 2


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


# --- check --------------------------------------------------------------------------


def check(config: Config, path: str, fmt: str = "text") -> int:
    """Validate a rule file (schema, durations, label names, templates)."""
    from alerts.rules import CANNOT_FIRE, cannot_fire, check_templates, load_rules

    rules = load_rules(path)
    check_templates(rules, path)
    names = [r.name for r in rules]
    # valid, but it can never fire with this config's evaluate section: said, not refused
    idle = cannot_fire(rules, config.evaluate)
    text = f"{path}: {len(rules)} rules OK ({', '.join(names)})" + "".join(
        "\nwarning: " + CANNOT_FIRE.format(name=r.name, statistic=r.statistic) for r in idle)
    _emit(fmt, text, {"file": path, "ok": True, "rules": names, "cannot_fire": [r.name for r in idle]})
    return 0


# --- list ---------------------------------------------------------------------------


def list_alerts(config: Config, fmt: str = "text", resolved_within: str = "1h",
                now: datetime | None = None) -> int:
    """Pending and firing alerts, and those resolved within `resolved_within`."""
    from alerts.model import ENDED
    from alerts.rules import parse_duration
    from alerts.template import series_text
    from monitor.store import tables as t
    from monitor.store.maintenance import as_utc

    try:
        span = parse_duration(resolved_within)
    except ValueError as exc:
        raise ConfigError([("--resolved-within", resolved_within, str(exc))], "argument") from None
    except OverflowError:
        span = None
    since = _now(now) - within_century(span, "--resolved-within", resolved_within)
    al = t.alerts
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(al).where(or_(
                al.c.state.in_(("pending", "firing")),
                (al.c.state == "resolved") & (al.c.resolved_at >= since),
            ))).mappings().all()
    finally:
        engine.dispose()
    order = {"firing": 0, "pending": 1, "resolved": 2}
    sev = {"critical": 0, "warning": 1, "info": 2}
    rows = sorted(rows, key=lambda r: (order[r["state"]], sev.get(r["severity"], 9), r["rule"], series_text(r["labels"])))

    def when(x):
        return as_utc(x).isoformat() if x is not None else None

    data = [
        {
            "fingerprint": r["fingerprint"], "alertname": r["rule"], "severity": r["severity"],
            "state": r["state"], "recently_resolved": r["state"] == "resolved",
            "series": series_text(r["labels"]), "labels": r["labels"], "annotations": r["annotations"],
            "value": r["value"], "baseline_value": r["baseline_value"], "active_at": when(r["active_at"]),
            "fired_at": when(r["fired_at"]), "resolved_at": when(r["resolved_at"]),
            "ended": r["annotations"].get(ENDED) if r["state"] == "resolved" else None,
        }
        for r in rows
    ]
    lines = []
    for d in data:
        since_ = d["resolved_at"] or d["fired_at"] or d["active_at"]
        state = ("ended" if d["ended"] else "resolved") if d["recently_resolved"] else d["state"]
        summary = d["annotations"].get("summary", d["series"])
        lines.append(f"{state:<9}{d['severity']:<10}{d['alertname']:<36}{since_[:16]}  {summary}")
    header = f"{'STATE':<9}{'SEVERITY':<10}{'ALERT':<36}{'SINCE (UTC)':<16}  SUMMARY"
    text = "\n".join([header, *lines]) if lines else "no alerts pending, firing or recently resolved"
    _emit(fmt, text, data)
    return 0


# --- test ---------------------------------------------------------------------------


def send_test(config: Config, name: str, resolve: bool = False, now: datetime | None = None) -> int:
    """Send one test notification through receiver `name`, now; exit 2 with the error."""
    from alerts.model import AlertView, DeliveryError, Notification
    from alerts.outbox import scrub
    from alerts.receivers import build
    from alerts.template import strip_credentials

    rc = {r.name: r for r in config.alerts.receivers}.get(name)
    if rc is None:
        known = sorted(r.name for r in config.alerts.receivers)
        raise ConfigError([("--receiver", name, f"no such receiver in alerts.receivers; known: {known or 'none'}")], "argument")
    receiver = build(rc)
    at = _now(now)
    labels = {"alertname": "AttnmonTestNotification", "severity": "info", "model": "*", "version": "*",
              "cohort": "*", "layer": "*", "head": "*", "baseline_kind": "none", "statistic": "test",
              "receiver": name}
    fp = "test-" + at.strftime("%Y%m%d%H%M%S")
    external = strip_credentials(config.alerts.external_url) if config.alerts.external_url else None

    def note(status: str) -> Notification:
        alert = AlertView(
            fingerprint=fp, rule="AttnmonTestNotification", severity="info", status=status, labels=labels,
            annotations={"summary": f"attnmon test notification to {name}: nothing is wrong",
                         "description": "Sent by `attnmon alerts test`. If you read this, delivery works."},
            value=None, baseline_value=None, starts_at=at, ends_at=at if status == "resolved" else None,
        )
        return Notification(receiver=name, group_key=f"test:{{receiver=\"{name}\"}}", status=status,
                            alerts=(alert,), group_labels={"alertname": "AttnmonTestNotification"},
                            dedup_key=f"attnmon-test-{fp}", external_url=external)

    for status in ("firing", "resolved") if resolve else ("firing",):
        try:
            receiver.send(note(status))
        except DeliveryError as exc:
            hint = "temporary: a retry may succeed" if exc.retry else "permanent: fix the receiver's settings"
            print(f"attnmon: error: receiver {name} ({rc.kind}): {scrub(str(exc))} ({hint})", file=sys.stderr)
            return EXIT_ERROR
    print(f"sent a test notification to {name} ({rc.kind})" + (", then its resolution" if resolve else ""))
    return 0


# --- silences -----------------------------------------------------------------------


def silence(config: Config, matchers: list[str], duration: str, comment: str,
            author: str | None = None, fmt: str = "text", now: datetime | None = None) -> int:
    from alerts import silences
    from alerts.rules import load_rule_set, parse_duration
    from monitor.store import tables as t

    try:
        span = parse_duration(duration)
    except ValueError as exc:
        raise ConfigError([("--for", duration, str(exc))], "argument") from None
    except OverflowError:
        span = None
    span = within_century(span, "--for", duration)
    if span.total_seconds() <= 0:
        raise ConfigError([("--for", duration, "a silence must last longer than 0")], "argument")
    parsed = [silences.parse_matcher(m) for m in matchers]  # errors before touching the store
    try:
        rules = load_rule_set(config.alerts.rules)
    except ConfigError as exc:  # mid-incident, a silence must not wait for a rules file
        print(f"attnmon: warning: label names checked against the stored alerts only ({exc})", file=sys.stderr)
        rules = []
    at = _now(now)
    who = author or _user()
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            stored = {k for (labels,) in conn.execute(select(t.alerts.c.labels)) for k in labels or {}}
        known = silences.alert_label_names(rules, stored)
        unknown = [m for m in parsed if m.name not in known]
        if unknown:  # a typo: `verson=v2` would silence nothing, `verson!=v2` everything
            raise ConfigError([("--match", str(m), f"no alert has a label {m.name!r} (labels: "
                                f"{', '.join(sorted(known))})") for m in unknown], "argument")
        sid = silences.create(engine, parsed, span, comment, who, at)
    finally:
        engine.dispose()
    ends = at + span
    _emit(fmt, sid, {"id": sid, "matchers": [str(m) for m in parsed], "ends_at": ends.isoformat()})
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "attnmon"


def list_silences(config: Config, fmt: str = "text", include_expired: bool = False,
                  now: datetime | None = None) -> int:
    from alerts import silences

    at = _now(now)
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            found = silences.load(conn, at, include_expired=include_expired)
    finally:
        engine.dispose()
    data = [s.as_dict(at) for s in found]
    lines = []
    for s in found:
        state = "active" if s.active(at) else "expired" if s.ends_at <= at else "pending"
        lines.append(f"{s.id}  {state:<8}{' '.join(map(str, s.matchers))}  until {s.ends_at:%Y-%m-%d %H:%M} UTC"
                     f"  by {s.created_by}: {s.comment}")
    _emit(fmt, "\n".join(lines) if lines else "no silences", data)
    return 0


def unsilence(config: Config, silence_id: str, now: datetime | None = None) -> int:
    from alerts import silences
    from monitor.errors import StoreError

    engine = _engine(config)
    try:
        ended = silences.expire(engine, silence_id, _now(now))
    finally:
        engine.dispose()
    if not ended:
        raise StoreError(f"no running silence with id {silence_id!r} (see `attnmon alerts silences`)")
    print(f"expired silence {silence_id}")
    return 0


# --- registration -------------------------------------------------------------------


def register(commands: argparse._SubParsersAction, add_command) -> None:
    a = add_command(commands, "alerts", "check rules, list alerts, test receivers, manage silences")
    sub = a.add_subparsers(title="alerts commands", dest="alerts_command", required=True, metavar="COMMAND")

    p = add_command(sub, "check", "validate a rule file (exit 2 naming file, rule and field); warn of rules that cannot fire",
                    lists=True)
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=lambda config, a: check(config, a.file, a.format))

    p = add_command(sub, "list", "pending and firing alerts, and recently resolved ones", lists=True)
    p.add_argument("--resolved-within", default="1h", metavar="DURATION",
                   help="show alerts resolved this recently (default: 1h)")
    p.set_defaults(run=lambda config, a: list_alerts(config, a.format, a.resolved_within))

    p = add_command(sub, "test", "send a test notification through a receiver, now")
    p.add_argument("--receiver", required=True, metavar="NAME")
    p.add_argument("--resolve", action="store_true", help="also send its resolution (closes a test incident)")
    p.set_defaults(run=lambda config, a: send_test(config, a.receiver, a.resolve))

    p = add_command(sub, "silence", "stop notifications of matching alerts for a while (prints its id)", lists=True)
    p.add_argument("--match", action="append", required=True, metavar="LABEL=VALUE",
                   help="label matcher: NAME=VALUE, NAME!=VALUE, NAME=~REGEX, NAME!~REGEX (repeatable; all must match)")
    p.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="e.g. 30m, 2h, 1d")
    p.add_argument("--comment", required=True)
    p.add_argument("--author", help="who silences (default: the user name)")
    p.set_defaults(run=lambda config, a: silence(config, a.match, a.duration, a.comment, a.author, a.format))

    p = add_command(sub, "silences", "list running and upcoming silences", lists=True)
    p.add_argument("--all", action="store_true", help="include expired silences")
    p.set_defaults(run=lambda config, a: list_silences(config, a.format, a.all))

    p = add_command(sub, "unsilence", "end a silence now")
    p.add_argument("id", metavar="ID")
    p.set_defaults(run=lambda config, a: unsilence(config, a.id))
