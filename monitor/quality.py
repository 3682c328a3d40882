"""Detection quality, measured: known shifts caught in the right series, and how often a
stationary stream crosses the default rule thresholds. Used by tests and `make bench`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import select

from alerts.rules import Rule, load_rules
from monitor.baselines import Baselines
from monitor.config import EvaluateConfig
from monitor.demo import START, Segment, stream
from monitor.evaluate import WindowReader, evaluate_cycle
from monitor.simulate import Defect, make_catalogue
from monitor.store import make_engine, tables
from monitor.store.maintenance import as_utc

# a short trailing baseline keeps the simulated streams small; the statistics are the same
TEST_EVALUATE = EvaluateConfig(baseline_hours=2, trailing_gap_hours=1, min_samples=300)


def _popular_items(n: int = 8, seed: int = 7) -> tuple[int, ...]:
    cat = make_catalogue(np.random.default_rng(seed))
    return tuple(int(i) for i in np.argsort(-cat.popularity)[:n])


@dataclass(frozen=True)
class Scenario:
    name: str
    defect: Defect
    changed: dict[str, set[str]]  # label -> values of the series that must fire
    unchanged: dict[str, set[str]]  # label -> values of series that must not fire


def scenarios() -> list[Scenario]:
    return [
        Scenario("entropy_collapse", Defect(collapse_head=(1, 2)),
                 {"layer": {"1"}, "head": {"2"}}, {"layer": {"0"}}),
        Scenario("item_concentration", Defect(promoted_items=_popular_items(), items_bonus=4.0, items_layer=1),
                 {"layer": {"1"}, "head": {"*"}}, {"layer": {"0"}}),
        Scenario("cohort_recency", Defect(recency_cohort="ios", recency_bonus=4.0),
                 {"cohort": {"ios"}}, {"cohort": {"web", "android"}}),
    ]


def results_frame(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        df = pd.DataFrame(conn.execute(select(tables.drift_results)).mappings().all())
    if len(df):
        df["window_end"] = [as_utc(x) for x in df["window_end"]]
    return df


def crossings(df: pd.DataFrame, rules: list[Rule]) -> pd.DataFrame:
    """Rows of drift_results that cross a rule's threshold, with the rule's name."""
    parts = []
    for rule in rules:
        hit = df[rule.crossing_mask(df)]
        if len(hit):
            parts.append(hit.assign(rule=rule.name))
    return pd.concat(parts) if parts else df.iloc[:0].assign(rule=[])


def _select(df: pd.DataFrame, labels: dict[str, set[str]]) -> pd.DataFrame:
    ok = np.ones(len(df), dtype=bool)
    for k, values in labels.items():
        ok &= df[k].isin(values).to_numpy()
    return df[ok]


@dataclass(frozen=True)
class Detection:
    scenario: str
    shift_at: datetime
    first_cycle: int | None  # cycles after the first window holding shifted data
    rules: tuple[str, ...]  # rules that fired in the changed series
    false_series: tuple[str, ...]  # unchanged series where a rule fired


def run_scenario(url: str, sc: Scenario, *, rate: int = 100, before_min: int = 180,
                 after_min: int = 8, cfg: EvaluateConfig = TEST_EVALUATE) -> Detection:
    """Stationary traffic, then the defect from `before_min` on; evaluate around it."""
    stream(url, [Segment("v1", before_min), Segment("v1", after_min, sc.defect)], rate=rate)
    engine = make_engine(url)
    try:
        shift = datetime.fromtimestamp(START + 60 * before_min, UTC)
        baselines, reader = Baselines(engine, cfg), WindowReader(engine)
        # from well before the shift (the quiet windows must stay quiet) to its end
        for k in range(-10, after_min + 1):
            evaluate_cycle(engine, shift + timedelta(minutes=k + cfg.lag_minutes), cfg, baselines, reader)
        hits = crossings(results_frame(engine), load_rules())
    finally:
        engine.dispose()
    changed = _select(hits, sc.changed)
    changed = changed[changed["window_end"] > shift]
    first = None
    if len(changed):
        first = int((changed["window_end"].min() - shift) / timedelta(minutes=1))
    false = _select(hits, sc.unchanged)
    series = sorted({f"{r.cohort}/{r.layer}/{r.head}:{r.rule}@{r.window_end:%H:%M}" for r in false.itertuples()})
    return Detection(sc.name, shift, first, tuple(sorted(set(changed["rule"]))), tuple(series))


@dataclass(frozen=True)
class FalseAlarms:
    days: float
    series: int
    cycles: int
    results: int  # drift_results rows written
    crossings: int  # rows that cross a default rule threshold
    by_rule: dict[str, int]
    per_week: float


def false_alarms(url: str, *, days: float = 7, rate: int = 60, layers: int = 1, heads: int = 2,
                 cohorts: tuple[str, ...] = ("web", "ios"), cfg: EvaluateConfig | None = None,
                 seed: int = 11, progress: bool = False) -> FalseAlarms:
    """A stationary stream (requests resampled from one fixed pool), evaluated every
    minute with the default config and rules: how many results cross a threshold."""
    from collectors import AttentionCollector
    from monitor.demo import MODEL, _Progress
    from monitor.simulate import SimModel, Traffic

    cfg = cfg or EvaluateConfig()
    rng = np.random.default_rng(seed)
    cat = make_catalogue(rng)
    traffic = Traffic(cat, rng, cohorts=cohorts)
    hist, lengths, coh = traffic.requests(6000)
    pool = SimModel(cat, layers=layers, heads=heads, seed=seed).attention(hist, lengths, coh).astype(np.float32)
    minutes = int(days * 1440)
    warmup = int((cfg.baseline_hours + cfg.trailing_gap_hours) * 60) + cfg.window_minutes
    bar = _Progress(warmup + minutes, "stationary stream") if progress else None
    clock = [START]
    with AttentionCollector(url, model=MODEL, version="v1", sample_rate=0.0, clock=lambda: clock[0],
                            flush_interval_s=1e9) as c:
        for m in range(warmup + minutes):
            clock[0] = START + 60 * m
            idx = rng.integers(0, len(pool), rate)
            c.observe_batch(pool[idx], item_ids=hist[idx], lengths=lengths[idx], cohorts=coh[idx].tolist(),
                            attributes={"brand": cat.brand[hist[idx]]}, timestamps=clock[0] + 30)
            if m % 60 == 59:
                clock[0] += 60
                c.flush()
                if bar:
                    bar.update(m + 1)
    engine = make_engine(url)
    rules = load_rules()
    counts: dict[str, int] = {}
    crossed = results = cycles = 0
    try:
        baselines, reader = Baselines(engine, cfg), WindowReader(engine)
        first = datetime.fromtimestamp(START + 60 * warmup, UTC)
        for k in range(minutes):
            at = first + timedelta(minutes=k + cfg.lag_minutes)
            evaluate_cycle(engine, at, cfg, baselines, reader)
            cycles += 1
            if bar and k % 60 == 59:
                bar.update(warmup + k + 1)
        df = results_frame(engine)
        results = len(df)
        if results:
            hits = crossings(df, rules)
            crossed = len(hits)
            counts = hits["rule"].value_counts().to_dict() if crossed else {}
        series = int(df.groupby(["cohort", "layer", "head"]).ngroups) if results else 0
    finally:
        engine.dispose()
    return FalseAlarms(days, series, cycles, results, crossed, counts, crossed / days * 7)
