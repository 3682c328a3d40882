"""Drift statistics (DESIGN.md §5): pure functions of plain numpy arrays and share dicts.

Histograms are counts on the same fixed edges (monitor.sketch.EDGES), so two windows are
compared bin by bin without re-binning. Effect sizes only, no p-values; thresholds live in
alerts/. numpy and scipy only, no I/O.

    >>> import numpy as np
    >>> base, cur = np.array([50, 30, 20]), np.array([20, 30, 50])
    >>> round(psi(base, cur), 4), round(js_distance(base, cur), 4)
    (0.5498, 0.3095)
    >>> round(wasserstein_hist(base, cur, np.array([0.0, 1.0, 2.0, 3.0])), 4)
    0.6
    >>> STATISTICS["hellinger"](base, cur, None) == hellinger(base, cur)
    True
    >>> top_movers({"a": 0.5, "b": 0.1}, {"a": 0.2, "c": 0.3}, n=2)
    [('a', 0.5, 0.2), ('c', 0.0, 0.3)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
from scipy.signal import lfilter
from scipy.special import rel_entr

# Smallest standard deviation divided by: a constant baseline (std 0) gives a large but
# finite delta instead of inf.
STD_FLOOR = 1e-6
# evidently fills an empty bin with a millionth of the smallest occupied proportion when
# that proportion is already below eps (see psi).
_PSI_TINY = 1e-6


# --- histograms --------------------------------------------------------------------
def _proportions(counts: Any) -> np.ndarray | None:
    """Counts as a float proportion vector; None when they sum to 0."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("counts must be finite and non-negative")
    total = c.sum()
    return c / total if total > 0 else None


def _pair(p_counts: Any, q_counts: Any) -> tuple[np.ndarray, np.ndarray] | None:
    p, q = _proportions(p_counts), _proportions(q_counts)
    if p is not None and q is not None and p.shape != q.shape:
        raise ValueError(f"histograms differ in length: {p.shape} vs {q.shape}")
    return None if p is None or q is None else (p, q)


def _fill_empty(p: np.ndarray, eps: float) -> np.ndarray:
    smallest = p[p > 0].min()
    fill = smallest * _PSI_TINY if smallest <= eps else eps
    return np.where(p > 0, p, fill)


def psi(expected_counts: Any, actual_counts: Any, eps: float = 1e-4) -> float:
    """Population Stability Index Σ (q - p) ln(q / p) of two histograms on the same bins.

    p, q are the proportions of `expected_counts` (baseline) and `actual_counts`
    (current). An empty bin of either side gets the proportion `eps` — or, when that
    side's smallest occupied proportion is itself <= eps, a millionth of that smallest
    proportion — and the proportions are NOT renormalised afterwards. This is exactly
    evidently's rule (legacy/calculations/stattests/utils.py `get_binned_data`, used by
    its "psi" stattest), so at the default eps=1e-4 we equal evidently's PSI on the same
    bins. A bin empty on both sides adds 0. NaN if either histogram is all zeros.
    """
    pair = _pair(expected_counts, actual_counts)
    if pair is None:
        return math.nan
    p, q = (_fill_empty(v, eps) for v in pair)
    return float(np.sum((q - p) * np.log(q / p)))


