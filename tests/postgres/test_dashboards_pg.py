"""The dashboards on PostgreSQL, the database Grafana reads: every query with Grafana's
macros expanded, and the read-only role Grafana connects as."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from test_dashboards_sql import (
    RANGE,
    check_every_query,
    check_position_profile,
    check_top_items,
    load_story,
)

from dashboards.catalog import dashboards
from dashboards.cli import run_script
from dashboards.role import granted_tables, readonly_role_sql
from dashboards.run import context, resolve_variables, run_panel, wide
from monitor.store import make_engine, positions, tables


def _truncate(url: str) -> None:
    engine = make_engine(url)
    try:
        present = set(inspect(engine).get_table_names())
        names = ", ".join(f'"{t.name}"' for t in tables.metadata.sorted_tables if t.name in present)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def story_pg(pg_migrated_url: str) -> Iterator[str]:
    """The session's schema holding the demo story for this module; emptied after."""
    _truncate(pg_migrated_url)
    load_story(pg_migrated_url)
    yield pg_migrated_url
    _truncate(pg_migrated_url)


def test_every_query_on_postgresql(story_pg: str) -> None:
    skipped = check_every_query(story_pg)
    if inspect(make_engine(story_pg)).has_table("alerts"):
        assert skipped == {}


def test_same_numbers_as_on_sqlite_shape(story_pg: str) -> None:
    """PostgreSQL's numeric types (numeric sums, epoch floors) come back as numbers."""
    board = next(b for b in dashboards() if b.uid == "attnmon-heads")
    engine = make_engine(story_pg)
    with engine.connect() as conn:
        ctx = context(board, resolve_variables(conn, board, *RANGE), *RANGE)
        bands = wide(run_panel(conn, board.panel("position-bands"), ctx)[0])
    engine.dispose()
    assert list(bands.columns) == [*positions.LABELS, positions.REST_LABEL]
    assert ((bands.sum(axis=1) - 1).abs() < 1e-9).all()  # the bands split all the attention


def test_position_profile_on_postgresql(story_pg: str) -> None:
    check_position_profile(story_pg)


def test_top_items_on_postgresql(story_pg: str) -> None:
    # json operators on the json column; rows of a model of their own, beside the story
    check_top_items(story_pg, model="top-items")


@pytest.fixture
def readonly_role(story_pg: str) -> Iterator[tuple[str, str]]:
    """A fresh role created by readonly_role.sql on the store's schema; dropped after."""
    role = f"attnmon_ro_{uuid.uuid4().hex[:8]}"
    engine = make_engine(story_pg)
    try:
        with engine.begin() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            sql = readonly_role_sql(role, "pa'ss", schema)
            run_script(conn, sql)
            run_script(conn, sql)  # runs again without error (after a migration, say)
        yield role, schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        engine.dispose()


def _connect_as(admin_url: str, role: str) -> psycopg.Connection:
    url = make_url(admin_url)
    # the loopback's trust authentication: the password is not what is tested here
    return psycopg.connect(host=url.host, port=url.port or 5432, dbname=url.database, user=role,
                           password="pa'ss", autocommit=True)


def test_readonly_role_selects_and_cannot_write(story_pg: str, readonly_role) -> None:
    role, schema = readonly_role
    with _connect_as(story_pg, role) as conn:
        # the role's own settings: the store's schema first, read-only sessions
        assert conn.execute("SHOW search_path").fetchone()[0] == schema
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
        for name in granted_tables():
            if conn.execute("SELECT to_regclass(%s)", (f"{schema}.{name}",)).fetchone()[0]:
                conn.execute(f'SELECT count(*) FROM "{name}"')
        n = conn.execute("SELECT count(*) FROM window_aggregates").fetchone()[0]
        assert n > 0
        # read-only is a session default a client may turn off: privileges must hold anyway
        conn.execute("SET default_transaction_read_only = off")
        for sql in (
            "INSERT INTO daemon_state (key, value, updated_at) VALUES ('x', 'y', now())",
            "UPDATE deployments SET source = 'manual'",
            "DELETE FROM drift_results",
            "TRUNCATE window_aggregates",
            "CREATE TABLE grafana_scratch (x int)",
            "SELECT count(*) FROM attention_events",  # raw user histories: not granted
            "SELECT count(*) FROM baseline_sketches",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.grafana_scratch (x int)")

