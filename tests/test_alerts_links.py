"""The links a notification carries: the runbook of a default rule in the README, when
`alerts.runbook_base_url` says where the README is served."""

from __future__ import annotations

import pytest
from alerting import at, config, cycle, drift_row, rule
from sqlalchemy import select

from alerts.config import AlertsConfig
from alerts.rules import load_rules, runbook_anchor, runbook_urls
from alerts.state import evaluate, observations
from monitor import cli_docs
from monitor.store import tables

BASE = "https://git.example/recsys/attnmon/blob/main/README.md"


def fired_annotations(rules, urls, row=None) -> dict[str, dict]:
    row = row or drift_row(at(0), -3.0)
    step = evaluate(rules, observations(rules, [row]), {}, at(0), runbook_urls=urls)
    return {a.rule: dict(a.annotations) for a in step.alerts}


def test_every_default_rule_has_an_anchor_before_its_runbook_in_the_readme():
    text = cli_docs.README.read_text()
    anchors = [runbook_anchor(r.name) for r in load_rules()]
    assert len(set(anchors)) == len(anchors)
    for r, anchor in zip(load_rules(), anchors, strict=True):
        assert f'<a id="{anchor}"></a>**{r.name}.**' in text, r.name


def test_a_default_rule_links_its_readme_runbook_when_a_base_url_is_set():
    pack = load_rules()
    urls = runbook_urls(BASE)
    assert set(urls) == {r.name for r in pack}
    got = fired_annotations(pack, urls)
    assert got["AttentionEntropyCollapse"]["runbook_url"] == f"{BASE}#runbook-attentionentropycollapse"
    # no base URL: no link (the runbook's text is still there)
    assert "runbook_url" not in fired_annotations(pack, runbook_urls(None))["AttentionEntropyCollapse"]


def test_a_rules_own_runbook_url_wins_and_other_rules_get_none():
    own = rule("AttentionEntropyCollapse", **{"for": "0s"},
               annotations={"runbook_url": "https://wiki.example/collapse"})
    mine = rule("MyCollapse", **{"for": "0s"})
    got = fired_annotations([own, mine], runbook_urls(BASE))
    assert got["AttentionEntropyCollapse"]["runbook_url"] == "https://wiki.example/collapse"
    assert "runbook_url" not in got["MyCollapse"]


def test_the_configured_base_url_reaches_the_stored_alert(store):
    cycle(store, load_rules(), config(runbook_base_url=BASE), 0, [drift_row(at(0), -3.0)])
    with store.connect() as conn:
        (annotations,) = conn.execute(select(tables.alerts.c.annotations)).scalars()
    assert annotations["runbook_url"] == f"{BASE}#runbook-attentionentropycollapse"


@pytest.mark.parametrize("bad", ["docs.example/README.md", "ftp://docs.example/README.md",
                                 "https://docs.example/README.md#runbooks", "https:// docs.example"])
def test_a_base_url_that_cannot_take_an_anchor_is_refused(bad):
    with pytest.raises(ValueError, match="runbook_base_url"):
        AlertsConfig.model_validate({"runbook_base_url": bad})


# --- dashboard links ---------------------------------------------------------------------

GRAFANA = "https://grafana.example"
HEADS_RULES = {"AttentionEntropyCollapse", "PositionProfileShift", "RecencyShift", "RecencyLoss",
               "RetrainEntropyCollapse", "RetrainPositionShift", "RetrainRecencyLoss"}
ITEMS_RULES = {"ItemConcentrationSpike", "AttributeShareShift", "AttributeLift", "RetrainAttributeShift"}


