"""monitor.topk: the mergeable heavy-hitter summary and its documented guarantees.

For every key, after any sequence of from_counts and merges:
    count <= true mass <= count + bound(),   bound() <= total / (k + 1),
absent keys have at most bound(), total is exact, and there are at most k counters.
Most streams here use dyadic weights (multiples of 1/64), so every sum and every
subtraction in the summary is exact in float64 and the guarantees are checked with no
tolerance at all.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.topk import TopK

N_KEYS = 4000
NAMES = np.array([str(1_000_000 + 7 * i) for i in range(N_KEYS)], dtype=object)


# --- helpers ---------------------------------------------------------------------------
def zipf_stream(rng, n_events, a=1.25, dyadic=True):
    """Heavy-tailed keys (Zipf, shuffled over the key space) with positive weights."""
    ranks = (rng.zipf(a, n_events) - 1) % N_KEYS
    keys = rng.permutation(N_KEYS)[ranks]  # popular keys are not simply the small ids
    if dyadic:
        w = rng.integers(1, 256, n_events) / 64.0
    else:
        w = rng.pareto(1.5, n_events) + 1e-3  # heavy-tailed weights, not exactly summable
    return keys, w


def chunk_summaries(rng, keys, w, n_chunks, k):
    """Split the stream at random points; an exact summary per chunk via from_counts."""
    cuts = np.sort(rng.choice(np.arange(1, len(keys)), n_chunks - 1, replace=False))
    out = []
    for kc, wc in zip(np.split(keys, cuts), np.split(w, cuts), strict=True):
        mass = np.bincount(kc, weights=wc, minlength=N_KEYS)
        present = rng.permutation(np.flatnonzero(mass))  # input order must not matter
        out.append(TopK.from_counts(NAMES[present], mass[present], k))
    return out


def merge_left(parts):
    return functools.reduce(lambda a, b: a.merge(b), parts)


def merge_right(parts):
    return functools.reduce(lambda acc, p: p.merge(acc), reversed(parts))


def merge_shuffled(parts, seed=0):
    parts = list(parts)
    random.Random(seed).shuffle(parts)
    return merge_left(parts)


def merge_balanced(parts):
    parts = list(parts)
    while len(parts) > 1:
        nxt = [a.merge(b) for a, b in zip(parts[::2], parts[1::2], strict=False)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def merge_random_tree(parts, seed=0):
    r = random.Random(seed)
    pool = list(parts)
    while len(pool) > 1:
        a = pool.pop(r.randrange(len(pool)))
        b = pool.pop(r.randrange(len(pool)))
        pool.append(a.merge(b) if r.random() < 0.5 else b.merge(a))
    return pool[0]


MERGES = {
    "left": merge_left,
    "right": merge_right,
    "shuffled": merge_shuffled,
    "balanced": merge_balanced,
    "random_tree": merge_random_tree,
}


def assert_guarantees(tk: TopK, names, true_mass, total, tol=0.0):
    """Every documented guarantee of `tk` against the exact masses of `names`."""
    true_mass = np.asarray(true_mass, dtype=np.float64)
    assert len(tk.keys) <= tk.k
    assert len(set(tk.keys.tolist())) == len(tk.keys), "duplicate keys"
    assert len(tk.counts) == len(tk.keys)
    assert np.all(tk.counts > 0)
    assert np.all(np.diff(tk.counts) <= 0), "counts not descending"
    if tol == 0.0:
        assert tk.total == total
    else:
        assert tk.total == pytest.approx(total, rel=1e-12)
    b = tk.bound()
    assert 0.0 <= b <= tk.total / (tk.k + 1) + tol
    lo = np.empty(len(names))
    up = np.empty(len(names))
    for i, name in enumerate(names):
        lo[i], up[i] = tk.estimate(name)
    bad = np.flatnonzero((true_mass < lo - tol) | (true_mass > up + tol))
    assert not len(bad), [
        (names[i], float(true_mass[i]), float(lo[i]), float(up[i])) for i in bad[:5]
    ]
    # keys outside the summary: lower bound 0, upper bound exactly bound()
    kept = set(tk.keys.tolist())
    absent = np.array([n not in kept for n in names])
    assert np.all(lo[absent] == 0.0) and np.all(up[absent] == b)
    # the consequence that matters: every key above total/(k+1) is kept
    heavy = [names[i] for i in np.flatnonzero(true_mass > tk.total / (tk.k + 1) + tol)]
    assert set(heavy) <= kept, set(heavy) - kept
    return heavy


# --- large random streams ----------------------------------------------------------------
@pytest.mark.parametrize("k,seed", [(16, 1), (32, 2), (64, 3)])
def test_merged_chunk_summaries_keep_the_bound_in_any_merge_order(k, seed):
    rng = np.random.default_rng(seed)
    keys, w = zipf_stream(rng, 40_000)
    true = np.bincount(keys, weights=w, minlength=N_KEYS)
    total = float(w.sum())
    parts = chunk_summaries(rng, keys, w, n_chunks=60, k=k)
    assert sum(p.total for p in parts) == total

    totals = set()
    for name, merge in MERGES.items():
        tk = merge(parts)
        assert tk.k == k, name
        heavy = assert_guarantees(tk, NAMES, true, total)
        totals.add(tk.total)
        # the test must exercise the lossy path and the heavy-hitter claim
        assert tk.bound() > 0, name
        assert heavy, "stream has no heavy hitter"
    assert totals == {total}  # order-insensitive, exactly


def test_guarantees_with_non_dyadic_heavy_tailed_weights():
    rng = np.random.default_rng(11)
    keys, w = zipf_stream(rng, 30_000, a=1.15, dyadic=False)
    true = np.bincount(keys, weights=w, minlength=N_KEYS)
    total = float(w.sum())
    parts = chunk_summaries(rng, keys, w, n_chunks=40, k=24)
    for merge in (merge_left, merge_random_tree):
        tk = merge(parts)
        assert_guarantees(tk, NAMES, true, total, tol=1e-9 * total)


def test_guarantees_hold_at_every_step_of_a_left_fold():
    rng = np.random.default_rng(5)
    keys, w = zipf_stream(rng, 20_000)
    cuts = np.sort(rng.choice(np.arange(1, len(keys)), 19, replace=False))
    acc = TopK.empty(16)
    seen_keys, seen_w = [], []
    for kc, wc in zip(np.split(keys, cuts), np.split(w, cuts), strict=True):
        mass = np.bincount(kc, weights=wc, minlength=N_KEYS)
        present = np.flatnonzero(mass)
        acc = acc.merge(TopK.from_counts(NAMES[present], mass[present], 16))
        seen_keys.append(kc)
        seen_w.append(wc)
        sk, sw = np.concatenate(seen_keys), np.concatenate(seen_w)
        true = np.bincount(sk, weights=sw, minlength=N_KEYS)
        assert_guarantees(acc, NAMES, true, float(sw.sum()))


def test_from_counts_is_exact_when_keys_fit():
    names = np.array(["a", "b", "c", "d"], dtype=object)
    masses = np.array([0.5, 3.0, 1.25, 2.0])
    tk = TopK.from_counts(names, masses, k=4)
    assert tk.keys.tolist() == ["b", "d", "c", "a"]
    assert tk.counts.tolist() == [3.0, 2.0, 1.25, 0.5]
    assert tk.total == 6.75
    assert tk.bound() == 0.0
    assert tk.estimate("c") == (1.25, 1.25)
    assert tk.estimate("zzz") == (0.0, 0.0)


def test_from_counts_drops_zero_and_negative_masses_from_keys_and_total():
    names = np.array(["a", "b", "c", "d"], dtype=object)
    tk = TopK.from_counts(names, np.array([1.0, 0.0, -2.0, 3.0]), k=8)
    assert sorted(tk.keys.tolist()) == ["a", "d"]
    assert tk.total == 4.0


def test_from_counts_reduction_follows_misra_gries():
    # 5 keys, k = 2: subtract the 3rd largest (2.0) from all and keep the positive ones
    names = np.array(["a", "b", "c", "d", "e"], dtype=object)
    tk = TopK.from_counts(names, np.array([10.0, 6.0, 2.0, 1.0, 1.0]), k=2)
    assert tk.keys.tolist() == ["a", "b"]
    assert tk.counts.tolist() == [8.0, 4.0]
    assert tk.total == 20.0
    assert tk.bound() == pytest.approx(8.0 / 3.0)
    assert_guarantees(tk, names.tolist(), [10.0, 6.0, 2.0, 1.0, 1.0], 20.0)


def test_merge_with_empty_is_identity():
    rng = np.random.default_rng(3)
    keys, w = zipf_stream(rng, 5000)
    true = np.bincount(keys, weights=w, minlength=N_KEYS)
    present = np.flatnonzero(true)
    tk = TopK.from_counts(NAMES[present], true[present], 32)
    for m in (tk.merge(TopK.empty(32)), TopK.empty(32).merge(tk)):
        assert m.k == 32
        assert m.keys.tolist() == tk.keys.tolist()
        np.testing.assert_array_equal(m.counts, tk.counts)
        assert m.total == tk.total
        assert m.bound() == tk.bound()
    e = TopK.empty(8).merge(TopK.empty(8))
    assert len(e.keys) == 0 and e.total == 0.0 and e.bound() == 0.0
    assert e.estimate("x") == (0.0, 0.0)
    assert e.shares() == {}


def test_merging_summaries_of_different_k_keeps_the_bound():
    # a k=1 summary has error up to 9 on "b"; relabelling it k=100 would claim 18/101
    small = TopK.from_counts(np.array(["a", "b"], dtype=object), np.array([10.0, 9.0]), 1)
    assert_guarantees(small, ["a", "b"], [10.0, 9.0], 19.0)
    for m in (small.merge(TopK.empty(100)), TopK.empty(100).merge(small)):
        assert_guarantees(m, ["a", "b"], [10.0, 9.0], 19.0)

    rng = np.random.default_rng(9)
    keys, w = zipf_stream(rng, 20_000)
    true = np.bincount(keys, weights=w, minlength=N_KEYS)
    a = chunk_summaries(rng, keys[:10_000], w[:10_000], 10, k=8)
    b = chunk_summaries(rng, keys[10_000:], w[10_000:], 10, k=64)
    for tk in (merge_left(a + b), merge_random_tree(b + a, seed=4)):
        assert_guarantees(tk, NAMES, true, float(w.sum()))


def test_shares_are_lower_bounds_of_each_share():
    rng = np.random.default_rng(21)
    keys, w = zipf_stream(rng, 10_000)
    true = np.bincount(keys, weights=w, minlength=N_KEYS)
    tk = merge_balanced(chunk_summaries(rng, keys, w, 12, k=16))
    shares = tk.shares()
    assert list(shares) == tk.keys.tolist()
    index = {n: i for i, n in enumerate(NAMES)}
    for key, s in shares.items():
        assert s <= true[index[key]] / tk.total
    assert sum(shares.values()) <= 1.0


# --- property: small k, small alphabets, arbitrary splits and merge trees ---------------
ALPHABET = ["a", "b", "c", "d", "e", "f", "g", "h", "ü", "x;y", 'q"', ""]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    events=st.lists(st.tuples(st.integers(0, len(ALPHABET) - 1), st.integers(1, 40)), max_size=120),
)
def test_property_guarantees_under_any_split_and_merge_tree(data, events):
    n = len(events)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=8), label="cuts"))
    bounds = [0, *cuts, n]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        mass: dict[int, float] = {}
        for key, wt in events[lo:hi]:
            mass[key] = mass.get(key, 0.0) + wt
        k = data.draw(st.integers(1, 5), label="k")
        names = np.array([ALPHABET[i] for i in mass], dtype=object)
        parts.append(TopK.from_counts(names, np.array(list(mass.values()), dtype=float), k))
    # a random binary merge tree, each merge in a random argument order
    pool = list(parts)
    while len(pool) > 1:
        i = data.draw(st.integers(0, len(pool) - 1), label="left")
        a = pool.pop(i)
        j = data.draw(st.integers(0, len(pool) - 1), label="right")
        b = pool.pop(j)
        pool.append(a.merge(b) if data.draw(st.booleans(), label="swap") else b.merge(a))
    tk = pool[0]

    true = np.zeros(len(ALPHABET))
    for key, wt in events:
        true[key] += wt
    assert tk.k <= min(p.k for p in parts)  # never claims more precision than its inputs
    assert_guarantees(tk, ALPHABET, true, float(true.sum()))


def test_kth_largest_from_a_sample_equals_partition():
    """The threshold from a strided sample never changes the counter found: ties, heavy
    tails, and samples that see only the smallest or only the largest counters."""
    from monitor.topk import _kth_largest

    rng = np.random.default_rng(5)
    for trial in range(400):
        n = int(rng.integers(1, 5000))
        j = int(rng.integers(1, min(n, 600) + 1))
        c = [rng.random(n), rng.pareto(1.0, n) + 1e-9, rng.integers(1, 4, n) + 0.0,
             np.sort(rng.random(n))][trial % 4]
        if trial % 5 == 0:
            c[::8] = 1e-12  # the sample only sees the smallest
        elif trial % 5 == 1:
            c[::8] = 1e6  # ... or only the largest (too few above its threshold)
        assert _kth_largest(c, j) == np.partition(c, n - j)[n - j]
