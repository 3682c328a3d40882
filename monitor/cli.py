"""attnmon's command line: `main` parses, loads the config once and dispatches.

Each command is a plain function taking `(config, ...)` that tests call directly:

    >>> db_current(load_config(), fmt="json")   # doctest: +SKIP
    {"store": "sqlite:///attnmon.db", "revision": "0001", "head": "0001", "is_head": true}

To add a command: write its function, then a `_register_<name>(commands)` that calls
`add_command(...)` and `set_defaults(run=lambda config, args: ...)`, and list it in
`REGISTRARS`. Global options (--store, --config, --debug) come with `add_command`;
pass `lists=True` for --format text|json.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError

from monitor.cli_common import emit as _emit
from monitor.config import Config, load_config
from monitor.errors import AttnmonError, ConfigError

EXIT_ERROR = 2  # an AttnmonError or a usage error
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command killed by SIGPIPE (`... | head`)
EXIT_INTERRUPTED = 130  # ... and for one stopped by Ctrl-C (SIGINT)


STORE_HELP = "store URL (else $ATTNMON_STORE_URL, else the config file, else sqlite:///attnmon.db)"
CONFIG_HELP = "config file (default: ./attnmon.yaml if it exists)"


def _global_options(store_help: str = STORE_HELP, config_help: str = CONFIG_HELP) -> argparse.ArgumentParser:
    # SUPPRESS as the default: the options are accepted before or after the command
    # name, and a subcommand's parser must not overwrite a value given before it.
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options")
    group.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=store_help,
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=config_help,
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    return options


_GLOBALS = _global_options()


def add_command(
    commands: argparse._SubParsersAction, name: str, help: str, *, lists: bool = False
) -> argparse.ArgumentParser:
    """A subcommand with the global options, and --format text|json where `lists`."""
    parser = commands.add_parser(name, help=help, description=help, parents=[_GLOBALS])
    if lists:
        parser.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help="output format (default: text)",
        )
    return parser


# -- db ------------------------------------------------------------------------------


def _describe(revision: str | None, head: str) -> str:
    shown = revision or "none (empty store)"
    return f"{shown} (head)" if revision == head else f"{shown} (head is {head})"


def db_upgrade(config: Config, revision: str = "head") -> int:
    """Migrate the store up to `revision`; an empty store gets the whole schema."""
    _known_revision(revision, "--revision")
    return _migrate(config, "upgrade", revision)


def db_downgrade(config: Config, revision: str) -> int:
    """Migrate the store down to `revision` ("base" drops every table)."""
    from monitor.store.engine import require_file

    _known_revision(revision, "REV")
    require_file(config.store_url)
    return _migrate(config, "downgrade", revision)


def _known_revision(revision: str, option: str) -> None:
    """Refuse a revision id this attnmon lacks before connecting (which would leave an
    empty SQLite file behind a typo). Alembic's relative forms (-1, head-1) pass."""
    from monitor.store import migrate

    if revision == "base" or any(c in revision for c in "+-@:") or migrate.known_revision(revision):
        return
    raise ConfigError([(option, revision, f"not a revision of this attnmon; known: "
                                          f"{', '.join(migrate.revisions())}, head, base")], "argument")


def _migrate(config: Config, direction: str, revision: str) -> int:
    from monitor.store import migrate, redact

    before = migrate.current(config.store_url)
    getattr(migrate, direction)(config.store_url, revision)
    after = migrate.current(config.store_url)
    change = "already at" if before == after else f"{direction}d {before or 'none'} →"
    print(
        f"store at {redact(config.store_url)}: {change} {_describe(after, migrate.head_revision())}"
    )
    return 0


def db_current(config: Config, fmt: str = "text") -> int:
    """Print the store's revision and whether it is the newest."""
    from monitor.store import migrate, redact
    from monitor.store.engine import sqlite_file

    head = migrate.head_revision()
    store = redact(config.store_url)
    path = sqlite_file(config.store_url)
    if path is not None and path.parent.is_dir() and not path.exists():  # (connecting would leave an empty file)
        data = {"store": store, "revision": None, "head": head, "is_head": False, "exists": False}
        _emit(fmt, f"{store}: none (no file {path}) (head is {head})", data)
        return 0
    revision = migrate.current(config.store_url)
    data = {"store": store, "revision": revision, "head": head, "is_head": revision == head}
    _emit(fmt, f"{store}: {_describe(revision, head)}", data)
    return 0


