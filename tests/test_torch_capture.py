"""collectors.torch.AttentionCapture on CPU: the captured prediction rows equal attention
computed by hand from the modules' parameters, the models are left as they were, and the
rows (or their on-device summaries) reach a real store."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sqlalchemy import select  # noqa: E402
from test_collector_summaries import assert_same_store, second_store, stored  # noqa: E402
from torch import nn  # noqa: E402

from collectors import AttentionCollector, InvalidAttention  # noqa: E402
from collectors.torch import AttentionCapture, summarise, weights_id  # noqa: E402
from monitor import Store  # noqa: E402
from monitor import metrics as mx  # noqa: E402
from monitor import sketch as sk  # noqa: E402
from monitor.store import make_engine, tables  # noqa: E402

T0 = 1_800_000_000.0  # a minute boundary
D, HEADS, LAYERS = 64, 2, 2


# --- models ------------------------------------------------------------------------------
class SASRec(nn.Module):
    """SASRec as pmixer writes it: nn.MultiheadAttention called with its default
    need_weights=True, a causal mask, and (unlike pmixer) a key padding mask unless
    key_padding=False. Left padding with item 0."""

    def __init__(self, n_items=200, L=12, key_padding=True, batch_first=True):
        super().__init__()
        self.L, self.key_padding, self.batch_first = L, key_padding, batch_first
        self.item = nn.Embedding(n_items + 1, D, padding_idx=0)
        self.pos = nn.Embedding(L, D)
        self.ln = nn.ModuleList(nn.LayerNorm(D) for _ in range(LAYERS))
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(D, HEADS, dropout=0.2, batch_first=batch_first) for _ in range(LAYERS))
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, D)) for _ in range(LAYERS))
        self.out = nn.LayerNorm(D)

    def forward(self, seq):
        L = seq.shape[1]
        pad = seq == 0
        x = self.item(seq) * math.sqrt(D) + self.pos(torch.arange(L))
        # masked_fill, not a product: causal + left padding makes padded query rows NaN
        x = x.masked_fill(pad[..., None], 0.0)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
        for ln, attn, ffn in zip(self.ln, self.attn, self.ffn, strict=True):
            q = ln(x)
            qq, xx = (q, x) if self.batch_first else (q.transpose(0, 1), x.transpose(0, 1))
            a, _ = attn(qq, xx, xx, attn_mask=causal,
                        key_padding_mask=pad if self.key_padding else None)
            a = a if self.batch_first else a.transpose(0, 1)
            x = q + a
            x = x + ffn(x)
            x = x.masked_fill(pad[..., None], 0.0)
        return self.out(x)


def encoder() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(D, HEADS, 2 * D, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS).eval()


def sequences(rng, B, L, lengths=None, n_items=200, side="left"):
    lengths = rng.integers(1, L + 1, B) if lengths is None else np.asarray(lengths)
    seq = np.zeros((B, L), np.int64)
    for i, n in enumerate(lengths):
        ids = rng.integers(1, n_items + 1, n)
        if side == "left":
            seq[i, L - n :] = ids
        else:
            seq[i, :n] = ids
    return torch.as_tensor(seq), lengths


class ListCollector:
    """Stands in for AttentionCollector where only the calls matter."""

    weights_id = None
    strict = True
    sample_rate = 0.0
    tol = 1e-3

    def __init__(self):
        self.batches: list[tuple[np.ndarray, dict]] = []

    def observe_batch(self, weights, **kwargs):
        self.batches.append((np.array(weights, copy=True), kwargs))

    @staticmethod
    def clock():
        return T0 + 30


# --- attention by hand -------------------------------------------------------------------
def hand_weights(mha: nn.MultiheadAttention, query, key, attn_mask=None, key_padding_mask=None):
    """softmax(q k^T / sqrt(d) + masks), (B, H, L, S), float64, from the module's in_proj
    parameters; query/key are (B, L, E) (batch first)."""
    E, H = mha.embed_dim, mha.num_heads
    d = E // H
    wq, wk, _ = mha.in_proj_weight.double().chunk(3)
    bq, bk, _ = mha.in_proj_bias.double().chunk(3)
    B, L, S = query.shape[0], query.shape[1], key.shape[1]
    q = (query.double() @ wq.T + bq).view(B, L, H, d).transpose(1, 2)
    k = (key.double() @ wk.T + bk).view(B, S, H, d).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    for m, shape in ((attn_mask, (1, 1, L, S)), (key_padding_mask, (B, 1, 1, S))):
        if m is None:
            continue
        m = m.reshape(shape)
        s = s.masked_fill(m, float("-inf")) if m.dtype == torch.bool else s + m.double()
    return torch.softmax(s, -1)


class Recorder:
    """Records the (query, key, kwargs) of every call of the given attention modules."""

    def __init__(self, modules, batch_first=True):
        self.calls: list[tuple] = []
        self.handles = [m.register_forward_pre_hook(self._pre, with_kwargs=True) for m in modules]
        self.batch_first = batch_first

    def _pre(self, module, args, kwargs):
        q, k = args[0], args[1]
        if not self.batch_first:
            q, k = q.transpose(0, 1), k.transpose(0, 1)
        self.calls.append((module, q.detach().clone(), k.detach().clone(), dict(kwargs)))

    def remove(self):
        for h in self.handles:
            h.remove()


def prediction_rows(full: torch.Tensor, q: np.ndarray, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(B, H, L, S) full weights -> (B, H, S) rows at q, window [start, start+n) moved to the
    end and renormalised: what the capture hands the collector."""
    B, H, _, S = full.shape
    out = np.zeros((B, H, S))
    for i in range(B):
        row = full[i, :, q[i], start[i] : start[i] + n[i]].detach().numpy()
        out[i, :, S - n[i] :] = row / row.sum(-1, keepdims=True)
    return out


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs
             or m._forward_pre_hooks_with_kwargs or m._forward_hooks_always_called)
        for m in model.modules())


def fresh(model_fn, seed=0):
    torch.manual_seed(seed)
    return model_fn().eval()


