"""`attnmon alerts ...` through `main(argv)`: check, list, test, silence, silences, unsilence."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from alerting import FakeReceiver, at, config, cycle, failing, rule, shifted_rows

from alerts.rules import load_rules
from monitor.cli import main
from monitor.store import make_engine

BAD_RULES = """\
rules:
  - name: Fine
    statistic: psi.entropy_norm
    op: ">"
    threshold: 0.25
  - name: Typos
    statistic: psi.entropy_norm
    op: "=>"
    threshold: high
    severty: critical
  - name: BadTemplate
    statistic: js.position_profile
    op: ">"
    threshold: 0.1
    for: 5 minutes
    annotations:
      summary: "{{seris}} moved by {{value|percent}}"
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_says_which_rules_cannot_fire_with_the_evaluate_config(tmp_path, capsys, clean_env):
    mine = tmp_path / "mine.yaml"
    mine.write_text("rules:\n  - {name: TopOneMean, statistic: mean.top1, op: '>', threshold: 0.5}\n"
                    "  - {name: GiniPsi, statistic: psi.gini, op: '>', threshold: 0.3}\n")
    code, out, _ = run(capsys, "alerts", "check", str(mine))
    assert code == 0 and "warning: rule TopOneMean reads mean.top1" in out and "GiniPsi reads" not in out
    code, out, _ = run(capsys, "alerts", "check", str(mine), "--format", "json")
    assert code == 0 and json.loads(out)["cannot_fire"] == ["TopOneMean"]
    conf = tmp_path / "attnmon.yaml"
    conf.write_text("evaluate:\n  statistics: [mean, delta, psi]\n")  # on every metric
    code, out, _ = run(capsys, "--config", str(conf), "alerts", "check", str(mine))
    assert code == 0 and "warning" not in out
    code, out, _ = run(capsys, "alerts", "check", str(Path(__file__).parents[1] / "alerts/rules/default.yaml"))
    assert "warning" not in out  # the shipped rules read what is written


