from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.config import Config, load_config
from monitor.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_env")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.store_url == "sqlite:///attnmon.db"
    assert config.collector.sample_rate == 0.01
    assert config.collector.queue_size == 10_000
    assert config.collector.flush_interval_s == 2.0
    assert config.collector.spill_dir is None
    assert config.collector.hash_item_ids is False
    assert config.collector.hash_key_env == "ATTNMON_HASH_KEY"
    assert config.collector.max_length == 4096
    assert config.collector.topk_items == 512
    assert config.collector.topk_attr_values == 128
    assert config.collector.late_grace_s == 5.0
    assert config.retention.events_days == 7
    assert config.retention.minute_aggregates_days == 3
    assert config.retention.write_batches_days == 14


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path / "custom.yaml",
        """
store_url: postgresql+psycopg://attnmon@db/attnmon
collector:
  sample_rate: 0.5
  spill_dir: /var/spool/attnmon
  hash_item_ids: true
retention:
  events_days: 1.5
""",
    )
    config = load_config(path, {})
    assert config.store_url == "postgresql+psycopg://attnmon@db/attnmon"
    assert config.collector.sample_rate == 0.5
    assert config.collector.spill_dir == "/var/spool/attnmon"
    assert config.collector.hash_item_ids is True
    assert config.collector.queue_size == 10_000  # untouched keys keep their defaults
    assert config.retention.events_days == 1.5


def test_reads_attnmon_yaml_in_working_directory_only_if_present(clean_env: Path) -> None:
    assert load_config(None, {}) == Config()
    write(clean_env / "attnmon.yaml", "collector:\n  queue_size: 7\n")
    assert load_config(None, {}).collector.queue_size == 7


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "a.yaml", "# nothing yet\n"), {}) == Config()


def test_precedence_defaults_file_environment_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.yaml",
        "store_url: sqlite:///file.db\ncollector:\n  sample_rate: 0.2\n  queue_size: 5\n",
    )
    env = {
        "ATTNMON_STORE_URL": "sqlite:///env.db",
        "ATTNMON_COLLECTOR__SAMPLE_RATE": "0.3",
        "ATTNMON_RETENTION__EVENTS_DAYS": "2",
    }
    config = load_config(path, env)
    assert config.store_url == "sqlite:///env.db"
    assert config.collector.sample_rate == 0.3  # env beats file
    assert config.collector.queue_size == 5  # file beats default
    assert config.retention.events_days == 2  # env fills a section the file left out
    assert config.collector.flush_interval_s == 2.0  # default

    config = load_config(path, env, overrides={"store_url": "sqlite:///cli.db"})
    assert config.store_url == "sqlite:///cli.db"
    # None means "not given on the command line"
    assert load_config(path, env, overrides={"store_url": None}).store_url == "sqlite:///env.db"


def test_environment_values_are_converted_and_other_variables_ignored() -> None:
    env = {
        "ATTNMON_COLLECTOR__HASH_ITEM_IDS": "true",
        "ATTNMON_COLLECTOR__QUEUE_SIZE": "42",
        "ATTNMON_COLLECTOR__SPILL_DIR": "",  # empty counts as unset
        "ATTNMON_HASH_KEY": "s3cret",  # a secret, not configuration
        "ATTNMON_TEST_PG_URL": "postgresql://x",
        "HOME": "/root",
    }
    config = load_config(None, env)
    assert config.collector.hash_item_ids is True
    assert config.collector.queue_size == 42
    assert config.collector.spill_dir is None


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNMON_COLLECTOR__LATE_GRACE_S", "0")
    assert load_config().collector.late_grace_s == 0


