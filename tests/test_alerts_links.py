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
