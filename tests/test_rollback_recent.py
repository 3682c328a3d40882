"""rollback-check judges the candidate's last minutes on their own, and its default
baseline is the version serving just before the candidate's deployment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from monitor.cli import main
from monitor.demo import DEFECT, START, Segment, stream
from monitor.rollback import check
from monitor.store import make_engine, migrate

MODEL = "demo-sasrec"


def _store(tmp_path, parts, seed=7):
    """`parts`: (segments, predictions per minute), served one after another."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    at = START
    for segments, rate in parts:
        at = stream(url, segments, rate=rate, start=at, seed=seed)
    return url, datetime.fromtimestamp(at, UTC)


def test_a_defect_that_began_30_minutes_ago_is_not_averaged_away_over_6_hours(tmp_path, capsys):
    """v2 served well for 5.5 h, then collapsed layer 1 head 2: over the 6 h since its
    deployment entropy_norm fell 0.05 (under the 0.12 of a warning), and the answer was
    PROCEED while the head was collapsed. The last 30 minutes on their own say ROLLBACK,
    and since when."""
    url, now = _store(tmp_path, [([Segment("v1", 60), Segment("v2", 330), Segment("v2", 30, DEFECT)], 50)])
    engine = make_engine(url)
    v = check(engine, MODEL, now=now)
    assert v.verdict == "ROLLBACK", [r.text for r in v.reasons]
    assert v.recent_window == (datetime(2026, 11, 20, 14, 30, tzinfo=UTC), now)
    assert (v.recent_predictions, v.recent_minutes) == (1500, 30)
    first = v.reasons[0]
    assert (first.severity, first.kind, first.window) == ("critical", "collapse", "recent")
    assert first.series.startswith("layer 1 head 2") and first.ci[1] < 0
    assert first.text.startswith("recent change, since about 2026-11-20 14:30 UTC (the last 30 minutes judged")
    assert "averaged over the whole 6 h since the deploy it does not show" in first.text
    # the whole-period judgement is as it was
    whole = check(engine, MODEL, now=now, recent=None)
    assert whole.verdict == "PROCEED" and whole.recent_window is None, [r.text for r in whole.reasons]
    args = ["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat()]
    assert main([*args, "--recent", "45m"]) == 4
    out = capsys.readouterr().out
    assert "the last 45 minutes, since 14:15 UTC, also judged on their own: 2,250 over 45 minutes" in out
    assert main([*args, "--recent", "5m"]) == 2
    assert "--recent" in capsys.readouterr().err
    # over --since 2h the collapse is a warning: the reason said 'the whole 2 h since the
    # deploy' (6 h ago) and 'it does not show'
    since = check(engine, MODEL, since=timedelta(hours=2), now=now)
    first, whole_says = since.reasons[0], since.reasons[2]
    assert (first.window, whole_says.window, whole_says.severity) == ("recent", "whole", "warning")
    assert first.series == whole_says.series and first.metric == whole_says.metric == "entropy_norm"
    assert first.text.endswith("averaged over the whole 2 h since 2026-11-20 13:00 UTC (--since) it is only a warning")


@pytest.mark.parametrize("update", ["retrain", "same-weights"])
def test_a_harmless_update_still_proceeds_with_its_last_30_minutes_judged(tmp_path, update):
    """Another seed (new weights), or the same weights redeployed unchanged, 2 h on."""
    v2 = Segment("v2", 120, model_seed=8) if update == "retrain" else Segment("v2", 120, weights_id="w1")
    url, now = _store(tmp_path, [([Segment("v1", 60, weights_id="w1"), v2], 50)])
    v = check(make_engine(url), MODEL, now=now)
    assert v.same_weights == (update == "same-weights")
    assert v.recent_window is not None and v.recent_predictions == 1500
    assert v.verdict == "PROCEED", [r.text for r in v.reasons]


def test_a_recent_defect_in_too_few_predictions_is_watch(tmp_path):
    """A canary at 20 predictions a minute: its last 30 minutes (600) are under the 1,000 a
    verdict needs, so a collapse there, sure by its bootstrap interval, is a warning."""
    url, now = _store(tmp_path, [([Segment("v1", 60)], 100), ([Segment("v2", 90), Segment("v2", 30, DEFECT)], 20)])
    v = check(make_engine(url), MODEL, now=now)
    assert v.verdict == "WATCH", [r.text for r in v.reasons]
    recent = [r for r in v.reasons if r.window == "recent"]
    assert [(r.severity, r.kind) for r in recent] == [("warning", "collapse")]
    assert "only 600 predictions over 30 minutes in the last 30 minutes, too few to tell" in recent[0].text
    assert not [r for r in v.reasons if r.severity == "critical"]


def test_the_default_baseline_is_the_version_v3_replaced_within_the_hour(tmp_path, capsys):
    """v1 served an hour, v2 20 minutes, then v3: in the hour before v3, v1 served more (40
    minutes) than v2 (20), so v3 was compared with v1, which it did not replace."""
    url, now = _store(tmp_path, [([Segment("v1", 60), Segment("v2", 20), Segment("v3", 20)], 50)])
    engine = make_engine(url)
    v = check(engine, MODEL, now=now)
    assert (v.candidate, v.baseline) == ("v3", "v2")
    assert v.baseline_choice == "the version serving just before v3 was deployed (2026-11-20 09:20 UTC)"
    assert v.baseline_share == 1.0 and v.baseline_alternatives == ()  # v2 alone served then: no arms named
    assert check(engine, MODEL, baseline="v1", now=now).baseline_choice == "given with --baseline"
    # the daemon's post-deployment baseline is the same version
    from monitor.baselines import choose
    from monitor.config import EvaluateConfig

    assert choose(engine, MODEL, "v3", now, EvaluateConfig()).version == "v2"
    assert main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat()]) == 0
    assert capsys.readouterr().out.startswith("PROCEED: demo-sasrec v3 against v2, the version serving just before")


