"""monitor.metrics against direct per-row computations, plus properties and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from monitor import metrics
from monitor.metrics import (
    ALL_METRICS,
    METRICS,
    REASONS,
    compute,
    head_diversity,
    validate,
    zero_padding,
)

COL = {name: i for i, name in enumerate(METRICS)}
HYP = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------- helpers


def left_pad(rows: list[np.ndarray], L: int, dtype=np.float64, fill: float = 0.0) -> np.ndarray:
    """Stack variable-length rows into an (N, L) left-padded batch."""
    w = np.full((len(rows), L), fill, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            w[i, L - len(r) :] = r
    return w


def random_rows(rng: np.random.Generator, N: int, L: int, min_len: int = 1) -> list[np.ndarray]:
    """Attention-like rows: Dirichlet with concentrations from very peaked to flat, plus
    some exact one-hot and uniform rows."""
    rows = []
    for _ in range(N):
        n = int(rng.integers(min_len, L + 1))
        kind = rng.random()
        if kind < 0.05:
            r = np.zeros(n)
            r[rng.integers(n)] = 1.0
        elif kind < 0.1:
            r = np.full(n, 1.0 / n)
        else:
            r = rng.dirichlet(np.full(n, 10 ** rng.uniform(-1.5, 1)))
        rows.append(r)
    return rows


def ref_row(v: np.ndarray) -> list[float]:
    """Every metric of one valid row, computed the slow, obvious way in float64."""
    v = np.asarray(v, dtype=np.float64)
    n = len(v)
    ent = float(scipy_entropy(v))
    pairs = sum(abs(a - b) for a in v for b in v)
    return [
        ent,
        ent / math.log(n) if n > 1 else 1.0,
        float(v.max()),
        float(np.sort(v)[-3:].sum()),
        math.exp(ent) / n,
        pairs / (2 * n * v.sum()),
        float(v[-1]),
        float(v[-5:].sum()),
        float(sum(p * (n - 1 - j) for j, p in enumerate(v))),
        float(v[0]),
    ]


def ref_validate(w: np.ndarray, lengths: np.ndarray, tol: float = 1e-3) -> list[int]:
    codes = []
    L = w.shape[1]
    for row, n in zip(w, lengths, strict=True):
        v = row[L - n :].astype(np.float64)
        if n == 0:
            codes.append(4)
        elif not np.isfinite(v).all():
            codes.append(1)
        elif (v < -1e-6).any():
            codes.append(2)
        elif abs(v.sum() - 1.0) > tol:
            codes.append(3)
        else:
            codes.append(0)
    return codes


def reference(w: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    L = w.shape[1]
    return np.array([ref_row(row[L - n :]) for row, n in zip(w, lengths, strict=True)])


# ---------------------------------------------------------------- contract


def test_public_names():
    assert METRICS == (
        "entropy",
        "entropy_norm",
        "top1",
        "top3",
        "eff_support",
        "gini",
        "recency1",
        "recency5",
        "distance",
        "sink",
    )
    assert ALL_METRICS == METRICS + ("head_diversity",)
    assert REASONS == ("ok", "nan", "negative", "not_normalised", "empty")


# ---------------------------------------------------------------- compute vs reference


@pytest.mark.parametrize("L", [1, 2, 3, 7, 50])
def test_compute_matches_reference_float64(L):
    rng = np.random.default_rng(L)
    rows = random_rows(rng, 300, L)
    lengths = np.array([len(r) for r in rows])
    w = left_pad(rows, L)
    got = compute(w, lengths)
    assert got.dtype == np.float64 and got.shape == (300, len(METRICS))
    np.testing.assert_allclose(got, reference(w, lengths), rtol=1e-10, atol=1e-12)


def test_compute_matches_reference_float32():
    rng = np.random.default_rng(32)
    L = 50
    rows = random_rows(rng, 400, L)
    lengths = np.array([len(r) for r in rows])
    w = left_pad(rows, L, dtype=np.float32)
    got = compute(w, lengths)
    assert got.dtype == np.float64
    # The reference sees exactly the float32 values, widened.
    np.testing.assert_allclose(got, reference(w.astype(np.float64), lengths), rtol=0, atol=1e-5)


@pytest.mark.parametrize("block_elems", [1, 64, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_boundaries(monkeypatch, block_elems, dtype):
    # Tiny blocks: one row per block, and blocks that end mid-batch with a short tail.
    rng = np.random.default_rng(block_elems)
    L = 20
    rows = random_rows(rng, 157, L)
    lengths = np.array([len(r) for r in rows])
    w = left_pad(rows, L, dtype=dtype)
    whole = compute(w, lengths)
    codes = validate(w, lengths)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMS", block_elems)
    # float32 sums over another block shape may differ in the last place (eps 1.2e-7)
    atol = 1e-6 if dtype == np.float32 else 1e-7
    np.testing.assert_allclose(compute(w, lengths), whole, rtol=1e-6, atol=atol)
    np.testing.assert_array_equal(validate(w, lengths), codes)
    garbage = w.copy()
    garbage[np.arange(L) < (L - lengths)[:, None]] = np.nan
    np.testing.assert_array_equal(zero_padding(garbage, lengths), w)


def test_known_values():
    w = np.array(
        [
            [0.0, 0.0, 0.0, 1.0],  # one-hot at the most recent, n = 1
            [0.0, 1.0, 0.0, 0.0],  # one-hot at the oldest valid of n = 3
            [0.25, 0.25, 0.25, 0.25],  # uniform, n = 4
            [0.0, 0.0, 0.5, 0.5],  # uniform, n = 2
        ]
    )
    lengths = np.array([1, 3, 4, 2])
    m = compute(w, lengths)
    np.testing.assert_allclose(m[:, COL["entropy"]], [0, 0, math.log(4), math.log(2)])
    np.testing.assert_allclose(m[:, COL["entropy_norm"]], [1, 0, 1, 1])
    np.testing.assert_allclose(m[:, COL["top1"]], [1, 1, 0.25, 0.5])
    np.testing.assert_allclose(m[:, COL["top3"]], [1, 1, 0.75, 1])
    np.testing.assert_allclose(m[:, COL["eff_support"]], [1, 1 / 3, 1, 1])
    np.testing.assert_allclose(m[:, COL["gini"]], [0, 2 / 3, 0, 0], atol=1e-15)
    np.testing.assert_allclose(m[:, COL["recency1"]], [1, 0, 0.25, 0.5])
    np.testing.assert_allclose(m[:, COL["recency5"]], [1, 1, 1, 1])
    np.testing.assert_allclose(m[:, COL["distance"]], [0, 2, 1.5, 0.5])
    np.testing.assert_allclose(m[:, COL["sink"]], [1, 1, 0.25, 0.5])


# ---------------------------------------------------------------- properties

# A valid row: n non-negative floats, normalised. Tiny and subnormal values are allowed on
# purpose (p log p near 0, ties in the sort).
row_st = st.lists(
    st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
).filter(lambda xs: sum(xs) > 1e-3)
batch_st = st.tuples(st.lists(row_st, min_size=1, max_size=6), st.integers(0, 10))


def _batch(rows, extra, dtype=np.float64):
    rows = [np.asarray(r, dtype=np.float64) / math.fsum(r) for r in rows]
    L = max(len(r) for r in rows) + extra
    return left_pad(rows, L, dtype=dtype), np.array([len(r) for r in rows])


@HYP
@given(batch_st, st.sampled_from([np.float32, np.float64]))
def test_bounds(batch, dtype):
    w, lengths = _batch(*batch, dtype=dtype)
    assert (validate(w, lengths) == 0).all()
    m = compute(w, lengths)
    n = lengths.astype(np.float64)
    eps = 1e-6 if dtype == np.float32 else 1e-12
    assert np.isfinite(m).all()
    assert (m[:, COL["entropy"]] >= 0).all()
    hn = m[:, COL["entropy_norm"]]
    assert ((hn >= 0) & (hn <= 1)).all()
    g = m[:, COL["gini"]]
    assert ((g >= 0) & (g < 1) & (g <= (n - 1) / n)).all()
    top1, top3 = m[:, COL["top1"]], m[:, COL["top3"]]
    assert (top1 <= top3).all() and (top3 <= 1 + eps).all()
    assert (top1 >= 1 / n - eps).all()  # the largest is at least the mean
    eff = m[:, COL["eff_support"]]
    assert ((eff >= 1 / n * (1 - eps)) & (eff <= 1 + eps)).all()
    d = m[:, COL["distance"]]
    assert ((d >= 0) & (d <= (n - 1) * (1 + eps))).all()
    r1, r5 = m[:, COL["recency1"]], m[:, COL["recency5"]]
    assert (r1 <= r5 + eps).all() and (r5 <= 1 + eps).all()


@HYP
@given(st.integers(1, 60), st.integers(0, 10), st.sampled_from([np.float32, np.float64]))
def test_uniform_and_one_hot(n, extra, dtype):
    L = n + extra
    uniform = np.full(n, 1.0 / n)
    positions = sorted({0, n // 2, n - 1})
    rows = [uniform] + [np.eye(n)[k] for k in positions]
    w = left_pad(rows, L, dtype=dtype)
    lengths = np.full(len(rows), n)
    m = compute(w, lengths)
    atol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(m[0, COL["entropy_norm"]], 1.0, atol=atol)
    np.testing.assert_allclose(m[0, COL["gini"]], 0.0, atol=atol)
    np.testing.assert_allclose(m[0, COL["eff_support"]], 1.0, atol=atol)
    np.testing.assert_allclose(m[0, COL["distance"]], (n - 1) / 2, rtol=1e-6)
    hot = m[1:]
    np.testing.assert_allclose(hot[:, COL["entropy"]], 0.0, atol=atol)
    np.testing.assert_allclose(hot[:, COL["entropy_norm"]], 0.0 if n > 1 else 1.0, atol=atol)
    np.testing.assert_allclose(hot[:, COL["gini"]], (n - 1) / n, atol=atol)
    np.testing.assert_allclose(hot[:, COL["top1"]], 1.0)
    np.testing.assert_allclose(hot[:, COL["eff_support"]], 1.0 / n, rtol=1e-6)
    np.testing.assert_allclose(hot[:, COL["distance"]], [n - 1 - k for k in positions])
    np.testing.assert_allclose(hot[:, COL["sink"]], [1.0 if k == 0 else 0.0 for k in positions])


garbage_st = st.sampled_from([np.nan, np.inf, -np.inf, -5.0, 1e30, 0.5, -0.0])


@HYP
@given(batch_st, st.integers(0, 20), garbage_st, st.sampled_from([np.float32, np.float64]))
def test_padding_invariance(batch, more, garbage, dtype):
    w, lengths = _batch(*batch, dtype=dtype)
    N, L = w.shape
    wider = np.full((N, L + more), garbage, dtype=dtype)
    wider[:, more:] = w
    # also dirty the padding inside the original width
    wider[np.arange(L + more) < (L + more - lengths)[:, None]] = garbage
    assert (validate(wider, lengths) == 0).all()
    clean = zero_padding(wider, lengths)
    assert clean.dtype == wider.dtype
    np.testing.assert_array_equal(clean[:, more:], w)
    assert (clean[:, :more] == 0).all()
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(compute(clean, lengths), compute(w, lengths), **tol)


def test_tolerated_float_error_stays_in_bounds():
    # -1e-7 and a sum of 1 + 5e-4 pass validation; compute must still keep entropy_norm,
    # eff_support and gini in range (a uniform row with sum > 1 has entropy > log n).
    w = np.array(
        [
            [0.0, -1e-7, 1.0 + 1e-7, 0.0],
            [0.0, -1e-7, 0.5, 0.5 + 1e-7],
            [0.0, 0.0, 0.0, 1.0],
            [0.25, 0.25, 0.25, 0.25 + 5e-4],
            np.full(4, (1 + 5e-4) / 4),
        ]
    )
    lengths = np.array([2, 3, 3, 4, 4])
    for dtype in (np.float32, np.float64):
        wd = w.astype(dtype)
        assert (validate(wd, lengths) == 0).all()
        m = compute(wd, lengths)
        assert np.isfinite(m).all()
        assert ((m[:, COL["entropy_norm"]] >= 0) & (m[:, COL["entropy_norm"]] <= 1)).all()
        assert ((m[:, COL["gini"]] >= 0) & (m[:, COL["gini"]] < 1)).all()
        assert (m[:, COL["entropy"]] >= 0).all()
        assert (m[:, COL["eff_support"]] <= 1).all()


# ---------------------------------------------------------------- validate


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_validate_each_reason_on_its_row(dtype):
    rng = np.random.default_rng(7)
    L = 12
    rows = random_rows(rng, 40, L, min_len=4)
    lengths = np.array([len(r) for r in rows])
    w = left_pad(rows, L, dtype=dtype, fill=np.nan)  # NaN padding everywhere: not a reason
    expected = np.zeros(len(rows), dtype=np.uint8)

    def last(i):
        return L - 1

    w[3, last(3)] = np.nan
    expected[3] = 1
    w[5, L - lengths[5]] = np.inf  # the oldest valid position is valid
    expected[5] = 1
    w[8, last(8)] = -np.inf
    expected[8] = 1
    w[11, last(11)] -= 2e-5  # keep the sum in tolerance, still negative
    w[11, last(11) - 1] = -1e-5
    expected[11] = 2
    w[13, last(13)] += 0.01
    expected[13] = 3
    lengths[17] = 0
    expected[17] = 4
    # precedence: nan over negative over not_normalised; empty over everything
    w[20, last(20)] = np.nan
    w[20, last(20) - 1] = -1.0
    expected[20] = 1
    w[22, last(22)] = -0.5
    expected[22] = 2
    w[24, :] = np.nan
    lengths[24] = 0
    expected[24] = 4
    # allowed: tiny negatives, sums within tol
    w[26, last(26) - 1] += w[26, last(26)] + 5e-7
    w[26, last(26)] = -5e-7
    w[28, last(28)] += 5e-4
    codes = validate(w, lengths)
    assert codes.dtype == np.uint8 and codes.shape == (len(rows),)
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(codes, ref_validate(w, lengths))
    assert [REASONS[c] for c in codes[[0, 3, 11, 13, 17]]] == [
        "ok",
        "nan",
        "negative",
        "not_normalised",
        "empty",
    ]


def test_validate_tol_and_padding_garbage():
    w = np.array([[np.nan, 0.5, 0.5005], [np.inf, 0.5, 0.5], [-9.0, 0.5, 0.5], [7.0, 0.5, 0.5]])
    lengths = np.array([2, 2, 2, 2])
    np.testing.assert_array_equal(validate(w, lengths), [0, 0, 0, 0])
    np.testing.assert_array_equal(validate(w, lengths, tol=1e-4), [3, 0, 0, 0])
    np.testing.assert_array_equal(validate(w, np.array([3, 3, 3, 3])), [1, 1, 2, 3])


def test_validate_float32_sum_overflow_is_not_nan():
    # Finite entries whose float32 sum overflows are not_normalised, not nan.
    w = np.array([[3e38, 3e38], [np.nan, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(validate(w, np.array([2, 1])), [3, 0])


def test_validate_many_blocks():
    rng = np.random.default_rng(3)
    N, L = 20_000, 50  # several default-size blocks
    n = rng.integers(1, L + 1, N)
    w = rng.random((N, L)).astype(np.float32)
    w[np.arange(L) < (L - n)[:, None]] = np.nan
    w /= np.nansum(w, axis=1, keepdims=True)
    bad = {1: 19_999, 2: 5_243, 3: 10_001, 4: 0}
    w[bad[1], -1] = np.nan
    w[bad[2], -1] = -0.1
    w[bad[3], -1] += 0.1
    n[bad[4]] = 0
    codes = validate(w, n)
    for code, row in bad.items():
        assert codes[row] == code
    assert np.count_nonzero(codes) == len(bad)


special_st = st.one_of(
    st.floats(-1e-5, 1.0),
    st.sampled_from([np.nan, np.inf, -np.inf, -1e-6, -2e-6, 0.0, -0.0, 1e300]),
)


@HYP
@given(
    st.lists(st.tuples(st.lists(special_st, min_size=0, max_size=8), st.booleans()), min_size=1),
    st.integers(0, 4),
    st.sampled_from([np.float32, np.float64]),
)
def test_validate_matches_per_row_reference(spec, extra, dtype):
    # Rows either normalised (so "ok" is reachable) or raw; padding always NaN.
    rows = []
    for xs, normalise in spec:
        v = np.asarray(xs, dtype=np.float64)
        with np.errstate(all="ignore"):
            tot = v.sum()
            if normalise and np.isfinite(tot) and tot > 0:
                v = v / tot
        rows.append(v)
    L = max(len(r) for r in rows) + extra
    with np.errstate(over="ignore"):
        w = left_pad(rows, L, dtype=dtype, fill=np.nan)
    lengths = np.array([len(r) for r in rows])
    got = validate(w, lengths)
    want = ref_validate(w, lengths)
    for i, (g, r) in enumerate(zip(got, want, strict=True)):
        v = w[i, L - lengths[i] :].astype(np.float64)
        with np.errstate(all="ignore"):
            near_tol = abs(abs(v.sum() - 1.0) - 1e-3) < 1e-5
        if near_tol and {g, r} <= {0, 3}:
            continue  # float32 vs float64 sum rounding at the tolerance edge
        assert g == r, (i, w[i], lengths[i])


# ---------------------------------------------------------------- head diversity


def ref_head_diversity(w, lengths):
    N, H, L = w.shape
    out = []
    for i in range(N):
        n = lengths[i]
        rows = w[i, :, L - n :].astype(np.float64)
        if H == 1:
            out.append(0.0)
            continue
        ds = [jensenshannon(rows[a], rows[b], base=2) for a in range(H) for b in range(a + 1, H)]
        out.append(float(np.mean(ds)))
    return np.array(out)


@pytest.mark.parametrize("H", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_diversity_matches_scipy(H, dtype):
    rng = np.random.default_rng(H)
    N, L = 60, 15
    lengths = rng.integers(1, L + 1, N)
    w = np.zeros((N, H, L), dtype=dtype)
    for i, n in enumerate(lengths):
        alpha = 10 ** rng.uniform(-1.5, 1)
        w[i, :, L - n :] = rng.dirichlet(np.full(n, alpha), size=H)
    w[0, :, L - lengths[0] :] = w[0, 0, L - lengths[0] :]  # identical heads
    got = head_diversity(w, lengths)
    assert got.dtype == np.float64 and got.shape == (N,)
    np.testing.assert_allclose(got, ref_head_diversity(w, lengths), rtol=1e-10, atol=1e-12)
    assert got[0] == 0.0
    assert ((got >= 0) & (got <= 1)).all()


def test_head_diversity_extremes_and_blocks(monkeypatch):
    L = 6
    w = np.zeros((3, 2, L))
    w[0, 0, -1] = w[0, 1, -2] = 1.0  # disjoint supports: distance 1
    w[1, :, -3:] = 1 / 3  # identical: 0
    w[2, 0, -2:] = [0.2, 0.8]
    w[2, 1, -2:] = [0.8, 0.2]
    lengths = np.array([2, 3, 2])
    got = head_diversity(w, lengths)
    np.testing.assert_allclose(got[:2], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(got[2], jensenshannon([0.2, 0.8], [0.8, 0.2], base=2))
    monkeypatch.setattr(metrics, "_BLOCK_ELEMS", 1)
    np.testing.assert_allclose(head_diversity(w, lengths), got, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- empty input and lengths


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(dtype):
    w = np.zeros((0, 50), dtype=dtype)
    n = np.zeros(0, dtype=np.int64)
    assert zero_padding(w, n).shape == (0, 50)
    v = validate(w, n)
    assert v.shape == (0,) and v.dtype == np.uint8
    c = compute(w, n)
    assert c.shape == (0, len(METRICS)) and c.dtype == np.float64
    h = head_diversity(np.zeros((0, 4, 50), dtype=dtype), n)
    assert h.shape == (0,) and h.dtype == np.float64


def test_zero_length_rows_and_width():
    w = np.array([[0.2, 0.8], [np.nan, np.nan]])
    n = np.array([2, 0])
    np.testing.assert_array_equal(validate(w, n), [0, 4])
    m = compute(zero_padding(w, n), n)
    assert np.isfinite(m[0]).all() and np.isnan(m[1]).all()
    assert np.isnan(head_diversity(np.zeros((2, 3, 2)), n)[1])
    # L == 0: every row is empty
    w0 = np.zeros((3, 0))
    n0 = np.zeros(3, dtype=int)
    np.testing.assert_array_equal(validate(w0, n0), [4, 4, 4])
    assert np.isnan(compute(w0, n0)).all()
    assert zero_padding(w0, n0).shape == (3, 0)


@pytest.mark.parametrize(
    "lengths",
    [np.array([3, 4]), np.array([-1, 2]), np.array([1.0, 2.0]), np.array([1, 2, 3])],
)
def test_bad_lengths_raise(lengths):
    w = np.full((2, 3), 1 / 3)
    for fn in (zero_padding, validate, compute):
        with pytest.raises(ValueError):
            fn(w, lengths)
