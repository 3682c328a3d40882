"""Which head of a retrain is which: heads of two sets of weights are matched (DESIGN §5).

Head 1 of a retrain need not be head 1 before it, so comparing them by index measures
nothing but the relabelling. Each candidate head is paired with a baseline head by the
assignment that minimises the JS distance of their entropy_norm histograms plus that of
their position profiles. Pure.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from monitor import stats
from monitor.metrics import ALL_METRICS
from monitor.sketch import Sketch

_ENTROPY = ALL_METRICS.index("entropy_norm")


def match_heads(base: dict[str, Sketch], cand: dict[str, Sketch]) -> dict[str, str]:
    """Candidate head -> baseline head (one to one; heads left over stay unpaired)."""
    bh, ch = sorted(base), sorted(cand)
    if not bh or not ch:
        return {}
    cost = np.array([[stats.js_distance(base[b].hist[_ENTROPY], cand[c].hist[_ENTROPY])
                      + stats.js_profile(base[b].pos, cand[c].pos) for b in bh] for c in ch])
    rows, cols = linear_sum_assignment(np.nan_to_num(cost, nan=2.0))
    return {ch[r]: bh[c] for r, c in zip(rows, cols, strict=True)}
