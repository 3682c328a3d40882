"""CLI commands of the evaluation: evaluate, baseline pin|list|unpin, deploy mark.

Plain functions taking `(config, ...)`, registered on the parser by `register`.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from monitor.cli_common import emit as _emit
from monitor.cli_common import no_such_model, parse_time
from monitor.cli_common import open_store as _engine
from monitor.config import Config
from monitor.errors import ConfigError, StoreError

# --- evaluate -----------------------------------------------------------------------


def evaluate(config: Config, at: str | None = None, start: str | None = None, end: str | None = None,
             fmt: str = "text") -> int:
    """One cycle (at `at`, default now), or one per minute from `start` to `end`."""
    from monitor.evaluate import backfill, evaluate_cycle, window_for

    if (start is None) != (end is None):
        raise ConfigError([("--from/--to", start or end, "give both, or neither")], "argument")
    if start is not None and at is not None:
        raise ConfigError([("--at", at, "give either --at or --from/--to, not both")], "argument")
    t0 = parse_time(start, "--from") if start is not None else None
    t1 = parse_time(end, "--to") if end is not None else None
    if t0 is not None and t1 <= t0:
        raise ConfigError([("--from", start, "is not before --to"), ("--to", end, "must be after --from")],
                          "argument")
    when = parse_time(at, "--at") if at else datetime.now(UTC)
    # A window that has not closed yet would be evaluated on part of its traffic, and
    # the unique key keeps those results: the daemon's own cycle of it writes nothing.
    last, flag, given = (when, "--at", at) if t0 is None else (
        t0 + timedelta(minutes=math.ceil((t1 - t0) / timedelta(minutes=1)) - 1), "--to", end)
    _, closed = window_for(datetime.now(UTC), config.evaluate)
    _, last_end = window_for(last, config.evaluate)
    if last_end > closed:
        raise ConfigError([(flag, given, f"its window ending {last_end:%Y-%m-%d %H:%M} "
                            f"UTC has not closed yet (the newest closed one ends {closed:%H:%M} UTC)")], "argument")
    engine = _engine(config)
    try:
        if t0 is None:
            _refuse_rolled_up(engine, when, when, config, "--at", at)
            results = [evaluate_cycle(engine, when, config.evaluate)]
        else:
            _refuse_rolled_up(engine, t0, last, config, "--from", start)
            results = backfill(engine, t0, t1, config.evaluate)
    finally:
        engine.dispose()
    data = [
        {"window_start": r.window_start.isoformat(), "window_end": r.window_end.isoformat(),
         "series": r.series, "skipped": r.skipped, "written": r.written}
        for r in results
    ]
    text = "\n".join(
        f"window {r.window_start:%Y-%m-%d %H:%M}–{r.window_end:%H:%M} UTC: {r.series} series evaluated, "
        f"{r.skipped} below min_samples, {r.written} results written"
        + (" (evaluated before: its results are kept as they were)" if r.series and not r.written else "")
        for r in results
    )
    _emit(fmt, text, data)
    return 0


def _refuse_rolled_up(engine, first: datetime, last: datetime, config: Config, flag: str, given: str | None) -> None:
    """A window is read from minute rows only (monitor.evaluate.WindowReader): over minutes
    `maintain` rolled up into hours it finds no series, and would report "0 series
    evaluated, 0 below min_samples" as if nothing had been served."""
    from monitor.evaluate import window_for
    from monitor.store import tables as t
    from monitor.store.maintenance import ROLLUP_SECONDS, as_utc, rows_in

    wa = t.window_aggregates
    start, end = window_for(first, config.evaluate)[0], window_for(last, config.evaluate)[1]
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(wa.c.bucket_start)).where(
            *rows_in(start, end), wa.c.bucket_seconds > 60)).scalar()
    if newest is None:
        return
    cfg = config.evaluate
    ok = as_utc(newest) + timedelta(seconds=ROLLUP_SECONDS, minutes=cfg.window_minutes + cfg.lag_minutes)
    raise ConfigError([(flag, given, "its windows reach minutes that `maintain` rolled up into hours "
                        "(retention.minute_aggregates_days), and a window is evaluated from minute rows "
                        f"only: give --from {ok:%Y-%m-%dT%H:%MZ} or later")], "argument")


# --- baselines ------------------------------------------------------------------------


