"""monitor.stats against scipy, hand formulas and evidently's own stattests on the same bins."""

from __future__ import annotations

import doctest
import math
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests import (
    hellinger_stat_test,
    jensenshannon_stat_test,
    psi_stat_test,
    wasserstein_stat_test,
)
from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
from evidently.legacy.core import ColumnType
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

import monitor.stats as st
from monitor.sketch import BINS, EDGES
from monitor.stats import (
    STATISTICS,
    PageHinkley,
    bin_centres,
    cusum,
    delta_sd,
    hellinger,
    hhi,
    js_distance,
    js_profile,
    new_in_top,
    page_hinkley,
    psi,
    shares_js,
    top_movers,
    top_share,
    wasserstein_hist,
)
from monitor.topk import TopK

TOL = 1e-9


def _counts(rng: np.random.Generator, zeros: int = 0) -> np.ndarray:
    c = rng.integers(1, 500, BINS)
    c[rng.choice(BINS, zeros, replace=False)] = 0
    return c


def _samples(counts: np.ndarray, values: np.ndarray, rng: np.random.Generator) -> pd.Series:
    """A sample whose value counts are `counts` (values[i] repeated counts[i] times)."""
    return pd.Series(rng.permutation(np.repeat(values, counts)))


def _evidently_fill(p: np.ndarray) -> np.ndarray:
    # evidently's get_binned_data rule, written out independently of monitor.stats
    m = p[p > 0].min()
    return np.where(p > 0, p, m / 1e6 if m <= 1e-4 else 1e-4)


# --- against scipy and hand formulas ----------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_psi_is_the_direct_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _counts(rng), _counts(rng)
    p, q = a / a.sum(), b / b.sum()
    assert psi(a, b) == pytest.approx(np.sum((q - p) * np.log(q / p)), abs=TOL)
    # empty bins: the documented (evidently) fill, proportions not renormalised
    a, b = _counts(rng, zeros=3), _counts(rng, zeros=2)
    p, q = _evidently_fill(a / a.sum()), _evidently_fill(b / b.sum())
    assert psi(a, b) == pytest.approx(np.sum((q - p) * np.log(q / p)), abs=TOL)