def db_check(config: Config, fmt: str = "text") -> int:
    """Check that the store is at head and matches monitor.store.tables (else an error)."""
    from monitor.store import migrate, redact
    from monitor.store.engine import require_file

    require_file(config.store_url)
    migrate.check(config.store_url)
    store = redact(config.store_url)
    head = migrate.head_revision()
    data = {"store": store, "revision": head, "ok": True}
    _emit(fmt, f"{store}: at head {head}, schema matches the models", data)
    return 0


def _register_db(commands: argparse._SubParsersAction) -> None:
    db = add_command(commands, "db", "manage the store's schema (Alembic migrations)")
    sub = db.add_subparsers(
        title="db commands", dest="db_command", required=True, metavar="COMMAND"
    )

    p = add_command(sub, "upgrade", "create or migrate the schema up to the newest revision")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(run=lambda config, args: db_upgrade(config, args.revision))

    p = add_command(sub, "downgrade", "migrate the schema down to REV (base: drop every table)")
    p.add_argument("revision", metavar="REV")
    p.set_defaults(run=lambda config, args: db_downgrade(config, args.revision))

    p = add_command(sub, "current", "print the store's revision and whether it is head", lists=True)
    p.set_defaults(run=lambda config, args: db_current(config, args.format))

    p = add_command(
        sub, "check", "check that the schema is at head and matches the models", lists=True
    )
    p.set_defaults(run=lambda config, args: db_check(config, args.format))


# -- maintain ------------------------------------------------------------------------


def maintain(config: Config, fmt: str = "text", now: str | None = None) -> int:
    """Compact closed minutes, roll old minutes up to hours, enforce retention, drop old
    materialised baselines: what the daemon's maintain job does."""
    from dataclasses import asdict

    from monitor.cli_common import parse_time
    from monitor.daemon import maintain_store
    from monitor.store import make_engine, require_schema

    at = parse_time(now, "--now") if now else datetime.now(UTC)
    if at > datetime.now(UTC):
        # retention counts back from it: a mistyped year deletes every result and event,
        # and rolls up the minutes the daemon's next windows read
        raise ConfigError([("--now", now, "is in the future: retention would delete what is still "
                            "kept, counting back from then")], "argument")
    engine = make_engine(config.store_url)
    try:
        require_schema(engine)
        done = maintain_store(engine, config, at)
    finally:
        engine.dispose()
    result = done.maintenance
    text = (
        f"merged {result.merged_groups} groups ({result.rows_removed} rows removed), "
        f"deleted {result.events_deleted} events, {result.batches_deleted} batch keys, "
        f"{result.results_deleted} drift results, {result.health_deleted} collector health minutes and "
        f"{done.baselines_pruned} materialised baselines; thinned {result.results_thinned} older drift results"
    )
    _emit(fmt, text, asdict(result) | {"baselines_pruned": done.baselines_pruned})
    return 0


def _register_maintain(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "maintain",
        "compact closed minutes, roll old minutes up to hours, thin old drift results, apply retention, "
        "drop old baselines", lists=True
    )
    p.add_argument("--now", metavar="TIME", help="act as if it were TIME, not in the future (ISO 8601; default: now)")
    p.set_defaults(run=lambda config, args: maintain(config, args.format, args.now))


# -- forget-items ----------------------------------------------------------------------