# --- SASRec built from nn.MultiheadAttention --------------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
def test_sasrec_rows_equal_hand_computation(batch_first):
    model = fresh(lambda: SASRec(batch_first=batch_first))
    rng = np.random.default_rng(1)
    seq, lengths = sequences(rng, 16, model.L, lengths=[12, 1, 5] + list(rng.integers(1, 13, 13)))
    rec = Recorder(model.attn, batch_first=batch_first)
    with torch.no_grad():
        model(seq)
    rec.remove()
    col = ListCollector()
    cap = AttentionCapture(model, col)
    with torch.no_grad(), cap.batch(item_ids=seq, cohorts="web") as b:
        model(seq)
    cap.remove()

    L = model.L
    assert b.captured and b.weights.shape == (16, LAYERS, HEADS, L)
    np.testing.assert_array_equal(b.lengths, lengths)
    for layer, (mha, q, k, kw) in enumerate(rec.calls):
        full = hand_weights(mha, q, k, kw["attn_mask"], kw["key_padding_mask"])
        expect = prediction_rows(full, np.full(16, L - 1), L - lengths, lengths)
        np.testing.assert_allclose(b.weights[:, layer], expect, atol=1e-5)
    (w, kwargs), = col.batches
    assert kwargs["padding"] == "left" and kwargs["cohorts"] == "web"
    np.testing.assert_array_equal(kwargs["item_ids"], seq.numpy())
    np.testing.assert_array_equal(kwargs["lengths"], lengths)
    np.testing.assert_array_equal(w, b.weights)


def test_outputs_unchanged_and_every_hook_removed():
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(2), 8, model.L)
    with torch.no_grad():
        before = model(seq)
        # a caller that reads MHA's weights gets what it asked for: head-averaged (B, L, S)
        avg_before = model.attn[0](before, before, before)[1]
        cap = AttentionCapture(model, ListCollector(), sample_every=2)
        assert no_hooks(model)  # hooks="sampled": none until a sampled batch
        with cap.batch() as b:
            during = model(seq)
            assert not no_hooks(model)
            avg_during = model.attn[0](before, before, before)[1]
        assert b.captured and no_hooks(model)
        with cap.batch() as b2:  # not sampled: the model runs bare
            assert no_hooks(model)
            skipped = model(seq)
        assert not b2.sampled and not b2.captured
        cap.remove()
        after = model(seq)
    # pmixer's call asks for weights anyway: the same explicit softmax path, bit for bit
    assert torch.equal(during, before) and torch.equal(skipped, before) and torch.equal(after, before)
    assert avg_during.shape == avg_before.shape == (8, model.L, model.L)
    torch.testing.assert_close(avg_during, avg_before)
    assert no_hooks(model)
    assert cap.stats.batches == 2 and cap.stats.sampled == 1 and cap.stats.captured == 1


def test_nan_rows_of_an_empty_sequence_are_dropped():
    model = fresh(SASRec)
    seq, lengths = sequences(np.random.default_rng(3), 6, model.L, lengths=[4, 0, 12, 1, 0, 7])
    rec = Recorder(model.attn)
    with torch.no_grad():
        model(seq)
    rec.remove()
    mha, q, k, kw = rec.calls[0]
    full = hand_weights(mha, q, k, kw["attn_mask"], kw["key_padding_mask"])
    assert torch.isnan(full[0, :, 0]).all()  # causal + left padding: padded query rows are NaN
    assert torch.isnan(full[1, :, -1]).all()  # ... and an empty sequence's prediction row too
    col = ListCollector()
    cap = AttentionCapture(model, col)
    with torch.no_grad(), cap.batch(item_ids=seq, cohorts=list("abcdef"),
                                    request_ids=[f"r{i}" for i in range(6)]) as b:
        model(seq)
    np.testing.assert_array_equal(b.index, [0, 2, 3, 5])
    assert not np.isnan(b.weights).any()
    (_, kwargs), = col.batches
    assert kwargs["cohorts"] == list("acdf") and kwargs["request_ids"] == ["r0", "r2", "r3", "r5"]
    np.testing.assert_array_equal(kwargs["item_ids"], seq.numpy()[[0, 2, 3, 5]])
    assert cap.stats.empty == 2 and cap.stats.sequences == 4


def test_unmasked_padding_is_excluded_and_renormalised():
    model = fresh(lambda: SASRec(key_padding=False))  # pmixer: no key padding mask
    seq, lengths = sequences(np.random.default_rng(4), 10, model.L)
    rec = Recorder(model.attn)
    with torch.no_grad():
        model(seq)
    rec.remove()
    L = model.L
    col = ListCollector()
    cap = AttentionCapture(model, col)
    with torch.no_grad():
        with cap.batch(lengths=lengths) as told:
            model(seq)
        with cap.batch() as untold:
            model(seq)
        # the same, from the model's input: lengths_fn sees the root forward's arguments
        cap2 = AttentionCapture(model, ListCollector(),
                                lengths_fn=lambda args, kwargs: (args[0] != 0).sum(-1))
        with cap2.batch() as from_fn:
            model(seq)
    for layer, (mha, q, k, kw) in enumerate(rec.calls):
        full = hand_weights(mha, q, k, kw["attn_mask"])
        assert (full[lengths < L][:, :, -1, 0] > 1e-4).all()  # padding keys get mass
        expect = prediction_rows(full, np.full(10, L - 1), L - lengths, lengths)
        np.testing.assert_allclose(told.weights[:, layer], expect, atol=1e-5)
        np.testing.assert_allclose(from_fn.weights[:, layer], expect, atol=1e-5)
        everything = prediction_rows(full, np.full(10, L - 1), np.zeros(10, int), np.full(10, L))
        np.testing.assert_allclose(untold.weights[:, layer], everything, atol=1e-5)
    np.testing.assert_array_equal(told.lengths, lengths)
    np.testing.assert_array_equal(untold.lengths, np.full(10, L))


def test_right_padding_and_query_index():
    model = fresh(lambda: SASRec(key_padding=False))
    rng = np.random.default_rng(5)
    seq, lengths = sequences(rng, 8, model.L, side="right")
    rec = Recorder(model.attn)
    with torch.no_grad():
        model(seq)
    rec.remove()
    qi = rng.integers(0, lengths)  # some other query row per sequence
    col = ListCollector()
    cap = AttentionCapture(model, col, padding="right")
    with torch.no_grad():
        with cap.batch(item_ids=seq, lengths=lengths) as last:
            model(seq)
        with cap.batch(lengths=lengths, query_index=qi) as other:
            model(seq)
    for layer, (mha, q, k, kw) in enumerate(rec.calls):
        full = hand_weights(mha, q, k, kw["attn_mask"])
        start = np.zeros(8, int)
        np.testing.assert_allclose(last.weights[:, layer],
                                   prediction_rows(full, lengths - 1, start, lengths), atol=1e-5)
        np.testing.assert_allclose(other.weights[:, layer],
                                   prediction_rows(full, qi, start, lengths), atol=1e-5)
    # item ids are moved like the rows: most recent last
    items = col.batches[0][1]["item_ids"]
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(items[i, model.L - n :], seq.numpy()[i, :n])


