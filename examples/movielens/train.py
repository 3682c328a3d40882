"""Training and the usual offline evaluation (leave-one-out, 100 sampled negatives)."""

from __future__ import annotations

import time

import numpy as np
import torch

from examples.movielens.data import MovieLens, left_pad
from examples.movielens.model import SASRec


def split(ml: MovieLens) -> tuple[dict, dict, dict]:
    """Per user: train = all but the last two, valid = up to the second last, test = all."""
    train = {u: h[:-2] for u, h in ml.histories.items() if len(h) >= 3}
    valid = {u: h[:-1] for u, h in ml.histories.items() if len(h) >= 3}
    return train, valid, dict(ml.histories)


def windows(histories: dict, max_len: int) -> tuple[list[int], list[np.ndarray]]:
    """Every user's training history cut, from its end, into pieces of max_len + 1 items
    (max_len inputs, each with its next item as target), so that every interaction is a
    target once an epoch. SASRec's reference code keeps only the last max_len of each
    user: on ML-100K (943 users, histories of 20–735) that is half the data, 8 batches an
    epoch, and hundreds of epochs to converge."""
    users, pieces = [], []
    for u in sorted(histories):
        h = histories[u]
        for end in range(len(h), 1, -max_len):
            users.append(u)
            pieces.append(h[max(0, end - max_len - 1) : end])
    return users, pieces


def train_model(ml: MovieLens, train: dict, *, epochs: int = 40, seed: int = 0, max_len: int = 50,
                shuffle_order: bool = False, batch: int = 128, lr: float = 2e-3, dropout: float = 0.2,
                log=print, on_epoch=None) -> SASRec:
    """SASRec's objective: at every position, the next item against one random negative
    (an item the user never rated). `shuffle_order` trains on histories whose order was
    lost: each user's history shuffled once (a realistic defect: a pipeline that dropped
    the timestamps and kept the rows in whatever order the store returned them)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if shuffle_order:
        train = {u: rng.permutation(h) for u, h in train.items()}
    users, pieces = windows(train, max_len)
    seen = np.zeros((max(ml.histories) + 1, ml.n_items + 1), dtype=bool)
    for u, h in ml.histories.items():
        seen[u, h] = True
    model = SASRec(ml.n_items, max_len=max_len, dropout=dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    began = time.monotonic()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(pieces))
        total, steps = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            seqs = [pieces[j] for j in idx]
            inp, _ = left_pad([s[:-1] for s in seqs], max_len)
            pos, _ = left_pad([s[1:] for s in seqs], max_len)
            u = np.array([users[j] for j in idx])[:, None]
            neg = rng.integers(1, ml.n_items + 1, pos.shape)
            for _ in range(10):  # redraw the negatives the user did rate
                bad = seen[np.broadcast_to(u, neg.shape), neg]
                if not bad.any():
                    break
                neg[bad] = rng.integers(1, ml.n_items + 1, int(bad.sum()))
            neg *= pos > 0
            inp_t, pos_t, neg_t = (torch.from_numpy(a) for a in (inp, pos, neg))
            h = model(inp_t)
            mask = pos_t > 0
            ps = (model.item_emb(pos_t) * h).sum(-1)[mask]
            ns = (model.item_emb(neg_t) * h).sum(-1)[mask]
            loss = bce(ps, torch.ones_like(ps)) + bce(ns, torch.zeros_like(ns))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        if log and ((epoch + 1) % 10 == 0 or epoch + 1 == epochs):
            log(f"  epoch {epoch + 1}/{epochs}: loss {total / max(1, steps):.3f} "
                f"({time.monotonic() - began:.0f} s)")
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1, model)
    model.eval()
    return model


@torch.no_grad()
def hit_ndcg(model: SASRec, ml: MovieLens, histories: dict, *, k: int = 10, negatives: int = 100,
             seed: int = 123, max_len: int = 50) -> tuple[float, float]:
    """HR@k and NDCG@k of the last item of each history, ranked against 100 random items
    the user never interacted with (the protocol of the SASRec paper)."""
    rng = np.random.default_rng(seed)
    model.eval()
    users = sorted(histories)
    hits = ndcg = 0.0
    for i in range(0, len(users), 256):
        us = users[i : i + 256]
        seq, _ = left_pad([histories[u][:-1] for u in us], max_len)
        cands = np.zeros((len(us), negatives + 1), dtype=np.int64)
        for r, u in enumerate(us):
            seen = set(ml.histories[u].tolist())
            cands[r, 0] = histories[u][-1]
            negs: list[int] = []
            while len(negs) < negatives:
                x = int(rng.integers(1, ml.n_items + 1))
                if x not in seen:
                    negs.append(x)
            cands[r, 1:] = negs
        scores = model.score(torch.from_numpy(seq), torch.from_numpy(cands)).numpy()
        rank = (scores[:, 1:] > scores[:, :1]).sum(1)  # 0 = the true item ranks first
        hits += float((rank < k).sum())
        ndcg += float((1.0 / np.log2(rank + 2.0) * (rank < k)).sum())
    return hits / len(users), ndcg / len(users)
