"""Migrations, schema checks and the test fixtures themselves on a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select, text

from monitor.cli import main
from monitor.errors import StoreError
from monitor.store import make_engine, migrate, redact, require_schema, tables


def test_empty_head_base_head_on_postgresql(
    pg_empty_url: str, migration_cycle: Callable[[str], None]
) -> None:
    migration_cycle(pg_empty_url)


def test_shared_database_is_at_head_and_matches_the_models(pg_clean_url: str) -> None:
    assert migrate.current(pg_clean_url) == migrate.head_revision()
    migrate.check(pg_clean_url)
    require_schema(make_engine(pg_clean_url))


def test_check_finds_a_store_that_differs_from_the_models(pg_empty_url: str) -> None:
    migrate.upgrade(pg_empty_url)
    engine = make_engine(pg_empty_url)
    with engine.begin() as connection:
        # a type change: compare_type is on
        connection.execute(text("ALTER TABLE deployments ALTER COLUMN source TYPE VARCHAR(50)"))
    engine.dispose()
    with pytest.raises(StoreError, match="modify_type") as info:
        migrate.check(pg_empty_url)
    assert [d[0][0] for d in info.value.diffs] == ["modify_type"]


def test_require_schema_on_an_empty_schema(pg_empty_url: str) -> None:
    with pytest.raises(StoreError, match="is at revision none, expected head 0007"):
        require_schema(make_engine(pg_empty_url))


@pytest.mark.parametrize("run", [1, 2])
def test_pg_clean_url_starts_every_test_empty_with_identities_restarted(
    pg_clean_url: str, run: int
) -> None:
    engine = make_engine(pg_clean_url)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        assert connection.scalar(select(func.count()).select_from(tables.deployments)) == 0
        connection.execute(insert(tables.models).values(name="sasrec", created_at=now))
        new_id = connection.execute(
            insert(tables.deployments)
            .values(
                model="sasrec", version=f"v{run}", first_seen=now, deployed_at=now, source="manual"
            )
            .returning(tables.deployments.c.id)
        ).scalar_one()
    engine.dispose()
    assert new_id == 1


def test_cli_on_postgresql(pg_clean_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--store", pg_clean_url]) == 0
    assert "already at 0007 (head)" in capsys.readouterr().out
    assert main(["db", "current", "--store", pg_clean_url, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "store": redact(pg_clean_url),
        "revision": "0007",
        "head": "0007",
        "is_head": True,
    }
    assert main(["db", "check", "--store", pg_clean_url]) == 0


def test_0004_backfills_the_position_bands_of_existing_rows_on_postgresql(pg_empty_url: str) -> None:
    from test_migrations import check_band_backfill

    check_band_backfill(pg_empty_url)


def test_0005_keeps_results_and_keys_them_by_window_end_first_on_postgresql(pg_empty_url: str) -> None:
    from test_migrations import check_drift_key_order

    check_drift_key_order(pg_empty_url)


def test_0006_adds_a_nullable_minute_mask_and_drops_it_again_on_postgresql(pg_empty_url: str) -> None:
    from test_migrations import check_minute_mask

    check_minute_mask(pg_empty_url)


def test_0007_adds_n_to_the_aggregates_index_and_takes_it_out_again_on_postgresql(pg_empty_url: str) -> None:
    from test_migrations import check_index_covers_n

    check_index_covers_n(pg_empty_url)


@pytest.mark.parametrize(("statement", "lock", "shown"), [
    (2.5, 2.5, ("2500ms", "2500ms")),
    # (a statement timeout of 1 ms would cancel the SHOW itself on a loaded machine; the
    # lock timeout goes through the same rounding)
    (10, 0.0004, ("10s", "1ms")),
    (0, 0, ("0", "0")),
])
def test_make_engine_sets_the_sessions_timeouts_and_never_rounds_one_down_to_none(
    pg_clean_url: str, statement: float, lock: float, shown: tuple[str, str]
) -> None:
    # 0 is PostgreSQL's "no limit": a limit under a millisecond must not become that
    engine = make_engine(pg_clean_url, statement_timeout_s=statement, lock_timeout_s=lock)
    try:
        with engine.connect() as conn:
            got = (conn.execute(text("SHOW statement_timeout")).scalar_one(),
                   conn.execute(text("SHOW lock_timeout")).scalar_one())
            params = conn.connection.dbapi_connection.info.get_parameters()
    finally:
        engine.dispose()
    assert got == shown
    # a dead peer is noticed with or without limits (0, 0: a connection with none)
    assert params["keepalives"] == "1" and int(params["tcp_user_timeout"]) <= 60_000, params