@pytest.mark.parametrize("scalar", [np.int64(7), torch.tensor(7), -5])
def test_query_index_scalar_of_any_kind(scalar):
    # np.argmax and tensor indexing give numpy and 0-d tensor scalars, not ints
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(12), 5, model.L, lengths=[12] * 5)
    cap = AttentionCapture(model, ListCollector())
    with torch.no_grad():
        with cap.batch(query_index=[7] * 5) as listed:
            model(seq)
        with cap.batch(query_index=scalar) as b:
            model(seq)
    assert b.captured and cap.stats.errors == 0
    np.testing.assert_array_equal(b.weights, listed.weights)


# --- nn.TransformerEncoder ----------------------------------------------------------------
def count_fused(monkeypatch) -> Counter:
    calls: Counter = Counter()
    real = torch._transformer_encoder_layer_fwd

    def counted(*args, **kwargs):
        calls["fused"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counted)
    return calls


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("side", ["left", "right"])
def test_transformer_encoder(side, monkeypatch):
    enc = fresh(encoder)
    rng = np.random.default_rng(6)
    B, L = 10, 9
    lengths = np.r_[L, 1, rng.integers(1, L + 1, B - 2)]
    ar = np.arange(L)[None, :]
    pad = torch.as_tensor(ar < (L - lengths)[:, None] if side == "left" else ar >= lengths[:, None])
    x = torch.randn(B, L, D)
    fused = count_fused(monkeypatch)
    with torch.no_grad():
        bare = enc(x, src_key_padding_mask=pad)
        assert fused["fused"] == LAYERS  # the fused kernel serves the bare model
        # reference inputs of each self_attn (the padded path: the nested one's valid
        # positions are the same)
        enc.use_nested_tensor = False
        rec = Recorder([m.self_attn for m in enc.layers])
        enc(x, src_key_padding_mask=pad)
        rec.remove()
        enc.use_nested_tensor = True
        cap = AttentionCapture(enc, ListCollector(), sample_every=2)
        fused.clear()
        with cap.batch() as b:
            hooked = enc(x, src_key_padding_mask=pad)
        assert fused["fused"] == 0  # hooks attached: the slow path, per-head weights
        with cap.batch():
            unsampled = enc(x, src_key_padding_mask=pad)
        assert fused["fused"] == LAYERS  # not sampled: no hooks, the fused kernel again
        cap.remove()
        after = enc(x, src_key_padding_mask=pad)
    start = np.where(side == "left", L - lengths, 0)
    for layer, (mha, q, k, kw) in enumerate(rec.calls):
        full = hand_weights(mha, q, k, kw.get("attn_mask"), kw["key_padding_mask"])
        expect = prediction_rows(full, start + lengths - 1, start, lengths)
        np.testing.assert_allclose(b.weights[:, layer], expect, atol=1e-5)
    np.testing.assert_array_equal(b.lengths, lengths)
    valid = ~pad
    torch.testing.assert_close(hooked[valid], bare[valid], atol=1e-5, rtol=1e-5)
    assert torch.equal(unsampled, bare) and torch.equal(after, bare)
    assert no_hooks(enc)