def test_a_version_that_served_a_few_minutes_is_passed_over_and_named(tmp_path):
    """v2 served 4 minutes before v3 replaced it: too little to compare with (an error
    asking for --baseline), so the baseline is v1, and the reason says why."""
    url, now = _store(tmp_path, [([Segment("v1", 61), Segment("v2", 4, DEFECT), Segment("v3", 20)], 50)])
    v = check(make_engine(url), MODEL, now=now)
    assert v.baseline == "v1"
    assert v.baseline_choice == (
        "the version serving just before v3 was deployed (2026-11-20 09:05 UTC); passed over: v2 (4 minutes), "
        "which served fewer than 10 minutes of the day before, too few to compare with (pass --baseline to compare "
        "with it)")


def test_split_point_finds_the_minute_the_mean_changed():
    from monitor.stats import split_point

    assert split_point([1, 1, 1, 5, 5], [1, 1, 1, 1, 1]) == 3
    assert split_point([5.0, 5.0, 100.0, 100.0], [5, 5, 10, 10]) == 2  # means 1, 1, 10, 10
    assert split_point([1.0], [1]) is None and split_point([0, 0], [0, 0]) is None


def test_a_recent_window_with_too_few_minutes_is_not_said_to_be_judged(tmp_path, capsys):
    """v2 stopped serving 25 minutes ago (its traffic moved back to v1): its last 30 minutes
    hold 5 minutes of traffic, too few to judge. The output said they were 'also judged on
    their own: 250 over 5 minutes' (and JSON gave their window, which means judged)."""
    url, end = _store(tmp_path, [([Segment("v1", 60), Segment("v2", 90)], 50)])
    now = end + timedelta(minutes=25)
    v = check(make_engine(url), MODEL, now=now)
    assert v.verdict == "PROCEED" and v.recent_window is None
    assert (v.recent_predictions, v.recent_minutes) == (250, 5)
    [note] = [r for r in v.reasons if r.window == "recent"]
    assert (note.severity, note.kind) == ("info", "data")
    assert note.text == ("the last 30 minutes (since 2026-11-20 10:25 UTC) not judged on their own: the candidate has "
                         "250 predictions over 5 minutes there; judging them needs 10 minutes with traffic")
    assert main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "judged on their own: 250" not in out and "not judged on their own" in out


