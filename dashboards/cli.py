"""`attnmon dashboards export|push|annotate|grant` and `attnmon report`.

Plain functions taking `(config, ...)`, registered by `register(commands, add_command)`
from monitor/cli.py. Heavy imports (the Grafana SDK, grafana-client, matplotlib) wait
until a command runs, so `attnmon --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.cli_common import emit as _emit
from monitor.config import CENTURY_DAYS, Config
from monitor.errors import NOT_GIVEN, ConfigError, StoreError

PASSWORD_ENV = "ATTNMON_GRAFANA_DB_PASSWORD"


def _boards(rules: str | None):
    from dashboards.catalog import dashboards

    return dashboards(rules)


def _token(config: Config, token_file: str | None) -> str:
    """--token-file, else the config's grafana.token, else $ATTNMON_GRAFANA_TOKEN."""
    from dashboards.client import load_token

    if token_file is None and config.grafana is not None:
        return config.grafana.read_token()
    return load_token(token_file)


def _grafana(config: Config, url: str | None, token_file: str | None):
    """(url, the config's grafana section when `url` is its Grafana, else None, the API
    client): the section's URL when none is given, and its settings (timeout) only for
    its own Grafana."""
    from dashboards.client import connect

    g = config.grafana
    if url is None:
        if g is None:
            raise ConfigError([("--grafana-url", NOT_GIVEN, "give Grafana's URL (or a grafana: section in the config)")],
                              "argument")
        url = g.url
    section = g if g is not None and url.rstrip("/") == g.url.rstrip("/") else None
    api = connect(url, _token(config, token_file), **({"timeout": section.timeout_s} if section else {}))
    return url, section, api


def _pg_url(config: Config, db_url: str | None) -> str | None:
    if db_url:
        return db_url
    return config.store_url if config.store_url.startswith("postgresql") else None


def _connection(db_url: str | None, user: str, sslmode: str):
    from sqlalchemy.exc import ArgumentError

    from dashboards.provision import connection_for
    from monitor.store import redact

    try:
        return connection_for(db_url, user, sslmode)
    except ArgumentError:
        raise ConfigError([("--db-url", redact(db_url or ""), "not a database URL "
                            "(e.g. postgresql+psycopg://db.example:5432/attnmon)")], "argument") from None
    except ValueError as exc:
        raise ConfigError([("--db-url", redact(db_url or ""), str(exc))], "argument") from None


def export(config: Config, out: str, *, db_url: str | None = None, db_user: str = "attnmon_grafana",
           sslmode: str = "require", dashboards_path: str | None = None, rules: str | None = None,
           fmt: str = "text") -> int:
    """Write the dashboards' JSON and Grafana's provisioning files under `out`."""
    from dashboards.provision import DEFAULT_DASHBOARDS_PATH
    from dashboards.provision import export as write

    conn = _connection(_pg_url(config, db_url), db_user, sslmode)
    paths = write(Path(out), _boards(rules), conn, dashboards_path or DEFAULT_DASHBOARDS_PATH)
    text = "\n".join(str(p) for p in paths)
    if conn.url.startswith("$"):
        text += ("\n(no PostgreSQL URL given: the datasource reads its host and database from "
                 "$ATTNMON_GRAFANA_DB_HOST and $ATTNMON_GRAFANA_DB_NAME in Grafana's environment)")
    _emit(fmt, text, {"files": [str(p) for p in paths]})
    return 0


