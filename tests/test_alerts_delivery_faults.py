"""Delivery faults beyond a receiver that is down: two deliverers at once (a leader that
lost its lock and has not noticed), a daemon killed mid-send, a lead lost between groups,
a receiver that asks us to wait (Retry-After), and one that answers a byte at a time.
tests/postgres/test_alerts_pg.py runs the store-level ones on PostgreSQL too."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta

import httpx
import pytest
from alerting import FakeReceiver, at, config, cycle, rule, shifted_rows
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from alerts import sending
from alerts.config import AlertsConfig
from alerts.model import DeliveryError
from alerts.outbox import CLAIM_SLACK, SEND_DEADLINE_FACTOR, DeliverResult, Outbox
from alerts.receivers.alertmanager import Alertmanager
from alerts.receivers.webhook import Webhook
from monitor.store import tables
from monitor.store.maintenance import as_utc

S = timedelta(seconds=1)


def rows(engine) -> list[dict]:
    """The outbox, its times in UTC (SQLite gives them naive, PostgreSQL in the session's zone)."""
    nt = tables.notifications
    with engine.connect() as conn:
        return [{k: as_utc(v) if isinstance(v, datetime) else v for k, v in r.items()}
                for r in conn.execute(select(nt).order_by(nt.c.id)).mappings()]


def fire(engine, cfg, names=("Collapse",)) -> None:
    cycle(engine, [rule(n, **{"for": "0s"}) for n in names], cfg, 0, shifted_rows(0, heads=[2]))


def test_a_group_being_sent_is_left_alone_by_a_second_deliverer(store):
    cfg = config()
    fire(store, cfg)
    started, release = threading.Event(), threading.Event()

    class Slow(FakeReceiver):
        def send(self, notification):
            started.set()
            release.wait(10)
            super().send(notification)

    slow, other = Slow("pager"), FakeReceiver("pager")
    first, second = Outbox(store, cfg, {"pager": slow}), Outbox(store, cfg, {"pager": other})
    worker = threading.Thread(target=first.deliver, args=(at(0),))
    worker.start()
    try:
        assert started.wait(10)
        assert {r["status"] for r in rows(store)} == {"sending"}
        res = second.deliver(at(0) + 5 * S)  # the other daemon, while the send is in flight
    finally:
        release.set()
        worker.join(10)
    assert res.notifications == 0 and other.calls == 0
    assert len(slow.sent) == 1 and {r["status"] for r in rows(store)} == {"delivered"}


def test_a_deliverer_that_read_the_rows_before_another_claimed_them_backs_off(store):
    """Both read the group's pending rows (one to send, one a silence mutes); one claims
    them first: the other's conditional update takes fewer rows than it read, and its
    whole transaction is undone, the muting included, and it sends nothing."""
    cfg = config()
    fire(store, cfg, names=("A",))
    cycle(store, [rule("A", **{"for": "0s"})], cfg, 1, shifted_rows(1, heads=[2, 3]))  # head 3 joins the group
    first, muted = rows(store)
    late, early = FakeReceiver("pager"), FakeReceiver("pager")
    b = Outbox(store, cfg, {"pager": late})
    b._split = lambda *args: ([first], [muted["id"]])  # what b read before a's claim
    b._in_flight = lambda *args: False  # (a claimed after b looked)
    a = Outbox(store, cfg, {"pager": early})
    a._clock = lambda: at(1)
    with store.begin() as conn:
        assert a._claim(conn, [first["id"]], a._deadline_s("pager")) is not None
    res = DeliverResult()
    b._deliver_group("pager", first["group_key"], first["dedup_key"], at(1), [], res)
    assert res.claimed_elsewhere == 1 and res.silenced == 0 and late.calls == 0
    assert {r["id"]: r["status"] for r in rows(store)} == {first["id"]: "sending", muted["id"]: "pending"}


def test_a_group_with_a_row_in_flight_waits_so_resolved_never_overtakes_firing(store):
    cfg = config()
    fire(store, cfg)
    pager = FakeReceiver("pager")
    box = Outbox(store, cfg, {"pager": pager})
    box._clock = lambda: at(0.5)
    with store.begin() as conn:  # a daemon killed while sending "firing"
        claim = box._claim(conn, [r["id"] for r in rows(store)], box._deadline_s("pager"))
    cycle(store, [rule(**{"for": "0s", "keep_firing_for": "0s"})], cfg, 1)  # it resolves
    assert box.deliver(at(1)).notifications == 0 and pager.sent == []  # not "resolved" first
    assert claim > at(1)
    box.deliver(claim)  # the claim has ended: both rows go, as one message, the newest
    assert [n.status for n in pager.sent] == ["resolved"]
    assert {r["status"] for r in rows(store)} == {"delivered"}


def group_of(engine) -> tuple[str, str]:
    (row,) = rows(engine)
    return row["group_key"], row["dedup_key"]


def test_a_sender_killed_mid_send_is_sent_again_once_its_claim_ends(store):
    cfg = config()
    fire(store, cfg)
    box = Outbox(store, cfg, {"pager": FakeReceiver("pager")})
    box._clock = lambda: at(0)
    with store.begin() as conn:  # what a daemon killed during the send leaves behind
        assert box._claim(conn, [r["id"] for r in rows(store)], box._deadline_s("pager")) is not None
    ends = at(0) + SEND_DEADLINE_FACTOR * 10 * S + CLAIM_SLACK  # the config's timeout_s: 10
    assert {r["next_attempt_at"] for r in rows(store)} == {ends}
    assert box.deliver(ends - S).notifications == 0
    res = box.deliver(ends)
    assert (res.reclaimed, res.notifications) == (1, 1)
    assert {r["status"] for r in rows(store)} == {"delivered"}


class Held(FakeReceiver):
    """A receiver whose sends wait until released (timeout_s 0.1: a 0.3 s deadline)."""

    timeout_s = 0.1

    def __init__(self, name, fail: Exception | None = None):
        super().__init__(name)
        self.release, self.fail = threading.Event(), fail

    def send(self, notification):
        self.calls += 1
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        self.sent.append(notification)


def test_a_send_that_ends_after_its_deadline_is_recorded_once_and_not_sent_again(store):
    cfg = config()
    fire(store, cfg, names=("A", "B"))  # two groups for the same receiver
    held = Held("pager")
    box = Outbox(store, cfg, {"pager": held})
    t0 = time.monotonic()
    res = box.deliver(at(0))
    assert time.monotonic() - t0 < 8 and res.notifications == 0 and held.calls == 1  # B waits its turn
    first = {r["rule"]: r for r in rows(store)}
    assert first["A"]["status"] == "sending" and first["B"]["status"] == "pending"
    assert first["A"]["last_error"] == "receiver 'pager': no complete answer within 0.3 s; still waiting for it"
    res = box.deliver(at(1))  # still running: its claim is renewed, nothing sent again
    again = {r["rule"]: r for r in rows(store)}
    assert held.calls == 1 and again["A"]["status"] == "sending"
    assert again["A"]["next_attempt_at"] > first["A"]["next_attempt_at"]
    held.release.set()
    box._running["pager"].thread.join(5)
    res = box.deliver(at(2))  # it ended: recorded, then B goes
    assert res.notifications == 2 and held.calls == 2
    assert {r["rule"]: r["status"] for r in rows(store)} == {"A": "delivered", "B": "delivered"}


def test_a_late_outcome_survives_a_store_error_while_recording_it(store, monkeypatch):
    cfg = config()
    fire(store, cfg)
    held = Held("pager")
    box = Outbox(store, cfg, {"pager": held})
    res = box.deliver(at(0))
    assert res.in_flight == 1 and res.errors == ["pager: no complete answer within 0.3 s; still waiting for it"]
    held.release.set()
    box._running["pager"].thread.join(5)
    record, calls = box._record, []

    def locked_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE notifications", {}, Exception("database is locked"))
        return record(*args)

    monkeypatch.setattr(box, "_record", locked_once)
    with pytest.raises(OperationalError):
        box.deliver(at(1))  # the job fails (and is retried); the outcome is kept
    assert box.deliver(at(2)).notifications == 1 and held.calls == 1
    assert {r["status"] for r in rows(store)} == {"delivered"}


def test_a_send_running_past_give_up_is_retried(store):
    cfg = config(delivery={"backoff_initial_s": 5, "backoff_max_s": 300, "max_age_s": 86_400})
    fire(store, cfg)
    held = Held("pager")
    box = Outbox(store, cfg, {"pager": held})
    box.deliver(at(0))
    res = box.deliver(at(0) + 30 * S)  # within 4 deadlines (4 x 0.3 s): still waited for
    assert res.retrying == 0 and "pager" in box._running
    time.sleep(sending.GIVE_UP_DEADLINES * 0.3)
    res = box.deliver(at(1))
    (row,) = rows(store)
    assert res.retrying == 1 and row["status"] == "pending" and "pager" not in box._running
    assert row["last_error"] == "receiver 'pager': no answer after 1.2 s; gave up waiting"
    held.release.set()


def test_a_send_that_fails_after_its_deadline_is_retried(store):
    cfg = config()
    fire(store, cfg)
    held = Held("pager", fail=DeliveryError("HTTP 503 from the peer", retry=True))
    box = Outbox(store, cfg, {"pager": held})
    box.deliver(at(0))
    held.release.set()
    box._running["pager"].thread.join(5)
    res = box.deliver(at(1))
    (row,) = rows(store)
    assert res.retrying == 1 and row["status"] == "pending" and row["last_error"] == "HTTP 503 from the peer"


def test_a_record_does_not_overwrite_a_claim_taken_over_meanwhile(store):
    cfg = config()
    fire(store, cfg)
    ids = [r["id"] for r in rows(store)]
    slow, other = Outbox(store, cfg, {}), Held("pager")
    slow._clock = lambda: at(0)
    with store.begin() as conn:
        token = slow._claim(conn, ids, slow._deadline_s("pager"))
    # its claim ends; another deliverer releases and claims the group, and is sending it
    second = Outbox(store, cfg, {"pager": other})
    second.deliver(token)
    (row,) = rows(store)
    assert row["status"] == "sending" and row["next_attempt_at"] > token
    slow._record(rows(store), token, None, DeliverResult())  # the slow send's late outcome
    assert rows(store)[0]["status"] == "sending"  # not the slow one's to record
    other.release.set()
    second._running["pager"].thread.join(5)
    assert second.deliver(token + S).notifications == 1
    (row,) = rows(store)
    assert row["status"] == "delivered" and row["attempts"] == 1 and len(other.sent) == 1


def test_delivery_stops_between_groups_once_the_lead_is_lost(store):
    cfg = config()
    fire(store, cfg, names=("A", "B"))  # two rules: two groups
    pager = FakeReceiver("pager")
    answers = iter([True, False])
    res = Outbox(store, cfg, {"pager": pager}).deliver(at(0), keep_going=lambda: next(answers, False))
    assert res.stopped and res.notifications == 1 and len(pager.sent) == 1
    assert sorted(r["status"] for r in rows(store)) == ["delivered", "pending"]


def _webhook_answering(status: int, headers: dict) -> tuple[Webhook, list]:
    calls: list = []

    def handler(request):
        calls.append(request)
        return httpx.Response(status, headers=headers, text="slow down")

    return Webhook("pager", url="http://peer.invalid/hook", transport=httpx.MockTransport(handler)), calls


@pytest.mark.parametrize("header, wait_s", [
    ("3600", 3600.0),
    ("Fri, 20 Nov 2026 09:00:00 GMT", 3600.0),  # an HTTP date, an hour after at(0)
    ("999999999", 86_400.0),  # capped at delivery.max_age_s: it is failed then anyway
])
def test_retry_after_sets_the_next_try(store, header, wait_s, monkeypatch):
    import alerts.receivers._http as http

    real = http.retry_after_s
    monkeypatch.setattr(http, "retry_after_s", lambda v, now=None: real(v, now or at(0)))
    cfg = config(delivery={"backoff_initial_s": 5, "backoff_max_s": 300, "max_age_s": 86_400})
    fire(store, cfg)
    hook, calls = _webhook_answering(429, {"Retry-After": header})
    box = Outbox(store, cfg, {"pager": hook})
    box.deliver(at(0))
    (row,) = rows(store)
    assert row["status"] == "pending" and "HTTP 429" in row["last_error"]
    assert row["next_attempt_at"] == at(0) + timedelta(seconds=wait_s)
    box.deliver(at(0) + timedelta(seconds=wait_s) - S)
    assert len(calls) == 1  # nothing before the time it asked for


def test_without_retry_after_the_backoff_applies(store):
    cfg = config(delivery={"backoff_initial_s": 5, "backoff_max_s": 300, "max_age_s": 86_400})
    fire(store, cfg)
    hook, _ = _webhook_answering(503, {})
    Outbox(store, cfg, {"pager": hook}).deliver(at(0))
    (row,) = rows(store)
    wait = (row["next_attempt_at"] - at(0)).total_seconds()
    assert 5 * 0.75 <= wait <= 5


class Trickle:
    """A peer on loopback that answers one header byte every 0.2 s, for as long as it runs."""

    def __init__(self):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.recv(65536)
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if self.stop.wait(0.2):
                    return
                try:
                    conn.send(bytes([b]))
                except OSError:
                    return

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.srv.close()


def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_at_the_deadline(store):
    peer = Trickle()
    try:
        cfg = config()
        fire(store, cfg)
        hook = Webhook("pager", url=f"http://127.0.0.1:{peer.port}/hook", timeout_s=0.5)
        box = Outbox(store, cfg, {"pager": hook})
        t0 = time.monotonic()
        res = box.deliver(at(0))
        took = time.monotonic() - t0
        deadline = SEND_DEADLINE_FACTOR * 0.5
        assert deadline <= took < deadline + 3  # not the hours the trickle would take
        (row,) = rows(store)
        assert res.notifications == 0 and row["status"] == "sending"
        assert row["last_error"] == f"receiver 'pager': no complete answer within {deadline:g} s; still waiting for it"
        # while that send still runs, later runs open no second one
        for minute in (1, 2):
            box.deliver(at(minute))
        assert peer.connections == 1 and rows(store)[0]["status"] == "sending"
    finally:
        peer.close()


def test_an_alertmanager_re_send_is_bounded_too_and_not_repeated_while_it_runs(store):
    cfg = AlertsConfig.model_validate({
        "receivers": [{"name": "am", "alertmanager": {"url": "http://127.0.0.1:9", "resend_interval_s": 60,
                                                      "timeout_s": 0.1}}],
        "route": {"receiver": "am", "group_wait_s": 0},
    })
    am = FakeReceiver("am")
    box = Outbox(store, cfg, {"am": am})
    cycle(store, [rule(**{"for": "0s", "keep_firing_for": "0s"})], cfg, 0, shifted_rows(0, heads=[2]))
    assert box.deliver(at(0)).notifications == 1
    release, calls = threading.Event(), []
    am.send = lambda n: (calls.append(n), release.wait(10))  # the peer stops answering
    t0 = time.monotonic()
    res = box.deliver(at(1))
    assert time.monotonic() - t0 < 8 and res.resent == 0 and res.sends == {("am", "resend_error"): 1}
    assert box.deliver(at(2)).sends == {} and len(calls) == 1  # no second one while it runs
    release.set()
    box._running["am"].thread.join(5)
    assert box.deliver(at(3)).resent == 1 and len(calls) == 2


def test_an_alertmanager_batch_failing_mid_send_is_retried_whole_and_nothing_is_lost(store):
    # 130 series in one group: three POSTs of 64, 64, 2. The second fails once (503)
    cfg = AlertsConfig.model_validate({
        "receivers": [{"name": "am", "alertmanager": {"url": "http://am.example:9093"}}],
        "route": {"receiver": "am", "group_wait_s": 0},
    })
    held: dict[tuple, dict] = {}  # what Alertmanager holds: one alert per label set, the latest post
    posts: list[int] = []

    def alertmanager(request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)
        posts.append(len(batch))
        if len(posts) == 2:
            return httpx.Response(503, text="overloaded")
        held.update({tuple(sorted(a["labels"].items())): a for a in batch})
        return httpx.Response(200)

    am = Alertmanager("am", "http://am.example:9093", clock=lambda: at(0),
                      transport=httpx.MockTransport(alertmanager))
    box = Outbox(store, cfg, {"am": am})
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted_rows(0, heads=range(13), layers=range(10)))
    res = box.deliver(at(0))
    assert (res.notifications, res.retrying, posts) == (0, 130, [64, 64])
    assert len(held) == 64 and {r["status"] for r in rows(store)} == {"pending"}
    assert "HTTP 503" in rows(store)[0]["last_error"] and "batch 2 of 3" in rows(store)[0]["last_error"]
    res = box.deliver(at(0) + 10 * S)  # past the backoff: the whole group again, every batch
    assert (res.notifications, res.delivered, posts) == (1, 130, [64, 64, 64, 64, 2])
    assert {r["status"] for r in rows(store)} == {"delivered"}
    assert sorted((a["labels"]["layer"], a["labels"]["head"]) for a in held.values()) == sorted(
        (str(ly), str(h)) for ly in range(10) for h in range(13))
    assert box.deliver(at(1)).resent == 1 and posts[5:] == [64, 64, 2]  # re-sends are batched too