def test_transformer_encoder_causal_drops_empty_rows():
    # right padding: with causal + left padding nn.TransformerEncoder itself turns NaN (the
    # padded query rows of layer 1 are NaN and become layer 2's keys); see the SASRec test
    enc = fresh(encoder)
    B, L = 5, 7
    lengths = np.array([7, 0, 3, 1, 0])
    pad = torch.as_tensor(np.arange(L)[None, :] >= lengths[:, None])
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    x = torch.randn(B, L, D)
    cap = AttentionCapture(enc, ListCollector())
    with torch.no_grad(), cap.batch() as b:
        enc(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
    np.testing.assert_array_equal(b.index, [0, 2, 3])
    np.testing.assert_array_equal(b.lengths, [7, 3, 1])
    assert np.isfinite(b.weights).all()
    np.testing.assert_allclose(b.weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(b.weights[2, :, :, -1], 1.0)  # one key: all the mass
    assert cap.stats.empty == 2


def test_need_weights_false_callers_get_their_output_bit_for_bit():
    # nn.TransformerEncoderLayer's default batch_first=False: self_attn(need_weights=False)
    # runs SDPA, whose fully masked query rows (causal + left padding) come out 0. Asking
    # for weights swaps in an explicit softmax, whose such rows are NaN: the NaN values then
    # reach every position of the next layer through its values (masked keys or not).
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, 2 * D, dropout=0.1)
    enc = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()
    B, L = 4, 6
    lengths = np.array([3, 6, 1, 4])
    pad = torch.as_tensor(np.arange(L)[None, :] < (L - lengths)[:, None])
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    x = torch.randn(L, B, D)
    rec = Recorder([m.self_attn for m in enc.layers], batch_first=False)
    with torch.no_grad():
        bare = enc(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
        rec.remove()
        assert torch.isfinite(bare).all()
        cap = AttentionCapture(enc, ListCollector())
        with cap.batch() as b:
            hooked = enc(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
        cap.remove()
    assert torch.equal(hooked, bare)
    assert b.captured and cap.stats.errors == 0
    np.testing.assert_array_equal(b.lengths, lengths)
    for layer_i, (mha, q, k, kw) in enumerate(rec.calls):
        full = hand_weights(mha, q, k, kw["attn_mask"], kw["key_padding_mask"])
        expect = prediction_rows(full, np.full(B, L - 1), L - lengths, lengths)
        np.testing.assert_allclose(b.weights[:, layer_i], expect, atol=1e-5)
    assert no_hooks(enc)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_nested_path_rows_keep_the_input_width():
    # right padding and a key padding mask alone: nn.TransformerEncoder runs its layers on a
    # nested tensor, masks gone, weights cut to the longest sequence (5 of 9 here)
    enc = fresh(encoder)
    B, L = 4, 9
    lengths = np.array([5, 2, 1, 4])
    pad = torch.as_tensor(np.arange(L)[None, :] >= lengths[:, None])
    x = torch.randn(B, L, D)
    items = np.arange(B * L).reshape(B, L)
    col = ListCollector()
    cap = AttentionCapture(enc, col)
    with torch.no_grad():
        with cap.batch(item_ids=items) as b:
            enc(x, src_key_padding_mask=pad)
        enc.use_nested_tensor = False
        with cap.batch(item_ids=items) as padded:
            enc(x, src_key_padding_mask=pad)
    assert b.weights.shape == padded.weights.shape == (B, LAYERS, HEADS, L)
    np.testing.assert_allclose(b.weights, padded.weights, atol=1e-5)
    np.testing.assert_array_equal(b.lengths, lengths)
    got = col.batches[0][1]["item_ids"]
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(got[i, L - n :], items[i, :n])


# --- Hugging Face --------------------------------------------------------------------------
def bert(attn_implementation="eager"):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=64, max_position_embeddings=32, attn_implementation=attn_implementation)
    return transformers.BertModel(cfg).eval()


def bert_hand_rows(model, ids, mask):
    """Each layer's (B, H, L, L) weights from its query/key projections."""
    inputs = []
    handles = [layer.attention.self.register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append((m, args[0] if args else kwargs["hidden_states"])),
        with_kwargs=True) for layer in model.encoder.layer]
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in handles:
        h.remove()
    out = []
    for m, hs in inputs:
        B, L, _ = hs.shape
        H, d = m.num_attention_heads, m.attention_head_size
        q = m.query(hs).double().view(B, L, H, d).transpose(1, 2)
        k = m.key(hs).double().view(B, L, H, d).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(d)
        s = s.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        out.append(torch.softmax(s, -1))
    return out


def test_bert_eager_rows_outputs_and_hooks():
    model = bert()
    rng = np.random.default_rng(7)
    B, L = 6, 10
    ids, lengths = sequences(rng, B, L, n_items=59, side="right")
    mask = (ids != 0).long()
    mask_pos = rng.integers(0, lengths)  # BERT4Rec: the [MASK] to predict
    with torch.no_grad():
        bare = model(ids, attention_mask=mask)
        bare_tuple = model(ids, attention_mask=mask, return_dict=False)
    full = bert_hand_rows(model, ids, mask)
    assert no_hooks(model)
    col = ListCollector()
    cap = AttentionCapture(model, col)
    with torch.no_grad():
        with cap.batch(item_ids=ids) as last:
            out = model(ids, attention_mask=mask)
        with cap.batch(query_index=mask_pos) as masked:
            out_tuple = model(ids, attention_mask=mask, return_dict=False)
        with cap.batch() as asked:
            out_attn = model(ids, attention_mask=mask, output_attentions=True)
    cap.remove()
    with torch.no_grad():
        after = model(ids, attention_mask=mask)
    start = np.zeros(B, int)
    for layer, f in enumerate(full):
        np.testing.assert_allclose(last.weights[:, layer],
                                   prediction_rows(f, lengths - 1, start, lengths), atol=1e-5)
        np.testing.assert_allclose(masked.weights[:, layer],
                                   prediction_rows(f, mask_pos, start, lengths), atol=1e-5)
    assert asked.captured and len(out_attn.attentions) == LAYERS  # the caller's request stands
    # outputs: the same fields, the same values; tuples stay tuples
    assert list(out.keys()) == list(bare.keys()) == ["last_hidden_state", "pooler_output"]
    torch.testing.assert_close(out.last_hidden_state, bare.last_hidden_state, atol=1e-6, rtol=1e-6)
    assert isinstance(out_tuple, tuple) and len(out_tuple) == len(bare_tuple)
    assert torch.equal(after.last_hidden_state, bare.last_hidden_state)
    # transformers 5 installs capture hooks for output_attentions: gone again with ours
    assert no_hooks(model)
    assert not any("_output_capturing_hooks_installed" in m.__dict__ for m in model.modules())
    np.testing.assert_array_equal(col.batches[0][1]["item_ids"][:, -1],
                                  ids.numpy()[np.arange(B), lengths - 1])


def test_bert_sdpa_is_refused():
    with pytest.raises(ValueError, match="eager"):
        AttentionCapture(bert("sdpa"), ListCollector())


# --- sampling and hook modes ----------------------------------------------------------------
def test_sampling_every_and_rate():
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(8), 4, model.L)
    cap = AttentionCapture(model, ListCollector(), sample_every=3)
    with torch.no_grad():
        got = []
        for _ in range(7):
            with cap.batch() as b:
                model(seq)
            got.append(b.captured)
    assert got == [True, False, False, True, False, False, True]
    s = cap.stats
    assert (s.batches, s.sampled, s.captured, s.missed) == (7, 3, 3, 0)
    cap = AttentionCapture(model, ListCollector(), sample_rate=0.25, seed=1)
    for _ in range(400):
        with cap.batch():
            pass  # no forward: sampled batches count as missed
    assert 60 < cap.stats.sampled < 140 and cap.stats.missed == cap.stats.sampled
    with pytest.raises(ValueError):
        AttentionCapture(model, ListCollector(), sample_every=2, sample_rate=0.5)


def test_always_mode_captures_plain_forwards_and_training_is_skipped():
    model = fresh(SASRec)
    seq, lengths = sequences(np.random.default_rng(9), 5, model.L)
    col = ListCollector()
    with AttentionCapture(model, col, hooks="always", sample_every=2) as cap:
        assert not no_hooks(model)
        with torch.no_grad():
            for _ in range(4):
                model(seq)
            with cap.batch(cohorts="app"):  # metadata for the next forward
                model(seq)
        model.train()
        model(seq)  # dropout on the weights: not captured
        model.eval()
    assert no_hooks(model)
    assert len(col.batches) == 3 and col.batches[-1][1]["cohorts"] == "app"
    np.testing.assert_array_equal(col.batches[0][1]["lengths"], lengths)


def test_attention_modules_in_training_mode_are_skipped_under_an_eval_root():
    # the root in eval mode, its attention in train mode (a wrapper whose backbone was put
    # back in training): the weights come after dropout, renormalised they passed as rows
    # and a row whose window dropout emptied reached the collector as NaN
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(10), 16, model.L)
    col = ListCollector()
    cap = AttentionCapture(model, col)
    for attn in model.attn:
        attn.train()
    with torch.no_grad(), cap.batch() as b:
        model(seq)
    assert not b.captured and not col.batches and cap.stats.missed == 1
    model.attn[0].dropout = 0.0  # no dropout on the weights: they are the model's
    model.attn[1].eval()
    with torch.no_grad(), cap.batch() as b:
        model(seq)
    assert b.captured and cap.stats.missed == 1


def test_a_hugging_face_model_in_training_mode_is_skipped_under_an_eval_root():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = bert()

        def forward(self, ids, mask):
            return self.backbone(ids, attention_mask=mask).last_hidden_state

    model = Wrapper().eval()
    ids, _ = sequences(np.random.default_rng(11), 4, 8, n_items=59, side="right")
    col = ListCollector()
    cap = AttentionCapture(model, col)
    model.backbone.train()
    with torch.no_grad(), cap.batch() as b:
        model(ids, (ids != 0).long())
    assert not b.captured and not col.batches and cap.stats.missed == 1
    cap.remove()


def test_a_second_forward_in_one_batch_is_not_captured_twice():
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(10), 3, model.L)
    col = ListCollector()
    cap = AttentionCapture(model, col)
    with torch.no_grad(), cap.batch() as b:
        model(seq)
        model(seq)
    assert b.captured and len(col.batches) == 1 and b.weights.shape[1] == LAYERS