def baseline_pin(config: Config, model: str, name: str, start: str, end: str,
                 version: str | None = None, comment: str | None = None) -> int:
    from collectors.block import label_problem
    from monitor.store import tables as t
    from monitor.store.maintenance import ROLLUP_SECONDS, rows_in

    if problem := label_problem(name):  # (stored as the baseline of the results and alerts it judges)
        raise ConfigError([("--name", name, problem)], "argument")
    t0, t1 = parse_time(start, "--from"), parse_time(end, "--to")
    if t1 <= t0:
        raise ConfigError([("--to", end, "must be after --from")], "argument")
    if t1 > datetime.now(UTC):
        # merged once, when a cycle first reads it, and kept: it would hold the traffic
        # up to then, never the rest of its window
        raise ConfigError([("--to", end, "is in the future: a pinned baseline is merged once, at its "
                            "first use; pin a window that has ended")], "argument")
    engine = _engine(config)
    try:
        with engine.begin() as conn:
            pb = t.pinned_baselines
            before = conn.execute(select(pb.c.active).where(pb.c.name == name)).first()
            if before is not None:
                # names are never reused: stored results, alerts and cached sketches refer to them
                state = "is pinned" if before.active else "was pinned before (and unpinned)"
                raise StoreError(f"a baseline named {name!r} {state}: a name is never reused, "
                                 "choose another one")
            dep = t.deployments
            versions = conn.execute(select(dep.c.version).where(dep.c.model == model)
                                    .order_by(dep.c.deployed_at)).scalars().all()
            if not versions:
                raise no_such_model(conn, model)
            if version is not None and version not in versions:
                raise ConfigError([("--version", version, f"model {model} has no such version "
                                    f"(versions: {', '.join(versions)})")], "argument")
            # a baseline merges the rows whose bucket starts in its window: over minutes
            # rolled up into hours, a window that is not whole hours would hold others
            wa = t.window_aggregates
            hour = ROLLUP_SECONDS
            if (t0.timestamp() % hour or t1.timestamp() % hour) and conn.execute(
                    select(wa.c.id).where(wa.c.model == model, *rows_in(t0, t1), wa.c.bucket_seconds > 60)
                    .limit(1)).first() is not None:
                lo = datetime.fromtimestamp(t0.timestamp() // hour * hour, UTC)
                hi = datetime.fromtimestamp(-(-t1.timestamp() // hour) * hour, UTC)
                raise ConfigError([("--from/--to", f"{start} to {end}", "its traffic was rolled up into hours "
                                    "by `maintain`, so a baseline of it is whole hours: give --from "
                                    f"{lo:%Y-%m-%dT%H:%MZ} --to {hi:%Y-%m-%dT%H:%MZ}")], "argument")
            # a pin wins over the trailing baseline: one of no traffic would leave every
            # series of the model 'below min_samples', its drift unevaluated without a word
            held = [wa.c.model == model, wa.c.bucket_start >= t0, wa.c.bucket_start < t1]
            if version is not None:
                held.append(wa.c.version == version)
            if conn.execute(select(wa.c.id).where(*held).limit(1)).first() is None:
                which = f"{model} {version}" if version is not None else model
                raise ConfigError([("--from/--to", f"{start} to {end}", f"{which} served no traffic "
                                    "in this window: a baseline of nothing would leave every series "
                                    "unevaluated")], "argument")
            replaced = conn.execute(select(pb.c.name).where(pb.c.model == model, pb.c.active.is_(True))
                                    .order_by(pb.c.created_at.desc()).limit(1)).scalar()
            conn.execute(pb.insert().values(
                name=name, model=model, version=version, window_start=t0, window_end=t1,
                comment=comment, created_at=datetime.now(UTC), active=True,
            ))
    finally:
        engine.dispose()
    print(f"pinned {name!r}: {model} {version or 'any version'} {t0:%Y-%m-%d %H:%M}–{t1:%Y-%m-%d %H:%M} UTC")
    if replaced is not None:  # (the newest active pin of a model is its baseline)
        print(f"note: {name!r} replaces {replaced!r} as {model}'s baseline; `attnmon baseline unpin {name}` "
              f"goes back to it", file=sys.stderr)
    return 0


def baseline_list(config: Config, fmt: str = "text") -> int:
    from monitor.store import tables as t
    from monitor.store.maintenance import as_utc

    engine = _engine(config)
    try:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(t.pinned_baselines).order_by(t.pinned_baselines.c.created_at)).mappings()]
    finally:
        engine.dispose()
    # the newest active pin of a model is its baseline; an older one waits for its unpin
    newest = {r["model"]: r["name"] for r in rows if r["active"]}  # (rows oldest first)
    # SQLite hands times back naive: ISO 8601 in UTC, as every other command's JSON
    for r in rows:
        for k in ("window_start", "window_end", "created_at"):
            r[k] = as_utc(r[k]).isoformat() if r[k] is not None else None
        r["in_use"] = bool(r["active"]) and newest[r["model"]] == r["name"]

    def state(r: dict) -> str:
        if not r["active"]:
            return "unpinned"
        return "active" if r["in_use"] else f"active (replaced by {newest[r['model']]!r})"

    text = "\n".join(
        f"{r['name']}\t{r['model']}\t{r['version'] or '*'}\t{r['window_start']}\t{r['window_end']}\t"
        f"{state(r)}\t{r['comment'] or ''}"
        for r in rows
    ) or "no pinned baselines"
    _emit(fmt, text, rows)
    return 0


def baseline_unpin(config: Config, name: str) -> int:
    from monitor.store import tables as t

    engine = _engine(config)
    try:
        with engine.begin() as conn:
            pb = t.pinned_baselines
            n = conn.execute(update(pb).where(pb.c.name == name, pb.c.active.is_(True)).values(active=False)).rowcount
    finally:
        engine.dispose()
    if not n:
        raise StoreError(f"no active pinned baseline named {name!r}")
    print(f"unpinned {name!r}")
    return 0


# --- deployments ----------------------------------------------------------------------


def deploy_mark(config: Config, model: str, version: str, at: str | None = None,
                weights_id: str | None = None) -> int:
    """Record (or correct) when a version went live, and what weights it serves."""
    from collectors.block import label_problem
    from monitor.store import tables as t
    from monitor.store.maintenance import as_utc
    from monitor.store.writer import register_deployment

    bad = [(flag, value, problem) for flag, value in (("--model", model), ("--version", version))
           if (problem := label_problem(value))]
    if bad:
        raise ConfigError(bad, "argument")
    when = parse_time(at, "--at") if at else datetime.now(UTC)
    engine = _engine(config)
    try:
        with engine.begin() as conn:
            d = t.deployments
            known = conn.execute(select(d.c.model, d.c.version).order_by(d.c.deployed_at)).all()
            added = register_deployment(conn, model, version, when, weights_id, source="manual", deployed_at=when)
            if not added:
                values: dict = {"source": "manual"}
                if at is not None or weights_id is None:
                    values["deployed_at"] = when
                else:  # --weights-id alone: when it went live stays as it was
                    when = as_utc(conn.execute(select(d.c.deployed_at).where(
                        d.c.model == model, d.c.version == version)).scalar_one())
                if weights_id is not None:
                    values["weights_id"] = weights_id
                conn.execute(update(d).where(d.c.model == model, d.c.version == version).values(**values))
    finally:
        engine.dispose()
    print(f"{model} {version}: deployed at {when:%Y-%m-%d %H:%M:%S} UTC ({'recorded' if added else 'corrected'})")
    if added:
        # right before a first deploy's traffic; a typo otherwise, which the defaults of
        # `report` and `rollback-check` (the newest deployment) would then pick: list what
        # was there, so a typo shows
        models = list(dict.fromkeys(m for m, _ in known))
        versions = [v for m, v in known if m == model]
        what = (f"{version} is a new version of {model} (before it: {', '.join(versions)})" if versions else
                f"{model} is a new model here (models so far: {', '.join(models) or 'none'})")
        print(f"note: {what}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction, add_command) -> None:
    p = add_command(commands, "evaluate", "run one evaluation cycle, or backfill a range", lists=True)
    p.add_argument("--at", metavar="TIME", help="evaluate as if it were TIME (default: now)")
    p.add_argument("--from", dest="start", metavar="T1", help="backfill: first cycle time")
    p.add_argument("--to", dest="end", metavar="T2", help="backfill: cycles before this time")
    p.set_defaults(run=lambda config, a: evaluate(config, a.at, a.start, a.end, a.format))

    b = add_command(commands, "baseline", "pin, list and unpin named baselines")
    sub = b.add_subparsers(title="baseline commands", dest="baseline_command", required=True, metavar="COMMAND")
    p = add_command(sub, "pin", "pin a window of a model's traffic as its baseline")
    p.add_argument("--model", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--from", dest="start", required=True, metavar="T1")
    p.add_argument("--to", dest="end", required=True, metavar="T2")
    p.add_argument("--version", help="only this version's traffic (default: any)")
    p.add_argument("--comment")
    p.set_defaults(run=lambda config, a: baseline_pin(config, a.model, a.name, a.start, a.end, a.version, a.comment))
    p = add_command(sub, "list", "list pinned baselines", lists=True)
    p.set_defaults(run=lambda config, a: baseline_list(config, a.format))
    p = add_command(sub, "unpin", "stop using a pinned baseline")
    p.add_argument("name")
    p.set_defaults(run=lambda config, a: baseline_unpin(config, a.name))

    d = add_command(commands, "deploy", "record deployments")
    sub = d.add_subparsers(title="deploy commands", dest="deploy_command", required=True, metavar="COMMAND")
    p = add_command(sub, "mark", "record when a version really went live")
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--at", metavar="TIME", help="when: ISO 8601, or now-2h / now+2h (default: now; with --weights-id on a "
                   "version already recorded, when it went live is kept)")
    p.add_argument("--weights-id", help="identifies the weights it serves (same weights = same heads)")
    p.set_defaults(run=lambda config, a: deploy_mark(config, a.model, a.version, a.at, a.weights_id))
