"""A user's mistakes on the command line: one line on stderr, exit status 2, no traceback.

Paths that cannot be written, URLs that are not URLs, unreachable stores, times that do not
parse, ranges and comparisons that make no sense, and a demo pointed at a used store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.cli import main
from monitor.cli_common import parse_duration, parse_time
from monitor.demo import START, Segment, stream
from monitor.errors import ConfigError
from monitor.store import make_engine, migrate
from monitor.store import tables as t

pytestmark = pytest.mark.usefixtures("clean_env")

MODEL = "demo-sasrec"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's stderr: exactly one line starting `attnmon: error: `."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.startswith("attnmon: error: ") and err.count("\n") == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, datetime, str]:
    """v1 then v2 of demo-sasrec, a few minutes each; and one sampled request id."""
    url = f"sqlite:///{tmp_path_factory.mktemp('user-errors') / 'store.db'}"
    migrate.upgrade(url)
    end = stream(url, [Segment("v1", 3), Segment("v2", 3)], rate=60, sample_rate=0.1)
    engine = make_engine(url)
    with engine.connect() as conn:
        request_id = conn.execute(select(t.attention_events.c.request_id).limit(1)).scalar_one()
    engine.dispose()
    return url, datetime.fromtimestamp(end, UTC), request_id


# -- 1. output paths, URLs and stores --------------------------------------------------------


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_rollback_check_out_that_cannot_be_written(small_store, tmp_path: Path, capsys, where: str) -> None:
    url, now, _ = small_store
    out = tmp_path / "no-such-dir" / "r.html" if where == "missing-dir" else tmp_path
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat(),
                 "--format", "html", "--out", str(out)])
    line = one_error_line(capsys)
    assert code == 2
    assert f"--out={str(out)!r}" in line
    if where == "missing-dir":
        assert "No such file or directory" in line and f"directory {tmp_path / 'no-such-dir'} does not exist" in line
    else:
        assert "Is a directory" in line


def test_debug_still_shows_the_traceback_of_a_path_error(small_store, tmp_path: Path, capsys) -> None:
    url, now, _ = small_store
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat(),
                 "--out", str(tmp_path), "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("attnmon: error: argument: --out=")


def test_an_oserror_on_a_file_the_user_did_not_name_is_not_hidden(monkeypatch, sqlite_url: str) -> None:
    import monitor.cli_evaluate as ce

    def broken(*_a, **_k):
        raise FileNotFoundError(2, "No such file or directory", "/somewhere/internal.bin")

    monkeypatch.setattr(ce, "_engine", broken)
    with pytest.raises(FileNotFoundError):
        main(["evaluate", "--store", sqlite_url])


@pytest.mark.parametrize("name", ["x.foo", "x"])
def test_explain_out_with_an_unknown_image_format(small_store, tmp_path: Path, capsys, name: str) -> None:
    url, _, request_id = small_store
    out = tmp_path / name
    code = main(["explain", "--store", url, "--request-id", request_id, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # refused before any work
    assert captured.err.startswith("attnmon: error: ") and captured.err.count("\n") == 1, captured.err
    assert f"--out={str(out)!r}" in captured.err and ".png" in captured.err
    assert not out.exists()


def test_explain_out_in_a_missing_directory(small_store, tmp_path: Path, capsys) -> None:
    url, _, request_id = small_store
    out = tmp_path / "nope" / "x.png"
    assert main(["explain", "--store", url, "--request-id", request_id, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"attnmon: error: argument: --out={str(out)!r}") and "does not exist" in err


def test_explain_out_png_still_works(small_store, tmp_path: Path, capsys) -> None:
    url, _, request_id = small_store
    out = tmp_path / "x.png"
    assert main(["explain", "--store", url, "--request-id", request_id, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_dashboards_export_db_url_that_is_not_a_url(tmp_path: Path, capsys) -> None:
    code = main(["dashboards", "export", "--out", str(tmp_path / "g"), "--db-url", "not a url"])
    line = one_error_line(capsys)
    assert code == 2 and "--db-url='not a url'" in line and "not a database URL" in line
    assert not (tmp_path / "g").exists()


def test_dashboards_export_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "g").write_text("in the way")
    assert main(["dashboards", "export", "--out", str(tmp_path / "g")]) == 2
    assert "--out=" in one_error_line(capsys)


def test_dashboards_grant_on_an_unreachable_store(monkeypatch, capsys) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.setenv("ATTNMON_GRAFANA_DB_PASSWORD", "x")
    code = main(["dashboards", "grant", "--store", "postgresql+psycopg://postgres@127.0.0.1:1/x"])
    line = one_error_line(capsys)
    assert code == 2 and line.startswith("attnmon: error: store at postgresql+psycopg://postgres@127.0.0.1:1/x: ")


@pytest.mark.parametrize(("argv", "named"), [
    (["dashboards", "grant", "--store", "postgresql+psycopg://postgres@127.0.0.1:1/x"],
     "ATTNMON_GRAFANA_DB_PASSWORD: not set"),
    (["dashboards", "push", "--store", "sqlite:///x.db"], "--db-url: the PostgreSQL store"),
    (["dashboards", "annotate", "--store", "sqlite:///x.db"], "--grafana-url: give Grafana's URL"),
    (["dashboards", "annotate", "--store", "sqlite:///x.db", "--grafana-url", "http://127.0.0.1:1"],
     "ATTNMON_GRAFANA_TOKEN: not set"),
])
def test_an_option_or_variable_not_given_is_named_without_a_value(argv, named, capsys) -> None:
    # not "ATTNMON_GRAFANA_DB_PASSWORD=None", as if it had been set to the text None
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert named in line and "None" not in line, line


def test_a_problem_without_a_value_is_field_then_message() -> None:
    from monitor.errors import NOT_GIVEN

    assert str(ConfigError([("--db-url", NOT_GIVEN, "give one")], "argument")) == "argument: --db-url: give one"
    assert str(ConfigError([("x", None, "must be an integer")])) == "config: x=None: must be an integer"


@pytest.mark.parametrize("days", ["nan", "inf", "-1", "0", "1e10"])
def test_dashboards_annotate_days_that_are_no_look_back(sqlite_url: str, days: str, monkeypatch, capsys) -> None:
    # nan was a traceback, -1 and 0 posted nothing and said so as if all were well
    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", "t")
    code = main(["dashboards", "annotate", "--store", sqlite_url, "--grafana-url", "http://127.0.0.1:1",
                 f"--days={days}"])
    line = one_error_line(capsys)
    assert code == 2 and "--days=" in line and "days > 0" in line, line


def test_report_out_that_cannot_be_created(small_store, tmp_path: Path, capsys) -> None:
    url, _, _ = small_store
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "figures"
    code = main(["report", "--store", url, "--out", str(out)])
    line = one_error_line(capsys)
    assert code == 2 and f"--out={str(out)!r}" in line


# -- 2. now+2h is the future -----------------------------------------------------------------


def test_now_plus_is_the_future_and_now_minus_the_past() -> None:
    before = datetime.now(UTC)
    later = parse_time("now+2h", "--at")
    earlier = parse_time("now-2h", "--at")
    after = datetime.now(UTC)
    assert before + timedelta(hours=2) <= later <= after + timedelta(hours=2)
    assert before - timedelta(hours=2) <= earlier <= after - timedelta(hours=2)
    assert abs(parse_time(" now + 30m ") - (datetime.now(UTC) + timedelta(minutes=30))) < timedelta(seconds=5)


@pytest.mark.parametrize("value", ["now2h", "now+", "now+xh", "now--2h", "now-infh", "now+1e300d", "nowish"])
def test_garbage_after_now_is_an_error_naming_the_option(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time(value, "--at")
    assert str(info.value).startswith(f"argument: --at={value!r}: ")


@pytest.mark.parametrize("value", ["-2h", "nanh", "2", "infd"])
def test_bad_durations_name_the_option(value: str) -> None:
    with pytest.raises(ConfigError, match="--since="):
        parse_duration(value, "--since")


def test_deploy_mark_at_now_plus_records_the_future(sqlite_url: str, capsys) -> None:
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v9", "--at", "now+2h"]) == 0
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        when = conn.execute(select(t.deployments.c.deployed_at)).scalar_one()
    engine.dispose()
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    assert when - datetime.now(UTC) > timedelta(hours=1, minutes=59)
    capsys.readouterr()  # (the note that m is a new model)

    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v9", "--at", "now+2x"]) == 2
    assert "--at='now+2x'" in one_error_line(capsys)



@pytest.mark.parametrize("model, version, bad", [
    ("m", "v$__timeFrom()x", "--version"),  # Grafana's server would expand it inside the SQL
    ("m", "x" * 201, "--version"),
    ("m\tx", "v1", "--model"),
])
def test_deploy_mark_refuses_what_a_collector_refuses(sqlite_url: str, capsys, model, version, bad) -> None:
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", model, "--version", version]) == 2
    assert f"{bad}=" in one_error_line(capsys)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(select(t.deployments.c.version)).all() == []
    engine.dispose()

# -- 4. a version against itself -------------------------------------------------------------


def test_rollback_check_of_a_version_against_itself_is_a_usage_error(small_store, capsys) -> None:
    url, now, _ = small_store
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat(),
                 "--candidate", "v2", "--baseline", "v2"])
    line = one_error_line(capsys)
    assert code == 2 and "--candidate/--baseline='v2'" in line and "same version" in line


def test_rollback_check_default_candidate_against_itself(small_store, capsys) -> None:
    # v2 is the newest deployment, so the default candidate
    url, now, _ = small_store
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat(), "--baseline", "v2"])
    line = one_error_line(capsys)
    assert code == 2 and "against itself" in line


def test_rollback_check_since_names_the_option(small_store, capsys) -> None:
    url, now, _ = small_store
    assert main(["rollback-check", "--store", url, "--model", MODEL, "--since", "2 hours"]) == 2
    assert "--since='2 hours'" in one_error_line(capsys)


# -- 5. an inverted backfill range -----------------------------------------------------------


@pytest.mark.parametrize("end", ["2026-11-20T10:30Z", "2026-11-20T10:33Z"])
def test_evaluate_with_to_not_after_from(sqlite_url: str, capsys, end: str) -> None:
    code = main(["evaluate", "--store", sqlite_url, "--from", "2026-11-20T10:33Z", "--to", end])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "--from='2026-11-20T10:33Z'" in captured.err
    assert f"--to={end!r}" in captured.err and "must be after --from" in captured.err


def test_evaluate_at_with_a_range_is_an_error(sqlite_url: str, capsys) -> None:
    code = main(["evaluate", "--store", sqlite_url, "--at", "2026-11-20T10:00Z",
                 "--from", "2026-11-20T10:30Z", "--to", "2026-11-20T10:33Z"])
    assert code == 2 and "--at=" in one_error_line(capsys)


# -- 3 and 6. the demo's store ---------------------------------------------------------------


def test_demo_refuses_a_store_that_holds_data(small_store, tmp_path: Path, capsys) -> None:
    url, _, _ = small_store
    engine = make_engine(url)
    with engine.connect() as conn:
        before = conn.execute(select(t.deployments.c.version)).scalars().all()
    engine.dispose()
    code = main(["demo", "--store", url, "--out", str(tmp_path / "out"), "--no-defect"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "already holds data (models demo-sasrec)" in captured.err and "empty store" in captured.err
    assert not (tmp_path / "out").exists()  # refused before writing anything
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(t.deployments.c.version)).scalars().all() == before  # left alone


def test_demo_refuses_a_used_store_before_migrating_it(tmp_path: Path, capsys) -> None:
    from monitor.demo import demo

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0004")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(t.models.insert().values(name="prod-model", created_at=datetime.now(UTC)))
    engine.dispose()
    with pytest.raises(ConfigError, match="models prod-model"):
        demo(tmp_path / "out", store_url=url, progress=False)
    assert migrate.current(url) == "0004"


def test_demo_ignores_the_configured_store(tmp_path: Path, monkeypatch, capsys) -> None:
    """$ATTNMON_STORE_URL (and the config file) are a real store, likely: never the demo's."""
    import monitor.demo as demo_module

    used = {}
    monkeypatch.setattr(demo_module, "demo", lambda out, store_url=None, **kw: used.update(store=store_url) or 0)
    monkeypatch.setenv("ATTNMON_STORE_URL", f"sqlite:///{tmp_path / 'prod.db'}")
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    assert used["store"] is None  # the demo's own, fresh DIR/demo.db
    assert main(["--store", "sqlite:///given.db", "demo"]) == 0
    assert used["store"] == "sqlite:///given.db"  # given on the command line: used


