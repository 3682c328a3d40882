"""A simulated retail recommender whose attention is real scaled dot-product attention.

Items have a category, a brand and a price band, and an embedding; users draw their
histories from a few favourite categories with Zipf popularity. The model has `layers`
layers of `heads` heads; the prediction row of each layer attends over the history with
softmax(q·k/√d). Defects are changes to that computation, as a bad deploy would make:
- `promoted_brand`: one head's scores get a bonus on one brand's items;
- `collapse_head`: one head's scores are sharpened (low temperature), so its entropy
  collapses onto one item;
- `recency_cohort`: in one cohort, every head's scores get a bonus on recent positions.
Pure numpy, seeded; used by the demo, the detection tests and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Catalogue:
    category: np.ndarray  # (n_items,) str
    brand: np.ndarray
    price_band: np.ndarray
    emb: np.ndarray  # (n_items, d)
    popularity: np.ndarray  # (n_items,) probabilities


def make_catalogue(
    rng: np.random.Generator, n_items: int = 5000, n_categories: int = 20, n_brands: int = 120, d: int = 32
) -> Catalogue:
    cat_idx = rng.integers(0, n_categories, n_items)
    # category centroids make items of one category look alike to the model
    centroids = rng.normal(size=(n_categories, d))
    emb = centroids[cat_idx] + 0.7 * rng.normal(size=(n_items, d))
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop = rng.permutation(pop / pop.sum())
    return Catalogue(
        category=np.array([f"cat{i:02d}" for i in cat_idx], dtype=object),
        brand=np.array([f"brand{b:03d}" for b in rng.integers(0, n_brands, n_items)], dtype=object),
        price_band=np.array(["low", "mid", "high"], dtype=object)[rng.integers(0, 3, n_items)],
        emb=emb,
        popularity=pop,
    )


@dataclass(frozen=True)
class Defect:
    promoted_brand: str | None = None
    promoted_head: tuple[int, int] = (1, 0)  # (layer, head)
    promoted_bonus: float = 4.0
    collapse_head: tuple[int, int] | None = None
    collapse_factor: float = 8.0
    recency_cohort: str | None = None
    recency_bonus: float = 2.5
    promoted_items: tuple[int, ...] = ()  # these items' scores get a bonus ...
    items_bonus: float = 3.0
    items_layer: int | None = None  # ... in every head of this layer (None: every layer)


@dataclass
class SimModel:
    catalogue: Catalogue
    layers: int = 2
    heads: int = 4
    seed: int = 0
    defect: Defect = field(default_factory=Defect)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        d = self.catalogue.emb.shape[1]
        self.dh = d // self.heads
        self.wq = rng.normal(size=(self.layers, self.heads, d, self.dh)) / np.sqrt(d)
        self.wk = rng.normal(size=(self.layers, self.heads, d, self.dh)) / np.sqrt(d)
        self.wv = rng.normal(size=(self.layers, d, d)) / np.sqrt(d)
        self.pos = 0.3 * rng.normal(size=(512, d))  # by distance from the end

    def attention(
        self, histories: np.ndarray, lengths: np.ndarray, cohorts: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, layers, heads, L) attention of the prediction row; histories left-padded."""
        B, L = histories.shape
        valid = np.arange(L)[None, :] >= (L - lengths)[:, None]
        x = self.catalogue.emb[histories] + self.pos[:L][::-1][None]
        x = np.where(valid[..., None], x, 0.0)
        out = np.zeros((B, self.layers, self.heads, L))
        brand_mask = None
        if self.defect.promoted_brand is not None:
            brand_mask = (self.catalogue.brand[histories] == self.defect.promoted_brand) & valid
        item_mask = None
        if self.defect.promoted_items:
            item_mask = np.isin(histories, self.defect.promoted_items) & valid
        recency = None
        if self.defect.recency_cohort is not None and cohorts is not None:
            dist = np.arange(L)[::-1][None, :]
            recency = (np.asarray(cohorts)[:, None] == self.defect.recency_cohort) * np.exp(-dist / 3.0)
        for layer in range(self.layers):
            q_in = x[:, -1]  # the prediction row: the most recent position
            for h in range(self.heads):
                q = q_in @ self.wq[layer, h]
                k = x @ self.wk[layer, h]
                s = np.einsum("bd,bld->bl", q, k) / np.sqrt(self.dh)
                if brand_mask is not None and (layer, h) == self.defect.promoted_head:
                    s = s + self.defect.promoted_bonus * brand_mask
                if self.defect.collapse_head == (layer, h):
                    s = s * self.defect.collapse_factor
                if recency is not None:
                    s = s + self.defect.recency_bonus * recency
                if item_mask is not None and self.defect.items_layer in (None, layer):
                    s = s + self.defect.items_bonus * item_mask
                s = np.where(valid, s, -np.inf)
                s -= s.max(axis=1, keepdims=True)
                p = np.exp(s)
                p /= p.sum(axis=1, keepdims=True)
                out[:, layer, h] = p
            # the next layer sees the history mixed by this layer's mean attention
            mix = out[:, layer].mean(axis=1)
            x = x + np.tanh((mix[..., None] * x).sum(1, keepdims=True) @ self.wv[layer]) * valid[..., None]
        return out


@dataclass
class Traffic:
    """Users and their histories; one call to `requests` is one minute of predictions."""

    catalogue: Catalogue
    rng: np.random.Generator
    cohorts: tuple[str, ...] = ("web", "ios", "android")
    max_len: int = 50
    n_users: int = 2000

    def __post_init__(self) -> None:
        n_cat = len(np.unique(self.catalogue.category))
        self.cohorts = tuple(self.cohorts)
        self.user_cats = self.rng.integers(0, n_cat, (self.n_users, 3))
        self.user_cohort = self.rng.integers(0, len(self.cohorts), self.n_users)
        cats = np.array([int(c[3:]) for c in self.catalogue.category])
        self.by_cat = [np.flatnonzero(cats == c) for c in range(n_cat)]

    def requests(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(histories (n, max_len) left-padded item indices, lengths, cohort labels)."""
        users = self.rng.integers(0, self.n_users, n)
        lengths = np.minimum(self.rng.geometric(1 / 20, n) + 2, self.max_len)
        hist = np.zeros((n, self.max_len), dtype=np.int64)
        pop = self.catalogue.popularity
        for i, u in enumerate(users):
            pool = np.concatenate([self.by_cat[c] for c in self.user_cats[u]])
            p = pop[pool] / pop[pool].sum()
            hist[i, self.max_len - lengths[i] :] = self.rng.choice(pool, lengths[i], p=p)
        cohorts = np.array(self.cohorts, dtype=object)[self.user_cohort[users]]
        return hist, lengths, cohorts