def query(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


def ms(when) -> str:
    return str(int(when.timestamp() * 1000))


def test_the_link_names_the_dashboards_by_their_own_uids():
    from alerts.template import DASHBOARDS
    from dashboards import heads, items, overview

    assert DASHBOARDS == {"overview": overview.UID, "heads": heads.UID, "items": items.UID}
    with pytest.raises(ValueError, match="dashboard"):
        rule(dashboard="heatmaps")


def test_head_and_position_rules_open_the_heads_dashboard_and_the_others_the_overview():
    from alerts.state import Observation, annotate, labels_for

    opened = {}
    for r in load_rules():
        series = {"model": "m", "version": "v2", "cohort": "*", "layer": "1", "head": "2",
                  "baseline_kind": "trailing", "statistic": r.statistic.replace("*", "brand"), "receiver": "pager"}
        link = annotate(r, Observation(r, series, 1.0, 0.0), labels_for(r, series), at(0), GRAFANA)["dashboard"]
        opened[r.name] = link.split("?")[0]
        assert query(link)["var-layer"] == "1" and query(link)["var-head"] == "2"
    assert {n for n, u in opened.items() if u == f"{GRAFANA}/d/attnmon-heads"} == HEADS_RULES
    assert {n for n, u in opened.items() if u == f"{GRAFANA}/d/attnmon-items"} == ITEMS_RULES
    assert {u for n, u in opened.items() if n not in HEADS_RULES | ITEMS_RULES} == {f"{GRAFANA}/d/attnmon-overview"}


def run_to_resolve(r, rows_at, minutes):
    from alerts.state import comparisons

    state, transitions = {}, []
    for m in minutes:
        rows = rows_at(m)
        step = evaluate([r], observations([r], rows), state, at(m), external_url=GRAFANA, compared=comparisons(rows))
        state.update({a.fingerprint: a for a in step.alerts})
        transitions += step.transitions
    return transitions


def test_a_resolved_alerts_link_ends_an_hour_after_the_resolve_not_now():
    """Opened the next morning, `to=now` showed the quiet hours after the incident and
    not the incident."""
    r = rule(dashboard="heads", **{"for": "0s", "keep_firing_for": "5m"})
    fired, resolved = run_to_resolve(r, lambda m: [drift_row(at(m), -3.0 if m <= 3 else 0.0)], range(0, 12))
    assert query(fired.alert.annotations["dashboard"])["to"] == "now"
    link = resolved.alert.annotations["dashboard"]
    assert resolved.at == at(8) and link.startswith(f"{GRAFANA}/d/attnmon-heads?")
    assert query(link)["from"] == ms(at(-60)) and query(link)["to"] == ms(at(68))


def test_an_ended_alerts_link_ends_an_hour_after_it_ended():
    from alerts.model import ENDED

    r = rule(match={"baseline_kind": "previous_version"}, **{"for": "0s"})

    def rows(m):
        return [drift_row(at(m), -3.0, baseline_kind="previous_version" if m <= 3 else "trailing")]

    _, ended = run_to_resolve(r, rows, range(0, 6))
    assert ENDED in ended.alert.annotations and ended.at == at(4)
    assert query(ended.alert.annotations["dashboard"])["to"] == ms(at(64))


def test_a_resolved_groups_own_link_ends_after_its_last_resolve_on_its_alerts_dashboard():
    from dataclasses import replace
    from datetime import timedelta

    from peers import T0, alert, notification

    from alerts.receivers._text import digest
    from alerts.template import dashboard_url

    def resolved(head, minutes):
        a = alert(head=head, status="resolved", ends_at=T0 + timedelta(minutes=minutes))
        link = dashboard_url(GRAFANA, a.labels, a.starts_at, until=a.ends_at, dashboard="heads")
        return replace(a, annotations={**a.annotations, "dashboard": link})

    d = digest(notification([resolved(1, 20), resolved(2, 30)], external_url=GRAFANA),
               now=T0 + timedelta(hours=9))
    assert d.dashboard_url.startswith(f"{GRAFANA}/d/attnmon-heads?")
    assert query(d.dashboard_url)["to"] == ms(T0 + timedelta(minutes=90))
    assert "var-head" not in query(d.dashboard_url)  # what the two heads share
