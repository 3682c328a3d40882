"""Serving in simulated time: users' real histories through the model, its attention
through `collectors.torch.AttentionCapture` into an `AttentionCollector`, the daemon
evaluating and alerting every simulated minute."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from examples.movielens.data import MovieLens, left_pad
from examples.movielens.model import SASRec

MODEL = "sasrec-ml100k"


@dataclass
class Traffic:
    """Recommendation requests: a user (uniformly among `users`) asks for recommendations
    at a random point of their real history, so the request carries the history up to
    that point (its last max_len items, in time order). Cohort: the user's age band;
    attributes of each history item: its first listed genre and its release decade; item
    ids: MovieLens's own."""

    ml: MovieLens
    users: np.ndarray
    rng: np.random.Generator
    max_len: int = 50
    min_history: int = 5

    def requests(self, n: int) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, np.ndarray], np.ndarray]:
        """(histories (n, max_len) left-padded model indices, lengths, cohorts, attributes,
        MovieLens item ids (n, max_len))."""
        users = self.rng.choice(self.users, n)
        seqs = []
        for u in users:
            h = self.ml.histories[int(u)]
            cut = int(self.rng.integers(min(self.min_history, len(h)), len(h) + 1))
            seqs.append(h[:cut])
        seq, lengths = left_pad(seqs, self.max_len)
        cohorts = [self.ml.age_band[int(u)] for u in users]
        attrs = {"genre": self.ml.genre[seq], "decade": self.ml.year_band[seq]}
        return seq, lengths, cohorts, attrs, self.ml.raw_id[seq]


@torch.no_grad()
def recommend(model: SASRec, seq: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Top-k items for each history (what a serving process returns); one forward."""
    h = model(seq)[:, -1]
    scores = h @ model.item_emb.weight.T
    scores[:, 0] = -torch.inf
    scores.scatter_(1, seq, -torch.inf)  # not what the user already has
    return scores.topk(k, dim=1).indices


def serve(store_url: str, model: SASRec, version: str, traffic: Traffic, *, start: float, minutes: int,
          rate: int, clock: list[float], on_minute: Callable[[float], None] | None = None,
          sample_rate: float = 0.02, seed: int = 0) -> int:
    """`minutes` of `rate` requests a minute served by `model` as `version`, from `start`
    on the simulated clock `clock[0]`. After each minute the collector writes it and
    `on_minute(now)` runs (the daemon's tick). Returns the requests served."""
    from collectors import AttentionCollector
    from collectors.torch import AttentionCapture

    rng = np.random.default_rng(seed)
    served = 0
    with AttentionCollector(store_url, model=MODEL, version=version, sample_rate=sample_rate,
                            clock=lambda: clock[0], flush_interval_s=3600, seed=seed) as collector:
        capture = AttentionCapture(model.eval(), collector, sample_every=1)
        try:
            for m in range(minutes):
                clock[0] = start + 60 * m
                seq, lengths, cohorts, attrs, ids = traffic.requests(rate)
                ts = clock[0] + np.sort(rng.uniform(0, 60, rate))
                seq_t = torch.from_numpy(seq)
                with capture.batch(item_ids=ids, cohorts=cohorts, attributes=attrs, lengths=lengths,
                                   timestamps=ts, request_ids=[f"{version}-{m}-{i}" for i in range(rate)]):
                    recommend(model, seq_t)
                served += rate
                clock[0] = start + 60 * (m + 1) + 5  # the minute is closed: write it
                collector.flush()
                if on_minute is not None:
                    on_minute(clock[0])
            stats = capture.stats
            if stats.errors or stats.missed:
                raise RuntimeError(f"attention capture failed: {stats}")
        finally:
            capture.remove()
    cs = collector.stats
    if cs.rejected:
        raise RuntimeError(f"the collector rejected attention vectors: {cs.rejected}")
    return served
