"""Migrations, engine and schema checks on SQLite (tests/postgres repeats them on PostgreSQL)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

import monitor
from monitor.errors import StoreError
from monitor.store import make_engine, migrate, redact, require_schema, tables

REPO = Path(monitor.__file__).resolve().parents[1]


def test_empty_head_base_head_on_sqlite(
    tmp_path: Path, migration_cycle: Callable[[str], None]
) -> None:
    migration_cycle(f"sqlite:///{tmp_path / 'store.db'}")


def test_sqlite_url_fixture_is_at_head(sqlite_url: str) -> None:
    assert migrate.current(sqlite_url) == migrate.head_revision() == "0007"
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

    missing = tmp_path / "mistyped.db"
    with pytest.raises(StoreError, match=rf"there is no file {missing} \(a typo in the path\?"):
        require_schema(make_engine(f"sqlite:///{missing}"))
    assert not missing.exists()  # not created on the way
    (tmp_path / "empty.db").touch()
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


def test_a_new_sqlite_store_is_private_to_its_user(tmp_path: Path) -> None:
    """The store holds raw events (users' histories): under the usual umask 022 a new
    file, and the WAL files SQLite gives the same mode, must not be world-readable."""
    import os
    import stat

    path = tmp_path / "store.db"
    old = os.umask(0o022)
    try:
        migrate.upgrade(f"sqlite:///{path}")
        engine = make_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            connection.execute(select(tables.models)).all()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert "store.db-wal" in modes and set(modes.values()) == {0o600}, modes


def test_an_existing_sqlite_store_keeps_its_mode(tmp_path: Path) -> None:
    """A file the operator made (say 0640 for a group that reads it) is left as it is."""
    import stat

    path = tmp_path / "store.db"
    migrate.upgrade(f"sqlite:///{path}")
    path.chmod(0o640)
    migrate.upgrade(f"sqlite:///{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


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


def test_alembic_dir_is_the_package_folder_and_can_be_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert migrate.script_location() == REPO / "monitor" / "store" / "migrations"
    # data loaded by path, not a package of ours
    assert not (REPO / "monitor" / "store" / "migrations" / "__init__.py").exists()
    monkeypatch.setenv("ATTNMON_ALEMBIC_DIR", str(tmp_path))
    assert migrate.script_location() == tmp_path
    with pytest.raises(StoreError, match="no Alembic migrations"):
        migrate.head_revision()


def test_migrations_do_not_import_the_models() -> None:
    # A migration must keep creating what it created when it was written.
    for path in (REPO / "monitor" / "store" / "migrations" / "versions").glob("*.py"):
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


# -- 0004: position bands ---------------------------------------------------------------------


def _write_some_rows(url: str) -> None:
    import numpy as np

    from collectors import AttentionCollector

    rng = np.random.default_rng(4)
    t0 = 1_800_000_000.0
    with AttentionCollector(url, model="m", version="v1", sample_rate=0, clock=lambda: t0 + 600) as c:
        for minute in range(3):
            lengths = rng.integers(1, 300, 30)  # some beyond the 256 positions of the profile
            w = np.zeros((30, 2, 300), dtype=np.float32)
            for i, n in enumerate(lengths):
                w[i, :, 300 - n:] = rng.dirichlet(np.full(n, 0.3), size=2)
            c.observe_batch(w, lengths=lengths, cohorts="web", timestamps=t0 + 60 * minute + 5)


def _bands_by_id(url: str) -> dict[int, tuple]:
    from monitor.store import positions

    wa = tables.window_aggregates
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(wa.c.id, *[wa.c[c] for c in positions.COLUMNS])).all()
    finally:
        engine.dispose()
    return {r[0]: tuple(r[1:]) for r in rows}


def check_band_backfill(url: str) -> None:
    """Rows written at head carry bands equal to their payload's; downgraded to 0003 they
    lose them, and the upgrade to 0004 puts them back from the payloads."""
    import numpy as np

    from monitor.sketch import Sketch
    from monitor.store import positions

    migrate.upgrade(url)
    _write_some_rows(url)
    wa = tables.window_aggregates
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(wa)).mappings().all()
    finally:
        engine.dispose()
    assert len(rows) > 5
    for r in rows:
        sk = Sketch.from_row(r)
        got = np.array([r[c] for c in positions.COLUMNS])
        np.testing.assert_allclose(got, positions.band_matrix(sk.pos)[0], rtol=1e-12, atol=1e-12)
        # the bands agree with the per-vector recency metrics the collector computed
        assert abs(r["pos_0"] - r["sum_recency1"]) < 1e-4 * r["n"]
        assert abs(sum(got[:4]) - r["sum_recency5"]) < 1e-4 * r["n"]
        assert got.sum() <= r["n"] * (1 + 1e-6)  # the mass beyond 255 positions is not in them
    assert any(r["n"] - sum(r[c] for c in positions.COLUMNS) > 0.01 for r in rows)
    written = _bands_by_id(url)

    migrate.downgrade(url, "0003")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            names = {c["name"] for c in inspect(conn).get_columns("window_aggregates")}
    finally:
        engine.dispose()
    assert not names & set(positions.COLUMNS)
    migrate.upgrade(url)
    backfilled = _bands_by_id(url)
    assert backfilled.keys() == written.keys()
    for row_id, bands in written.items():
        np.testing.assert_allclose(backfilled[row_id], bands, rtol=1e-12, atol=1e-15)
    migrate.check(url)


def test_0004_backfills_the_position_bands_of_existing_rows(sqlite_url: str) -> None:
    check_band_backfill(sqlite_url)



def test_0004_again_lets_the_maintain_job_fill_what_its_backfill_left(sqlite_url: str) -> None:
    """The maintain job's cursor (daemon_state) says which ids it has read. Down to 0003
    and up again, the bands are new columns: rows past 0004's backfill (its newest
    100,000) must be read again, not skipped for the cursor of the columns dropped."""
    from sqlalchemy import func, update

    from monitor.store import positions
    from monitor.store.maintenance import fill_position_bands

    _write_some_rows(sqlite_url)
    wa = tables.window_aggregates
    engine = make_engine(sqlite_url)
    try:
        assert fill_position_bands(engine) == 0  # every row written with its bands; ids read
        migrate.downgrade(sqlite_url, "0003")
        migrate.upgrade(sqlite_url)
        with engine.begin() as conn:  # as if beyond the upgrade's backfill
            rows = conn.execute(update(wa).values(dict.fromkeys(positions.COLUMNS))).rowcount
        assert rows > 5 and fill_position_bands(engine) == rows
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).where(wa.c.pos_0.is_(None))).scalar_one() == 0
    finally:
        engine.dispose()


# -- 0005: drift_results keyed by window_end first ---------------------------------------------


def check_drift_key_order(url: str) -> None:
    """Results survive 0005's down- and upgrade, the key leads with window_end at head (the
    table's only index besides the primary key) and still refuses a second row for the
    same (series, statistic, window end)."""
    from datetime import UTC, datetime, timedelta

    from monitor.evaluate import write_results

    migrate.upgrade(url)
    end = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    rows = [dict(model="m", version="v1", cohort="*", layer=str(layer), head="*", statistic=stat,
                 value=0.5 + layer, baseline_value=0.5, baseline_kind="trailing",
                 window_start=end - timedelta(minutes=15), window_end=end, n_current=100,
                 n_baseline=1000, detail=None, computed_at=end)
             for layer in range(3) for stat in ("mean.entropy_norm", "psi.top1")]

    def unique_keys() -> list[list[str]]:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                return [u["column_names"] for u in inspect(conn).get_unique_constraints("drift_results")]
        finally:
            engine.dispose()

    def indexes() -> list[list[str]]:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                return sorted(i["column_names"] for i in inspect(conn).get_indexes("drift_results")
                              if not i.get("unique"))
        finally:
            engine.dispose()

    def stored() -> set[tuple]:
        dr = tables.drift_results
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                return {tuple(r) for r in conn.execute(select(dr.c.layer, dr.c.statistic, dr.c.value))}
        finally:
            engine.dispose()

    engine = make_engine(url)
    try:
        assert write_results(engine, rows) == len(rows)
    finally:
        engine.dispose()
    want = {(r["layer"], r["statistic"], r["value"]) for r in rows}
    assert stored() == want
    assert unique_keys() == [["window_end", "statistic", "model", "version", "cohort", "layer", "head"]]
    assert indexes() == []  # the key serves every read
    migrate.downgrade(url, "0004")
    assert stored() == want
    assert unique_keys() == [["model", "version", "cohort", "layer", "head", "statistic", "window_end"]]
    assert indexes() == [["model", "version", "window_end"], ["window_end", "statistic"]]
    migrate.upgrade(url)
    assert stored() == want
    engine = make_engine(url)
    try:
        assert write_results(engine, [dict(r, value=9.0) for r in rows]) == 0  # the key still holds
    finally:
        engine.dispose()
    assert stored() == want
    migrate.check(url)


def test_0005_keeps_results_and_keys_them_by_window_end_first(sqlite_url: str) -> None:
    check_drift_key_order(sqlite_url)


# -- 0006: window_aggregates.minute_mask -------------------------------------------------------


def check_minute_mask(url: str) -> None:
    """0006's downgrade drops the column and keeps every row; the upgrade brings it back
    NULL (every minute of the bucket), as collectors write it."""
    from sqlalchemy import func, update

    migrate.upgrade(url)
    _write_some_rows(url)
    wa = tables.window_aggregates
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            rows = conn.execute(select(func.count(), func.sum(wa.c.n))).one()
            assert conn.execute(select(func.count(wa.c.minute_mask))).scalar_one() == 0  # collectors: NULL
            conn.execute(update(wa).values(minute_mask=2**59 + 1))  # the 60th bit fits
        migrate.downgrade(url, "0005")
        with engine.connect() as conn:
            assert "minute_mask" not in {c["name"] for c in inspect(conn).get_columns("window_aggregates")}
        engine.dispose()
        migrate.upgrade(url)
        with engine.connect() as conn:
            assert conn.execute(select(func.count(), func.sum(wa.c.n))).one() == rows
            assert conn.execute(select(func.count(wa.c.minute_mask))).scalar_one() == 0
    finally:
        engine.dispose()
    migrate.check(url)


def test_0006_adds_a_nullable_minute_mask_and_drops_it_again(sqlite_url: str) -> None:
    check_minute_mask(sqlite_url)


# -- 0007: the (model, bucket_start, version) index gains n --------------------------------------


def check_index_covers_n(url: str) -> None:
    """0007 swaps the index both ways and keeps every row; at head the baselines' sum of n
    per minute is read from the index alone on SQLite (a plan PostgreSQL picks by its
    statistics, so only SQLite's is asserted)."""
    from sqlalchemy import func

    from monitor.baselines import _hour_totals, hour_totals_query

    migrate.upgrade(url)
    _write_some_rows(url)
    wa = tables.window_aggregates
    old, new = "ix_window_aggregates_model_bucket_start_version", "ix_window_aggregates_model_bucket_start_version_n"
    engine = make_engine(url)

    def indexes() -> dict[str, list[str]]:
        with engine.connect() as conn:
            return {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("window_aggregates")
                    if i["name"] in (old, new)}

    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.count(), func.sum(wa.c.n))).one()
            model, version, first = conn.execute(select(wa.c.model, wa.c.version, func.min(wa.c.bucket_start))
                                                 .group_by(wa.c.model, wa.c.version)).first()
        assert indexes() == {new: ["model", "bucket_start", "version", "n"]}
        start = first.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
        totals = _hour_totals(engine, model, [version], start, start + timedelta(hours=24))[version]
        if engine.dialect.name == "sqlite":
            q = hour_totals_query(model, [version], start, start + timedelta(hours=1))
            q = q.compile(engine, compile_kwargs={"literal_binds": True})
            with engine.connect() as conn:
                plan = " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {q}"))
            assert f"COVERING INDEX {new}" in plan, plan
        migrate.downgrade(url, "0006")
        assert indexes() == {old: ["model", "bucket_start", "version"]}
        migrate.upgrade(url)
        assert indexes() == {new: ["model", "bucket_start", "version", "n"]}
        with engine.connect() as conn:
            assert conn.execute(select(func.count(), func.sum(wa.c.n))).one() == rows
        assert _hour_totals(engine, model, [version], start, start + timedelta(hours=24))[version] == totals
        assert sum(totals.values()) > 0
    finally:
        engine.dispose()
    migrate.check(url)


def test_0007_adds_n_to_the_aggregates_index_and_takes_it_out_again(sqlite_url: str) -> None:
    check_index_covers_n(sqlite_url)


def test_a_sqlite_path_under_home_means_one_file_for_every_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///~/store.db"
    migrate.upgrade(url)
    assert (tmp_path / "store.db").is_file() and not (tmp_path / "~").exists()
    require_schema(make_engine(url))  # the same file, at head
