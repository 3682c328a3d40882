"""End to end: simulated retail traffic through collectors, a head's entropy collapses,
the daemon (simulated clock, `tick`) evaluates minute by minute, the default rule pack
fires the expected alert on the right series, the outbox delivers it, /metrics shows it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pandas as pd
from alerting import FakeReceiver
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from monitor.config import Config
from monitor.daemon import Daemon
from monitor.demo import MODEL, START, Segment, stream
from monitor.quality import TEST_EVALUATE, scenarios
from monitor.store import make_engine, tables

BEFORE, AFTER = 180, 8  # minutes of v1 before the defect, and with it


def run_story(url: str):
    collapse = next(s for s in scenarios() if s.name == "entropy_collapse")
    stream(url, [Segment("v1", BEFORE), Segment("v1", AFTER, collapse.defect)], rate=100)
    shift = datetime.fromtimestamp(START + 60 * BEFORE, UTC)
    cfg = Config(
        store_url=url, evaluate=TEST_EVALUATE,
        daemon={"listen": "127.0.0.1:0", "evaluate_every_s": 60, "deliver_every_s": 60},
        alerts={"external_url": "https://grafana.example",
                "receivers": [{"name": "oncall", "webhook": {"url": "http://127.0.0.1:9/hook"}}],
                "route": {"receiver": "oncall", "group_wait_s": 0, "group_by": ["alertname", "model"]}},
    )
    oncall = FakeReceiver("oncall")
    registry = CollectorRegistry()
    now = [shift]
    with Daemon(cfg, clock=lambda: now[0], registry=registry, receivers={"oncall": oncall}) as daemon:
        for k in range(-2, AFTER + 1):  # cycles whose windows end at shift + k minutes
            now[0] = shift + timedelta(minutes=k + TEST_EVALUATE.lag_minutes, seconds=5)
            runs = daemon.tick()
            assert runs["evaluate"].ok and runs["deliver"].ok, runs
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            alerts = pd.DataFrame(conn.execute(select(tables.alerts)).mappings().all())
            results = pd.DataFrame(conn.execute(select(tables.drift_results)).mappings().all())
    finally:
        engine.dispose()
    return shift, alerts, results, oncall, registry


def test_an_entropy_collapse_fires_the_collapse_alert_on_its_head(sqlite_url):
    check_story(*run_story(sqlite_url))


def check_story(shift, alerts, results, oncall, registry):
    firing = alerts[alerts["state"] == "firing"]
    assert len(firing) and set(firing["rule"]) >= {"AttentionEntropyCollapse"}
    # what fires is on the collapsed head (layer 1, head 2); the layer's roll-up may go
    # pending; layer 0 stays quiet
    assert {(lab["layer"], lab["head"]) for lab in firing["labels"]} == {("1", "2")}
    assert {lab["layer"] for lab in alerts["labels"]} == {"1"}
    collapse = firing[firing["rule"] == "AttentionEntropyCollapse"]
    for _, a in collapse.iterrows():
        lab = a["labels"]
        assert {k: lab[k] for k in ("alertname", "severity", "model", "version", "layer", "head", "baseline_kind",
                                    "statistic")} == {
            "alertname": "AttentionEntropyCollapse", "severity": "critical", "model": MODEL, "version": "v1",
            "layer": "1", "head": "2", "baseline_kind": "trailing", "statistic": "delta.entropy_norm"}
        # pending at a window crossing -1 baseline SD; fired `for` (2m) later, having
        # crossed in every window between
        r = results[(results["statistic"] == "delta.entropy_norm") & (results["cohort"] == lab["cohort"])
                    & (results["layer"] == "1") & (results["head"] == "2") & (results["value"] < -1.0)]
        crossed = {ts.replace(tzinfo=UTC) for ts in r["window_end"]}
        active, fired = a["active_at"].replace(tzinfo=UTC), a["fired_at"].replace(tzinfo=UTC)
        assert fired == active + timedelta(minutes=2)
        assert {active + timedelta(minutes=i) for i in range(3)} <= crossed
        assert active - timedelta(minutes=1) not in crossed and active > shift
        assert a["annotations"]["summary"].startswith(f"{MODEL}@v1 layer 1 head 2")
        assert a["annotations"]["dashboard"].startswith(  # a head rule: heads
            "https://grafana.example/d/attnmon-heads?var-model=demo-sasrec&var-version=v1&"
            f"{urlencode({'var-cohort': lab['cohort']})}&var-layer=1&var-head=2&from=")  # on the series
    # delivered: the collapse alerts of every cohort in one message
    sent = [n for n in oncall.sent if n.group_labels.get("alertname") == "AttentionEntropyCollapse"]
    assert len(sent) >= 1 and sent[0].status == "firing"
    assert {a.fingerprint for n in sent for a in n.alerts} == set(collapse["fingerprint"])
    assert registry.get_sample_value("attnmon_alerts_firing", {"severity": "critical"}) == \
        (firing["severity"] == "critical").sum()
    assert registry.get_sample_value("attnmon_notifications_pending", {"receiver": "oncall"}) == 0
    assert registry.get_sample_value("attnmon_notification_sends_total", {"receiver": "oncall", "outcome": "delivered"}) \
        == len(oncall.sent)
