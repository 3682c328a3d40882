"""Receivers against local HTTP peers that check the documented payloads (PagerDuty
Events v2, Slack incoming webhooks, Alertmanager's webhook format) and answer with the
statuses those services use; secrets stay out of errors, logs and repr()."""

from __future__ import annotations

import json
import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from peers import T0, Answer, HttpPeer, Request, alert, closed_port, notification, silent_port

from alerts.config import ReceiverConfig
from alerts.model import DeliveryError
from alerts.receivers import Alertmanager, Email, PagerDuty, Slack, Webhook, build
from alerts.receivers._http import shown_url
from monitor.config import load_config
from monitor.errors import ConfigError

ROUTING_KEY = "R0UT1NGk3ys3cr3tQ0123456789abcde"  # 32 characters, as PagerDuty's are
SLACK_TOKEN = "SLACKs3cr3tT0KENxyz"
WEBHOOK_TOKEN = "H00Ks3cr3tT0KENabc"
SECRETS = (ROUTING_KEY, SLACK_TOKEN, WEBHOOK_TOKEN)
NOW = T0 + timedelta(minutes=25)


def clock() -> datetime:
    return NOW


# -- the peers' schemas, as documented ------------------------------------------------

PD_SEVERITIES = {"critical", "error", "warning", "info"}


