"""The default rule pack as on-call reads it: what its runbooks tell them to run, and
that one change of one result row sends one notification."""

from __future__ import annotations

import fnmatch
import itertools
import re
import shlex

import pytest

from alerts.globs import label_matches
from alerts.rules import LABELS, load_rules
from alerts.state import Observation, annotate, labels_for
from monitor.cli import build_parser

SERIES = {"model": "demo-sasrec", "version": "v2", "cohort": "*", "layer": "1", "head": "*",
          "baseline_kind": "trailing", "statistic": "x", "receiver": "pager"}


@pytest.mark.parametrize("rule", load_rules(), ids=lambda r: r.name)
def test_every_command_a_runbook_names_runs_as_written(rule):
    """An engineer paged at night copies the command from the runbook: it must parse
    (a required option left out is a usage error instead of an answer)."""
    series = {**SERIES, "statistic": rule.statistic.replace("*", "brand")}
    labels = labels_for(rule, series)
    text = annotate(rule, Observation(rule, series, 1.0, 0.0), labels, None, None)["runbook"]
    commands = re.findall(r"`(attnmon [^`]*)`", text)
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{rule.name}: `{command}` exits {exc.code}")


# label values that exercise every `match` of the pack: each baseline kind
# (monitor/baselines.py), roll-ups ("*") and single series
VALUES = {"model": ("m",), "version": ("v2",), "cohort": ("*", "web"), "layer": ("*", "1"), "head": ("*", "2"),
          "baseline_kind": ("previous_version", "retrain", "pinned", "trailing")}
# pairs of rules allowed to fire on one result row, and why (none today)
INTENDED_OVERLAPS: dict[frozenset[str], str] = {}


def _statistics(a, b) -> list[str]:
    """Statistic names both rules' globs select (a glob's own text, its stars filled)."""
    names = {r.statistic.replace("*", "brand") for r in (a, b)}
    return [s for s in names if fnmatch.fnmatchcase(s, a.statistic) and fnmatch.fnmatchcase(s, b.statistic)]


def _both_can_cross(a, b) -> bool:
    if a.compare != b.compare:
        return True  # one on the value, one on its change: any pair of values can occur
    probes = [x + d for x in (a.threshold, b.threshold) for d in (-1e-9, 0.0, 1e-9)] + [-1e9, 1e9]
    return any(a.crosses(x, 0.0, 10**9) and b.crosses(x, 0.0, 10**9) for x in probes)


def _series(rule):
    for combo in itertools.product(*(VALUES[k] for k in LABELS)):
        labels = dict(zip(LABELS, combo, strict=True))
        if all(label_matches(labels[k], p) for k, p in rule.match.items()):
            yield labels


def test_no_two_rules_fire_on_one_result_row():
    """One shift of one row (statistic, series, baseline) is one alert: attnmon sends to
    PagerDuty, Slack and webhooks itself, so no Alertmanager inhibit rule can fold two
    rules' alerts into one page. PostDeploymentShift and AttentionEntropyDistributionShift
    both read psi.entropy_norm against a same-weights predecessor and paged twice."""
    overlaps = {}
    for a, b in itertools.combinations(load_rules(), 2):
        stats = _statistics(a, b)
        if not stats or not _both_can_cross(a, b):
            continue
        shared = [s for s in _series(a) if b.applies(stats[0], s) and a.applies(stats[0], s)]
        if shared:
            overlaps[frozenset((a.name, b.name))] = (stats[0], shared[0])
    assert {k: v for k, v in overlaps.items() if k not in INTENDED_OVERLAPS} == {}


def test_the_overlap_check_finds_the_overlap_of_the_old_pack():
    """The check above is not vacuous: the pack as it shipped had one."""
    from alerting import rule

    old = rule("OldShift", statistic="psi.entropy_norm", op=">", threshold=0.25, match={"baseline_kind": "!retrain"})
    post = next(r for r in load_rules() if r.name == "PostDeploymentShift")
    assert _statistics(old, post) == ["psi.entropy_norm"] and _both_can_cross(old, post)
    assert {s["baseline_kind"] for s in _series(old) if post.applies("psi.entropy_norm", s)} == {"previous_version"}
    loss, gain = (next(r for r in load_rules() if r.name == n) for n in ("RecencyLoss", "RecencyShift"))
    assert _statistics(loss, gain) == ["delta.recency5"] and not _both_can_cross(loss, gain)


@pytest.mark.parametrize("rule", [r for r in load_rules() if "{{value}}" in r.annotations.get("summary", "")
                                  and r.statistic.partition(".")[0] in ("delta", "psi", "js")],
                         ids=lambda r: r.name)
def test_a_summary_says_how_far_in_the_words_of_the_value_line(rule):
    """The summary and the series' value line of one message name the distance alike:
    "-3.21 SDs from the baseline mean" in both, not "-3.21 baseline SDs" in one."""
    from datetime import UTC, datetime

    from alerts.model import AlertView
    from alerts.receivers._text import value_text

    series = {**SERIES, "statistic": rule.statistic}
    labels = labels_for(rule, series)
    summary = annotate(rule, Observation(rule, series, -3.21, 0.0), labels, None, None)["summary"]
    view = AlertView("fp", rule.name, rule.severity, "firing", labels, {}, -3.21, 0.0, datetime.now(UTC), None)
    assert value_text(view) in summary
