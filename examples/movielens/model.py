"""SASRec (Kang & McAuley 2018) built from torch.nn.MultiheadAttention: causal mask and
key padding mask, left padding, learned positional embeddings, point-wise feed-forward.

Left padding puts the most recent item in the last column whatever the history's length,
so positional embedding index L-1 always means "the last item", L-2 "the one before", ...:
position is recency, as the monitor's position profile reads it.
"""

from __future__ import annotations

import torch
from torch import nn


class SASRec(nn.Module):
    def __init__(self, n_items: int, hidden: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=1e-8) for _ in range(layers))
        self.attns = nn.ModuleList(nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
                                   for _ in range(layers))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=1e-8) for _ in range(layers))
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                          nn.Dropout(dropout))
            for _ in range(layers)
        )
        self.last_norm = nn.LayerNorm(hidden, eps=1e-8)
        # nn.Embedding's default N(0, 1), times sqrt(hidden) = 8 below, made every logit
        # item·state of the order of ±60 at the start: the BCE saturated and training
        # crawled. Xavier-normal as the reference implementations (std ≈ 0.034 for the
        # items, ≈ 0.27 once scaled; the positions ≈ 0.13).
        for emb in (self.item_emb, self.pos_emb):
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices -> (B, L, hidden) states."""
        B, L = seq.shape
        pad = seq == 0
        keep = (~pad)[..., None]
        x = self.item_emb(seq) * self.item_emb.embedding_dim ** 0.5
        # the last column is always position max_len - 1 (the most recent item)
        x = x + self.pos_emb(torch.arange(self.max_len - L, self.max_len, device=seq.device))[None]
        x = self.drop(x) * keep
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), diagonal=1)
        for norm, attn, fnorm, ffn in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns, strict=True):
            q = norm(x)
            out, _ = attn(q, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)
            # left padding + causal mask: padded query rows see no key and may come back NaN
            x = q + torch.nan_to_num(out)
            x = fnorm(x)
            x = x + ffn(x)
            x = x * keep
        return self.last_norm(x)

    def score(self, seq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of candidate items (B, C) for the next item after each sequence."""
        h = self.forward(seq)[:, -1]  # the prediction row: the most recent position
        return (self.item_emb(candidates) * h[:, None]).sum(-1)