def test_a_recent_change_in_a_cohort_named_with_a_space_says_when_it_began(tmp_path, monkeypatch):
    """Cohort 'smart tv' lost its recency at 11:00 (20 minutes before the check, 3 h after
    the deploy): the onset was read from the reason's text up to the space, found no series
    'smart', and said 'since 10:50', the start of the last 30 minutes."""
    import functools

    import monitor.demo as demo
    from monitor.simulate import Defect, Traffic

    monkeypatch.setattr(demo, "Traffic", functools.partial(Traffic, cohorts=("web", "smart tv", "android")))
    bad = Defect(recency_cohort="smart tv")
    url, now = _store(tmp_path, [([Segment("v1", 30), Segment("v2", 150), Segment("v2", 20, bad)], 120)])
    v = check(make_engine(url), MODEL, now=now)
    recent = [r for r in v.reasons if r.window == "recent"]
    assert [r.series for r in recent] == [f"layer {k} all heads averaged, cohort smart tv" for k in (0, 1)]
    assert all(r.text.startswith("recent change, since about 2026-11-20 11:00 UTC") for r in recent), recent


def test_a_harmless_redeploy_checked_at_night_is_not_warned_about_for_noise(tmp_path):
    """The same weights redeployed, then 3 predictions a minute (night): each last 30
    minutes holds 90, and a same-weights shift was judged there against the quarter SD set
    for 1,000 predictions, on 32 head figures. Noise alone crossed it (entropy_norm of one
    head +0.04, its interval clear of 0): WATCH at 13:00 and 13:30 of five checks."""
    same = {"weights_id": "w1"}
    url, _ = _store(tmp_path, [([Segment("v1", 120, **same), Segment("v2", 60, **same)], 50),
                               ([Segment("v2", 150, **same)], 3)])
    engine = make_engine(url)
    for k in range(1, 6):
        now = datetime(2026, 11, 20, 11, 0, tzinfo=UTC) + timedelta(minutes=30 * k)
        v = check(engine, MODEL, now=now)
        assert v.recent_predictions == 90 and v.recent_window is not None
        assert v.verdict == "PROCEED", (now, [r.text for r in v.reasons])


