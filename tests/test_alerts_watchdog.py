"""The dead-man's switch (alerts/watchdog.py): `AttnmonWatchdog` is sent once per
evaluation of the alert rules, only to the receivers `alerts.watchdog.receivers` names,
stops when the evaluation stops (a stuck job beside a deliver job that still runs), and
a real Alertmanager holds it, then resolves it `keep_for_s` after the last send.

Daemon tests run on SQLite with simulated time (data from tests/test_daemon.py)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from alerts.config import AlertsConfig
from alerts.model import DeliveryError, Notification
from alerts.receivers import Alertmanager
from alerts.watchdog import NAME, Watchdog
from monitor.config import Config
from monitor.daemon import Daemon
from tests.alerting import FakeReceiver
from tests.test_daemon import at, produce

README = Path(__file__).parents[1] / "README.md"
WAIT_S = 15  # the test Alertmanager: group_wait 1 s, group_interval 2 s


class FakeAlertmanager(FakeReceiver):
    """Records re-posts as Alertmanager's receiver gets them: alerts and their keep_for_s."""

    def __init__(self, name: str):
        super().__init__(name)
        self.resent: list[tuple[list, float | None]] = []

    def resend(self, alerts, external_url=None, *, keep_for_s=None) -> None:
        self.resent.append((list(alerts), keep_for_s))


RECEIVERS = [
    {"name": "pager", "pagerduty": {"routing_key": {"env": "ATTNMON_TEST_PD_KEY"}}},
    {"name": "chat", "slack": {"webhook_url": {"env": "ATTNMON_TEST_SLACK"}}},
    {"name": "deadman", "webhook": {"url": "http://127.0.0.1:9/ping"}},
    {"name": "am", "alertmanager": {"url": "http://127.0.0.1:9"}},
]
# everything reaches the pager, warnings the chat too: what an operator may well have
ROUTE = {"receiver": "pager", "routes": [{"match": {"severity": "warning"}, "receiver": "chat", "continue": True}]}


def daemon_config(store: str, **watchdog) -> Config:
    alerts = {"receivers": RECEIVERS, "route": ROUTE, "external_url": "https://user:pw@grafana.example.com"}
    if watchdog:
        alerts["watchdog"] = watchdog
    return Config(store_url=store, evaluate={"min_samples": 5}, daemon={"listen": "127.0.0.1:0"}, alerts=alerts)


def fakes() -> dict[str, FakeReceiver]:
    return {"pager": FakeReceiver("pager"), "chat": FakeReceiver("chat"), "deadman": FakeReceiver("deadman"),
            "am": FakeAlertmanager("am")}


def watchdogs(receiver: FakeReceiver) -> list:
    """The watchdog alerts a fake receiver got, sent or re-posted."""
    sent = [a for n in receiver.sent for a in n.alerts if a.rule == NAME or a.labels.get("alertname") == NAME]
    resent = [a for alerts, _ in getattr(receiver, "resent", []) for a in alerts if a.labels.get("alertname") == NAME]
    return sent + resent


@pytest.fixture
def store(sqlite_url: str) -> str:
    produce(sqlite_url)
    return sqlite_url


def test_it_is_sent_once_per_evaluation_and_only_to_the_receivers_named(store):
    now = [at(20)]
    got = fakes()
    registry = CollectorRegistry()
    cfg = daemon_config(store, receivers=["deadman", "am"], labels={"env": "test"})
    with Daemon(cfg, clock=lambda: now[0], receivers=got, registry=registry) as daemon:
        daemon.tick()  # a window evaluated, then delivery
        assert len(watchdogs(got["deadman"])) == len(watchdogs(got["am"])) == 1
        daemon.run_job("deliver")  # no evaluation since: nothing
        daemon.run_job("deliver")
        assert len(watchdogs(got["deadman"])) == 1
        now[0] = at(21)
        daemon.tick()
        now[0] = at(25)  # four windows in one run: one watchdog, at the next delivery
        assert len(daemon.tick()["evaluate"].result.windows) == 4
        assert len(watchdogs(got["deadman"])) == len(watchdogs(got["am"])) == 3
        leader = daemon.id
    # neither the pager nor the chat, which the route tree sends every alert to
    assert watchdogs(got["pager"]) == watchdogs(got["chat"]) == []
    note: Notification = got["deadman"].sent[-1]
    dog = note.alerts[0]
    assert (note.status, dog.status, dog.rule) == ("firing", "firing", NAME)
    assert dog.labels == {"alertname": NAME, "severity": "none", "env": "test"}
    assert dog.annotations["leader"] == leader and "dead-man's switch" in dog.annotations["description"]
    assert dog.starts_at == at(20)  # this daemon's first evaluation, every time
    assert note.external_url == "https://grafana.example.com"  # no credentials
    # Alertmanager holds each for 4 evaluation intervals (evaluate_every_s 60 s)
    assert [keep for _, keep in got["am"].resent] == [240.0] * 3
    assert registry.get_sample_value("attnmon_notification_sends_total",
                                     {"receiver": "deadman", "outcome": "watchdog"}) == 3


