"""Shared fixtures: migrated stores on SQLite and (when given one) PostgreSQL.

PostgreSQL: set ATTNMON_TEST_PG_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test).
Without it the PostgreSQL tests are skipped, unless ATTNMON_REQUIRE_PG=1 (CI), where a
missing URL or an unreachable server fails them: CI must not pass by skipping.
Each pytest session works in schemas of its own in that database (created, migrated
and dropped by the fixtures), never in its public schema.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import ForeignKeyConstraint, UniqueConstraint, inspect, text
from sqlalchemy.engine import Engine, make_url

from monitor.store import make_engine, migrate, redact, tables

PG_URL_ENV = "ATTNMON_TEST_PG_URL"
REQUIRE_PG_ENV = "ATTNMON_REQUIRE_PG"
POSTGRES_DIR = Path(__file__).parent / "postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/postgres is a PostgreSQL test: `-m "not postgres"` skips them.
    for item in items:
        if POSTGRES_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ATTNMON_* configuration from the environment and no ./attnmon.yaml around."""
    for var in list(os.environ):
        if var == "ATTNMON_STORE_URL" or (var.startswith("ATTNMON_") and "__" in var):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- SQLite ---------------------------------------------------------------------------


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The alerting tests' store: SQLite (tests/postgres/test_alerts_pg.py overrides it with a
    PostgreSQL one and runs the same tests). Modules with a `store` of their own keep theirs."""
    return sqlite_url


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    yield engine
    engine.dispose()



@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Migrate once per session; each test gets a copy (a file copy is much cheaper).
    path = tmp_path_factory.mktemp("sqlite-template") / "attnmon.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh SQLite store file, migrated to head."""
    path = tmp_path / "attnmon.db"
    # The migration's engine is disposed, so the WAL is checkpointed into the main file.
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


# -- PostgreSQL -----------------------------------------------------------------------


def _pg_unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_PG_ENV, "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} ({REQUIRE_PG_ENV} is set, so this is a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """ATTNMON_TEST_PG_URL, checked to be reachable. Tests use schemas of their own in it."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        _pg_unavailable(f"{PG_URL_ENV} is not set: no PostgreSQL to test against")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means "unavailable"
        _pg_unavailable(f"PostgreSQL at {redact(url)} is unreachable: {exc}")
    finally:
        engine.dispose()
    return url


SCHEMA_PREFIX = "attnmon_test_"


def _schema_url(base_url: str, schema: str) -> str:
    # libpq's `options` sets the search_path for every connection made from this URL.
    url = make_url(base_url)
    options = " ".join(filter(None, [url.query.get("options"), f"-csearch_path={schema}"]))
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


@contextmanager
def _pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh schema in the test database, as a URL; dropped afterwards.

    Own schemas rather than the database's public one: pytest sessions on one server do
    not truncate each other's tables, and a schema migrated by an older checkout (a
    migration edited before release keeps its revision id) is never mistaken for head.
    """
    schema = f"{SCHEMA_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield _schema_url(pg_url, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _drop_abandoned_schemas(pg_url: str) -> None:
    # Schemas of sessions that were killed before their teardown: their pid is gone.
    engine = make_engine(pg_url)
    try:
        with engine.begin() as connection:
            names = connection.execute(
                text("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, :prefix)"),
                {"prefix": SCHEMA_PREFIX},
            ).scalars()
            for name in list(names):
                pid = name[len(SCHEMA_PREFIX) :].split("_")[0]
                if pid.isdigit() and not _alive(int(pid)):
                    connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def pg_migrated_url(pg_url: str) -> Iterator[str]:
    """A schema of the PostgreSQL test database for this session, migrated to head once."""
    _drop_abandoned_schemas(pg_url)
    with _pg_schema(pg_url) as url:
        migrate.upgrade(url)
        yield url


def truncate_all(engine: Engine) -> None:
    names = ", ".join(
        engine.dialect.identifier_preparer.quote(t.name) for t in tables.metadata.sorted_tables
    )
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def _pg_engine(pg_migrated_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_clean_url(pg_migrated_url: str, _pg_engine: Engine) -> str:
    """The session's PostgreSQL store at head, every table emptied (identities restarted)."""
    truncate_all(_pg_engine)
    return pg_migrated_url