def test_demo_help_says_which_store_it_uses(capsys) -> None:
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "never $ATTNMON_STORE_URL or the config file's store" in out
    assert "DIR/demo.db, recreated at each run" in out


@pytest.mark.parametrize("argv", [["db", "check"], ["db", "downgrade", "base"]])
def test_db_commands_on_a_mistyped_sqlite_path_leave_no_file(tmp_path: Path, capsys, argv: list[str]) -> None:
    # (`db current` says there is no file: tests/test_cli.py)
    typo = tmp_path / "atnmon.db"
    assert main([*argv, "--store", f"sqlite:///{typo}"]) == 2
    assert "there is no file" in capsys.readouterr().err
    assert not typo.exists()


@pytest.mark.parametrize("argv", [["db", "upgrade", "--revision", "9999"], ["db", "upgrade", "--revision", "0008"],
                                  ["db", "downgrade", "9999"]])
def test_db_migrate_to_an_unknown_revision_names_it_and_the_known_ones(tmp_path: Path, capsys, argv) -> None:
    store = tmp_path / "attnmon.db"
    if argv[1] == "downgrade":
        migrate.upgrade(f"sqlite:///{store}")
    assert main([*argv, "--store", f"sqlite:///{store}"]) == 2
    line = one_error_line(capsys)
    assert f"{'--revision' if argv[1] == 'upgrade' else 'REV'}='{argv[-1]}'" in line, line
    assert "0001" in line and f"{migrate.head_revision()}" in line, line
    assert store.exists() == (argv[1] == "downgrade")  # (a typo leaves no empty store behind)


