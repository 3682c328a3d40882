"""Alert rules: YAML in the spirit of Prometheus alerting rules (DESIGN §6).

A rule names a statistic of `drift_results` (a glob such as `js.attr.*` is allowed), a
comparison and a threshold, and which series it applies to. `compare: change` compares
`value - baseline_value` instead of the value. `match` values are globs; one that starts
with `!` matches the labels the rest does not (`baseline_kind: "!retrain"`). A value may be
a list of globs: the label matches if any plain glob matches (or there is none) and no `!`
glob excludes it, so `baseline_kind: ["!retrain", "!previous_version"]` is "neither", and
`baseline_kind: [trailing, pinned]` is "either". Scoring lives in monitor.stats; this file
only decides.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alerts.globs import check_patterns, label_matches
from monitor.errors import ConfigError

DEFAULT_RULES = Path(__file__).with_name("rules") / "default.yaml"
LABELS = ("model", "version", "cohort", "layer", "head", "baseline_kind")
_OPS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}


def parse_duration(value: str | int | float) -> timedelta:
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 90s, 5m, 2h, 1d)")
    return timedelta(seconds=float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def match_text(label: str, patterns: Sequence[str]) -> str:
    """A `match` entry for people: `head=[*]`, `baseline_kind!=retrain`, `cohort=web|ios`."""
    wanted = [p for p in patterns if not p.startswith("!")]
    parts = [f"{label}={'|'.join(wanted)}"] if wanted else []
    return ", ".join(parts + [f"{label}!={p[1:]}" for p in patterns if p.startswith("!")])


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    statistic: str
    op: Literal[">", ">=", "<", "<="]
    threshold: float
    compare: Literal["value", "change"] = "value"
    for_: timedelta = Field(timedelta(0), alias="for")
    keep_firing_for: timedelta = timedelta(minutes=5)
    min_samples: int = Field(0, ge=0)
    match: dict[str, tuple[str, ...]] = {}  # label -> globs (one, or a list: see the docstring)
    severity: Literal["critical", "warning", "info"] = "warning"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    dashboard: Literal["overview", "heads", "items"] = "overview"  # which one its links open

    @field_validator("for_", "keep_firing_for", mode="before")
    @classmethod
    def _duration(cls, v):
        return v if isinstance(v, timedelta) else parse_duration(v)

    @field_validator("match", mode="before")
    @classmethod
    def _labels(cls, v) -> dict[str, tuple[str, ...]]:
        if not isinstance(v, dict):
            raise ValueError(f"expected a mapping of label to glob(s), got {type(v).__name__}")
        bad = [k for k in v if k not in LABELS]
        if bad:
            raise ValueError(f"unknown label(s) {bad}; known: {list(LABELS)}")
        return {k: check_patterns(k, x) for k, x in v.items()}

    @field_validator("annotations")
    @classmethod
    def _not_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        from alerts.model import ENDED

        if ENDED in v:
            raise ValueError(f"annotation {ENDED!r} is attnmon's: it says why an alert ended without "
                             "being fixed (README, alerts); name yours otherwise")
        return v

    @field_validator("statistic")
    @classmethod
    def _known_statistic(cls, v: str) -> str:
        # a typo (delta.entropy_nrm) must stop a rule file, not load as a rule that never fires
        if not could_be_written(v):
            raise ValueError(f"{v!r} names no statistic the monitor writes, under any config "
                             "(e.g. delta.entropy_norm, psi.top1, js.position_profile, js.attr.<name>, "
                             "health.no_data_minutes)")
        return v

    def match_text(self) -> str:
        """The `match` for people: `baseline_kind!=retrain, head=[*]` ('' if none)."""
        return ", ".join(match_text(k, v) for k, v in self.match.items())

    def applies(self, statistic: str, labels: dict[str, str]) -> bool:
        return fnmatch.fnmatchcase(statistic, self.statistic) and all(
            label_matches(str(labels.get(k, "")), pat) for k, pat in self.match.items()
        )

    def crosses(self, value: float, baseline_value: float | None, n: int) -> bool:
        if n < self.min_samples:
            return False
        x = value - (baseline_value or 0.0) if self.compare == "change" else value
        return bool(_OPS[self.op](x, self.threshold))

    def crossing_mask(self, df) -> np.ndarray:
        """Rows of a drift_results frame where this rule's condition holds."""
        ok = np.array([fnmatch.fnmatchcase(s, self.statistic) for s in df["statistic"]], dtype=bool)
        for k, pat in self.match.items():
            ok &= np.array([label_matches(str(v), pat) for v in df[k]], dtype=bool)
        x = df["value"].to_numpy(float)
        if self.compare == "change":
            x = x - df["baseline_value"].fillna(0.0).to_numpy(float)
        return ok & _OPS[self.op](x, self.threshold) & (df["n_current"].to_numpy() >= self.min_samples)


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]


