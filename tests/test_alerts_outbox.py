"""The outbox on a real store (SQLite here; tests/postgres/test_alerts_pg.py runs the same
tests on PostgreSQL): grouping, routing, silences, backoff, max age, restarts, dedup
keys, Alertmanager re-sends. Receivers are fakes implementing the Receiver protocol."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from alerting import FakeReceiver, at, config, cycle, drift_row, failing, rule
from sqlalchemy import select, update

import alerts.cycle
from alerts import silences
from alerts.config import AlertsConfig
from alerts.cycle import evaluate_alerts, read_watermark
from alerts.outbox import Outbox
from monitor.evaluate import write_results
from monitor.store import tables
from monitor.store.maintenance import as_utc
from monitor.store.upsert import put_state

S = timedelta(seconds=1)


def outbox_rows(engine, **where) -> list[dict]:
    nt = tables.notifications
    q = select(nt).order_by(nt.c.id)
    for k, v in where.items():
        q = q.where(nt.c[k] == v)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def alert_states(engine) -> dict[str, str]:
    al = tables.alerts
    with engine.connect() as conn:
        return {r.labels["head"]: r.state for r in conn.execute(select(al.c.labels, al.c.state))}


def shifted(minute: float, heads=range(10), layers=range(4), value=-3.0):
    return [drift_row(at(minute), value, layer=str(ly), head=str(h)) for ly in layers for h in heads]


def two_receivers(group_wait_s=30.0, **kw):
    return config(("pager", "slack"), route={"receiver": "slack", "group_wait_s": group_wait_s, "routes": [
        {"match": {"severity": "critical"}, "receiver": "pager", "continue": True, "group_wait_s": group_wait_s},
        {"receiver": "slack", "group_wait_s": group_wait_s},
    ]}, **kw)


def test_one_deploy_shifting_40_series_is_one_notification_per_receiver(store):
    rules, cfg = [rule(**{"for": "0s"})], two_receivers(group_wait_s=30)
    pager, slack = FakeReceiver("pager"), FakeReceiver("slack")
    box = Outbox(store, cfg, {"pager": pager, "slack": slack})
    # half the heads cross in one window, the other half in the next, evaluated 20 s later
    first = cycle(store, rules, cfg, 0, shifted(0, heads=range(5)))
    second = cycle(store, rules, cfg, 1, shifted(1, heads=range(10)), now=at(0) + 20 * S)
    assert (len(first.transitions), first.enqueued, len(second.transitions), second.enqueued) == (20, 40, 20, 40)
    assert box.deliver(at(0) + 29 * S).notifications == 0  # group_wait: not yet
    res = box.deliver(at(0) + 30 * S)
    assert (res.notifications, res.delivered) == (2, 80)
    for fake in (pager, slack):
        (note,) = fake.sent
        assert note.status == "firing" and len(note.alerts) == 40
        assert {(a.labels["layer"], a.labels["head"]) for a in note.alerts} == {(str(ly), str(h)) for ly in range(4) for h in range(10)}
        assert note.common_labels == {"alertname": "Collapse", "severity": "critical", "model": "m", "version": "v2",
                                      "cohort": "*", "baseline_kind": "trailing", "statistic": "delta.entropy_norm"}
        assert note.group_labels == {"alertname": "Collapse", "model": "m", "version": "v2"}
        assert note.dedup_key.startswith("attnmon-")
    assert {r["status"] for r in outbox_rows(store)} == {"delivered"}
    assert box.deliver(at(5)).notifications == 0  # nothing twice


def test_routing_by_severity_and_labels_with_continue(store):
    cfg = config(("pager", "mail", "slack", "search"), route={"receiver": "slack", "group_wait_s": 0, "routes": [
        {"match": {"severity": "critical"}, "receiver": "pager", "continue": True, "group_wait_s": 0},
        {"match": {"model": "search-*"}, "receiver": "search", "group_wait_s": 0},
        {"match": {"severity": "critical"}, "receiver": "mail", "group_wait_s": 0},
    ]})
    rules = [rule("Crit", **{"for": "0s"}), rule("Warn", severity="warning", statistic="psi.entropy_norm", op=">", threshold=0.25, **{"for": "0s"})]
    fakes = {n: FakeReceiver(n) for n in ("pager", "mail", "slack", "search")}
    rows = [drift_row(at(0), -3.0, model=m) for m in ("m", "search-1")]
    rows += [drift_row(at(0), 0.4, statistic="psi.entropy_norm", model=m) for m in ("m", "search-1")]
    cycle(store, rules, cfg, 0, rows)
    Outbox(store, cfg, fakes).deliver(at(0))
    got = {n: sorted((a.rule, a.labels["model"]) for note in f.sent for a in note.alerts) for n, f in fakes.items()}
    assert got == {
        "pager": [("Crit", "m"), ("Crit", "search-1")],
        "mail": [("Crit", "m")],
        "search": [("Crit", "search-1"), ("Warn", "search-1")],
        "slack": [("Warn", "m")],
    }


def test_silences_stop_notifications_not_evaluation_and_expire(store):
    rules, cfg = [rule(**{"for": "0s", "keep_firing_for": "0s"})], config()
    pager = FakeReceiver("pager")
    box = Outbox(store, cfg, {"pager": pager})
    sid = silences.create(store, ["head=2", "model=~m.*"], timedelta(minutes=10), "deploy of v3", "alice", at(0))
    cycle(store, rules, cfg, 0, shifted(0, heads=[2, 3], layers=[1]))
    res = box.deliver(at(0))
    assert (res.silenced, res.delivered) == (1, 1)
    assert [a.labels["head"] for a in pager.sent[0].alerts] == ["3"]
    assert alert_states(store) == {"2": "firing", "3": "firing"}  # evaluated all the same
    # head 4 fires and resolves inside another silence: neither is sent
    silences.create(store, ["head=4"], timedelta(minutes=30), "noisy head", "bob", at(0))
    for m in (1, 2):
        cycle(store, rules, cfg, m, shifted(m, heads=[2, 3, 4] if m == 1 else [2, 3], layers=[1]))
        box.deliver(at(m))
    assert [r["status"] for r in outbox_rows(store, fingerprint=_fp(store, "4"))] == ["silenced", "silenced"]
    assert len(pager.sent) == 1
    # the first silence ends (minute 10) while head 2 still fires: now it is sent
    for m in range(3, 12):
        cycle(store, rules, cfg, m, shifted(m, heads=[2, 3], layers=[1]))
        box.deliver(at(m))
    assert [[a.labels["head"] for a in n.alerts] for n in pager.sent] == [["3"], ["2", "3"]]
    assert pager.sent[1].status == "firing"
    with store.connect() as conn:
        assert sid not in [s.id for s in silences.load(conn, at(11))]  # expired by itself
    assert not silences.expire(store, sid, at(11))  # already over by itself


def _fp(engine, head: str) -> str:
    al = tables.alerts
    with engine.connect() as conn:
        return next(fp for fp, labels in conn.execute(select(al.c.fingerprint, al.c.labels)) if labels["head"] == head)


def test_a_receiver_failing_n_times_then_succeeding_gets_it_once(store):
    n = 4
    cfg = config(delivery={"backoff_initial_s": 10, "backoff_max_s": 1000, "max_age_s": 3600})
    pager = FakeReceiver("pager", failing(n))
    box = Outbox(store, cfg, {"pager": pager}, rng=random.Random(1))
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted(0, heads=[2], layers=[1]))
    now, waits = at(0), []
    for attempt in range(1, n + 1):
        res = box.deliver(now)
        assert (res.retrying, res.delivered) == (1, 0)
        (row,) = outbox_rows(store)
        assert row["attempts"] == attempt and row["last_error"] == "HTTP 503 from the peer"
        wait = (as_utc(row["next_attempt_at"]) - now).total_seconds()
        assert 0.75 * 10 * 2 ** (attempt - 1) <= wait <= 10 * 2 ** (attempt - 1)
        waits.append(wait)
        assert box.deliver(now + (wait - 1) * S).notifications == 0  # not before it is due
        now += wait * S
    assert waits == sorted(waits) and len(set(waits)) == n  # growing
    assert box.deliver(now).delivered == 1
    (row,) = outbox_rows(store)
    assert (row["status"], row["attempts"], len(pager.sent), pager.calls) == ("delivered", n + 1, 1, n + 1)


def test_max_age_or_a_permanent_error_marks_failed_with_the_error_and_no_secret(store):
    cfg = config(delivery={"backoff_initial_s": 5, "backoff_max_s": 10, "max_age_s": 60})
    secret_url = "https://hooks.slack.com/services/T000/B000/XXXSECRET?token=abc"
    pager = FakeReceiver("pager", failing(100, f"HTTP 500 from POST {secret_url}: server\nerror"))
    box = Outbox(store, cfg, {"pager": pager}, rng=random.Random(2))
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted(0, heads=[2], layers=[1]))
    box.deliver(at(0))
    assert outbox_rows(store)[0]["status"] == "pending"
    res = box.deliver(at(0) + 61 * S)
    (row,) = outbox_rows(store)
    assert res.failed == 1 and row["status"] == "failed" and row["attempts"] == 2
    assert row["last_error"] == "gave up after 60s: HTTP 500 from POST https://hooks.slack.com server error"
    assert "XXXSECRET" not in str(outbox_rows(store)) and "token" not in row["last_error"]
    # retry=False: failed at the first try
    bad = FakeReceiver("pager", failing(1, "HTTP 400: invalid_payload", retry=False))
    cycle(store, [rule(**{"for": "0s"})], cfg, 1, shifted(1, heads=[3], layers=[1]))
    Outbox(store, cfg, {"pager": bad}).deliver(at(1))
    row = outbox_rows(store)[-1]
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", 1, "HTTP 400: invalid_payload")


def test_an_unconfigured_receiver_fails_its_rows(store):
    cfg = config(("pager",))
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted(0, heads=[2], layers=[1]))
    Outbox(store, cfg, {}).deliver(at(0))
    (row,) = outbox_rows(store)
    assert row["status"] == "failed" and row["last_error"] == "receiver 'pager' is not configured"


class Crash(BaseException):
    """The process dies between a send and its commit."""


def test_a_restart_loses_nothing_and_repeats_only_under_the_same_dedup_key(store, monkeypatch):
    rules, cfg = [rule(**{"for": "1m", "keep_firing_for": "2m"})], config()
    pager = FakeReceiver("pager")
    cycle(store, rules, cfg, 0, shifted(0, heads=[2, 3], layers=[1]))
    cycle(store, rules, cfg, 1, shifted(1, heads=[2, 3], layers=[1]))  # fires
    # the daemon re-runs the window (it crashed before moving its own watermark)
    again = evaluate_alerts(store, rules, cfg, at(1) - timedelta(minutes=15), at(1), at(1))
    assert (again.evaluated, again.enqueued) == (False, 0) and read_watermark(store) == at(1)
    assert len(outbox_rows(store)) == 2
    # crash after the send, before its commit
    first = Outbox(store, cfg, {"pager": pager})
    monkeypatch.setattr(first, "_record", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        first.deliver(at(1))
    rows = outbox_rows(store)
    assert {r["status"] for r in rows} == {"sending"}  # claimed by the dead process
    (claim_end,) = {as_utc(r["next_attempt_at"]) for r in rows}
    ends = at(1) + timedelta(seconds=3 * 10) + timedelta(seconds=30)  # deadline + slack, from the claim
    assert ends <= claim_end < ends + 5 * S
    # a new process: new objects on the same store; it leaves the claim until it ends
    second = Outbox(store, cfg, {"pager": pager})
    assert second.deliver(at(1) + 15 * S).delivered == 0 and len(pager.sent) == 1
    res = second.deliver(claim_end)
    assert (res.reclaimed, res.delivered) == (2, 2)
    assert len(pager.sent) == 2 and pager.sent[0].dedup_key == pager.sent[1].dedup_key
    assert pager.sent[0].alerts == pager.sent[1].alerts
    # it resolves (under yet another process); the receiver is told under the same key
    for m in range(2, 6):
        cycle(store, rules, cfg, m)
        Outbox(store, cfg, {"pager": pager}).deliver(at(m))
    assert [n.status for n in pager.sent] == ["firing", "firing", "resolved"]
    assert len({n.dedup_key for n in pager.sent}) == 1  # one incident at the receiver
    assert [r["status"] for r in outbox_rows(store)] == ["delivered"] * 4


def test_dedup_keys_follow_group_incidents_and_context_keeps_a_group_firing(store):
    rules, cfg = [rule(**{"for": "0s", "keep_firing_for": "0s"})], config()
    pager = FakeReceiver("pager")
    box = Outbox(store, cfg, {"pager": pager})
    plan = {0: [2], 1: [2, 3], 2: [3], 3: [], 4: [2]}  # heads crossing at each minute
    for m, heads in plan.items():
        cycle(store, rules, cfg, m, shifted(m, heads=heads, layers=[1]))
        box.deliver(at(m))
    got = [(n.status, sorted((a.labels["head"], a.status) for a in n.alerts), n.dedup_key) for n in pager.sent]
    d1 = got[0][2]
    assert got[:4] == [
        ("firing", [("2", "firing")], d1),
        ("firing", [("2", "firing"), ("3", "firing")], d1),  # 3 joins the open incident
        ("firing", [("2", "resolved"), ("3", "firing")], d1),  # 3 still fires: not "resolved"
        ("resolved", [("3", "resolved")], d1),
    ]
    assert got[4][:2] == ("firing", [("2", "firing")]) and got[4][2] != d1  # a new incident


def test_alertmanager_receivers_get_firing_alerts_re_sent(store):
    cfg = AlertsConfig.model_validate({
        "receivers": [{"name": "am", "alertmanager": {"url": "http://127.0.0.1:9", "resend_interval_s": 60}}],
        "route": {"receiver": "am", "group_wait_s": 0},
    })
    am = FakeReceiver("am")
    box = Outbox(store, cfg, {"am": am})
    rules = [rule(**{"for": "0s", "keep_firing_for": "0s"})]
    cycle(store, rules, cfg, 0, shifted(0, heads=[2, 3], layers=[1]))
    box.deliver(at(0))
    assert box.deliver(at(0) + 30 * S).resent == 0
    assert box.deliver(at(1)).resent == 1
    assert [(n.status, len(n.alerts)) for n in am.sent] == [("firing", 2), ("firing", 2)]
    assert am.sent[0].dedup_key == am.sent[1].dedup_key
    assert len(outbox_rows(store)) == 2  # re-sends are not outbox rows
    silences.create(store, ["head=3"], timedelta(hours=1), "known", "carol", at(1))
    cycle(store, rules, cfg, 2, shifted(2, heads=[2, 3], layers=[1]))
    assert box.deliver(at(2) + 1 * S).resent == 1
    # silenced after Alertmanager was told it fires: still re-sent, or Alertmanager would
    # resolve it when its endsAt passes while it still fires
    assert [a.labels["head"] for a in am.sent[-1].alerts] == ["2", "3"]
    # an alert silenced before it was ever delivered is not re-sent (nobody heard of it)
    silences.create(store, ["head=4"], timedelta(hours=1), "known too", "carol", at(2))
    cycle(store, rules, cfg, 2.5, shifted(2.5, heads=[2, 3, 4], layers=[1]))
    assert box.deliver(at(2.5) + 1 * S).silenced == 1
    box.deliver(at(3.5))
    assert [a.labels["head"] for a in am.sent[-1].alerts] == ["2", "3"]
    cycle(store, rules, cfg, 4)  # all resolve
    res = box.deliver(at(4) + 2 * S)
    assert am.sent[-1].status == "resolved" and res.resent == 0
    assert box.deliver(at(6)).resent == 0  # nothing fires: nothing to re-send


def test_prune_keeps_what_still_fires(store):
    rules, cfg = [rule(**{"for": "0s", "keep_firing_for": "0s"})], config()
    box = Outbox(store, cfg, {"pager": FakeReceiver("pager")})
    cycle(store, rules, cfg, 0, shifted(0, heads=[2, 3], layers=[1]))
    box.deliver(at(0))
    cycle(store, rules, cfg, 1, shifted(1, heads=[2], layers=[1]))  # 3 resolves, 2 fires on
    box.deliver(at(1))
    with store.begin() as conn:  # as if the last cycle ran long ago
        conn.execute(update(tables.alerts).values(last_eval_at=at(1)))
    assert box.prune(at(0) + timedelta(days=8)) == 3  # 3's two rows and its alert
    assert [r["transition"] for r in outbox_rows(store)] == ["firing"]
    assert alert_states(store) == {"2": "firing"}


def test_the_configured_receivers_are_built_and_their_errors_stored_without_secrets(store, monkeypatch):
    # a real webhook receiver (alerts.receivers.build) whose URL carries a token; nothing listens
    monkeypatch.setenv("HOOK_URL", "http://127.0.0.1:1/hooks/T0KEN-SECRET?sig=ALSO-SECRET")
    cfg = AlertsConfig.model_validate({
        "receivers": [{"name": "hook", "webhook": {"url_secret": {"env": "HOOK_URL"}, "timeout_s": 2}},
                      {"name": "nokey", "pagerduty": {"routing_key": {"env": "ATTNMON_TEST_UNSET_KEY"}}}],
        "route": {"receiver": "hook", "group_wait_s": 0, "routes": [{"receiver": "hook", "continue": True, "group_wait_s": 0},
                                                                    {"receiver": "nokey", "group_wait_s": 0}]},
    })
    monkeypatch.delenv("ATTNMON_TEST_UNSET_KEY", raising=False)
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted(0, heads=[2], layers=[1]))
    res = Outbox(store, cfg).deliver(at(0))
    assert res.retrying == 2
    errors = {r["receiver"]: r["last_error"] for r in outbox_rows(store)}
    assert errors["hook"] and "SECRET" not in str(outbox_rows(store))
    assert errors["nokey"].startswith("cannot set up receiver 'nokey': ")
    assert "ATTNMON_TEST_UNSET_KEY" in errors["nokey"]


def test_a_pending_alert_starts_its_for_over_after_windows_nobody_evaluated(store):
    # the daemon was down longer than catchup_max_windows: windows 1..179 were skipped.
    # One true window before the gap and one after are not `for: 5m` of a true condition
    rules, cfg = [rule(**{"for": "5m"})], config()
    cycle(store, rules, cfg, 0, shifted(0, heads=[2], layers=[1]))
    assert cycle(store, rules, cfg, 180, shifted(180, heads=[2], layers=[1])).transitions == ()
    assert alert_states(store) == {"2": "pending"}
    fired = [m for m in range(181, 186) if cycle(store, rules, cfg, m, shifted(m, heads=[2], layers=[1])).transitions]
    assert fired == [185]  # five minutes after the first window after the gap


def test_a_route_edited_while_an_alert_fires_still_resolves_its_incident(store):
    # on-call adds a route in front during an incident: the alert's route id, so its group
    # key, changes. Its resolve must close the incident it opened (same dedup key, same
    # group), or PagerDuty keeps the page open and Alertmanager gets it re-sent as firing.
    am = {"name": "am", "alertmanager": {"url": "http://127.0.0.1:9", "resend_interval_s": 60}}
    before = AlertsConfig.model_validate({"receivers": [am], "route": {"receiver": "am", "group_wait_s": 0}})
    after = AlertsConfig.model_validate({"receivers": [am], "route": {"receiver": "am", "group_wait_s": 0, "routes": [
        {"match": {"model": "other"}, "receiver": "am", "group_wait_s": 0},
        {"receiver": "am", "group_by": ["alertname"], "group_wait_s": 0},
    ]}})
    rules = [rule(**{"for": "0s", "keep_firing_for": "0s"})]
    fake = FakeReceiver("am")
    cycle(store, rules, before, 0, shifted(0, heads=[2], layers=[1]))
    Outbox(store, before, {"am": fake}).deliver(at(0))
    box = Outbox(store, after, {"am": fake})  # the daemon restarted with the edited config
    cycle(store, rules, after, 1)  # resolves
    box.deliver(at(1))
    assert [n.status for n in fake.sent] == ["firing", "resolved"]
    assert fake.sent[1].dedup_key == fake.sent[0].dedup_key
    assert box.deliver(at(3)).resent == 0 and len(fake.sent) == 2  # not re-sent as firing


def test_a_receiver_routed_away_while_an_alert_fires_still_gets_its_resolve(store):
    both = two_receivers(group_wait_s=0)
    slack_only = config(("pager", "slack"), route={"receiver": "slack", "group_wait_s": 0, "routes": [
        {"match": {"severity": "info"}, "receiver": "pager", "group_wait_s": 0}]})
    rules = [rule(**{"for": "0s", "keep_firing_for": "0s"})]
    fakes = {n: FakeReceiver(n) for n in ("pager", "slack")}
    cycle(store, rules, both, 0, shifted(0, heads=[2], layers=[1]))
    Outbox(store, both, fakes).deliver(at(0))
    cycle(store, rules, slack_only, 1)  # resolves, after the pager route was narrowed
    Outbox(store, slack_only, fakes).deliver(at(1))
    for fake in fakes.values():
        assert [n.status for n in fake.sent] == ["firing", "resolved"]
        assert fake.sent[0].dedup_key == fake.sent[1].dedup_key


def test_a_firing_sent_when_a_long_silence_ends_gets_its_retries(store):
    # silenced over a weekend: its row is older than max_age_s when the silence ends, and
    # one 503 then gave it up for good, unsent
    cfg = config(delivery={"backoff_initial_s": 5, "backoff_max_s": 60, "max_age_s": 86_400})
    pager = FakeReceiver("pager", failing(1))
    box = Outbox(store, cfg, {"pager": pager})
    silences.create(store, ["head=2"], timedelta(days=2), "known, fixing it Monday", "alice", at(0))
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted(0, heads=[2], layers=[1]))
    assert box.deliver(at(0)).silenced == 1
    later = at(0) + timedelta(days=2, minutes=1)  # still firing; the silence is over
    res = box.deliver(later)
    assert (res.requeued, res.retrying, res.failed) == (1, 1, 0)
    (row,) = outbox_rows(store)
    assert box.deliver(as_utc(row["next_attempt_at"])).delivered == 1 and len(pager.sent) == 1


def test_two_cycles_of_the_same_window_at_once_evaluate_it_once(store, monkeypatch):
    """After a failover a woken ex-leader can run a window's alert cycle at the instant the
    new leader does. The first to take the watermark evaluates the window; the other waits
    for it, then finds the window done: no transition is reported (logged, counted) twice
    and no alert row is written twice (a new alert's second insert failed the job)."""
    rules, cfg = [rule(**{"for": "0s"})], config()
    write_results(store, shifted(0, heads=range(3), layers=[1]))
    # both cycles past the watermark check before either reads the window's rows (the
    # old check let both through); a cycle that waits alone goes on after 1.5 s
    both = threading.Barrier(2, timeout=1.5)
    rows = alerts.cycle._rows

    def rows_when_both_are_here(*args):
        try:
            both.wait()
        except threading.BrokenBarrierError:
            pass
        return rows(*args)

    monkeypatch.setattr(alerts.cycle, "_rows", rows_when_both_are_here)
    done, errors = [], []

    def run():
        try:
            done.append(evaluate_alerts(store, rules, cfg, at(-15), at(0), at(0)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == [] and len(done) == 2
    assert sorted(c.evaluated for c in done) == [False, True]
    [first] = [c for c in done if c.evaluated]
    assert (len(first.transitions), first.enqueued) == (3, 3)
    assert len(outbox_rows(store)) == 3 and alert_states(store) == dict.fromkeys("012", "firing")
    assert read_watermark(store) == at(0)


def test_the_alert_cycle_reads_the_window_without_holding_the_sqlite_write_lock(store, store_url, monkeypatch):
    """Reading a window's rows takes seconds on a large store (health.no_data scans the
    days of minute rows kept: 6-9 s measured at 1,080 series and one day of them).
    Collectors write meanwhile, and a writer waits for SQLite's write lock only
    busy_timeout (10 s) before failing: the cycle may hold the lock for its writes, not
    for its reads."""
    import alerts.cycle
    from monitor.store.engine import make_engine

    rules, cfg = [rule(**{"for": "0s"})], config()
    write_results(store, [drift_row(at(0), -3.0)])
    collector = make_engine(store_url, busy_timeout_s=0.2)
    rows = alerts.cycle._rows

    def rows_while_a_collector_writes(*args):
        out = rows(*args)
        with collector.begin() as conn:  # as a collector's flush would, from another connection
            put_state(conn, "probe", "written", at(0))
        return out

    monkeypatch.setattr(alerts.cycle, "_rows", rows_while_a_collector_writes)
    done = evaluate_alerts(store, rules, cfg, at(-15), at(0), at(0))
    assert done.evaluated and len(done.transitions) == 1
    collector.dispose()