def check_pagerduty(e: dict) -> None:
    """PagerDuty Events API v2 (POST /v2/enqueue)."""
    assert isinstance(e, dict)
    assert set(e) <= {"routing_key", "event_action", "dedup_key", "payload", "images", "links", "client", "client_url"}
    assert isinstance(e["routing_key"], str) and len(e["routing_key"]) == 32
    assert e["event_action"] in ("trigger", "acknowledge", "resolve")
    assert isinstance(e["dedup_key"], str) and 0 < len(e["dedup_key"]) <= 255
    if e["event_action"] != "trigger":
        assert set(e) == {"routing_key", "event_action", "dedup_key"}
        return
    p = e["payload"]
    assert {"summary", "source", "severity"} <= set(p)
    assert set(p) <= {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
    assert isinstance(p["summary"], str) and 0 < len(p["summary"]) <= 1024
    assert isinstance(p["source"], str) and p["source"]
    assert p["severity"] in PD_SEVERITIES
    if "timestamp" in p:
        assert datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    for key in ("component", "group", "class"):
        assert key not in p or (isinstance(p[key], str) and p[key])
    assert isinstance(p.get("custom_details", {}), dict)
    for link in e.get("links", []):
        assert set(link) <= {"href", "text"}
        assert re.match(r"https?://", link["href"]) and isinstance(link.get("text", ""), str)
    assert isinstance(e.get("client", ""), str) and isinstance(e.get("client_url", ""), str)


def check_mrkdwn(text: str) -> None:
    """Slack mrkdwn: <, > only in <url|label> links, & only as an entity."""
    bare = re.sub(r"<https?://[^|<>\s]+\|[^<>]+>", "", text)
    assert "<" not in bare and ">" not in bare, text
    assert not re.search(r"&(?!amp;|lt;|gt;)", bare), text


def check_text(t: dict, limit: int) -> None:
    """A Block Kit text object."""
    assert t["type"] in ("mrkdwn", "plain_text") and 0 < len(t["text"]) <= limit
    assert set(t) <= ({"type", "text", "emoji"} if t["type"] == "plain_text" else {"type", "text", "verbatim"})
    if t["type"] == "mrkdwn":
        check_mrkdwn(t["text"])


def check_slack(body: dict) -> None:
    """Slack incoming webhook: `text` (the fallback) plus Block Kit `blocks`."""
    assert set(body) <= {"text", "blocks", "attachments", "mrkdwn", "unfurl_links", "unfurl_media"}
    assert isinstance(body["text"], str) and 0 < len(body["text"]) <= 40_000
    assert isinstance(body.get("mrkdwn", True), bool)
    blocks = body.get("blocks", [])
    assert isinstance(blocks, list) and len(blocks) <= 50
    for b in blocks:
        if b["type"] == "header":
            assert b["text"]["type"] == "plain_text" and 0 < len(b["text"]["text"]) <= 150
        elif b["type"] == "section":
            assert "text" in b or "fields" in b
            if "text" in b:
                check_text(b["text"], 3000)
            assert len(b.get("fields", [])) <= 10
            for field in b.get("fields", []):
                check_text(field, 2000)
        elif b["type"] == "context":
            assert 1 <= len(b["elements"]) <= 10
            for el in b["elements"]:
                assert el["type"] in ("mrkdwn", "plain_text") and el["text"]
                if el["type"] == "mrkdwn":
                    check_mrkdwn(el["text"])
        else:
            assert b["type"] == "divider", b


def validating(check: Callable[[dict], None], ok: Answer, invalid: Answer) -> Callable[[Request], Answer]:
    """A peer that answers `ok` to a valid payload, `invalid` (plus why) otherwise."""

    def answer(request: Request) -> Answer:
        try:
            check(request.json)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            return Answer(invalid.status, f"{invalid.body}: {exc!r}"[:300])
        return ok

    return answer


PD_OK = Answer(202, '{"status":"success","message":"Event processed","dedup_key":"x"}')
PD_INVALID = Answer(400, '{"status":"invalid event","message":"Event object is invalid"}')
SLACK_OK = Answer(200, "ok")
SLACK_INVALID = Answer(400, "invalid_payload")


# -- helpers --------------------------------------------------------------------------


@pytest.fixture
def made() -> Iterator[list]:
    """Receivers made by a test, closed after it."""
    receivers: list = []
    yield receivers
    for r in receivers:
        r.close()


def make(kind: str, base: str, made: list, timeout_s: float = 5) -> PagerDuty | Slack | Webhook | Alertmanager:
    if kind == "pagerduty":
        r = PagerDuty("pager", routing_key=ROUTING_KEY, url=f"{base}/v2/enqueue", timeout_s=timeout_s, clock=clock)
    elif kind == "slack":
        r = Slack("oncall", webhook_url=f"{base}/services/T0001/B0001/{SLACK_TOKEN}", timeout_s=timeout_s, clock=clock)
    elif kind == "webhook":
        r = Webhook("tools", url=f"{base}/hook?token={WEBHOOK_TOKEN}", url_is_secret=True, timeout_s=timeout_s)
    else:
        r = Alertmanager("am", base, timeout_s=timeout_s, clock=clock)
    made.append(r)
    return r


def group(n: int) -> list:
    return [alert(layer=i // 5, head=i % 5, value=-1.5 - i / 10) for i in range(n)]


# -- PagerDuty --------------------------------------------------------------------------


def test_pagerduty_trigger_then_resolve_match_the_events_v2_schema(made: list) -> None:
    with HttpPeer(validating(check_pagerduty, PD_OK, PD_INVALID)) as peer:
        pd = make("pagerduty", peer.url, made)
        pd.send(notification(group(3)))
        trigger = peer.next()
        pd.send(notification([alert(status="resolved")]))
        resolve = peer.next()

    assert trigger.path == "/v2/enqueue" and trigger.headers["Content-Type"] == "application/json"
    e = trigger.json
    check_pagerduty(e)
    assert e["event_action"] == "trigger" and e["dedup_key"] == "attnmon-AttentionEntropyCollapse-sasrec-v42"
    p = e["payload"]
    assert p["severity"] == "critical" and p["class"] == "AttentionEntropyCollapse"
    assert p["source"] == "sasrec@v42" and p["component"] == "sasrec" and p["group"] == "v42"
    assert p["summary"] == (
        "AttentionEntropyCollapse on 3 series of model=sasrec version=v42 cohort=all layer=0: "
        "model=sasrec version=v42 layer=0 head=2: attention entropy collapsed (-1.7 SDs from the baseline mean), and 2 more"
    )  # the worst series first
    assert p["timestamp"] == "2026-11-26T03:12:05.000Z"
    series = p["custom_details"]["series"]
    assert [s["value"] for s in series] == [-1.7, -1.6, -1.5] and {s["baseline_value"] for s in series} == {0.0}
    assert series[1]["labels"] == "model=sasrec version=v42 cohort=all layer=0 head=1"
    assert p["custom_details"]["runbook"].startswith("The series' attention now falls")
    assert {link["text"]: link["href"] for link in e["links"]} == {
        "Dashboard": "https://grafana.example.com/d/attnmon-heads?var-model=sasrec"
    }

    check_pagerduty(resolve.json)
    assert resolve.json == {
        "routing_key": ROUTING_KEY,
        "dedup_key": e["dedup_key"],
        "event_action": "resolve",
    }


@pytest.mark.parametrize("severity", ["critical", "warning", "info"])
def test_pagerduty_severity_is_mapped(severity: str, made: list) -> None:
    pd = make("pagerduty", "http://127.0.0.1:9", made)
    assert pd.payload(notification([alert(severity=severity)]))["payload"]["severity"] == severity
    mixed = notification([alert(severity="info"), alert(severity=severity, head=2), alert(severity="warning", head=3)])
    worst = "critical" if severity == "critical" else "warning"
    assert pd.payload(mixed)["payload"]["severity"] == worst


def test_pagerduty_bounds_dedup_key_and_summary(made: list) -> None:
    pd = make("pagerduty", "http://127.0.0.1:9", made)
    long_key = "k" * 300
    huge = [alert(layer=i, summary="x" * 5000) for i in range(201)]
    trigger = pd.payload(notification(huge, dedup_key=long_key))
    resolve = pd.payload(notification([alert(status="resolved")], dedup_key=long_key))
    check_pagerduty(trigger)
    assert len(trigger["dedup_key"]) <= 255 and trigger["dedup_key"] == resolve["dedup_key"]
    assert len(trigger["payload"]["summary"]) == 1024 and trigger["payload"]["summary"].endswith("…")
    assert len(trigger["payload"]["custom_details"]["series"]) == 50
    assert trigger["payload"]["custom_details"]["series_total"] == 201
    # without a dedup_key the group key identifies the incident
    assert pd.payload(notification(dedup_key=""))["dedup_key"].startswith("{}:{alertname=")
    with pytest.raises(DeliveryError) as err:
        pd.payload(notification(dedup_key="", group_key=""))
    assert err.value.retry is False


def test_non_finite_values_are_sent_as_null(made: list) -> None:
    pd = make("pagerduty", "http://127.0.0.1:9", made)
    e = pd.payload(notification([alert(value=math.nan, baseline=math.inf)]))
    assert e["payload"]["custom_details"]["series"][0] | {"labels": ""} == {
        "labels": "", "status": "firing", "value": None, "baseline_value": None
    }
    json.dumps(e, allow_nan=False)


# -- Slack ------------------------------------------------------------------------------


def slack_texts(body: dict) -> list[tuple[str, str]]:
    """(type, text) of every text object in the blocks, in order."""
    out = []
    for b in body["blocks"]:
        for t in ([b["text"]] if "text" in b else []) + b.get("fields", []) + b.get("elements", []):
            out.append((t["type"], t["text"]))
    return out


def slack_fields(body: dict) -> dict[str, dict]:
    """The (label, data) field pairs of the sections: {"What": its text object, ...}."""
    out = {}
    for b in body["blocks"]:
        fields = b.get("fields", [])
        for label, data in zip(fields[::2], fields[1::2], strict=True):
            assert label["type"] == "mrkdwn" and re.fullmatch(r"\*[A-Z][a-z]+:\*", label["text"]), label
            out[label["text"][1:-2]] = data
    return out


def test_slack_message_tells_what_where_value_since_runbook_and_dashboard(made: list) -> None:
    with HttpPeer(validating(check_slack, SLACK_OK, SLACK_INVALID)) as peer:
        make("slack", peer.url, made).send(notification())
        request = peer.next()
    assert request.path == f"/services/T0001/B0001/{SLACK_TOKEN}"
    body = request.json
    check_slack(body)
    text = "\n".join(t for _, t in slack_texts(body))
    assert "FIRING: AttentionEntropyCollapse (critical)" in body["blocks"][0]["text"]["text"]
    assert "attention entropy collapsed" in text  # what
    assert "model=sasrec version=v42 cohort=all layer=0 head=1" in text  # where
    assert "-1.8 vs baseline 0" in text
    assert "2026-11-26 03:12:05 UTC (25 min ago)" in text  # since, in UTC
    assert "The series' attention now falls on far fewer history items than in its baseline." in text
    assert "Look at the heads-and-positions dashboard" in text  # the whole runbook: what to do
    assert "<https://grafana.example.com/d/attnmon-heads?var-model=sasrec|Dashboard>" in text
    assert list(slack_fields(body)) == ["What", "Where", "Value", "Since", "Runbook", "Silence"]
    # the fallback says the same in one line
    assert body["text"].startswith(":red_circle: FIRING: AttentionEntropyCollapse (critical): model=sasrec")
    assert "since 2026-11-26 03:12:05 UTC" in body["text"]


def test_slack_lists_a_large_group_compactly(made: list) -> None:
    slack = make("slack", "http://127.0.0.1:9", made)
    body = slack.payload(notification(group(25)))
    check_slack(body)
    texts = slack_texts(body)
    kind, series = texts[texts.index(("mrkdwn", "*Series:*")) + 1]
    lines = series.splitlines()
    assert kind == "plain_text" and lines[0] == "• layer=4 head=4: -3.9 vs baseline 0"  # the worst first
    assert len([x for x in lines if x.startswith("• ")]) == 10 and lines[-1] == "and 15 more"
    fields = slack_fields(body)
    assert fields["What"]["text"] == (
        "model=sasrec version=v42 layer=4 head=4: attention entropy collapsed (-3.9 SDs from the baseline mean)"
        " (and 24 more series)"
    )
    assert fields["Where"]["text"] == "model=sasrec version=v42 cohort=all"
    assert "Value" not in fields  # one per series, in the list


def test_slack_resolved_message_and_escaping(made: list) -> None:
    slack = make("slack", "http://127.0.0.1:9", made)
    resolved = alert(status="resolved", summary="p<0.01 & drop>5% on <head 1>")
    body = slack.payload(notification([resolved]))
    check_slack(body)
    fields = slack_fields(body)
    assert fields["What"] == {"type": "plain_text", "text": "p<0.01 & drop>5% on <head 1>", "emoji": False}
    assert "p&lt;0.01 &amp; drop&gt;5% on &lt;head 1&gt;" in body["text"]  # the fallback is parsed: escaped
    assert fields["Since"]["text"] == "2026-11-26 03:12:05 UTC until 2026-11-26 03:40:05 UTC (28 min)"
    assert body["blocks"][0]["text"]["text"].startswith(":large_green_circle: RESOLVED")


HOSTILE = ("a*b_c~d`e<f>&g", "`; DROP TABLE x; --", "*bold* _it_ ~gone~ `code` <!channel> :fire:")


def test_slack_shows_stored_data_as_written_never_as_mrkdwn(made: list) -> None:
    """Label values and summaries with mrkdwn's characters reach Slack only in plain_text
    objects, exactly as stored; mrkdwn text holds only our labels and links."""
    cohort, version, summary = HOSTILE
    body = make("slack", "http://127.0.0.1:9", made).payload(hostile_notification())
    check_slack(body)
    fields = slack_fields(body)
    assert fields["What"]["text"] == f"{summary} (and 1 more series)"
    assert fields["Where"]["text"] == f"model=sasrec version={version} cohort={cohort} layer=0"
    texts = slack_texts(body)
    series = texts[texts.index(("mrkdwn", "*Series:*")) + 1]
    assert series == ("plain_text", "• head=1 attribute=x*_~`: -1.8 vs baseline 0\n• head=2 attribute=y*_~`: -1.8 vs baseline 0")
    for kind, text in texts:
        if kind == "plain_text":
            continue
        for value in (*HOSTILE, "x*_~`", "DROP TABLE", "a*b", "<!channel>", "&lt;!channel&gt;", ":fire:"):
            assert value not in text, (value, text)
    assert [t for k, t in texts if k == "mrkdwn" and not t.startswith("severity ")] == [
        "*What:*", "*Where:*", "*Since:*", "*Series:*", "*Runbook:*", "*Silence:*"]
    assert all(f["emoji"] is False for f in fields.values())  # a ":fire:" in the data stays text
    # the fallback: not parsed as mrkdwn, and Slack's control characters escaped
    assert body["mrkdwn"] is False
    assert f"cohort={cohort}".replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in body["text"]
    assert "<f>" not in body["text"] and "<!channel>" not in body["text"]


def hostile_notification():
    """Two series whose cohort, version, summary and own labels carry markup characters."""
    cohort, version, summary = HOSTILE
    alerts = [alert(head=h, summary=summary if h == 1 else "other") for h in (1, 2)]
    return notification([replace(a, labels={**a.labels, "cohort": cohort, "version": version, "attribute": f"{h}*_~`"})
                         for a, h in zip(alerts, ("x", "y"), strict=True)])


def test_pagerduty_carries_stored_data_as_plain_json_strings(made: list) -> None:
    cohort, version, summary = HOSTILE
    e = make("pagerduty", "http://127.0.0.1:9", made).payload(hostile_notification())
    check_pagerduty(e)
    where = f"model=sasrec version={version} cohort={cohort} layer=0"
    p = e["payload"]
    assert p["custom_details"]["where"] == where and p["group"] == version and p["source"] == f"sasrec@{version}"
    assert p["summary"] == f"AttentionEntropyCollapse on 2 series of {where}: {summary}, and 1 more"
    assert [s["labels"] for s in p["custom_details"]["series"]] == [
        f"{where} head={h} attribute={a}*_~`" for h, a in (("1", "x"), ("2", "y"))]
    assert json.loads(json.dumps(e)) == e  # as written: no entity, no markup added


def test_email_html_escapes_stored_data_and_the_text_part_keeps_it_as_written() -> None:
    from html.parser import HTMLParser

    cohort, version, summary = HOSTILE
    msg = Email("ops", host="127.0.0.1", sender="attnmon@example.com", to=["ops@example.com"],
                clock=clock).message(hostile_notification())
    where = f"model=sasrec version={version} cohort={cohort} layer=0"

    class Read(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.add(tag)

        def handle_data(self, data: str) -> None:
            self.text += data

    page = Read(convert_charrefs=True)
    page.tags, page.text = set(), ""
    page.feed(msg.get_body(("html",)).get_content())
    # "<f>" in a cohort, "<!channel>" in a summary: text, not markup
    assert page.tags <= {"html", "body", "h2", "table", "tr", "th", "td", "code", "a", "p", "ul", "li"}
    assert where in page.text and summary in page.text and "head=1 attribute=x*_~`" in page.text
    plain = msg.get_body(("plain",)).get_content()
    assert f"Where: {where}" in plain and summary in plain
    assert msg["Subject"] == f"[FIRING:2] AttentionEntropyCollapse (critical) {where}"


# -- generic webhook (Alertmanager's webhook format) ------------------------------------

AM_WEBHOOK_KEYS = {
    "receiver", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations",
    "externalURL", "version", "groupKey", "truncatedAlerts",
}
AM_ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}


def test_webhook_posts_alertmanager_webhook_json(made: list) -> None:
    firing, resolved = alert(), alert(head=2, status="resolved")
    with HttpPeer(Answer(204)) as peer:
        make("webhook", peer.url, made).send(notification([firing, resolved]))
        body = peer.next().json
    assert set(body) == AM_WEBHOOK_KEYS
    assert body["version"] == "4" and body["truncatedAlerts"] == 0 and body["status"] == "firing"
    assert body["receiver"] == "oncall" and body["groupKey"].startswith("{}:{alertname=")
    assert body["externalURL"] == "https://grafana.example.com/d/attnmon-overview"
    assert [set(a) for a in body["alerts"]] == [AM_ALERT_KEYS] * 2
    a, b = body["alerts"]
    assert a["endsAt"] == "0001-01-01T00:00:00Z" and a["startsAt"] == "2026-11-26T03:12:05.000Z"
    assert b["status"] == "resolved" and b["endsAt"] == "2026-11-26T03:40:05.000Z"
    assert a["labels"] == firing.labels and a["fingerprint"] == firing.fingerprint
    for x in body["alerts"]:
        assert body["commonLabels"].items() <= x["labels"].items()
        assert body["commonAnnotations"].items() <= x["annotations"].items()
    assert "head" not in body["commonLabels"]


def test_webhook_max_alerts_keeps_that_many_and_counts_the_rest(made: list, monkeypatch: pytest.MonkeyPatch) -> None:
    # the first 10 alerts are cohort=web, the other 15 cohort=ios: cohort is common to the
    # alerts kept, not to the group, so commonLabels must not claim it
    alerts = [alert(layer=i // 5, head=i % 5) for i in range(25)]
    alerts = [replace(a, labels={**a.labels, "cohort": "web" if i < 10 else "ios"}) for i, a in enumerate(alerts)]
    hook = build(receiver_config("tools", webhook={"url": "http://127.0.0.1:9/hook", "max_alerts": 10}))
    made.append(hook)
    body = hook.payload(notification(alerts))
    assert len(body["alerts"]) == 10 and body["truncatedAlerts"] == 15
    assert [a["labels"] for a in body["alerts"]] == [{k: str(v) for k, v in a.labels.items()} for a in alerts[:10]]
    assert body["commonLabels"] == {"alertname": "AttentionEntropyCollapse", "severity": "critical",
                                    "model": "sasrec", "version": "v42"}
    assert body["status"] == "firing" and body["groupKey"] == notification(alerts).group_key
    # 0, the default, and a limit the group fits in: every alert, nothing truncated
    for limit in (0, 25):
        whole = Webhook("tools", url="http://127.0.0.1:9/hook", max_alerts=limit).payload(notification(alerts))
        assert len(whole["alerts"]) == 25 and whole["truncatedAlerts"] == 0
        assert whole["commonLabels"] == body["commonLabels"]
    assert Webhook("tools", url="http://127.0.0.1:9/hook").max_alerts == 0


def test_a_negative_webhook_max_alerts_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "attnmon.yaml"
    path.write_text("alerts:\n  receivers:\n    - {name: tools, webhook: {url: 'http://h/hook', max_alerts: -1}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.problems == [("alerts.receivers.0.webhook.max_alerts", -1, "must be ≥ 0")]
    assert "alerts.receivers.0.webhook.max_alerts" in str(err.value)


# -- Alertmanager receiver, its payload -------------------------------------------------


def test_alertmanager_payload_keeps_firing_alerts_and_ends_resolved_ones(made: list) -> None:
    with HttpPeer(Answer(200)) as peer:
        am = Alertmanager("am", peer.url + "/", resend_interval_s=60, clock=clock)
        made.append(am)
        firing = alert(**{"team-name": "x"})
        firing = type(firing)(**{**firing.__dict__, "labels": {**firing.labels, "team-name": "recs", "empty": ""}})
        am.send(notification([firing, alert(head=2, status="resolved")]))
        request = peer.next()
        am.resend([alert(head=2, status="resolved")])  # nothing firing: nothing sent
        am.resend([alert(head=3)])
        resent = peer.next()
    assert request.path == "/api/v2/alerts"
    a, b = request.json
    assert a["endsAt"] == "2026-11-26T03:41:05.000Z"  # now + 4 × resend interval
    assert b["endsAt"] == "2026-11-26T03:40:05.000Z"  # the resolution time
    assert a["startsAt"] == "2026-11-26T03:12:05.000Z"
    assert a["labels"]["team_name"] == "recs" and "empty" not in a["labels"]
    assert a["labels"]["alertname"] == "AttentionEntropyCollapse" and a["labels"]["head"] == "1"
    assert a["annotations"]["team_name"] == "x" and a["annotations"]["value"] == "-1.8"
    assert a["generatorURL"] == "https://attnmon.example.com/alerts?rule=AttentionEntropyCollapse"
    assert [x["labels"]["head"] for x in resent.json] == ["3"]


def test_alertmanager_posts_a_large_group_in_batches_of_64_in_order(made: list) -> None:
    alerts = [alert(layer=i // 10, head=i % 10) for i in range(130)]
    with HttpPeer(Answer(200)) as peer:
        am = make("alertmanager", peer.url, made)
        am.send(notification(alerts))
        sent = [peer.next().json for _ in range(3)]
        am.resend(alerts)
        resent = [peer.next().json for _ in range(3)]
        assert peer.requests.empty()
    assert [len(b) for b in sent] == [len(b) for b in resent] == [64, 64, 2]
    posted = [(a["labels"]["layer"], a["labels"]["head"]) for b in sent for a in b]
    assert posted == [(x.labels["layer"], x.labels["head"]) for x in alerts]
    assert [a["labels"] for b in resent for a in b] == [a["labels"] for b in sent for a in b]


def scripted(*statuses: int) -> tuple[httpx.MockTransport, list[list[dict]]]:
    """A transport answering each POST with the next status (then 200), and the bodies
    it was sent."""
    queue, bodies = list(statuses), []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(queue.pop(0) if queue else 200)

    return httpx.MockTransport(answer), bodies


def test_alertmanager_stops_at_a_failing_batch_the_retry_posts_them_all(made: list) -> None:
    alerts = [alert(layer=i // 10, head=i % 10) for i in range(130)]
    transport, bodies = scripted(200, 503)
    am = Alertmanager("am", "http://am.example:9093", clock=clock, transport=transport)
    made.append(am)
    with pytest.raises(DeliveryError) as err:
        am.send(notification(alerts))
    assert err.value.retry is True and "HTTP 503" in str(err.value) and "(batch 2 of 3, 64 alerts)" in str(err.value)
    assert [len(b) for b in bodies] == [64, 64]  # the third batch waits for the retry
    am.send(notification(alerts))  # the outbox's retry: every batch again, in order
    assert [len(b) for b in bodies[2:]] == [64, 64, 2]
    assert [(a["labels"]["layer"], a["labels"]["head"]) for b in bodies[2:] for a in b] == [
        (x.labels["layer"], x.labels["head"]) for x in alerts
    ]


def test_alertmanager_posts_the_batches_after_one_it_refuses(made: list) -> None:
    # a 400 is about that batch's content: the alerts of the other batches still go
    transport, bodies = scripted(400)
    am = Alertmanager("am", "http://am.example:9093", clock=clock, transport=transport)
    made.append(am)
    with pytest.raises(DeliveryError) as err:
        am.resend([alert(layer=i // 10, head=i % 10) for i in range(130)])
    assert err.value.retry is False and "HTTP 400" in str(err.value) and "(batch 1 of 3, 64 alerts)" in str(err.value)
    assert [len(b) for b in bodies] == [64, 64, 2]


# -- answers → DeliveryError(retry=...) --------------------------------------------------

KINDS = ["pagerduty", "slack", "webhook", "alertmanager"]
ANSWERS = [
    (200, None), (202, None), (204, None),
    (400, False), (403, False), (404, False), (410, False), (301, False),
    (408, True), (429, True), (500, True), (503, True),
]


@pytest.mark.parametrize("kind", KINDS)
def test_answers_map_to_retry_or_not(kind: str, made: list) -> None:
    with HttpPeer() as peer:
        r = make(kind, peer.url, made)
        for status, retry in ANSWERS:
            peer.answer = Answer(status, "rate_limited" if status == 429 else "", {"Retry-After": "30"} if status == 429 else {})
            if retry is None:
                r.send(notification())
                continue
            with pytest.raises(DeliveryError) as err:
                r.send(notification())
            assert err.value.retry is retry, (status, str(err.value))
            assert f"HTTP {status} from http://127.0.0.1:" in str(err.value)
            if status == 429:
                assert "rate_limited (Retry-After: 30)" in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_unreachable_or_silent_peer_is_retried(kind: str, made: list) -> None:
    with closed_port() as port:
        with pytest.raises(DeliveryError) as err:
            make(kind, f"http://127.0.0.1:{port}", made).send(notification())
    assert err.value.retry is True and "cannot reach http://127.0.0.1:" in str(err.value)
    with silent_port() as port:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as err:
            make(kind, f"http://127.0.0.1:{port}", made, timeout_s=0.3).send(notification())
        assert time.monotonic() - started < 3
    assert err.value.retry is True and "no answer from http://127.0.0.1:" in str(err.value)


# -- secrets ------------------------------------------------------------------------------


def echo(status: int) -> Callable[[Request], Answer]:
    """A careless peer that quotes the whole request back in its error."""
    return lambda r: Answer(status, f"bad request {r.path} {r.body.decode()}")


@pytest.mark.parametrize("kind", ["pagerduty", "slack", "webhook"])
def test_secrets_stay_out_of_errors_logs_and_repr(kind: str, made: list, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[DeliveryError] = []
    with HttpPeer(Answer(200)) as peer:
        r = make(kind, peer.url, made)
        r.send(notification())
        assert peer.next().body  # sent, and httpx logged the request (with the secret hidden):
        assert "HTTP Request: POST http://127.0.0.1:" in caplog.text
        for answer in (echo(400), echo(500)):
            peer.answer = answer
            with pytest.raises(DeliveryError) as err:
                r.send(notification())
            errors.append(err.value)
    assert "bad request" in str(errors[0])  # the peer's answer is quoted, scrubbed
    with closed_port() as port, pytest.raises(DeliveryError) as err:
        make(kind, f"http://127.0.0.1:{port}", made).send(notification())
    errors.append(err.value)
    with silent_port() as port, pytest.raises(DeliveryError) as err:
        make(kind, f"http://127.0.0.1:{port}", made, timeout_s=0.2).send(notification())
    errors.append(err.value)

    shown = [str(e) for e in errors] + [repr(e) for e in errors]
    shown += ["".join(traceback.format_exception(e)) for e in errors]
    shown += [repr(r) for r in made] + [caplog.text]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text, text
    assert "***" in caplog.text or kind == "pagerduty"


def test_shown_url_hides_secret_urls() -> None:
    url = f"https://user:pw@hooks.slack.com:8443/services/T/B/{SLACK_TOKEN}?x=1"
    assert shown_url(url, secret=True) == "https://hooks.slack.com:8443"
    assert shown_url(url, secret=False) == "https://hooks.slack.com:8443/services/T/B/" + SLACK_TOKEN
    assert shown_url("http://[::1]:9093/am", secret=True) == "http://[::1]:9093"


# -- build ----------------------------------------------------------------------------------


def receiver_config(name: str, **kind: object) -> ReceiverConfig:
    return ReceiverConfig.model_validate({"name": name, **kind})


def test_build_reads_secrets_from_env_and_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, made: list) -> None:
    monkeypatch.setenv("TEST_PD_KEY", ROUTING_KEY)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "smtp-pw-s3cr3t")
    (tmp_path / "slack").write_text(f"https://hooks.slack.com/services/T/B/{SLACK_TOKEN}\n")
    built = [
        build(receiver_config("am", alertmanager={"url": "http://127.0.0.1:9093", "resend_interval_s": 30}), clock=clock),
        build(receiver_config("pd", pagerduty={"routing_key": {"env": "TEST_PD_KEY"}})),
        build(receiver_config("sl", slack={"webhook_url": {"file": str(tmp_path / "slack")}})),
        build(receiver_config("wh", webhook={"url": "http://127.0.0.1:8080/hook"})),
        build(
            receiver_config(
                "mail",
                email={
                    "host": "127.0.0.1", "from": "attnmon@example.com", "to": ["ops@example.com"],
                    "username": "attnmon", "password": {"env": "TEST_SMTP_PASSWORD"},
                },
            )
        ),
    ]
    made.extend(built)
    assert [type(r) for r in built] == [Alertmanager, PagerDuty, Slack, Webhook, Email]
    assert [r.name for r in built] == ["am", "pd", "sl", "wh", "mail"]
    assert [r.kind for r in built] == ["alertmanager", "pagerduty", "slack", "webhook", "email"]
    assert built[0].resend_interval_s == 30
    assert built[1].payload(notification())["routing_key"] == ROUTING_KEY
    assert repr(built[2]) == "Slack(name='sl', webhook_url='https://hooks.slack.com/***')"
    assert repr(built[4]) == "Email(name='mail', host='127.0.0.1', port=587, username='attnmon', password='***')"
    for r in built:
        assert ROUTING_KEY not in repr(r) and SLACK_TOKEN not in repr(r) and "s3cr3t" not in repr(r)


def test_build_reports_missing_secrets_and_bad_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        build(receiver_config("pd", pagerduty={"routing_key": {"env": "TEST_UNSET_KEY"}}))
    assert str(err.value) == ("alerts: receivers.pd.pagerduty.routing_key (env TEST_UNSET_KEY)='(unset)': "
                              "the secret's variable is not set")
    with pytest.raises(ConfigError, match=r"receivers.sl.slack.webhook_url \(file .*missing\)='\(unreadable\)'"):
        build(receiver_config("sl", slack={"webhook_url": {"file": str(tmp_path / "missing")}}))
    (tmp_path / "hook").write_text(f"ftp://hooks.example.com/{WEBHOOK_TOKEN}")
    with pytest.raises(ConfigError) as err:
        build(receiver_config("wh", webhook={"url_secret": {"file": str(tmp_path / "hook")}}))
    assert "ftp://hooks.example.com" in str(err.value) and WEBHOOK_TOKEN not in str(err.value)
    assert "receivers.wh.webhook.url_secret" in str(err.value)
    with pytest.raises(ConfigError, match="not an http"):
        build(receiver_config("am", alertmanager={"url": "alertmanager:9093"}))
    with pytest.raises(ConfigError, match="needs a password"):
        build(receiver_config("m", email={"host": "h", "from": "a@b", "to": ["c@d"], "username": "u"}))
