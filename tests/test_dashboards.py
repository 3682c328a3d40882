"""Dashboards as code: Grafana's interpolation reproduced, the JSON model, the export,
the read-only role's script. (The queries themselves run in test_dashboards_sql.py and
tests/postgres/test_dashboards_pg.py; push and annotations in test_dashboards_grafana.py.)
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from alerts.rules import load_rules
from dashboards.catalog import dashboards
from dashboards.common import like_glob
from dashboards.grafana import to_json
from dashboards.role import granted_tables, readonly_role_sql
from dashboards.sql import Context, MacroError, expand, format_interval, go_float, parse_interval
from monitor.cli import main
from monitor.store import tables

FROM = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
TO = datetime(2026, 11, 20, 10, 30, 15, 250000, tzinfo=UTC)
CTX = Context(FROM, TO, {"model": "rec", "version": ["v1", "v2"], "who": "O'Brien"},
              frozenset({"version"}), timedelta(minutes=5))
UIDS = ["attnmon-overview", "attnmon-heads", "attnmon-items", "attnmon-versions", "attnmon-health"]


# -- Grafana's interpolation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # macros.go, case by case
        ("$__timeFilter(ts)", "ts BETWEEN '2026-11-20T08:00:00Z' AND '2026-11-20T10:30:15.25Z'"),
        ("$__timeFrom()", "'2026-11-20T08:00:00Z'"),
        ("$__timeTo()", "'2026-11-20T10:30:15.25Z'"),
        ("$__time(ts)", 'ts AS "time"'),
        ("$__timeEpoch(ts)", 'extract(epoch from ts) as "time"'),
        ("$__timeGroup(ts,'5m')", "floor(extract(epoch from ts)/300)*300"),
        ("$__timeGroup(ts, '1h', NULL)", "floor(extract(epoch from ts)/3600)*3600"),
        ("$__timeGroupAlias(ts,'5m')", 'floor(extract(epoch from ts)/300)*300 AS "time"'),
        # the pre-5.3 form: directly followed by a comma, it means the alias
        ("SELECT $__timeGroup(ts,'5m'), x", 'SELECT floor(extract(epoch from ts)/300)*300 AS "time", x'),
        ("$__unixEpochFilter(t)", "t >= 1795161600 AND t <= 1795170615"),
        ("$__unixEpochFrom() $__unixEpochTo()", "1795161600 1795170615"),
        ("$__unixEpochGroupAlias(t, '1m')", 'floor((t)/60)*60 AS "time"'),
        ("$__timeGroupAlias(ts, $__interval)", 'floor(extract(epoch from ts)/300)*300 AS "time"'),
        ("x * $__interval_ms", "x * 300000"),
        # template variables as the SQL datasources' interpolateVariable formats them
        ("model = '$model'", "model = 'rec'"),
        ("model = '${model}' OR model = '[[model]]'", "model = 'rec' OR model = 'rec'"),
        ("who = '$who'", "who = 'O''Brien'"),
        ("version IN ($version)", "version IN ('v1','v2')"),
        ("'${version:csv}'", "'v1,v2'"),
        ("IN (${version:sqlstring})", "IN ('v1','v2')"),
        ("$unknown stays, $__timeFromX too", "$unknown stays, $__timeFromX too"),
    ],
)
def test_expand_as_grafana(sql: str, expected: str) -> None:
    assert expand(sql, CTX) == expected


def test_macro_errors_as_grafana() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        expand("$__nope(x)", CTX)
    with pytest.raises(MacroError, match="interval"):
        expand("$__timeGroup(ts, 'five minutes')", CTX)
    with pytest.raises(MacroError, match="needs"):
        expand("$__timeFilter()", CTX)


def test_go_number_and_interval_formats() -> None:
    assert [go_float(x) for x in (60, 300.0, 0.5, 86400, 604800, 1e6, 31536000)] == [
        "60", "300", "0.5", "86400", "604800", "1e+06", "3.1536e+07"]
    assert [format_interval(timedelta(seconds=s)) for s in (0.2, 30, 90, 3600, 86400 * 2)] == [
        "200ms", "30s", "1m", "1h", "2d"]
    assert parse_interval("1h30m") == timedelta(minutes=90) and parse_interval("'5m'") == timedelta(minutes=5)


def test_sqlite_dialect_filters_and_groups_like_postgresql() -> None:
    """The SQLite twin of the macros works on SQLAlchemy's text timestamps."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (ts TEXT, v REAL)")
    rows = [((FROM + timedelta(minutes=m)).strftime("%Y-%m-%d %H:%M:%S.%f"), m) for m in range(-5, 200, 3)]
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    sql = expand("SELECT $__timeGroupAlias(ts, '30m'), COUNT(*) AS n, MIN(v) AS v FROM t "
                 "WHERE $__timeFilter(ts) GROUP BY 1 ORDER BY 1", CTX, "sqlite")
    got = db.execute(sql).fetchall()
    start = int(FROM.timestamp())
    assert [t - start for t, _, _ in got] == [0, 1800, 3600, 5400, 7200]  # rows to minute 148
    assert sum(n for _, n, _ in got) == len([m for _, m in rows if 0 <= m <= 150])
    assert db.execute(expand("SELECT $__timeFrom() < $__timeTo()", CTX, "sqlite")).fetchone() == (1,)
    # epoch seconds: integer division, as SQLite has floor() only when built with its math functions
    epoch = expand("SELECT $__unixEpochGroupAlias(e, '5m') FROM (SELECT 1795161899 AS e)", CTX, "sqlite")
    assert "floor" not in epoch and db.execute(epoch).fetchone() == (1795161600,)