def _arms(tmp_path, arms, then=20):
    """`arms`: (version, predictions per minute) served side by side until 09:00, each
    deployed a minute after the one before; then v3 alone for `then` minutes."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    for k, (version, rate) in enumerate(arms):
        stream(url, [Segment(version, 60 - k)], rate=rate, start=START + 60 * k)
    end = stream(url, [Segment("v3", then)], rate=50, start=START + 3600)
    return url, datetime.fromtimestamp(end, UTC)


def test_a_baseline_chosen_between_a_b_arms_names_the_other_arm_and_its_share(tmp_path, capsys):
    """v1 and v2 served 50/50 for an hour, then v3: the baseline is one of two equal arms
    (the later deployment, on a tie), chosen without a word about the other."""
    url, now = _arms(tmp_path, [("v1", 50), ("v2", 50)])
    v = check(make_engine(url), MODEL, now=now)
    assert (v.candidate, v.baseline) == ("v3", "v2")  # the choice is as it was
    assert v.baseline_choice == (
        "the version serving just before v3 was deployed (2026-11-20 09:00 UTC); v1 served beside it: of the "
        "predictions in the last 5 minutes with traffic before the deploy v2 had 50%, v1 50% (A/B arms or a canary, so which "
        "one v3 replaced is not plain: pass --baseline v1 to compare with it)")
    assert v.baseline_share == 0.5 and v.baseline_alternatives == (("v1", 0.5),)
    args = ["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat()]
    main(args)
    first = capsys.readouterr().out.splitlines()[0]
    assert "v1 served beside it" in first and "v2 had 50%, v1 50%" in first and "--baseline v1" in first
    main([*args, "--format", "json"])
    d = json.loads(capsys.readouterr().out)
    assert "v1 served beside it" in d["baseline_choice"]
    assert d["baseline_share"] == 0.5 and d["baseline_alternatives"] == [{"version": "v1", "share": 0.5}]
    # compared with the other arm as asked: no choice was made, so none is explained
    other = check(make_engine(url), MODEL, baseline="v1", now=now)
    assert other.baseline_choice == "given with --baseline"
    assert other.baseline_share is None and other.baseline_alternatives == ()


def test_a_small_canary_beside_the_baseline_is_not_named_as_an_arm(tmp_path):
    """A canary at a tenth of v1's traffic (v2: 5 a minute against 50) is no arm: v1 is
    plainly the version serving, and the choice says nothing more than with v1 alone."""
    url, now = _arms(tmp_path, [("v1", 50), ("v2", 5)])
    v = check(make_engine(url), MODEL, now=now)
    assert v.baseline == "v1" and v.baseline_alternatives == ()
    assert v.baseline_share == round(50 / 55, 3)
    assert v.baseline_choice == "the version serving just before v3 was deployed (2026-11-20 09:00 UTC)"


def test_a_candidate_that_served_a_little_then_stopped_is_an_error_not_watch(tmp_path, capsys):
    """v2 served 5 minutes at 09:00 and its traffic went back to v1. 40 minutes later the
    answer was WATCH 'not enough data yet' with its 500 predictions, for ever: waiting
    cannot add to them, so a pipeline that waits on WATCH must not be told to."""
    url, now = _store(tmp_path, [([Segment("v1", 60), Segment("v2", 5), Segment("v1", 40)], 100)])
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat()])
    err = capsys.readouterr().err
    assert code == 2, err
    assert ("demo-sasrec v2 has served nothing since 2026-11-20 09:05 UTC (it may have been rolled back or its "
            "traffic moved; serving since then: v1)") in err
    assert "its 500 predictions over 5 minutes since the deploy are too few for a verdict" in err
    # a candidate still serving, with too little data yet, is WATCH as before
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", "2026-11-20T09:04Z"])
    assert code == 3 and "not enough data yet" in capsys.readouterr().out


def test_a_candidate_with_nothing_since_the_since_window_is_an_error_not_watch(tmp_path, capsys):
    """--since 15m on a v2 whose traffic moved back to v1 40 minutes ago: 0 predictions,
    and 'not enough data yet'."""
    url, now = _store(tmp_path, [([Segment("v1", 60), Segment("v2", 60), Segment("v1", 40)], 50)])
    args = ["rollback-check", "--store", url, "--model", MODEL, "--now", now.isoformat()]
    assert main([*args, "--since", "15m"]) == 2
    err = capsys.readouterr().err
    assert "demo-sasrec v2 has served nothing since 2026-11-20 10:00 UTC" in err
    assert "it has no predictions in the last 15 minutes (--since) to judge, and waiting will not add any" in err
    # its hour since the deploy is judged as it was; the last 30 minutes say why they are not
    v = check(make_engine(url), MODEL, now=now)
    assert v.verdict == "PROCEED" and v.recent_window is None and v.recent_predictions == 0
    [note] = [r for r in v.reasons if r.window == "recent"]
    assert note.text == ("the last 30 minutes (since 2026-11-20 10:10 UTC) not judged on their own: the candidate "
                         "has served nothing since 2026-11-20 10:00 UTC (it may have been rolled back or its traffic "
                         "moved; serving since then: v1)")
