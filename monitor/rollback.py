"""Rollback decision support: a candidate version against its baseline version.

Compares every series of the candidate since its deployment with the baseline version's
last day before it, with bootstrap intervals over minute buckets, and answers PROCEED,
WATCH or ROLLBACK with reasons ranked by severity (DESIGN §8). Where maintenance has
rolled minutes older than a few days up to hours, the buckets are those hours (`_buckets`):
the same sums, so the same means, and an hour counts as the minutes of it that had
traffic. A rolled-up baseline day (24 hours) gives intervals about as wide as its minutes
did (wider where the mean drifts from hour to hour, which minute buckets miss); a side
rolled up into two or three hours gives rough ones.

How versions are compared follows what was measured on a real SASRec (DESIGN §5):
- same weights (equal `weights_id`): heads are the same heads, so any shift beyond the
  version's own sampling noise means the serving pipeline changed — judged head by head;
- new weights: heads of a retrain are not the same heads, so each layer's heads are
  matched (best assignment on their entropy and position distributions) and judged on
  pathologies (collapse, concentration on items or attribute values) and on shifts well
  beyond what a harmless retrain produces.

Both sides are compared at the same cohort mix: the candidate's. A canary by cohort (web
first) moves the all-cohort roll-ups by the mix alone when cohorts attend differently
(short mobile histories), so the baseline's figures are rebuilt from its per-cohort
series, each cohort weighted to its share of the candidate's predictions (`reweight`;
sketch counts, sums, histograms and position profiles are linear in the counts).
Cohorts only one side served are left out and named in an info reason, and the
bootstrap resamples each cohort's minutes on its own. The top-K items are kept on the
all-cohort roll-up only, so they stay the roll-up's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from monitor import stats
from monitor.baselines import (
    JUST_BEFORE_MINUTES,
    SHORT_LIVED_MINUTES,
    deployments,
    predecessor,
    sketch_std,
)
from monitor.errors import AttnmonError
from monitor.heads import match_heads
from monitor.metrics import ALL_METRICS
from monitor.sketch import Sketch, merge_all
from monitor.store import tables as t
from monitor.store.maintenance import as_utc, rows_in, served_minutes
from monitor.topk import TopK, merge_many

PROCEED, WATCH, ROLLBACK = "PROCEED", "WATCH", "ROLLBACK"
EXIT_CODES = {PROCEED: 0, WATCH: 3, ROLLBACK: 4}
SCHEMA_VERSION = 1
COL = {m: i for i, m in enumerate(ALL_METRICS)}
ROLLUP = "*"

# judgement thresholds (effect sizes); see the module docstring
MIN_PREDICTIONS = 1000
MIN_MINUTES = 10
# the last minutes are judged on their own too (monitor.rollback_recent)
RECENT = timedelta(minutes=30)
COLLAPSE_DROP = 0.25  # entropy_norm, absolute, on a (matched) head: "collapsed"
COLLAPSE_WATCH = 0.12
ITEMS_TOP10_ROLLBACK = 0.10  # top-10 items' share of attention, absolute rise
ITEMS_TOP10_WATCH = 0.05
ATTR_RATIO_ROLLBACK, ATTR_DIFF_ROLLBACK = 3.0, 0.02  # an attribute value's share
ATTR_RATIO_WATCH, ATTR_DIFF_WATCH = 2.0, 0.01
# new weights: two seeds of SASRec on MovieLens moved a small genre up to 2.6× (+2.9 points)
RETRAIN_ATTR_RATIO_WATCH, RETRAIN_ATTR_DIFF_WATCH = 2.5, 0.03
POSITION_JS_ROLLBACK = 0.25  # a harmless retrain moved it up to 0.11
POSITION_JS_WATCH = 0.15
# a layer's share of attention on the last 5 items, absolute fall: the model lost recency
# (SASRec on MovieLens: histories shuffled in training -0.075 to -0.09; another seed, over
# its 15-minute windows, up to -0.056 on one layer)
RECENCY_DROP_ROLLBACK = 0.07
# same weights: a shift of a quarter baseline SD is not noise. In the simulator the same
# weights and pipeline moved no head by more than 0.08 SD (1,000 predictions over 10
# minutes); item ids off by one moved every head's entropy_norm by 0.23 to 0.44 SD
SAME_WEIGHTS_SD = 0.25
SAME_WEIGHTS_POSITION_JS = 0.05
TEXT_REASONS = 12  # the text output lists the most severe; one cause can move every head
# cohort shares that differ by this much (total variation) are named in an info reason
MIX_INFO_TV = 0.05


class RollbackInputError(AttnmonError):
    """A version that does not exist, or no deployment to compare."""


@dataclass(frozen=True)
class Reason:
    severity: str  # critical | warning | info
    kind: str  # collapse | concentration | attribute | position | shift | alerts | data
    series: str  # e.g. "layer 1 head 2" or "all cohorts"
    metric: str
    baseline: float | None
    candidate: float | None
    ci: tuple[float, float] | None  # 95% bootstrap interval of candidate - baseline
    text: str
    window: str = "whole"  # whole: since the deployment (or --since); recent: the last --recent only


@dataclass(frozen=True)
class Verdict:
    verdict: str
    model: str
    candidate: str
    baseline: str
    candidate_since: datetime
    baseline_window: tuple[datetime, datetime]
    same_weights: bool
    predictions: dict[str, int]
    minutes: dict[str, int]
    head_matching: dict[str, dict[str, str]]  # layer -> {candidate head: baseline head}
    reasons: list[Reason] = field(default_factory=list)
    baseline_choice: str = "given with --baseline"  # why this baseline, in words
    recent_window: tuple[datetime, datetime] | None = None  # None: not judged on its own
    recent_predictions: int | None = None  # set whenever the last --recent was looked at, judged or not
    recent_minutes: int | None = None
    # the default baseline's share of the predictions just before the deploy, and the other
    # versions serving beside it with a large share then (A/B arms, a canary): None and ()
    # with --baseline
    baseline_share: float | None = None
    baseline_alternatives: tuple[tuple[str, float], ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict:
        """The documented, stable JSON shape (schema_version 1)."""
        d = asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        d["candidate_since"] = self.candidate_since.isoformat()
        d["baseline_window"] = [x.isoformat() for x in self.baseline_window]
        d["recent_window"] = [x.isoformat() for x in self.recent_window] if self.recent_window else None
        d["reasons"] = [dict(asdict(r), ci=list(r.ci) if r.ci else None) for r in self.reasons]
        d["baseline_alternatives"] = [{"version": v, "share": s} for v, s in self.baseline_alternatives]
        d["exit_code"] = self.exit_code
        return d


# --- reading -------------------------------------------------------------------------


def _buckets(engine: Engine, model: str, version: str, start: datetime, end: datetime) -> tuple[dict, dict]:
    """Per series: (bucket n (K,), bucket sums (K, M)) for the bootstrap, from SQL sums only;
    and per series the minutes of [start, end) its buckets cover.

    A bucket is a minute, or an hour where maintenance rolled the minutes up: the bootstrap
    then resamples hours, with the same means (the sums are the same) and intervals about
    as wide over a day of hours, but rough (often narrower) over two or three. An hour row
    covers the minutes of its hour that had traffic (its minute_mask) and lie inside the
    window, so a version that served 8 minutes of a rolled-up hour counts 8, wherever the
    window's edge falls. An hour rolled up before migration 0006 has no mask: all 60 of
    its minutes count (inside the window), as they did before."""
    wa = t.window_aggregates
    cols = [wa.c.cohort, wa.c.layer, wa.c.head, wa.c.bucket_start, wa.c.bucket_seconds, wa.c.minute_mask]
    q = (
        select(*cols, func.sum(wa.c.n), *[func.sum(wa.c[f"sum_{m}"]) for m in ALL_METRICS])
        .where(wa.c.model == model, wa.c.version == version, *rows_in(start, end))
        .group_by(*cols)
    )
    out: dict[tuple, list] = {}
    covered: dict[tuple, set] = {}
    # minutes as numbers since the epoch; an open minute at `end` counts, as before
    lo, hi = int(start.timestamp() // 60), math.ceil(end.timestamp() / 60)
    with engine.connect() as conn:
        for r in conn.execute(q):
            key = tuple(r[:3])
            out.setdefault(key, []).append((float(r[6]), [float(x) for x in r[7:]]))
            minutes = served_minutes(r[3], r[4], r[5])
            covered.setdefault(key, set()).update(m for m in minutes if lo <= m < hi)
    buckets = {k: (np.array([n for n, _ in v]), np.array([s for _, s in v])) for k, v in out.items()}
    return buckets, {k: len(v) for k, v in covered.items()}


def _sketches(engine: Engine, model: str, version: str, start: datetime, end: datetime) -> dict[tuple, Sketch]:
    wa = t.window_aggregates
    parts: dict[tuple, list[Sketch]] = {}
    q = select(wa).where(wa.c.model == model, wa.c.version == version, *rows_in(start, end))
    with engine.connect() as conn:
        for row in conn.execute(q).mappings():
            parts.setdefault((row["cohort"], row["layer"], row["head"]), []).append(Sketch.from_row(row))
    return {k: merge_all(v) for k, v in parts.items()}


def _alerts_since(engine: Engine, model: str, version: str, since: datetime) -> list[dict]:
    """Alerts that fired for the candidate since its deployment (if alerting is set up)."""
    alerts = t.metadata.tables.get("alerts")
    if alerts is None:
        return []
    with engine.connect() as conn:
        try:
            rows = conn.execute(select(alerts).where(alerts.c.fired_at.is_not(None), alerts.c.fired_at >= since)).mappings().all()
        except Exception:  # noqa: BLE001 - a store without the alerts table: no alerts to report
            return []
    return [dict(r) for r in rows if (r["labels"] or {}).get("model") == model and (r["labels"] or {}).get("version") == version]


# --- statistics ----------------------------------------------------------------------


Buckets = tuple[np.ndarray, np.ndarray]  # (bucket n (K,), bucket sums (K, M)) of one series
Strata = list[tuple[float, Buckets, Buckets]]  # per cohort: (its share, baseline's, candidate's)


def _resampled_means(buckets: Buckets, rng: np.random.Generator, reps: int) -> np.ndarray:
    """(reps, M) means of every metric over `reps` resamples (with replacement) of the buckets."""
    n, s = buckets
    k = len(n)
    idx = rng.integers(0, k, (reps, k))
    times = np.bincount((idx + k * np.arange(reps)[:, None]).ravel(), minlength=reps * k).reshape(reps, k)
    return (times @ s) / np.maximum(times @ n, 1)[:, None]


def diff_draws(strata: Strata, rng: np.random.Generator, reps: int = 400) -> np.ndarray:
    """(reps, M) bootstrap draws of mean(candidate) - mean(baseline) of every metric.

    Each stratum (a cohort) has its minute buckets resampled on its own, on each side, and
    the strata's means are combined with their shares: the baseline at the candidate's
    cohort mix, as `reweight` builds it. One stratum of share 1 is the plain bootstrap."""
    out = 0.0
    for share, base, cand in strata:
        out = out + share * (_resampled_means(cand, rng, reps) - _resampled_means(base, rng, reps))
    return np.asarray(out)


def _ci(draws: np.ndarray | None, j: int) -> tuple[float, float] | None:
    if draws is None:
        return None
    return float(np.quantile(draws[:, j], 0.025)), float(np.quantile(draws[:, j], 0.975))


def bootstrap_diff(base: Buckets, cand: Buckets, j: int, rng: np.random.Generator,
                   reps: int = 400) -> tuple[float, float]:
    """95% interval of mean(candidate) - mean(baseline) of metric j, resampling buckets."""
    return _ci(diff_draws([(1.0, base, cand)], rng, reps), j)  # type: ignore[return-value]


def _scaled(tk: TopK, w: float) -> TopK:
    # a summary of w times each mass: counters, total and bound all scale by w
    return TopK(tk.k, tk.keys, tk.counts * w, tk.total * w)


def reweight(parts: Mapping[str, Sketch], weights: Mapping[str, float]) -> Sketch:
    """The sketch of the stream in which each vector of cohort c counts weights[c] times:
    the sum over c of weights[c] times parts[c] (cohorts without a positive weight left out).

    n, sums, sumsq, histograms and position profiles are sums over vectors, so this is
    exact for them (n and the histograms become fractional counts); top-K counters and
    totals scale with their bound. An attribute is kept only if every part has it (a
    part without it would shrink its total). The items' top-K are not weighted: a
    per-cohort series has none (they ride on the all-cohort roll-up)."""
    use = [(parts[c], float(w)) for c, w in weights.items() if c in parts and w > 0]
    if not use:
        return Sketch()
    names = [a for a in use[0][0].attrs if all(a in s.attrs for s, _ in use)]
    return Sketch(
        sum(s.n * w for s, w in use),
        sum(s.rejected * w for s, w in use),
        sum(s.sums * w for s, w in use),
        sum(s.sumsq * w for s, w in use),
        sum(s.hist * w for s, w in use),
        sum(s.pos * w for s, w in use),
        None,
        {a: merge_many([_scaled(s.attrs[a], w) for s, w in use]) for a in names},
    )


@dataclass(frozen=True)
class CohortMix:
    """Predictions per cohort on each side (cohort label != "*")."""

    baseline: dict[str, float]
    candidate: dict[str, float]

    @property
    def known(self) -> bool:  # a store (or a collector) without per-cohort series: roll-ups only
        return bool(self.baseline) and bool(self.candidate)

    @property
    def common(self) -> list[str]:
        return sorted(set(self.baseline) & set(self.candidate))

    def shares(self, side: str, cohorts: list[str]) -> dict[str, float]:
        n = getattr(self, side)
        total = sum(n[c] for c in cohorts)
        return {c: n[c] / total for c in cohorts} if total > 0 else {}


def _cohort_predictions(series: dict, count) -> dict[str, float]:
    """Predictions per cohort (its layer 0 head-average series), `count` reading them from
    a series' buckets or its sketch."""
    out = {}
    for (cohort, layer, head), v in series.items():
        if cohort != ROLLUP and layer == "0" and head == ROLLUP and (n := float(count(v))) > 0:
            out[cohort] = n
    return out