def push(config: Config, grafana_url: str | None = None, *, token_file: str | None = None, db_url: str | None = None,
         db_user: str = "attnmon_grafana", sslmode: str = "require", datasource: bool = True,
         rules: str | None = None, force: bool = False, fmt: str = "text") -> int:
    """Create the folder and the datasource if missing, save every dashboard not edited in
    Grafana since attnmon pushed it (all of them with `force`) nor provisioned from files;
    1 when some were left, 2 when some failed (the others pushed)."""
    from dashboards.provision import datasource as datasource_body
    from dashboards.push import push as run
    from dashboards.spec import FOLDER_UID

    body = None
    if datasource:
        url = _pg_url(config, db_url)
        if url is None:
            raise ConfigError([("--db-url", NOT_GIVEN, "the PostgreSQL store Grafana should read "
                                "(or --no-datasource to leave the datasource alone)")], "argument")
        password = os.environ.get(PASSWORD_ENV, "")
        if not password:
            raise ConfigError([(PASSWORD_ENV, NOT_GIVEN, "not set: the read-only role's password")], "environment")
        body = datasource_body(_connection(url, db_user, sslmode), password)
    grafana_url, _, api = _grafana(config, grafana_url, token_file)
    folder = config.grafana.folder if config.grafana is not None else FOLDER_UID
    result = run(api, _boards(rules), body, folder_uid=folder, force=force)
    lines = [f"folder {folder} {'created' if result.folder_created else 'exists'}"]
    if result.datasource_created is not None:
        lines.append(f"datasource attnmon-pg {'created' if result.datasource_created else 'exists (left as is)'}")
    lines += [_pushed(d) for d in result.dashboards]
    _emit(fmt, "\n".join(lines), {
        "folder_created": result.folder_created,
        "datasource_created": result.datasource_created,
        "dashboards": [{"uid": d.uid, "url": d.url, "action": d.action}
                       | ({"edited_by": d.edited_by, "edited_at": d.edited_at, "edit_message": d.edit_message}
                          if d.action in ("skipped", "overwritten") else {})
                       | ({"status": d.error.status or None, "call": d.error.action, "error": d.error.message}
                          if d.error is not None else {})
                       for d in result.dashboards],
    })
    if result.provisioned:
        n = len(result.provisioned)
        print(f"attnmon: {n} dashboard{'s' if n > 1 else ''} provisioned from files, which Grafana does not "
              f"let the API save, {'were' if n > 1 else 'was'} left as is: "
              f"{', '.join(d.uid for d in result.provisioned)}; update the files with attnmon dashboards "
              "export, or remove them from Grafana's provisioning to push instead", file=sys.stderr)
    if result.skipped:
        n = len(result.skipped)
        names = ", ".join(f"{d.uid} ({d.edited_by or '?'}, {d.edited_at or '?'})" for d in result.skipped)
        print(f"attnmon: {n} dashboard{'s' if n > 1 else ''} edited in Grafana since attnmon pushed "
              f"{'them were' if n > 1 else 'it was'} left as is: {names}; keep what matters in the alert rules "
              "(--rules) or attnmon's dashboards, then push with --force to overwrite", file=sys.stderr)
    if result.failed:
        # an error, not a choice to leave it: 2 as for any error, so a pipeline that lets
        # 1 (edits left as is) pass still stops here
        n = len(result.failed)
        names = "; ".join(f"{d.uid} ({d.error.where}: {d.error.message})" for d in result.failed if d.error is not None)
        print(f"attnmon: {n} dashboard{'s' if n > 1 else ''} failed and {'were' if n > 1 else 'was'} not "
              f"pushed, the others were: {names}; push again once that is fixed", file=sys.stderr)
        return 2
    return 1 if result.skipped or result.provisioned else 0


def _pushed(d) -> str:
    """One dashboard's line of `push`'s text output."""
    saved_by = (f"saved in Grafana by {d.edited_by or 'someone'} at {d.edited_at or 'an unknown time'}"
                + (f" ({d.edit_message!r})" if d.edit_message else ""))
    if d.action == "skipped":
        return f"dashboard {d.uid} skipped: {saved_by} since attnmon pushed it"
    if d.action == "provisioned":
        return f"dashboard {d.uid} provisioned from a file: Grafana refuses saves through its API {d.url}"
    if d.action == "overwritten":
        return f"dashboard {d.uid} overwritten ({saved_by}) {d.url}"
    if d.error is not None:
        return f"dashboard {d.uid} failed ({d.error.where} to {d.error.action}): {d.error.message}"
    return f"dashboard {d.uid} {d.action} {d.url}"


