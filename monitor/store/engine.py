"""Engines for the store, set up the same way for every caller (collectors, daemon, CLI).

>>> engine = make_engine("sqlite:///attnmon.db")   # doctest: +SKIP
>>> require_schema(engine)                          # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.util import asbool

from monitor.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5
PG_TIMEOUT_MAX_S = 2_147_483  # PostgreSQL's largest statement/lock timeout (2^31-1 ms): past it, every connection is refused
TCP_USER_TIMEOUT_S = 60  # the most that sent data may wait for the server's acknowledgement


PG_NAME_MAX = 63  # PostgreSQL cuts an application_name to this many bytes


def session_name(name: str) -> str:
    """`name` as PostgreSQL keeps it in pg_stat_activity's application_name: its first
    PG_NAME_MAX bytes (a character cut in two is left out)."""
    return name.encode()[:PG_NAME_MAX].decode(errors="ignore")


def redact(url: str | URL) -> str:
    """The URL with its password hidden, safe for logs and error messages."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Not parseable, but may still hold a secret: hide whatever sits between
        # "user:" and "@".
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def url_problem(url: str) -> str | None:
    """Why `url` can never be a store (not a URL, an unknown dialect); None if it may.
    Loads the dialect class only, not the driver, and connects to nothing."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "not a SQLAlchemy URL (e.g. sqlite:///attnmon.db)"
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        hint = " (PostgreSQL: postgresql+psycopg://...)" if parsed.drivername == "postgres" else ""
        return f"unknown database dialect {parsed.drivername!r}{hint}"
    return _uri_problem(parsed)


# the query keys SQLAlchemy hands to sqlite3.connect itself; with uri=true it appends the
# others to the database as SQLite URI options
_PYSQLITE_ARGS = ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements")


def _uri_problem(url: URL) -> str | None:
    """Why a SQLite URL's URI options would not reach SQLite: with uri=true SQLAlchemy
    appends them to the database, and SQLite reads them only from a file: URI; from a
    plain path it opens a file named "attnmon.db?mode=ro", in mode rwc."""
    if url.get_backend_name() != "sqlite" or not _uri(url) or (url.database or "").startswith("file:"):
        return None
    options = sorted(k for k in url.query if k not in _PYSQLITE_ARGS)
    if not options:
        return None
    db = url.database or ""
    query = "&".join(f"{k}={v}" for k, v in url.query.items())
    opened = "&".join(f"{k}={url.query[k]}" for k in options)
    return (f"with uri=true SQLite reads {', '.join(options)} only from a file: URI, as in "
            f"sqlite:///file:{db}?{query}; as written it would open another file, named '{db}?{opened}'")


def make_engine(url: str | URL, *, statement_timeout_s: float | None = None,
                lock_timeout_s: float | None = None, busy_timeout_s: float | None = None,
                application_name: str | None = None, through_pooler: bool = False, **kwargs: Any) -> Engine:
    """An Engine for the store at `url`; extra keyword arguments go to create_engine.

    On SQLite, `busy_timeout_s` is how long a connection waits for another writer's
    lock (default: SQLITE_BUSY_TIMEOUT_MS).

    On PostgreSQL (psycopg), `statement_timeout_s` and `lock_timeout_s` bound each
    statement and each lock wait of every session, and TCP keepalives and a TCP user
    timeout notice a server that vanished: a job that would otherwise wait forever (or
    the kernel's ~15 minutes of retransmissions) fails and is retried. `application_name`
    names its sessions in pg_stat_activity, over a name the URL gives them: the daemon's
    followers find a frozen leader's sessions by it (`monitor.leadership`).
    `through_pooler`: where the server refuses the timeouts' startup parameter (PgBouncer),
    set them per transaction (`monitor.store.pooler`); collectors only, as the daemon's
    advisory locks need a direct connection and must fail behind a pooler."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"store URL {redact(url)!r} is not a SQLAlchemy URL", redact(url)
        ) from None
    shown = redact(parsed)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {}
    per_transaction: dict[str, int] = {}
    if backend == "sqlite":
        if problem := _uri_problem(parsed):
            raise StoreError(f"store URL {shown}: {problem}", shown)
        if parsed.database and parsed.database.startswith("~"):
            # sqlite3 would take "~" as a folder's name: every command must mean one file
            parsed = parsed.set(database=os.path.expanduser(parsed.database))
        # the file as named now: SQLAlchemy reads a relative path at create_engine, sqlite3
        # a relative file: URI at each connect, and the process may change folder between
        parsed = absolute_url(parsed)
        _check_sqlite_dir(parsed, shown)
    elif backend == "postgresql":
        # A daemon outlives connections (restarts, failovers): test each one before use,
        # and fail in seconds, not minutes, when the server is not there.
        options["pool_pre_ping"] = True
        if parsed.get_driver_name() in ("psycopg", "psycopg2"):
            args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
            if application_name:
                args["application_name"] = application_name
            limits_ms = {name: max(1, round(1000 * value)) for name, value in
                         (("statement_timeout", statement_timeout_s), ("lock_timeout", lock_timeout_s)) if value}
            if limits_ms:
                # connect_args replace the URL's own `options` (a search_path, say): keep them
                given = parsed.query.get("options", ())
                given = [given] if isinstance(given, str) else list(given)
                args["options"] = " ".join([*given, *(f"-c {k}={v}" for k, v in limits_ms.items())])
                if through_pooler and not given and parsed.get_driver_name() == "psycopg":
                    per_transaction = limits_ms  # if a pooler refuses `options` (monitor.store.pooler)
            # keepalives notice a dead peer on an idle connection; tcp_user_timeout one that
            # stops acknowledging what was sent (a failover's old address, a partition),
            # where a query or pool_pre_ping's ping would wait ~15 minutes. With no limits
            # too: a daemon told "no statement timeout" must still not hang on a dead peer.
            unacked_s = min([TCP_USER_TIMEOUT_S, *(v for v in (statement_timeout_s, lock_timeout_s) if v)])
            args.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                        tcp_user_timeout=max(1, int(1000 * unacked_s)))
            options["connect_args"] = args
    options.update(kwargs)
    try:
        engine = create_engine(parsed, **options)
    except NoSuchModuleError:
        raise StoreError(
            f"store URL {shown}: unknown database dialect {parsed.drivername!r}", shown
        ) from None
    except ImportError as exc:
        raise StoreError(
            f"store URL {shown}: the driver for {parsed.drivername!r} is not installed ({exc})",
            shown,
        ) from None
    if per_transaction:
        from monitor.store.pooler import fall_back_without_options

        fall_back_without_options(engine, per_transaction)
    if backend == "sqlite":
        busy_ms = SQLITE_BUSY_TIMEOUT_MS if busy_timeout_s is None else max(1, int(1000 * busy_timeout_s))
        event.listen(engine, "connect", lambda dbapi_connection, _record: _sqlite_on_connect(dbapi_connection, busy_ms))
        if (path := sqlite_file(parsed)) is not None and _creates(parsed):
            # at connect, not here: require_file must still see a mistyped path as missing
            event.listen(engine, "do_connect", lambda *_: _create_private(path))
    return engine