def _bucket_n(buckets: Buckets) -> float:
    return buckets[0].sum()


def compared(bs: dict, cs: dict) -> tuple[dict, dict]:
    """The all-cohort sketches of both sides as `check` compares them, at the candidate's
    cohort mix (for the HTML report's figures)."""
    mix = CohortMix(*(_cohort_predictions(x, lambda s: s.n) for x in (bs, cs)))
    b, c, _ = _at_candidate_mix(bs, cs, mix)
    return b, c


def _at_candidate_mix(bs: dict, cs: dict, mix: CohortMix):
    """The all-cohort series of both sides at the candidate's cohort mix.

    Per (layer, head): the candidate over the cohorts both sides served, the baseline's
    per-cohort sketches weighted to the candidate's shares of them (its n kept), and the
    cohorts' shares (the bootstrap's strata). Without per-cohort series, the roll-ups as
    they are, as one stratum ("*")."""
    bcmp, ccmp, shares = {}, {}, {}
    for key in sorted(set(bs) & set(cs)):
        if key[0] != ROLLUP:
            continue
        _, layer, head = key
        cohorts = [c for c in mix.common if (c, layer, head) in bs and (c, layer, head) in cs
                   and bs[(c, layer, head)].n > 0 and cs[(c, layer, head)].n > 0] if mix.known else []
        if not cohorts:
            bcmp[key], ccmp[key], shares[key] = bs[key], cs[key], {ROLLUP: 1.0}
        else:
            cn = {c: float(cs[(c, layer, head)].n) for c in cohorts}
            bn = {c: float(bs[(c, layer, head)].n) for c in cohorts}
            share = {c: cn[c] / sum(cn.values()) for c in cohorts}
            b_total = sum(bn.values())
            b = reweight({c: bs[(c, layer, head)] for c in cohorts}, {c: share[c] * b_total / bn[c] for c in cohorts})
            c_ = reweight({c: cs[(c, layer, head)] for c in cohorts}, dict.fromkeys(cohorts, 1.0))
            b.items, c_.items = bs[key].items, cs[key].items  # the items' top-K: roll-up only
            bcmp[key], ccmp[key], shares[key] = b, c_, share
    return bcmp, ccmp, shares