def test_like_glob() -> None:
    assert like_glob("statistic", "psi.entropy_norm") == "statistic = 'psi.entropy_norm'"
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE r (statistic TEXT)")
    db.executemany("INSERT INTO r VALUES (?)", [("mover.attr.brand",), ("mover_attr_x",), ("js.attr.brand",)])
    hits = db.execute(f"SELECT statistic FROM r WHERE {like_glob('statistic', 'mover.attr.*')}").fetchall()
    assert hits == [("mover.attr.brand",)]


@pytest.mark.parametrize("pattern", ["[*]", "!retrain", "!prev*", "*_*", "x[*]?", "it's", "[?]", "!!x", "!",
                                     ["!retrain", "!previous_version"], ["trailing", "x*"], ["x*", "!x"],
                                     ["[*]", "a_b", "!a*"]])
def test_like_glob_selects_what_the_rules_select(pattern: str | list[str]) -> None:
    from alerts.globs import label_matches

    values = ["*", "2", "retrain", "previous_version", "trailing", "x*y", "x*", "it's", "?", "a_b", "ab", "!x", "x", ""]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE r (v TEXT)")
    db.executemany("INSERT INTO r VALUES (?)", [(v,) for v in values])
    hits = {v for (v,) in db.execute(f"SELECT v FROM r WHERE {like_glob('v', pattern)}")}
    assert hits == {v for v in values if label_matches(v, pattern)}


# -- the JSON model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return {d.uid: to_json(d) for d in dashboards()}


def test_five_dashboards_with_stable_uids(models) -> None:
    assert list(models) == UIDS
    for uid, m in models.items():
        assert m["uid"] == uid and len(uid) <= 40 and m["title"].startswith("attnmon · ")
        assert m["tags"] == ["attnmon"] and m["schemaVersion"] >= 39
        assert m["time"]["to"] == "now" and "id" not in m
    assert to_json(dashboards()[0]) == models["attnmon-overview"]  # deterministic


