"""The background thread's shortcuts give what the plain computations give.

Each test forces or reproduces the simple way (a binary search, uint32 code points, a
divide, one `_seq_sum` per part, scipy) and compares; the shortcuts are in
monitor.sketch, collectors.block, collectors.grouping and monitor.metrics.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from collectors import block as blk
from collectors import grouping
from monitor import metrics as mx
from monitor import sketch as sk


# --- distance bins by table --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_distance_bins_equal_the_binary_search(dtype):
    rng = np.random.default_rng(0)
    e = sk._DISTANCE[:-1]
    big = 1e300 if dtype == np.float64 else 3e38
    v = np.concatenate([
        rng.exponential(80.0, 50_000) - 2.0, rng.uniform(-1, 600, 50_000), e,
        np.nextafter(e, -np.inf), np.nextafter(e, np.inf),
        [np.inf, -np.inf, -0.0, big, -big, 1e-300, 511.99999, 512.0],
    ]).astype(dtype)
    want = np.clip(np.searchsorted(sk._DISTANCE, v, side="right") - 1, 0, sk.BINS - 1)
    np.testing.assert_array_equal(sk._distance_bins(v), want)


def test_half_step_table_refuses_edges_off_the_half_grid():
    assert sk._half_steps(np.array([0, 0.25, 1, np.inf])) is None
    assert sk._half_steps(np.array([0, 0.5, 1, np.inf])).tolist() == [0, 1, 2]


# --- str factorization on narrowed code points ---------------------------------------------
def _wide(monkeypatch, vals):
    """blk._factorize of vals with the uint32 code points, as before the narrowing."""
    with monkeypatch.context() as m:
        m.setattr(blk, "_narrowed", lambda cp: cp)
        return blk._factorize(vals)


@pytest.mark.parametrize("seed", range(16))
def test_factorize_on_uint8_code_points_equals_uint32(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    # latin-1 text (narrowed), and text with one code point past it (not narrowed)
    alphabet = list("a-9\x80\xfe\xff") + (["\u0100"] if seed % 8 >= 4 else [])
    # keys: a dense table, packed uint32 / uint64 for pandas, hashed
    width = [4, 3, 6, 40][seed % 4]
    fixed = seed % 4 == 0  # one length, two letters: one bit a position
    pool = [
        "".join(rng.choice(alphabet[-2:] if fixed else alphabet, width if fixed else int(rng.integers(0, width + 1))))
        for _ in range(300)
    ]
    vals = np.array(pool)[rng.integers(0, len(pool), (400, 7))]
    codes, keys = blk._factorize(vals)
    want_codes, want_keys = _wide(monkeypatch, vals)
    np.testing.assert_array_equal(codes, want_codes)
    assert keys.tolist() == want_keys.tolist()
    assert blk._narrowed(np.array([[255, 0]], np.uint32)).dtype == np.uint8
    assert blk._narrowed(np.array([[256, 0]], np.uint32)).dtype == np.uint32


# --- head mean ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("h", [2, 4, 8])
def test_head_mean_by_a_power_of_two_rounds_as_numpy_mean(dtype, h):
    rng = np.random.default_rng(h)
    tiny = np.finfo(dtype).tiny
    W = (rng.random((300, 2, h, 9)) * rng.choice([1.0, tiny, tiny * 2**-20, 1e30], (300, 2, h, 9)))
    W = W.astype(dtype)
    np.testing.assert_array_equal(grouping._head_mean(W), W.mean(axis=2))


# --- sums of the groups ------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered")  # inf squared, as before
@pytest.mark.parametrize("groups", [1, 4])
def test_group_sums_equal_one_seq_sum_per_part(groups):
    rng = np.random.default_rng(groups)
    n = 500
    parts = [rng.normal(size=(n, 40)), rng.normal(size=(n, 20)), rng.random((n, 2))]
    parts[0][rng.random((n, 40)) < 0.01] = np.nan
    parts[2][3, 1] = np.inf
    rq = rng.integers(0, groups, n) if groups > 1 else None
    order = None if rq is None else np.argsort(rq, kind="stable")
    sizes = np.bincount(rq, minlength=groups) if rq is not None else np.array([n])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    g = grouping._Groups([(0, str(r)) for r in range(groups)], rq, order, bounds,
                         np.zeros(n, np.int64), True, 0.0)
    s, q = grouping._group_sums(parts, g)
    clean = [np.nan_to_num(p, nan=0.0) for p in parts]
    for r in range(groups):
        a, z = bounds[r], bounds[r + 1]
        rows = [p[a:z] if order is None else p[order[a:z]] for p in clean]
        want_s = np.concatenate([grouping._seq_sum(x) for x in rows])
        want_q = np.concatenate([grouping._seq_sum(x * x) for x in rows])
        np.testing.assert_array_equal(s[r], want_s)
        np.testing.assert_array_equal(q[r], want_q)


# --- head diversity with zeros -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_diversity_with_zero_weights_matches_scipy(dtype):
    rng = np.random.default_rng(7)
    N, H, L = 80, 3, 12
    lengths = rng.integers(1, L + 1, N)
    w = np.zeros((N, H, L), dtype=dtype)
    for i, n in enumerate(lengths):
        rows = rng.dirichlet(np.full(n, 0.5), size=H)
        rows[rng.random((H, n)) < 0.3] = 0.0  # zeros where the other heads have mass
        rows[:, rng.random(n) < 0.2] = 0.0  # and where none has
        rows[rows.sum(axis=1) == 0, -1] = 1.0
        w[i, :, L - n :] = rows / rows.sum(axis=1, keepdims=True)
    w[1, 1] = w[1, 0]  # identical heads
    w[1, 2] = w[1, 0]
    got = mx.head_diversity(w, lengths)
    want = [
        np.mean([jensenshannon(w[i, a, L - n :].astype(np.float64), w[i, b, L - n :].astype(np.float64), base=2)
                 for a in range(H) for b in range(a + 1, H)])
        for i, n in enumerate(lengths)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert got[1] == 0.0