def test_psi_fill_rule_by_hand() -> None:
    # smallest occupied proportion 0.25 > eps: the empty bin gets eps
    assert psi([1, 3, 0], [1, 1, 2]) == pytest.approx(
        (0.25 - 0.25) * 0
        + (0.25 - 0.75) * math.log(0.25 / 0.75)
        + (0.5 - 1e-4) * math.log(0.5 / 1e-4),
        abs=TOL,
    )
    # smallest occupied proportion 1e-5 <= eps: the empty bin gets 1e-5 / 1e6
    big = [1, 99_999, 0]
    p = np.array([1e-5, 0.99999, 1e-11])
    q = np.array([0.25, 0.25, 0.5])
    assert psi(big, [1, 1, 2]) == pytest.approx(np.sum((q - p) * np.log(q / p)), abs=TOL)
    # a bin empty on both sides adds nothing
    assert psi([1, 3, 0], [2, 2, 0]) == pytest.approx(psi([1, 3], [2, 2]), abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_js_and_hellinger_vs_scipy_and_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _counts(rng, zeros=seed), _counts(rng, zeros=2)
    assert js_distance(a, b) == pytest.approx(jensenshannon(a, b, base=2), abs=TOL)
    p, q = a / a.sum(), b / b.sum()
    assert hellinger(a, b) == pytest.approx(math.sqrt(1 - np.sum(np.sqrt(p * q))), abs=TOL)


@pytest.mark.parametrize("metric", ["entropy_norm", "entropy", "distance"])
def test_wasserstein_vs_scipy_weighted(metric: str) -> None:
    rng = np.random.default_rng(7)
    a, b = _counts(rng, zeros=4), _counts(rng, zeros=1)
    c = bin_centres(EDGES[metric])
    want = wasserstein_distance(c, c, u_weights=a, v_weights=b)
    assert wasserstein_hist(a, b, EDGES[metric]) == pytest.approx(want, abs=TOL)


def test_bin_centres_close_an_infinite_last_bin_at_the_previous_width() -> None:
    c = bin_centres(EDGES["distance"])
    assert c[-1] == 512 + 256 / 2
    assert c[0] == 0.25
    np.testing.assert_allclose(bin_centres(EDGES["top1"]), np.arange(BINS) / BINS + 0.025)
    assert bin_centres([-np.inf, 0.0, 1.0, 3.0])[0] == -0.5
    with pytest.raises(ValueError):
        bin_centres([0.0, 2.0, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_js_profile_vs_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random(256) * np.exp(-np.arange(256) / 10)
    q = rng.random(256) * np.exp(-np.arange(256) / 20)
    assert js_profile(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=TOL)
    # a shorter profile is zero beyond its end
    assert js_profile(p[:50], q) == pytest.approx(
        jensenshannon(np.pad(p[:50], (0, 206)), q, base=2), abs=TOL
    )


# --- against evidently's own stattests ---------------------------------------------------
# evidently 0.7 keeps its stattests under evidently.legacy (they back DataDriftPreset)
NUM, CAT = ColumnType.Numerical, ColumnType.Categorical


def _score(test, ref: pd.Series, cur: pd.Series, ftype=NUM) -> float:
    # copies: evidently's hellinger drops NaNs in place
    return float(test(ref.copy(), cur.copy(), ftype, None).drift_score)


@pytest.mark.parametrize("seed", range(4))
def test_psi_js_hellinger_equal_evidently_on_bin_labels(seed: int) -> None:
    # With <= 20 distinct reference values evidently counts values instead of binning:
    # samples of our bin labels give it exactly our histograms (empty bins included).
    rng = np.random.default_rng(seed)
    a, b = _counts(rng, zeros=2), _counts(rng, zeros=3)
    labels = np.arange(BINS, dtype=np.float64)
    ref, cur = _samples(a, labels, rng), _samples(b, labels, rng)
    assert psi(a, b) == pytest.approx(_score(psi_stat_test, ref, cur), abs=TOL)
    # evidently's JS stattest defaults to natural log: distance_e = distance_2 * sqrt(ln 2)
    assert js_distance(a, b) * math.sqrt(math.log(2)) == pytest.approx(
        _score(jensenshannon_stat_test, ref, cur), abs=TOL
    )
    assert js_distance(a, b) == pytest.approx(
        _jensenshannon(ref, cur, NUM, 0.1, base=2)[0], abs=TOL
    )
    assert hellinger(a, b) == pytest.approx(_score(hellinger_stat_test, ref, cur, CAT), abs=TOL)


def test_psi_equals_evidently_when_a_bin_holds_under_eps() -> None:
    # one baseline bin with 1 of 20001 values (5e-5 <= 1e-4): evidently's other fill branch
    rng = np.random.default_rng(11)
    a = np.array([20_000, 1] + [0] * 3)
    b = np.array([5, 0, 10, 3, 2])
    labels = np.arange(5, dtype=np.float64)
    ref, cur = _samples(a, labels, rng), _samples(b, labels, rng)
    assert psi(a, b) == pytest.approx(_score(psi_stat_test, ref, cur), rel=1e-12)


def test_psi_and_js_equal_evidently_on_its_own_numeric_bins() -> None:
    # > 20 distinct values: evidently bins both samples on Sturges edges of the pooled data;
    # our functions on np.histogram counts with those edges must agree.
    rng = np.random.default_rng(3)
    ref = pd.Series(rng.normal(0.0, 1.0, 3000))
    cur = pd.Series(rng.normal(0.7, 1.4, 2000))
    edges = np.histogram_bin_edges(pd.concat([ref, cur]).to_numpy(), bins="sturges")
    a, b = np.histogram(ref, edges)[0], np.histogram(cur, edges)[0]
    assert (a == 0).any() or (b == 0).any()  # the tails exercise the empty-bin fill
    assert psi(a, b) == pytest.approx(_score(psi_stat_test, ref, cur), abs=TOL)
    assert js_distance(a, b) == pytest.approx(
        _jensenshannon(ref, cur, NUM, 0.1, base=2)[0], abs=TOL
    )


@pytest.mark.parametrize("metric", ["entropy_norm", "distance"])
def test_wasserstein_equals_evidently_normed_on_bin_centres(metric: str) -> None:
    # evidently's "wasserstein" is W1 of the raw samples divided by max(std(reference), 0.001);
    # samples placed at our bin centres make its W1 ours, so divide ours by that std.
    rng = np.random.default_rng(5)
    a, b = _counts(rng, zeros=3), _counts(rng, zeros=1)
    c = bin_centres(EDGES[metric])
    ref, cur = _samples(a, c, rng), _samples(b, c, rng)
    norm = max(float(np.std(ref)), 0.001)
    assert wasserstein_hist(a, b, EDGES[metric]) / norm == pytest.approx(
        _score(wasserstein_stat_test, ref, cur), abs=TOL
    )


# --- properties --------------------------------------------------------------------------
HIST_STATS = ["psi", "js", "hellinger", "wasserstein"]


@pytest.mark.parametrize("name", HIST_STATS)
def test_registry_identical_is_zero_symmetric_and_scale_free(name: str) -> None:
    f = STATISTICS[name]
    rng = np.random.default_rng(1)
    a, b = _counts(rng, zeros=2), _counts(rng, zeros=2)
    e = EDGES["distance"]
    assert f(a, a, e) == pytest.approx(0.0, abs=1e-12)
    assert f(a, 3 * a, e) == pytest.approx(0.0, abs=1e-12)
    assert f(a, b, e) > 0
    assert f(a, b, e) == pytest.approx(f(b, a, e), abs=TOL)
    assert math.isnan(f(np.zeros(BINS), b, e)) and math.isnan(f(a, np.zeros(BINS), e))


def test_bounded_distances_reach_one_on_disjoint_support() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        a, b = rng.integers(0, 5, BINS), rng.integers(0, 5, BINS)
        if a.sum() and b.sum():
            assert 0.0 <= js_distance(a, b) <= 1.0 and 0.0 <= hellinger(a, b) <= 1.0
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0, abs=TOL)
    assert hellinger([1, 0], [0, 1]) == pytest.approx(1.0, abs=TOL)


def test_bad_histograms_are_errors() -> None:
    with pytest.raises(ValueError, match="length"):
        js_distance([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        psi([1, -1], [1, 1])
    with pytest.raises(ValueError, match="bins"):
        wasserstein_hist([1, 2], [2, 1], EDGES["top1"])


def test_register_statistic() -> None:
    assert set(HIST_STATS) <= set(STATISTICS)
    with pytest.raises(ValueError, match="already registered"):
        st.register_statistic("psi", STATISTICS["js"])
    try:
        st.register_statistic(
            "l1", lambda p, q, edges=None: float(np.abs(p / p.sum() - q / q.sum()).sum())
        )
        assert STATISTICS["l1"](np.array([1, 0]), np.array([0, 1]), None) == 2.0
    finally:
        STATISTICS.pop("l1", None)


# --- shares ------------------------------------------------------------------------------
def test_shares_js_with_and_without_the_other_bucket() -> None:
    p = {"a": 0.5, "b": 0.2}
    q = {"b": 0.4, "c": 0.1}
    # union keys sorted a, b, c; leftover 0.3 and 0.5
    want = jensenshannon([0.5, 0.2, 0.0, 0.3], [0.0, 0.4, 0.1, 0.5], base=2)
    assert shares_js(p, q) == pytest.approx(want, abs=TOL)
    want = jensenshannon([0.5, 0.2, 0.0], [0.0, 0.4, 0.1], base=2)
    assert shares_js(p, q, other=False) == pytest.approx(want, abs=TOL)
    assert shares_js(p, dict(p)) == 0.0
    # keeping only part of the same distribution is not "equal"
    assert shares_js({"a": 0.5, "b": 0.5}, {"a": 0.5}) > 0.3
    # shares summing a hair over 1 (float) give no negative leftover
    assert shares_js({"a": 0.6, "b": 0.4000000001}, {"a": 0.6, "b": 0.4}) < 1e-4


def test_shares_accept_topk() -> None:
    base = TopK.from_counts(np.array(["x", "y", "z"], dtype=object), np.array([6.0, 3.0, 1.0]), 8)
    cur = TopK.from_counts(np.array(["x", "w"], dtype=object), np.array([5.0, 5.0]), 8)
    assert shares_js(base, cur) == pytest.approx(shares_js(base.shares(), cur.shares()), abs=TOL)
    assert top_share(base, k=2) == pytest.approx(0.9)
    assert hhi(base) == pytest.approx(0.36 + 0.09 + 0.01)
    assert new_in_top(cur, base) == pytest.approx(0.5)  # w is new, x is not


def test_top_movers_order_and_missing_keys() -> None:
    p = {"a": 0.4, "b": 0.3, "c": 0.1}
    q = {"a": 0.1, "b": 0.3, "d": 0.2, "e": 0.1}
    assert top_movers(p, q, n=3) == [("a", 0.4, 0.1), ("d", 0.0, 0.2), ("c", 0.1, 0.0)]
    assert top_movers(p, q, n=10)[-1] == ("b", 0.3, 0.3)
    assert top_movers({}, {}) == []


def test_top_lift_finds_a_small_value_that_tripled() -> None:
    p = {"big": 0.50, "brand7": 0.013, "tiny": 0.001, "flat": 0.2}
    q = {"big": 0.56, "brand7": 0.048, "tiny": 0.006, "flat": 0.2, "new": 0.021}
    # big gained most (6 points) but 1.1x; tiny grew 6x but by half a point; new is new
    assert st.top_lift(p, q) == ("new", 0.0, 0.021)  # 0.021 / 0.001 floor = 21x
    del q["new"]
    assert st.top_lift(p, q) == ("brand7", 0.013, 0.048)  # 3.7x and +3.5 points
    assert st.top_lift(p, q, min_rise=0.05) == ("big", 0.50, 0.56)
    assert st.top_lift(q, p) is None  # nothing rose by 2 points
    assert st.top_lift({}, {}) is None


def test_concentration() -> None:
    shares = {f"i{j}": s for j, s in enumerate([0.3, 0.2, 0.1, 0.05, 0.05])}
    assert top_share(shares, k=2) == pytest.approx(0.5)
    assert top_share(shares, k=10) == pytest.approx(0.7)
    assert hhi(shares) == pytest.approx(0.09 + 0.04 + 0.01 + 0.0025 + 0.0025)
    # top-3 is i0, i1, i2: 0.2 of their 0.6 is on i1, absent from the baseline
    assert new_in_top(shares, ["i0", "i2", "zz"], k=3) == pytest.approx(0.2 / 0.6)
    assert new_in_top(shares, {"i0": 0.9, "i1": 0.05, "i2": 0.05}, k=3) == 0.0
    assert math.isnan(new_in_top({}, ["a"]))
    assert top_share({}) == 0.0 and hhi({}) == 0.0


def test_delta_sd() -> None:
    assert delta_sd(1.3, 1.0, 0.1) == pytest.approx(3.0)
    assert delta_sd(0.9, 1.0, 0.0) == pytest.approx(-0.1 / st.STD_FLOOR)
    assert math.isnan(delta_sd(math.nan, 1.0, 0.1))


# --- change points -----------------------------------------------------------------------
def test_cusum_by_hand() -> None:
    # mean 1, std 2, k 0.5: z = 0, 1, -1, 2, -3
    x = [1.0, 3.0, -1.0, 5.0, -5.0]
    # S+: 0, 0.5, 0, 1.5, 0      S-: 0, 0, 0.5, 0, 2.5
    np.testing.assert_allclose(cusum(x, 1.0, 2.0), [0.0, 0.5, 0.5, 1.5, 2.5])
    # with h both sums restart after a step above h: 3.0 > 2, so the last step starts at 0
    np.testing.assert_allclose(cusum([0.0, 2.0, 2.0, 0.0], 0.0, 1.0), [0, 1.5, 3.0, 2.5])
    np.testing.assert_allclose(cusum([0.0, 2.0, 2.0, 0.0], 0.0, 1.0, h=2.0), [0, 1.5, 3.0, 0])
    # a minute without data keeps the sums
    np.testing.assert_allclose(cusum([3.0, np.nan, 3.0], 0.0, 1.0), [2.5, np.nan, 5.0])


def test_cusum_crosses_h_just_after_a_seeded_shift() -> None:
    rng = np.random.default_rng(42)
    x = rng.normal(0.2, 0.05, 400)
    x[250:] += 0.1  # a 2-std shift at index 250
    path = cusum(x, 0.2, 0.05, k=0.5, h=5.0)
    assert path[:250].max() < 5.0
    first = int(np.argmax(path > 5.0))
    assert first == 251  # 2 steps after the shift (each step adds ~2 - k = 1.5 to S+)
    # two-sided: the mirror image (a downward shift) gives the same path
    np.testing.assert_allclose(cusum(0.4 - x, 0.2, 0.05, k=0.5, h=5.0), path, atol=1e-9)


def _river_doc_stream() -> list[int]:
    # the stream of river's PageHinkley docstring, which reports "Change detected at index 1006"
    rng = random.Random(12345)
    return rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)


def test_page_hinkley_matches_rivers_documented_example() -> None:
    s = _river_doc_stream()
    ph = PageHinkley()
    hits = []
    for i, v in enumerate(s):
        ph.update(v)
        if ph.drift_detected:
            hits.append(i)
    assert hits == [1006]
    res = page_hinkley(s)
    assert res.first == 1006
    assert res.path[1006] > 50 >= res.path[:1006].max()


def _stream(ph: PageHinkley, x: np.ndarray) -> tuple[list[int], list[float]]:
    hits, stats = [], []
    for i, v in enumerate(x):
        ph.update(float(v))
        stats.append(ph.statistic)
        if ph.drift_detected:
            hits.append(i)
    return hits, stats


def test_page_hinkley_function_and_class_agree_step_by_step() -> None:
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 1, 300), rng.normal(1.5, 1, 200)])
    for mode in ("up", "down", "both"):
        res = page_hinkley(x, delta=0.05, lambda_=20.0, alpha=0.999, min_instances=10, mode=mode)
        hits, stats = _stream(PageHinkley(0.05, 20.0, 0.999, 10, mode), x)
        end = (hits[0] if hits else len(x) - 1) + 1
        np.testing.assert_allclose(res.path[:end], stats[:end], rtol=1e-9, atol=1e-9)
        assert res.first == (hits[0] if hits else None)
    assert page_hinkley(x, 0.05, 20.0, 0.999, 10, "up").first == 314
    assert page_hinkley(x, 0.05, 20.0, 0.999, 10, "down").first is None