def annotate(config: Config, grafana_url: str | None = None, *, token_file: str | None = None, days: float = 7.0,
             dashboard_uid: str | None = None, now: str | None = None, fmt: str = "text") -> int:
    """Post deployments and alert transitions of the last `days` not posted yet."""
    from dashboards.annotate import annotate as run
    from monitor.cli_common import parse_time
    from monitor.store import make_engine, require_schema

    at = parse_time(now, "--now") if now else datetime.now(UTC)
    if not 0 < days <= CENTURY_DAYS:  # (False for NaN too)
        raise ConfigError([("--days", days, f"look back a number of days > 0, at most {CENTURY_DAYS:,}")], "argument")
    grafana_url, section, api = _grafana(config, grafana_url, token_file)
    if section is not None:
        # where the daemon's job posts: what it recorded as posted is per target
        dashboard_uid = dashboard_uid or section.dashboard_uid
    engine = make_engine(config.store_url)
    try:
        require_schema(engine)
        result = run(engine, api, since=at - timedelta(days=days), grafana_url=grafana_url,
                     dashboard_uid=dashboard_uid, now=at)
    finally:
        engine.dispose()
    _emit(fmt, f"posted {result.posted} annotations ({result.already} posted before)",
          {"posted": result.posted, "already": result.already})
    return 0


def grant(config: Config, role: str = "attnmon_grafana", schema: str | None = None) -> int:
    """Create (or update) the read-only role on the PostgreSQL store."""
    from sqlalchemy import text

    from dashboards.role import readonly_role_sql
    from monitor.store import make_engine, redact
    from monitor.store.engine import store_errors

    if not config.store_url.startswith("postgresql"):
        raise ConfigError([("store", redact(config.store_url), "the read-only role is for a PostgreSQL store")])
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise ConfigError([(PASSWORD_ENV, NOT_GIVEN, "not set: the role's password")], "environment")
    engine = make_engine(config.store_url)
    try:
        with store_errors(engine.url), engine.begin() as conn:
            schema = schema or conn.execute(text("SELECT current_schema()")).scalar_one()
            try:
                run_script(conn, readonly_role_sql(role, password, schema))
            except engine.dialect.loaded_dbapi.Error as exc:  # the driver's own, not wrapped
                detail = " ".join(str(exc).split())
                raise StoreError(f"store at {redact(engine.url)}: {detail}", redact(engine.url)) from exc
    finally:
        engine.dispose()
    print(f"role {role}: SELECT on the monitor's tables in schema {schema}, read-only sessions")
    return 0


def run_script(conn, sql: str) -> None:
    """Several statements at once (a DO block among them): the driver's simple query."""
    conn.connection.driver_connection.execute(sql)


def report(config: Config, out: str, *, model: str | None = None, start: str | None = None,
           end: str | None = None, rules: str | None = None, fmt: str = "text") -> int:
    """Render the main panels as PNG images from the dashboards' SQL."""
    from dashboards.report import report as run
    from monitor.cli_common import parse_time
    from monitor.store import make_engine, require_schema
    from monitor.store.engine import store_errors

    t1 = parse_time(start, "--from") if start else None
    t2 = parse_time(end, "--to") if end else None
    if t1 is not None and t2 is not None and t2 <= t1:
        raise ConfigError([("--to", end, "must be after --from")], "argument")
    engine = make_engine(config.store_url)
    try:
        require_schema(engine)
        with store_errors(engine.url):
            try:
                done = run(engine, Path(out), boards=_boards(rules), model=model, start=t1, end=t2)
            except LookupError as exc:
                raise ConfigError([("store", config.store_url, str(exc).strip("'\""))], "report") from None
    finally:
        engine.dispose()
    lines = [str(r.path) if not r.problems else f"skipped {r.dashboard}/{r.panel}: {'; '.join(r.problems)}"
             for r in done]
    _emit(fmt, "\n".join(lines), {
        "images": [str(r.path) for r in done if not r.problems],
        "skipped": [{"panel": f"{r.dashboard}/{r.panel}", "why": list(r.problems)} for r in done if r.problems],
    })
    return 0