def _strata(bb: dict, cb: dict, layer: str, b_head: str, c_head: str, shares: dict[str, float]) -> Strata | None:
    """Per cohort: its share, the baseline head's buckets and the (matched) candidate head's."""
    out = []
    for cohort, share in shares.items():
        b, c = bb.get((cohort, layer, b_head)), cb.get((cohort, layer, c_head))
        if b is None or c is None:
            return None
        out.append((share, b, c))
    return out or None


def _mix_reason(mix: CohortMix) -> Reason | None:
    """Info: the cohorts compared, at whose shares, and those left out."""
    common = mix.common
    only_b = sorted(set(mix.baseline) - set(mix.candidate))
    only_c = sorted(set(mix.candidate) - set(mix.baseline))
    bs_all = mix.shares("baseline", sorted(mix.baseline))
    cs_all = mix.shares("candidate", sorted(mix.candidate))
    tv = 0.5 * sum(abs(bs_all.get(c, 0.0) - cs_all.get(c, 0.0)) for c in set(bs_all) | set(cs_all))
    if not (only_b or only_c or tv >= MIX_INFO_TV) or not common:
        return None

    def listed(sh: dict[str, float]) -> str:
        return ", ".join(f"{c} {_pct(s)}" for c, s in sorted(sh.items(), key=lambda kv: (-kv[1], kv[0])))

    text = (f"the versions served different cohort mixes (candidate: {listed(cs_all)}; baseline: {listed(bs_all)}), "
            f"so they are compared on the cohorts both served ({', '.join(common)}), the baseline weighted to the "
            "candidate's shares of them")
    if only_b:
        text += f"; {', '.join(only_b)} served by the baseline only, left out"
    if only_c:
        text += f"; {', '.join(only_c)} served by the candidate only, left out"
    text += " (the top-10 items are still the all-cohort figures)"
    return Reason("info", "data", "cohort mix", "cohort_share", None, tv, None, text)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _heads_of(sketches: dict, layer: str) -> set[str]:
    return {k[2] for k in sketches if k[0] == ROLLUP and k[1] == layer and k[2] != ROLLUP}


