"""The pure side of alerting: the state machine, fingerprints, templates, routing, matchers.
No store: every cycle is a call with a simulated `now`."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from alerting import at, drift_row, rule

from alerts.config import AlertsConfig, Route
from alerts.routing import route
from alerts.silences import Matcher, parse_matcher
from alerts.state import AlertState, evaluate, fingerprint, observations
from alerts.template import check, dashboard_url, fmt, render, series_text
from monitor.errors import ConfigError

SERIES = {"model": "m", "version": "v2", "cohort": "*", "layer": "1", "head": "2",
          "baseline_kind": "trailing", "statistic": "delta.entropy_norm"}


def run(rules, truth, minutes, external_url=None, value=-3.0):
    """Cycles at the given minutes; `truth(m)` says whether the series crosses.
    Returns the transitions [(kind, minute)] and the final states."""
    state: dict[str, AlertState] = {}
    out = []
    for m in minutes:
        rows = [drift_row(at(m), value if truth(m) else 0.0)]
        step = evaluate(rules, observations(rules, rows, (at(m) - timedelta(minutes=15), at(m))), state, at(m),
                        external_url=external_url)
        state.update({a.fingerprint: a for a in step.alerts})
        out += [(t.kind, (t.at - at(0)) / timedelta(minutes=1)) for t in step.transitions]
    return out, state


def test_pending_then_firing_after_for_then_resolved_after_keep_firing_for():
    r = rule(**{"for": "2m", "keep_firing_for": "10m"})
    truth = {1, 2, 3, 4, 5, 6, 25}.__contains__
    transitions, state = run([r], truth, range(0, 40))
    # pending at 1, firing at 1 + 2; last true at 6, resolved at 6 + 10; the pending
    # incident at 25 clears at 26 and is dropped without a transition
    assert transitions == [("firing", 3.0), ("resolved", 16.0)]
    (alert,) = state.values()
    assert alert.state == "inactive" and alert.phase.active_at == at(25)


@pytest.mark.parametrize(("after", "ends"), [
    ("trailing", (11.0, True)),  # compared with another baseline now: ended at once, unfixed
    ("same", (15.0, False)),  # judged false against its own baseline: a resolve
    ("none", (15.0, False)),  # no result at all (no traffic, a rollback): a resolve
])
def test_a_firing_alert_whose_baseline_changed_ends_unfixed_at_once(after, ends):
    """A version's previous_version comparison ends a day after its deploy; from then on
    its series are compared with their own trailing baseline. That is not the shift going
    away, and the resolve must not say so."""
    from alerts.model import ENDED
    from alerts.state import comparisons

    r = rule("Post", match={"baseline_kind": "previous_version"}, keep_firing_for="5m")
    state: dict[str, AlertState] = {}
    out = []
    for m in range(0, 20):
        if m <= 10:
            rows = [drift_row(at(m), -3.0, baseline_kind="previous_version")]
        else:
            rows = {"trailing": [drift_row(at(m), -3.0, baseline_kind="trailing")],
                    "same": [drift_row(at(m), 0.0, baseline_kind="previous_version")], "none": []}[after]
        step = evaluate([r], observations([r], rows), state, at(m), compared=comparisons(rows))
        state.update({a.fingerprint: a for a in step.alerts})
        out += [(t.kind, (t.at - at(0)) / timedelta(minutes=1), ENDED in t.alert.annotations) for t in step.transitions]
    assert out == [("firing", 2.0, False), ("resolved", *ends)]
    (alert,) = state.values()
    assert alert.state == "resolved" and alert.phase.last_true_at == at(10)
    if ends[1]:
        text = alert.annotations[ENDED]
        assert text.startswith("Not fixed: the comparison with the version it replaced ended")
        assert "now compared with the trailing baseline" in text and "last held at 2026-11-20 08:10 UTC" in text
        assert alert.annotations["summary"] == "m@v2 layer 1 head 2: entropy moved -3 SDs"  # kept


def test_pending_states_and_times_cycle_by_cycle():
    r = rule(**{"for": "2m", "keep_firing_for": "0s"})
    states = []
    state: dict[str, AlertState] = {}
    for m, true in enumerate([False, True, True, True, False, True]):
        step = evaluate([r], observations([r], [drift_row(at(m), -3.0 if true else 0.0)]), state, at(m))
        state.update({a.fingerprint: a for a in step.alerts})
        states.append(next(iter(state.values())).state if state else "inactive")
    assert states == ["inactive", "pending", "pending", "firing", "resolved", "pending"]
    a = next(iter(state.values()))
    assert (a.phase.active_at, a.phase.fired_at, a.phase.resolved_at) == (at(5), None, None)


def test_a_flapping_condition_fires_once_and_resolves_once():
    r = rule(**{"for": "0s", "keep_firing_for": "10m"})
    transitions, _ = run([r], lambda m: m < 60 and m % 2 == 0, range(0, 90))
    assert transitions == [("firing", 0.0), ("resolved", 68.0)]  # last true at 58


def test_a_flapping_condition_never_outlasts_for():
    # Prometheus' semantics: each false cycle drops the pending alert
    transitions, _ = run([rule(**{"for": "2m"})], lambda m: m % 2 == 0, range(0, 30))
    assert transitions == []


def test_for_zero_fires_on_the_first_true_cycle_and_a_removed_rule_resolves_at_once():
    r = rule(**{"for": "0s", "keep_firing_for": "30m"})
    transitions, state = run([r], lambda m: True, [0, 1])
    assert transitions == [("firing", 0.0)]
    step = evaluate([], {}, state, at(2))  # the rule left the pack
    assert [(t.kind, t.at) for t in step.transitions] == [("resolved", at(2))]


def test_labels_annotations_and_values_of_the_last_true_cycle_are_kept():
    r = rule(labels={"team": "recsys", "severity": "info"}, **{"for": "0s", "keep_firing_for": "10m"})
    _, state = run([r], lambda m: m == 0, [0, 1, 2], external_url="https://grafana.example")
    (a,) = state.values()
    assert a.state == "firing" and a.value == -3.0
    assert a.labels == {**SERIES, "alertname": "Collapse", "severity": "critical", "team": "recsys"}
    assert a.annotations["summary"] == "m@v2 layer 1 head 2: entropy moved -3 SDs"
    assert a.annotations["dashboard"].startswith("https://grafana.example/d/attnmon-overview?var-model=m&var-version=v2"
                                                 "&var-cohort=%2A&var-layer=1&var-head=2&from=")


def test_fingerprint_is_stable_and_identifies_rule_and_series():
    assert fingerprint("AttentionEntropyCollapse", SERIES) == "1f4867fa5daedd9d"  # never changes
    assert fingerprint("AttentionEntropyCollapse", dict(reversed(list(SERIES.items())))) == "1f4867fa5daedd9d"
    assert fingerprint("AttentionEntropyCollapse", {**SERIES, "head": "3"}) != "1f4867fa5daedd9d"
    assert fingerprint("PostDeploymentShift", SERIES) != "1f4867fa5daedd9d"
    # the rule's labels, severity, threshold and annotations are not part of it
    rows = [drift_row(at(0), -3.0)]
    a = observations([rule()], rows)
    b = observations([rule(threshold=-2.0, severity="warning", labels={"x": "y"}, annotations={})], rows)
    assert list(a) == list(b) == [fingerprint("Collapse", SERIES)]


def test_a_glob_rule_makes_one_alert_per_statistic_and_match_selects_series():
    r = rule("Movers", statistic="mover.attr.*", op=">", threshold=0.05, match={"layer": "1", "baseline_kind": "prev*"})
    rows = [drift_row(at(0), 0.2, statistic="mover.attr.brand", baseline_kind="previous_version"),
            drift_row(at(0), 0.2, statistic="mover.attr.category", baseline_kind="previous_version"),
            drift_row(at(0), 0.2, statistic="mover.attr.brand", baseline_kind="trailing"),
            drift_row(at(0), 0.2, statistic="mover.attr.brand", layer="0", baseline_kind="previous_version"),
            drift_row(at(0), 0.01, statistic="mover.attr.price", baseline_kind="previous_version")]
    seen = observations([r], rows)
    assert sorted(o.series["statistic"] for o in seen.values()) == ["mover.attr.brand", "mover.attr.category"]


def test_a_match_starting_with_a_bang_selects_every_other_series():
    import pandas as pd

    r = rule("NotRetrain", match={"baseline_kind": "!retrain"})
    rows = [drift_row(at(0), -3.0, baseline_kind=kind, head=head)
            for kind, head in (("trailing", "1"), ("retrain", "2"), ("previous_version", "3"))]
    assert sorted(o.series["head"] for o in observations([r], rows).values()) == ["1", "3"]
    assert r.crossing_mask(pd.DataFrame(rows)).tolist() == [True, False, True]
    assert not r.applies("delta.entropy_norm", {"baseline_kind": "retrain"})
    assert r.applies("delta.entropy_norm", {"baseline_kind": "pinned"})


def test_a_match_list_is_any_plain_glob_and_every_negated_one():
    import pandas as pd

    neither = rule("Neither", match={"baseline_kind": ["!retrain", "!previous_version"]})
    either = rule("Either", match={"baseline_kind": ["trailing", "pin*"], "head": "!3"})
    kinds = ("trailing", "retrain", "previous_version", "pinned")
    rows = [drift_row(at(0), -3.0, baseline_kind=kind, head=head) for kind in kinds for head in ("2", "3")]
    got = {r.name: sorted((o.series["baseline_kind"], o.series["head"]) for o in observations([r], rows).values())
           for r in (neither, either)}
    assert got == {"Neither": [("pinned", "2"), ("pinned", "3"), ("trailing", "2"), ("trailing", "3")],
                   "Either": [("pinned", "2"), ("trailing", "2")]}
    frame = pd.DataFrame(rows)
    assert neither.crossing_mask(frame).tolist() == [k in ("trailing", "pinned") for k in frame["baseline_kind"]]
    assert neither.match == {"baseline_kind": ("!retrain", "!previous_version")}
    assert either.match_text() == "baseline_kind=trailing|pin*, head!=3"


@pytest.mark.parametrize(("match", "error"), [
    ({"baseline_kind": []}, "baseline_kind: an empty list matches nothing"),
    ({"baseline_kind": ["retrain", "!retrain"]}, "can match no value"),
    ({"baseline_kind": ["prev*", "!prev*", "!x"]}, "can match no value"),
    ({"head": ["[*]", "!*"]}, "can match no value"),
    ({"head": "!*"}, "can match no value"),
    ({"baseline_kind": ["trailing", "trailing"]}, "listed more than once"),
    ({"baseline_kind": [["trailing"]]}, "list entries must be globs"),
    ({"baseline_kind": {"trailing": 1}}, "expected a glob or a list of globs, got dict"),
    ({"kind": "trailing"}, "unknown label(s) ['kind']"),
])
def test_a_match_that_can_select_nothing_is_refused_with_the_reason(match, error):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(error)):
        rule("Bad", match=match)


def test_a_mixed_match_list_that_can_match_is_accepted():
    r = rule("Mixed", match={"baseline_kind": ["prev*", "!previous_version"], "head": ["[*]", "!2"]})
    assert r.applies("delta.entropy_norm", {"baseline_kind": "previous_x", "head": "*"})
    assert not r.applies("delta.entropy_norm", {"baseline_kind": "previous_version", "head": "*"})
    assert not r.applies("delta.entropy_norm", {"baseline_kind": "previous_x", "head": "1"})


def test_the_default_pack_judges_a_retrain_on_its_own_rules():
    """Against a retrain (new weights) the noise-scaled rules stand aside (DESIGN §5)."""
    from alerts.rules import load_rules

    rules = load_rules()
    def on(stat, kind, head="2"):
        return sorted(r.name for r in rules if r.applies(stat, {"baseline_kind": kind, "head": head}))

    assert on("delta.entropy_norm", "retrain") == []
    assert on("psi.entropy_norm", "retrain") == []
    assert on("mean.entropy_norm", "retrain") == ["RetrainEntropyCollapse"]
    assert on("js.position_profile", "retrain") == []  # heads of two seeds differ, even matched
    assert on("js.position_profile", "retrain", head="*") == ["RetrainPositionShift"]
    assert on("mover.attr.genre", "retrain") == ["RetrainAttributeShift"]
    assert on("lift.attr.brand", "retrain") == on("lift.attr.brand", "trailing") == ["AttributeLift"]
    assert on("items.top10_share", "retrain") == ["ItemConcentrationSpike"]
    # one row, one alert: the same-weights deploy is PostDeploymentShift's alone
    assert on("psi.entropy_norm", "previous_version") == ["PostDeploymentShift"]
    assert on("psi.entropy_norm", "trailing") == on("psi.entropy_norm", "pinned") == [
        "AttentionEntropyDistributionShift"]
    assert on("delta.recency5", "trailing") == ["RecencyLoss", "RecencyShift"]
    assert on("mean.entropy_norm", "trailing") == []
    assert on("mean.recency5", "retrain", head="*") == []  # a cohort: noisier
    assert on("mean.recency5", "retrain") == []
    assert [r.name for r in rules if r.applies("mean.recency5", {"baseline_kind": "retrain", "head": "*",
                                                                 "cohort": "*"})] == ["RetrainRecencyLoss"]


def test_min_samples_and_compare_change():
    r = rule("Conc", statistic="items.top10_share", compare="change", op=">", threshold=0.05, min_samples=300)
    rows = [drift_row(at(0), 0.30, statistic="items.top10_share", baseline_value=0.20, head="1"),
            drift_row(at(0), 0.30, statistic="items.top10_share", baseline_value=0.28, head="2"),
            drift_row(at(0), 0.30, statistic="items.top10_share", baseline_value=0.20, head="3", n=100)]
    assert [o.series["head"] for o in observations([r], rows).values()] == ["1"]


# --- templates ----------------------------------------------------------------------


@pytest.mark.parametrize("x, text", [
    (-3.21493, "-3.21"), (0.26312, "0.263"), (17.0, "17"), (1234.5, "1,234"), (12, "12"),
    (0.0, "0"), (2.5e-05, "2.5e-05"), (None, "n/a"), (float("nan"), "nan"), (0.04999, "0.05"),
])
def test_numbers_are_formatted_for_people(x, text):
    assert fmt(x) == text


def test_render_fills_values_labels_detail_and_pct():
    ctx = {"series": "m@v2 layer 1 head 0", "value": 0.4812, "baseline_value": 0.09, "model": "m",
           "detail": {"value": "brand007", "share": 0.31, "baseline_share": 0.04}}
    assert render("{{ series }}: {{value|pct}} (was {{baseline_value|pct}}) in {{model}}", ctx) == \
        "m@v2 layer 1 head 0: 48.1% (was 9%) in m"
    assert render("{{detail.value}} {{detail.baseline_share|pct}} → {{detail.share|pct}}", ctx) == "brand007 4% → 31%"
    assert render("{{detail.missing}} {{version}}", {}) == "n/a n/a"


def test_series_text_leaves_roll_ups_out():
    assert series_text(SERIES) == "m@v2 layer 1 head 2"
    assert series_text({**SERIES, "head": "*", "cohort": "ios"}) == "m@v2 layer 1 (all heads) (cohort ios)"
    assert series_text({**SERIES, "version": "*", "layer": "*", "head": "*"}) == "m"
    assert series_text({"model": "*", "receiver": "slack"}) == "attnmon receiver slack"


def test_template_check_names_unknown_variables_and_filters():
    assert check("{{series}} {{value|pct}} {{detail.x}} {{team}}", ("team",)) == []
    problems = check("{{seris}} {{value|percent}} {{ broken")
    assert any("unknown variable {{seris}}" in p for p in problems)
    assert any("unknown filter |percent" in p for p in problems)
    assert any("unbalanced" in p for p in problems)


def test_dashboard_link_never_carries_credentials():
    url = dashboard_url("https://admin:s3cret@grafana.example:3000/", {"model": "m", "version": "v 2"}, at(60))
    assert url == ("https://grafana.example:3000/d/attnmon-overview?var-model=m&var-version=v+2"
                   f"&from={int(at(0).timestamp()) * 1000}&to=now")
    assert "s3cret" not in url and "admin" not in url


# --- routing ------------------------------------------------------------------------


def tree() -> Route:
    return AlertsConfig.model_validate({
        "receivers": [{"name": n, "webhook": {"url": "http://x"}} for n in ("slack", "pager", "search", "mail")],
        "route": {"receiver": "slack", "group_by": ["alertname"], "routes": [
            {"match": {"severity": "critical"}, "receiver": "pager", "continue": True, "group_by": ["model"]},
            {"match": {"model": "search-*"}, "receiver": "search"},
            {"match": {"severity": "critical"}, "receiver": "mail"},
        ]},
    }).route


@pytest.mark.parametrize("labels, receivers", [
    ({"severity": "critical", "model": "m"}, ["pager", "mail"]),
    ({"severity": "warning", "model": "m"}, ["slack"]),
    ({"severity": "critical", "model": "search-1"}, ["pager", "search"]),
    ({"severity": "warning", "model": "search-1"}, ["search"]),
])
def test_routing_by_severity_and_labels_with_continue(labels, receivers):
    assert [t.receiver for t in route(tree(), {"alertname": "A", **labels})] == receivers


def test_group_keys_hold_the_route_and_its_group_by_labels():
    targets = route(tree(), {"alertname": "A", "severity": "critical", "model": "m"})
    assert [t.group_key for t in targets] == ['root.0:{model="m"}', 'root.2:{alertname="A"}']  # the root's group_by
    assert targets[0].group_labels == {"model": "m"}
    assert route(Route(), {"alertname": "A"}) == []  # no receiver anywhere: nobody to tell


# --- silence matchers -----------------------------------------------------------------


def test_matchers():
    assert parse_matcher("model=demo") == Matcher("model", "=", "demo")
    assert parse_matcher("head!=*") == Matcher("head", "!=", "*")
    assert parse_matcher("version=~v2\\..*").matches({"version": "v2.1"})
    assert not parse_matcher("version!~v2.*").matches({"version": "v2.1"})
    assert parse_matcher("cohort=*").matches({"cohort": "*"}) and not parse_matcher("cohort=*").matches({"cohort": "ios"})
    for bad in ("model", "=x", "a b=c", "x=~("):
        with pytest.raises(ConfigError, match="--match"):
            parse_matcher(bad)


def test_the_decision_modules_import_no_sql():
    code = ("import sys, alerts.state, alerts.template, alerts.routing; "
            "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_exports_resolve_lazily():
    import alerts

    assert alerts.__all__ == ["AlertService", "AlertView", "DeliveryError", "Notification", "Outbox", "Receiver",
                              "Rule", "evaluate_alerts", "load_rule_set"]
    assert all(getattr(alerts, name).__name__ == name for name in alerts.__all__)


def test_the_readme_routing_example_pages_once_for_a_deploy_that_fires_two_rules():
    # the README's alert routing block, as written: one PagerDuty group per version
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "receiver: pagerduty" in b)
    config = AlertsConfig.model_validate(yaml.safe_load(block)["alerts"])
    deploy = {"severity": "critical", "model": "m", "version": "v2"}
    one = route(config.route, {"alertname": "AttentionEntropyCollapse", "head": "3", **deploy})
    two = route(config.route, {"alertname": "PostDeploymentShift", "head": "5", **deploy})
    pager = [t.group_key for t in one + two if t.receiver == "pagerduty"]
    assert len(pager) == 2 and pager[0] == pager[1]
    other_version = route(config.route, {"alertname": "PostDeploymentShift", **deploy, "version": "v3"})
    assert [t.group_key for t in other_version if t.receiver == "pagerduty"] != pager[:1]


def test_a_route_groups_and_waits_as_its_parent_unless_it_says_otherwise():
    # Alertmanager's routes inherit group_by and group_wait; a child with only match and
    # receiver used to group by the default labels and wait 30 s under a root set to 0
    config = AlertsConfig.model_validate({
        "receivers": [{"name": n, "webhook": {"url": "http://x"}} for n in ("slack", "pager", "mail")],
        "route": {"receiver": "slack", "group_by": ["model"], "group_wait_s": 0, "routes": [
            {"match": {"severity": "critical"}, "receiver": "pager", "continue": True,
             "routes": [{"match": {"team": "search"}, "receiver": "mail", "group_wait_s": 5}]},
            {"match": {"severity": "critical"}, "receiver": "mail", "group_by": ["alertname"]},
        ]},
    })
    labels = {"alertname": "A", "severity": "critical", "model": "m", "version": "v2"}
    pager, mail = route(config.route, labels)
    assert (pager.receiver, pager.group_labels, pager.group_wait_s) == ("pager", {"model": "m"}, 0)
    assert (mail.receiver, mail.group_labels, mail.group_wait_s) == ("mail", {"alertname": "A"}, 0)
    [nested, _] = route(config.route, {**labels, "team": "search"})
    assert (nested.receiver, nested.group_labels, nested.group_wait_s) == ("mail", {"model": "m"}, 5)
    # the root's own defaults when nothing is set anywhere
    bare = AlertsConfig.model_validate({"receivers": [{"name": "slack", "webhook": {"url": "http://x"}}],
                                        "route": {"receiver": "slack"}})
    [t] = route(bare.route, labels)
    assert t.group_labels == {"alertname": "A", "model": "m", "version": "v2"} and t.group_wait_s == 30


def test_route_matchers_are_the_rules_globs_lists_and_negations():
    config = AlertsConfig.model_validate({
        "receivers": [{"name": n, "webhook": {"url": "http://x"}} for n in ("slack", "pager")],
        "route": {"receiver": "slack", "routes": [
            {"match": {"baseline_kind": ["!retrain", "!previous_version"], "severity": "critical"},
             "receiver": "pager"}]},
    })
    def to(kind):
        return [t.receiver for t in route(config.route, {"severity": "critical", "baseline_kind": kind})]
    assert to("trailing") == ["pager"] and to("pinned") == ["pager"]
    assert to("retrain") == ["slack"] and to("previous_version") == ["slack"]
    for bad, says in (([], "empty list"), (["retrain", "!retrain"], "can match no value"), ("!*", "can match no value")):
        with pytest.raises(ValueError, match=says):
            AlertsConfig.model_validate({"receivers": [{"name": "slack", "webhook": {"url": "http://x"}}],
                                         "route": {"receiver": "slack", "routes": [
                                             {"match": {"baseline_kind": bad}, "receiver": "slack"}]}})


@pytest.mark.parametrize(("before", "after", "marked"), [
    ("retrain", "previous_version", "the same weights as"),
    ("previous_version", "retrain", "other weights than"),
])
def test_an_alert_ended_by_re_marking_the_weights_does_not_say_the_comparison_ended(before, after, marked):
    """`attnmon deploy mark --weights-id` on a deployed version turns its retrain
    comparison into a same-weights one (or back): it is still compared with the version it
    replaced, so 'the comparison with the version it replaced ended' would be false."""
    from alerts.model import ENDED
    from alerts.state import comparisons

    r = rule("Deploy", match={"baseline_kind": before}, **{"for": "0s"})
    state: dict[str, AlertState] = {}
    for m, kind in ((0, before), (1, before), (2, after)):
        rows = [drift_row(at(m), -3.0, baseline_kind=kind)]
        step = evaluate([r], observations([r], rows), state, at(m), compared=comparisons(rows))
        state.update({a.fingerprint: a for a in step.alerts})
    (alert,) = state.values()
    text = alert.annotations[ENDED]
    assert alert.state == "resolved" and "comparison with the version it replaced ended" not in text
    assert text.startswith(f"Not fixed: its deploy was marked as {marked} the version it replaced "
                           "(attnmon deploy mark --weights-id)")
    assert f"now compared with the {after} baseline" in text