def forget_items(config: Config, before: str, model: str | None = None, fmt: str = "text") -> int:
    """Remove the item ids stored before a time (monitor.store.forget): what to run after
    turning hash_item_ids on, since it keeps raw ids out only of what is written after."""
    from dataclasses import asdict

    from monitor.cli_common import no_such_model, open_store, parse_time
    from monitor.store import tables as t
    from monitor.store.forget import forget_items as forget

    at = parse_time(before, "--before")
    if at > datetime.now(UTC):
        # a mistyped year would strip the minutes still being written and evaluated
        raise ConfigError([("--before", before, "is in the future: only what is stored can be forgotten")],
                          "argument")
    engine = open_store(config)
    try:
        if model is not None:
            # a misspelt name would report nothing removed, read as nothing left
            with engine.connect() as conn:
                if conn.execute(t.models.select().where(t.models.c.name == model)).first() is None:
                    raise no_such_model(conn, model)
        done = forget(engine, at, model=model)
    finally:
        engine.dispose()
    text = (f"removed the item lists of {done.sketches} sketch rows and {done.baselines} materialised baselines, "
            f"the top items of {done.results} drift results and the item ids of {done.events} raw events, "
            f"before {at.isoformat(timespec='seconds')}")
    if done.unreadable:
        rows = "row whose payload cannot be read was" if done.unreadable == 1 else "rows whose payload cannot be read were"
        text += f"; {done.unreadable} sketch {rows} left as it is (logged)"
    _emit(fmt, text, {"before": at.isoformat(), "model": model, **asdict(done)})
    return 0


def _register_forget_items(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "forget-items",
        "remove the item ids stored before a time: top-K item lists of sketches, drift results' top items "
        "and raw events' ids (after turning hash_item_ids on)", lists=True,
    )
    p.add_argument("--before", required=True, metavar="TIME",
                   help="rows that start before TIME (ISO 8601, or now, now-2h; not in the future)")
    p.add_argument("--model", help="only this model (default: every model)")
    p.set_defaults(run=lambda config, args: forget_items(config, args.before, args.model, args.format))


# -- hash-item -------------------------------------------------------------------------


def hash_item(config: Config, items: Sequence[str], fmt: str = "text") -> int:
    """Print the keyed hash that collectors with `hash_item_ids` store for each item id,
    under the key in the variable `collector.hash_key_env` names (as the collector reads
    it): what to look for in dashboards, alerts and rollback reasons."""
    from collectors.itemhash import ItemHasher

    var = config.collector.hash_key_env
    key = os.environ.get(var)
    if not key:
        raise ConfigError([("collector.hash_key_env", var, "the environment variable it names is empty or "
                            "unset: set it to the collectors' hash key")])
    for item in items:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:  # (bytes the shell passed that are not UTF-8)
            raise ConfigError([("ITEM_ID", item, "not UTF-8: a collector rejects such an id (bad_value), so "
                                "no hash of it is stored")], "argument") from None
    hasher = ItemHasher(key.encode())
    pairs = [(item, hasher(item)) for item in items]
    _emit(fmt, "\n".join(f"{h}  {item}" for item, h in pairs), [{"item": i, "hash": h} for i, h in pairs])
    return 0


def _register_hash_item(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "hash-item",
        "print the hash that collectors with hash_item_ids store for each item id (key: $ATTNMON_HASH_KEY, or "
        "the variable collector.hash_key_env names)", lists=True,
    )
    p.add_argument("items", nargs="+", metavar="ITEM_ID", help="an item id as the model passes it (its text)")
    p.set_defaults(run=lambda config, args: hash_item(config, args.items, args.format))


# -- demo ------------------------------------------------------------------------------


def demo(config: Config, out: str, defect: bool, store: str | None, serve: bool = False) -> int:
    """Simulated traffic of demo-sasrec v1 then v2 through the whole monitor."""
    from pathlib import Path

    from monitor.demo import demo as run

    return run(Path(out), store_url=store, defect=defect, serve=serve)


# The demo writes a story of its own and its daemon evaluates whatever the store holds:
# it never takes the store from $ATTNMON_STORE_URL or the config file (a production
# store, likely), only from --store, and refuses a store that holds data.
_DEMO_GLOBALS = _global_options(
    store_help="an empty store to fill (default: DIR/demo.db, recreated at each run); never "
               "$ATTNMON_STORE_URL or the config file's store, which the demo would write into",
    config_help="config file (read and checked, but the demo uses settings of its own)",
)


def _register_demo(commands: argparse._SubParsersAction) -> None:
    help = "simulate a recommender's traffic and a bad deploy, end to end"
    p = commands.add_parser("demo", help=help, description=help, parents=[_DEMO_GLOBALS])
    p.add_argument("--out", default="attnmon-out", metavar="DIR", help="output folder (default: attnmon-out)")
    p.add_argument("--no-defect", dest="defect", action="store_false", help="deploy a harmless v2")
    p.add_argument("--serve", action="store_true", help="keep the daemon running afterwards (/healthz, /metrics), on the demo's clock from where its traffic ended")
    p.set_defaults(
        run=lambda config, args: demo(config, args.out, args.defect, getattr(args, "store", None), args.serve)
    )


