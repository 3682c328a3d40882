"""Migrations, engine and schema checks on SQLite (tests/postgres repeats them on PostgreSQL)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

import monitor
from monitor.errors import StoreError
from monitor.store import make_engine, migrate, redact, require_schema

REPO = Path(monitor.__file__).resolve().parents[1]


def test_empty_head_base_head_on_sqlite(
    tmp_path: Path, migration_cycle: Callable[[str], None]
) -> None:
    migration_cycle(f"sqlite:///{tmp_path / 'store.db'}")


def test_sqlite_url_fixture_is_at_head(sqlite_url: str) -> None:
    assert migrate.current(sqlite_url) == migrate.head_revision() == "0003"
    migrate.check(sqlite_url)


def test_check_finds_a_store_that_differs_from_the_models(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE models ADD COLUMN colour VARCHAR(10)"))
        connection.execute(text("CREATE INDEX ix_stray ON deployments (source)"))
    engine.dispose()
    with pytest.raises(StoreError, match="differ") as info:
        migrate.check(sqlite_url)
    kinds = {diff[0] for diff in info.value.diffs}
    assert {"remove_column", "remove_index"} <= kinds
    assert "colour" in str(info.value) and "ix_stray" in str(info.value)


def test_require_schema(tmp_path: Path, sqlite_url: str) -> None:
    require_schema(make_engine(sqlite_url))  # at head: no error

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    expected = (
        f"store at {empty} is at revision none, expected head {migrate.head_revision()}: "
        "run `attnmon db upgrade`"
    )
    with pytest.raises(StoreError) as info:
        require_schema(make_engine(empty))
    assert str(info.value) == expected
    with pytest.raises(StoreError, match="expected head"):
        migrate.check(empty)


def test_require_schema_on_a_revision_this_code_does_not_know(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'fffe'"))
    with pytest.raises(StoreError, match="revision fffe, which this attnmon does not know"):
        require_schema(engine)
    engine.dispose()


def test_downgrade_to_unknown_revision_is_a_store_error(sqlite_url: str) -> None:
    with pytest.raises(StoreError, match="nope"):
        migrate.downgrade(sqlite_url, "nope")


def test_sqlite_engine_settings(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as connection:
        pragma = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
        # foreign keys are enforced
        with pytest.raises(Exception, match="FOREIGN KEY"):
            connection.execute(
                text(
                    "INSERT INTO deployments (model, version, first_seen, deployed_at, source)"
                    " VALUES ('ghost', 'v1', '2026-01-01', '2026-01-01', 'manual')"
                )
            )
    engine.dispose()
    assert pragma == {"journal_mode": "wal", "busy_timeout": 10_000, "foreign_keys": 1}


def test_sqlite_in_memory_is_allowed() -> None:
    engine = make_engine("sqlite://")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_sqlite_file_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(StoreError, match=f"directory {re.escape(str(missing))} does not exist"):
        make_engine(f"sqlite:///{missing / 'attnmon.db'}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuchdb://host/db", "unknown database dialect 'nosuchdb'"),
        ("::::", "not a SQLAlchemy URL"),
        ("mysql+nosuchdriver://h/db", "unknown database dialect"),
    ],
)
def test_make_engine_rejects_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        make_engine(url)


def test_postgresql_engine_settings() -> None:
    # No server needed: create_engine connects lazily.
    engine = make_engine("postgresql+psycopg://u:pw@127.0.0.1:1/db")
    assert engine.pool._pre_ping is True


def test_unreachable_server_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as info:
        migrate.current("postgresql+psycopg://attnmon:hunter2@127.0.0.1:1/db")
    message = str(info.value)
    assert message.startswith("store at postgresql+psycopg://attnmon:***@127.0.0.1:1/db:")
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///attnmon.db", "sqlite:///attnmon.db"),
        ("not a url but://u:s3cret@host", "not a url but://u:***@host"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_password_with_percent_survives_the_alembic_config() -> None:
    url = "postgresql+psycopg://u:p%40ss%25w@h/db"
    assert migrate.alembic_config(url).get_main_option("sqlalchemy.url") == url


def test_alembic_dir_is_the_repository_folder_and_can_be_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert migrate.script_location() == REPO / "alembic"
    # must not be a package, or it would shadow the installed alembic library
    assert not (REPO / "alembic" / "__init__.py").exists()
    monkeypatch.setenv("ATTNMON_ALEMBIC_DIR", str(tmp_path))
    assert migrate.script_location() == tmp_path
    with pytest.raises(StoreError, match="no Alembic migrations"):
        migrate.head_revision()


def test_migrations_do_not_import_the_models() -> None:
    # A migration must keep creating what it created when it was written.
    for path in (REPO / "alembic" / "versions").glob("*.py"):
        assert not re.search(r"^\s*(from|import) monitor", path.read_text(), re.M), path


def test_no_table_is_created_outside_alembic() -> None:
    offenders = []
    for package in ("monitor", "collectors", "alerts", "dashboards"):
        for path in (REPO / package).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\bcreate_all\b", line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_store_package_is_import_light() -> None:
    # The serving side imports the store package: no Alembic, no pandas until asked for.
    code = (
        "import sys, monitor.store as s; s.make_engine, s.redact, s.tables;"
        "print(sorted(m for m in ('alembic', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