def test_check_accepts_the_default_pack_and_names_file_rule_and_field(tmp_path, capsys, clean_env):
    code, out, _ = run(capsys, "alerts", "check", str(Path(__file__).parents[1] / "alerts/rules/default.yaml"))
    assert code == 0 and f"{len(load_rules())} rules OK" in out and len(load_rules()) >= 10
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RULES)
    code, _, err = run(capsys, "alerts", "check", str(bad))
    assert code == 2
    assert err.startswith(f"attnmon: error: {bad}: ")
    for field in ("rule Typos: op=", "rule Typos: threshold='high'", "rule Typos: severty=",
                  "rule BadTemplate: for='5 minutes'"):
        assert field in err, field
    # schema errors first; with the schema fixed, templates are checked
    bad.write_text(BAD_RULES.replace('"=>"', '">"').replace("high", "1").replace("    severty: critical\n", "")
                   .replace("5 minutes", "5m"))
    code, _, err = run(capsys, "alerts", "check", str(bad))
    assert code == 2 and "rule BadTemplate: annotations.summary=" in err
    assert "unknown variable {{seris}}" in err and "unknown filter |percent" in err
    code, _, err = run(capsys, "alerts", "check", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err
    # a missing field is named as missing (not the whole rule); a list is not a rule file
    bad.write_text("rules:\n  - {name: X, op: '>', threshold: 1}\n")
    code, _, err = run(capsys, "alerts", "check", str(bad))
    assert code == 2 and "rule X: statistic='(missing)': Field required" in err
    bad.write_text("- {name: x}\n")
    code, _, err = run(capsys, "alerts", "check", str(bad))
    assert code == 2 and "top level='list': expected a mapping with a `rules:` list" in err


def test_check_names_a_match_list_that_can_select_nothing(tmp_path, capsys, clean_env):
    mine = tmp_path / "mine.yaml"
    mine.write_text("rules:\n"
                    "  - {name: Neither, statistic: psi.entropy_norm, op: '>', threshold: 1,\n"
                    "     match: {baseline_kind: ['!retrain', '!previous_version']}}\n"
                    "  - {name: Never, statistic: psi.entropy_norm, op: '>', threshold: 1,\n"
                    "     match: {baseline_kind: [retrain, '!retrain']}}\n"
                    "  - {name: Empty, statistic: psi.entropy_norm, op: '>', threshold: 1, match: {head: []}}\n")
    code, out, err = run(capsys, "alerts", "check", str(mine))
    assert code == 2 and out == ""
    assert "rule Never: match=" in err and "baseline_kind: ['retrain', '!retrain'] can match no value" in err
    assert "rule Empty: match=" in err and "head: an empty list matches nothing" in err
    assert "Neither" not in err


def test_check_refuses_a_statistic_the_monitor_never_writes(tmp_path, capsys, clean_env):
    """A typo would load as a rule that can never fire; under no config is it written."""
    mine = tmp_path / "mine.yaml"
    for typo in ("delta.entropy_nrm", "bogus", "psi.attr.brand"):
        mine.write_text(f"rules:\n  - {{name: Typo, statistic: {typo}, op: '>', threshold: 1}}\n")
        code, out, err = run(capsys, "alerts", "check", str(mine))
        assert code == 2 and out == "", typo
        assert f"rule Typo: statistic='{typo}'" in err and "names no statistic the monitor writes" in err
    # globs, any metric of any statistic, the roll-ups' and the health statistics pass
    mine.write_text("rules:\n" + "".join(
        f"  - {{name: R{i}, statistic: '{s}', op: '>', threshold: 1}}\n" for i, s in enumerate(
            ["js.attr.*", "wasserstein.head_diversity", "mean.sink", "*.entropy_norm", "cusum.entropy_norm",
             "health.rejected_ratio", "items.hhi"])))
    code, out, _ = run(capsys, "alerts", "check", str(mine))
    assert code == 0 and "7 rules OK" in out


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "attnmon.yaml"
    path.write_text(yaml.safe_dump({
        "store_url": url,
        "alerts": {
            "external_url": "https://viewer:GRAFANA_PASSWORD@grafana.example",
            "receivers": [
                {"name": "pager", "pagerduty": {"routing_key": {"env": "PD_KEY"}}},
                {"name": "hook", "webhook": {"url_secret": {"file": str(tmp_path / "hook-url")}}},
            ],
            "route": {"receiver": "pager"},
        },
    }))
    return path


def test_list_shows_active_and_recently_resolved_alerts_without_secrets(tmp_path, capsys, clean_env, sqlite_url):
    cfg_path = write_config(tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    cfg = config(external_url="https://viewer:GRAFANA_PASSWORD@grafana.example")
    rules = [rule(**{"for": "0s", "keep_firing_for": "0s"}), rule("Slow", **{"for": "10m"})]
    cycle(engine, rules, cfg, 0, shifted_rows(0, heads=[2, 3]))
    cycle(engine, rules, cfg, 1, shifted_rows(1, heads=[2]))
    engine.dispose()
    code, out, _ = run(capsys, "alerts", "list", "--config", str(cfg_path), "--format", "json")
    assert code == 0
    data = json.loads(out)
    # resolved more than an hour ago (the windows are in 2026): not shown
    assert [(d["alertname"], d["state"], d["labels"]["head"]) for d in data] == [
        ("Collapse", "firing", "2"), ("Slow", "pending", "2")]
    assert data[0]["annotations"]["summary"] == "m@v2 layer 1 head 2: entropy moved -3 SDs"
    assert data[0]["annotations"]["dashboard"].startswith("https://grafana.example/d/attnmon-overview?")
    assert data[0]["recently_resolved"] is False and data[0]["fired_at"] == at(0).isoformat()
    assert "GRAFANA_PASSWORD" not in out
    code, out, _ = run(capsys, "alerts", "list", "--config", str(cfg_path), "--resolved-within", "36500d")
    assert code == 0 and out.splitlines()[-1].startswith("resolved critical  Collapse")
    assert out.splitlines()[0].split() == ["STATE", "SEVERITY", "ALERT", "SINCE", "(UTC)", "SUMMARY"]


def test_list_shows_an_alert_that_ended_unfixed_as_ended(tmp_path, capsys, clean_env, sqlite_url):
    """Its series is now compared with another baseline (the deploy's day is over): the
    list must not call it resolved."""
    cfg_path = write_config(tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    cfg = config()
    r = rule(**{"for": "0s", "keep_firing_for": "30m"}, match={"baseline_kind": "previous_version"})
    cycle(engine, [r], cfg, 0, shifted_rows(0, heads=[2], baseline_kind="previous_version"))
    cycle(engine, [r], cfg, 1, shifted_rows(1, heads=[2], baseline_kind="trailing"))
    engine.dispose()
    code, out, _ = run(capsys, "alerts", "list", "--config", str(cfg_path), "--resolved-within", "36500d",
                       "--format", "json")
    (d,) = json.loads(out)
    assert d["state"] == "resolved" and d["ended"].startswith("Not fixed: the comparison with the version")
    code, out, _ = run(capsys, "alerts", "list", "--config", str(cfg_path), "--resolved-within", "36500d")
    assert out.splitlines()[-1].startswith("ended    critical  Collapse")


def test_a_rule_may_not_define_the_ended_annotation(tmp_path, capsys, clean_env):
    mine = tmp_path / "mine.yaml"
    mine.write_text("rules:\n  - {name: Mine, statistic: psi.entropy_norm, op: '>', threshold: 1,\n"
                    "     annotations: {ended: 'over'}}\n")
    code, _, err = run(capsys, "alerts", "check", str(mine))
    assert code == 2 and "rule Mine: annotations=" in err and "annotation 'ended' is attnmon's" in err


def test_test_sends_through_the_receiver_and_exits_2_with_its_error(tmp_path, capsys, clean_env, sqlite_url, monkeypatch):
    cfg_path = write_config(tmp_path, sqlite_url)
    built = {}

    def build(rc):
        built[rc.name] = FakeReceiver(rc.name, failing(1, "HTTP 400: invalid routing key", retry=False)
                                      if rc.name == "hook" else [])
        return built[rc.name]

    monkeypatch.setitem(sys.modules, "alerts.receivers", types.SimpleNamespace(build=build))
    code, out, err = run(capsys, "alerts", "test", "--receiver", "pager", "--resolve", "--config", str(cfg_path))
    assert code == 0 and out == "sent a test notification to pager (pagerduty), then its resolution\n"
    assert [n.status for n in built["pager"].sent] == ["firing", "resolved"]
    note = built["pager"].sent[0]
    assert note.alerts[0].labels["alertname"] == "AttnmonTestNotification" and note.external_url == "https://grafana.example"
    code, out, err = run(capsys, "alerts", "test", "--receiver", "hook", "--config", str(cfg_path))
    assert code == 2 and err == ("attnmon: error: receiver hook (webhook): HTTP 400: invalid routing key "
                                 "(permanent: fix the receiver's settings)\n")
    code, _, err = run(capsys, "alerts", "test", "--receiver", "nope", "--config", str(cfg_path))
    assert code == 2 and "known: ['hook', 'pager']" in err


def test_a_silence_on_a_label_no_alert_has_is_refused(tmp_path, capsys, clean_env, sqlite_url):
    code, out, err = run(capsys, "alerts", "silence", "--store", sqlite_url, "--match", "verson=v2",
                         "--for", "2h", "--comment", "typo")
    assert code == 2 and out == ""
    assert "--match='verson=v2': no alert has a label 'verson'" in err and "version" in err
    code, _, err = run(capsys, "alerts", "silence", "--store", sqlite_url, "--match", "model=m",
                       "--for", "0m", "--comment", "x")
    assert code == 2 and "--for='0m': a silence must last longer than 0" in err
    assert json.loads(run(capsys, "alerts", "silences", "--store", sqlite_url, "--format", "json")[1]) == []
    # a label a custom rule adds is a label
    rules = tmp_path / "team.yaml"
    rules.write_text("rules:\n  - {name: T, statistic: psi.top1, op: '>', threshold: 1, labels: {team: recs}}\n")
    conf = tmp_path / "attnmon.yaml"
    conf.write_text(f"alerts:\n  rules: [{rules}]\n")
    code, out, _ = run(capsys, "--config", str(conf), "alerts", "silence", "--store", sqlite_url,
                       "--match", "team=recs", "--match", "alertname=T", "--for", "1h", "--comment", "ok")
    assert code == 0 and len(out.strip()) == 36
    # the rules file is not on this host (mid-incident): warned, and checked against the
    # labels of the alerts in the store (a stored alert carries team=recs)
    from sqlalchemy import insert

    from monitor.store import make_engine, tables
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(insert(tables.alerts).values(
            fingerprint="f" * 32, rule="T", labels={"alertname": "T", "team": "recs"}, annotations={},
            severity="warning", state="firing", active_at=at(0), fired_at=at(0), last_eval_at=at(0)))
    engine.dispose()
    conf.write_text("alerts:\n  rules: [/nowhere/team.yaml]\n")
    code, out, err = run(capsys, "--config", str(conf), "alerts", "silence", "--store", sqlite_url,
                         "--match", "team=recs", "--for", "1h", "--comment", "mid-incident")
    assert code == 0 and len(out.strip()) == 36
    assert "warning: label names checked against the stored alerts only" in err and "/nowhere/team.yaml" in err
    code, _, err = run(capsys, "--config", str(conf), "alerts", "silence", "--store", sqlite_url,
                       "--match", "taem=recs", "--for", "1h", "--comment", "typo")
    assert code == 2 and "no alert has a label 'taem'" in err


def test_silence_silences_unsilence(capsys, clean_env, sqlite_url):
    code, out, _ = run(capsys, "alerts", "silence", "--store", sqlite_url, "--match", "model=m",
                       "--match", "head=~[23]", "--for", "2h", "--comment", "deploy of v3", "--author", "alice")
    assert code == 0
    sid = out.strip()
    assert len(sid) == 36
    code, out, _ = run(capsys, "alerts", "silences", "--store", sqlite_url, "--format", "json")
    (s,) = json.loads(out)
    assert (s["id"], s["matchers"], s["created_by"], s["comment"], s["active"]) == (
        sid, ["model=m", "head=~[23]"], "alice", "deploy of v3", True)
    assert run(capsys, "alerts", "unsilence", "--store", sqlite_url, sid)[:2] == (0, f"expired silence {sid}\n")
    assert json.loads(run(capsys, "alerts", "silences", "--store", sqlite_url, "--format", "json")[1]) == []
    code, out, _ = run(capsys, "alerts", "silences", "--store", sqlite_url, "--all")
    assert code == 0 and out.startswith(f"{sid}  expired model=m head=~[23]")
    code, _, err = run(capsys, "alerts", "unsilence", "--store", sqlite_url, sid)
    assert code == 2 and "no running silence" in err
    for bad in (["--match", "model"], ["--match", "model=m", "--for", "soon"]):
        argv = ["alerts", "silence", "--store", sqlite_url, "--for", "1h", "--comment", "x", *bad]
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.startswith("attnmon: error: argument: --")


@pytest.mark.parametrize("argv", [["alerts"], ["alerts", "silence", "--for", "1h"]])
def test_usage_errors_exit_2(argv, capsys, clean_env):
    assert main(argv) == 2


def test_run_once_delivers_the_outbox_and_says_when_it_could_not(sqlite_url, tmp_path, capsys, monkeypatch):
    """`attnmon run --once` (from cron, say) evaluates and then delivers: a firing alert
    reaches its receiver; with the receiver down it exits 1 and the outbox keeps it."""
    from peers import Answer, HttpPeer, free_port

    engine = make_engine(sqlite_url)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"rules": [{
        "name": "Collapse", "statistic": "delta.entropy_norm", "op": "<", "threshold": -1.0, "for": "0m",
        "severity": "critical", "annotations": {"summary": "{{series}} collapsed"}}]}))

    def once(url: str, minute: float) -> tuple[int, dict]:
        alerts = {"rules": [str(rules_file)], "receivers": [{"name": "hook", "webhook": {"url": url}}],
                  "route": {"receiver": "hook", "group_wait_s": 0}}
        cycle(engine, load_rules(rules_file), config(("hook",), route={"receiver": "hook", "group_wait_s": 0}),
              minute, shifted_rows(minute, heads=[int(minute)]))
        cfg = tmp_path / "attnmon.yaml"
        cfg.write_text(yaml.safe_dump({"store_url": sqlite_url, "alerts": alerts}))
        monkeypatch.setenv("ATTNMON_FAKE_NOW", at(minute + 1).isoformat())
        code = main(["run", "--once", "--config", str(cfg), "--format", "json"])
        return code, json.loads(capsys.readouterr().out)

    with HttpPeer(Answer(200)) as peer:
        code, data = once(f"{peer.url}/hook", 10)
        assert code == 0 and data["delivery_error"] is None and data["notifications"]["delivered"] == 1, data
        sent = json.loads(peer.next().body)
        assert "Collapse" in json.dumps(sent)
    code, data = once(f"http://127.0.0.1:{free_port()}/hook", 11)  # nobody listens
    assert code == 1 and "Connection refused" in data["delivery_error"], data
    with engine.connect() as conn:
        from sqlalchemy import text

        waiting = conn.execute(text("SELECT count(*) FROM notifications WHERE status = 'pending'")).scalar_one()
    assert waiting >= 1
