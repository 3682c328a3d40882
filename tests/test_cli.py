from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import db_current, main
from monitor.config import Config
from monitor.store import migrate

pytestmark = pytest.mark.usefixtures("clean_env")


def stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert err.startswith("attnmon: error: ")
    return err.strip()


def test_upgrade_then_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["db", "current", "--store", url]) == 0
    assert capsys.readouterr().out == f"{url}: none (no file {tmp_path / 'store.db'}) (head is 0007)\n"
    assert not (tmp_path / "store.db").exists()  # (it used to be left there, empty)

    assert main(["db", "upgrade", "--store", url]) == 0
    assert capsys.readouterr().out == f"store at {url}: upgraded none → 0007 (head)\n"
    assert main(["db", "upgrade", "--store", url]) == 0
    assert capsys.readouterr().out == f"store at {url}: already at 0007 (head)\n"

    # global options are accepted before the command too
    assert main(["--store", url, "db", "current"]) == 0
    assert capsys.readouterr().out == f"{url}: 0007 (head)\n"


def test_current_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["db", "current", "--store", url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "store": url,
        "revision": None,
        "head": "0007",
        "is_head": False,
        "exists": False,
    }
    migrate.upgrade(url)
    assert main(["db", "current", "--format", "json", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out)["is_head"] is True


def test_downgrade_and_check(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "check", "--store", sqlite_url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "store": sqlite_url,
        "revision": "0007",
        "ok": True,
    }

    assert main(["db", "downgrade", "base", "--store", sqlite_url]) == 0
    assert "downgraded 0007 → none" in capsys.readouterr().out
    assert migrate.current(sqlite_url) is None

    assert main(["db", "check", "--store", sqlite_url]) == 2
    assert "run `attnmon db upgrade`" in stderr_line(capsys)


def test_store_from_environment_then_config_file(
    clean_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from_file = f"sqlite:///{tmp_path / 'file.db'}"
    (clean_env / "attnmon.yaml").write_text(f"store_url: {from_file}\n")
    assert main(["db", "current"]) == 0
    assert capsys.readouterr().out.startswith(f"{from_file}:")

    from_env = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("ATTNMON_STORE_URL", from_env)
    assert main(["db", "current"]) == 0
    assert capsys.readouterr().out.startswith(f"{from_env}:")

    from_flag = f"sqlite:///{tmp_path / 'flag.db'}"
    assert main(["db", "current", "--store", from_flag]) == 0
    assert capsys.readouterr().out.startswith(f"{from_flag}:")


def test_bad_config_is_one_line_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("collector:\n  sample_rate: 1.5\n  queue_size: -1\n")
    assert main(["db", "current", "--config", str(config)]) == 2
    line = stderr_line(capsys)
    assert f"{config}: collector.sample_rate=1.5: must be ≤ 1" in line
    assert "collector.queue_size=-1: must be > 0" in line


def test_unknown_store_dialect(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "current", "--store", "oracle9://scott@db/orcl"]) == 2
    line = stderr_line(capsys)
    assert "store_url='oracle9://scott@db/orcl'" in line
    assert "unknown database dialect 'oracle9'" in line
    assert "command line" in line


def test_store_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing" / "store.db"
    assert main(["db", "upgrade", "--store", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in stderr_line(capsys)

    # a driver message over several lines still prints as one
    assert main(["db", "current", "--store", "postgresql+psycopg://u:pw@127.0.0.1:1/x"]) == 2
    line = stderr_line(capsys)
    assert "u:***@127.0.0.1:1" in line and ":pw@" not in line


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing" / "store.db"
    assert main(["--debug", "db", "current", "--store", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("attnmon: error: ")


@pytest.mark.parametrize(
    "argv",
    [[], ["db"], ["nope"], ["db", "downgrade"], ["db", "current", "--format", "xml"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "--help"]) == 0
    out = capsys.readouterr().out
    for command in ("upgrade", "downgrade", "current", "check"):
        assert command in out


def test_commands_are_plain_functions(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert db_current(Config(store_url=sqlite_url), fmt="json") == 0
    assert json.loads(capsys.readouterr().out)["revision"] == "0007"


def test_python_dash_m_monitor_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: attnmon")
    assert "db" in done.stdout and "--store URL" in done.stdout


def test_a_reader_that_stops_early_gets_no_traceback(sqlite_url: str) -> None:
    # `attnmon alerts list | head -1`: the pipe is closed before attnmon writes
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "db", "current", "--store", sqlite_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "option", "allowed"),
    [
        (["alerts", "list", "--resolved-within", "100000000d"], "--resolved-within", "at most 36,500d"),
        (["alerts", "list", "--resolved-within", "99999999999d"], "--resolved-within", "at most 36,500d"),
        (["alerts", "silence", "--match", "model=m", "--for", "100000000d", "--comment", "x"], "--for",
         "at most 36,500d"),
        (["rollback-check", "--model", "m", "--since", "100000000d"], "--since", "at most 36,500d"),
        (["rollback-check", "--model", "m", "--since", "1e300d"], "--since", "at most 36,500d"),
        (["rollback-check", "--model", "m", "--recent", "100000000d"], "--recent", "at most 36,500d"),
        (["rollback-check", "--model", "m", "--now", "9999-12-31"], "--now", "from 1970-01-01 to 9000-01-01"),
        (["maintain", "--now", "0001-01-01"], "--now", "from 1970-01-01 to 9000-01-01"),
        (["evaluate", "--at", "0001-01-01T00:00Z"], "--at", "from 1970-01-01 to 9000-01-01"),
        (["evaluate", "--at", "0001-01-01T00:00+05:00"], "--at", "from 1970-01-01 to 9000-01-01"),
        (["evaluate", "--at", "now-100000000d"], "--at", "at most 36,500d"),
        (["forget-items", "--before", "0001-01-01"], "--before", "from 1970-01-01 to 9000-01-01"),
        (["dashboards", "annotate", "--grafana-url", "http://127.0.0.1:9", "--days", "1e10"], "--days",
         "at most 36,500"),
    ],
)
def test_a_time_or_duration_past_the_calendar_names_the_option_and_the_range(
    sqlite_url: str, argv: list[str], option: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--store", sqlite_url]) == 2
    line = stderr_line(capsys)
    assert f"{option}=" in line and allowed in line, line


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import monitor.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_config", interrupted)  # wherever a command is when it lands
    assert main(["db", "current", "--store", "sqlite:///x.db"]) == 130
    err = capsys.readouterr().err
    assert err == "attnmon: interrupted\n"


def test_a_second_pin_of_a_model_says_it_replaces_the_first(sqlite_url: str, capsys) -> None:
    # the newest active pin is the model's baseline; the older one stays listed, and
    # `baseline list` called both 'active' as if both were used
    from datetime import UTC, datetime, timedelta

    from monitor.demo import Segment, stream

    end = datetime.fromtimestamp(stream(sqlite_url, [Segment("v1", 4)], rate=60), UTC)
    window = ["--from", (end - timedelta(minutes=4)).isoformat(), "--to", end.isoformat()]
    store = ["--store", sqlite_url, "--model", "demo-sasrec"]
    assert main(["baseline", "pin", *store, "--name", "first", *window]) == 0
    assert "replaces" not in capsys.readouterr().err
    assert main(["baseline", "pin", *store, "--name", "second", *window]) == 0
    err = capsys.readouterr().err
    assert "note: 'second' replaces 'first' as demo-sasrec's baseline" in err, err
    assert main(["baseline", "list", "--store", sqlite_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "\tactive (replaced by 'second')\t" in lines[0] and "\tactive\t" in lines[1], lines
    assert main(["baseline", "list", "--store", sqlite_url, "--format", "json"]) == 0
    pins = json.loads(capsys.readouterr().out)
    assert [(p["name"], p["active"], p["in_use"]) for p in pins] == [("first", True, False), ("second", True, True)]


def test_version_prints_the_installed_distributions_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"attnmon {version('attention-monitor')}\n"


def test_version_from_a_source_tree_without_metadata_reads_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import tomllib

    from monitor import version as v

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    declared = tomllib.loads((Path(v.__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert v.version() == f"{declared} (source tree, not installed)"
    monkeypatch.setattr(v, "PYPROJECT", Path("/nonexistent/pyproject.toml"))
    assert v.version() == "unknown (not installed)"