def register(commands: argparse._SubParsersAction, add_command) -> None:
    d = add_command(commands, "dashboards", "Grafana dashboards: export, push, annotations, read-only role")
    sub = d.add_subparsers(title="dashboards commands", dest="dashboards_command", required=True, metavar="COMMAND")

    def datasource_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db-url", metavar="URL",
                       help="the PostgreSQL store as Grafana reaches it (default: the store URL; user and password ignored)")
        p.add_argument("--db-user", default="attnmon_grafana", help="the read-only role (default: attnmon_grafana)")
        p.add_argument("--sslmode", default="require", help="libpq sslmode for Grafana (default: require)")
        p.add_argument("--rules", metavar="FILE", help="alert rules whose thresholds are drawn (default: the shipped pack)")

    p = add_command(sub, "export", "write dashboard JSON and Grafana provisioning files", lists=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--dashboards-path", metavar="PATH",
                   help="where Grafana will find the JSON files (default: /var/lib/grafana/dashboards/attnmon)")
    datasource_options(p)
    p.set_defaults(run=lambda config, a: export(
        config, a.out, db_url=a.db_url, db_user=a.db_user, sslmode=a.sslmode,
        dashboards_path=a.dashboards_path, rules=a.rules, fmt=a.format))

    p = add_command(sub, "push", "create the folder and datasource, save the dashboards by uid (any edited in "
                    "Grafana since attnmon pushed it is left as is: exit 1; one that Grafana refuses, or whose "
                    "call fails, is named and the others pushed: exit 2)", lists=True)
    p.add_argument("--grafana-url", metavar="URL", help="default: the config's grafana.url")
    p.add_argument("--token-file", metavar="FILE", help="Grafana token (default: the config's grafana.token, else $ATTNMON_GRAFANA_TOKEN)")
    p.add_argument("--no-datasource", dest="datasource", action="store_false",
                   help="do not create the datasource (it is provisioned)")
    p.add_argument("--force", action="store_true",
                   help="overwrite dashboards edited in Grafana since attnmon pushed them (the edited "
                        "version stays in the dashboard's version history in Grafana)")
    datasource_options(p)
    p.set_defaults(run=lambda config, a: push(
        config, a.grafana_url, token_file=a.token_file, db_url=a.db_url, db_user=a.db_user,
        sslmode=a.sslmode, datasource=a.datasource, rules=a.rules, force=a.force, fmt=a.format))

    p = add_command(sub, "annotate", "post deployments and alert transitions as Grafana annotations", lists=True)
    p.add_argument("--grafana-url", metavar="URL", help="default: the config's grafana.url")
    p.add_argument("--token-file", metavar="FILE", help="Grafana token (default: the config's grafana.token, else $ATTNMON_GRAFANA_TOKEN)")
    p.add_argument("--days", type=float, default=7.0, help="look back this many days (default: 7)")
    p.add_argument("--dashboard-uid", metavar="UID",
                   help="pin the annotations to this dashboard (default: the config's grafana.dashboard_uid "
                        "for its Grafana, else organisation-wide, by tag)")
    p.add_argument("--now", metavar="TIME", help="act as if it were TIME (ISO 8601; default: now)")
    p.set_defaults(run=lambda config, a: annotate(
        config, a.grafana_url, token_file=a.token_file, days=a.days, dashboard_uid=a.dashboard_uid,
        now=a.now, fmt=a.format))

    p = add_command(sub, "grant", f"create the read-only role Grafana connects as (password: ${PASSWORD_ENV})")
    p.add_argument("--role", default="attnmon_grafana")
    p.add_argument("--schema", help="the store's schema (default: the connection's current schema)")
    p.set_defaults(run=lambda config, a: grant(config, a.role, a.schema))

    p = add_command(commands, "report", "render the main dashboard panels as PNG images", lists=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", help="default: the model deployed last")
    p.add_argument("--from", dest="start", metavar="T1", help="default: the model's first minute")
    p.add_argument("--to", dest="end", metavar="T2", help="default: the model's last minute")
    p.add_argument("--rules", metavar="FILE", help="alert rules whose thresholds are drawn")
    p.set_defaults(run=lambda config, a: report(
        config, a.out, model=a.model, start=a.start, end=a.end, rules=a.rules, fmt=a.format))
