"""A deploy as on-call lives it, end to end: simulated traffic through collectors, the
daemon (simulated clock) evaluating minute by minute with the default rule pack, and what
the receiver is sent. One shift of one series is one notification, whichever baseline
it is judged against."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from alerting import FakeReceiver
from prometheus_client import CollectorRegistry

from alerts.state import SERIES_LABELS
from monitor.config import Config
from monitor.daemon import Daemon
from monitor.demo import START, Segment, stream
from monitor.quality import TEST_EVALUATE
from monitor.simulate import Defect

BEFORE, AFTER = 150, 20  # minutes of v1, then minutes with the shift
# a head attends a little more sharply: its entropy distribution moves (PSI about 0.5)
# while its mean stays within a baseline SD, so no collapse rule fires
SHIFT = Defect(collapse_head=(1, 2), collapse_factor=1.5)


def run_shift(url: str, segments: list[Segment], *, pin: bool = False, evaluate=TEST_EVALUATE,
              after: int = AFTER) -> FakeReceiver:
    stream(url, segments, rate=100)
    shift = datetime.fromtimestamp(START + 60 * BEFORE, UTC)
    if pin:  # the quiet hours before, pinned as the baseline
        from monitor.cli import main

        assert main(["--store", url, "baseline", "pin", "--model", "demo-sasrec", "--name", "quiet",
                     "--from", (shift - timedelta(minutes=120)).isoformat(), "--to", shift.isoformat()]) == 0
    cfg = Config(
        store_url=url, evaluate=evaluate,
        daemon={"listen": "127.0.0.1:0", "evaluate_every_s": 60, "deliver_every_s": 60},
        alerts={"receivers": [{"name": "oncall", "webhook": {"url": "http://127.0.0.1:9/hook"}}],
                "route": {"receiver": "oncall", "group_wait_s": 0, "group_by": ["alertname", "model"]}},
    )
    oncall = FakeReceiver("oncall")
    now = [shift]
    with Daemon(cfg, clock=lambda: now[0], registry=CollectorRegistry(), receivers={"oncall": oncall}) as daemon:
        for k in range(-2, after + 1):
            now[0] = shift + timedelta(minutes=k + evaluate.lag_minutes, seconds=5)
            runs = daemon.tick()
            assert runs["evaluate"].ok and runs["deliver"].ok, runs
    return oncall


def fired(oncall: FakeReceiver) -> set[tuple[str, str, str]]:
    """(rule, severity, baseline_kind) of what was sent firing; one rule per series."""
    sent = [a for n in oncall.sent for a in n.alerts if a.status == "firing"]
    rules = defaultdict(set)  # a firing alert is also context in its group's later messages
    for a in sent:
        rules[tuple(a.labels[k] for k in SERIES_LABELS)].add(a.rule)
    assert sent and all(len(r) == 1 for r in rules.values()), rules  # one shift of one series: one alert
    return {(a.rule, a.severity, a.labels["baseline_kind"]) for a in sent}


def test_a_same_weights_deploy_shift_pages_once_with_the_critical_alert(sqlite_url):
    oncall = run_shift(sqlite_url, [Segment("v1", BEFORE, weights_id="w1"),
                                    Segment("v2", AFTER, SHIFT, weights_id="w1")])
    assert fired(oncall) == {("PostDeploymentShift", "critical", "previous_version")}


@pytest.mark.parametrize("baseline", ["trailing", "pinned"])
def test_the_same_shift_without_a_deploy_still_warns(sqlite_url, baseline):
    oncall = run_shift(sqlite_url, [Segment("v1", BEFORE), Segment("v1", AFTER, SHIFT)], pin=baseline == "pinned")
    assert fired(oncall) == {("AttentionEntropyDistributionShift", "warning", baseline)}


def test_a_shift_still_there_when_the_comparison_with_the_previous_version_ends_is_not_resolved(sqlite_url):
    """The shift persists past the deploy's comparison period (45 min here, a day by
    default), after which v2 is compared with its own trailing traffic, shifted all along.
    On-call must not read "resolved": Slack and email say it ended unfixed, the webhook and
    Alertmanager carry why in the `ended` annotation, PagerDuty's incident stays open."""
    from alerts.model import ENDED
    from alerts.receivers._text import digest, plain_text
    from alerts.receivers.email import subject
    from alerts.receivers.pagerduty import PagerDuty
    from alerts.receivers.slack import Slack
    from alerts.receivers.webhook import webhook_json

    cfg = TEST_EVALUATE.model_copy(update={"previous_version_hours": 0.75, "trailing_gap_hours": 0.25})
    after = 80  # the comparison ends at the window ending 45 min after the deploy; keep_firing_for is 30 min
    oncall = run_shift(sqlite_url, [Segment("v1", BEFORE, weights_id="w1"),
                                    Segment("v2", after, SHIFT, weights_id="w1")], evaluate=cfg, after=after)
    assert fired(oncall) == {("PostDeploymentShift", "critical", "previous_version")}
    deploy = datetime.fromtimestamp(START + 60 * BEFORE, UTC)
    ends = [n for n in oncall.sent if n.status == "resolved"]
    assert len(ends) == 1 and [n.status for n in oncall.sent][-1] == "resolved"
    (end,) = ends
    assert {a.rule for a in end.alerts} == {"PostDeploymentShift"}
    # at the first window compared with the trailing baseline, not keep_firing_for (30 min) later
    assert {a.ends_at for a in end.alerts} == {deploy + timedelta(minutes=46)}
    for a in end.alerts:
        assert a.ended and a.ended.startswith("Not fixed: the comparison with the version it replaced ended")
        assert "now compared with the trailing baseline" in a.ended
    # what each receiver makes of it
    d = digest(end, now=deploy + timedelta(minutes=47))
    assert d.title.startswith("ENDED, NOT FIXED: PostDeploymentShift (critical)")
    assert "Ended: Not fixed: the comparison" in plain_text(d) and "RESOLVED" not in plain_text(d)
    assert subject(d).startswith("[ENDED:")
    slack = Slack("s", webhook_url="https://hooks.slack.example/x").payload(end)
    assert slack["blocks"][0]["text"]["text"].startswith(":warning: ENDED, NOT FIXED")
    assert PagerDuty("p", routing_key="k").payload(end) is None  # no resolve: the incident stays open
    hook = webhook_json(end)
    assert all(x["status"] == "resolved" and x["annotations"][ENDED] == a.ended
               for x, a in zip(hook["alerts"], end.alerts, strict=True))
