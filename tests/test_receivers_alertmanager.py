"""Our Alertmanager receiver against a real prometheus-alertmanager (Debian's package),
whose webhook receiver posts to an HTTP server of the test: a firing alert arrives with
our labels and annotations, its resolve arrives as `resolved`; the generic webhook
receiver's JSON has the shape Alertmanager itself sends."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from peers import HttpPeer, alert, notification

from alerts.receivers import Alertmanager, Webhook

WAIT_S = 15  # group_wait 1 s, group_interval 2 s: each notice comes within a few seconds


def shape(x: object) -> object:
    """Keys and value types; a mapping of strings (labels, annotations) is just that."""
    if isinstance(x, dict):
        if all(isinstance(v, str) for v in x.values()):
            return "map[string]string"
        return {k: shape(v) for k, v in x.items()}
    if isinstance(x, list):
        return [shape(v) for v in x]
    return type(x).__name__


def parse(when: str) -> datetime:
    return datetime.fromisoformat(when.replace("Z", "+00:00"))


@pytest.fixture
def am(am_url: str) -> Iterator[Alertmanager]:
    receiver = Alertmanager("am", am_url, resend_interval_s=30, timeout_s=5)
    yield receiver
    receiver.close()


def of_rule(rule: str, status: str):
    return lambda r: r.path == "/hook" and r.json["status"] == status and r.json["commonLabels"].get("alertname") == rule


def recent(rule: str, **kw) -> tuple:
    # Alertmanager drops alerts whose endsAt is long past: times near now
    starts = datetime.now(UTC) - timedelta(minutes=3)
    return alert(rule=rule, starts_at=starts, **kw), starts


def held_alerts(am_url: str, rule: str) -> list[dict]:
    """The alerts of `rule` that Alertmanager holds."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"{am_url}/api/v2/alerts?filter=alertname%3D%22{rule}%22", timeout=5
    ) as response:
        return json.load(response)


def test_firing_then_resolved_reach_alertmanagers_webhook(am: Alertmanager, hook: HttpPeer) -> None:
    rule = "AttnmonTestFiringThenResolved"
    firing, starts = recent(rule)
    am.send(notification([firing]))
    got = hook.wait_for(of_rule(rule, "firing"), WAIT_S).json
    (a,) = got["alerts"]
    assert a["status"] == "firing" and a["labels"] == firing.labels
    assert firing.annotations.items() <= a["annotations"].items()
    assert a["annotations"]["value"] == "-1.8" and a["annotations"]["baseline_value"] == "0"
    assert a["generatorURL"] == firing.generator_url and a["endsAt"] == "0001-01-01T00:00:00Z"
    assert abs(parse(a["startsAt"]) - starts) < timedelta(milliseconds=1)

    resolved_at = datetime.now(UTC) - timedelta(seconds=1)
    resolved = alert(rule=rule, starts_at=starts, status="resolved", ends_at=resolved_at)
    am.send(notification([resolved]))
    got = hook.wait_for(of_rule(rule, "resolved"), WAIT_S).json
    (a,) = got["alerts"]
    assert a["status"] == "resolved" and a["labels"] == firing.labels
    assert abs(parse(a["endsAt"]) - resolved_at) < timedelta(milliseconds=1)


def test_resend_keeps_a_firing_alert_for_four_intervals(am: Alertmanager, am_url: str) -> None:
    rule = "AttnmonTestResend"
    firing, _ = recent(rule)
    before = datetime.now(UTC)
    am.resend([firing, alert(rule=rule, head=2, status="resolved")])
    (a,) = held_alerts(am_url, rule)  # the resolved one was not sent
    assert a["labels"]["head"] == "1" and a["status"]["state"] == "active"
    # endsAt = now + 4 × resend_interval_s (30 s)
    assert before + timedelta(seconds=119) <= parse(a["endsAt"]) <= datetime.now(UTC) + timedelta(seconds=121)


def test_a_large_group_posted_in_batches_is_all_held(am: Alertmanager, am_url: str) -> None:
    rule = "AttnmonTestBatches"
    starts = datetime.now(UTC) - timedelta(minutes=3)
    am.send(notification([alert(rule=rule, starts_at=starts, layer=i // 10, head=i % 10) for i in range(130)]))
    held = held_alerts(am_url, rule)
    assert len(held) == 130 and {a["status"]["state"] for a in held} == {"active"}
    assert {(a["labels"]["layer"], a["labels"]["head"]) for a in held} == {(str(i // 10), str(i % 10)) for i in range(130)}


def test_a_dashboard_annotation_that_is_not_a_url_does_not_get_the_alerts_refused(am: Alertmanager, am_url: str) -> None:
    # a rule's `dashboard: Overview board` (no external_url set) became the generatorURL,
    # which Alertmanager refuses with 422 (it must be a URI): the whole batch failed for good
    rule = "AttnmonTestPlainDashboard"
    firing, _ = recent(rule, dashboard="Overview board")
    for link in ("Overview board", "grafana/d/attnmon-heads", None):
        am.send(notification([replace(firing, generator_url=link)], external_url=None))
    (a,) = held_alerts(am_url, rule)
    assert a["status"]["state"] == "active" and not a.get("generatorURL")
    # a plain-text annotation is still shown as one, and a real URL still becomes the link
    assert a["annotations"]["dashboard"] == "Overview board"
    am.send(notification([firing], external_url=None))
    assert held_alerts(am_url, rule)[0]["generatorURL"] == firing.generator_url


def test_generic_webhook_json_has_alertmanagers_shape(am: Alertmanager, hook: HttpPeer) -> None:
    """What the real Alertmanager posts and what our webhook receiver posts: the same
    keys with the same types, for the notification and for each alert."""
    rule = "AttnmonTestWebhookShape"
    firing, _ = recent(rule)
    am.send(notification([firing]))
    theirs = hook.wait_for(of_rule(rule, "firing"), WAIT_S).json

    webhook = Webhook("tools", url=f"{hook.url}/ours", timeout_s=5)
    try:
        webhook.send(notification([firing], group_key=theirs["groupKey"], receiver="hook"))
    finally:
        webhook.close()
    ours = hook.wait_for(lambda r: r.path == "/ours", 5).json

    assert shape(ours) == shape(theirs)
    assert ours["alerts"][0]["labels"] == theirs["alerts"][0]["labels"]
    assert ours["alerts"][0]["endsAt"] == theirs["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert ours["version"] == theirs["version"] == "4" and ours["truncatedAlerts"] == theirs["truncatedAlerts"] == 0
    assert ours["status"] == theirs["status"] == "firing"
