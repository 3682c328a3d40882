"""Batches that could not be written wait here, one file each, replayed in order.

A file is gzip'd JSON (bytes as base64): a spill file is data, never code, so nothing
in it is unpickled or executed. Files are written to a temporary name, synced and renamed,
so a crash or a power loss leaves either a whole file or none. A file that cannot be read
anyway (a disk fault, a partial copy) is moved to `bad/`, where it no longer blocks the
files behind it and an operator can look at it. Files hold raw events (users' histories),
so they are created 0600 and the folders this makes 0700, whatever the umask.

Each store has its own folder under spill_dir (`store_folder`), so that collectors of
two stores sharing one spill_dir (staging and production on one host, two models with
stores of their own) never replay each other's batches into the wrong store. Files an
older release left at the top level are still replayed, as they were then.
"""

from __future__ import annotations

import base64
import errno
import getpass
import gzip
import hashlib
import json
import os
import re
import zlib
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from monitor.store.engine import sqlite_file
from monitor.store.writer import FlushBatch


def _enc(v):
    if isinstance(v, bytes):
        return {"\x00b": base64.b64encode(v).decode("ascii")}
    if isinstance(v, datetime):
        return {"\x00t": v.isoformat()}
    raise TypeError(f"cannot spill {type(v).__name__}")


def _dec(d: dict):
    if "\x00b" in d and len(d) == 1:
        return base64.b64decode(d["\x00b"])
    if "\x00t" in d and len(d) == 1:
        return datetime.fromisoformat(d["\x00t"])
    return d


_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN}


class UnreadableSpill(Exception):
    """A spill file that holds no batch (truncated, corrupt, not ours)."""


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def store_identity(url: str | URL) -> str:
    """What names a store whatever the spelling of its URL: the backend, host, port,
    database and, on PostgreSQL, the service and the search_path its `options` set (the
    schema; `_pg_identity`), not the driver, user, password or other options: a rotated
    password or another driver is still the same store; for SQLite, the file's real
    path. A URL that does not parse is its own store (its writes fail, and its batches
    wait apart)."""
    try:
        u = make_url(url)
    except Exception:  # (sqlalchemy's ArgumentError, or a TypeError for a non-string)
        return f"unparsed:{url}"
    backend = u.get_backend_name()
    if backend == "sqlite":
        return f"sqlite:{sqlite_file(u) or ':memory:'}"  # (the file as every command reads it)
    if backend == "postgresql":
        return _pg_identity(u)
    port = u.port or _DEFAULT_PORTS.get(backend, "")
    return f"{backend}://{(u.host or '').lower()}:{port}/{u.database or ''}"


def _pg_identity(u: URL) -> str:
    """Where libpq connects: the query's host, port, dbname and service (SQLAlchemy hands
    them to libpq over the URL's own parts), else the URL's, else libpq's variables; a
    database left out is the user's. And the schema (a store is a database and a schema,
    as in monitor.leadership)."""

    def given(key: str, part: object, variable: str) -> str:
        value = u.query.get(key) or part or os.environ.get(variable) or ""
        return ",".join(value) if isinstance(value, tuple) else str(value)  # (several hosts)

    host = given("hostaddr", None, "PGHOSTADDR") or given("host", u.host, "PGHOST")
    host = host if host.startswith("/") else host.lower()  # (a socket's folder keeps its case)
    port = given("port", u.port, "PGPORT") or "5432"
    user = given("user", u.username, "PGUSER") or _os_user()
    db = given("dbname", u.database, "PGDATABASE") or user
    extra = [f"service={service}"] if (service := given("service", None, "PGSERVICE")) else []
    if schema := _search_path(u.query.get("options", "")):
        extra.append(f"search_path={schema}")
    return f"postgresql://{host}:{port}/{db}" + ("?" + "&".join(extra) if extra else "")


def _os_user() -> str:
    """libpq's default user: the process's (a uid with no name, as in some containers,
    names no database either)."""
    try:
        return getpass.getuser()
    except Exception:  # (KeyError, OSError: no such user)
        return f"uid {os.getuid()}"


# libpq's `options` as PostgreSQL reads them: -c name=value or --name=value, '-' for '_'
_SEARCH_PATH = re.compile(r"(?:-c\s*|--)search[_-]path=((?:\\.|\S)+)")


