"""Which daemon leads a store: only the leader runs the jobs (`monitor.daemon`).

    >>> lead = leadership_for(engine.url, lease_s=15, who=daemon_id())   # doctest: +SKIP
    >>> lead.try_acquire()  # one try; then still_held() before each job   # doctest: +SKIP
    True

On PostgreSQL a dedicated connection holds the session advisory lock
`pg_try_advisory_lock(LOCK_NAMESPACE, hashtext(current_schema()))`: one key per store
(database and schema), so stores in other schemas of one database do not contend.
A follower tries again every `daemon.lease_s`; when the leader's session ends (crash,
kill, network loss noticed by keepalives) the lock is freed and a follower takes over.
The leader checks its connection every `lease_s`, and before each job, window and delivery
group, and steps down when it is gone. (Not behind PgBouncer in transaction mode: the
lock lives in one server session.)

A leader frozen with its connection open (SIGSTOP, a hung process: its kernel still
answers keepalives) would keep the lock forever, so each of those checks is also a
heartbeat: the row `lead.heartbeat` of `daemon_state` ("<server pid> <daemon id>", the
id being "<pid>-<token>@<host>"), stamped with the server's clock, never the hosts', and
written with the lock in one statement. A follower that finds the holder's heartbeat
older than `SILENT_LEASES` x `lease_s`, and its sessions frozen too (below), ends its
lock's session (`pg_terminate_backend`) and takes the lock: a frozen leader is replaced
within about (SILENT_LEASES + 1) x `lease_s`. It also ends the job sessions of that
daemon (application_name "attnmon-daemon <daemon id>"), so that a transaction the leader
was frozen in is rolled back, not left holding row locks against the new leader and
committed when it wakes. Ending another role's session needs that role's membership or
`pg_signal_backend` (a superuser's: a superuser); without it the follower logs why once
and goes on waiting.

A silent heartbeat alone is no proof of a freeze: a lock on daemon_state (an operator's
`LOCK TABLE`, the heartbeat row `FOR UPDATE` left open in psql) silences a live leader
too. Its lock session then retries the beat every lease_s, so pg_stat_activity shows it
waiting on a lock or changing state within the silence, where a frozen leader's sessions
sit idle (or idle in transaction) since it stopped. A blocked leader keeps the lead, and
the follower logs once who holds daemon_state. (A statement that the server was still
running, or holding on a lock, for a leader when it froze puts the takeover off to
SILENT_LEASES x lease_s after it ends: `statement_timeout_s`, `lock_timeout_s` bound it.)
A follower that may not see the holder's sessions' state (another role's, without
pg_read_all_stats) cannot tell the two apart and leaves it the lead, logging why once,
as when it may not end them: ending a leader on a guess would replace a live one at
every long lock, and a frozen one kept is named in the log.

The beat comes from the lease thread, so a leader busy in a long job is never replaced
(a job stuck on the store is bounded by `statement_timeout_s` and `lock_timeout_s`
instead). When the frozen leader wakes, its next check (before each job, window and
delivery group, and every lease_s) fails on the ended connection and it steps down.
What it may still do is finish the one step it was frozen between: a window's results
are insert-if-absent, the alert cycle locks its watermark's row and skips a window at or
before it (one beside the new leader's waits, then skips), and the evaluate watermark
only moves forward, so that step writes nothing twice.

On SQLite an exclusive `flock` on `<db file>.daemon.lock` plays the same part on one
host (beside the file's real path, `sqlite_file`: daemons given two spellings of one
file, a symlink or a file: URI, lock one); a frozen process keeps it (no heartbeat
there: on one host, stop or kill it).
An in-memory store cannot be shared: its daemon always leads.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from monitor.store.engine import PG_CONNECT_TIMEOUT_S, make_engine, session_name, sqlite_file
from monitor.store.engine import one_line as _one_line

log = logging.getLogger("attnmon.daemon")  # the daemon's own log: what operators filter on

TCP_KEEPIDLE_MAX_S = 32767  # Linux's limit on a socket's keepalive idle time
LOCK_NAMESPACE = 0x61746E6D  # "atnm": the advisory lock's first key (int4)
HEARTBEAT_KEY = "lead.heartbeat"  # daemon_state: "<server pid> <daemon_id()>" of the PostgreSQL leader
SESSIONS_NAME = "attnmon-daemon "  # + daemon_id(): application_name of a daemon's job sessions
SILENT_LEASES = 3  # a leader silent this many lease_s is ended by a follower
TAKEOVER_WAIT_S = 5.0  # how long a follower waits for the lock of a leader it ended
BEAT_WAIT_S = 1.0  # at most this long (and a lease) a beat waits for a lock on daemon_state


def daemon_id() -> str:
    """A new daemon's name in its heartbeat and its sessions' application_name: its
    process and host, and a token apart from any other daemon in the same process.
    Printable ASCII only ('\\xf4' for 'ô'): PostgreSQL keeps nothing else of an
    application_name ('?' before 16, '\\xNN' from 16), and a follower looks for the name."""
    host = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in socket.gethostname())
    return f"{os.getpid()}-{secrets.token_hex(3)}@{host}"



class Alone:
    """Stores no second daemon can share (in-memory SQLite): always the leader."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class FileLock(Alone):
    """SQLite: an exclusive flock on `<db>.daemon.lock`, freed by the kernel on any exit."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for a person wondering who leads
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class PgAdvisoryLock(Alone):
    """PostgreSQL: a session advisory lock on a connection of its own, and a heartbeat.

    The lock alone never leaves a leader frozen with its connection open (SIGSTOP, a hung
    process: its kernel still answers keepalives). So the holder writes `lead.heartbeat`
    in daemon_state (its backend's pid, the server's clock) with the lock and at every
    check, and a follower that finds it older than SILENT_LEASES x lease_s, and that
    backend's sessions as still, ends them (pg_terminate_backend) and takes the lock."""

    KEY = "(:ns, hashtext(coalesce(current_schema(), '')))"
    SQL_TRY = f"SELECT pg_try_advisory_lock{KEY}"
    SQL_UNLOCK = f"SELECT pg_advisory_unlock{KEY}"
    # the lock and the first beat in one statement: a holder is never without a beat of
    # its own, which a follower would take for a stale one of an earlier leader
    SQL_LOCK = f"""
        INSERT INTO daemon_state (key, value, updated_at)
        SELECT :key, pg_backend_pid() || ' ' || :who, clock_timestamp()
        WHERE pg_try_advisory_lock{KEY}
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
        RETURNING true"""
    SQL_BEAT = """
        INSERT INTO daemon_state (key, value, updated_at)
        VALUES (:key, pg_backend_pid() || ' ' || :who, clock_timestamp())
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"""
    # the holder of the lock, if the stale beat is its own: an older leader's beat, or none
    # (a leader of a release before heartbeats, mid rollout), says nothing about it
    SQL_SILENT = """
        SELECT l.pid, extract(epoch FROM clock_timestamp() - h.updated_at), split_part(h.value, ' ', 2)
        FROM pg_locks l JOIN daemon_state h ON h.key = :key AND split_part(h.value, ' ', 1) = l.pid::text
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND (l.classid, l.objid) = (CAST(:ns AS oid), CAST(hashtext(coalesce(current_schema(), '')) AS oid))
          AND h.updated_at < clock_timestamp() - make_interval(secs => :silent_s)"""
    # Frozen or blocked (see the module's doc): of the holder's sessions, how many we may
    # not see (state_change NULL: another role's, without pg_read_all_stats), how many stir
    # (changed state within silent_s, or wait on a lock another session holds: one of its
    # own frozen jobs waiting on another is no sign of life), and, for the log, who holds
    # daemon_state (but for reading it) or blocks them.
    SQL_STIRRING = """
        WITH s AS (
            SELECT pid, state_change, wait_event_type FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND (pid = :pid OR application_name = :name))
        SELECT count(*) FILTER (WHERE state_change IS NULL),
               count(*) FILTER (WHERE state_change > clock_timestamp() - make_interval(secs => :silent_s)
                                   OR wait_event_type = 'Lock' AND NOT pg_blocking_pids(pid) <@ ARRAY(SELECT pid FROM s)),
               (SELECT array_agg(DISTINCT b ORDER BY b) FROM (
                    SELECT unnest(pg_blocking_pids(pid)) FROM s
                    UNION SELECT pid FROM pg_locks
                    WHERE relation = to_regclass('daemon_state') AND granted AND mode <> 'AccessShareLock'
                      AND pid <> pg_backend_pid() AND pid NOT IN (SELECT pid FROM s)) AS held (b))
        FROM s"""
    # ends it only if still silent now (it may have beaten since SQL_SILENT)
    SQL_END = """
        SELECT pg_terminate_backend(:pid) FROM daemon_state
        WHERE key = :key AND split_part(value, ' ', 1) = CAST(:pid AS text)
          AND updated_at < clock_timestamp() - make_interval(secs => :silent_s)"""
    # and its job sessions: a transaction it was frozen in is rolled back, rather than
    # holding its row locks against the new leader (lock_timeout, again and again) and
    # committing when it wakes
    SQL_END_SESSIONS = """
        SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = :name AND pid <> pg_backend_pid()"""

    def __init__(self, url: URL, lease_s: float, who: str):
        connect_args: dict[str, Any] = {}
        # Linux refuses a TCP_KEEPIDLE over 32767 s: with a longer lease_s every attempt to
        # connect failed (setsockopt: Invalid argument) and no daemon could ever lead.
        idle = min(max(1, int(lease_s)), TCP_KEEPIDLE_MAX_S)
        if url.get_driver_name() in ("psycopg", "psycopg2"):
            # A leader whose server vanishes must notice (and step down) in seconds, not
            # at the kernel's two-hour keepalive default...
            connect_args = {
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "attnmon-daemon-lead",
                "keepalives": 1,
                "keepalives_idle": idle,
                "keepalives_interval": idle,
                "keepalives_count": 3,
                "tcp_user_timeout": 1000 * 4 * idle,
            }
        self._engine = make_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=connect_args
        )
        # ...and the server must notice a vanished leader as soon, to free the lock: its
        # keepalive settings, for this session only (the default is the kernel's 2 hours).
        # A beat waits little for a lock on daemon_state (an operator's transaction): the
        # jobs check the lead, so beat, before each window and group.
        wait_ms = max(1, int(1000 * min(BEAT_WAIT_S, lease_s)))
        self._session = [
            f"SET tcp_keepalives_idle = {idle}",
            f"SET tcp_keepalives_interval = {idle}",
            "SET tcp_keepalives_count = 3",
            f"SET tcp_user_timeout = {1000 * 4 * idle}",
            f"SET lock_timeout = {wait_ms}",
        ]
        self.silent_s = SILENT_LEASES * lease_s
        self._who = who
        self._told: tuple[int, str] | None = None  # the silent leader last logged as left, and why
        self._conn: Any = None

    def _args(self, **more: Any) -> dict[str, Any]:
        return {"ns": LOCK_NAMESPACE, "key": HEARTBEAT_KEY, "who": self._who, "silent_s": self.silent_s, **more}

    def try_acquire(self) -> bool:
        conn = self._engine.connect()
        try:
            for statement in self._session:
                conn.execute(text(statement))
            got = self._lock(conn) or (self._end_silent_leader(conn) and self._lock_when_freed(conn))
        except BaseException:
            conn.close()
            raise
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def _lock(self, conn: Any) -> bool:
        try:
            return bool(conn.execute(text(self.SQL_LOCK), self._args()).scalar())
        except DBAPIError as exc:
            if not _waited(exc):
                raise
        # daemon_state is locked: lead without a beat for now (none of its own, so no
        # follower ends it); the next check beats
        return bool(conn.execute(text(self.SQL_TRY), {"ns": LOCK_NAMESPACE}).scalar())

    def _end_silent_leader(self, conn: Any) -> bool:
        """End the session of a leader whose heartbeat is older than silent_s and whose
        sessions are as still (frozen, not blocked), then its job sessions; True if its
        lock's session was ended."""
        try:
            row = conn.execute(text(self.SQL_SILENT), self._args()).first()
        except DBAPIError as exc:
            if not _waited(exc):
                raise
            return False  # daemon_state is locked: look again at the next lease
        if row is None:
            self._told = None  # it beats: say again if it goes silent again
            return False
        pid, silent, who = row[0], float(row[1]), row[2]
        # its job sessions' application_name (none to look for if the beat names no daemon, or us)
        name = session_name(SESSIONS_NAME + who) if who and who != self._who else None
        unseen, stirring, holders = conn.execute(text(self.SQL_STIRRING), self._args(pid=pid, name=name)).one()
        silent_for = f"the leader (server process {pid}) has not beaten for {silent:.1f}s, over {self.silent_s:g}s"
        if unseen:
            if self._once(pid, "unseen"):
                log.error(
                    "%s, but this daemon may not see whether its sessions are frozen or waiting on a lock "
                    "(pg_stat_activity). Run every daemon as one role (or grant this one pg_read_all_stats); "
                    "until then the lead stays with it", silent_for)
            return False
        if stirring:
            if self._once(pid, "stirring"):
                log.warning(
                    "%s, but is not frozen: its sessions wait on a lock or ran within %gs; the lead stays "
                    "with it. Holding daemon_state or blocking it: %s", silent_for, self.silent_s,
                    "server processes " + ", ".join(map(str, holders)) if holders else "none now")
            return False
        try:
            ended = bool(conn.execute(text(self.SQL_END), self._args(pid=pid)).scalar())
        except DBAPIError as exc:
            if not _not_allowed(exc):
                raise
            if self._once(pid, "not allowed"):
                log.error(
                    "%s, but this daemon may not end its session: %s. Run every daemon as one role (or grant "
                    "this one pg_signal_backend; a superuser's session only a superuser may end); until then "
                    "the lead stays with it", silent_for, _one_line(exc, self._engine.url))
            return False
        if not ended:
            return False
        log.warning("%s: ended its session to take the lead", silent_for)
        if name:
            try:
                conn.execute(text(self.SQL_END_SESSIONS), {"name": name})
            except DBAPIError as exc:
                if not _not_allowed(exc):
                    raise
                log.warning("cannot end the job sessions of the silent leader %s: %s", who,
                            _one_line(exc, self._engine.url))
        return True

    def _once(self, pid: int, why: str) -> bool:
        """Whether to log why this silent leader is left: once, not every lease_s."""
        if self._told == (pid, why):
            return False
        self._told = (pid, why)
        return True

    def _lock_when_freed(self, conn: Any) -> bool:
        """The ended backend frees the lock as it exits, soon after pg_terminate_backend."""
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while not self._lock(conn):
            if time.monotonic() > deadline:
                return False  # the next lease tries again
            time.sleep(0.02)
        return True

    def still_held(self) -> bool:
        if self._conn is None:
            return False
        try:
            # the lock lives as long as the session; the beat tells followers it is not frozen
            self._conn.execute(text(self.SQL_BEAT), self._args())
            return True
        except DBAPIError as exc:
            if _waited(exc) and self._alive():
                return True  # daemon_state is locked, the session (and its lock) is there
        except Exception:
            pass
        self._drop()
        return False

    def _alive(self) -> bool:
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text(self.SQL_UNLOCK), {"ns": LOCK_NAMESPACE})
        except Exception:
            pass  # the session is gone, and its lock with it
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        try:
            conn.invalidate()
            conn.close()
        except Exception:
            pass

    def close(self) -> None:
        self.release()
        self._engine.dispose()


def _not_allowed(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "42501"  # insufficient_privilege


def _waited(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available: lock_timeout


def leadership_for(url: URL, lease_s: float, who: str) -> Alone:
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PgAdvisoryLock(url, lease_s, who)
    if backend == "sqlite" and (path := sqlite_file(url)) is not None:
        return FileLock(f"{path}.daemon.lock")
    return Alone()
