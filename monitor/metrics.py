"""Per-vector attention metrics (DESIGN.md §4): validation, the ten metrics, head diversity.

Pure numpy, no I/O. This is the hot path of the collector's background thread, so every
function is vectorised over the batch and works through it in cache-sized blocks of rows.

Layout: ``weights`` is (N, L), float32 or float64, LEFT-padded. Row i's valid entries are
``weights[i, L - lengths[i]:]`` and the last column is always the most recent interaction
(distance 0 from the end). ``lengths`` is an int array (N,) with 0 <= lengths <= L.
"""

from __future__ import annotations

import functools
import math

import numpy as np

METRICS: tuple[str, ...] = (
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
ALL_METRICS: tuple[str, ...] = METRICS + ("head_diversity",)
# validate() returns the index into REASONS, so "ok" must stay code 0.
REASONS: tuple[str, ...] = ("ok", "nan", "negative", "not_normalised", "empty")

_NAN, _NEGATIVE, _NOT_NORMALISED, _EMPTY = 1, 2, 3, 4
# A weight below this is "negative"; softmax output can be a few ulps below 0 after
# upstream arithmetic, which is float noise, not a bug in the model.
NEGATIVE_TOL = 1e-6

# Work in blocks of about this many elements (5242 rows at L=50), reusing scratch buffers:
# whole-batch temporaries are fresh, page-faulting allocations on every call, which cost
# more than the arithmetic. 2**18 was the fastest block size measured for compute and
# validate at L=50, float32 and float64 (compute, N=200k float32: 28 ms vs 44 ms at 2**20
# and 45 ms at 2**16).
_BLOCK_ELEMS = 1 << 18
_LN2 = math.log(2.0)


def _block_rows(row_elems: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, row_elems))


