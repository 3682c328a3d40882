"""monitor.sketch: build() against direct numpy, exact merges, store rows, payload size.

Everything is compared with an independent computation: per-group numpy sums,
np.histogram over the fixed EDGES, reversed-row sums for the position profile, and
plain dicts for the attention mass per key.
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import metrics as mx
from monitor import sketch as sk
from monitor.metrics import ALL_METRICS
from monitor.sketch import BINS, EDGES, POSITIONS, Sketch
from monitor.topk import TopK

M = len(ALL_METRICS)
HD = ALL_METRICS.index("head_diversity")


# --- helpers ---------------------------------------------------------------------------
def left_padded(rng, R, L, alpha=0.4, min_len=1):
    """Random Dirichlet attention rows, left-padded with zeros, lengths min_len..L."""
    lengths = rng.integers(min_len, L + 1, R)
    lengths[: min(R, 3)] = [min_len, L, max(min_len, L // 2)][: min(R, 3)]
    mask = np.arange(L)[None, :] >= (L - lengths)[:, None]
    g = rng.gamma(alpha, size=(R, L)) * mask + 1e-300 * mask  # never an all-zero row
    return g / g.sum(axis=1, keepdims=True), lengths, mask


def metric_values(rng, w, lengths):
    """compute()'s metrics plus head_diversity (NaN on about half the rows)."""
    R = len(w)
    v = np.empty((R, M))
    v[:, : len(mx.METRICS)] = mx.compute(w, lengths)
    v[:, HD] = np.where(rng.random(R) < 0.5, np.nan, rng.random(R))
    return v


def ref_hist(vals, edges):
    """np.histogram with the sketch's conventions: NaN adds nothing, out-of-range clips."""
    vals = vals[~np.isnan(vals)]
    return np.histogram(np.clip(vals, edges[0], edges[-1]), bins=edges)[0]


def ref_pos(w):
    out = np.zeros(POSITIONS)
    rev = w[:, ::-1].sum(axis=0)[:POSITIONS]
    out[: len(rev)] = rev
    return out