def _search_path(options: str | tuple[str, ...]) -> str:
    """The search_path libpq's `options` set (the last one, as the server applies them
    in order), '' if none: which schema a store of a shared database is in."""
    found = _SEARCH_PATH.findall(" ".join([options] if isinstance(options, str) else options))
    return found[-1] if found else ""


def store_folder(url: str | URL) -> str:
    """The folder of spill_dir that holds one store's batches."""
    ident = store_identity(url)
    return f"{ident.split(':', 1)[0]}-{hashlib.sha256(ident.encode('utf-8')).hexdigest()[:16]}"


class SpillDir:
    def __init__(self, path: str | os.PathLike, store: str | URL | None = None):
        """`store`: the store's URL; its batches go to a folder of their own (`store_folder`),
        which names the store in a file `STORE` for a person. None: `path` itself."""
        self.root = Path(path)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # (an existing one is left as it is)
        self.path = self.root if store is None else self.root / store_folder(store)
        self._store = None if store is None else store_identity(store)
        try:
            self._make_folder()
        except OSError:  # a full disk, a read-only spill_dir: put tries again (till then, memory)
            pass

    def _make_folder(self) -> None:
        """The store's folder, and its note `STORE` for a person, if not there yet."""
        note = self.path / "STORE"
        if self._store is None or note.exists():
            return
        self.path.mkdir(mode=0o700, exist_ok=True)
        try:
            note.write_text(self._store + "\n", encoding="utf-8")
        except OSError:  # (a note for people: a full disk must not stop the collector)
            pass

    def put(self, batch: FlushBatch) -> Path:
        """Write one batch; an OSError (disk full, not writable) leaves no file behind."""
        self._make_folder()
        name = f"{batch.collector_id}-{batch.batch_seq:012d}.json.gz"
        final = self.path / name
        tmp = self.path / (name + ".tmp")
        data = json.dumps(batch.__dict__, default=_enc).encode("utf-8")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as f:
                    f.write(data)
                raw.flush()
                os.fsync(raw.fileno())  # the data on disk before the name points at it
            os.replace(tmp, final)
            _sync_dir(self.path)  # the rename itself on disk
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def pending(self, collector_id: str | None = None) -> list[Path]:
        """Spilled files in write order (by collector, then sequence): an older release's,
        left at the top level with no store named, first, as that release replayed them."""
        pat = f"{collector_id}-*.json.gz" if collector_id else "*.json.gz"
        older = sorted(self.root.glob(pat)) if self.path != self.root else []
        return older + sorted(self.path.glob(pat))

    def elsewhere(self) -> list[tuple[str, int]]:
        """(the store named in its `STORE`, else the folder's name; files waiting) of every
        other store's folder with batches waiting: a collector replays only its own store's,
        so a store's URL spelled anew (`localhost` for 127.0.0.1) leaves the old folder's
        unreplayed, and that should be said."""
        if self.path == self.root:
            return []
        out = []
        try:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.path and p.name != "bad")
        except OSError:
            return []
        for folder in folders:
            n = sum(1 for _ in folder.glob("*.json.gz"))
            if n:
                try:
                    name = (folder / "STORE").read_text(encoding="utf-8").strip() or folder.name
                except (OSError, UnicodeDecodeError):
                    name = folder.name
                out.append((name, n))
        return out

    def load(self, path: Path) -> FlushBatch:
        """The batch in a spill file; `UnreadableSpill` if it does not hold one."""
        try:
            with gzip.open(path, "rb") as f:
                d = json.loads(f.read().decode("utf-8"), object_hook=_dec)
            return FlushBatch(**d)
        except OSError as exc:
            # gone (another process replayed it), or the process is short of descriptors
            # or memory: not the file's fault, so try it again at the next flush
            if isinstance(exc, FileNotFoundError) or exc.errno in _TRANSIENT:
                raise
            raise UnreadableSpill(f"{path.name}: {type(exc).__name__}: {exc}") from exc
        except (EOFError, zlib.error, ValueError, TypeError) as exc:
            raise UnreadableSpill(f"{path.name}: {type(exc).__name__}: {exc}") from exc

    def quarantine(self, path: Path) -> Path:
        """Move a file to bad/ (out of `pending`), keeping it for a person: one that cannot
        be read, or whose batch the store refuses. (bad/ beside it: an older release's
        file, at the top level, goes where that release put its own.)"""
        bad = path.parent / "bad"
        bad.mkdir(mode=0o700, exist_ok=True)
        dest = bad / path.name
        os.replace(path, dest)
        return dest

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