def _unpaired_reason(layer: str, base: set[str], cand: set[str], pairs: dict[str, str]) -> Reason | None:
    """Heads only one side has (heads are matched among the names both have) are not
    judged: say so, rather than nothing."""
    sides = (("candidate", cand - set(pairs)), ("baseline", base - set(pairs.values())))
    parts = [f"only the {side} has head{'s' if len(hs) > 1 else ''} {', '.join(sorted(hs, key=_head_order))}"
             for side, hs in sides if hs]
    if not parts:
        return None
    return Reason("info", "data", f"layer {layer}", "heads", None, None, None,
                  f"layer {layer}: {'; '.join(parts)}, so not compared")


def _head_order(head: str) -> tuple[int, str]:
    return (int(head), "") if head.isdigit() else (1 << 30, head)


def _where(cohort: str, layer: str, head: str) -> str:
    who = "all heads averaged" if head == ROLLUP else f"head {head}"
    place = f"layer {layer} {who}"
    return place if cohort == ROLLUP else f"{place}, cohort {cohort}"


# --- the check -----------------------------------------------------------------------


def check(engine: Engine, model: str, candidate: str | None = None, baseline: str | None = None,
          since: timedelta | None = None, now: datetime | None = None, seed: int = 0,
          recent: timedelta | None = RECENT) -> Verdict:
    """The verdict on `candidate` (default: the newest deployment) against `baseline`
    (default: the version it replaced, `baselines.predecessor`), over its data since its
    deployment (or the last `since`) and, when that period is longer, over its last
    `recent` too (None: not), so that a defect that began minutes ago is not averaged away."""
    deps = deployments(engine, model)
    if not deps:
        raise RollbackInputError(f"no deployments of model {model!r} in the store")
    names = [d["version"] for d in deps]
    if candidate is None:
        candidate = names[-1]
    if candidate not in names:
        raise RollbackInputError(f"candidate version {candidate!r} of {model!r} does not exist; known: {names}")
    cand_dep = deps[names.index(candidate)]
    choice = Choice(baseline or "")
    if baseline is None:
        earlier = [d for d in deps if d["deployed_at"] < cand_dep["deployed_at"] and d["version"] != candidate]
        if not earlier:
            raise RollbackInputError(f"{model} {candidate} has no earlier version to compare with; pass --baseline")
        choice = _default_baseline(engine, model, candidate, cand_dep["deployed_at"], earlier)
        baseline = choice.version
    if baseline not in names:
        raise RollbackInputError(f"baseline version {baseline!r} of {model!r} does not exist; known: {names}")
    if baseline == candidate:
        raise RollbackInputError(f"candidate and baseline are both {model} {candidate}: "
                                 "a version cannot be judged against itself; pass another --baseline")
    base_dep = deps[names.index(baseline)]
    now = as_utc(now or datetime.now(UTC))
    c_start = cand_dep["deployed_at"] if since is None else max(cand_dep["deployed_at"], now - since)
    c_start = _minute(c_start)
    b_end = _minute(cand_dep["deployed_at"] if base_dep["deployed_at"] < cand_dep["deployed_at"] else now)
    b_start = b_end - timedelta(hours=24)
    same = bool(cand_dep["weights_id"]) and cand_dep["weights_id"] == base_dep["weights_id"]

    cb, c_min = _buckets(engine, model, candidate, c_start, now)
    bb, b_min = _buckets(engine, model, baseline, b_start, b_end)
    predictions = {"candidate": _count(cb), "baseline": _count(bb)}
    minutes = {"candidate": c_min.get(KEY0, 0), "baseline": b_min.get(KEY0, 0)}
    base_short = predictions["baseline"] < MIN_PREDICTIONS or minutes["baseline"] < MIN_MINUTES
    if base_short and b_end <= c_start and b_end <= now:
        # the baseline's window is over: waiting cannot fill it, so this is no WATCH
        raise RollbackInputError(
            f"baseline {model} {baseline} has {predictions['baseline']:,} predictions over {minutes['baseline']} "
            f"minutes in the day before {candidate} was deployed ({b_start:%Y-%m-%d %H:%M} to {b_end:%Y-%m-%d %H:%M} "
            f"UTC); a verdict needs {MIN_PREDICTIONS:,} over {MIN_MINUTES} minutes and that window will not fill "
            "(the version served little then, or its data is gone): pass --baseline with a version that served then")
    sides = _Sides(engine, model, candidate, baseline, (b_start, b_end), same, bb, minutes["baseline"], seed)
    whole = sides.compare((c_start, now), cb, c_min)
    quiet = max(now - (recent or RECENT), c_start)  # nothing served since then: no longer serving
    if not whole.judged and (stopped := stopped_serving(engine, model, candidate, quiet, now)) is not None:
        # waiting cannot add to its data, so this is no WATCH ('not enough data yet', for ever)
        period = "since the deploy" if since is None or c_start == _minute(cand_dep["deployed_at"]) else (
            f"in the last {_duration(now - c_start)} (--since)")
        hint = "" if quiet == c_start else (f"; if it still serves, but less than once in {_duration(now - quiet)}, "
                                            "pass a longer --recent")
        n = predictions["candidate"]
        has = (f"it has no predictions {period} to judge, and waiting will not add any" if n == 0 else
               f"its {n:,} predictions over {minutes['candidate']} minutes {period} are too few for a verdict "
               f"({MIN_PREDICTIONS:,} over {MIN_MINUTES} minutes), and waiting will not add to them")
        raise RollbackInputError(f"{model} {candidate} has served nothing since {stopped}: {has}{hint}")
    reasons = list(whole.reasons)
    r_window, r_counts = None, (None, None)
    r_start = _minute(now - recent) if recent else None
    if whole.judged and r_start is not None and r_start > c_start:
        # rollback_recent builds on this module's comparison, so it is imported here, not above
        from monitor.rollback_recent import recent_reasons

        since_deploy = c_start == _minute(cand_dep["deployed_at"])
        found, r_counts, judged = recent_reasons(sides, whole, c_start, (r_start, now), since_deploy)
        r_window = (r_start, now) if judged else None
        reasons += found
    reasons += _alert_reasons(_alerts_since(engine, model, candidate, c_start), candidate, whole.mixed)
    # most severe first; within a severity what we measured before what alerts said
    reasons.sort(key=lambda r: (SEVERITY[r.severity], r.kind == "alerts", -abs((r.candidate or 0) - (r.baseline or 0))))
    if any(r.severity == "critical" for r in reasons):
        verdict = ROLLBACK
    elif not whole.judged or any(r.severity == "warning" for r in reasons):
        verdict = WATCH
    else:
        verdict = PROCEED
    return Verdict(verdict, model, candidate, baseline, c_start, (b_start, b_end), same,
                   predictions, minutes, whole.matching, reasons, choice.why, r_window, *r_counts,
                   choice.share, choice.alternatives)