# --- weights_id -------------------------------------------------------------------------------
def test_weights_id_is_stable_and_follows_the_parameters():
    model = fresh(SASRec)
    a = weights_id(model)
    assert a == weights_id(model) == weights_id(copy.deepcopy(model))
    assert a.startswith("sha256:") and len(a) == len("sha256:") + 16
    assert a == weights_id(fresh(SASRec))  # same seed, same weights
    with torch.no_grad():
        model.attn[1].in_proj_weight[0, 0] += 1e-3
    assert weights_id(model) != a
    col = ListCollector()
    cap = AttentionCapture(model, col)
    assert col.weights_id == cap.weights_id == weights_id(model)
    col2 = ListCollector()
    col2.weights_id = "set-by-deploy"
    AttentionCapture(model, col2).remove()
    assert col2.weights_id == "set-by-deploy"
    col3 = ListCollector()
    assert AttentionCapture(model, col3, weights_id=False).weights_id is None and col3.weights_id is None


# --- a real collector and store -------------------------------------------------------------
def run_batches(model, collector, n_batches=3, on_device=False, seed=11):
    rng = np.random.default_rng(seed)
    handles = []
    cap = AttentionCapture(model, collector, on_device=on_device, seed=0)
    with torch.no_grad():
        for k in range(n_batches):
            seq, _ = sequences(rng, 40, model.L, lengths=np.r_[0, rng.integers(1, model.L + 1, 39)])
            cohorts = ["web" if i % 3 else "app" for i in range(40)]
            brand = np.where(seq.numpy() % 2 == 0, "acme", "other")
            with cap.batch(item_ids=seq, cohorts=cohorts, attributes={"brand": brand},
                           timestamps=T0 + 5 + k) as b:
                model(seq)
            handles.append(b)
    cap.remove()
    return cap, handles


def test_rows_reach_the_store(sqlite_url):
    model = fresh(SASRec)
    with AttentionCollector(sqlite_url, model="sasrec", version="v1", sample_rate=0.0,
                            clock=lambda: T0 + 3600, strict=True) as c:
        cap, handles = run_batches(model, c)
    assert c.stats.accepted == sum(len(b.index) for b in handles) == 3 * 39
    W = np.concatenate([b.weights for b in handles])
    n = np.concatenate([b.lengths for b in handles])
    df = Store(sqlite_url).summary("sasrec", by=["layer", "head"])
    for layer in range(LAYERS):
        for head in range(HEADS):
            expect = mx.compute(W[:, layer, head].astype(np.float64), n).mean(axis=0)
            row = df[(df["layer"] == str(layer)) & (df["head"] == str(head))].iloc[0]
            assert row["n"] == len(W)
            np.testing.assert_allclose(row[list(mx.METRICS)].to_numpy(float), expect, rtol=1e-5, atol=1e-6)
        stars = Store(sqlite_url).summary("sasrec", by=["layer"], head="*")
        star = stars[stars["layer"] == str(layer)].iloc[0]
        mean = W[:, layer].mean(axis=1).astype(np.float64)
        np.testing.assert_allclose(star["entropy_norm"], mx.compute(mean, n)[:, 1].mean(), rtol=1e-5)
        np.testing.assert_allclose(star["head_diversity"], mx.head_diversity(W[:, layer], n).mean(), rtol=1e-5)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(select(tables.deployments.c.weights_id)).scalar_one() == cap.weights_id
    engine.dispose()


# --- on-device summaries ----------------------------------------------------------------------
def left_padded(rng, B, ly, h, L, lengths):
    w = rng.dirichlet(np.ones(L) * 0.3, size=(B, ly, h)).astype(np.float32)
    for i, n in enumerate(lengths):
        w[i, ..., : L - n] = 0
        w[i, ..., L - n :] /= w[i, ..., L - n :].sum(-1, keepdims=True)
    return w


