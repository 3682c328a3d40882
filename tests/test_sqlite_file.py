"""Which file a SQLite URL means (monitor.store.engine.sqlite_file): one answer for every
command, so that `attnmon db`, the daemon's lock, make_engine and a collector's spill
folder never name two files for one store, or one file for two."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from collectors.spill import store_folder
from monitor.cli import main
from monitor.errors import StoreError
from monitor.leadership import leadership_for
from monitor.store import make_engine, migrate
from monitor.store.engine import absolute_url, require_file, sqlite_file


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_a_plain_absolute_path_is_the_file_it_names_as_before(tmp_path):
    """Where existing users' data is: the path itself, and the spill folder named for it."""
    url = f"sqlite:///{tmp_path}/attnmon.db"
    assert sqlite_file(url) == tmp_path / "attnmon.db"
    assert absolute_url(url) is url
    identity = f"sqlite:{tmp_path}/attnmon.db"
    assert store_folder(url) == f"sqlite-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def test_tilde_is_the_home_folder(home):
    assert sqlite_file("sqlite:///~/attnmon.db") == home / "attnmon.db"
    assert sqlite_file("sqlite:///~") == home


def test_a_file_uri_names_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///file:attnmon.db?mode=rw&uri=true") == tmp_path / "attnmon.db"
    assert sqlite_file(f"sqlite:///file://{tmp_path}/attnmon.db?uri=true") == tmp_path / "attnmon.db"
    # percent-escapes: the file SQLite opens (SQLAlchemy 2.1 unquotes the URL's database
    # once more than 2.0 does, so which file that is depends on it; ours must follow)
    escaped = f"sqlite:///file:{tmp_path}/a%2520b.db?uri=true"
    engine = make_engine(escaped)
    with engine.connect() as conn:
        opened = Path(conn.exec_driver_sql("PRAGMA database_list").fetchall()[0][2])
    engine.dispose()
    assert sqlite_file(escaped) == opened and opened.name in ("a b.db", "a%20b.db")
    # '~' is not SQLite's in a URI: a folder named so
    assert sqlite_file("sqlite:///file:~/attnmon.db?uri=true") == tmp_path / "~" / "attnmon.db"
    # without uri=true, SQLite opens a file named so, in the current folder
    assert sqlite_file("sqlite:///file:attnmon.db") == tmp_path / "file:attnmon.db"


def test_a_symlink_is_the_file_it_points_to(tmp_path):
    real = tmp_path / "data" / "attnmon.db"
    real.parent.mkdir()
    real.touch()
    (tmp_path / "link.db").symlink_to(real)
    (tmp_path / "folder").symlink_to(real.parent)
    for spelling in (f"sqlite:///{tmp_path}/link.db", f"sqlite:///{tmp_path}/folder/attnmon.db",
                     f"sqlite:///file:{tmp_path}/link.db?mode=rw&uri=true"):
        assert sqlite_file(spelling) == real, spelling
        assert store_folder(spelling) == store_folder(f"sqlite:///{real}"), spelling


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:shared?mode=memory&cache=shared&uri=true",
                                 "postgresql+psycopg://u@db.example/attnmon"])
def test_no_file(url):
    assert sqlite_file(url) is None
    assert absolute_url(url) is url
    require_file(url)  # (nothing to check)


def test_mode_memory_without_uri_is_a_file(tmp_path):
    """SQLite reads the query only with uri=true: this opens the file (and SQLAlchemy warns)."""
    assert sqlite_file(f"sqlite:///{tmp_path}/attnmon.db?mode=memory") == tmp_path / "attnmon.db"


@pytest.mark.parametrize("spelling", ["attnmon.db", "file:attnmon.db?mode=rwc&uri=true"])
def test_a_relative_file_is_the_current_folders_until_made_absolute(tmp_path, monkeypatch, spelling):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    url = f"sqlite:///{spelling}"
    fixed = absolute_url(url)
    assert sqlite_file(url) == sqlite_file(fixed) == tmp_path / "a" / "attnmon.db"
    monkeypatch.chdir(tmp_path / "b")
    assert sqlite_file(url) == tmp_path / "b" / "attnmon.db"
    assert sqlite_file(fixed) == tmp_path / "a" / "attnmon.db"
    assert fixed.endswith("?mode=rwc&uri=true") == ("uri" in url)  # (the URI's own options kept)