def test_an_alertmanager_send_of_many_batches_gets_a_deadline_per_post(store):
    # 130 series in one group: three POSTs, each 0.4 s at a peer with timeout_s 0.2 (a
    # deadline of 0.6 s a POST). The whole send (1.2 s) is within three POSTs' deadlines;
    # one POST's deadline would have cut it off and kept the rows claimed for a later run
    cfg = AlertsConfig.model_validate({
        "receivers": [{"name": "am", "alertmanager": {"url": "http://am.example:9093", "timeout_s": 0.2}}],
        "route": {"receiver": "am", "group_wait_s": 0},
    })
    posts: list[int] = []

    def slow_alertmanager(request: httpx.Request) -> httpx.Response:
        time.sleep(0.4)
        posts.append(len(json.loads(request.content)))
        return httpx.Response(200)

    am = Alertmanager("am", "http://am.example:9093", timeout_s=0.2, clock=lambda: at(0),
                      transport=httpx.MockTransport(slow_alertmanager))
    box = Outbox(store, cfg, {"am": am})
    cycle(store, [rule(**{"for": "0s"})], cfg, 0, shifted_rows(0, heads=range(13), layers=range(10)))
    res = box.deliver(at(0))
    assert (res.delivered, res.in_flight, posts) == (130, 0, [64, 64, 2])
    assert {r["status"] for r in rows(store)} == {"delivered"}


def test_a_receiver_down_for_a_thousand_tries_keeps_its_backoff_and_the_job_running(store):
    # backoff_max_s: 60 reaches attempt 1,025 in 17 h, inside the default max_age_s:
    # 5.0 * 2**1024 overflowed a float, and every deliver run died on this group
    cfg = config(delivery={"backoff_initial_s": 5, "backoff_max_s": 60, "max_age_s": 86_400})
    fire(store, cfg)
    with store.begin() as conn:
        conn.execute(tables.notifications.update().values(attempts=1_100))
    res = Outbox(store, cfg, {"pager": FakeReceiver("pager", [DeliveryError("HTTP 503", retry=True)])}).deliver(at(0))
    (row,) = rows(store)
    assert (res.retrying, row["status"], row["attempts"]) == (1, "pending", 1_101)
    assert 60 * 0.75 <= (row["next_attempt_at"] - at(0)).total_seconds() <= 60