@pytest.mark.parametrize("L", [7, 50, 300])
def test_summarise_equals_monitor_metrics(L):
    rng = np.random.default_rng(L)
    B, ly, h = 64, 2, 3
    lengths = np.r_[1, 2, 3, L, rng.integers(1, L + 1, B - 4)]
    w = left_padded(rng, B, ly, h, L, lengths)
    w[5, 1, 2] = 0
    w[5, 1, 2, -1] = 1.0  # a one-hot row
    groups = rng.integers(0, 3, B)
    values, codes, pos = summarise(torch.as_tensor(w), torch.as_tensor(lengths),
                                   torch.as_tensor(groups), 3)
    values, codes, pos = values.numpy(), codes.numpy(), pos.numpy()
    assert values.shape == (B, ly, h + 1, len(mx.ALL_METRICS)) and not codes.any()
    n = len(mx.METRICS)
    for layer in range(ly):
        for head in range(h):
            expect = mx.compute(w[:, layer, head].astype(np.float64), lengths)
            np.testing.assert_allclose(values[:, layer, head, :n], expect, atol=1e-5, rtol=1e-6)
            assert np.isnan(values[:, layer, head, n]).all()
        mean = w[:, layer].mean(axis=1).astype(np.float64)
        np.testing.assert_allclose(values[:, layer, h, :n], mx.compute(mean, lengths), atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(values[:, layer, h, n], mx.head_diversity(w[:, layer], lengths), atol=1e-5)
    rows = np.concatenate([w, w.mean(2, keepdims=True)], 2).astype(np.float64)[..., ::-1][..., : sk.POSITIONS]
    for g in range(3):
        np.testing.assert_allclose(pos[g], rows[groups == g].sum(0), atol=1e-5)


def test_summarise_codes_follow_validate():
    rng = np.random.default_rng(12)
    B, ly, h, L = 6, 2, 2, 8
    lengths = np.array([8, 0, 5, 5, 3, 8])
    w = left_padded(rng, B, ly, h, L, lengths)
    w[1] = 0
    w[2, 0, 1, -1] = np.nan
    w[3, 1, 0, -2] = -0.1
    w[4, 1, 1, -1] += 0.5
    w[5, 0, 0, -1] = np.nan
    w[5, 1, 1, -1] = -0.2  # nan in one row, negative in another: the worse code wins
    expect = mx.validate(w.reshape(-1, L), np.repeat(lengths, ly * h)).reshape(B, -1).max(1)
    expect[lengths == 0] = mx.REASONS.index("empty")
    _, codes, pos = summarise(torch.as_tensor(w), torch.as_tensor(lengths))
    np.testing.assert_array_equal(codes.numpy(), expect)
    ok = expect == 0
    rows = np.concatenate([w, w.mean(2, keepdims=True)], 2)[ok][..., ::-1].sum(0)
    np.testing.assert_allclose(pos.numpy()[0], rows, atol=1e-6)


# --- the on-device path through the real collector --------------------------------------------
B_SERVE, POISON, NO_COHORT = 40, 3, 5
KINDS = ["sasrec", "encoder-left", "encoder-right"]


def nan_row(i):
    """A forward hook on SASRec's item embedding: sequence i's rows come back NaN."""
    def hook(module, args, out):
        out[i] = float("nan")
    return hook


def serve(kind, collector, *, on_device, n_batches=3, seed=11):
    """Sampled batches of one model through AttentionCapture into `collector`.

    Batch 0: one cohort, one timestamp (a single group). The others: two cohorts and one
    None (bad_label), per-request timestamps across a minute boundary. Every batch: item
    ids, a brand attribute, request ids, one NaN sequence (nan). SASRec (left padding, a
    key padding mask) also gets an empty sequence, which the capture drops;
    nn.TransformerEncoder runs left padding on its padded path and right padding on its
    nested one."""
    rng = np.random.default_rng(seed)
    B = B_SERVE
    if kind == "sasrec":
        model, L = fresh(SASRec), 12
    else:
        model, L = fresh(encoder), 9
    cap = AttentionCapture(model, collector, on_device=on_device, seed=0)
    handles = []
    with torch.no_grad():
        for k in range(n_batches):
            if k == 0:
                cohorts, ts = "web", T0 + 5
            else:
                cohorts = ["web" if i % 3 else "app" for i in range(B)]
                cohorts[NO_COHORT] = None
                ts = T0 + 40 + 7 * k + 0.5 * np.arange(B)
            if kind == "sasrec":
                seq, _ = sequences(rng, B, L, lengths=np.r_[0, rng.integers(1, L + 1, B - 1)])
                items, args, kwargs = seq.numpy(), (seq,), {}
                hooks = [model.item.register_forward_hook(nan_row(POISON))]
            else:
                lengths = rng.integers(1, L + 1, B)
                ar = np.arange(L)[None, :]
                pad = ar < (L - lengths)[:, None] if kind == "encoder-left" else ar >= lengths[:, None]
                items = np.where(pad, 0, rng.integers(1, 201, (B, L)))
                x = torch.as_tensor(rng.standard_normal((B, L, D)), dtype=torch.float32)
                x[POISON] = float("nan")
                args, kwargs, hooks = (x,), {"src_key_padding_mask": torch.as_tensor(pad)}, []
            brand = np.where(items % 2 == 0, "acme", "other")
            with cap.batch(item_ids=items, cohorts=cohorts, attributes={"brand": brand},
                           request_ids=[f"{k}-{i}" for i in range(B)], timestamps=ts) as b:
                model(*args, **kwargs)
            for hk in hooks:
                hk.remove()
            assert b.captured
            handles.append(b)
    cap.remove()
    return cap, handles


@pytest.fixture
def second_url(tmp_path, sqlite_url):
    return second_store(tmp_path)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("kind", KINDS)
def test_on_device_path_writes_what_the_copy_path_writes(kind, sqlite_url, second_url):
    kw = dict(model="sasrec", version="v1", sample_rate=1.0, clock=lambda: T0 + 3600)
    with AttentionCollector(sqlite_url, **kw) as c:
        _, copied = serve(kind, c, on_device=False)
    with AttentionCollector(second_url, **kw) as d:
        cap, pending = serve(kind, d, on_device=True)
    empty = 3 if kind == "sasrec" else 0  # SASRec's empty sequences: dropped by the capture
    assert cap.stats.sequences == 3 * B_SERVE - empty and cap.stats.empty == empty
    assert c.stats == d.stats
    assert d.stats.accepted == 3 * B_SERVE - empty - 3 - 2  # less a NaN row a batch, two None cohorts
    assert d.stats.rejected == {"nan": 3, "bad_label": 2}
    assert len(stored(second_url)[1]) == d.stats.accepted  # sample_rate=1: an event each
    # the summaries of each batch are those of its rows
    for b_copy, b_dev in zip(copied, pending, strict=True):
        s = b_dev.summaries.resolve()
        np.testing.assert_array_equal(s.lengths, b_copy.lengths)
        ok = s.codes == 0
        assert not ok.all()  # the NaN row
        for layer in range(LAYERS):
            for head in range(HEADS):
                expect = mx.compute(b_copy.weights[ok, layer, head].astype(np.float64), b_copy.lengths[ok])
                np.testing.assert_allclose(s.values[ok, layer, head, : len(mx.METRICS)], expect,
                                           atol=1e-5, rtol=1e-6)
    assert_same_store(sqlite_url, second_url)
    # and the roll-ups read back alike
    by = ["cohort", "layer", "head"]
    a, b = Store(sqlite_url).summary("sasrec", by=by), Store(second_url).summary("sasrec", by=by)
    assert a[by + ["n", "rejected"]].equals(b[by + ["n", "rejected"]])
    np.testing.assert_allclose(a[list(mx.ALL_METRICS)].to_numpy(float),
                               b[list(mx.ALL_METRICS)].to_numpy(float), rtol=1e-5, atol=1e-6)


def test_on_device_bad_values_are_rejected_as_on_the_copy_path(sqlite_url, second_url):
    # an attribute value the store cannot hold (NUL): the collector rejects the request
    # (bad_value) after the device summed its rows; every count and metric agrees, the
    # position profile of its group keeps it (see collectors.torch)
    model = fresh(SASRec)
    rng = np.random.default_rng(4)
    seq, _ = sequences(rng, 8, model.L, lengths=[12, 5, 7, 3, 12, 1, 9, 4])
    brand = np.where(seq.numpy() % 2 == 0, "acme", "other")
    brand[2, -1] = "a\x00b"
    stats = []
    for url, on_device in ((sqlite_url, False), (second_url, True)):
        with AttentionCollector(url, model="sasrec", version="v1", sample_rate=0.0,
                                clock=lambda: T0 + 3600) as c:
            cap = AttentionCapture(model, c, on_device=on_device)
            with torch.no_grad(), cap.batch(item_ids=seq, attributes={"brand": brand}, timestamps=T0 + 5):
                model(seq)
        stats.append(c.stats)
    assert stats[0] == stats[1] and stats[1].rejected == {"bad_value": 1} and stats[1].accepted == 7
    assert_same_store(sqlite_url, second_url, pos=False)
    a, b = stored(sqlite_url)[0], stored(second_url)[0]
    assert not any(np.allclose(a[key].pos, b[key].pos, atol=1e-5) for key in a)  # the one group


def test_on_device_full_queue_drops_the_newest_and_counts(sqlite_url):
    model = fresh(SASRec)
    c = AttentionCollector(sqlite_url, model="sasrec", version="v1", sample_rate=0.0, queue_size=1,
                           clock=lambda: T0 + 3600)
    c._start = lambda: None  # keep the thread from draining: the queue stays full
    cap = AttentionCapture(model, c, on_device=True)
    rng = np.random.default_rng(8)
    with torch.no_grad():
        for _ in range(3):
            seq, _ = sequences(rng, 8, model.L)
            with cap.batch(item_ids=seq, timestamps=T0 + 5) as b:
                model(seq)
            assert b.captured
    assert len(c._q) == 1 and c.stats.dropped == 16
    assert cap.stats.sequences == 0  # nothing resolved on the serving thread
    del c._start
    c.close()
    assert c.stats.accepted == 8 and c.stats.dropped == 16 and cap.stats.sequences == 8
    aggs, _, health = stored(sqlite_url)
    assert health["dropped"] == 16 and health["accepted"] == 8
    assert sum(s.n for (_, cohort, layer, head), s in aggs.items() if (cohort, layer, head) == ("*", "0", "*")) == 8


@pytest.mark.parametrize("on_device", [False, True])
def test_strict_raises_the_first_invalid_row_on_both_paths(on_device, sqlite_url):
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(5), 8, model.L)
    hook = model.item.register_forward_hook(nan_row(POISON))
    with AttentionCollector(sqlite_url, model="sasrec", version="v1", sample_rate=0.0, strict=True,
                            clock=lambda: T0 + 3600) as c:
        cap = AttentionCapture(model, c, on_device=on_device)
        with pytest.raises(InvalidAttention) as err, torch.no_grad():
            with cap.batch(item_ids=seq, timestamps=T0 + 5):
                model(seq)
    hook.remove()
    assert (err.value.reason, err.value.row) == ("nan", POISON)
    assert c.stats.accepted == 7 and c.stats.rejected == {"nan": 1}


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_on_device_summaries_in_float32_ignore_autocast(low):
    # the capture's hooks run inside the caller's autocast: summarise's matmuls (mass,
    # top3, gini, distance, recency5) ran in bfloat16 there, up to 0.16 off
    class Pending(ListCollector):
        def observe_summaries(self, pending):
            self.summaries = pending.resolve()

    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(12), 32, model.L)
    rows, col = ListCollector(), Pending()
    for c, on_device in ((rows, False), (col, True)):
        cap = AttentionCapture(model, c, on_device=on_device, summary_dtype=torch.float32)
        with torch.no_grad(), torch.autocast("cpu", dtype=low), cap.batch():
            model(seq)
        cap.remove()
    (w, kw), = rows.batches
    values, codes, pos = summarise(torch.as_tensor(w), torch.as_tensor(kw["lengths"]), dtype=torch.float32)
    np.testing.assert_allclose(col.summaries.values, values.double().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(col.summaries.pos, pos.double().numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int64])