def test_page_hinkley_quiet_on_a_stationary_seeded_stream() -> None:
    rng = np.random.default_rng(123)
    x = rng.normal(0.5, 0.1, 5000)
    assert page_hinkley(x).first is None
    hits, _ = _stream(PageHinkley(), x)
    assert hits == []


def test_page_hinkley_restarts_after_a_detection_and_skips_nan() -> None:
    x = np.r_[np.zeros(40), np.full(40, 10.0), np.zeros(40)]
    hits, stats = _stream(PageHinkley(lambda_=20.0, min_instances=5), x)
    # up at 42; the next update restarts (statistic 0, mean of the 10s only), so the
    # step back down at 80 is a fresh change, detected at 82
    assert hits == [42, 82] and stats[43] == 0.0
    assert page_hinkley(x, lambda_=20.0, min_instances=5).first == 42
    # NaN minutes are skipped: same detection, shifted by the NaNs before it
    xn = np.r_[x[:10], np.nan, np.nan, x[10:]]
    res = page_hinkley(xn, lambda_=20.0, min_instances=5)
    assert res.first == 44 and np.isnan(res.path[10:12]).all()
    hits_n, _ = _stream(PageHinkley(lambda_=20.0, min_instances=5), xn)
    assert hits_n[0] == 44
    with pytest.raises(ValueError, match="mode"):
        PageHinkley(mode="sideways")


def test_page_hinkley_drift_detected_is_read_only() -> None:
    with pytest.raises(AttributeError):
        PageHinkley().drift_detected = True  # type: ignore[misc]


# --- surface -----------------------------------------------------------------------------
def test_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(st)
    assert tried >= 6 and failures == 0


def test_stats_imports_only_numpy_and_scipy() -> None:
    code = (
        "import sys, monitor.stats; "
        "print(sorted(m for m in ('pandas', 'sqlalchemy', 'evidently', 'river') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