@pytest.mark.parametrize("since", ["0s", "9m"])
def test_rollback_check_refuses_a_since_too_short_for_any_verdict(small_store, capsys, since) -> None:
    url, _, _ = small_store
    assert main(["rollback-check", "--store", url, "--model", MODEL, "--since", since]) == 2
    assert f"--since='{since}': a verdict needs 10 minutes of the candidate's data: use 10m or more" \
        in one_error_line(capsys)


# -- 7. a store another process holds locked --------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["deploy", "mark", "--model", MODEL, "--version", "v3"],
    ["baseline", "unpin", "some-name"],
    ["alerts", "silence", "--match", "version=v2", "--for", "1h", "--comment", "x"],
])
def test_a_locked_store_is_one_line_not_a_traceback(sqlite_url: str, monkeypatch, capsys, argv) -> None:
    # a daemon (or a sqlite3 shell) holding the write lock past the busy timeout
    import sqlite3

    import monitor.store.engine as engine_mod

    monkeypatch.setattr(engine_mod, "SQLITE_BUSY_TIMEOUT_MS", 50)
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", MODEL, "--version", "v1"]) == 0
    capsys.readouterr()
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        code = main([*argv, "--store", sqlite_url])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = one_error_line(capsys)
    assert code == 2 and line.startswith(f"attnmon: error: store at {sqlite_url}: ") and "locked" in line


