"""Which spill folder a store URL names (collectors.spill.store_folder): two stores must
never share one, or one store's batches are replayed into the other; one store spelled
two ways should share one, or a batch waits for a spelling that may not come back."""

from __future__ import annotations

import pytest

from collectors.spill import store_folder


def test_stores_in_two_schemas_of_one_database_have_folders_of_their_own():
    """A store is a database and a schema (the daemon's lead is one per schema; the tests
    give each store a schema of its own): staging and production in one database."""
    base = "postgresql+psycopg://attnmon@db.example/attnmon"
    staging = store_folder(f"{base}?options=-csearch_path%3Dstaging")
    assert staging != store_folder(f"{base}?options=-csearch_path%3Dproduction")
    assert staging != store_folder(base)  # (the role's default search_path: public)
    # the same schema, however the options spell it and whatever else they set
    assert staging == store_folder(f"{base}?options=-c%20search_path%3Dstaging%20-c%20statement_timeout%3D5000")
    assert staging == store_folder(f"{base}?options=--search_path%3Dstaging")


def test_where_libpq_connects_decides_the_folder_not_only_the_urls_netloc(monkeypatch):
    """libpq takes host, port, dbname and service from the query too (unix sockets are
    given as ?host=/dir), and a URL without a database connects to the user's own."""
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    sock = "postgresql+psycopg:///attnmon?host=/run/postgresql"
    assert store_folder(sock) != store_folder("postgresql+psycopg:///attnmon?host=/run/pg-staging")
    assert store_folder(sock) != store_folder(f"{sock}&port=5433")
    assert store_folder(sock) == store_folder(f"{sock}&port=5432")
    assert store_folder("postgresql://db.example/attnmon") != store_folder("postgresql://db.example/attnmon?dbname=other")
    assert store_folder("postgresql://db.example/x?dbname=attnmon") == store_folder("postgresql://db.example/attnmon")
    assert store_folder("postgresql+psycopg://?service=prod") != store_folder("postgresql+psycopg://?service=staging")
    assert store_folder("postgresql://alice@db.example/") != store_folder("postgresql://bob@db.example/")
    assert store_folder("postgresql://alice@db.example/") == store_folder("postgresql://bob@db.example/alice")
    # libpq's variables fill in what the URL leaves out
    monkeypatch.setenv("PGHOST", "db.example")
    monkeypatch.setenv("PGDATABASE", "attnmon")
    assert store_folder("postgresql+psycopg://") == store_folder("postgresql+psycopg://db.example/attnmon")


def test_a_sqlite_file_is_the_one_the_engine_opens(tmp_path, monkeypatch):
    """'~' is the home folder, as make_engine reads it; a file: URI (uri=true) or a name
    starting with file: is a file relative to the process's folder like any other."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert store_folder("sqlite:///~/attnmon.db") == store_folder(f"sqlite:///{tmp_path}/attnmon.db")
    for url in ("sqlite:///file:attnmon.db?mode=rw&uri=true", "sqlite:///file:attnmon.db"):
        monkeypatch.chdir(tmp_path / "a")
        in_a = store_folder(url)
        monkeypatch.chdir(tmp_path / "b")
        assert in_a != store_folder(url), url  # two files, two stores
    monkeypatch.chdir(tmp_path / "a")
    assert store_folder("sqlite:///file:attnmon.db?mode=rw&uri=true") == store_folder(
        f"sqlite:///{tmp_path}/a/attnmon.db")
    assert store_folder(f"sqlite:///file://{tmp_path}/a/attnmon.db?uri=true") == store_folder(
        f"sqlite:///{tmp_path}/a/attnmon.db")


@pytest.mark.xfail(strict=True, reason="design: a role's own schema ('$user' first in the default search_path, "
                   "or ALTER ROLE ... SET search_path) is not in the URL; naming the user in the folder would "
                   "split one store's batches whenever its credentials rotate (dynamic users)")
def test_two_roles_each_in_a_schema_of_its_own_have_folders_of_their_own():
    assert store_folder("postgresql://staging@db.example/attnmon") != store_folder(
        "postgresql://production@db.example/attnmon")


def test_batches_left_under_an_earlier_spelling_of_the_store_are_not_left_unsaid(tmp_path, caplog):
    from datetime import UTC, datetime

    from collectors import AttentionCollector
    from collectors.spill import SpillDir
    from monitor.store.writer import FlushBatch

    old = SpillDir(tmp_path / "spill", "postgresql+psycopg://attnmon@localhost/attnmon")
    old.put(FlushBatch(collector_id="c", batch_seq=1, written_at=datetime.now(UTC), n_requests=1))
    c = AttentionCollector("postgresql+psycopg://attnmon@127.0.0.1/attnmon", model="m", version="v1",
                           spill_dir=tmp_path / "spill")
    c._closed = True  # (never started: nothing to write)
    assert "localhost" in caplog.text and "(1)" in caplog.text and str(c._spill.path) in caplog.text