CANNOT_FIRE = ("rule {name} reads {statistic}, which the evaluator does not write with this config "
               "(evaluate.metrics, statistics, statistics_by_metric): it cannot fire")


def could_be_written(statistic: str) -> bool:
    """Whether some config makes the monitor write a statistic this glob names."""
    from alerts.health import STATISTICS as HEALTH
    from monitor.config import STATISTICS, EvaluateConfig
    from monitor.evaluate import is_written
    from monitor.metrics import ALL_METRICS

    every = EvaluateConfig(metrics=list(ALL_METRICS), statistics=list(STATISTICS))
    return is_written(statistic, every) or any(fnmatch.fnmatchcase(h, statistic) for h in HEALTH)


def cannot_fire(rules: list[Rule], evaluate) -> list[Rule]:
    """The rules that read a statistic no evaluation cycle writes with `evaluate`
    (monitor.config.EvaluateConfig); the monitor's own health statistics are always there."""
    from alerts.health import STATISTICS as HEALTH
    from monitor.evaluate import is_written

    return [r for r in rules if r.statistic not in HEALTH and not is_written(r.statistic, evaluate)]


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Rules from a YAML file (default: the shipped pack); errors name file, rule and field."""
    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([("yaml", str(path), f"syntax error: {exc}".splitlines()[0])], str(path)) from None
    except OSError as exc:
        raise ConfigError([("file", str(path), exc.strerror or str(exc))], str(path)) from None
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            where = ".".join(str(x) for x in loc)
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                rules = (data or {}).get("rules") or []
                name = rules[loc[1]].get("name", f"#{loc[1]}") if loc[1] < len(rules) and isinstance(rules[loc[1]], dict) else f"#{loc[1]}"
                where = f"rule {name}: " + ".".join(str(x) for x in loc[2:])
            value = "(missing)" if err["type"] == "missing" else err.get("input")
            if not where:  # the document itself: not a mapping with a rules: list
                where, value = "top level", type(data).__name__
                err = {**err, "msg": "expected a mapping with a `rules:` list"}
            problems.append((where, value, err["msg"]))
        raise ConfigError(problems, str(path)) from None
    names = [r.name for r in parsed.rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError([("rules", dup, "rule names must be unique")], str(path))
    return parsed.rules


def check_templates(rules: list[Rule], path: str | Path) -> None:
    """Unknown template variables or filters in annotations, named by file, rule and field."""
    from alerts.template import check

    problems = []
    for rule in rules:
        for key, text in rule.annotations.items():
            for msg in check(text, tuple(rule.labels)):
                problems.append((f"rule {rule.name}: annotations.{key}", text if len(text) < 80 else text[:77] + "...", msg))
    if problems:
        raise ConfigError(problems, str(path))


def runbook_anchor(name: str) -> str:
    """The README anchor of a default rule's runbook: `runbook-attentionentropycollapse`
    (monitor/cli_docs.py writes it before the runbook)."""
    return f"runbook-{name.lower()}"


@functools.cache
def default_rule_names() -> tuple[str, ...]:
    return tuple(r.name for r in load_rules(DEFAULT_RULES))


def runbook_urls(base_url: str | None) -> dict[str, str]:
    """Rule name -> its runbook in the README at `base_url` (alerts.runbook_base_url), for
    the default pack's rules; a copy of one in your own file keeps its name, so its link.
    Empty without a base URL; a user:password in it is left out, as in dashboard links."""
    from alerts.template import strip_credentials

    if not base_url:
        return {}
    base_url = strip_credentials(base_url)
    return {name: f"{base_url}#{runbook_anchor(name)}" for name in default_rule_names()}


def load_rule_set(paths: list[str] | None = None) -> list[Rule]:
    """The rules of every file in `paths` (empty or None: the default pack), templates
    checked; a rule name used in two files is an error naming both."""
    files = [Path(p) for p in paths] if paths else [DEFAULT_RULES]
    rules: list[Rule] = []
    where: dict[str, Path] = {}
    for path in files:
        loaded = load_rules(path)
        check_templates(loaded, path)
        for rule in loaded:
            if rule.name in where:
                raise ConfigError([(f"rule {rule.name}: name", rule.name, f"also defined in {where[rule.name]}")], str(path))
            where[rule.name] = path
        rules += loaded
    return rules