# -- 8. a baseline pinned on a window with no traffic ------------------------------------------


@pytest.mark.parametrize("version, start, end", [
    (None, "2020-01-01T00:00Z", "2020-01-02T00:00Z"),  # nothing of the model then
    ("v2", "-6m", "-3m"),  # v1's minutes: v2 served none of them
])
def test_baseline_pin_of_a_window_without_traffic_is_refused(small_store, capsys, version, start, end) -> None:
    # a pin wins over the trailing baseline: one of nothing leaves every series of the
    # model 'below min_samples', drift unevaluated without a word
    url, last, _ = small_store
    if start.startswith("-"):
        start = (last + timedelta(minutes=int(start[:-1]))).isoformat()
        end = (last + timedelta(minutes=int(end[:-1]))).isoformat()
    code = main(["baseline", "pin", "--store", url, "--model", MODEL, "--name", f"empty-{version}",
                 "--from", start, "--to", end, *(["--version", version] if version else [])])
    line = one_error_line(capsys)
    assert code == 2 and "no traffic" in line
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(t.pinned_baselines.c.name)).all() == []
    engine.dispose()


@pytest.mark.parametrize("name", ["", "x\ty", "*", "pin$__timeFrom()"])
def test_baseline_pin_refuses_a_name_that_is_no_label(small_store, capsys, name) -> None:
    # the name is stored as the baseline of every result and alert the pin judges
    url, last, _ = small_store
    code = main(["baseline", "pin", "--store", url, "--model", MODEL, "--name", name,
                 "--from", (last - timedelta(minutes=6)).isoformat(), "--to", last.isoformat()])
    line = one_error_line(capsys)
    assert code == 2 and f"--name={name!r}" in line, line
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(t.pinned_baselines.c.name)).all() == []
    engine.dispose()


