"""The collector's fast background path writes exactly what the plain one would.

`AttentionCollector._summarise` accumulates into dense per-series arrays, keeps top-K
summaries on interned key ids, factorizes numpy str arrays without Python strings, and
computes sums without a float64 copy of the weights. `PlainCollector` below is the
straightforward algorithm it replaced (a Sketch per series per batch from
monitor.sketch.build / topk_by_group, merged into the accumulator with Sketch.merge, keys
as text from monitor.sketch.factorize): both must produce byte-identical rows.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from collectors import AttentionCollector, grouping, grouptopk, summarise
from collectors import block as blk
from collectors import collector as col
from monitor import metrics as mx
from monitor import sketch as sk

T0 = 1_800_000_000.0  # a minute boundary


class PlainCollector(AttentionCollector):
    """The reference: one Sketch per (minute, cohort, layer, head) per batch, merged."""

    def _to_blocks(self, entries):
        blocks = super()._to_blocks(entries)
        for b in blocks:  # keys as text, as monitor.sketch.factorize gives them
            if b.item_keys is not None:
                b.item_keys = _text(b.item_keys)
            if b.attrs:
                b.attrs = {k: (c, _text(v)) for k, (c, v) in b.attrs.items()}
        return blocks

    def _summarise(self, b) -> None:
        health = self._minute_health()
        n_req = len(b.rows)
        bad = b.codes != 0
        reasons = Counter(b.reason_names[c] for c in b.codes[bad])
        n_ok = n_req - int(bad.sum())
        for t in (health, self._totals):
            t.observed += n_req
            t.accepted += n_ok
            t.rejected.update(reasons)
        if b.layout is not None and bad.any():
            for ts, cohort in zip(b.ts[bad], b.cohorts[bad], strict=True):
                # no series for a cohort that is no label, nor for a time in no minute
                if not blk.label_ok(cohort) or not blk.time_ok(np.float64(ts)):
                    continue
                for layer in range(b.layout[0]):
                    label = (int(ts // 60), str(cohort), str(layer), col.ROLLUP)
                    self._acc.setdefault(label, sk.Sketch()).rejected += 1
        if n_ok == 0 or b.layout is None:
            return
        keep = ~bad
        ly, h = b.layout
        W = b.weights[keep]
        lengths = b.lengths[keep]
        n, L = len(W), W.shape[-1]
        ts = b.ts[keep]
        if self._first_seen is None or ts.min() < self._first_seen:
            self._first_seen = float(ts.min())
        minutes = (ts // 60).astype(np.int64)
        ucoh, coh_code = np.unique(b.cohorts[keep], return_inverse=True)
        per_head = W.reshape(n * ly * h, L)
        mean_rows = W.mean(axis=2).reshape(n * ly, L)
        len_head = np.repeat(lengths, ly * h)
        len_mean = np.repeat(lengths, ly)
        v_head = mx.compute(per_head, len_head)
        v_mean = mx.compute(mean_rows, len_mean)
        div = mx.head_diversity(W.reshape(n * ly, h, L), len_mean) if h > 1 else np.zeros(n * ly)
        values = np.empty((len(v_head) + len(v_mean), sk.M))
        values[: len(v_head), :-1] = v_head
        values[: len(v_head), -1] = np.nan
        values[len(v_head) :, :-1] = v_mean
        values[len(v_head) :, -1] = div
        m0, C = int(minutes.min()), len(ucoh)
        req_key = (minutes - m0) * C + coh_code
        layer_idx = np.tile(np.repeat(np.arange(ly), h), n)
        head_idx = np.tile(np.arange(h), n * ly)
        key_head = (np.repeat(req_key, ly * h) * ly + layer_idx) * (h + 1) + head_idx
        key_mean = (np.repeat(req_key, ly) * ly + np.tile(np.arange(ly), n)) * (h + 1) + h
        ukeys, group = np.unique(np.concatenate([key_head, key_mean]), return_inverse=True)
        rows_w = np.concatenate([per_head, mean_rows]).astype(np.float64)
        sketches = sk.build(group, len(ukeys), values, rows_w, np.concatenate([len_head, len_mean]))
        mean_group = group[len(key_head) :]
        valid = np.arange(L)[None, :] >= (L - len_mean)[:, None]
        named = [(None, b.item_codes, b.item_keys, self.topk_items)] if b.item_codes is not None else []
        named += [(a, c, k, self.topk_attr_values) for a, (c, k) in (b.attrs or {}).items()]
        for attr, codes, keys, k in named:
            codes = np.repeat(codes[keep], ly, axis=0)
            self._attach_topk(sketches, mean_group, len(ukeys), codes, keys, mean_rows, valid, k, attr)
        for g, key in enumerate(ukeys.tolist()):
            rest, head = divmod(key, h + 1)
            rest, layer = divmod(rest, ly)
            mi, c = divmod(rest, C)
            label = (m0 + mi, str(ucoh[c]), str(layer), col.ROLLUP if head == h else str(head))
            old = self._acc.get(label)
            self._acc[label] = sketches[g] if old is None else old.merge(sketches[g])
        for mi, cnt in zip(*np.unique(minutes, return_counts=True), strict=True):
            self._acc_requests[int(mi)] += int(cnt)
        if self.sample_rate > 0:
            self._sample(b, keep, v_mean, ly)


def _text(keys: np.ndarray) -> np.ndarray:
    return keys if keys.dtype == object else np.array([sk._key(v) for v in keys.tolist()], dtype=object)


def quiet(cls, **kw):
    kw.setdefault("store_url", "sqlite://")
    c = cls(model="m", version="v1", **kw)
    c._start = lambda: None  # driven by hand: _drain and _take_batch
    return c


def retire(c) -> None:
    c._q.clear()
    c._closed = True


def rows_of(batch):
    if batch is None:
        return None
    aggs = [{k: v for k, v in a.items() if k != "collector_id"} for a in batch.aggregates]
    events = [{k: v for k, v in e.items() if k != "collector_id"} for e in batch.events]
    return aggs, events, batch.n_requests


def messy_feed(seed: int, ly: int, h: int, L: int, dtype, padding: str = "left"):
    """Calls of observe/observe_batch: rejections of every kind, several cohorts and
    minutes, int / str / object item ids with None, attributes, ties (uniform rows)."""
    rng = np.random.default_rng(seed)
    calls = []
    for bi in range(6):
        B = int(rng.integers(1, 200))
        lengths = rng.integers(0 if bi % 3 == 0 else 1, L + 1, B)
        w = np.zeros((B, ly, h, L))
        for i, n in enumerate(lengths):
            part = (slice(L - n, L) if padding == "left" else slice(0, n))
            if n:
                w[i, ..., part] = (np.full(n, 1.0 / n) if bi % 4 == 1
                                   else rng.dirichlet(np.ones(n) * 0.5, size=(ly, h)))
            if n < L:
                w[i, ..., (slice(0, L - n) if padding == "left" else slice(n, L))] = rng.choice(
                    [0.0, np.nan, 3.0])
        w = w.astype(dtype)
        if B > 5:
            w[1, 0, 0, -1 if padding == "left" else 0] = np.nan
            w[2, 0, -1] *= 1.5
            w[3, -1, 0, -1 if padding == "left" else 0] = -0.2
        kind = bi % 4
        if kind == 0:
            ids = rng.integers(0, 40, (B, L))
        elif kind == 1:
            ids = np.array([f"item-{x}" for x in rng.integers(0, 60, B * L)]).reshape(B, L)
        elif kind == 2:
            ids = rng.integers(0, 30, (B, L)).astype(object)
            ids[rng.random((B, L)) < 0.2] = None
            ids[rng.random((B, L)) < 0.1] = "7"  # the text of the number 7 too
            if B > 10:
                ids[4, -1], ids[5, -1], ids[6, -1] = "bad\x00", b"\xff\xfe", b"ok"
        else:
            ids = None
        attrs = {
            "brand": np.array([f"b{x}" for x in rng.integers(0, 9, B * L)]).reshape(B, L),
            "cat": rng.integers(0, 4, (B, L)).astype(object),
        }
        if kind == 3:
            attrs["cat"][rng.random((B, L)) < 0.3] = None
        calls.append(("observe_batch", (w,), dict(
            item_ids=ids, lengths=lengths, attributes=attrs, padding=padding,
            cohorts=list(rng.choice(["web", "ios", "and\x00roid", "tv"], B, p=[.5, .3, .05, .15])),
            request_ids=[f"r{bi}-{i}" for i in range(B)], timestamps=T0 + rng.uniform(0, 200, B))))
        for j in range(12):
            n = int(rng.integers(0, L + 1))
            ww = rng.dirichlet(np.ones(max(n, 1)), size=(ly, h))[..., :n].astype(dtype)
            shape = (n,) if (ly, h) == (1, 1) else (h, n) if ly == 1 else (ly, h, n)
            items = list(rng.integers(0, 12, n)) if j % 3 else [f"s{x}" for x in rng.integers(0, 12, n)]
            calls.append(("observe", (ww.reshape(shape),), dict(
                item_ids=items[:-1] if j == 7 else items, cohort=["web", "tv", None][j % 3],
                attributes={"brand": [f"b{x}" for x in rng.integers(0, 5, n)]},
                request_id=f"s{j}", timestamp=T0 + float(rng.uniform(0, 200)))))
    return calls


def run(cls, calls, **kw):
    c = quiet(cls, clock=lambda: T0 + 100, seed=3, **kw)
    out = []
    try:
        for i, (method, args, kwargs) in enumerate(calls):
            getattr(c, method)(*args, **kwargs)
            if i % 5 == 4:
                c._drain()
            if i % 11 == 10:  # close the minutes behind: the open ones go on accumulating
                now = T0 + 60 + 10 * i
                out.append(rows_of(c._take_batch(now, int((now - 5) // 60))))
        c._drain()
        out.append(rows_of(c._take_batch(T0 + 10_000, None)))
        stats = c.stats
        out.append((stats.observed, stats.accepted, stats.rejected))
    finally:
        retire(c)
    return out


@pytest.mark.parametrize(
    "seed, ly, h, L, dtype, k_items, k_attr, padding",
    [
        (1, 2, 2, 20, np.float32, 512, 128, "left"),
        (2, 2, 3, 17, np.float64, 5, 2, "left"),
        (3, 1, 1, 9, np.float32, 3, 1, "left"),
        (4, 3, 4, 33, np.float32, 8, 4, "right"),
        (5, 1, 3, 60, np.float16, 6, 3, "left"),
        (6, 1, 2, 300, np.float32, 16, 4, "left"),  # longer than the position profile
    ],
)
def test_fast_path_writes_what_the_plain_path_writes(seed, ly, h, L, dtype, k_items, k_attr, padding):
    calls = messy_feed(seed, ly, h, L, dtype, padding)
    kw = dict(topk_items=k_items, topk_attr_values=k_attr, sample_rate=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast, plain = run(AttentionCollector, calls, **kw), run(PlainCollector, calls, **kw)
    assert sum(len(x[0]) for x in fast[:-1] if x) > 50  # a real workload
    assert fast == plain  # bytes of every payload, every sum, every event


def test_fast_path_on_big_batches_equals_plain_path():
    """Batches like the throughput benchmark's: many items, reductions of top-K."""
    rng = np.random.default_rng(7)
    calls = []
    for m in range(3):
        B, L = 600, 50
        w = rng.dirichlet(np.ones(L), size=(B, 2, 2)).astype(np.float32)
        ids = rng.zipf(1.3, (B, L)) % 5000
        brand = np.array([f"brand-{x:03d}" for x in range(300)])[ids % 300]
        calls.append(("observe_batch", (w,), dict(
            item_ids=ids, cohorts=list(rng.choice(["web", "ios", "tv"], B)),
            attributes={"brand": brand, "category": (ids % 17).astype(object)},
            timestamps=T0 + 60 * (m // 2) + rng.uniform(0, 59, B))))
    fast, plain = run(AttentionCollector, calls), run(PlainCollector, calls)
    assert fast == plain


def test_reading_acc_in_between_keeps_the_order_of_merges():
    """Whatever reads `_acc` (here: a sketch merged in by hand between two batches) sees
    the batches before it, and the batches after it merge in after it."""
    calls = messy_feed(8, 2, 2, 12, np.float32)[:6]
    outs = []
    for cls in (AttentionCollector, PlainCollector):
        c = quiet(cls, clock=lambda: T0 + 100, topk_items=4, topk_attr_values=2, seed=1)
        for method, args, kwargs in calls:
            getattr(c, method)(*args, **kwargs)
            c._drain()
            label = (int(T0 // 60), "web", "0", col.ROLLUP)
            extra = sk.Sketch(n=1, sums=np.full(sk.M, 0.1), sumsq=np.full(sk.M, 0.01))
            extra.items = sk.TopK.from_counts(np.array(["7", "zz"], dtype=object), np.array([0.5, 0.25]), 4)
            old = c._acc.get(label)
            c._acc[label] = extra if old is None else old.merge(extra)
        outs.append(rows_of(c._take_batch(T0 + 10_000, None)))
        retire(c)
    assert outs[0] == outs[1]


def test_sparse_top_k_cells_equal_dense_ones(monkeypatch):
    calls = messy_feed(9, 2, 2, 20, np.float32)
    dense = run(AttentionCollector, calls, topk_items=6, topk_attr_values=3)
    monkeypatch.setattr(grouptopk, "_DENSE_SLACK", -(10**9))  # every group sorts its keys instead
    assert run(AttentionCollector, calls, topk_items=6, topk_attr_values=3) == dense


# --- the pieces ---------------------------------------------------------------------------
def _reference_codes(vals):
    codes, keys = sk.factorize(vals)
    return codes, list(keys)


@pytest.mark.parametrize("seed", range(40))
def test_factorize_of_str_arrays_equals_pandas_on_text(seed):
    rng = np.random.default_rng(seed)
    # (no lone surrogates: pandas' own codes for them change from one call to the next)
    alphabet = list("ab-9é漢😀") + (["\x00"] if seed % 3 == 0 else [])
    width = int(rng.integers(0, 14))
    pool = ["".join(rng.choice(alphabet, int(rng.integers(0, width + 1)))) for _ in range(40)]
    vals = np.array(rng.choice(np.array(pool, dtype=object), (int(rng.integers(1, 300)), 5)).tolist())
    if vals.dtype.kind != "U":
        pytest.skip("numpy made no str array of these")
    codes, keys = blk._factorize(vals)
    want_codes, want_keys = _reference_codes(vals)
    np.testing.assert_array_equal(codes, want_codes)
    assert [sk._key(k) for k in keys.tolist()] == want_keys
    bad = np.array([len(k) > blk.MAX_VALUE_CHARS or "\x00" in k for k in want_keys], dtype=bool)
    for j, k in enumerate(want_keys):
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            bad[j] = True
    np.testing.assert_array_equal(blk._bad_keys(keys), bad)


def test_lone_surrogates_are_rejected_values():
    w = np.full((3, 2), 0.5, np.float32)
    ids = np.array([["a", "b"], ["\ud800x", "b"], ["c", "\ud800x"]])
    b = blk.block_from_batch(("batch", w, ids, None, "web", None, None, T0, "left"), max_length=10)
    assert [blk.REASON_NAMES[c] for c in b.codes] == ["ok", "bad_value", "bad_value"]


def test_factorize_of_wide_strings_hashes_and_checks():
    rng = np.random.default_rng(1)
    pool = np.array(["".join(rng.choice(list("0123456789abcdef"), 32)) for _ in range(500)])
    vals = pool[rng.integers(0, 500, (300, 20))]  # 32 x 4 bits > 64: the hashed way
    codes, keys = blk._factorize(vals)
    want_codes, want_keys = _reference_codes(vals)
    np.testing.assert_array_equal(codes, want_codes)
    assert keys.tolist() == want_keys


def test_factorize_of_numbers_keeps_them_until_needed():
    vals = np.array([[5, -3, 5], [2**40, 0, -3]])
    codes, keys = blk._factorize(vals)
    want_codes, want_keys = _reference_codes(vals)
    np.testing.assert_array_equal(codes, want_codes)
    assert keys.dtype.kind == "i" and [sk._key(k) for k in keys.tolist()] == want_keys


def test_bin_index_equals_the_column_by_column_definition():
    rng = np.random.default_rng(2)
    for dtype in (np.float64, np.float32):
        v = rng.uniform(-0.5, 1.5, (3000, sk.M)) * rng.choice([1.0, 10.0], (1, sk.M))
        v[:, sk.ALL_METRICS.index("distance")] = rng.exponential(80.0, 3000) - 2
        v[rng.random(v.shape) < 0.05] = np.nan
        v[rng.random(v.shape) < 0.01] = np.inf
        v[:5] = [[0.0], [1.0], [-0.0], [0.05], [8.5]]
        v = v.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            np.testing.assert_array_equal(sk.bin_index(v), sk._bin_index_columns(v))
            np.testing.assert_array_equal(sk.bin_index(v[:, :10], mx.METRICS), sk.bin_index(v)[:, :10])


def test_sequential_sums_equal_the_sparse_one_hot_product():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (7, 1), (300, 2), (129, 3, 10), (2000, 4, 50), (5, 1, 1), (64, 2, 9)]:
        for dtype in (np.float32, np.float64):
            x = (rng.random(shape) * rng.choice([1e-3, 1.0, 1e3])).astype(dtype)
            x[rng.random(shape) < 0.2] = 0
            flat = x.reshape(len(x), -1).astype(np.float64)
            onehot = sparse.csr_matrix((np.ones(len(x)), (np.zeros(len(x), int), np.arange(len(x)))))
            want = (onehot @ flat)[0].reshape(shape[1:])
            np.testing.assert_array_equal(grouping._seq_sum(x), want)


def test_head_mean_equals_numpy_mean():
    rng = np.random.default_rng(4)
    for h in range(1, 7):
        for dtype in (np.float32, np.float64):
            W = rng.random((50, 2, h, 13)).astype(dtype) ** 3
            np.testing.assert_array_equal(grouping._head_mean(W), W.mean(axis=2))


def test_check_block_zeroes_padding_in_place_as_zero_padding_does():
    rng = np.random.default_rng(5)
    B, L = 40, 12
    w = rng.random((B, 2, 3, L)).astype(np.float32)
    lengths = rng.integers(0, L + 1, B)
    entry = ("batch", w.copy(), None, lengths, "web", None, None, T0, "left")
    b = blk.block_from_batch(entry, max_length=100)
    blk.check_block(b, tol=1e-3)
    want = mx.zero_padding(w.reshape(-1, L), np.repeat(lengths, 6)).reshape(w.shape)
    np.testing.assert_array_equal(b.weights, want)
    assert np.shares_memory(b.weights, entry[1])  # the queued copy itself
    ro = w.copy()
    ro.flags.writeable = False
    b = blk.block_from_batch(("batch", ro, None, lengths, "web", None, None, T0, "left"), max_length=100)
    blk.check_block(b, tol=1e-3)
    np.testing.assert_array_equal(b.weights, want)


def test_cohort_labels_checked_once_per_value():
    cohorts = ["web", None, "a\x00b", "web", float("nan"), "x" * 300, "ios", 3]
    w = np.full((len(cohorts), 2), 0.5, np.float32)
    b = blk.block_from_batch(("batch", w, None, None, cohorts, None, None, T0, "left"), max_length=10)
    blk.check_block(b, tol=1e-3)
    assert [blk.REASON_NAMES[c] for c in b.codes] == [
        "ok", "bad_label", "bad_label", "ok", "bad_label", "bad_label", "ok", "bad_label"]


def test_cohorts_that_pandas_would_lump_together_stay_apart():
    """pandas sees "web\x00x" as "web": the label check must not."""
    cohorts = ["web", "web\x00x", "ios", "\ud800", "i"]
    w = np.full((len(cohorts), 2), 0.5, np.float32)
    b = blk.block_from_batch(("batch", w, None, None, cohorts, None, None, T0, "left"), max_length=10)
    blk.check_block(b, tol=1e-3)
    assert [blk.REASON_NAMES[c] for c in b.codes] == ["ok", "bad_label", "ok", "bad_label", "ok"]


def test_top_k_of_all_groups_at_once_equals_group_by_group():
    """The one dense pass over (group, layer, key) cells gives the summaries the
    group-by-group pass gives: padding (whatever mass it holds) and positions with no key
    count nowhere, several groups and layers, ties kept in code order."""
    rng = np.random.default_rng(11)
    n, ly, L, R, U = 300, 3, 16, 4, 40
    lengths = rng.integers(0, L + 1, n)
    mean = rng.dirichlet(np.ones(L), size=(n, ly)).astype(np.float32)
    mean[:5] = 1.0 / L  # ties
    pad = np.arange(L)[None, :] < (L - lengths)[:, None]
    mean[np.broadcast_to(pad[:, None, :], mean.shape)] = np.nan  # never read
    codes = rng.integers(-1, U, (n, L))
    rq = rng.integers(0, R, n)
    for k in (3, 50):
        for g_rq, g_R in ((rq, R), (None, 1)):
            order = None if g_rq is None else np.argsort(g_rq, kind="stable")
            want = grouptopk._topk_of_groups(codes, U, grouptopk._MeanPositions(mean, lengths, g_rq, order, g_R), k)
            got = grouptopk._topk_all_groups(codes, U, grouptopk._layer_mass(mean), lengths, g_rq, g_R, k)
            assert len(got) == len(want) == g_R * ly
            for a, b in zip(got, want, strict=True):
                assert a.k == b.k and a.total == b.total
                np.testing.assert_array_equal(a.keys, b.keys)
                np.testing.assert_array_equal(a.counts, b.counts)


def test_group_by_group_top_k_writes_what_the_one_pass_writes(monkeypatch):
    calls = messy_feed(12, 2, 3, 20, np.float32)
    one_pass = run(AttentionCollector, calls, topk_items=6, topk_attr_values=3)
    monkeypatch.setattr(summarise, "_topk_all_groups", lambda *a: None)
    assert run(AttentionCollector, calls, topk_items=6, topk_attr_values=3) == one_pass


def test_numpy_str_keys_and_numbers_with_one_text_merge_as_the_plain_path():
    """Item ids as a numpy str array ("7"), then as numbers (7): one key in the store."""
    rng = np.random.default_rng(13)
    calls = []
    for bi in range(4):
        B, L = 40, 8
        w = rng.dirichlet(np.ones(L), size=(B, 2, 2)).astype(np.float32)
        ids = rng.integers(0, 12, (B, L))
        calls.append(("observe_batch", (w,), dict(
            item_ids=ids.astype(str) if bi % 2 == 0 else ids, cohorts="web",
            attributes={"brand": np.array([f"b{x}" for x in (ids % 5).ravel()]).reshape(B, L)},
            timestamps=T0 + 10 * bi)))
    kw = dict(topk_items=5, topk_attr_values=2)
    assert run(AttentionCollector, calls, **kw) == run(PlainCollector, calls, **kw)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.int64, np.uint64])
def test_factorize_of_integers_in_a_table_equals_pandas(dtype):
    rng = np.random.default_rng(14)
    info = np.iinfo(dtype)
    vals = rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), (50, 7), endpoint=True).astype(dtype)
    vals[0, :3] = [info.min, info.max, info.min] if dtype != np.uint64 else [0, 2**64 - 1, 0]
    small = (rng.integers(0, 30, (50, 7)) + (info.min if info.min < 0 else 0)).astype(dtype)
    for v in (vals, small, small[:1, :1]):
        codes, keys = blk._factorize(v)
        want_codes, want_keys = _reference_codes(v)
        np.testing.assert_array_equal(codes, want_codes)
        assert keys.dtype == v.dtype and [sk._key(k) for k in keys.tolist()] == want_keys


def test_rows_carry_the_position_bands_their_payloads_give():
    """The collector sums the bands from the profiles in memory; a row without them (an old
    spill file) gets them from its payload: the same numbers."""
    from monitor.store import positions
    from monitor.store.writer import FlushBatch

    c = quiet(AttentionCollector, clock=lambda: T0 + 100, topk_items=6, topk_attr_values=3)
    try:
        for method, args, kwargs in messy_feed(15, 2, 2, 300, np.float32):
            getattr(c, method)(*args, **kwargs)
        c._drain()
        batch = c._take_batch(T0 + 10_000, None)
    finally:
        retire(c)
    assert len(batch.aggregates) > 20
    stripped = [{k: v for k, v in r.items() if k not in positions.COLUMNS} for r in batch.aggregates]
    again = FlushBatch(batch.collector_id, batch.batch_seq, batch.written_at, aggregates=stripped)
    assert again.aggregates == batch.aggregates
    assert any(r["pos_100_255"] > 0 for r in batch.aggregates)


@pytest.mark.parametrize("prefix", [1, 7, 8192])
def test_first_appearances_from_a_prefix_equal_pandas(monkeypatch, prefix):
    monkeypatch.setattr(blk, "_FIRST_PREFIX", prefix)
    rng = np.random.default_rng(16)
    for n, slots in ((1, 1), (20, 3), (30_000, 500), (30_000, 40_000)):
        key = rng.zipf(1.2, n) % slots  # common values early, rare ones late
        codes, first = blk._dense_factorize(key.astype(np.uint32), slots)
        want_codes, uniq = pd.factorize(key, sort=False)
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_array_equal(key[first], uniq)