# -- run -------------------------------------------------------------------------------


def run(config: Config, once: bool = False, fmt: str = "text") -> int:
    """The daemon (`attnmon run`) until SIGTERM; `once`: one catch-up evaluation and one
    delivery of the outbox, then exit (1 when the delivery failed: what was not delivered
    stays in the outbox for the next run).

    $ATTNMON_FAKE_NOW (an ISO time, optionally followed by a speed such as `x60`) runs
    it in simulated time: for tests and demos only.
    """
    import logging

    from monitor import daemon as d
    from monitor.store import require_schema
    from monitor.store.engine import store_errors

    if not logging.getLogger().handlers:
        # the daemon's own lines at INFO; libraries (alembic, apscheduler) only warnings
        logging.basicConfig(
            level=logging.WARNING, stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("attnmon").setLevel(logging.INFO)
    spec = os.environ.get(d.FAKE_NOW_ENV)
    clock = d.fake_clock(spec) if spec else d.utc_now
    # --once does not annotate Grafana: a cron job needs no Grafana token
    with d.Daemon(config, clock=clock, annotate=not once) as daemon:
        if not once:
            return d.serve(daemon)  # waits for a store that is down, checks its schema
        require_schema(daemon.engine)
        if not daemon.acquire():
            _emit(fmt, "another daemon leads this store: nothing done", {"leader": False, "windows": 0})
            return 0
        with store_errors(daemon.engine.url):
            result = daemon.evaluate()
            daemon.deliver()  # the store's errors go to store_errors; receivers' stay in the result
            got = daemon.alerts.last_delivery
            sent = {"delivered": got.delivered, "retrying": got.retrying, "failed": got.failed,
                    "in_flight": got.in_flight}
            undelivered = None
            if got.retrying or got.failed or got.in_flight:
                # (a send still running when this process exits is cut off: its rows wait
                # for their claim to end, then go with the next run)
                undelivered = (f"{got.retrying + got.in_flight} kept in the outbox for the next run, "
                               f"{got.failed} given up" + (f": {'; '.join(got.errors)}" if got.errors else ""))
    windows = result.windows
    data = {
        "leader": True,
        "windows": len(windows),
        "first": windows[0].window_end.isoformat() if windows else None,
        "last": windows[-1].window_end.isoformat() if windows else None,
        "series": windows[-1].series if windows else 0,
        "written": result.written,
        "skipped_windows": result.skipped,
        "watermark": result.watermark.isoformat() if result.watermark else None,
        "notifications": sent,
        "delivery_error": undelivered,
    }
    span = f" ending {data['first']} to {data['last']}" if windows else ""
    text = (
        f"evaluated {len(windows)} windows{span}, wrote {result.written} results"
        + (f", skipped {result.skipped} older windows" if result.skipped else "")
        + f"; watermark {data['watermark']}"
        + (f"; {sent['delivered']} notifications delivered" if undelivered is None
           else f"; delivery failed ({undelivered})")
    )
    _emit(fmt, text, data)
    return 0 if undelivered is None else 1


def _register_run(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "run", "the daemon: evaluate drift, deliver alerts, maintain the store", lists=True
    )
    p.add_argument(
        "--once", action="store_true",
        help="evaluate the windows missed since the last run, deliver the outbox, then exit (1: delivery failed)"
    )
    p.set_defaults(run=lambda config, args: run(config, args.once, args.format))


# -- dispatch ------------------------------------------------------------------------

def _register_evaluation(commands: argparse._SubParsersAction) -> None:
    from monitor import cli_evaluate

    cli_evaluate.register(commands, add_command)


def _register_dashboards(commands: argparse._SubParsersAction) -> None:
    from dashboards import cli as dashboards_cli

    dashboards_cli.register(commands, add_command)


def _register_rollback(commands: argparse._SubParsersAction) -> None:
    from monitor import cli_rollback

    cli_rollback.register(commands, add_command)


def _register_alerts(commands: argparse._SubParsersAction) -> None:
    from monitor import cli_alerts

    cli_alerts.register(commands, add_command)


REGISTRARS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _register_db,
    _register_evaluation,
    _register_alerts,
    _register_rollback,
    _register_maintain,
    _register_forget_items,
    _register_hash_item,
    _register_demo,
    _register_run,
    _register_dashboards,
)