@pytest.fixture
def pg_empty_url(pg_url: str) -> Iterator[str]:
    """A URL on a fresh, empty PostgreSQL schema (dropped after the test), for tests that
    build and tear down the schema themselves (migrations)."""
    with _pg_schema(pg_url) as url:
        yield url


@dataclass
class OwnDatabase:
    """A migrated database a test owns, so it can make the store go away (refuse every
    connection, end the open sessions) without harming the other tests."""

    url: str
    admin: Engine
    name: str

    def block(self, blocked: bool = True) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(not blocked).lower()}'))
            if blocked:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": self.name},
                )


@pytest.fixture
def own_database(pg_url: str) -> Iterator[OwnDatabase]:
    name = f"attnmon_own_{uuid.uuid4().hex[:10]}"
    admin = make_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name)
    if url.password is None:  # trust authentication ignores it; logs must never show it
        url = url.set(password="s3cret-pw")
    url = url.render_as_string(hide_password=False)
    migrate.upgrade(url)
    try:
        yield OwnDatabase(url, admin, name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


# -- migrations, the same checks on every backend ---------------------------------------


def user_tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def schema_names(engine: Engine) -> dict[str, dict[str, object]]:
    """Per table: the names (and columns) of its keys, constraints and indexes, as in the store."""
    inspector = inspect(engine)
    names: dict[str, dict[str, object]] = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        names[table] = {
            "pk": inspector.get_pk_constraint(table)["name"],
            "fk": {fk["name"] for fk in inspector.get_foreign_keys(table)},
            "uq": {uq["name"] for uq in inspector.get_unique_constraints(table)},
            # PostgreSQL also lists each unique constraint's backing index: not ours
            "ix": {
                ix["name"]: tuple(ix["column_names"])
                for ix in inspector.get_indexes(table)
                if not ix.get("duplicates_constraint")
            },
        }
    return names


def model_names() -> dict[str, dict[str, object]]:
    """The same, as monitor.store.tables declares it (naming convention applied)."""
    names: dict[str, dict[str, object]] = {}
    for table in tables.metadata.sorted_tables:
        constraints = table.constraints
        names[table.name] = {
            "pk": table.primary_key.name,
            "fk": {c.name for c in constraints if isinstance(c, ForeignKeyConstraint)},
            "uq": {c.name for c in constraints if isinstance(c, UniqueConstraint)},
            "ix": {ix.name: tuple(c.name for c in ix.columns) for ix in table.indexes},
        }
    return names


def check_migration_cycle(url: str) -> None:
    """empty → head → base → head on the store at `url`, which must start empty."""
    head = migrate.head_revision()
    engine = make_engine(url)
    try:
        assert user_tables(engine) == set()
        assert migrate.current(url) is None

        migrate.upgrade(url)
        assert user_tables(engine) == set(tables.metadata.tables)
        assert migrate.current(url) == head
        assert schema_names(engine) == model_names()
        migrate.check(url)

        migrate.downgrade(url, "base")
        assert user_tables(engine) == set()
        assert migrate.current(url) is None

        migrate.upgrade(url, "head")
        assert user_tables(engine) == set(tables.metadata.tables)
        assert migrate.current(url) == head
        migrate.check(url)
    finally:
        engine.dispose()


@pytest.fixture
def migration_cycle() -> Callable[[str], None]:
    """`check_migration_cycle`, for the SQLite and PostgreSQL migration tests."""
    return check_migration_cycle


# A real Alertmanager (Debian's prometheus-alertmanager) and the webhook it delivers to,
# one each per test module that asks (tests/peers.py starts and stops them).
@pytest.fixture(scope="module")
def hook():
    from peers import Answer, HttpPeer

    with HttpPeer(Answer(200)) as peer:
        yield peer


@pytest.fixture(scope="module")
def am_url(hook, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from peers import alertmanager

    with alertmanager(tmp_path_factory.mktemp("alertmanager"), f"{hook.url}/hook") as url:
        yield url
