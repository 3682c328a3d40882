"""An alert on a standardised or distribution statistic (delta.*, psi.*) says what the
metric itself did, from the same window's mean.* row: "entropy_norm fell from 0.824 to
0.311", which a person reads faster than "-3.21 SDs"."""

from __future__ import annotations

from alerting import at, config, cycle, drift_row, rule
from peers import T0, alert, notification
from sqlalchemy import select

from alerts.receivers import PagerDuty
from alerts.receivers._text import digest
from monitor.store import tables

FIRE_NOW = {"for": "0s"}


def stored_annotations(store) -> list[dict]:
    with store.connect() as conn:
        return [dict(r) for r in conn.execute(select(tables.alerts.c.annotations)).scalars()]


def test_a_delta_alert_says_what_the_mean_did_against_the_same_baseline(store):
    rows = [drift_row(at(0), -3.21, head=h) for h in ("1", "2")]
    rows.append(drift_row(at(0), 0.3112, statistic="mean.entropy_norm", baseline_value=0.8243, head="1"))
    # another baseline's mean is not this alert's
    rows.append(drift_row(at(0), 0.7, statistic="mean.entropy_norm", baseline_value=0.9, head="2",
                          baseline_kind="pinned"))
    cycle(store, [rule(**FIRE_NOW)], config(), 0, rows)
    observed = sorted(a.get("observed", "") for a in stored_annotations(store))
    assert observed == ["", "entropy_norm fell from 0.824 to 0.311"]


def test_the_value_line_leads_with_what_the_metric_did():
    a = alert(value=-3.21, baseline=0.0, observed="entropy_norm fell from 0.824 to 0.311")
    assert digest(notification([a]), now=T0).series[0] == "entropy_norm fell from 0.824 to 0.311: -3.21 vs baseline 0"


def test_pagerduty_details_carry_what_the_metric_did():
    a = alert(observed="entropy_norm fell from 0.824 to 0.311")
    (s,) = PagerDuty("p", routing_key="R").payload(notification([a]))["payload"]["custom_details"]["series"]
    assert s["observed"] == "entropy_norm fell from 0.824 to 0.311"


def test_what_the_metric_did_shows_enough_digits_to_see_the_move():
    """A head whose baseline barely varies fires at -3 SDs for a move in the fourth digit:
    "fell from 0.824 to 0.824" read as if nothing had moved."""
    from alerts.state import observed_text

    assert observed_text("delta.entropy_norm", 0.82411, 0.82436) == "entropy_norm fell from 0.8244 to 0.8241"
    assert observed_text("psi.distance", 120.4, 120.3) == "distance rose from 120.3 to 120.4"
    assert observed_text("delta.entropy_norm", 0.3112, 0.8243) == "entropy_norm fell from 0.824 to 0.311"
    # a distribution shift (psi) that leaves the mean where it was
    assert observed_text("psi.entropy_norm", 0.5, 0.5) == "entropy_norm stayed at 0.5"


def test_a_tiny_move_is_stored_with_its_digits(store):
    rows = [drift_row(at(0), -3.4, head="1"),
            drift_row(at(0), 0.82411, statistic="mean.entropy_norm", baseline_value=0.82436, head="1")]
    cycle(store, [rule(**FIRE_NOW)], config(), 0, rows)
    assert [a.get("observed") for a in stored_annotations(store)] == ["entropy_norm fell from 0.8244 to 0.8241"]