def test_a_summary_dtype_other_than_float32_or_float64_is_refused_at_construction(dtype):
    # bfloat16 failed every sampled batch where resolve() read the buffer (numpy has no
    # bfloat16), float16 under autocast in torch.cat; lengths beyond 2048 are not float16
    class Pending(ListCollector):
        def observe_summaries(self, pending):
            pass

    with pytest.raises(ValueError, match="summary_dtype"):
        AttentionCapture(fresh(SASRec), Pending(), on_device=True, summary_dtype=dtype)


def test_on_device_needs_observe_summaries():
    with pytest.raises(TypeError, match="observe_summaries"):
        AttentionCapture(fresh(SASRec), ListCollector(), on_device=True)


# --- the serving path: whatever happens, the caller's forward runs as without capture ------
class ByKeyword(nn.Module):
    """Calls its nn.MultiheadAttention as attn(query=, key=, value=): legal, and some models do."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, **kwargs):
        return self.mha(query=query, key=key, value=value, **kwargs)


def test_attention_called_by_keyword_is_captured():
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(20), 6, model.L)
    cap = AttentionCapture(model, ListCollector())
    with torch.no_grad(), cap.batch() as by_position:
        before = model(seq)
    cap.remove()
    model.attn = nn.ModuleList(ByKeyword(a) for a in model.attn)
    cap = AttentionCapture(model, ListCollector())
    with torch.no_grad(), cap.batch() as by_keyword:
        after = model(seq)
    assert torch.equal(after, before) and by_keyword.captured
    np.testing.assert_array_equal(by_keyword.weights, by_position.weights)


def test_a_failing_pre_hook_leaves_the_call_alone(monkeypatch):
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(21), 6, model.L)
    with torch.no_grad():
        before = model(seq)
    col = ListCollector()
    col.strict = False
    cap = AttentionCapture(model, col)

    def broken(*args):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(cap, "_mha_call", broken)
    with torch.no_grad(), cap.batch() as b:
        during = model(seq)
    assert torch.equal(during, before) and not b.captured and not col.batches
    assert cap.stats.errors == 1 and no_hooks(model)


def test_modules_other_than_multihead_attention_are_refused_at_construction():
    model = fresh(SASRec)
    # its forward takes no need_weights=: every sampled forward would raise TypeError
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        AttentionCapture(model, ListCollector(), modules=[model.attn[0], model.ffn[0]])
    assert no_hooks(model)


def test_a_compiled_model_is_refused_for_sampled_hooks():
    # the review measured recompiles of 0.3-4 s on the serving thread per sampled batch,
    # then dynamo's recompile limit, after which 39 of 40 sampled batches were missed
    model = fresh(SASRec)
    compiled = torch.compile(model)  # compiles at its first call, not here
    with pytest.raises(ValueError, match="torch.compile'd model"):
        AttentionCapture(compiled, ListCollector())
    assert no_hooks(model)
    AttentionCapture(compiled, ListCollector(), hooks="always").remove()
    assert no_hooks(model)


def test_a_compiled_submodule_is_refused_for_sampled_hooks():
    # torch.compile on the encoder only, the usual way to keep the embedding lookups eager:
    # measured, the first sampled batch compiled with the hooks (1 s) and every later
    # sampled batch ran the cached graph, its hooks silently skipped (all missed)
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.compile(fresh(SASRec))

        def forward(self, seq):
            return self.body(seq)

    model = Wrap().eval()
    with pytest.raises(ValueError, match="torch.compile'd model"):
        AttentionCapture(model, ListCollector())
    assert no_hooks(model)
    AttentionCapture(model, ListCollector(), hooks="always").remove()
    assert no_hooks(model)

def test_a_repeated_failure_is_counted_every_time_and_logged_once(monkeypatch, caplog):
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(22), 6, model.L)
    col = ListCollector()
    col.strict = False
    cap = AttentionCapture(model, col)
    monkeypatch.setattr(cap, "_rows", lambda st, w: torch.zeros(()).view(7))  # raises every time
    with torch.no_grad():
        for _ in range(50):
            with cap.batch():
                model(seq)
    assert cap.stats.errors == 50 and cap.stats.captured == 0
    logged = [r for r in caplog.records if r.name == "attnmon.capture"]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_a_closed_collector_is_left_alone(sqlite_url):
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(23), 6, model.L)
    col = AttentionCollector(sqlite_url, model="sasrec", version="v1")
    cap = AttentionCapture(model, col)
    with torch.no_grad():
        before = model(seq)
        with cap.batch(item_ids=seq) as b:
            model(seq)
        assert b.captured
        col.close()
        for _ in range(5):  # the model still serves; nothing is queued where nothing reads
            with cap.batch(item_ids=seq) as b:
                assert no_hooks(model)
                assert torch.equal(model(seq), before)
            assert not b.sampled
    assert col.stats.queue_depth == 0 and cap.stats.sampled == 1


@pytest.mark.parametrize("on_device", [False, True])
def test_an_empty_batch_is_no_error(on_device, sqlite_url):
    model = fresh(SASRec)
    seq = torch.zeros((0, model.L), dtype=torch.long)
    with AttentionCollector(sqlite_url, model="sasrec", version="v1") as col:
        cap = AttentionCapture(model, col, on_device=on_device)
        with torch.no_grad(), cap.batch(item_ids=seq) as b:
            assert model(seq).shape == (0, model.L, D)
    assert not b.captured and cap.stats.errors == 0 and col.stats.observed == 0


def test_on_device_summaries_through_a_process_collector(sqlite_url, second_url):
    # the sender thread waits for the device's copy and the worker takes the summaries:
    # what lands is what the in-process collector writes
    from collectors import ProcessCollector

    kw = dict(model="sasrec", version="v1", sample_rate=1.0)
    with AttentionCollector(sqlite_url, **kw) as c:
        serve("sasrec", c, on_device=True)
    with ProcessCollector(second_url, **kw) as p:
        serve("sasrec", p, on_device=True)
    assert p.stats.accepted == c.stats.accepted > 0 and p.stats.rejected == c.stats.rejected
    assert p.stats.written == c.stats.written
    assert_same_store(sqlite_url, second_url)


def test_weights_are_recomputed_only_where_a_query_row_may_have_no_key():
    # a third more work per sampled batch: only for calls whose masks leave a row empty
    from collectors.torch import _may_mask_a_whole_row

    L, B = 4, 2
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    left = torch.tensor([[True, True, False, False], [False, False, False, False]])
    right = torch.tensor([[False, False, True, True], [False, False, False, False]])
    assert _may_mask_a_whole_row({"attn_mask": causal, "key_padding_mask": left})  # rows 0, 1 of b0
    assert not _may_mask_a_whole_row({"attn_mask": causal, "key_padding_mask": right})
    assert not _may_mask_a_whole_row({"attn_mask": causal})
    assert not _may_mask_a_whole_row({"key_padding_mask": right})
    assert not _may_mask_a_whole_row({})
    neg = torch.zeros(L, L).masked_fill(causal, float("-inf"))
    assert _may_mask_a_whole_row({"attn_mask": neg, "key_padding_mask": left.float().masked_fill(left, float("-inf"))})
    assert not _may_mask_a_whole_row({"attn_mask": neg, "key_padding_mask": right})
    assert _may_mask_a_whole_row({"is_causal": True})  # PyTorch's own causal mask: not seen here
    assert _may_mask_a_whole_row({"attn_mask": causal.expand(B, L, L)})  # other shapes: assume so


def test_after_remove_batches_are_neither_sampled_nor_counted():
    model = fresh(SASRec)
    seq, _ = sequences(np.random.default_rng(3), 4, model.L)
    cap = AttentionCapture(model, ListCollector(), sample_every=1)
    with torch.no_grad(), cap.batch() as b:
        model(seq)
    assert b.captured and (cap.stats.batches, cap.stats.sampled) == (1, 1)
    cap.remove()
    with torch.no_grad(), cap.batch() as b:
        model(seq)
    assert not b.sampled and not b.captured
    assert (cap.stats.batches, cap.stats.sampled, cap.stats.missed) == (1, 1, 0)
    assert no_hooks(model)


def test_counts_and_sampling_hold_under_concurrent_serving_threads():
    import sys
    import threading

    model = fresh(SASRec)
    cap = AttentionCapture(model, ListCollector(), sample_every=7)
    calls, threads = 3000, 8

    def serve() -> None:
        for _ in range(calls):
            with cap.batch():
                pass  # (no forward: a sampled batch is counted as missed)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between the reads and writes of a count
    try:
        pool = [threading.Thread(target=serve) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        sys.setswitchinterval(old)
        cap.remove()
    n = calls * threads
    s = cap.stats
    assert (s.batches, s.sampled, s.missed) == (n, -(-n // 7), -(-n // 7))


@pytest.mark.parametrize("on_device", [False, True])
def test_hash_item_ids_hashes_the_captured_ids_in_the_top_k_and_the_events(sqlite_url, second_url, on_device):
    from collectors.itemhash import item_hash

    kw = dict(model="sasrec", version="v1", sample_rate=1.0, clock=lambda: T0 + 3600)
    with AttentionCollector(sqlite_url, **kw) as c:
        serve("sasrec", c, on_device=on_device)
    with AttentionCollector(second_url, hash_item_ids=True, hash_key="k", **kw) as h:
        serve("sasrec", h, on_device=on_device)

    def hashed(x):
        return None if x is None else item_hash(b"k", str(x))

    plain, got = Store(sqlite_url).sketches("sasrec", by=["layer"]), Store(second_url).sketches("sasrec", by=["layer"])
    assert plain.keys() == got.keys() and all(s.items is not None for s in plain.values())
    for key, s in plain.items():
        # the same items, hashed; counts to float32 rounding (the flushes of two runs can
        # split the same requests differently, and sum them in another order)
        want = dict(zip([hashed(k) for k in s.items.keys], s.items.counts, strict=True))
        have = dict(zip(got[key].items.keys, got[key].items.counts, strict=True))
        assert have.keys() == want.keys()
        np.testing.assert_allclose([have[k] for k in want], list(want.values()), rtol=1e-6)
    ev = tables.attention_events
    q = select(ev.c.request_id, ev.c.item_ids).order_by(ev.c.request_id)
    rows = {}
    for url in (sqlite_url, second_url):
        engine = make_engine(url)
        with engine.connect() as conn:
            rows[url] = conn.execute(q).all()
        engine.dispose()
    assert len(rows[sqlite_url]) == h.stats.accepted > 0
    assert [(r, [hashed(x) for x in ids]) for r, ids in rows[sqlite_url]] == [tuple(r) for r in rows[second_url]]