def test_every_bad_entry_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "attnmon.yaml",
        """
collector:
  sample_rate: 1.5
  queue_size: 0
  flush_interval_s: soon
  hash_item_ids: maybe
retention:
  events_days: -1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    err = info.value
    assert err.source == str(path)
    assert sorted(err.problems) == sorted(
        [
            ("collector.sample_rate", 1.5, "must be ≤ 1"),
            ("collector.queue_size", 0, "must be > 0"),
            ("collector.flush_interval_s", "soon", "must be a number"),
            ("collector.hash_item_ids", "maybe", "must be true or false"),
            ("retention.events_days", -1, "must be > 0"),
        ]
    )
    assert f"{path}: collector.sample_rate=1.5: must be ≤ 1" in str(err)
    assert "\n" not in str(err)


def test_unknown_keys_are_reported_with_their_path(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.yaml",
        "collector:\n  sampel_rate: 0.1\nalerts_typo:\n  x: 1\nstore_ulr: sqlite://\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    problems = {field: (value, msg) for field, value, msg in info.value.problems}
    assert problems == {
        "collector.sampel_rate": (0.1, "unknown key"),
        "alerts_typo": ("{x}", "unknown key"),  # a mapping by its keys: its values may be secrets
        "store_ulr": ("sqlite://", "unknown key"),
    }


def test_lists_and_mappings_from_the_environment_in_flow_style() -> None:
    env = {"ATTNMON_EVALUATE__METRICS": "[entropy_norm, top1]",
           "ATTNMON_EVALUATE__STATISTICS_BY_METRIC": "{top1: [psi, js]}"}
    config = load_config(None, env)
    assert config.evaluate.metrics == ["entropy_norm", "top1"]
    assert config.evaluate.statistics_for("top1") == ["psi", "js"]
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ATTNMON_EVALUATE__METRICS": "entropy_norm"})
    ((field, value, msg),) = info.value.problems
    assert (field, value) == ("evaluate.metrics", "entropy_norm")
    assert msg == "must be a list, e.g. [a, b] (from environment variable ATTNMON_EVALUATE__METRICS)"


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "collector:\n  queue_size: -3\n")
    env = {
        "ATTNMON_COLLECTOR__SAMPLE_RATE": "2",
        "ATTNMON_COLLECTOR__SAMPEL_RATE": "0.1",
        "ATTNMON_DEAMON__PORT": "9",
    }
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    problems = {field: (value, msg) for field, value, msg in info.value.problems}
    assert problems["collector.sample_rate"] == (
        "2",
        "must be ≤ 1 (from environment variable ATTNMON_COLLECTOR__SAMPLE_RATE)",
    )
    assert problems["collector.sampel_rate"] == (
        "(hidden)",  # it may be a secret: see the test below
        "unknown key (a secret's variable must not be named ATTNMON_<SECTION>__<KEY>) "
        "(from environment variable ATTNMON_COLLECTOR__SAMPEL_RATE)",
    )
    assert problems["deamon"][1] == "unknown key (from environment variable ATTNMON_DEAMON__PORT)"
    # the file's own error is still there, without an environment source
    assert problems["collector.queue_size"] == (-3, "must be > 0")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "collector:\n  sample_rate: 0.1\n  queue_size: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    [(field, _value, msg)] = info.value.problems
    assert field.startswith("line ")
    assert "YAML syntax error" in msg
    assert str(path) in str(info.value)

    path = write(tmp_path / "b.yaml", "collector:\n  sample_rate: : 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    [(field, value, _msg)] = info.value.problems
    assert field == "line 2, column 16"
    assert value == "sample_rate: : 1"


def test_duplicate_keys_are_errors_not_silently_last_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.yaml",
        "collector:\n  sample_rate: 0.1\n  sample_rate: 0.2\ncollector:\n  queue_size: -1\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert ("line 3", "sample_rate", "duplicate key") in info.value.problems
    assert ("line 4", "collector", "duplicate key") in info.value.problems
    assert ("collector.queue_size", -1, "must be > 0") in info.value.problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", ("(top level)", ["a", "b"], "must be a mapping of sections")),
        ("collector: 5\n", ("collector", 5, "must be a mapping of keys to values")),
        ("collector:\n  sample_rate: .nan\n", ("collector.sample_rate", None, None)),
    ],
)
def test_wrong_shapes(tmp_path: Path, text: str, problem: tuple) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "a.yaml", text), {})
    [(field, value, msg)] = info.value.problems
    assert field == problem[0]
    if problem[1] is not None:
        assert (value, msg) == problem[1:]


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.yaml", {})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("::not a url::", "not a SQLAlchemy URL"),
        ("nosuchdb://host/db", "unknown database dialect 'nosuchdb'"),
    ],
)
def test_bad_store_url_names_store_url(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ATTNMON_STORE_URL": url})
    [(field, value, msg)] = info.value.problems
    assert (field, value) == ("store_url", url)
    assert message in msg
    assert "ATTNMON_STORE_URL" in msg


def test_store_url_of_every_supported_backend_is_accepted() -> None:
    for url in (
        "sqlite://",
        "sqlite:////var/lib/attnmon/attnmon.db",
        "postgresql+psycopg://u:p@host:5432/db",
        "postgresql://host/db",
    ):
        assert load_config(None, {"ATTNMON_STORE_URL": url}).store_url == url


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_sample_rate_from_environment_bounds(rate: float) -> None:
    env = {"ATTNMON_COLLECTOR__SAMPLE_RATE": repr(rate)}
    if 0 <= rate <= 1:
        assert load_config(None, env).collector.sample_rate == rate
    else:
        with pytest.raises(ConfigError, match="collector.sample_rate"):
            load_config(None, env)


def test_config_is_immutable() -> None:
    config = Config()
    with pytest.raises(ValueError):
        config.collector.sample_rate = 0.5  # type: ignore[misc]
    assert config.model_copy(update={"store_url": "sqlite://"}).store_url == "sqlite://"


def test_statistics_by_metric_is_lean_by_default_and_yields_to_statistics_set_alone(tmp_path: Path) -> None:
    lean = load_config(env={}).evaluate
    assert lean.statistics_for("entropy_norm") == ["mean", "delta", "psi"]
    assert lean.statistics_for("top1") == lean.statistics_for("gini") == ["psi"]
    # who sets statistics gets them on every metric
    path = tmp_path / "attnmon.yaml"
    path.write_text("evaluate:\n  statistics: [mean, js]\n")
    assert load_config(path, env={}).evaluate.statistics_for("top1") == ["mean", "js"]
    # both set: the per-metric choice wins where it names the metric
    path.write_text("evaluate:\n  statistics: [mean]\n  statistics_by_metric: {gini: [psi]}\n")
    both = load_config(path, env={}).evaluate
    assert both.statistics_for("gini") == ["psi"] and both.statistics_for("top1") == ["mean"]
    path.write_text("evaluate:\n  statistics_by_metric: {colour: [psi]}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config(path, env={})


def test_a_secret_written_inline_is_never_printed_back(tmp_path: Path) -> None:
    """Refused with how to name it; and a missing field beside it (whose pydantic input is
    the mapping around it) does not print it either."""
    inline = "    - {name: pd, pagerduty: {routing_key: R0UT1NGKEY}}\n"
    beside = "    - name: mail\n      email: {host: smtp, from: a@b, username: u, password: HUNTER2}\n"
    path = write(tmp_path / "a.yaml", "alerts:\n  receivers:\n" + inline + beside)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "R0UT1NGKEY" not in str(info.value) and "HUNTER2" not in str(info.value)
    hidden = ("(hidden)", "a secret is named, never written here: {env: VARIABLE} or {file: PATH}")
    problems = {field: (value, msg) for field, value, msg in info.value.problems}
    assert problems == {"alerts.receivers.0.pagerduty.routing_key": hidden,
                        "alerts.receivers.1.email.password": hidden,
                        "alerts.receivers.1.email.to": ("(missing)", "Field required")}


@pytest.mark.parametrize(
    ("var", "blocked"),
    [
        ("ATTNMON_ALERTS__RECEIVERS__0__WEBHOOK__URL", "alerts.receivers"),  # a list in the file
        ("ATTNMON_COLLECTOR__SPILL_DIR__PATH", "collector.spill_dir"),  # a value in the file
    ],
)
def test_a_variable_reaching_inside_a_list_or_value_of_the_file_is_an_error_not_ignored(
    tmp_path: Path, var: str, blocked: str
) -> None:
    path = write(
        tmp_path / "a.yaml",
        "collector:\n  spill_dir: /var/spool/attnmon\n"
        "alerts:\n  receivers:\n    - name: oncall\n      webhook: {url: http://hooks.internal/x}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {var: "http://other"})
    ((field, value, msg),) = info.value.problems
    assert field == ".".join(k.lower() for k in var.removeprefix("ATTNMON_").split("__"))
    assert value == "http://other"
    assert var in msg and blocked in msg and "as a whole" in msg


@pytest.mark.parametrize("listen", ["9464", "localhost", "127.0.0.1:99999", "127.0.0.1:http", ""])
def test_a_listen_address_the_daemon_cannot_bind_is_a_config_error_for_every_command(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path / "a.yaml", f"daemon:\n  listen: '{listen}'\ncollector:\n  sample_rate: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    problems = {field: (value, msg) for field, value, msg in info.value.problems}
    assert problems["daemon.listen"] == (listen, "expected HOST:PORT, a port from 0 to 65535 (e.g. 127.0.0.1:9464)")
    assert "collector.sample_rate" in problems  # all at once


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "0.0.0.0:0", ":9464", "[::1]:9464"])
def test_listen_addresses_that_bind_are_accepted(listen: str) -> None:
    assert load_config(None, {"ATTNMON_DAEMON__LISTEN": listen}).daemon.listen == listen


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("ATTNMON_RETENTION__EVENTS_DAYS", "1e6", "retention.events_days"),  # "keep forever"
        ("ATTNMON_RETENTION__DRIFT_RESULTS_DAYS", "1e10", "retention.drift_results_days"),
        ("ATTNMON_EVALUATE__WINDOW_MINUTES", "100000000000", "evaluate.window_minutes"),
        ("ATTNMON_EVALUATE__LAG_MINUTES", "100000000000", "evaluate.lag_minutes"),
        ("ATTNMON_DAEMON__LEASE_S", "1e10", "daemon.lease_s"),
        ("ATTNMON_DAEMON__STATEMENT_TIMEOUT_S", "3e6", "daemon.statement_timeout_s"),  # > 2^31-1 ms
        ("ATTNMON_DAEMON__LOCK_TIMEOUT_S", "3e6", "daemon.lock_timeout_s"),
        ("ATTNMON_COLLECTOR__WRITE_TIMEOUT_S", "3e6", "collector.write_timeout_s"),
    ],
)
def test_durations_the_jobs_cannot_use_are_config_errors(var: str, value: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {var: value})
    ((where, given, msg),) = info.value.problems
    assert (where, given) == (field, value)
    assert msg.startswith("must be ≤ ")


def test_the_largest_retention_and_timeouts_accepted_still_work(sqlite_url: str, capsys, monkeypatch) -> None:
    from monitor.cli import main

    for var, value in [("ATTNMON_RETENTION__EVENTS_DAYS", "36500"), ("ATTNMON_RETENTION__DRIFT_RESULTS_DAYS", "36500"),
                       ("ATTNMON_RETENTION__MINUTE_AGGREGATES_DAYS", "36500"),
                       ("ATTNMON_RETENTION__WRITE_BATCHES_DAYS", "36500"),
                       ("ATTNMON_EVALUATE__WINDOW_MINUTES", str(36500 * 1440))]:
        monkeypatch.setenv(var, value)
    assert main(["maintain", "--store", sqlite_url]) == 0
    assert main(["evaluate", "--store", sqlite_url]) == 0


def test_a_secret_in_a_variable_shaped_like_a_setting_is_never_printed() -> None:
    # a receiver's key, named `{env: ATTNMON_ALERTS__PAGERDUTY_KEY}` in the file
    env = {"ATTNMON_ALERTS__PAGERDUTY_KEY": "R0UT1NGKEY-sekrit"}
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    assert "R0UT1NGKEY" not in str(info.value)
    ((field, value, msg),) = info.value.problems
    assert (field, value) == ("alerts.pagerduty_key", "(hidden)")
    assert "ATTNMON_ALERTS__PAGERDUTY_KEY" in msg


def test_a_secret_in_a_variable_shaped_like_a_setting_never_reaches_stderr(monkeypatch, capsys) -> None:
    from monitor.cli import main

    monkeypatch.setenv("ATTNMON_ALERTS__PAGERDUTY_KEY", "R0UT1NGKEY-sekrit")
    assert main(["db", "current", "--store", "sqlite://"]) == 2
    err = capsys.readouterr().err
    assert "unknown key" in err and "R0UT1NGKEY" not in err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://attnmon:Sup3rSecret@db:5432/attnmon", "unknown database dialect 'postgres' (PostgreSQL: "),
        ("postgresql+nodriver://attnmon:Sup3rSecret@db/attnmon", "unknown database dialect"),
        ("postgresql+psycopg://attnmon:Sup3rSecret@db:notaport/attnmon", "not a SQLAlchemy URL"),
    ],
)
def test_a_bad_store_url_is_reported_without_its_password(url: str, message: str, capsys) -> None:
    from monitor.cli import main

    with pytest.raises(ConfigError) as info:
        load_config(None, {"ATTNMON_STORE_URL": url})
    [(field, value, msg)] = info.value.problems
    assert field == "store_url" and "Sup3rSecret" not in str(info.value)
    assert value == url.replace("Sup3rSecret", "***")
    assert message in msg
    assert main(["db", "current", "--store", url]) == 2
    assert "Sup3rSecret" not in capsys.readouterr().err


def test_repr_and_str_of_a_config_hide_the_store_password() -> None:
    """A config in a log line, a traceback with locals or a notebook shows the store, not its password."""
    config = load_config(None, {"ATTNMON_STORE_URL": "postgresql+psycopg://attnmon:Sup3rSecret@db/attnmon"})
    for shown in (repr(config), str(config)):
        assert "Sup3rSecret" not in shown and "postgresql+psycopg://attnmon:***@db/attnmon" in shown
    assert config.store_url.endswith(":Sup3rSecret@db/attnmon")  # the value itself is intact


def test_null_in_the_environment_unsets_a_field_that_may_be_null(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "collector:\n  spill_dir: /var/spool/attnmon\n  worker:\n    hang_after_s: 30\n"
                                      "grafana:\n  url: https://grafana.internal\n  dashboard_uid: abc\n")
    env = {"ATTNMON_COLLECTOR__SPILL_DIR": "null", "ATTNMON_COLLECTOR__WORKER__HANG_AFTER_S": "NULL",
           "ATTNMON_GRAFANA__DASHBOARD_UID": " null "}
    config = load_config(path, env)
    assert config.collector.spill_dir is None  # (it was the folder "null")
    assert config.collector.worker.hang_after_s is None  # (it was "must be a number")
    assert config.grafana.dashboard_uid is None


def test_null_in_the_environment_for_a_field_that_cannot_be_null_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "collector:\n  queue_size: 5\n")
    env = {"ATTNMON_COLLECTOR__QUEUE_SIZE": "null", "ATTNMON_COLLECTOR__HASH_KEY_ENV": "null",
           "ATTNMON_EVALUATE__STATISTICS_BY_METRIC": "null", "ATTNMON_COLLECTOR__SAMPEL_RATE": "null"}
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    problems = {field: (value, msg) for field, value, msg in info.value.problems}
    unset = ("cannot be null; to use the file's value or the default, unset the variable or leave it empty "
             "(from environment variable {})")
    assert problems == {
        "collector.queue_size": ("null", unset.format("ATTNMON_COLLECTOR__QUEUE_SIZE")),
        "collector.hash_key_env": ("null", unset.format("ATTNMON_COLLECTOR__HASH_KEY_ENV")),
        "evaluate.statistics_by_metric": ("null", unset.format("ATTNMON_EVALUATE__STATISTICS_BY_METRIC")),
        # no such field: said as for any other value
        "collector.sampel_rate": ("(hidden)", "unknown key (a secret's variable must not be named "
                                  "ATTNMON_<SECTION>__<KEY>) (from environment variable ATTNMON_COLLECTOR__SAMPEL_RATE)"),
    }