def _js(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    js = 0.5 * (rel_entr(p, m).sum() + rel_entr(q, m).sum()) / math.log(2.0)
    # rounding can leave a hair below 0 for near-identical inputs
    return math.sqrt(max(float(js), 0.0))


def js_distance(p_counts: Any, q_counts: Any) -> float:
    """Jensen–Shannon distance, base 2 (in [0, 1]), of two normalised histograms.

    Equals scipy.spatial.distance.jensenshannon(p, q, base=2); NaN if either is all zeros.
    """
    pair = _pair(p_counts, q_counts)
    return math.nan if pair is None else _js(*pair)


def hellinger(p_counts: Any, q_counts: Any) -> float:
    """Hellinger distance sqrt(1 - Σ sqrt(p q)) in [0, 1] of two normalised histograms.

    Computed as ||sqrt p - sqrt q||_2 / sqrt 2 (the same value, without the cancellation
    of 1 - Σ sqrt(pq) near 0). NaN if either is all zeros.
    """
    pair = _pair(p_counts, q_counts)
    if pair is None:
        return math.nan
    p, q = pair
    return float(np.linalg.norm(np.sqrt(p) - np.sqrt(q)) / math.sqrt(2.0))


def bin_centres(edges: Any) -> np.ndarray:
    """Midpoints of the bins; an infinite end edge is closed at one neighbouring bin width.

    monitor.sketch's `distance` edges end [..., 256, 512, inf]: the last bin is taken as
    [512, 512 + 256] and its centre is 640.
    """
    e = np.array(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 3:
        raise ValueError("edges must be 1-D with at least 2 bins")
    if np.isposinf(e[-1]):
        e[-1] = e[-2] + (e[-2] - e[-3])
    if np.isneginf(e[0]):
        e[0] = e[1] - (e[2] - e[1])
    if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError("edges must increase and be finite apart from the two ends")
    return 0.5 * (e[:-1] + e[1:])


def _centre_gaps(edges: Any) -> np.ndarray:
    """np.diff(bin_centres(edges)), computed once per distinct edges."""
    e = np.asarray(edges, dtype=np.float64)
    key = (e.shape, e.tobytes())
    gaps = _CENTRE_GAPS.get(key)
    if gaps is None:
        gaps = np.diff(bin_centres(e))
        gaps.setflags(write=False)
        if len(_CENTRE_GAPS) < 256:
            _CENTRE_GAPS[key] = gaps
    return gaps


_CENTRE_GAPS: dict[tuple, np.ndarray] = {}


def wasserstein_hist(p_counts: Any, q_counts: Any, edges: Any) -> float:
    """Wasserstein-1 distance of two histograms on the same edges, in the metric's units.

    Each bin's mass sits at its centre (bin_centres), so this equals
    scipy.stats.wasserstein_distance(c, c, p, q) for c = bin_centres(edges). Unlike
    evidently's "wasserstein" stattest it is not divided by the baseline std.
    NaN if either histogram is all zeros.
    """
    pair = _pair(p_counts, q_counts)
    widths = _centre_gaps(edges)
    if pair is None:
        return math.nan
    p, q = pair
    if len(p) != len(widths) + 1:
        raise ValueError(f"{len(p)} bins but {len(widths) + 1} bin centres")
    gap = np.cumsum(p)[:-1] - np.cumsum(q)[:-1]
    return float(np.sum(np.abs(gap) * widths))


def js_profile(p_mass: Any, q_mass: Any) -> float:
    """JS distance (base 2) of two position profiles (mass by distance from the end).

    The shorter profile is padded with zeros; NaN if either holds no mass.
    """
    p = np.asarray(p_mass, dtype=np.float64)
    q = np.asarray(q_mass, dtype=np.float64)
    if len(p) != len(q):
        n = max(len(p), len(q))
        p, q = np.pad(p, (0, n - len(p))), np.pad(q, (0, n - len(q)))
    return js_distance(p, q)


# --- the same, one histogram per row -----------------------------------------------------
# (M, BINS) arrays of counts, e.g. a sketch's `hist` (or some of its rows): one value per
# row, equal to the 1-D function on that row (NaN where either row is all zeros).
def _proportion_rows(counts: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"counts must be 2-D (one histogram per row), got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("counts must be finite and non-negative")
    total = c.sum(axis=1)
    ok = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / total[:, None], ok


def _pair_rows(p_counts: Any, q_counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (p, pok), (q, qok) = _proportion_rows(p_counts), _proportion_rows(q_counts)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    return p, q, pok & qok


def _psi_rows(p: np.ndarray, q: np.ndarray, ok: np.ndarray, eps: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        filled = []
        for v in (p, q):
            occupied = v > 0
            smallest = np.where(occupied, v, np.inf).min(axis=1)
            fill = np.where(smallest <= eps, smallest * _PSI_TINY, eps)  # as _fill_empty
            filled.append(np.where(occupied, v, fill[:, None]))
        p, q = filled
        out = np.sum((q - p) * np.log(q / p), axis=1)
    out[~ok] = math.nan
    return out


def _js_rows(p: np.ndarray, q: np.ndarray, ok: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        m = 0.5 * (p + q)
        js = 0.5 * (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / math.log(2.0)
        out = np.sqrt(np.maximum(js, 0.0))
    out[~ok] = math.nan
    return out


def _wasserstein_rows(p: np.ndarray, q: np.ndarray, ok: np.ndarray, edges: Any) -> np.ndarray:
    if len(edges) != len(p):
        raise ValueError(f"{len(p)} histograms but {len(edges)} edges")
    widths = np.array([_centre_gaps(e) for e in edges]).reshape(len(p), -1)
    if p.shape[1] != widths.shape[1] + 1:
        raise ValueError(f"{p.shape[1]} bins but {widths.shape[1] + 1} bin centres")
    with np.errstate(invalid="ignore"):
        gap = np.cumsum(p, axis=1)[:, :-1] - np.cumsum(q, axis=1)[:, :-1]
        out = np.sum(np.abs(gap) * widths, axis=1)
    out[~ok] = math.nan
    return out


def psi_rows(expected_counts: Any, actual_counts: Any, eps: float = 1e-4) -> np.ndarray:
    """psi(expected_counts[i], actual_counts[i], eps) for every row i, as one array."""
    return _psi_rows(*_pair_rows(expected_counts, actual_counts), eps)


def js_distance_rows(p_counts: Any, q_counts: Any) -> np.ndarray:
    """js_distance(p_counts[i], q_counts[i]) for every row i, as one array."""
    return _js_rows(*_pair_rows(p_counts, q_counts))


def wasserstein_hist_rows(p_counts: Any, q_counts: Any, edges: Any) -> np.ndarray:
    """wasserstein_hist(p_counts[i], q_counts[i], edges[i]) for every row i, as one array.

    `edges`: one edges array per row (a sequence, or a 2-D array).
    """
    return _wasserstein_rows(*_pair_rows(p_counts, q_counts), edges)


def histogram_drift_rows(
    expected_counts: Any, actual_counts: Any, edges: Any, eps: float = 1e-4,
    which: Iterable[str] = ("psi", "js", "wasserstein"),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(psi_rows, js_distance_rows, wasserstein_hist_rows) of the same rows, validated once.

    Only the statistics named in `which` are computed; the others come back all NaN."""
    p, q, ok = _pair_rows(expected_counts, actual_counts)
    which = set(which)
    skipped = np.full(len(p), math.nan)
    return (_psi_rows(p, q, ok, eps) if "psi" in which else skipped,
            _js_rows(p, q, ok) if "js" in which else skipped.copy(),
            _wasserstein_rows(p, q, ok, edges) if "wasserstein" in which else skipped.copy())


# Uniform signature (baseline_counts, current_counts, edges) so config can name any of them.
Statistic = Callable[[np.ndarray, np.ndarray, Any], float]
STATISTICS: dict[str, Statistic] = {
    "psi": lambda p, q, edges=None: psi(p, q),
    "js": lambda p, q, edges=None: js_distance(p, q),
    "hellinger": lambda p, q, edges=None: hellinger(p, q),
    "wasserstein": wasserstein_hist,
}


def register_statistic(name: str, fn: Statistic, *, replace: bool = False) -> None:
    """Make `fn(baseline_counts, current_counts, edges) -> float` nameable in config."""
    if name in STATISTICS and not replace:
        raise ValueError(f"statistic {name!r} is already registered")
    STATISTICS[name] = fn


# --- categorical shares (items, attribute values) ---------------------------------------
# A share dict {key: share of the total mass}, or a TopK-like object with .shares()
Shares = Mapping[str, float] | Any


class ShareMap(dict):
    """A share dict already as _as_shares makes it (str keys, float values): the functions
    below take it as it is, so a caller computing several statistics converts once."""


def _as_shares(x: Shares) -> dict[str, float]:
    """A share dict from a dict or a TopK-like object (anything with .shares())."""
    if isinstance(x, ShareMap):
        return x
    shares = x.shares() if hasattr(x, "shares") else x
    return {str(k): float(v) for k, v in shares.items()}


def shares_js(p: Shares, q: Shares, other: bool = True) -> float:
    """JS distance (base 2) of two share distributions over the union of their keys.

    With `other`, each side's leftover mass max(1 - Σ shares, 0) — the mass top-K did not
    keep — is one more bucket, so two summaries that keep little are not called equal.
    """
    keys, pv, qv = _aligned(p, q)
    return shares_js_arrays(keys, pv, qv, other)


def top_movers(p: Shares, q: Shares, n: int = 5) -> list[tuple[str, float, float]]:
    """The n keys whose share moved most: (key, baseline share, current share).

    A key missing on one side has share 0 there; ties go by key for a stable order.
    """
    return top_movers_arrays(*_aligned(p, q), n)


def top_lift(p: Shares, q: Shares, min_rise: float = 0.02, floor: float = 1e-3) -> tuple[str, float, float] | None:
    """The key whose share grew the most times over among those that gained at least
    `min_rise` (absolute): (key, baseline share, current share), or None. The baseline
    share is floored at `floor`, so a key new to the baseline has a finite lift.

    Absolute movers miss a small value tripling (a promoted brand going from 1% to 4% of
    attention); a lift alone would flag noise on values with almost no share.
    """
    p, q = _as_shares(p), _as_shares(q)
    keys = list(q)
    b = np.array([p.get(k, 0.0) for k in keys], dtype=np.float64)
    return top_lift_arrays(keys, b, np.array(list(q.values()), dtype=np.float64), min_rise, floor)


def _aligned(p: Shares, q: Shares) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The union of both sides' keys and each side's shares on it (0 where it lacks one)."""
    p, q = _as_shares(p), _as_shares(q)
    keys = list(set(p) | set(q))
    return (keys, np.array([p.get(k, 0.0) for k in keys], dtype=np.float64),
            np.array([q.get(k, 0.0) for k in keys], dtype=np.float64))


# --- the same on aligned arrays: keys, and each side's share of each key ------------------
# (what the dict functions above run on; the evaluator aligns two TopKs once and calls these)
def shares_js_arrays(keys: list[str], p: np.ndarray, q: np.ndarray, other: bool = True) -> float:
    """shares_js over `keys` (summed in sorted key order, so any key order gives one value)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    pv, qv = p[order], q[order]
    if other:
        pv = np.append(pv, max(1.0 - pv.sum(), 0.0))
        qv = np.append(qv, max(1.0 - qv.sum(), 0.0))
    return js_distance(pv, qv)


def top_movers_arrays(keys: list[str], p: np.ndarray, q: np.ndarray, n: int = 5) -> list[tuple[str, float, float]]:
    """top_movers: only the keys that can be among the n are sorted (ties at the cut kept)."""
    d = np.abs(q - p)
    if len(d) > n:
        cand = np.flatnonzero(d >= np.partition(d, len(d) - n)[len(d) - n]).tolist()
    else:
        cand = range(len(d))
    pl, ql = p.tolist(), q.tolist()
    rows = [(keys[i], pl[i], ql[i]) for i in cand]
    rows.sort(key=lambda r: (-abs(r[2] - r[1]), r[0]))
    return rows[:n]


def top_lift_arrays(keys: list[str], p: np.ndarray, q: np.ndarray, min_rise: float = 0.02,
                    floor: float = 1e-3) -> tuple[str, float, float] | None:
    """top_lift with `p` the baseline share of each of the current side's `keys`: the
    largest lift, ties by key."""
    rise = np.flatnonzero(q - p >= min_rise)
    if not len(rise):
        return None
    lifts = q[rise] / np.maximum(p[rise], floor)
    i = min(rise[lifts == lifts.max()].tolist(), key=keys.__getitem__)
    return keys[i], float(p[i]), float(q[i])


def top_share(shares: Shares, k: int = 10) -> float:
    """Total share of the k largest keys (a lower bound with top-K counters)."""
    v = np.sort(np.fromiter(_as_shares(shares).values(), dtype=np.float64))[::-1]
    return float(v[:k].sum())


def hhi(shares: Shares) -> float:
    """Herfindahl–Hirschman index Σ share² over the kept keys (a lower bound with top-K)."""
    v = np.fromiter(_as_shares(shares).values(), dtype=np.float64)
    return float(np.sum(v * v))


def new_in_top(current_shares: Shares, baseline_keys: Shares | Iterable[str], k: int = 10) -> float:
    """Fraction of the current top-k keys' mass on keys the baseline did not keep.

    `baseline_keys`: an iterable of keys, a share dict or a TopK-like object (its kept
    keys). NaN when the current side has no mass.
    """
    cur = _as_shares(current_shares)
    base = (
        set(_as_shares(baseline_keys))
        if hasattr(baseline_keys, "shares")
        else set(map(str, baseline_keys))
    )
    top = sorted(cur.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    mass = sum(v for _, v in top)
    if mass <= 0:
        return math.nan
    return sum(v for key, v in top if key not in base) / mass


def delta_sd(cur_mean: float, base_mean: float, base_std: float) -> float:
    """(cur_mean - base_mean) in baseline standard deviations, the std floored at STD_FLOOR."""
    return (cur_mean - base_mean) / max(base_std, STD_FLOOR)


# --- change points on per-minute means --------------------------------------------------
def cusum(
    x: Iterable[float], mean: float, std: float, k: float = 0.5, h: float | None = None
) -> np.ndarray:
    """Standardised two-sided tabular CUSUM path S_t = max(S+_t, S-_t).

    With z_t = (x_t - mean) / max(std, STD_FLOOR):
    S+_t = max(0, S+_{t-1} + z_t - k) and S-_t = max(0, S-_{t-1} - z_t - k), from 0.
    k is the reference value (allowance) in std units: 0.5 is tuned to a 1-std shift.
    With `h`, both sums restart at 0 after a step whose S_t > h (the usual restart after
    an alarm), so the path shows each alarm; without it the path never restarts.
    A NaN x_t (a minute without data) leaves the sums as they were and gives NaN there.
    """
    z = (np.asarray(x, dtype=np.float64) - mean) / max(std, STD_FLOOR)
    out = np.empty(len(z))
    hi = lo = 0.0
    for t, zt in enumerate(z):
        if math.isnan(zt):
            out[t] = math.nan
            continue
        hi = max(0.0, hi + zt - k)
        lo = max(0.0, lo - zt - k)
        out[t] = max(hi, lo)
        if h is not None and out[t] > h:
            hi = lo = 0.0
    return out


def split_point(sums: Any, counts: Any) -> int | None:
    """Where one change in the mean of a series of buckets most likely happened: the index
    k (1 <= k < len) that best splits the buckets into two means, by the weighted
    between-segment sum of squares n_a n_b / (n_a + n_b) (mean_a - mean_b)^2. `sums` and
    `counts` are per bucket (e.g. a metric's per-minute sum and the predictions); None
    with fewer than two buckets.

    >>> split_point([1, 1, 1, 5, 5], [1, 1, 1, 1, 1])
    3
    """
    s, n = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if len(n) < 2 or n.sum() <= 0:
        return None
    cs, cn = np.cumsum(s)[:-1], np.cumsum(n)[:-1]
    rs, rn = s.sum() - cs, n.sum() - cn
    ok = (cn > 0) & (rn > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(ok, cn * rn / (cn + rn) * (cs / cn - rs / rn) ** 2, -1.0)
    return int(np.argmax(score)) + 1 if ok.any() else None


class ChangePoint(NamedTuple):
    path: np.ndarray  # the detector's statistic after each step
    first: int | None  # index of the first detection


_MODES = ("up", "down", "both")


def page_hinkley(
    x: Iterable[float],
    delta: float = 0.005,
    lambda_: float = 50.0,
    alpha: float = 1 - 1e-4,
    min_instances: int = 30,
    mode: str = "both",
) -> ChangePoint:
    """Page–Hinkley test over a whole series, as river's drift.PageHinkley sees it.

    With m_t the running mean of x_1..x_t, d_t = x_t - m_t, and fading factor alpha:
    U_t = alpha U_{t-1} + d_t - delta,  D_t = alpha D_{t-1} + d_t + delta  (U_0 = D_0 = 0);
    the path is max(U_t - min_{s<=t} U_s, max_{s<=t} D_s - D_t) for mode "both" (the
    first term only for "up", the second only for "down"), and a detection is the first
    t (0-based) with t + 1 >= min_instances and path > lambda_ (river's `threshold`).
    The first detection is the one river's detector reports on the same stream; the path
    does not restart after it (the streaming PageHinkley does). NaN inputs are skipped
    (NaN in the path there).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    xs = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(xs)
    v = xs[ok]
    dev = v - np.cumsum(v) / np.arange(1, len(v) + 1)
    up = lfilter([1.0], [1.0, -alpha], dev - delta)
    down = lfilter([1.0], [1.0, -alpha], dev + delta)
    inc = up - np.minimum.accumulate(up)
    dec = np.maximum.accumulate(down) - down
    stat = inc if mode == "up" else dec if mode == "down" else np.maximum(inc, dec)
    path = np.full(len(xs), np.nan)
    path[ok] = stat
    hit = np.flatnonzero((stat > lambda_) & (np.arange(1, len(v) + 1) >= min_instances))
    first = int(np.flatnonzero(ok)[hit[0]]) if len(hit) else None
    return ChangePoint(path, first)


class PageHinkley:
    """Streaming Page–Hinkley detector with river's semantics (river.drift.PageHinkley).

    `update(x)` adds one value; `drift_detected` says whether that value raised a drift.
    The detector restarts on the update after a detection, as river's does. Parameters as
    in page_hinkley (lambda_ is river's `threshold`). A NaN value is ignored.

        >>> ph = PageHinkley(lambda_=5.0, min_instances=5)
        >>> for i, v in enumerate([0.0] * 10 + [3.0] * 5):
        ...     ph.update(v)
        ...     if ph.drift_detected:
        ...         print(i)
        11
    """

    def __init__(
        self,
        delta: float = 0.005,
        lambda_: float = 50.0,
        alpha: float = 1 - 1e-4,
        min_instances: int = 30,
        mode: str = "both",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.delta, self.lambda_, self.alpha = delta, lambda_, alpha
        self.min_instances, self.mode = min_instances, mode
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._up = self._down = 0.0
        # river starts the running max of D at -1; D_1 = delta > -1, so -inf is the same
        self._min_up, self._max_down = math.inf, -math.inf
        self._drift = False
        self.statistic = 0.0

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def update(self, x: float) -> None:
        if math.isnan(x):
            return
        if self._drift:
            self._reset()
        self._n += 1
        self._mean += (x - self._mean) / self._n
        dev = x - self._mean
        self._up = self.alpha * self._up + dev - self.delta
        self._down = self.alpha * self._down + dev + self.delta
        self._min_up = min(self._min_up, self._up)
        self._max_down = max(self._max_down, self._down)
        inc, dec = self._up - self._min_up, self._max_down - self._down
        self.statistic = inc if self.mode == "up" else dec if self.mode == "down" else max(inc, dec)
        if self._n >= self.min_instances:
            self._drift = self.statistic > self.lambda_
