"""The default pack's rules on the monitor's own health fire on constructed situations:
no data, collectors rejecting input, notifications failing (alerts/health.py)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from alerting import T0, FakeReceiver, at, config, cycle, drift_row, failing, rule

from alerts import health
from alerts.outbox import Outbox
from alerts.rules import load_rule_set
from collectors import AttentionCollector


def produce(url: str, minutes: range, nan_share: float = 0.0, rate: int = 20) -> None:
    """`rate` requests a minute of model m v1; from minute 10 on, `nan_share` of them
    carry NaN weights. The collector's clock follows the minutes (its health rows too)."""
    rng = np.random.default_rng(0)
    clock = [T0.timestamp()]
    with AttentionCollector(url, model="m", version="v1", sample_rate=0, clock=lambda: clock[0]) as c:
        for m in minutes:
            clock[0] = T0.timestamp() + 60 * m + 30
            w = rng.dirichlet(np.ones(8), size=(rate, 2)).astype(np.float32)
            if m >= 10:
                w[: int(rate * nan_share), 0, 0] = np.nan
            c.observe_batch(w, item_ids=rng.integers(0, 50, (rate, 8)), cohorts="web", timestamps=clock[0])
            c.flush()


def transitions(store, rules, cfg, minutes, name):
    out = []
    for m in minutes:
        for tr in cycle(store, rules, cfg, m).transitions:
            if tr.alert.rule == name:
                out.append((tr.kind, (tr.at - T0) / timedelta(minutes=1), tr.alert))
    return out


def test_no_data_fires_after_ten_minutes_and_resolves_when_data_is_back(store_url, store):
    produce(store_url, range(0, 20))  # data for minutes 0..19 (the last one ends at 20)
    rules, cfg = load_rule_set(), config(())
    got = transitions(store, rules, cfg, range(5, 40), "NoAttentionData")
    produce(store_url, range(40, 42))
    got += transitions(store, rules, cfg, range(40, 50), "NoAttentionData")
    assert [(k, m) for k, m, _ in got] == [("firing", 30.0), ("resolved", 45.0)]  # data again in the window ending 41; keep_firing_for 5m after the last true (40)
    alert = got[0][2]
    assert alert.labels == {"alertname": "NoAttentionData", "severity": "warning", "model": "m", "version": "*",
                            "cohort": "*", "layer": "*", "head": "*", "baseline_kind": "none",
                            "statistic": "health.no_data_minutes"}
    assert alert.annotations["summary"] == "m: no attention data for 10 minutes (last: 2026-11-20 08:20 UTC)"


def test_no_data_counts_minutes_whose_every_request_was_rejected(store_url, store):
    """A model whose every vector is rejected is as blind as one that sends nothing: its
    minute rows (n = 0, rejections counted) are no data. At 5 requests a minute it stays
    under CollectorRejectingInput's 100 vectors, so nothing else would page."""
    produce(store_url, range(0, 40), nan_share=1.0, rate=5)  # every request rejected from minute 10
    rules, cfg = load_rule_set(), config(())
    got = transitions(store, rules, cfg, range(5, 40), "NoAttentionData")
    assert [(k, m) for k, m, _ in got] == [("firing", 20.0)]
    assert got[0][2].annotations["summary"] == "m: no attention data for 10 minutes (last: 2026-11-20 08:10 UTC)"
    assert transitions(store, rules, cfg, range(5, 40), "CollectorRejectingInput") == []


def test_no_data_after_the_rollup_still_reads_the_last_minute_with_data(store_url, store):
    """4 days on, a silent model's newest minutes are rolled up into an hour row: its
    minute_mask, not its end, says when data stopped, so the firing alert's value and
    summary (re-sent while it fires) do not jump by the rest of that hour."""
    from sqlalchemy import select

    from monitor.store import tables
    from monitor.store.maintenance import maintain

    produce(store_url, range(0, 20))  # minutes 0..19 of 08:00's hour: data ends at 08:20
    rules, cfg = load_rule_set(), config(())
    late = 4 * 24 * 60  # past the roll-up age (3 days), within NO_DATA_FORGET (7)
    wa, al = tables.window_aggregates, tables.alerts
    seen = []
    for minute in (late, late + 1):
        if minute > late:
            maintain(store, at(minute))
            with store.connect() as conn:
                rows = conn.execute(select(wa.c.bucket_seconds, wa.c.minute_mask).distinct()).all()
            assert rows == [(3600, 2**20 - 1)]  # one hour row per series, minutes 0..19
        cycle(store, rules, cfg, minute)
        with store.connect() as conn:
            seen.append(conn.execute(select(al.c.state, al.c.value, al.c.annotations)
                                     .where(al.c.rule == "NoAttentionData")).one())
    assert [(state, value) for state, value, _ in seen] == [("firing", late - 20), ("firing", late - 19)]
    assert seen[1][2]["summary"] == f"m: no attention data for {late - 19:,} minutes (last: 2026-11-20 08:20 UTC)"
    # an hour rolled up before migration 0006 (mask NULL) holds all its minutes: its end
    with store.begin() as conn:
        conn.execute(wa.update().values(minute_mask=None))
        (row,) = health.no_data(conn, at(late))
    assert (row["value"], row["detail"]["last_data"]) == (late - 60, "2026-11-20 09:00 UTC")