KEY0 = (ROLLUP, "0", ROLLUP)  # a version's predictions: its layer 0 all-cohort roll-up
SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def stopped_serving(engine: Engine, model: str, version: str, quiet: datetime, now: datetime) -> str | None:
    """When `version` last served, in words with the versions serving since, if it served
    before `quiet` and nothing from then to `now`; else None (it still serves, or it has
    not served yet: waiting may help then)."""
    wa = t.window_aggregates
    key = (wa.c.model == model, wa.c.cohort == KEY0[0], wa.c.layer == KEY0[1], wa.c.head == KEY0[2])
    lo, hi = int(quiet.timestamp() // 60), math.ceil(now.timestamp() / 60)
    with engine.connect() as conn:
        # the newest rows: minute rows, or hour rows with the minutes they served (mask)
        rows = conn.execute(select(wa.c.bucket_start, wa.c.bucket_seconds, wa.c.minute_mask)
                            .where(*key, wa.c.version == version, wa.c.bucket_start < now)
                            .order_by(wa.c.bucket_start.desc()).limit(60)).all()
        served = [m for r in rows for m in served_minutes(*r) if m < hi]
        if not served or max(served) >= lo:
            return None
        others = conn.execute(select(wa.c.version).distinct()
                              .where(*key, wa.c.version != version, *rows_in(quiet, now))).scalars().all()
    last = datetime.fromtimestamp(60 * (max(served) + 1), UTC)
    moved = f"; serving since then: {', '.join(sorted(others))}" if others else ""
    return f"{last:%Y-%m-%d %H:%M} UTC (it may have been rolled back or its traffic moved{moved})"


def _minute(at: datetime) -> datetime:
    return at - timedelta(seconds=at.timestamp() % 60)  # whole minutes


def _count(buckets: dict) -> int:
    return int(buckets[KEY0][0].sum()) if KEY0 in buckets else 0


# another version serving beside the default baseline with at least this fraction of its
# predictions just before the deploy is named: from a 20% arm beside 80% up, the split was
# sized to compare versions (A/B arms, a late canary stage), and the candidate may have
# replaced either; a 1 to 10% canary or holdout leaves no doubt which version was serving
ARM_RATIO = 0.25


@dataclass(frozen=True)
class Choice:
    """The baseline, and in words which it is and why (Verdict.baseline_choice)."""

    version: str
    why: str = "given with --baseline"
    share: float | None = None  # of the predictions just before the deploy
    alternatives: tuple[tuple[str, float], ...] = ()  # other versions with a large share then


def _default_baseline(engine: Engine, model: str, candidate: str, deployed_at: datetime,
                      earlier: list[dict]) -> Choice:
    """The version `candidate` replaced, which it is and why, and the versions that served
    beside it just before the deploy with a large share (ARM_RATIO): the choice between
    A/B arms is close, so the operator is told which others to pass as --baseline."""
    found = predecessor(engine, model, deployed_at, earlier)
    at = f"{deployed_at:%Y-%m-%d %H:%M} UTC"
    if found.version is None:
        return Choice(earlier[-1]["version"],
                      f"the version deployed last before {candidate} ({at}): none served in the day before")
    why = f"the version serving just before {candidate} was deployed ({at})"
    share = dict(found.shares).get(found.version, 0.0)
    passed = {v for v, _ in found.passed_over}
    others = tuple((v, round(s, 3)) for v, s in found.shares
                   if v != found.version and v not in passed and s >= ARM_RATIO * share)
    if others:
        names = " and ".join(v for v, _ in others)
        listed = ", ".join(f"{v} {100 * s:.0f}%" for v, s in others)
        flags = " or ".join(f"--baseline {v}" for v, _ in others)
        why += (f"; {names} served beside it: of the predictions in the last {JUST_BEFORE_MINUTES} minutes with "
                f"traffic before the deploy {found.version} had {100 * share:.0f}%, {listed} (A/B arms or a canary, "
                f"so which one {candidate} replaced is not plain: pass {flags} to compare with "
                f"{'it' if len(others) == 1 else 'one of them'})")
    if found.passed_over:
        short = ", ".join(f"{v} ({m} minute{'s' if m != 1 else ''})" for v, m in found.passed_over)
        why += (f"; passed over: {short}, which served fewer than {SHORT_LIVED_MINUTES} minutes of the day before, "
                "too few to compare with (pass --baseline to compare with it)")
    return Choice(found.version, why, round(share, 3), others)


@dataclass(frozen=True)
class Comparison:
    """One comparison of a candidate window with the baseline window."""

    reasons: list[Reason]
    matching: dict[str, dict[str, str]]  # layer -> {candidate head: baseline head}
    judged: bool  # enough data on both sides to compare
    mixed: bool  # a canary by cohort: a cohort only one version served


@dataclass
class _Sides:
    """The baseline side of a check, read once, and what every comparison shares."""

    engine: Engine
    model: str
    candidate: str
    baseline: str
    b_window: tuple[datetime, datetime]
    same: bool
    bb: dict
    b_minutes: int
    seed: int
    _bs: dict | None = None

    def baseline_sketches(self) -> dict:
        if self._bs is None:
            self._bs = _sketches(self.engine, self.model, self.baseline, *self.b_window)
        return self._bs

    def compare(self, c_window: tuple[datetime, datetime], cb: dict, c_min: dict, *, need: int = MIN_PREDICTIONS,
                pairs: dict[str, dict[str, str]] | None = None) -> Comparison:
        """The candidate over `c_window` (its buckets `cb`, minutes `c_min`) against the
        baseline; `need` predictions on each side (in the cohorts both served), and the
        heads paired as `pairs` says where given (else one to one, or matched)."""
        bb, same = self.bb, self.same
        predictions = {"candidate": _count(cb), "baseline": _count(bb)}
        minutes = {"candidate": c_min.get(KEY0, 0), "baseline": self.b_minutes}
        reasons: list[Reason] = []
        matching: dict[str, dict[str, str]] = {}
        mixed = False
        enough = all(predictions[s] >= need and minutes[s] >= MIN_MINUTES for s in predictions)
        mix = CohortMix(_cohort_predictions(bb, _bucket_n), _cohort_predictions(cb, _bucket_n))
        if enough and mix.known:
            shared = {s: sum(getattr(mix, s)[c] for c in mix.common) for s in predictions}
            if min(shared.values()) < need:
                enough = False
                reasons.append(Reason(
                    "warning", "data", "cohort mix", "predictions", shared["baseline"], shared["candidate"], None,
                    f"not enough data in the cohorts both versions served ({', '.join(mix.common) or 'none'}): the "
                    f"candidate has {shared['candidate']:,.0f} predictions there and the baseline "
                    f"{shared['baseline']:,.0f} (candidate's cohorts: {', '.join(sorted(mix.candidate))}; baseline's: "
                    f"{', '.join(sorted(mix.baseline))}); a verdict needs {MIN_PREDICTIONS:,} on each side "
                    "(a cohort only one version served is not compared)"))
        if enough:
            cs = _sketches(self.engine, self.model, self.candidate, *c_window)
            bs = self.baseline_sketches()
            bcmp, ccmp, shares = _at_candidate_mix(bs, cs, mix)
            rng = np.random.default_rng(self.seed)
            layers = sorted({k[1] for k in ccmp})
            for layer in layers:
                bh = {k[2]: s for k, s in bcmp.items() if k[1] == layer and k[2] != ROLLUP}
                ch = {k[2]: s for k, s in ccmp.items() if k[1] == layer and k[2] != ROLLUP}
                if pairs is not None:
                    pairing = {c: b for c, b in pairs.get(layer, {}).items() if c in ch and b in bh}
                else:
                    pairing = {h: h for h in ch if h in bh} if same else match_heads(bh, ch)
                matching[layer] = pairing
                if (r := _unpaired_reason(layer, _heads_of(bs, layer), _heads_of(cs, layer), pairing)) is not None:
                    reasons.append(r)
                for c_head, b_head in pairing.items():
                    st = _strata(bb, cb, layer, b_head, c_head, shares.get((ROLLUP, layer, c_head), {}))
                    reasons += _head_reasons(layer, c_head, b_head, bh[b_head], ch[c_head],
                                             diff_draws(st, rng) if st else None, same)
                b_all, c_all = bcmp.get((ROLLUP, layer, ROLLUP)), ccmp.get((ROLLUP, layer, ROLLUP))
                if b_all is not None and c_all is not None:
                    reasons += _layer_reasons(layer, b_all, c_all, same)
            for layer in sorted({k[1] for k in (*bs, *cs) if k[0] == ROLLUP} - set(layers)):
                who = "candidate" if any(k[1] == layer for k in cs) else "baseline"
                reasons.append(Reason("info", "data", f"layer {layer}", "heads", None, None, None,
                                      f"layer {layer}: only the {who} has it, so not compared"))
            reasons += _cohort_reasons(bs, cs, same)
            if (r := _mix_reason(mix)) is not None:
                reasons.append(r)
                # only then, not for shares that differ a little (the time of day does that)
                mixed = set(mix.baseline) != set(mix.candidate)
        elif not any(r.kind == "data" for r in reasons):
            reasons.append(Reason(
                "warning", "data", "all", "predictions", predictions["baseline"], predictions["candidate"], None,
                f"not enough data yet: the candidate has {predictions['candidate']:,} predictions over "
                f"{minutes['candidate']} minutes and the baseline {predictions['baseline']:,} over "
                f"{minutes['baseline']}; a verdict needs {MIN_PREDICTIONS:,} over {MIN_MINUTES} minutes on each side",
            ))
        return Comparison(reasons, matching, enough, mixed)


def _duration(d: timedelta) -> str:
    m = round(d.total_seconds() / 60)
    if m < 120:
        return f"{m} minutes"
    return f"{m // 60} h" + (f" {m % 60} min" if m % 60 else "")


def _alert_reasons(alerts: list[dict], candidate: str, mixed: bool = False) -> list[Reason]:
    """One reason per rule that fired for the candidate: how often, first when and where.

    With `mixed` (a cohort only one version served: a canary by cohort), alerts on
    all-cohort series are info only: the daemon's rules compare the roll-ups as they are, so a canary by
    cohort moves them by the mix alone, which the comparison at the candidate's mix undoes.
    The monitor's own health (`health.*`: rejected input) is no attention figure: it counts."""
    by_rule: dict[tuple[str, bool], list[dict]] = {}
    for a in alerts:
        lab = a["labels"] or {}
        rollup = mixed and lab.get("cohort") == ROLLUP and not str(lab.get("statistic", "")).startswith("health.")
        by_rule.setdefault((a["rule"], rollup), []).append(a)
    out = []
    for (rule, rollup), items in by_rule.items():
        items.sort(key=lambda a: as_utc(a["fired_at"]))
        first = items[0]
        lab = first["labels"] or {}
        where = _where(lab.get("cohort", ROLLUP), lab.get("layer", "?"), lab.get("head", "?"))
        if lab.get("layer") == ROLLUP:  # the monitor's own health (rejected input): no layer
            where = "all series"
        # the most severe of them; a rule of severity info (alerts/rules.py) is no warning
        sev = next((s for s in ("critical", "warning") if any(a["severity"] == s for a in items)), "info")
        more = f" and {len(items) - 1} more series" if len(items) > 1 else ""
        text = (f"alert {rule} fired for {candidate}: first at {as_utc(first['fired_at']):%Y-%m-%d %H:%M} UTC "
                f"on {where}{more}")
        if rollup:
            sev = "info"
            text += (" (all-cohort series, which the cohort mix alone moves: not counted; the comparison above "
                     "is at the candidate's cohort mix)")
        out.append(Reason(sev, "alerts", where, rule, first.get("baseline_value"), first.get("value"), None, text))
    return out


def _head_reasons(layer, c_head, b_head, b: Sketch, c: Sketch, boot: np.ndarray | None, same) -> list[Reason]:
    """`boot`: bootstrap draws of candidate - baseline (diff_draws), None if there are none."""
    out = []
    where = f"layer {layer} head {c_head}" + ("" if same or c_head == b_head else f" (matched to baseline head {b_head})")
    j = COL["entropy_norm"]
    be, ce = b.sums[j] / b.n, c.sums[j] / c.n
    ci = _ci(boot, j)
    drop = be - ce
    sure = ci is None or ci[1] < 0
    if drop >= COLLAPSE_DROP and sure:
        out.append(Reason("critical", "collapse", where, "entropy_norm", be, ce, ci,
                          f"{where}: attention collapsed onto fewer items — entropy_norm {be:.2f} → {ce:.2f} "
                          f"({ce - be:+.2f}, 95% CI {ci[0]:+.2f}…{ci[1]:+.2f}); its top item now gets "
                          f"{_pct(c.sums[COL['top1']] / c.n)} of the attention (was {_pct(b.sums[COL['top1']] / b.n)})"
                          if ci else f"{where}: entropy_norm {be:.2f} → {ce:.2f}"))
    elif drop >= COLLAPSE_WATCH and sure:
        out.append(Reason("warning", "collapse", where, "entropy_norm", be, ce, ci,
                          f"{where}: attention narrower — entropy_norm {be:.2f} → {ce:.2f}"))
    if same:
        out += _same_weights_shift(where, b, c, boot)
    return out


def _same_weights_shift(where, b, c, boot) -> list[Reason]:
    """Same weights: a shift beyond sampling noise means the pipeline changed."""
    out = []
    std = sketch_std(b)
    # SAME_WEIGHTS_SD was set at MIN_PREDICTIONS; noise grows as 1/sqrt(n), so a quiet
    # recent window needs a larger shift: at 90 predictions (a night at 3 a minute) a
    # harmless redeploy got WATCH for noise in 5 of 48 half-hourly checks, none since
    limit = SAME_WEIGHTS_SD * math.sqrt(max(1.0, MIN_PREDICTIONS / max(c.n, 1.0)))
    for m in ("entropy_norm", "top1", "recency5", "distance"):
        j = COL[m]
        be, ce = b.sums[j] / b.n, c.sums[j] / c.n
        d = stats.delta_sd(ce, be, std[j])
        ci = _ci(boot, j)
        if abs(d) >= limit and (ci is None or ci[0] > 0 or ci[1] < 0):
            out.append(Reason("critical", "shift", where, m, be, ce, ci,
                              f"{where}: {m} {be:.3g} → {ce:.3g} ({d:+.1f} baseline SDs) with the same weights: "
                              "the serving pipeline (ids, features, padding) changed"))
    js = stats.js_profile(b.pos, c.pos)
    if js >= SAME_WEIGHTS_POSITION_JS:
        out.append(Reason("critical", "position", where, "position_profile", 0.0, js, None,
                          f"{where}: attention by position moved (JS {js:.2f}) with the same weights"))
    return out


def _layer_reasons(layer: str, b: Sketch, c: Sketch, same: bool) -> list[Reason]:
    out = []
    where = f"layer {layer}"
    js = stats.js_profile(b.pos, c.pos)
    lim = (SAME_WEIGHTS_POSITION_JS, SAME_WEIGHTS_POSITION_JS) if same else (POSITION_JS_ROLLBACK, POSITION_JS_WATCH)
    rb, rc = b.sums[COL["recency5"]] / b.n, c.sums[COL["recency5"]] / c.n
    if rb - rc >= RECENCY_DROP_ROLLBACK:
        db, dc = b.sums[COL["distance"]] / b.n, c.sums[COL["distance"]] / c.n
        out.append(Reason("critical", "position", where, "recency5", rb, rc, None,
                          f"{where} lost recency: the last 5 items get {_pct(rc)} of its attention (was "
                          f"{_pct(rb)}) and it looks {dc:.1f} items back on average (was {db:.1f})"))
    if js >= lim[1]:
        sev = "critical" if js >= lim[0] else "warning"
        out.append(Reason(sev, "position", where, "position_profile", 0.0, js, None,
                          f"{where}: attention moved across positions (JS {js:.2f}); the last 5 items get "
                          f"{_pct(rc)} (was {_pct(rb)})"))
    if b.items is not None and c.items is not None:
        bt, ct = stats.top_share(b.items.shares(), 10), stats.top_share(c.items.shares(), 10)
        rise = ct - bt
        if rise >= ITEMS_TOP10_WATCH:
            sev = "critical" if rise >= ITEMS_TOP10_ROLLBACK else "warning"
            new = [k for k, _ in sorted(c.items.shares().items(), key=lambda kv: -kv[1])[:3]]
            out.append(Reason(sev, "concentration", where, "items.top10_share", bt, ct, None,
                              f"{where}: the top-10 items now get {_pct(ct)} of attention (was {_pct(bt)}); "
                              f"most attended: {', '.join(new)}"))
    for name, tk in c.attrs.items():
        if name not in b.attrs:
            continue
        btk, csh = b.attrs[name], tk.shares()
        ratio_watch, diff_watch = (ATTR_RATIO_WATCH, ATTR_DIFF_WATCH) if same else (
            RETRAIN_ATTR_RATIO_WATCH, RETRAIN_ATTR_DIFF_WATCH)
        # a retrain's watch bar is above the rollback one's 2 points: a shift that does not
        # clear it is what a harmless retrain makes, so no rollback either
        diff_rollback = max(ATTR_DIFF_ROLLBACK, diff_watch)
        for value, cv in sorted(csh.items(), key=lambda kv: -kv[1])[:20]:
            # the baseline's upper bound against the candidate's lower one: a value the
            # baseline's top-K dropped is not "new" unless it beats that bound too
            bv = btk.estimate(value)[1] / btk.total if btk.total > 0 else 0.0
            ratio = cv / max(bv, 1e-4)
            if cv - bv >= diff_rollback and ratio >= ATTR_RATIO_ROLLBACK:
                sev = "critical"
            elif cv - bv >= diff_watch and ratio >= ratio_watch:
                sev = "warning"
            else:
                continue
            out.append(Reason(sev, "attribute", where, f"{name}={value}", bv, cv, None,
                              f"{where}: {name}={value} now gets {_pct(cv)} of attention (was {_pct(bv)}, "
                              f"{ratio:.1f}×)"))
    return out


def _cohort_reasons(bs: dict, cs: dict, same: bool) -> list[Reason]:
    """Per cohort, the layers' head-averaged attention by position.

    A cohort is judged on its own only with MIN_PREDICTIONS on each side: the JS distance
    of two samples of one behaviour is ~0.05 at 300 predictions (the same-weights limit)
    and ~0.02 at 1,000, so a small cohort would otherwise be 'rolled back' for its noise."""
    out = []
    small: set[str] = set()
    lim = (SAME_WEIGHTS_POSITION_JS, SAME_WEIGHTS_POSITION_JS) if same else (POSITION_JS_ROLLBACK, POSITION_JS_WATCH)
    for (cohort, layer, head), c in sorted(cs.items()):
        if cohort == ROLLUP or head != ROLLUP or (cohort, layer, head) not in bs:
            continue
        if min(c.n, bs[(cohort, layer, head)].n) < MIN_PREDICTIONS:
            small.add(cohort)
            continue
        js = stats.js_profile(bs[(cohort, layer, head)].pos, c.pos)
        if js >= lim[1]:
            out.append(Reason("critical" if js >= lim[0] else "warning", "position", _where(cohort, layer, head),
                              "position_profile", 0.0, js, None,
                              f"{_where(cohort, layer, head)}: attention moved across positions (JS {js:.2f})"))
    if small:
        many = len(small) > 1
        out.append(Reason("info", "data", "cohorts", "predictions", None, None, None,
                          f"cohort{'s' if many else ''} {', '.join(sorted(small))}: under {MIN_PREDICTIONS:,} "
                          f"predictions on one side, so not judged on {'their' if many else 'its'} own "
                          "(still counted in the all-cohort figures)"))
    return out


def render_text(v: Verdict) -> str:
    recent = ""
    if v.recent_window is not None:
        recent = (f" (the last {_duration(v.recent_window[1] - v.recent_window[0])}, since "
                  f"{v.recent_window[0]:%H:%M} UTC, also judged on their own: {v.recent_predictions:,} over "
                  f"{v.recent_minutes} minutes)")
    lines = [
        f"{v.verdict}: {v.model} {v.candidate} against {v.baseline}, {v.baseline_choice}",
        f"  candidate since {v.candidate_since:%Y-%m-%d %H:%M} UTC: {v.predictions['candidate']:,} predictions "
        f"over {v.minutes['candidate']} minutes{recent}; baseline {v.baseline_window[0]:%Y-%m-%d %H:%M} to "
        f"{v.baseline_window[1]:%Y-%m-%d %H:%M} UTC: {v.predictions['baseline']:,} over {v.minutes['baseline']} minutes",
        f"  weights: {'the same (heads compared one to one)' if v.same_weights else 'new (heads matched by their distributions)'}",
    ]
    if not any(r.severity != "info" for r in v.reasons):
        lines.append("  no head, position, item or attribute moved beyond what a harmless update does")
    for i, r in enumerate(v.reasons[:TEXT_REASONS], 1):
        lines.append(f"  {i}. [{r.severity}] {r.text}")
    if len(v.reasons) > TEXT_REASONS:
        rest = v.reasons[TEXT_REASONS:]
        counts = ", ".join(f"{n} {s}" for s in ("critical", "warning", "info")
                           if (n := sum(r.severity == s for r in rest)))
        lines.append(f"  ... and {len(rest)} more ({counts}): --format json or html lists them all")
    return "\n".join(lines)
