"""The default rule pack as on-call reads it: what its runbooks tell them to run."""

from __future__ import annotations

import re
import shlex

import pytest

from alerts.rules import load_rules
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