def test_panels_read_the_store_through_its_datasource(models) -> None:
    for uid, m in models.items():
        ids = [p["id"] for p in m["panels"]]
        assert len(set(ids)) == len(ids), uid
        cells: set[tuple[int, int]] = set()
        for p in m["panels"]:
            assert p["datasource"] == {"type": "grafana-postgresql-datasource", "uid": "attnmon-pg"}
            g = p["gridPos"]
            assert 1 <= g["w"] <= 24 and g["x"] + g["w"] <= 24 and g["h"] > 0, (uid, p["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{uid}: {p['title']} overlaps"
            cells |= mine
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert {"refId", "rawSql", "format"} <= set(t) and t["rawQuery"] and t["editorMode"] == "code"
                assert t["format"] == ("table" if p["type"] in ("table", "stat") else "time_series")
                # (freshness: the newest row up to the range's end, one index probe a model)
                assert "$__timeFilter(" in t["rawSql"] or p["title"].startswith(
                    ("Alerts", "Firing", "Daemon", "Seconds since"))
            if p["type"] in ("timeseries", "heatmap"):
                assert p["interval"] == "1m"  # never finer than the store's minutes
            if p["type"] == "heatmap":
                assert p["options"]["calculate"] is False
                assert p["options"]["rowsFrame"]["layout"] == "unknown"


def test_template_variables(models) -> None:
    names = {uid: [v["name"] for v in m["templating"]["list"]] for uid, m in models.items()}
    for uid in ("attnmon-overview", "attnmon-heads", "attnmon-items"):
        assert names[uid] == ["model", "version", "cohort", "layer", "head"]
    assert names["attnmon-versions"] == ["model", "candidate", "baseline", "cohort", "layer", "head"]
    assert names["attnmon-health"] == ["model"]
    version = models["attnmon-overview"]["templating"]["list"][1]
    assert version["multi"] and version["includeAll"] and version["current"]["value"] == "$__all"
    for m in models.values():
        for v in m["templating"]["list"]:
            assert v["type"] == "query" and v["datasource"]["uid"] == "attnmon-pg" and v["query"].startswith("SELECT")


def test_deployments_and_alerts_are_annotations(models) -> None:
    for uid, m in models.items():
        names = [a["name"] for a in m["annotations"]["list"]]
        assert names[0] == "Annotations & Alerts"
        if uid != "attnmon-health":
            assert "Deployments" in names
    overview = {a["name"]: a for a in models["attnmon-overview"]["annotations"]["list"]}
    assert "FROM deployments" in overview["Deployments"]["target"]["rawSql"]
    assert "FROM alerts" in overview["Alerts (fired → resolved)"]["target"]["rawSql"]


def test_overview_draws_each_rule_threshold(models) -> None:
    panels = {p["title"]: p for p in models["attnmon-overview"]["panels"]}
    stored = [r for r in load_rules() if not r.statistic.startswith("health.")]
    assert len(stored) >= 7
    for rule in stored:
        [p] = [p for t, p in panels.items() if t.startswith(rule.name + ":")]
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, rule.threshold]
        assert steps[1]["color"] == ("green" if rule.op.startswith("<") else "red")
        assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
        sql = p["targets"][0]["rawSql"]
        assert f"n_current >= {rule.min_samples}" in sql
        for label, value in rule.match.items():
            assert like_glob(label, value) in sql
    # the health rules' thresholds are drawn on the health dashboard
    health = {p["title"]: p for p in models["attnmon-health"]["panels"]}
    steps = health["Share of input rejected"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[1]["value"] == next(r.threshold for r in load_rules() if r.statistic == "health.rejected_ratio")


def test_custom_rules_file_moves_the_lines(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: Mine, statistic: js.top1, op: '>', threshold: 0.3}\n")
    [overview, *_] = dashboards(path)
    drift = [p for p in overview.panels if p.key.startswith("drift-")]
    assert [(p.key, p.thresholds[0].value) for p in drift] == [("drift-Mine", 0.3)]


# -- export and the read-only role ------------------------------------------------------------


def test_export_writes_dashboards_and_provisioning(tmp_path: Path, capsys) -> None:
    out = tmp_path / "grafana"
    args = ["dashboards", "export", "--out", str(out), "--db-url",
            "postgresql+psycopg://admin:secret@db.internal:5433/monitor", "--sslmode", "verify-full",
            "--store", f"sqlite:///{tmp_path / 'x.db'}"]
    assert main(args) == 0
    listed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in listed) == sorted(
        [f"{u}.json" for u in UIDS] + ["attnmon.yaml", "attnmon.yaml", "readonly_role.sql"])
    for uid in UIDS:
        assert json.loads((out / "dashboards" / f"{uid}.json").read_text()) == to_json(
            next(d for d in dashboards() if d.uid == uid))
    ds_text = (out / "provisioning/datasources/attnmon.yaml").read_text()
    assert "secret" not in ds_text and "admin" not in ds_text  # the store's own credentials stay out
    [ds] = yaml.safe_load(ds_text)["datasources"]
    assert ds["type"] == "grafana-postgresql-datasource" and ds["uid"] == "attnmon-pg" and ds["access"] == "proxy"
    assert ds["url"] == "db.internal:5433" and ds["user"] == "attnmon_grafana"
    assert ds["jsonData"]["database"] == "monitor" and ds["jsonData"]["sslmode"] == "verify-full"
    assert ds["secureJsonData"] == {"password": "${ATTNMON_GRAFANA_DB_PASSWORD}"}
    provider = yaml.safe_load((out / "provisioning/dashboards/attnmon.yaml").read_text())
    assert provider["apiVersion"] == 1
    [p] = provider["providers"]
    assert p["type"] == "file" and p["folderUid"] == "attnmon"
    assert p["options"]["path"] == "/var/lib/grafana/dashboards/attnmon"


def test_export_without_postgresql_leaves_host_to_grafana_env(tmp_path: Path, capsys) -> None:
    assert main(["dashboards", "export", "--out", str(tmp_path), "--store", f"sqlite:///{tmp_path / 'x.db'}"]) == 0
    [ds] = yaml.safe_load((tmp_path / "provisioning/datasources/attnmon.yaml").read_text())["datasources"]
    assert ds["url"] == "${ATTNMON_GRAFANA_DB_HOST}"
    assert main(["dashboards", "export", "--out", str(tmp_path), "--db-url", "sqlite:///x.db"]) == 2
    assert "PostgreSQL" in capsys.readouterr().err


def test_role_script_renders_psql_variables() -> None:
    sql = readonly_role_sql('ro"le', "it's", "mon")
    assert not re.search(r":'\w+'|:\"\w+\"", sql)
    assert """ALTER ROLE "ro""le" WITH PASSWORD 'it''s';""" in sql
    assert "set_config('attnmon.readonly_role', 'ro\"le', false)" in sql
    assert "set_config('attnmon.readonly_schema', 'mon', false)" in sql


def test_role_reads_what_the_dashboards_read_and_no_more() -> None:
    known = {t.name for t in tables.metadata.sorted_tables}
    used: set[str] = set()
    for board in dashboards():
        sqls = [v.query for v in board.variables] + [a.sql for a in board.annotations]
        sqls += [q.sql for p in board.panels for q in p.queries]
        for sql in sqls:
            used |= set(re.findall(r"\bFROM\s+(\w+)", sql)) & known
    granted = set(granted_tables())
    assert used and used <= granted
    # raw user histories and internal sketches are never Grafana's to read
    assert not granted & {"attention_events", "baseline_sketches", "write_batches", "alembic_version"}
    assert granted <= known


def test_cli_imports_stay_light() -> None:
    code = ("import sys, monitor.cli; monitor.cli.build_parser(); "
            "print(sorted(m for m in ('grafana_foundation_sdk', 'grafana_client', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_position_profile_is_a_heatmap_of_labelled_bands(models) -> None:
    from monitor.store import positions

    panels = {p["title"].split(":")[0]: p for p in models["attnmon-heads"]["panels"]}
    p = panels["Position profile"]
    assert p["type"] == "heatmap" and p["options"]["calculate"] is False
    assert p["fieldConfig"]["defaults"]["unit"] == "percentunit"
    sql = p["targets"][0]["rawSql"]
    labels = re.findall(r'AS "([^"]+)"', sql)
    assert sql.startswith("SELECT $__timeGroupAlias(bucket_start, $__interval)")
    assert labels == [*positions.LABELS, positions.REST_LABEL]
    # bucket names that are not numbers: Grafana reads them as ordinal labels, in order
    assert not any(re.fullmatch(r"[\d.+-]+", label) for label in labels)
    assert all(f"SUM({c})" in sql for c in positions.COLUMNS)
    items = {p["title"]: p for p in models["attnmon-items"]["panels"]}
    top = items["Top attended items (layer $layer, latest window)"]
    assert top["type"] == "table" and top["targets"][0]["format"] == "table"
