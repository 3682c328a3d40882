"""What the on-call person reads, field by field (alerts/receivers/_text.py and the
receivers that use it): values in their statistic's unit, the worst series first."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from peers import RUNBOOK, T0, alert, notification

from alerts.receivers import PagerDuty, Slack
from alerts.receivers._text import MAX_RUNBOOK, digest, plain_text
from alerts.template import dashboard_url

NOW = T0 + timedelta(minutes=25)


def series(statistic: str, value: float, baseline: float | None = 0.0, kind: str = "trailing", head: int = 1):
    a = alert(value=value, baseline=baseline, head=head)
    return replace(a, labels={**a.labels, "statistic": statistic, "baseline_kind": kind},
                   fingerprint=f"{a.fingerprint}-{statistic}-{head}")


def value_line(a) -> str:
    return digest(notification([a]), now=NOW).series[0]


def test_a_value_reads_in_its_statistics_unit_against_the_named_baseline():
    # delta, psi, js rows carry baseline_value 0 by construction: "vs baseline 0" said nothing
    assert value_line(series("delta.entropy_norm", -3.21497)) == "-3.21 SDs from the baseline mean (trailing baseline)"
    assert value_line(series("psi.entropy_norm", 0.41327, kind="previous_version")) == \
        "PSI 0.413 (previous_version baseline)"
    assert value_line(series("js.position_profile", 0.1234)) == "JS distance 0.123 (trailing baseline)"
    assert value_line(series("mean.entropy_norm", 0.3112, 0.8243, kind="retrain")) == \
        "0.311 vs baseline 0.824 (retrain baseline)"
    assert value_line(series("lift.attr.brand", 3.42, 1.0)) == "3.42 times the baseline share (trailing baseline)"
    assert value_line(series("mover.attr.brand", 0.071, 0.031)) == \
        "share moved by 0.071 from 0.031 (trailing baseline)"
    # a value without a statistic label reads as before, rounded as the summaries are
    assert value_line(alert(value=-3.21497, baseline=0.5)) == "-3.21 vs baseline 0.5"


def test_a_resolved_series_shows_its_last_firing_value_as_such_not_as_the_current_one():
    """The store has no value for a series once its condition stops holding: what a resolve
    shows is the value of the last cycle it held, and says so."""
    a = series("delta.entropy_norm", -3.21497)
    assert value_line(a) == "-3.21 SDs from the baseline mean (trailing baseline)"
    assert value_line(replace(a, status="resolved", ends_at=NOW)) == \
        "last seen firing: -3.21 SDs from the baseline mean (trailing baseline) (resolved)"
    ended = replace(a, status="resolved", ends_at=NOW, annotations={**a.annotations, "ended": "Not fixed: ..."})
    assert value_line(ended) == "last seen firing: -3.21 SDs from the baseline mean (trailing baseline) (ended, not fixed)"
    observed = replace(a, status="resolved", ends_at=NOW,
                       annotations={**a.annotations, "observed": "entropy_norm fell from 0.824 to 0.311"})
    assert value_line(observed) == ("last seen firing: entropy_norm fell from 0.824 to 0.311:"
                                    " -3.21 SDs from the baseline mean (trailing baseline) (resolved)")


def test_a_group_lists_its_worst_series_first():
    mild, worst, middle = (series("delta.entropy_norm", v, head=h) for h, v in ((0, -1.51), (3, -3.63), (1, -2.2)))
    n = notification([mild, worst, middle])
    d = digest(n, now=NOW, max_series=2)
    assert d.series == ("head=3: -3.63 SDs from the baseline mean", "head=1: -2.2 SDs from the baseline mean")
    assert d.what.startswith(worst.annotations["summary"])
    event = PagerDuty("p", routing_key="R").payload(n)
    assert worst.annotations["summary"] in event["payload"]["summary"]
    assert [s["value"] for s in event["payload"]["custom_details"]["series"]] == [-3.63, -2.2, -1.51]


def test_pagerduty_details_round_values_as_a_person_reads_them():
    n = notification([series("delta.entropy_norm", -2.9099999999999997, 0.30000000000000004)])
    s = PagerDuty("p", routing_key="R").payload(n)["payload"]["custom_details"]["series"][0]
    assert (s["value"], s["baseline_value"]) == (-2.91, 0.3)


def test_a_firing_message_says_how_to_silence_it_in_a_command_ready_to_paste():
    n = notification([alert(), alert(head=2)], group_labels={"alertname": "AttentionEntropyCollapse",
                                                             "model": "sasrec", "version": "v 42"})
    d = digest(n, now=NOW)
    assert d.silence == ("attnmon alerts silence --match alertname=AttentionEntropyCollapse --match model=sasrec"
                         " --match 'version=v 42' --for 2h --comment 'on-call: investigating'")
    assert f"Silence: {d.silence}" in plain_text(d)
    slack = Slack("s", webhook_url="https://hooks.slack.com/services/T/B/X", clock=lambda: NOW).payload(n)
    assert {"type": "plain_text", "text": d.silence, "emoji": False} in [
        f for b in slack["blocks"] for f in b.get("fields", [])]
    assert PagerDuty("p", routing_key="R").payload(n)["payload"]["custom_details"]["silence"] == d.silence
    # without group labels, the labels the whole group shares
    assert digest(notification([alert()], group_labels={}), now=NOW).silence.startswith(
        "attnmon alerts silence --match alertname=AttentionEntropyCollapse --match model=sasrec --match version=v42 ")
    # nothing to silence once it is over
    assert digest(notification([alert(status="resolved")]), now=NOW).silence is None


def test_the_runbook_shown_says_what_to_do_not_only_what_happened():
    d = digest(notification(), now=NOW)
    assert d.runbook == RUNBOOK  # its first sentence restates the "what"; the action follows
    long = digest(notification([alert(runbook="Do this. " * 400)]), now=NOW).runbook
    assert len(long) <= MAX_RUNBOOK and long.endswith("…")


def test_the_dashboard_link_opens_on_the_series_and_a_group_gets_one_for_its_shared_labels():
    one = dashboard_url("https://grafana.example.com", {**alert().labels, "cohort": "*"}, T0)
    assert one == ("https://grafana.example.com/d/attnmon-overview?var-model=sasrec&var-version=v42"
                   f"&var-cohort=%2A&var-layer=0&var-head=1&from={int(T0.timestamp()) * 1000 - 3_600_000}&to=now")
    # two heads, each with its own link: the group's is not Grafana's home page
    early, late = alert(head=1, starts_at=T0), alert(head=2, starts_at=T0 + timedelta(minutes=3))
    early, late = (replace(a, annotations={**a.annotations, "dashboard": dashboard_url("https://g.example", a.labels, a.starts_at)})
                   for a in (early, late))
    d = digest(notification([late, early], external_url="https://g.example"), now=NOW)
    assert d.dashboard_url == ("https://g.example/d/attnmon-overview?var-model=sasrec&var-version=v42&var-cohort=all"
                               f"&var-layer=0&from={int(T0.timestamp()) * 1000 - 3_600_000}&to=now")


def test_the_silence_line_silences_exactly_the_group_whatever_its_label_values():
    """Pasted as it is, the line gives `attnmon alerts silence` one equality per group label.
    A value starting with '~' was read as the regex `cohort=~beta`, which matches no
    'cohort=~beta' alert: the silence was created and silenced nothing; a value holding
    '!=' or '!~' was refused as a bad matcher."""
    import shlex

    from alerts.silences import parse_matcher

    for value in ("~beta", "a!=b", "x=~y", "!~x", "it's", "$(touch /tmp/x)", "a b", "*", "é🙂", "a=b"):
        n = notification([alert(), alert(head=2)], group_labels={"cohort": value, "model": "sasrec"})
        argv = shlex.split(digest(n, now=NOW).silence)
        matchers = [parse_matcher(argv[i + 1]) for i, a in enumerate(argv) if a == "--match"]
        silenced = [m for m in matchers if m.name == "cohort"]
        assert len(silenced) == 1 and silenced[0].matches({"cohort": value}), (value, silenced)
        assert not silenced[0].matches({"cohort": value + "x"}) and not silenced[0].matches({"cohort": "beta"})
        assert argv[:3] == ["attnmon", "alerts", "silence"] and argv[-4:-2] == ["--for", "2h"]