class _Version(argparse.Action):
    """--version, reading the version only when asked (argparse's own action needs it
    when the parser is built, at every command)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from monitor.version import version

        print(f"attnmon {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnmon",
        description="Monitor the attention behaviour of sequence recommenders.",
        parents=[_GLOBALS],
    )
    parser.add_argument("--version", action=_Version, help="print attnmon's version and exit")
    commands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    for register in REGISTRARS:
        register(commands)
    return parser


def _path_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> option string of every option that takes a file or folder (metavar FILE or
    DIR), over all commands."""
    found: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, option in _path_options(sub).items():
                    found.setdefault(dest, option)
        elif action.option_strings and any(w in str(action.metavar or "") for w in ("FILE", "DIR")):
            found.setdefault(action.dest, action.option_strings[-1])
    return found


def _path_error(parser: argparse.ArgumentParser, args: argparse.Namespace, exc: OSError) -> str | None:
    """The one-line message for an OSError on a path the user gave (--out FILE, say), or
    None when the error is about another file (a bug: its traceback is wanted)."""
    if not exc.filename or not isinstance(exc.filename, str | os.PathLike):
        return None
    failed = os.path.abspath(os.fspath(exc.filename))
    for dest, option in _path_options(parser).items():
        value = getattr(args, dest, None)
        if not isinstance(value, str) or not value:
            continue
        given = os.path.abspath(value)
        # the path itself, a file under the folder it names, or a folder above it
        if os.path.commonpath([failed, given]) not in (failed, given):
            continue
        cause = exc.strerror or type(exc).__name__
        if failed != given:
            cause = f"{exc.filename}: {cause}"
        if isinstance(exc, FileNotFoundError) and not os.path.isdir(os.path.dirname(failed)):
            cause += f" (directory {os.path.dirname(failed)} does not exist)"
        elif isinstance(exc, IsADirectoryError):
            cause += " (give a file name, not a folder)"
        elif isinstance(exc, NotADirectoryError | FileExistsError) and failed == given:
            cause += " (a file is in the way of the folder)"
        return str(ConfigError([(option, value, cause)], "argument"))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 error or bad usage, 130 stopped
    by Ctrl-C, 141 stdout closed by its reader)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed it
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    debug = getattr(args, "debug", False)
    try:
        config = load_config(
            getattr(args, "config", None),
            os.environ,
            overrides={"store_url": getattr(args, "store", None)},
        )
        return args.run(config, args)
    except AttnmonError as exc:
        message = str(exc)
        if debug:
            traceback.print_exc()
    except DBAPIError as exc:
        # the driver's error (a store locked by another writer past the busy timeout, a
        # server gone, a full disk) reached the command outside the daemon's store_errors:
        # the same one line as there, not a traceback
        from monitor.store.engine import store_error

        message = str(store_error(exc, config.store_url))
        if debug:
            traceback.print_exc()
    except OverflowError as exc:
        # datetime's range is years 1 to 9999. Times and durations given as options are
        # kept well inside it where they are parsed (cli_common, naming the option); this
        # is for what still reaches past it in a command's date arithmetic.
        message = f"a time or duration given is out of range (dates run from year 1 to 9999): {exc}"
        if debug:
            traceback.print_exc()
    except KeyboardInterrupt:
        # Ctrl-C: the user knows; a traceback from wherever it landed tells them nothing.
        # (What a command writes to the store is one transaction: rolled back.)
        if debug:
            traceback.print_exc()
        print("attnmon: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`attnmon alerts list | head -1`): no traceback, and no
        # second one when Python flushes stdout at exit. Not 0: not all was written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        # a file or folder the user named (--out, --rules, ...) cannot be written or read
        found = _path_error(parser, args, exc)
        if found is None:
            raise
        message = found
        if debug:
            traceback.print_exc()
    # One line, whatever a driver put in its message.
    print(f"attnmon: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