def test_baseline_pin_of_a_window_not_over_yet_is_refused(small_store, capsys) -> None:
    # a pinned baseline is merged once, when a cycle first reads it, and kept: one that
    # ends in the future would hold the traffic up to then, not its window's
    url, last, _ = small_store
    code = main(["baseline", "pin", "--store", url, "--model", MODEL, "--name", "not-over",
                 "--from", (last - timedelta(minutes=6)).isoformat(), "--to", "now+1h"])
    line = one_error_line(capsys)
    assert code == 2 and "--to='now+1h'" in line and "future" in line


# -- 9. evaluating a window that has not closed yet --------------------------------------------


@pytest.mark.parametrize("argv", [["--at", "now+10m"], ["--from", "now-5m", "--to", "now+1h"]])
def test_evaluate_of_a_window_not_closed_yet_is_refused(sqlite_url: str, capsys, argv) -> None:
    # its results would come from part of its traffic, and the unique key keeps them:
    # the daemon's cycle of that window would then write nothing ("evaluated before")
    code = main(["evaluate", "--store", sqlite_url, *argv])
    line = one_error_line(capsys)
    assert code == 2 and f"{argv[-2]}={argv[-1]!r}" in line and "not closed" in line


def test_evaluate_up_to_now_is_still_allowed(sqlite_url: str, capsys) -> None:
    assert main(["evaluate", "--store", sqlite_url, "--at", "now"]) == 0
    assert main(["evaluate", "--store", sqlite_url, "--from", "now-3m", "--to", "now", "--format", "json"]) == 0
    capsys.readouterr()


# -- 10. a backfill over minutes rolled up into hours -----------------------------------------


def test_evaluate_over_rolled_up_hours_says_so(sqlite_url: str, capsys) -> None:
    # a window is read from minute rows only: over hour rows it found no series and said
    # "0 series evaluated, 0 below min_samples" as if nothing had been served
    end = datetime.fromtimestamp(stream(sqlite_url, [Segment("v1", 20)], rate=60, sample_rate=0), UTC)
    assert main(["maintain", "--store", sqlite_url, "--now", (end + timedelta(days=4)).isoformat()]) == 0
    capsys.readouterr()
    code = main(["evaluate", "--store", sqlite_url, "--from", (end - timedelta(minutes=5)).isoformat(),
                 "--to", end.isoformat()])
    line = one_error_line(capsys)
    assert code == 2 and "rolled up into hours" in line and "--from=" in line
    code = main(["evaluate", "--store", sqlite_url, "--at", end.isoformat()])
    assert code == 2 and "rolled up into hours" in one_error_line(capsys)


