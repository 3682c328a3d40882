"""Keyed hashes of item ids: what the store holds instead of them with `hash_item_ids`.

    >>> item_hash(b"key", "42")
    'f2991b7ce981d0b5adc5e6a0f31acaeb'

HMAC-SHA256 of the id's text (UTF-8) under the collector's key, its first 32 hex
digits. The text is the one the top-K summaries key an item by (`str(id)`; bytes as
UTF-8), so raw events, top-K keys and `attnmon hash-item` agree. Every collector of a
model must have the same key: under two keys one item has two hashes, and its counts
split between them.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from monitor.topk import TopK

HEX_DIGITS = 32
# a minute's top-K survivors are mostly the last minute's: hash each once, not each
# minute (512 items x layers per minute; cleared, not evicted, when full)
CACHE_LIMIT = 1 << 16


def item_hash(key: bytes, item: str) -> str:
    return hmac.new(key, item.encode("utf-8"), hashlib.sha256).hexdigest()[:HEX_DIGITS]


class ItemHasher:
    """`item_hash` under one key, remembering the ids it hashed. One thread at a time."""

    def __init__(self, key: bytes, cache_limit: int = CACHE_LIMIT):
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # (copied per id: the key's pads once)
        self._cache: dict[str, str] = {}
        self._limit = cache_limit

    def __call__(self, item: str) -> str:
        h = self._cache.get(item)
        if h is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            mac = self._mac.copy()
            mac.update(item.encode("utf-8"))
            h = self._cache[item] = mac.hexdigest()[:HEX_DIGITS]
        return h

    def topk(self, tk: TopK) -> TopK:
        """The summary with each key replaced by its hash: counts and order unchanged, so
        merges of hashed summaries equal the hashes of merged ones."""
        keys = np.array([self(str(k)) for k in tk.keys.tolist()], dtype=object)
        return TopK(tk.k, keys, tk.counts, tk.total)