def test_an_engine_opens_the_file_named_when_it_was_made(tmp_path, monkeypatch):
    """sqlite3 reads a relative file: URI at each connect: a chdir between make_engine and
    the first connect (a daemon's chdir('/')) must not open another file."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    engine = make_engine("sqlite:///file:attnmon.db?uri=true")
    monkeypatch.chdir(tmp_path / "b")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    assert (tmp_path / "a" / "attnmon.db").exists()
    assert list((tmp_path / "b").iterdir()) == []


def test_a_new_file_uri_store_is_private_and_a_read_only_one_is_not_created(tmp_path):
    engine = make_engine(f"sqlite:///file:{tmp_path}/attnmon.db?uri=true")
    engine.connect().close()
    engine.dispose()
    assert stat.S_IMODE((tmp_path / "attnmon.db").stat().st_mode) == 0o600
    for mode in ("ro", "rw"):  # SQLite fails on a missing file: nothing of ours may create it
        engine = make_engine(f"sqlite:///file:{tmp_path}/missing.db?mode={mode}&uri=true")
        with pytest.raises(Exception, match="unable to open"):
            engine.connect()
        assert not (tmp_path / "missing.db").exists()


def test_a_file_uri_in_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match=f"directory {tmp_path}/nope does not exist"):
        make_engine(f"sqlite:///file:{tmp_path}/nope/attnmon.db?uri=true")


def test_db_check_finds_a_store_in_the_home_folder(home, tmp_path, monkeypatch, capsys):
    """`db check` looked for ./~/attnmon.db, where `db upgrade` had made ~/attnmon.db."""
    monkeypatch.chdir(tmp_path)
    assert main(["db", "upgrade", "--store", "sqlite:///~/attnmon.db"]) == 0
    assert (home / "attnmon.db").exists()
    assert main(["db", "check", "--store", "sqlite:///~/attnmon.db"]) == 0, capsys.readouterr().err
    assert main(["db", "downgrade", "base", "--store", "sqlite:///~/attnmon.db"]) == 0, capsys.readouterr().err


def test_db_check_of_a_mistyped_file_uri_says_so_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "typo.db"
    assert main(["db", "check", "--store", f"sqlite:///file:{missing}?uri=true"]) == 2
    assert f"there is no file {missing}" in capsys.readouterr().err
    assert not missing.exists()
    assert main(["db", "current", "--store", f"sqlite:///file:{missing}?uri=true"]) == 0
    assert "no file" in capsys.readouterr().out
    assert not missing.exists()


def test_daemons_given_two_spellings_of_one_file_lock_one_lock(tmp_path, monkeypatch):
    real = tmp_path / "data" / "attnmon.db"
    real.parent.mkdir()
    migrate.upgrade(f"sqlite:///{real}")
    (tmp_path / "link.db").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    spellings = [f"sqlite:///{real}", f"sqlite:///{tmp_path}/link.db", "sqlite:///link.db",
                 f"sqlite:///file:{tmp_path}/link.db?uri=true"]
    leads = [leadership_for(make_engine(url).url, lease_s=15, who=f"d{i}") for i, url in enumerate(spellings)]
    try:
        assert [lead.try_acquire() for lead in leads] == [True, False, False, False]
        assert os.path.exists(f"{real}.daemon.lock")
    finally:
        for lead in leads:
            lead.release()


def test_uri_options_on_a_plain_path_are_refused_not_sent_to_another_file(tmp_path, monkeypatch, capsys):
    """With uri=true SQLAlchemy appends mode=ro to the database, and SQLite reads it only
    from a file: URI: from a plain path it opened (and created, read-write) a file named
    "attnmon.db?mode=ro", while every check, the lock and the spill folder meant attnmon.db."""
    real = tmp_path / "attnmon.db"
    migrate.upgrade(f"sqlite:///{real}")
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{real}?mode=ro&uri=true"
    with pytest.raises(StoreError, match=f"as in sqlite:///file:{real}\\?mode=ro&uri=true"):
        make_engine(url)
    assert main(["db", "check", "--store", url]) == 2
    assert "SQLite reads mode only from a file: URI" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attnmon.db"]
    # uri=true alone, and the file: URI itself, open the file named
    for fine in (f"sqlite:///{real}?uri=true", f"sqlite:///file:{real}?mode=ro&uri=true"):
        assert main(["db", "check", "--store", fine]) == 0, capsys.readouterr().err
