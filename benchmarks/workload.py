"""Synthetic serving traffic, and collectors driven by hand instead of by their thread.

The traffic is shaped like a retail SASRec: item ids drawn from a Zipf catalogue, each
item with a brand and a category (themselves skewed), histories of varying length,
left-padded, and attention that is a softmax of noisy logits with a recency bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collectors import AttentionCollector
from monitor.store.writer import FlushBatch

T0 = 1_800_000_000.0  # a minute boundary, as in the tests
COHORTS = ("web", "ios", "android")
COHORT_P = (0.6, 0.3, 0.1)


@dataclass(frozen=True)
class Catalogue:
    p: np.ndarray  # popularity of each item id (Zipf over the ranks)
    brand: np.ndarray  # brand label of each item
    category: np.ndarray  # category label of each item


def zipf_p(n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return p / p.sum()


def catalogue(
    rng: np.random.Generator, n_items: int = 50_000, n_brands: int = 200, n_categories: int = 30
) -> Catalogue:
    brands = np.array([f"brand-{i:03d}" for i in range(n_brands)])
    categories = np.array([f"category-{i:02d}" for i in range(n_categories)])
    return Catalogue(
        p=zipf_p(n_items, 1.05),
        brand=brands[rng.choice(n_brands, n_items, p=zipf_p(n_brands, 0.8))],
        category=categories[rng.choice(n_categories, n_items, p=zipf_p(n_categories, 0.7))],
    )


@dataclass(frozen=True)
class Requests:
    weights: np.ndarray  # (B, layers, heads, L) float32, left-padded
    lengths: np.ndarray  # (B,)
    item_ids: np.ndarray  # (B, L) int64
    brand: np.ndarray  # (B, L) str
    category: np.ndarray  # (B, L) str
    cohorts: list[str]


def requests(
    rng: np.random.Generator,
    cat: Catalogue,
    batch: int,
    layers: int,
    heads: int,
    length: int,
    *,
    min_length: int = 5,
) -> Requests:
    lengths = rng.integers(min(min_length, length), length + 1, batch)
    ids = rng.choice(len(cat.p), size=(batch, length), p=cat.p).astype(np.int64)
    pad = np.arange(length)[None, :] < (length - lengths)[:, None]
    # recency bias that differs by head, so heads and layers are not copies of each other
    slope = rng.uniform(0.0, 0.15, (1, layers, heads, 1))
    logits = rng.normal(0.0, 1.5, (batch, layers, heads, length)) + slope * np.arange(length)
    logits[np.broadcast_to(pad[:, None, None, :], logits.shape)] = -np.inf
    w = np.exp(logits - logits.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    brand, category = cat.brand[ids], cat.category[ids]
    brand[pad] = ""
    category[pad] = ""
    return Requests(
        weights=w.astype(np.float32),
        lengths=lengths,
        item_ids=ids,
        brand=brand,
        category=category,
        cohorts=list(rng.choice(COHORTS, batch, p=COHORT_P)),
    )


def quiet_collector(**kwargs) -> AttentionCollector:
    """A collector whose thread never starts: the caller drains it by hand.

    The store is never touched (nothing calls `_flush`), so the URL is a placeholder.
    Call `retire` when done, so that the exit hook has nothing to flush.
    """
    kwargs.setdefault("store_url", "sqlite://")
    kwargs.setdefault("model", "bench")
    kwargs.setdefault("version", "v1")
    c = AttentionCollector(**kwargs)
    c._start = lambda: None  # as tests/test_collector.py test_queue_full does
    return c


def retire(c: AttentionCollector) -> None:
    c._q.clear()
    c._closed = True  # close() is then a no-op, at exit too


def take_entry(c: AttentionCollector):
    """The one entry the last observe/observe_batch queued."""
    (entry,) = c._q
    c._q.clear()
    return entry


def replicas_traffic(
    *,
    minutes: int,
    per_minute: int,
    replicas: int,
    layers: int,
    heads: int,
    length: int,
    serving_batch: int = 50,
    sample_rate: float = 0.0,
    seed: int = 7,
    **collector_kwargs,
) -> list[FlushBatch]:
    """`minutes` of traffic spread round-robin over `replicas` collectors, each drained
    once per minute through the real `_drain`; one FlushBatch per replica, as the
    collectors' `_take_batch` builds it (every minute closed)."""
    rng = np.random.default_rng(seed)
    cat = catalogue(rng)
    now = T0 + (minutes + 1) * 60
    cs = [
        quiet_collector(
            queue_size=10**9, sample_rate=sample_rate, clock=lambda: now, seed=seed + i,
            **collector_kwargs,
        )
        for i in range(replicas)
    ]
    try:
        for m in range(minutes):
            for k, start in enumerate(range(0, per_minute, serving_batch)):
                b = min(serving_batch, per_minute - start)
                r = requests(rng, cat, b, layers, heads, length)
                ts = T0 + m * 60 + np.sort(rng.uniform(0.0, 60.0, b))
                cs[k % replicas].observe_batch(
                    r.weights,
                    item_ids=r.item_ids,
                    lengths=r.lengths,
                    cohorts=r.cohorts,
                    attributes={"brand": r.brand, "category": r.category},
                    timestamps=ts,
                )
            for c in cs:
                c._drain()
        return [c._take_batch(now, None) for c in cs]
    finally:
        for c in cs:
            retire(c)