def test_baseline_list_json_times_are_iso_utc(small_store, capsys) -> None:
    # SQLite hands timestamps back naive: str() gave "2026-11-20 08:00:00", no zone, and
    # not the ISO form of every other command's JSON
    url, last, _ = small_store
    assert main(["baseline", "pin", "--store", url, "--model", MODEL, "--name", "listed",
                 "--from", (last - timedelta(minutes=6)).isoformat(), "--to", last.isoformat()]) == 0
    capsys.readouterr()
    assert main(["baseline", "list", "--store", url, "--format", "json"]) == 0
    [pin] = [p for p in json.loads(capsys.readouterr().out) if p["name"] == "listed"]
    assert datetime.fromisoformat(pin["window_start"]) == last - timedelta(minutes=6)
    assert datetime.fromisoformat(pin["window_end"]) == last
    assert datetime.fromisoformat(pin["created_at"]).utcoffset() == timedelta(0)


# -- 11. maintain in the future ----------------------------------------------------------------


@pytest.mark.parametrize("now", ["now+30d", "2999-01-01T00:00Z"])
def test_maintain_now_in_the_future_is_refused(sqlite_url: str, capsys, now: str) -> None:
    # retention counts back from --now: a year typed wrong deleted every drift result and
    # sampled event, and rolled up the minutes the daemon's windows read
    stream(sqlite_url, [Segment("v1", 2)], rate=60, sample_rate=0.5)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        events = conn.execute(select(func.count()).select_from(t.attention_events)).scalar_one()
    code = main(["maintain", "--store", sqlite_url, "--now", now])
    line = one_error_line(capsys)
    assert code == 2 and f"--now={now!r}" in line and "future" in line
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.attention_events)).scalar_one() == events > 0
    engine.dispose()


def test_baseline_pin_across_hours_rolled_up_must_be_whole_hours(sqlite_url: str, capsys) -> None:
    # a baseline merges the rows whose bucket starts in its window: over hour rows, one
    # from 08:30 to 09:30 held 09:00 to 10:00, without a word
    end = datetime.fromtimestamp(stream(sqlite_url, [Segment("v1", 90)], rate=20, sample_rate=0), UTC)
    assert main(["maintain", "--store", sqlite_url, "--now", (end + timedelta(days=4)).isoformat()]) == 0
    capsys.readouterr()
    start = datetime.fromtimestamp(START, UTC)  # 08:00, so the data ends at 09:30
    pin = ["baseline", "pin", "--store", sqlite_url, "--model", MODEL, "--name"]
    code = main([*pin, "half", "--from", (start + timedelta(minutes=30)).isoformat(),
                 "--to", (start + timedelta(minutes=90)).isoformat()])
    line = one_error_line(capsys)
    assert code == 2 and "rolled up into hours" in line and "08:00" in line and "10:00" in line
    assert main([*pin, "whole", "--from", start.isoformat(), "--to", (start + timedelta(hours=2)).isoformat()]) == 0


def test_deploy_mark_of_a_new_model_or_version_lists_what_was_there(sqlite_url: str, capsys) -> None:
    # a typo would otherwise become the newest deployment without a word
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v1", "--at", "now-2h"]) == 0
    assert capsys.readouterr().err == "note: m is a new model here (models so far: none)\n"
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v2", "--at", "now-1h"]) == 0
    assert capsys.readouterr().err == "note: v2 is a new version of m (before it: v1)\n"
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "mm", "--version", "v2"]) == 0
    assert capsys.readouterr().err == "note: mm is a new model here (models so far: m)\n"
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v2", "--at", "now-1h"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "(corrected)" in out.out


def test_deploy_mark_weights_id_alone_keeps_when_a_known_version_went_live(sqlite_url: str, capsys) -> None:
    # the README says to set a collector-registered version's weights with
    # `deploy mark --weights-id`: that must not move its deployment to now (its
    # previous_version baseline and 24 h would start again)
    went_live = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v1",
                 "--at", went_live.isoformat()]) == 0
    assert main(["deploy", "mark", "--store", sqlite_url, "--model", "m", "--version", "v1",
                 "--weights-id", "w7"]) == 0
    assert "deployed at 2026-11-20 08:00:00 UTC (corrected)" in capsys.readouterr().out
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        when, weights = conn.execute(select(t.deployments.c.deployed_at, t.deployments.c.weights_id)).one()
    engine.dispose()
    assert (when.replace(tzinfo=UTC) if when.tzinfo is None else when, weights) == (went_live, "w7")