def test_under_the_default_config_it_reaches_no_receiver(store):
    """No `alerts.watchdog`: a route tree that takes every alert to the pager never
    gets it, nor does an Alertmanager receiver (whose own routes might page)."""
    now = [at(20)]
    got = fakes()
    with Daemon(daemon_config(store), clock=lambda: now[0], receivers=got) as daemon:
        for minute in (20, 21, 22, 30):
            now[0] = at(minute)
            daemon.tick()
        assert daemon.alerts.watchdog.receivers == []
    assert all(watchdogs(r) == [] for r in got.values())
    assert all(not r.resent for r in [got["am"]])


def test_it_stops_while_the_evaluation_is_stuck_and_the_deliver_job_still_runs(store):
    now = [at(20)]
    got = fakes()
    entered, release = threading.Event(), threading.Event()

    def stuck(_engine, _result) -> None:  # before the alert rules: nothing is evaluated
        entered.set()
        release.wait(30)

    with Daemon(daemon_config(store, receivers=["deadman"]), clock=lambda: now[0], receivers=got) as daemon:
        daemon.tick()
        assert len(watchdogs(got["deadman"])) == 1
        daemon.cycle_hooks.insert(0, stuck)
        now[0] = at(21)
        job = threading.Thread(target=daemon.run_job, args=("evaluate",), daemon=True)
        job.start()
        try:
            assert entered.wait(30)
            for minute in (21.25, 21.5, 22, 30):  # delivery goes on, every interval
                now[0] = at(minute)
                assert daemon.run_job("deliver").ok
            assert len(watchdogs(got["deadman"])) == 1
        finally:
            release.set()
            job.join(30)
        daemon.run_job("deliver")  # the evaluation went on: so does the watchdog
        assert len(watchdogs(got["deadman"])) == 2


def test_a_failed_send_is_logged_and_tried_again_by_the_next_delivery(store, caplog):
    now = [at(20)]
    got = fakes()
    got["deadman"] = FakeReceiver("deadman", [DeliveryError("HTTP 503 from https://hc-ping.com/secret-uuid",
                                                            retry=True)])
    registry = CollectorRegistry()
    with Daemon(daemon_config(store, receivers=["deadman"]), clock=lambda: now[0], receivers=got,
                registry=registry) as daemon:
        with caplog.at_level("WARNING", "attnmon.alerts"):
            assert daemon.tick()["deliver"].ok  # a failed watchdog does not fail delivery
        assert watchdogs(got["deadman"]) == []
        daemon.run_job("deliver")
        assert len(watchdogs(got["deadman"])) == 1
        daemon.run_job("deliver")
        assert len(watchdogs(got["deadman"])) == 1
    told = [r.getMessage() for r in caplog.records if NAME in r.getMessage()]
    assert told == [f"sending the watchdog ({NAME}) to deadman failed; the next delivery tries again: "
                    "HTTP 503 from https://hc-ping.com"]
    assert registry.get_sample_value("attnmon_notification_sends_total",
                                     {"receiver": "deadman", "outcome": "watchdog_error"}) == 1


@pytest.mark.parametrize(("watchdog", "error"), [
    ({"receivers": ["nope"]}, "watchdog.receivers names unknown receiver(s) ['nope']"),
    ({"receivers": ["pager"]}, "watchdog.receivers: pager (pagerduty) cannot take the watchdog"),
    ({"receivers": ["deadman", "chat"]}, "chat (slack) cannot take the watchdog"),
    ({"labels": {"alertname": "x"}}, "alertname is the watchdog's own"),
    ({"labels": {"severity": "critical"}}, "severity is the watchdog's own"),
    ({"receiver": ["deadman"]}, "Extra inputs are not permitted"),
])
def test_a_watchdog_that_could_page_or_reaches_nobody_by_a_typo_is_refused(watchdog, error):
    with pytest.raises(ValidationError) as exc:
        AlertsConfig(receivers=RECEIVERS, watchdog=watchdog)
    assert error in str(exc.value)


# -- a real Alertmanager ---------------------------------------------------------------


def _held(am_url: str) -> list[dict]:
    query = urllib.parse.quote(f'alertname="{NAME}"')
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{am_url}/api/v2/alerts?filter={query}", timeout=5) as response:
        return json.load(response)


def _of(status: str):
    return lambda r: r.path == "/hook" and r.json["status"] == status and r.json["commonLabels"].get("alertname") == NAME


def test_alertmanager_holds_it_while_it_comes_and_resolves_it_keep_for_s_after_the_last(am_url, hook):
    receiver = Alertmanager("am", am_url, timeout_s=5)
    cfg = AlertsConfig(receivers=[{"name": "am", "alertmanager": {"url": am_url}}], watchdog={"receivers": ["am"]})
    dog = Watchdog(cfg, {"am": receiver}.__getitem__, keep_for_s=4)
    try:
        dog.evaluated()
        sent_at = datetime.now(UTC)
        assert dog.send() == {("am", "watchdog"): 1}
        held = _held(am_url)
        assert len(held) == 1 and held[0]["status"]["state"] == "active"
        assert held[0]["labels"] == {"alertname": NAME, "severity": "none"}
        ends = datetime.fromisoformat(held[0]["endsAt"].replace("Z", "+00:00"))
        assert sent_at + timedelta(seconds=3) <= ends <= sent_at + timedelta(seconds=6)
        assert hook.wait_for(_of("firing"), WAIT_S).json["alerts"][0]["labels"]["alertname"] == NAME
        assert dog.send() == {}  # no evaluation since (the daemon stopped evaluating)
        assert hook.wait_for(_of("resolved"), WAIT_S)  # Alertmanager resolves it by itself
        assert _held(am_url) == []
    finally:
        receiver.close()