def _creates(url: URL) -> bool:
    """Whether sqlite3 creates a missing file: unless a file: URI's mode says not
    (without uri=true the query's mode is not SQLite's, and it creates)."""
    return not (_uri(url) and url.query.get("mode") in ("ro", "rw"))


def _create_private(path: Path) -> None:
    """Create a missing SQLite file 0600: it holds raw events (users' histories), and
    sqlite3 would create it 0644 under the usual umask (its WAL files take its mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:  # there already (its mode is the operator's), or sqlite3 reports why not
        pass


def _check_sqlite_dir(url: URL, shown: str) -> None:
    path = sqlite_file(url)
    if path is None:
        return
    parent = path.parent
    if not parent.is_dir():
        # SQLite's own message is "unable to open database file", which names nothing.
        raise StoreError(
            f"store at {shown}: directory {parent} does not exist (create it first)", shown
        )


def sqlite_file(url: str | URL) -> Path | None:
    """The file SQLite opens for `url`, as its real path (symlinks followed), so that every
    spelling of one file names it alike: the checks of `attnmon db`, make_engine, the
    daemon's lock, a collector's spill folder. None: not SQLite, or in memory.

    '~' is the home folder (make_engine expands it; sqlite3 would take it for a folder's
    name); with uri=true, a file: URI names its path; a relative path is relative to the
    current folder, as SQLite reads it now (`absolute_url` fixes it for later).

        >>> sqlite_file("sqlite:///file:attnmon.db?mode=rw&uri=true")   # doctest: +SKIP
        PosixPath('/srv/app/attnmon.db')
    """
    given = _given_file(make_url(url))
    return None if given is None else Path(os.path.realpath(given))


def _uri(url: URL) -> bool:
    """Whether the driver hands SQLite the database as a URI (SQLAlchemy's uri=true)."""
    return asbool(url.query.get("uri", False))


def _given_file(url: URL) -> str | None:
    """The file's path as `url` spells it: '~' expanded and a file: URI's path decoded
    (as SQLite decodes it), a relative one left relative. None: not SQLite, in memory."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database or ""
    if _uri(url) and db.startswith("file:"):
        if url.query.get("mode") == "memory":
            return None
        db = unquote(urlsplit(db).path)
    elif db.startswith("~"):
        db = os.path.expanduser(db)
    return db if db and db != ":memory:" else None


def absolute_url(url: str | URL) -> str | URL:
    """`url` with a relative SQLite file (a path, or a file: URI's) made absolute from the
    current folder, so that it names the same file after the process changes folder.

        >>> absolute_url("sqlite:///attnmon.db")   # doctest: +SKIP
        'sqlite:////srv/app/attnmon.db'
    """
    parsed = make_url(url)
    given = _given_file(parsed)
    if given is None or os.path.isabs(given):
        return url
    path = str(sqlite_file(parsed))
    if _uri(parsed) and parsed.database.startswith("file:"):
        path = urlsplit(parsed.database)._replace(path=quote(path)).geturl()  # (keeps its own query)
    fixed = parsed.set(database=path)
    return fixed if isinstance(url, URL) else fixed.render_as_string(hide_password=False)


def _sqlite_on_connect(dbapi_connection: Any, busy_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets the daemon read while collectors write; the busy timeout makes a
        # writer wait for the lock instead of failing at once; SQLite leaves foreign
        # keys off unless asked, per connection.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


@contextmanager
def store_errors(url: str | URL) -> Iterator[None]:
    """Turn driver errors (server down, bad credentials, locked file) into StoreError."""
    try:
        yield
    except DBAPIError as exc:
        raise store_error(exc, url) from exc


def store_error(exc: DBAPIError, url: str | URL) -> StoreError:
    """The StoreError of a driver error: the driver's message in one line, the URL redacted."""
    shown = redact(url)
    detail = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
    return StoreError(f"store at {shown}: {detail}", shown)


def require_file(url: str | URL) -> None:
    """Raise StoreError if `url` is a SQLite file that does not exist. Connecting would
    create an empty one, and "run db upgrade" would then build an empty store where the
    user most likely mistyped the path of the real one."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        shown = redact(url)
        raise StoreError(f"store at {shown}: there is no file {path} (a typo in the path? "
                         "`attnmon db upgrade` creates a new, empty store)", shown)


def require_schema(engine: Engine) -> None:
    """Raise StoreError unless the store's schema is at the newest migration."""
    # Imported here: Alembic is needed only by the few callers that check the schema.
    from monitor.store.migrate import head_revision, known_revision, revision_of

    shown = redact(engine.url)
    require_file(engine.url)
    with store_errors(engine.url), engine.connect() as connection:
        revision = revision_of(connection)
    head = head_revision()
    if revision == head:
        return
    if revision is not None and not known_revision(revision):
        raise StoreError(
            f"store at {shown} is at revision {revision}, which this attnmon does not know "
            f"(its head is {head}): upgrade attnmon",
            shown,
        )
    raise StoreError(
        f"store at {shown} is at revision {revision or 'none'}, expected head {head}: "
        "run `attnmon db upgrade`",
        shown,
    )


def unreachable(exc: StoreError) -> bool:
    """`exc` came from the driver (server down or refusing, bad credentials, a locked
    file): trying again later may succeed. Not a check of ours (schema, missing file)."""
    return isinstance(exc.__cause__, DBAPIError)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception inside SQLAlchemy's wrapper (else `exc` itself)."""
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def schema_behind(exc: BaseException) -> bool:
    """The error says a table or column is missing: the store's schema is older than the
    code's (not upgraded), or was never created."""
    inner = _driver_error(exc)
    if getattr(inner, "sqlstate", None) in ("42703", "42P01"):  # PostgreSQL: undefined column, table
        return True
    return isinstance(inner, sqlite3.OperationalError) and bool(
        re.search(r"no such (table|column)|has no column named", str(inner)))


def refused(exc: BaseException) -> bool:
    """The store is up and refuses these values (too long, out of range, a NUL, a
    constraint, a type the driver cannot send): trying them again cannot help, unlike a
    store that is down, locked, timed out, behind on its schema or denying access."""
    inner = _driver_error(exc)
    state = getattr(inner, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in ("22", "23")  # PostgreSQL: data exception, integrity violation
    if isinstance(inner, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError):
        return True  # (InterfaceError: a value it cannot bind)
    # psycopg, before the server sees it: "cannot adapt type", "cannot dump"...
    return type(inner).__module__.startswith("psycopg") and type(inner).__name__ in (
        "ProgrammingError", "DataError", "IntegrityError")


def duplicate_key(exc: BaseException) -> bool:
    """The error is a unique key refusing a row: someone else stored that key first."""
    inner = _driver_error(exc)
    return getattr(inner, "sqlstate", None) == "23505" or (
        isinstance(inner, sqlite3.IntegrityError) and str(inner).startswith("UNIQUE"))


def one_line(exc: BaseException, url: URL | None = None) -> str:
    """A store error in one line (the driver's own message), without the password."""
    inner = _driver_error(exc)
    msg = " ".join(str(inner).split())
    if url is not None and url.password:
        msg = msg.replace(str(url.password), "***")
    if len(msg) > 300:
        msg = msg[:297] + "..."
    return f"{type(inner).__name__}: {msg}" if msg else type(inner).__name__


class Cutter:
    """Cuts the connections `engine` opened, from another thread: for a write whose server
    or proxy stopped answering and keeps the connection open (a frozen or paused server,
    storage that hangs, a stalled pooler). No server-side timeout fires there, and TCP
    sees nothing wrong, so only the client can end the wait: shutting a socket down wakes
    the driver, which fails the statement."""

    def __init__(self, engine: Engine):
        self._conns: weakref.WeakSet = weakref.WeakSet()
        event.listen(engine, "connect", lambda dbapi_conn, _record: self._conns.add(dbapi_conn))

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Cut every connection if the block has not ended within `seconds` (an idle
        one cut with them is replaced at its next checkout: pool_pre_ping). A cut is
        all done before the block ends, or not at all: never on the next block's write."""
        lock, ended = threading.Lock(), [False]

        def cut_unless_ended() -> None:
            with lock:
                if not ended[0]:
                    self.cut()

        timer = threading.Timer(seconds, cut_unless_ended)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with lock:
                ended[0] = True

    def cut(self) -> None:
        for conn in list(self._conns):
            try:
                with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # closed already (psycopg raises its own error), not a socket
                pass
