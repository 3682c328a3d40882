"""Top-K of the attention mass per item (or attribute value), for each (minute, cohort)
group of a batch and each layer: what its head-mean rows hold of each key.

On key codes, not keys: the caller makes text only of the codes that are kept. Each
key's mass is summed in the order monitor.sketch.topk_by_group sums it (requests, then
positions, from 0.0), so that the summaries are that function's, to the bit.
"""

from __future__ import annotations

import numpy as np

from monitor.topk import TopK

_DENSE_SLACK = 65536  # cells a group's dense top-K pass may spend beyond 4 per position


class _MeanPositions:
    """The valid positions of a batch's head-mean rows, grouped: group g = r * ly + layer
    holds the positions (i, j) of the requests of group r, in order, with their mass
    (float64, as the sums take it)."""

    def __init__(self, mean: np.ndarray, lengths: np.ndarray, rq, order, R: int):
        n, ly, L = mean.shape
        if order is not None:  # requests by group (a stable order)
            mean, lengths = mean[order], lengths[order]
            req = np.concatenate([[0], np.cumsum(np.bincount(rq, minlength=R))]).tolist()
        else:
            req = [0, n]
        self.order = order
        self.valid = None if (lengths == L).all() else np.arange(L)[None, :] >= (L - lengths)[:, None]
        ends = np.concatenate([[0], np.cumsum(lengths)])
        self.slices, self.mass = [], []
        for r in range(R):
            a, z = req[r], req[r + 1]
            for layer in range(ly):
                m = mean[a:z, layer, :]
                m = m.reshape(-1) if self.valid is None else m[self.valid[a:z]]
                self.slices.append(slice(int(ends[a]), int(ends[z])))
                self.mass.append(m.astype(np.float64))

    def codes(self, codes: np.ndarray) -> np.ndarray:
        """The key codes at the positions, in their order."""
        if self.order is not None:
            codes = codes[self.order]
        return codes.reshape(-1) if self.valid is None else codes[self.valid]


def _layer_mass(mean: np.ndarray) -> list[np.ndarray]:
    """The head-mean rows (n, layers, L) as `_topk_all_groups` takes them: float64, as the
    sums take them, two layers to a complex128 array (layer 2j real, 2j + 1 imaginary;
    complex adds are two float adds, so one ufunc.at sums both layers, each in order)
    and an odd last layer alone, each (n * L,)."""
    n, ly, L = mean.shape
    parts = []
    for j in range(0, ly, 2):
        if j + 1 == ly:
            parts.append(mean[:, j, :].astype(np.float64).reshape(-1))
            continue
        pair = np.empty((n, L, 2))
        pair[:, :, 0], pair[:, :, 1] = mean[:, j, :], mean[:, j + 1, :]
        parts.append(pair.reshape(-1).view(np.complex128))
    return parts


def _topk_all_groups(codes: np.ndarray, n_keys: int, mass: list[np.ndarray], lengths: np.ndarray,
                     rq: np.ndarray | None, R: int, k: int) -> list[TopK] | None:
    """`_topk_of_groups` of every head-mean group in one dense pass over (group, layer,
    key) cells, straight from the unsorted rows (None: too many cells, use that instead).

    `codes` (n, L) key codes of the accepted requests, `mass` their head-mean rows as
    `_layer_mass` gives them, `rq` (n,) their group (None: one group). Each cell adds its
    positions in request order, then position order, from 0.0, as the group-by-group
    pass does; padding and positions with no key go to a column of their own (0) that is
    dropped, so their mass, whatever it is, is never read."""
    (n, L) = codes.shape
    ly = sum(2 if m.dtype.kind == "c" else 1 for m in mass)
    U1 = n_keys + 1  # column 0: no key
    n_cells = R * ly * U1
    if n_cells > 4 * n * ly * L + _DENSE_SLACK:
        return None
    # cell of each position: group r's column, key code + 1 (-1, no key -> 0)
    idx = codes + (1 if rq is None else (rq * U1 + 1)[:, None])
    if L and (lengths < L).any():
        idx[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0  # group 0's no-key column
    idx = idx.reshape(-1)
    cells = np.empty((R, ly, U1))
    layer = 0
    for m in mass:  # (ufunc.at adds in order, as bincount does; it is faster)
        part = np.zeros(R * U1, dtype=m.dtype)
        np.add.at(part, idx, m)
        if m.dtype.kind == "c":
            two = part.view(np.float64).reshape(R, U1, 2)
            cells[:, layer], cells[:, layer + 1] = two[:, :, 0], two[:, :, 1]
            layer += 2
        else:
            cells[:, layer] = part.reshape(R, U1)
            layer += 1
    cells = cells.reshape(-1)
    cells[::U1] = 0.0  # the no-key column of every group
    nz = np.flatnonzero(cells > 0)
    m_all = cells[nz]
    starts = np.searchsorted(nz, np.arange(R * ly + 1) * U1).tolist()
    out = []
    for gi in range(R * ly):
        a, z = starts[gi], starts[gi + 1]
        m = m_all[a:z]
        out.append(TopK._reduced(nz[a:z] - (gi * U1 + 1), m, k, float(m.sum())))
    return out


def _topk_of_groups(codes: np.ndarray, n_keys: int, pos: _MeanPositions, k: int) -> list[TopK]:
    """Top-K of the attention mass per key code, for each head-mean group.

    The summaries monitor.sketch.topk_by_group makes of the head-mean rows (each key's
    mass summed in the same order, TopK.from_counts' reduction), with the key codes in
    place of the keys: the caller makes text only of the codes that are kept.
    """
    c_all = pos.codes(codes)
    some_none = bool((c_all < 0).any())  # -1: no key (None), which must not alias another
    U = max(n_keys, 1)
    out = []
    for sl, mass in zip(pos.slices, pos.mass, strict=True):
        c = c_all[sl]
        if some_none:
            ok = c >= 0
            c, mass = c[ok], mass[ok]
        if U <= 4 * len(c) + _DENSE_SLACK:  # one dense pass; else sort the keys that occur
            cells = np.bincount(c, weights=mass, minlength=U)
            keys = np.flatnonzero(cells)
            cells = cells[keys]
        else:
            keys, inv = np.unique(c, return_inverse=True)
            cells = np.bincount(inv, weights=mass, minlength=len(keys))
        keep = cells > 0
        m = cells[keep]
        out.append(TopK._reduced(keys[keep], m, k, float(m.sum())))
    return out