def test_the_readmes_alertmanager_route_for_the_watchdog_is_a_valid_config(tmp_path):
    """The README's example routes AttnmonWatchdog to a dead-man's-switch webhook; amtool
    (Debian's prometheus-alertmanager) says whether Alertmanager takes it."""
    import shutil

    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (apt-get install prometheus-alertmanager)")
    block = re.search(r"<!-- watchdog-alertmanager -->\n```yaml\n(.*?)```", README.read_text(), re.S)
    assert block, "README: the Alertmanager example for the watchdog is missing"
    path = tmp_path / "alertmanager.yml"
    path.write_text(block.group(1))
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the watchdog goes to the dead-man's switch, not the pager
    routed = subprocess.run([amtool, "config", "routes", "test", f"--config.file={path}",
                             f"alertname={NAME}", "severity=none"], capture_output=True, text=True, timeout=30)
    assert routed.stdout.split() == ["deadmansswitch"], routed.stdout + routed.stderr


def test_alertmanager_holds_it_four_sends_long_when_evaluate_runs_more_often_than_windows_end(store):
    """A window ends once a minute, so the watchdog comes at most once a minute however
    often the evaluate job runs. With evaluate_every_s and deliver_every_s at 15 s, an
    endsAt of 4 x 15 s is the very minute to the next send: any delay (a slow window, a
    delivery interval) and Alertmanager resolves it between two sends, which flaps."""
    now = [at(20)]
    got = fakes()
    cfg = daemon_config(store, receivers=["am"])
    cfg = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"evaluate_every_s": 15,
                                                                          "deliver_every_s": 15})})
    sent_at = []
    with Daemon(cfg, clock=lambda: now[0], receivers=got) as daemon:
        for step in range(4 * 4 + 1):  # four minutes, a tick every 15 s
            now[0] = at(20) + timedelta(seconds=15 * step)
            before = len(got["am"].resent)
            daemon.tick()
            sent_at += [now[0]] * (len(got["am"].resent) - before)
    assert sent_at == [at(m) for m in range(20, 25)]  # once a minute
    assert {keep for _, keep in got["am"].resent} == {240.0}  # 4 sends' worth, as at the defaults


def test_it_stops_while_the_evaluation_repeats_a_window_it_cannot_get_past(store, monkeypatch):
    """The daemon's watermark cannot be written (its row locked by a frozen session, say):
    each evaluate run evaluates the same window again and fails, and the alert rules find
    that window done. Nothing new is evaluated, so no watchdog: the monitor is blind."""
    import monitor.daemon as d

    now = [at(20)]
    got = fakes()
    with Daemon(daemon_config(store, receivers=["deadman"]), clock=lambda: now[0], receivers=got) as daemon:
        daemon.tick()
        assert len(watchdogs(got["deadman"])) == 1

        def locked(*_args, **_kwargs):
            raise RuntimeError("canceling statement due to lock timeout")

        monkeypatch.setattr(d, "write_watermark", locked)
        for second in range(60, 600, 15):
            now[0] = at(20) + timedelta(seconds=second)
            runs = daemon.tick()
            assert "evaluate" not in runs or not runs["evaluate"].ok
        assert daemon.watermark == at(19)  # the first window, then none
        # the window ending at(20) had its alert rules run once (a watchdog), then no window did
        assert len(watchdogs(got["deadman"])) == 2


def test_a_daemon_that_lost_the_lead_never_sends_an_evaluation_from_before(store):
    """A window evaluated, then the lead lost before the delivery: when this daemon leads
    again (the other one died), that old evaluation vouches for nothing now; only its
    evaluations from then on send the watchdog."""
    now = [at(20)]
    got = fakes()
    with Daemon(daemon_config(store, receivers=["deadman"]), clock=lambda: now[0], receivers=got) as daemon:
        daemon.tick()
        assert len(watchdogs(got["deadman"])) == 1
        now[0] = at(21)
        assert daemon.run_job("evaluate").ok  # evaluated; its delivery has not run yet
        daemon._leadership.release()  # the lock is gone (its session ended)
        assert daemon.run_job("deliver") is None and not daemon.is_leader
        now[0] = at(40)
        assert daemon.acquire()  # leads again, and its evaluation has not run since
        assert daemon.run_job("deliver").ok
        assert len(watchdogs(got["deadman"])) == 1
        assert daemon.run_job("evaluate").ok
        assert daemon.run_job("deliver").ok
        assert len(watchdogs(got["deadman"])) == 2