def _as_batch(
    weights: np.ndarray, lengths: np.ndarray, ndim: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and lengths; return C-contiguous float32/float64 weights and intp lengths."""
    w = np.asarray(weights)
    if w.dtype != np.float32 and w.dtype != np.float64:
        w = w.astype(np.float64)
    w = np.ascontiguousarray(w)
    if w.ndim != ndim:
        raise ValueError(f"weights must have {ndim} dimensions, got shape {w.shape}")
    n = np.asarray(lengths)
    if n.ndim != 1 or n.shape[0] != w.shape[0]:
        raise ValueError(f"lengths must have shape ({w.shape[0]},), got {n.shape}")
    if n.size and not np.issubdtype(n.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {n.dtype}")
    n = n.astype(np.intp, copy=False)
    if n.size and (n.min() < 0 or n.max() > w.shape[-1]):
        raise ValueError(f"lengths must lie in [0, {w.shape[-1]}]")
    return w, n


@functools.lru_cache(maxsize=64)
def _mask_tables(L: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Row k of each table is the validity mask for length k: gathering rows by `lengths`
    is several times cheaper than broadcasting a comparison for every batch."""
    b = np.arange(L)[None, :] >= (L - np.arange(L + 1))[:, None]
    f = b.astype(dtype)
    b.flags.writeable = False
    f.flags.writeable = False
    return b, f


@functools.lru_cache(maxsize=64)
def _columns(L: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Constant matrices for the linear metrics, so each is one small GEMM per block.

    sorted_cols: [1, distance-from-end, last-3 indicator] for the ascending-sorted row
                 -> (mass, gini numerator, top3).
    raw_cols:    [distance-from-end, last-5 indicator] for the raw row
                 -> (distance, recency5).
    """
    d = np.arange(L - 1, -1, -1, dtype=np.float64)
    sorted_cols = np.stack([np.ones(L), d, (d < 3).astype(np.float64)], axis=1).astype(dtype)
    raw_cols = np.stack([d, (d < 5).astype(np.float64)], axis=1).astype(dtype)
    sorted_cols.flags.writeable = False
    raw_cols.flags.writeable = False
    return sorted_cols, raw_cols


def zero_padding(weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A new array equal to `weights` with every padding position set to 0.

    Padding may hold anything (NaN, garbage); valid positions are copied unchanged.
    """
    w, n = _as_batch(weights, lengths)
    N, L = w.shape
    out = w.copy()
    if N == 0 or L == 0 or bool((n == L).all()):
        return out
    bmask = _mask_tables(L, w.dtype)[0]
    step = _block_rows(L)
    for a in range(0, N, step):
        b = min(a + step, N)
        # An in-place masked write: multiplying by the mask would keep NaN (NaN * 0 is NaN).
        np.copyto(out[a:b], 0, where=~bmask[n[a:b]])
    return out


def validate(weights: np.ndarray, lengths: np.ndarray, *, tol: float = 1e-3) -> np.ndarray:
    """Reason code per row (an index into REASONS), uint8 of shape (N,).

    Only valid positions are inspected; padding content is ignored. Precedence:
    empty (lengths == 0), then nan (any non-finite), then negative (any < -1e-6), then
    not_normalised (|sum - 1| > tol). Sums of float32 input are float32 (error ~1e-6, far
    below the default tol).
    """
    w, n = _as_batch(weights, lengths)
    N, L = w.shape
    code = np.zeros(N, dtype=np.uint8)
    if N == 0:
        return code
    bmask, fmask = _mask_tables(L, w.dtype)
    step = _block_rows(L)
    for a in range(0, N, step):
        b = min(a + step, N)
        wb, nb = w[a:b], n[a:b]
        # Fast path for the common all-good block: one dot product per row with the float
        # mask gives the valid sum, and is non-finite iff a valid entry is non-finite
        # or the padding holds inf/NaN (inf * 0 = NaN); only those rows are re-examined.
        s = np.einsum("ij,ij->i", wb, fmask[nb]).astype(np.float64)
        bad = ~np.isfinite(s)
        neg = wb < -NEGATIVE_TOL
        has_neg = bool(neg.any())
        neg_rows = None
        if has_neg or bad.any():
            mb = bmask[nb]
            if has_neg:
                neg &= mb
                neg_rows = neg.any(axis=1)
            if bad.any():
                r = np.flatnonzero(bad)
                wr, mr = wb[r], mb[r]
                nonfinite = (~np.isfinite(wr) & mr).any(axis=1)
                code[a + r[nonfinite]] = _NAN
                # Rows whose only non-finite entries are in padding (or whose float32 sum
                # overflowed): redo the sum over the valid entries alone, in float64.
                ok = ~nonfinite
                s[r[ok]] = np.where(mr[ok], wr[ok], 0).sum(axis=1, dtype=np.float64)
                bad[r[ok]] = False
        cb = code[a:b]
        with np.errstate(invalid="ignore"):
            off = np.abs(s - 1.0) > tol
        cb[off & ~bad] = _NOT_NORMALISED
        if neg_rows is not None:
            cb[neg_rows & ~bad] = _NEGATIVE
    code[n == 0] = _EMPTY
    return code


def compute(weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The METRICS, float64 of shape (N, len(METRICS)), columns in METRICS order.

    Assumes padding is already zero and rows passed `validate` (rows are not renormalised;
    gini alone is scale-free by definition). Tolerated float error is absorbed: weights
    below 0 count as 0 for entropy, top-k and gini; entropy >= 0; entropy_norm in [0, 1];
    eff_support in [1/n, 1]; gini in [0, (n-1)/n]. The linear metrics (recency, distance,
    sink) are left raw. Rows with lengths == 0 get NaN throughout. float32 input is computed
    in float32 (absolute error ~1e-6) and returned as float64.
    """
    w, n = _as_batch(weights, lengths)
    N, L = w.shape
    out = np.empty((N, len(METRICS)), dtype=np.float64)
    if N == 0:
        return out
    if L == 0:
        out.fill(np.nan)
        return out
    dt = w.dtype
    sorted_cols, raw_cols = _columns(L, dt)
    tiny = np.finfo(dt).tiny

    # Per-row constants, once per batch: 1/n, 1/log n (0 for n == 1, where entropy_norm
    # is defined as 1 and entropy is 0), log n.
    nc = np.maximum(n, 1)
    inv_n = 1.0 / nc
    gini_max = (nc - 1) / nc  # (not 1 - 1/n, which rounds above (n-1)/n for some n)
    log_n = np.log(nc)
    one = nc == 1
    inv_log_n = 1.0 / np.where(one, 1.0, log_n)
    inv_log_n[one] = 0.0
    # Sink gathers on the flat block at row offset + (L - n): far cheaper than 2-D fancy
    # indexing, and done per block while the block is in cache.
    sink_idx = L - nc

    step = _block_rows(L)
    sbuf = np.empty((min(step, N), L), dtype=dt)
    lbuf = np.empty_like(sbuf)
    row_off = np.arange(sbuf.shape[0]) * L
    # Non-negative IEEE floats order exactly like their bit patterns read as signed ints,
    # and numpy's integer row sort is ~1.5x (float32) to ~5x (float64) faster than its
    # float sort. Negative weights (sign bit set) still land in front and are clipped to
    # 0 below; NaN cannot occur in validated rows.
    sview = sbuf.view(np.int32 if dt == np.float32 else np.int64)
    for a in range(0, N, step):
        b = min(a + step, N)
        m = b - a
        wb, o = w[a:b], out[a:b]
        s = sbuf[:m]
        # One sort serves top1, top3 and gini; entropy and the mass are order-free so they
        # read it too. Padding zeros sort to the front (ascending).
        s[...] = wb
        sview[:m].sort(axis=1)
        if s[:, 0].min() < 0:
            # Column 0 holds each row's minimum. Tiny negatives that passed validation
            # would break p*log(p) and the rank arithmetic; clipping keeps s sorted.
            np.maximum(s, 0, out=s)
        # Entropy: p * log(p + tiny) is exactly 0 at p == 0 and equals p*log(p) to working
        # precision elsewhere; the add is ~4x cheaper than fmax/where.
        lg = lbuf[:m]
        np.add(s, tiny, out=lg)
        np.log(lg, out=lg)
        ent = np.einsum("ij,ij->i", s, lg).astype(np.float64)
        np.negative(ent, out=ent)
        np.maximum(ent, 0.0, out=ent)
        sums = (s @ sorted_cols).astype(np.float64)  # mass, sorted distance sum, top3
        lin = wb @ raw_cols  # distance, recency5

        ib, lnb, ilb = inv_n[a:b], log_n[a:b], inv_log_n[a:b]
        o[:, 0] = ent
        hn = ent * ilb
        hn += one[a:b]
        o[:, 1] = np.minimum(hn, 1.0, out=hn)
        o[:, 2] = s[:, -1]
        o[:, 3] = sums[:, 2]
        # exp(H)/n with H capped at log n, so 1/n <= eff_support <= 1 despite float error.
        eff = np.minimum(ent, lnb)
        np.exp(eff, out=eff)
        eff *= ib
        o[:, 4] = eff
        # Gini from the sorted row: with ascending y_1..y_n and mass S,
        #   G = sum_i (2i - n - 1) y_i / (n S) = 1 - (1 + 2 sum_i (n - i) y_i / S) / n,
        # and sum_i (n - i) y_i is the sorted row's distance-from-end sum; the padding zeros
        # in front add nothing. Distances rather than ranks from the front keep the float32
        # error relative to n, not L. Clipped to [0, (n-1)/n], its exact range.
        with np.errstate(divide="ignore", invalid="ignore"):  # mass 0 only if n == 0
            g = sums[:, 1] / sums[:, 0]
        g *= 2.0
        g += 1.0
        g *= ib
        np.subtract(1.0, g, out=g)
        np.maximum(g, 0.0, out=g)
        o[:, 5] = np.minimum(g, gini_max[a:b], out=g)
        o[:, 6] = wb[:, -1]
        o[:, 7] = lin[:, 1]
        o[:, 8] = lin[:, 0]
        o[:, 9] = wb.reshape(-1)[row_off[:m] + sink_idx[a:b]]
    empty = n == 0
    if empty.any():
        out[empty] = np.nan
    return out

# Added to every head weight before normalising, so that every log below is finite with
# no masked op: p log p at a padding zero becomes ~1e-297 instead of 0, far below any
# tolerance, and every value stays a normal float (subnormals are slow).
_FLOOR = np.float64(1e-300)


def head_diversity(weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean pairwise Jensen-Shannon distance (base 2, in [0, 1]) between the heads' rows.

    `weights` is (N, H, L) with padding already zero. Like
    scipy.spatial.distance.jensenshannon(p, q, base=2), each head row is normalised to
    sum 1 first. 0 when H == 1; NaN for rows with lengths == 0. Computed in float64: the
    JS divergence is a difference of entropies and float32 would lose it for similar heads.
    """
    w, n = _as_batch(weights, lengths, ndim=3)
    N, H, L = w.shape
    out = np.zeros(N, dtype=np.float64)
    if N == 0:
        return out
    if H > 1 and L > 0:
        # a quarter of compute's rows (float64, and four buffers): they then stay in L2
        step = _block_rows(4 * H * L)
        p = np.empty((min(step, N), H, L), dtype=np.float64)
        lp = np.empty_like(p)
        mix = np.empty((p.shape[0], L), dtype=np.float64)
        lmix = np.empty_like(mix)
        for a in range(0, N, step):
            b = min(a + step, N)
            out[a:b] = _mean_js(w[a:b], p[: b - a], lp[: b - a], mix[: b - a], lmix[: b - a])
    empty = n == 0
    if empty.any():
        out[empty] = np.nan
    return out


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a * b).sum(-1) of 2-D arrays, one row at a time (numpy < 2 lacks vecdot)."""
    if hasattr(np, "vecdot"):
        return np.vecdot(a, b)
    return np.einsum("ij,ij->i", a, b)


def _mean_js(w: np.ndarray, p: np.ndarray, lp: np.ndarray, mix: np.ndarray, lmix: np.ndarray) -> np.ndarray:
    """Mean pairwise JS distance of the heads of a block of rows, in the given buffers."""
    m, H, _ = w.shape
    # (the float64 cast, in the same pass; numpy 1.x, told no dtype, adds in float32, where
    # the floor is 0 and padding gives log(0) * 0 = NaN)
    np.add(w, _FLOOR, out=p, dtype=np.float64)
    tot = np.einsum("ijk->ij", p)  # (several times faster than sum)
    np.divide(1.0, tot, out=tot)  # (a multiply: ~1.5x faster than a divide per weight)
    np.multiply(p, tot[:, :, None], out=p)
    np.log(p, out=lp)
    # JS(p, q) = [E(p) + E(q)] / 2 - E((p + q) / 2) with E(x) = sum x log x: one log per
    # pair instead of scipy's two. Every E is the same vecdot, so identical heads cancel
    # exactly to 0 instead of leaving sqrt(rounding).
    e = np.empty((m, H), dtype=np.float64)
    for h in range(H):
        e[:, h] = _rowdot(p[:, h], lp[:, h])
    acc = np.zeros(m, dtype=np.float64)
    for i in range(H - 1):
        for j in range(i + 1, H):
            np.add(p[:, i], p[:, j], out=mix)
            mix *= 0.5
            np.log(mix, out=lmix)
            js = e[:, i] + e[:, j]
            js *= 0.5
            js -= _rowdot(mix, lmix)
            # nats -> bits; clip the float error so sqrt stays within [0, 1]
            js *= 1.0 / _LN2
            np.clip(js, 0.0, 1.0, out=js)
            acc += np.sqrt(js, out=js)
    return acc * (2.0 / (H * (H - 1)))