def test_rejecting_collectors_fire_after_for_with_the_reasons(store_url, store):
    produce(store_url, range(0, 40), nan_share=0.25)
    rules, cfg = load_rule_set(), config(())
    with store.connect() as conn:
        (row,) = health.rejected_ratio(conn, at(10), at(25))
    assert row["value"] == 0.25 and row["n_current"] == 300 and row["detail"]["top_reason"] == "nan"
    got = transitions(store, rules, cfg, range(5, 40), "CollectorRejectingInput")
    # the 15-minute window's ratio passes 5% at minute 13 (15 of 260); for 5m
    assert [(k, m) for k, m, _ in got] == [("firing", 18.0)]
    alert = got[0][2]
    assert (alert.labels["model"], alert.labels["version"]) == ("m", "v1")
    assert alert.annotations["summary"].startswith("m@v1: collectors reject 13.3% of attention vectors (by reason: nan 40")


def test_notifications_failing_fires_per_receiver_and_resolves(store):
    drift = rule(**{"for": "0s", "keep_firing_for": "1h"})
    rules = [drift, *[r for r in load_rule_set() if r.name == "NotificationsFailing"]]
    cfg = config(("pager", "backup"), route={"receiver": "pager", "group_wait_s": 0, "routes": [
        {"match": {"alertname": "NotificationsFailing"}, "receiver": "backup", "group_wait_s": 0}]},
        delivery={"backoff_initial_s": 1, "backoff_max_s": 1})
    pager = FakeReceiver("pager", failing(3, "HTTP 503 from https://events.example/v2/enqueue?key=SECRET"))
    backup = FakeReceiver("backup")
    box = Outbox(store, cfg, {"pager": pager, "backup": backup})
    fired = []
    for m in range(0, 30):
        c = cycle(store, rules, cfg, m, [drift_row(at(m), -3.0)], now=at(m))
        fired += [(tr.kind, (tr.at - T0) / timedelta(minutes=1), tr.alert) for tr in c.transitions
                  if tr.alert.rule == "NotificationsFailing"]
        box.deliver(at(m) + timedelta(seconds=10))  # fails at 0, 1, 2; delivered at 3
    # three failed tries by the cycle of minute 3 (counted in the window ending then);
    # delivered at 3, so false from minute 4; resolved 15 minutes after the last true
    assert [(k, m) for k, m, _ in fired] == [("firing", 3.0), ("resolved", 18.0)]
    alert = fired[0][2]
    assert alert.labels["receiver"] == "pager" and alert.labels["severity"] == "critical"
    assert alert.annotations["summary"] == (
        "attnmon cannot deliver notifications to pager (1 failing; last error: HTTP 503 from https://events.example)")
    assert [a.rule for n in backup.sent for a in n.alerts] == ["NotificationsFailing"] * 2
    assert [n.status for n in backup.sent] == ["firing", "resolved"]


def test_a_failing_receiver_still_counts_while_its_retry_is_in_flight(store):
    from sqlalchemy import update

    from monitor.store import tables

    cfg = config()
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, [drift_row(at(0), -3.0)])
    nt = tables.notifications
    with store.begin() as conn:
        conn.execute(update(nt).values(attempts=health.FAILING_ATTEMPTS))
    for status in ("pending", "sending"):
        with store.begin() as conn:
            conn.execute(update(nt).values(status=status))
            (row,) = health.notifications_failed(conn, at(1))
        assert (row["receiver"], row["value"]) == ("pager", 1.0), status
