"""Alerts that ended unfixed (their series now compared with another baseline: alerts.model
ENDED) as the receivers see them afterwards, in the incident they were part of."""

from __future__ import annotations

from alerting import FakeReceiver, at, config, cycle, drift_row, rule

from alerts.outbox import Outbox
from alerts.receivers._text import digest
from alerts.receivers.pagerduty import PagerDuty

SHIFT = {"statistic": "psi.entropy_norm", "op": ">", "threshold": 0.25, "for": "0s", "keep_firing_for": "30m",
         "match": {"baseline_kind": "previous_version"}}
BY_VERSION = {"receiver": "pager", "group_wait_s": 0, "group_by": ["model", "version"]}


def psi(minute: float, head: str, value: float, baseline_kind: str = "previous_version") -> dict:
    return drift_row(at(minute), value, statistic="psi.entropy_norm", head=head, baseline_kind=baseline_kind)


def pagerduty_events(sent) -> list[tuple[str, str]]:
    """(event_action, dedup_key) of what the PagerDuty receiver posts for each notification."""
    pd = PagerDuty("pager", routing_key="R0")
    return [(e["event_action"], e["dedup_key"]) for e in map(pd.payload, sent) if e is not None]


def test_an_incident_with_a_series_that_ended_unfixed_is_not_resolved_by_the_rest(store):
    """Two series of one deploy fire in one incident. When the comparison with the
    previous version ends, one is compared with its trailing baseline and ends unfixed;
    the other has no results in that window (too little traffic) and resolves
    keep_firing_for later. That resolve must not close the PagerDuty incident as if the
    deploy were fine, nor read "RESOLVED" in Slack and email."""
    rules, cfg = [rule("DeployShift", **SHIFT)], config(route=BY_VERSION)
    pager = FakeReceiver("pager")
    box = Outbox(store, cfg, {"pager": pager})
    cycle(store, rules, cfg, 0, [psi(0, "1", 0.5), psi(0, "2", 0.5)])
    box.deliver(at(0))
    cycle(store, rules, cfg, 1, [psi(1, "1", 0.01, "trailing")])  # head 1: compared otherwise now
    box.deliver(at(1))
    for m in range(2, 32):  # head 2 gets no results, and resolves keep_firing_for after it last held
        cycle(store, rules, cfg, m)
        box.deliver(at(m))
    assert [n.status for n in pager.sent] == ["firing", "firing", "resolved"]
    last = pager.sent[-1]
    assert {a.labels["head"]: bool(a.ended) for a in last.alerts} == {"1": True, "2": False}
    (key,) = {n.dedup_key for n in pager.sent}
    assert pagerduty_events(pager.sent) == [("trigger", key), ("trigger", key)]  # the incident stays open
    assert digest(last, now=at(31)).title.startswith("ENDED, NOT FIXED: DeployShift")


def test_pagerduty_lists_a_series_that_ended_unfixed_as_ended_not_resolved(store):
    """While the rest of its incident fires, a series that ended unfixed goes to PagerDuty
    in a trigger's details: it must not read "resolved" there either."""
    rules, cfg = [rule("DeployShift", **SHIFT)], config(route=BY_VERSION)
    pager = FakeReceiver("pager")
    box = Outbox(store, cfg, {"pager": pager})
    cycle(store, rules, cfg, 0, [psi(0, "1", 0.5), psi(0, "2", 0.5), psi(0, "3", 0.5)])
    cycle(store, rules, cfg, 1, [psi(1, "1", 0.01, "trailing"), psi(1, "2", 0.5), psi(1, "3", 0.01)])
    cycle(store, rules, cfg, 40, [psi(40, "2", 0.5)])  # head 3 resolved (fixed) keep_firing_for after it held
    box.deliver(at(40))
    event = PagerDuty("pager", routing_key="R0").payload(pager.sent[-1])
    assert event["event_action"] == "trigger"
    statuses = {s["labels"].split("head=")[1].split()[0]: s["status"] for s in event["payload"]["custom_details"]["series"]}
    assert statuses == {"1": "ended", "2": "firing", "3": "resolved"}