def assert_matches_direct(sketches, group, n_groups, values, w):
    assert len(sketches) == n_groups
    for g, s in enumerate(sketches):
        sel = group == g
        assert s.n == int(sel.sum())
        assert s.rejected == 0
        vg = values[sel]
        np.testing.assert_allclose(s.sums, np.nansum(vg, axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.sumsq, np.nansum(vg * vg, axis=0), rtol=1e-9, atol=1e-9)
        assert s.hist.shape == (M, BINS)
        for j, m in enumerate(ALL_METRICS):
            np.testing.assert_array_equal(s.hist[j], ref_hist(vg[:, j], EDGES[m]), err_msg=m)
        assert s.pos.shape == (POSITIONS,)
        np.testing.assert_allclose(s.pos, ref_pos(w[sel]), rtol=1e-12, atol=1e-12)


def key_mass(group, codes, uniq, w, valid):
    """{(group, key): mass} by plain iteration."""
    out: dict[tuple[int, str], float] = {}
    for i, j in zip(*np.nonzero(valid), strict=True):
        c = codes[i, j]
        if c < 0:
            continue
        key = (int(group[i]), str(uniq[c]))
        out[key] = out.get(key, 0.0) + float(w[i, j])
    return out


def assert_topk_within_bound(tk, truth: dict[str, float], total, tol=1e-9):
    assert tk.total == pytest.approx(total, rel=1e-12, abs=1e-12)
    assert len(tk.keys) <= tk.k
    assert tk.bound() <= tk.total / (tk.k + 1) + tol
    b = tk.bound()
    for key, mass in truth.items():
        lo, up = tk.estimate(key)
        assert lo - tol <= mass <= up + tol, (key, mass, lo, up)
        if mass > tk.total / (tk.k + 1) + tol:
            assert key in set(tk.keys.tolist()), key
    for key, c in zip(tk.keys, tk.counts, strict=True):
        assert key in truth and c <= truth[key] + tol
        assert truth[key] <= c + b + tol


def assert_sketch_equal(a: Sketch, b: Sketch, counts_f32=False):
    assert a.n == b.n and a.rejected == b.rejected
    np.testing.assert_array_equal(a.sums, b.sums)
    np.testing.assert_array_equal(a.sumsq, b.sumsq)
    np.testing.assert_array_equal(a.hist, b.hist)
    assert b.hist.dtype == np.int64
    np.testing.assert_array_equal(a.pos, b.pos)
    assert (a.items is None) == (b.items is None)
    pairs = [(a.items, b.items)] if a.items is not None else []
    assert list(a.attrs) == list(b.attrs)
    pairs += [(a.attrs[n], b.attrs[n]) for n in a.attrs]
    for x, y in pairs:
        assert x.k == y.k and x.total == y.total
        assert x.keys.tolist() == y.keys.tolist()
        assert all(type(key) is str for key in y.keys)
        want = x.counts.astype(np.float32).astype(np.float64) if counts_f32 else x.counts
        np.testing.assert_array_equal(y.counts, want)


# --- bin_index ---------------------------------------------------------------------------
def test_bin_index_matches_np_histogram_and_clips():
    rng = np.random.default_rng(0)
    R = 5000
    v = rng.uniform(-0.3, 1.3, (R, M))
    v[:, ALL_METRICS.index("entropy")] = rng.uniform(-1.0, 11.0, R)
    v[:, ALL_METRICS.index("distance")] = rng.exponential(60.0, R) - 2.0
    v[rng.random((R, M)) < 0.05] = np.nan
    b = sk.bin_index(v)
    assert b.dtype == np.int64 and b.shape == v.shape
    assert np.array_equal(b == BINS, np.isnan(v))
    for j, m in enumerate(ALL_METRICS):
        e = EDGES[m]
        ok = ~np.isnan(v[:, j])
        ref = np.searchsorted(e, np.clip(v[ok, j], e[0], e[-1]), side="right") - 1
        ref = np.minimum(ref, BINS - 1)  # np.histogram's last bin is closed
        np.testing.assert_array_equal(b[ok, j], ref, err_msg=m)
        np.testing.assert_array_equal(np.bincount(b[ok, j], minlength=BINS), ref_hist(v[:, j], e))


def test_bin_index_end_points():
    j_u, j_e, j_d = (ALL_METRICS.index(m) for m in ("top1", "entropy", "distance"))
    v = np.zeros((6, M))
    v[:, j_u] = [0.0, 1.0, -0.01, 1.5, 0.5, np.nan]  # 1.0: closed last bin
    v[:, j_e] = [0.0, 8.5, -1.0, 100.0, 4.25, np.nan]
    v[:, j_d] = [0.0, 512.0, -1.0, 1e12, 0.5, np.nan]  # 512: the [512, inf) bin
    b = sk.bin_index(v)
    assert b[:, j_u].tolist() == [0, BINS - 1, 0, BINS - 1, BINS // 2, BINS]
    assert b[:, j_e].tolist() == [0, BINS - 1, 0, BINS - 1, BINS // 2, BINS]
    assert b[:, j_d].tolist() == [0, BINS - 1, 0, BINS - 1, 1, BINS]


# --- build --------------------------------------------------------------------------------
@pytest.mark.parametrize("R,L,G,seed", [(800, 40, 7, 1), (400, 200, 3, 2), (60, 300, 4, 3)])
def test_build_matches_direct_numpy_per_group(R, L, G, seed):
    rng = np.random.default_rng(seed)
    w, lengths, _ = left_padded(rng, R, L)
    values = metric_values(rng, w, lengths)
    group = rng.integers(0, G - 1, R)  # group G-1 gets no rows
    sketches = sk.build(group, G, values, w, lengths)
    assert_matches_direct(sketches, group, G, values, w)
    empty = sketches[G - 1]
    assert empty.n == 0 and not empty.hist.any() and not empty.pos.any()
    assert sum(s.n for s in sketches) == R
    # each non-NaN value lands in exactly one bin of its metric
    np.testing.assert_array_equal(
        sum(s.hist for s in sketches).sum(axis=1), (~np.isnan(values)).sum(axis=0)
    )
    if L > POSITIONS:  # mass beyond POSITIONS is dropped, the rest is kept
        tot = sum(s.pos.sum() for s in sketches)
        assert tot == pytest.approx(w[:, L - POSITIONS :].sum(), rel=1e-12)


def test_build_histograms_clip_out_of_range_and_skip_nan():
    rng = np.random.default_rng(4)
    R, L, G = 500, 16, 3
    w, lengths, _ = left_padded(rng, R, L)
    values = rng.uniform(-0.5, 1.5, (R, M))
    values[:, ALL_METRICS.index("entropy")] = rng.uniform(-2.0, 12.0, R)
    values[:, ALL_METRICS.index("distance")] = rng.uniform(-5.0, 2000.0, R)
    values[:10] = 1.0  # exactly the last edge of the unit metrics
    values[rng.random((R, M)) < 0.1] = np.nan
    group = rng.integers(0, G, R)
    sketches = sk.build(group, G, values, w, lengths)
    assert_matches_direct(sketches, group, G, values, w)


def test_build_of_halves_merges_to_build_of_all():
    rng = np.random.default_rng(5)
    R, L, G = 600, 50, 5
    w, lengths, mask = left_padded(rng, R, L)
    values = metric_values(rng, w, lengths)
    group = rng.integers(0, G, R)
    item_vals = ((rng.zipf(1.2, (R, L)) - 1) % 3000).astype(np.int64)
    brand = rng.choice(
        np.array(["acme", "globex", "ünïcode", 'q"uote', "a;b", None], dtype=object),
        size=(R, L),
        p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05],
    )

    def sketches_of(rows):
        s = sk.build(group[rows], G, values[rows], w[rows], lengths[rows])
        ic, ik = sk.factorize(item_vals[rows])
        bc, bk = sk.factorize(brand[rows])
        items = sk.topk_by_group(group[rows], G, ic, ik, w[rows], mask[rows], 64)
        brands = sk.topk_by_group(group[rows], G, bc, bk, w[rows], mask[rows], 3)
        for g in range(G):
            s[g].items = items[g]
            s[g].attrs["brand"] = brands[g]
        return s

    half = rng.random(R) < 0.5
    a, b = sketches_of(np.flatnonzero(half)), sketches_of(np.flatnonzero(~half))
    whole = sketches_of(np.arange(R))
    items_truth = key_mass(group, sk.factorize(item_vals)[0], sk.factorize(item_vals)[1], w, mask)
    bc, bk = sk.factorize(brand)
    brand_truth = key_mass(group, bc, bk, w, mask)
    for g in range(G):
        sa_pos, sa_sums = a[g].pos.copy(), a[g].sums.copy()
        m = a[g].merge(b[g])
        # inputs untouched, output shares no arrays with them
        np.testing.assert_array_equal(a[g].pos, sa_pos)
        np.testing.assert_array_equal(a[g].sums, sa_sums)
        assert m.attrs is not a[g].attrs and m.attrs is not b[g].attrs
        assert m.n == whole[g].n
        np.testing.assert_array_equal(m.hist, whole[g].hist)
        np.testing.assert_allclose(m.sums, whole[g].sums, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.sumsq, whole[g].sumsq, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.pos, whole[g].pos, rtol=1e-12, atol=1e-12)
        assert m.means() == pytest.approx(whole[g].means(), rel=1e-12, nan_ok=True)
        for tk_of, truth in (
            (lambda s: s.items, items_truth),
            (lambda s: s.attrs["brand"], brand_truth),
        ):
            t = {key: mass for (gg, key), mass in truth.items() if gg == g}
            total = sum(t.values())
            assert_topk_within_bound(tk_of(m), t, total)
            assert_topk_within_bound(tk_of(whole[g]), t, total)
            assert tk_of(m).bound() > 0  # the lossy path is exercised


def test_merge_with_empty_and_missing_summaries():
    rng = np.random.default_rng(6)
    w, lengths, mask = left_padded(rng, 50, 20)
    s = sk.build(np.zeros(50, dtype=np.int64), 1, metric_values(rng, w, lengths), w, lengths)[0]
    s.items = TopK.from_counts(np.array(["1", "2"], dtype=object), np.array([2.0, 1.0]), 8)
    s.attrs["brand"] = TopK.from_counts(np.array(["x"], dtype=object), np.array([3.0]), 8)
    s.rejected = 2
    for m in (s.merge(Sketch()), Sketch().merge(s)):
        assert_sketch_equal(s, m)
    other = Sketch(n=1, rejected=1)
    other.attrs["category"] = TopK.from_counts(np.array(["c"], dtype=object), np.array([1.0]), 8)
    m = s.merge(other)
    assert m.n == s.n + 1 and m.rejected == 3
    # a summary present on one side only comes through unchanged
    assert list(m.items.keys) == list(s.items.keys) and m.items.total == s.items.total
    np.testing.assert_array_equal(m.items.counts, s.items.counts)
    assert sorted(m.attrs) == ["brand", "category"]
    assert "category" not in s.attrs  # the input's dict was not mutated
    assert Sketch().means()["entropy"] != Sketch().means()["entropy"]  # NaN without data
    assert not Sketch().position_profile().any()


def test_merge_all_equals_one_build():
    rng = np.random.default_rng(7)
    R, L = 300, 30
    w, lengths, _ = left_padded(rng, R, L)
    values = metric_values(rng, w, lengths)
    zero = np.zeros(R, dtype=np.int64)
    whole = sk.build(zero, 1, values, w, lengths)[0]
    cuts = np.sort(rng.choice(np.arange(1, R), 9, replace=False))
    parts = [
        sk.build(zero[: len(ix)], 1, values[ix], w[ix], lengths[ix])[0]
        for ix in np.split(rng.permutation(R), cuts)
    ]
    m = sk.merge_all(parts)
    assert m.n == R
    np.testing.assert_array_equal(m.hist, whole.hist)
    np.testing.assert_allclose(m.sums, whole.sums, rtol=1e-12)
    np.testing.assert_allclose(m.pos, whole.pos, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m.position_profile(), ref_pos(w) / R, rtol=1e-12, atol=1e-15)


# --- store rows and payload ----------------------------------------------------------------
WEIRD_KEYS = [
    'a"b',
    "semi;colon",
    "naïve",
    "日本語",
    "emoji🙂",
    "back\\slash",
    "new\nline",
    "",
    "tab\t",
    "nul\x00byte",
    "{json}",
    "1e5",
    "0001",
    "-0",
    "null",
    "   ",
]


def rich_sketch(rng, L=60):
    R = 200
    w, lengths, _ = left_padded(rng, R, L)
    s = sk.build(np.zeros(R, dtype=np.int64), 1, metric_values(rng, w, lengths), w, lengths)[0]
    s.rejected = 7
    names = np.array(WEIRD_KEYS + [str(i) for i in range(300)], dtype=object)
    masses = rng.pareto(1.2, len(names)) + 1e-3
    masses[: len(WEIRD_KEYS)] += 1e4  # the odd keys are all kept, the rest is reduced
    s.items = TopK.from_counts(names, masses, 128)
    assert s.items.bound() > 0
    s.attrs['bränd "x";'] = TopK.from_counts(
        np.array(WEIRD_KEYS, dtype=object), rng.random(len(WEIRD_KEYS)) + 0.1, 64
    )
    s.attrs["category"] = TopK.from_counts(
        np.array(["1", "2", "3"], dtype=object), np.array([1e-7, 3.3, 12345.678]), 2
    )
    return s


def test_row_round_trip_preserves_everything():
    s = rich_sketch(np.random.default_rng(8))
    assert set(WEIRD_KEYS) <= set(s.items.keys.tolist())
    row = s.to_row()
    assert set(row) == {"n", "rejected", "payload"} | {
        f"{p}_{m}" for p in ("sum", "sumsq") for m in ALL_METRICS
    }
    assert type(row["n"]) is int and type(row["rejected"]) is int
    assert type(row["payload"]) is bytes
    assert all(type(row[f"sum_{m}"]) is float for m in ALL_METRICS)
    back = Sketch.from_row(row)
    assert_sketch_equal(s, back, counts_f32=True)
    # a driver may hand bytea back as a memoryview (psycopg) or bytearray
    for payload in (memoryview(row["payload"]), bytearray(row["payload"])):
        assert_sketch_equal(s, Sketch.from_row({**row, "payload": payload}), counts_f32=True)
    # a round-tripped sketch still merges and round-trips
    again = Sketch.from_row(back.merge(back).to_row())
    assert again.n == 2 * s.n
    np.testing.assert_array_equal(again.hist, 2 * s.hist)


def test_row_round_trip_of_position_profile_with_trailing_and_inner_zeros():
    s = Sketch(n=3)
    s.pos[[0, 2, 5]] = [0.5, 0.25, 1e-300]
    back = Sketch.from_row(s.to_row())
    np.testing.assert_array_equal(back.pos, s.pos)
    assert back.pos.shape == (POSITIONS,)
    s.pos[POSITIONS - 1] = 3.0  # the last position is kept too
    np.testing.assert_array_equal(Sketch.from_row(s.to_row()).pos, s.pos)


def test_empty_sketch_round_trip():
    back = Sketch.from_row(Sketch().to_row())
    assert_sketch_equal(Sketch(), back)
    assert back.items is None and back.attrs == {}
    s = Sketch(items=TopK.empty(512), attrs={"brand": TopK.empty(64)})
    back = Sketch.from_row(s.to_row())
    assert back.items is not None and back.items.k == 512 and len(back.items.keys) == 0
    assert back.attrs["brand"].k == 64 and back.attrs["brand"].total == 0.0


@settings(max_examples=60, deadline=None)
@given(
    items=st.dictionaries(st.text(max_size=12), st.floats(1e-6, 1e6), max_size=40),
    attrs=st.dictionaries(
        st.text(max_size=8),
        st.dictionaries(st.text(max_size=8), st.floats(1e-6, 1e6), max_size=10),
        max_size=3,
    ),
    k=st.integers(1, 64),
)
def test_property_row_round_trip_of_arbitrary_text_keys(items, attrs, k):
    def tk(d):
        return TopK.from_counts(np.array(list(d), dtype=object), np.array(list(d.values())), k)

    s = Sketch(n=len(items), items=tk(items), attrs={n: tk(d) for n, d in attrs.items()})
    back = Sketch.from_row(s.to_row())
    assert_sketch_equal(s, back, counts_f32=True)
    for x, y in [(s.items, back.items)] + [(s.attrs[n], back.attrs[n]) for n in attrs]:
        np.testing.assert_allclose(y.counts, x.counts, rtol=2**-23)


def realistic_rollup_sketch(rng, L, catalog, R=2000):
    """One minute of a roll-up series: SASRec-like recency-biased attention, Zipf item
    popularity over an int catalog, a 512-item summary and two 64-value attributes."""
    lengths = rng.integers(5, L + 1, R)
    mask = np.arange(L)[None, :] >= (L - lengths)[:, None]
    logits = rng.normal(0.0, 1.5, (R, L)) + np.linspace(-2.0, 1.0, L)
    w = np.where(mask, np.exp(logits), 0.0)
    w /= w.sum(axis=1, keepdims=True)
    group = np.zeros(R, dtype=np.int64)
    s = sk.build(group, 1, metric_values(rng, w, lengths), w, lengths)[0]
    ids = rng.permutation(catalog)[(rng.zipf(1.1, (R, L)) - 1) % catalog] + 1
    c, keys = sk.factorize(ids)
    s.items = sk.topk_by_group(group, 1, c, keys, w, mask, 512)[0]
    for name, card in (("brand", 400), ("category", 90)):
        c, keys = sk.factorize(rng.permutation(card)[(rng.zipf(1.3, (R, L)) - 1) % card])
        s.attrs[name] = sk.topk_by_group(group, 1, c, keys, w, mask, 64)[0]
    return s, w, lengths


PAYLOAD_CASES = [(50, 3_700), (200, 100_000), (200, 2_000_000)]


@pytest.mark.xfail(
    strict=True,
    reason="measured 5.1 KB (L=50) to 7.4 KB (L=200, 2M-item catalog) per full 512-item roll-up row: "
    "float32 item counts (~1.9 KB), float64 position profile (~1.6 KB at L=200) and JSON "
    "keys (~1.2 KB) do not fit 4096 bytes losslessly; DESIGN §4 promises the 4 KB as an "
    "average over rows (items only on roll-ups), checked by the test below",
)
def test_payload_of_a_full_rollup_sketch_fits_4096_bytes():
    rng = np.random.default_rng(10)
    sizes = []
    for L, catalog in PAYLOAD_CASES:
        for _ in range(2):
            s, _, _ = realistic_rollup_sketch(rng, L, catalog)
            assert len(s.items.keys) == 512 and all(len(t.keys) == 64 for t in s.attrs.values())
            sizes.append(len(s.to_row()["payload"]))
    print(f"full roll-up sketch payload bytes (L, catalog) x2: {PAYLOAD_CASES} -> {sizes}")
    assert np.mean(sizes) <= 4096


def test_payload_average_over_a_minute_of_series_rows_fits_4096_bytes():
    """DESIGN §4: a row averages <= 4 KB; top-K items only on the roll-up (head="*") rows.
    One minute of a 2-layer x 2-head model (the design's SASRec): per layer, 2 head rows
    without summaries and 1 head="*" row with 512 items and two 64-value attributes."""
    rng = np.random.default_rng(12)
    sizes = {}
    for L, catalog in PAYLOAD_CASES:
        rollup, w, lengths = realistic_rollup_sketch(rng, L, catalog)
        head_rows = []
        for _ in range(2):
            hw, hl, _ = left_padded(rng, len(w), L, min_len=5)
            head_rows.append(
                sk.build(np.zeros(len(w), dtype=np.int64), 1, metric_values(rng, hw, hl), hw, hl)[0]
            )
        per_layer = [len(r.to_row()["payload"]) for r in head_rows] + [
            len(rollup.to_row()["payload"])
        ]
        sizes[(L, catalog)] = per_layer
    print("payload bytes per layer [head 0, head 1, head *]:", sizes)
    for (L, _), per_layer in sizes.items():
        assert per_layer[-1] < 8192  # a regression guard on the full roll-up row
        assert np.mean(per_layer) <= 4096, (L, per_layer)


def test_payload_compresses_the_common_parts():
    # an empty sketch is mostly a zero histogram: it must compress to almost nothing
    assert len(Sketch().to_row()["payload"]) < 100
    # a per-head row at L=50: histograms + 50 float64 positions
    rng = np.random.default_rng(13)
    w, lengths, _ = left_padded(rng, 1000, 50)
    s = sk.build(np.zeros(1000, dtype=np.int64), 1, metric_values(rng, w, lengths), w, lengths)[0]
    assert len(s.to_row()["payload"]) < 1024


def _payload_with(header: object, arrays: bytes = b"", raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return b"AS1" + zlib.compress(struct.pack("<I", len(h)) + h + arrays)


def _garbage_cases():
    good = rich_sketch(np.random.default_rng(14)).to_row()["payload"]
    hist = np.zeros(M * BINS, dtype="<i8").tobytes()
    ok_header = {"p": 0, "items": None, "attrs": {}}
    assert sk.decode_payload(_payload_with(ok_header, hist)).n == 0  # the template is valid
    rng = np.random.default_rng(15)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    cases = {
        "empty": b"",
        "short": b"AS",
        "magic only": b"AS1",
        "wrong magic": b"XS1" + good[3:],
        "not zlib": b"AS1 this is not a zlib stream",
        "truncated": good[:-1],
        "half": good[: len(good) // 2],
        "trailing bytes after stream": good + b"junk",
        "flipped byte": bytes(flipped),
        "random after magic": b"AS1" + rng.bytes(300),
        "zlib of nothing": b"AS1" + zlib.compress(b""),
        "header not json": _payload_with(None, hist, raw_header=b"{not json"),
        "header not utf8": _payload_with(None, hist, raw_header=b"\xff\xfe"),
        "header a list": _payload_with([1, 2, 3], hist),
        "header missing keys": _payload_with({"p": 0}, hist),
        "header length too big": b"AS1" + zlib.compress(struct.pack("<I", 10**6) + b"{}"),
        "hist too short": _payload_with(ok_header, hist[:-8]),
        "pos longer than data": _payload_with({**ok_header, "p": 5}, hist + b"\x00" * 8),
        "pos beyond POSITIONS": _payload_with(
            {**ok_header, "p": POSITIONS + 1}, hist + b"\x00" * 8 * (POSITIONS + 1)
        ),
        "counts missing": _payload_with(
            {**ok_header, "items": {"k": 4, "total": 1.0, "keys": ["a", "b"]}}, hist
        ),
        "keys not a list": _payload_with(
            {**ok_header, "items": {"k": 4, "total": 1.0, "keys": 5}}, hist + b"\x00" * 4
        ),
        "extra arrays": _payload_with(ok_header, hist + b"\x00" * 8),
    }
    return cases


@pytest.mark.parametrize("name", list(_garbage_cases()))
def test_decode_payload_rejects_garbage_with_value_error(name):
    data = _garbage_cases()[name]
    with pytest.raises(ValueError):
        sk.decode_payload(data)
    with pytest.raises(ValueError):
        Sketch.from_row(
            {
                "n": 0,
                "rejected": 0,
                "payload": data,
                **{f"{p}_{m}": 0.0 for p in ("sum", "sumsq") for m in ALL_METRICS},
            }
        )


# --- topk_by_group and factorize -----------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_by_group_equals_direct_masses_when_k_keeps_everything(seed):
    rng = np.random.default_rng(seed)
    R, L, G, U = 300, 30, 5, 40
    w, lengths, mask = left_padded(rng, R, L)
    w = w.astype(np.float32) if seed == 2 else w
    codes = rng.integers(-1, U, (R, L))  # -1: no key
    codes[rng.random((R, L)) < 0.15] = -1
    uniq = np.array([f"key-{i}" for i in range(U)], dtype=object)
    valid = mask & (rng.random((R, L)) < 0.8)  # some valid positions switched off
    # padding positions carry codes and non-zero weights that must not count
    w_pad = np.where(mask, w, np.float32(0.5) if seed == 2 else 0.5)
    group = rng.integers(0, G - 1, R)  # group G-1 is empty
    assert (codes[valid] == -1).any() and (~valid & (codes >= 0)).any()

    tops = sk.topk_by_group(group, G, codes, uniq, w_pad, valid, U + 5)
    truth = key_mass(group, codes, uniq, w_pad, valid)
    assert len(tops) == G
    for g, tk in enumerate(tops):
        want = {key: m for (gg, key), m in truth.items() if gg == g}
        got = dict(zip(tk.keys.tolist(), tk.counts.tolist(), strict=True))
        assert set(got) == set(want)
        for key, m in want.items():
            assert got[key] == pytest.approx(m, rel=1e-12)
        assert tk.total == pytest.approx(sum(want.values()), rel=1e-12, abs=0)
        assert tk.bound() <= 1e-12 * max(tk.total, 1.0)
        assert tk.k == U + 5
    assert len(tops[G - 1].keys) == 0 and tops[G - 1].total == 0.0


def test_topk_by_group_with_small_k_keeps_the_bound():
    rng = np.random.default_rng(3)
    R, L, G, U = 500, 40, 4, 800
    w, lengths, mask = left_padded(rng, R, L)
    codes = (rng.zipf(1.3, (R, L)) - 1) % U
    codes[rng.random((R, L)) < 0.1] = -1
    uniq = np.array([str(i) for i in range(U)], dtype=object)
    group = rng.integers(0, G, R)
    tops = sk.topk_by_group(group, G, codes, uniq, w, mask, 16)
    truth = key_mass(group, codes, uniq, w, mask)
    for g, tk in enumerate(tops):
        want = {key: m for (gg, key), m in truth.items() if gg == g}
        assert_topk_within_bound(tk, want, sum(want.values()))
        assert tk.bound() > 0


def test_topk_by_group_with_no_valid_position():
    codes = np.array([[0, 1], [1, -1]])
    w = np.array([[0.5, 0.5], [0.5, 0.5]])
    tops = sk.topk_by_group(
        np.array([0, 1]),
        3,
        codes,
        np.array(["a", "b"], dtype=object),
        w,
        np.zeros((2, 2), dtype=bool),
        8,
    )
    assert [len(t.keys) for t in tops] == [0, 0, 0] and [t.total for t in tops] == [0, 0, 0]
    tops = sk.topk_by_group(
        np.array([0, 1]),
        2,
        np.full((2, 2), -1),
        np.empty(0, dtype=object),
        w,
        np.ones((2, 2), dtype=bool),
        8,
    )
    assert [t.total for t in tops] == [0, 0]


def test_factorize_maps_values_to_str_keys_and_none_to_minus_one():
    vals = np.array([[5, None, "x"], [5, "5 ", None], ["x", 7, "ü"]], dtype=object)
    codes, keys = sk.factorize(vals)
    assert codes.shape == vals.shape and codes.dtype == np.int64
    assert all(type(k) is str for k in keys) and len(set(keys.tolist())) == len(keys)
    for v, c in zip(vals.ravel(), codes.ravel(), strict=True):
        assert (c == -1) if v is None else keys[c] == str(v)
    ints = np.array([[3, 1, 3], [2, 2, 1]])
    codes, keys = sk.factorize(ints)
    np.testing.assert_array_equal(keys[codes].astype(int), ints)
    assert sorted(keys.tolist()) == ["1", "2", "3"]


def test_pipeline_items_from_factorized_ids_equal_direct_sums():
    """factorize -> topk_by_group on left-padded attention, as the collector does it."""
    rng = np.random.default_rng(16)
    R, L = 200, 25
    w, lengths, mask = left_padded(rng, R, L)
    ids = np.where(mask, rng.integers(1, 60, (R, L)), 0).astype(object)
    ids[~mask] = None
    ids[rng.random((R, L)) < 0.05] = None  # unknown item at a valid position
    codes, keys = sk.factorize(ids)
    top = sk.topk_by_group(np.zeros(R, dtype=np.int64), 1, codes, keys, w, mask, 100)[0]
    want: dict[str, float] = {}
    for i, j in zip(*np.nonzero(mask), strict=True):
        if ids[i, j] is not None:
            want[str(ids[i, j])] = want.get(str(ids[i, j]), 0.0) + w[i, j]
    got = dict(zip(top.keys.tolist(), top.counts.tolist(), strict=True))
    assert got.keys() == want.keys()
    assert all(math.isclose(got[k], want[k], rel_tol=1e-12) for k in want)
