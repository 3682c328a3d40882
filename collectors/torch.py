"""Capture the attention of PyTorch models for an AttentionCollector, without changing them.

    from collectors import AttentionCollector
    from collectors.torch import AttentionCapture

    capture = AttentionCapture(model.eval(), collector, sample_every=20)
    with capture.batch(item_ids=seqs, cohorts="mobile"):
        logits = model(seqs, src_key_padding_mask=seqs == 0)
    capture.remove()  # every hook gone; the model is as it was

What it hooks:
- every `nn.MultiheadAttention` of the model (inside `nn.TransformerEncoderLayer` too): a
  forward pre-hook asks for `need_weights=True, average_attn_weights=False`, a forward hook
  reads the per-head weights (B, H, L, S) and hands the caller what it asked for; a call
  made with need_weights=False (nn.TransformerEncoderLayer's) whose masks leave a query
  row no key (causal with left padding) is left as made, its output bit for bit, and the
  weights are computed after it (nested batches excepted): forced, the explicit softmax
  would make those rows NaN, and the NaN would reach every position of the next layer;
- a Hugging Face model (the model itself or its first `PreTrainedModel` submodule): the
  call gets `output_attentions=True` (eager attention only) and the attentions are taken
  out of the output again unless the caller asked for them.

A forward in training mode is not captured (counted in `stats.missed`): the model's, or
that of an attention module under an eval root (nn.MultiheadAttention with dropout > 0,
any module of a Hugging Face model), whose weights come after dropout.

Only sampled batches carry hooks (`hooks="sampled"`, the default). PyTorch 2.13's
`TransformerEncoderLayer.forward` leaves its fused kernel whenever any forward hook or
pre-hook is attached to any of its submodules (it checks on every call), and `need_weights`
replaces `scaled_dot_product_attention` by an explicit softmax. So hooks are attached on
entering a sampled `batch()` and removed on leaving it: the other batches run the fused
path untouched. `hooks="always"` keeps them from construction to `remove()` (every forward
is then a batch, sampled in the hook; it costs the fused path on every batch).

The prediction row: one query row per sequence and layer: `query_index` when given (the
[MASK] of a BERT4Rec), else the last valid position. Valid keys come from the nested
batch of nn.TransformerEncoder's fast path (right padding, masks gone), else `lengths`
(explicit, with `padding`), else `lengths_fn`, else the key padding mask of the first
attention call (or the Hugging Face `attention_mask`), else every position. Keys outside
the valid window get weight 0 and the row is renormalised over it (pmixer's SASRec gives
unmasked padding a little mass). Rows are handed to the collector left-padded, the most
recent key last. A sequence with no valid key (its causal row comes back NaN) is dropped
and counted in `stats.empty`; a NaN row of a non-empty sequence goes to the collector,
which rejects it (`nan`) where on-call sees it.

`weights_id`: a sha256 over the state_dict (names sorted, dtype, shape, bytes), computed
once; given to the collector when it has none (DESIGN §5).

`on_device=True`: the metrics of monitor.metrics, head diversity and the position profile
are computed by `summarise` on the model's device, packed into one buffer and copied to
pinned host memory with one non-blocking copy; the collector's `observe_summaries` gets
a `PendingSummaries` whose `resolve()` (on the collector's thread; a strict collector's
at once, on the caller's) waits for the copy. The collector then checks what the device
could not (labels, shapes, item and attribute values) and writes what the copy path
writes for the same rows, with one exception: a request it rejects for a bad item id or
attribute value stays in its group's position profile, which the device has summed.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from collectors.collector import TOL
from collectors.rarely import RareLog
from monitor import metrics as mx
from monitor.sketch import POSITIONS

log = logging.getLogger("attnmon.capture")

_HF_FLAG = "_output_capturing_hooks_installed"  # transformers 5 marks models it hooked
_MHA_ARGS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


# --- weights_id ------------------------------------------------------------------------
def weights_id(model: nn.Module, *, chars: int = 16) -> str:
    """A stable id of the model's weights: sha256 over its state_dict (names in sorted
    order, each with dtype, shape and bytes), truncated to `chars` hex digits.

    >>> weights_id(model)
    'sha256:3f1c2a9b0d4e5f61'
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue  # extra state
        t = t.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:chars]


_weights_id = weights_id  # AttentionCapture's argument of the same name hides it


# --- results -------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptureStats:
    batches: int  # batches seen (batch() calls; forwards outside one with hooks="always")
    sampled: int  # of which sampled
    captured: int  # sampled batches whose attention reached the collector
    sequences: int  # sequences handed to the collector
    empty: int  # sequences dropped: no valid position
    missed: int  # sampled, but no attention seen (model not called, training mode, ...)
    errors: int  # capture failures (logged; never raised into serving unless strict)


@dataclass
class CapturedBatch:
    """What `AttentionCapture.batch()` yields; filled in when the forward ends."""

    sampled: bool
    captured: bool = False
    weights: np.ndarray | None = None  # copy path: (n, layers, heads, L) handed to observe_batch
    lengths: np.ndarray | None = None  # copy path: (n,)
    index: np.ndarray | None = None  # copy path: the batch rows kept (non-empty)
    summaries: PendingSummaries | None = None  # on-device path


@dataclass(frozen=True)
class Summaries:
    """One batch reduced on the device, as host arrays (`PendingSummaries.resolve()`).

    Head index `heads` of `values` and `pos` is the layer's head-mean row (the collector's
    head="*" series); it alone carries head_diversity (NaN on the per-head rows).
    """

    layers: int
    heads: int
    length: int  # L, the batch's padded width
    values: np.ndarray  # (B, layers, heads + 1, len(mx.ALL_METRICS)) float64
    codes: np.ndarray  # (B,) uint8 codes of block.REASON_NAMES (mx.REASONS); 0 = accepted
    lengths: np.ndarray  # (B,) int64
    ts: np.ndarray  # (B,) float64 epoch seconds
    groups: np.ndarray  # (B,) int64 index into group_keys
    group_keys: list[tuple[int, object]]  # (minute, cohort as given: the collector checks it)
    pos: np.ndarray  # (G, layers, heads + 1, P): accepted rows reversed, summed per group
    mean_rows: np.ndarray | None  # (B, layers, L) left-padded head-mean rows, for top-K
    item_ids: np.ndarray | None  # (B, L) left-aligned with the rows
    attributes: dict[str, np.ndarray] | None  # name -> (B, L), left-aligned
    request_ids: list | None
    sample_index: np.ndarray  # (k,) requests drawn for attention_events
    sample_rows: np.ndarray  # (k, layers, heads, L) their rows, left-padded

    @property
    def cohorts(self) -> np.ndarray:
        keys = np.empty(len(self.group_keys), dtype=object)
        keys[:] = [c for _, c in self.group_keys]
        return keys[self.groups]


class PendingSummaries:
    """A device-to-host copy in flight. `resolve()` waits for it (on the collector's thread,
    never on the serving one) and returns the `Summaries`, without the sequences that had
    no valid key (as the copy path drops them)."""

    def __init__(self, host: torch.Tensor, event, layout: list[tuple[str, tuple[int, ...]]],
                 extra: dict, host_tensors: dict[str, torch.Tensor],
                 on_resolve: Callable[[int, int], None] | None = None):
        self._host, self._event, self._layout = host, event, layout
        self._extra, self._host_tensors = extra, host_tensors
        self._on_resolve = on_resolve
        self._done: Summaries | None = None
        self.size: int = extra["B"]  # requests in the batch (what a full queue drops)

    def ready(self) -> bool:
        """True once the copy has landed (resolve() will not wait)."""
        return self._event is None or self._event.query()

    def resolve(self) -> Summaries:
        if self._done is not None:
            return self._done
        if self._event is not None:
            self._event.synchronize()
        flat = self._host.numpy()
        parts, off = {}, 0
        for name, shape in self._layout:
            size = math.prod(shape)
            parts[name] = flat[off : off + size].reshape(shape)
            off += size
        e = self._extra
        L = e["L"]
        lengths = parts["lengths"].astype(np.int64)
        start = parts["start"].astype(np.int64)
        keep = np.flatnonzero(lengths > 0)
        every = len(keep) == len(lengths)
        sub = (lambda a: a) if every else (lambda a: None if a is None else a[keep])  # noqa: E731

        def per_pos(a):
            if isinstance(a, torch.Tensor):
                a = a.cpu().numpy()
            a = _align_host(a, start, lengths, L)
            return sub(a) if np.shape(a)[:1] == (len(lengths),) else a

        items = self._host_tensors.get("item_ids", e["item_ids"])
        attrs = {k: self._host_tensors.get(f"attr:{k}", v) for k, v in (e["attributes"] or {}).items()}
        rids = e["request_ids"]
        sample = e["sample_index"]
        rows = parts.get("sample_rows")
        if not every:
            if rids is not None and len(rids) == len(lengths):
                rids = [rids[i] for i in keep]
            new_index = np.full(len(lengths), -1)
            new_index[keep] = np.arange(len(keep))
            ok = new_index[sample] >= 0
            sample, rows = new_index[sample][ok], None if rows is None else rows[ok]
        self._done = Summaries(
            layers=e["layers"],
            heads=e["heads"],
            length=L,
            values=sub(parts["values"]).astype(np.float64),
            codes=sub(parts["codes"]).astype(np.uint8),
            lengths=sub(lengths),
            ts=sub(e["ts"]),
            groups=sub(e["groups"]),
            group_keys=e["group_keys"],
            pos=parts["pos"].astype(np.float64),
            mean_rows=sub(parts.get("mean_rows")),
            item_ids=None if items is None else per_pos(items),
            attributes={k: per_pos(v) for k, v in attrs.items()} or None,
            request_ids=rids,
            sample_index=sample,
            sample_rows=rows if rows is not None else np.zeros((0, e["layers"], e["heads"], L)),
        )
        self._host = None  # the pinned buffer goes back to torch's cache
        if self._on_resolve is not None:
            self._on_resolve(len(keep), len(lengths) - len(keep))
        return self._done


# --- on-device reduction ---------------------------------------------------------------
_LN2 = math.log(2.0)


def summarise(W: torch.Tensor, lengths: torch.Tensor, groups: torch.Tensor | None = None,
              n_groups: int = 1, *, positions: int = POSITIONS, dtype: torch.dtype = torch.float64,
              tol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """monitor.metrics on the device, for a whole batch at once.

    `W` (B, layers, heads, L): left-padded rows, padding zero; `lengths` (B,). Returns
    `values` (B, layers, heads + 1, len(ALL_METRICS)) — the head-mean row last, with
    head_diversity —, `codes` (B,) (monitor.metrics.validate's, the worst row of each
    request) and `pos` (n_groups, layers, heads + 1, min(L, positions)): the accepted rows
    reversed (pos[..., d] = mass at distance d from the end) summed per `groups` (B,).
    Same definitions and clipping as monitor.metrics.compute / head_diversity.
    """
    B, ly, h, L = W.shape
    dev = W.device
    X = W.to(dtype)
    finite = torch.isfinite(X)
    X = torch.where(finite, X, 0.0)  # NaN rows are rejected; keep the arithmetic finite
    X = torch.cat([X, X.mean(2, keepdim=True)], 2)  # (B, ly, h + 1, L)
    Hh = h + 1
    R = X.reshape(-1, L)
    n = lengths.to(dtype)
    nr = n.view(B, 1).expand(B, ly * Hh).reshape(-1)
    nc = nr.clamp(min=1.0)
    one = nc == 1.0
    log_n = nc.log()
    ar = torch.arange(L, device=dev)
    dist = (L - 1 - ar).to(dtype)

    # one sort (descending, negatives clipped) serves entropy, top-k and gini
    s = R.clamp(min=0.0).sort(dim=-1, descending=True).values
    ent = -(s * torch.log(s + torch.finfo(dtype).tiny)).sum(-1)
    ent = ent.clamp(min=0.0)
    hn = torch.where(one, 1.0, ent / torch.where(one, 1.0, log_n)).clamp(max=1.0)
    # [mass, sum k*s_k (k = rank from the top), top3]; gini = 1 - (1 + 2 sum k s_k / S) / n
    scols = torch.stack([torch.ones(L, dtype=dtype, device=dev), ar.to(dtype), (ar < 3).to(dtype)], 1)
    sums = s @ scols
    gini = 1.0 - (1.0 + 2.0 * sums[:, 1] / sums[:, 0]) / nc
    gini = torch.minimum(gini.clamp(min=0.0), (nc - 1.0) / nc)
    eff = torch.exp(torch.minimum(ent, log_n)) / nc
    lin = R @ torch.stack([dist, (dist < 5).to(dtype)], 1)  # distance, recency5
    sink = R.gather(1, (L - nc).long().clamp(0, max(L - 1, 0)).view(-1, 1)).squeeze(1)
    vals = torch.stack([ent, hn, s[:, 0], sums[:, 2], eff, gini, R[:, -1], lin[:, 1], lin[:, 0], sink], -1)
    vals = vals.view(B, ly, Hh, len(mx.METRICS))

    div = torch.zeros(B, ly, dtype=dtype, device=dev)
    if h > 1:  # float64 always: JS is a difference of entropies
        P = X[:, :, :h].to(torch.float64)
        tot = P.sum(-1, keepdim=True)
        P = torch.where(tot > 0, P / torch.where(tot > 0, tot, 1.0), P)
        tiny = torch.finfo(torch.float64).tiny
        E = (P * torch.log(P + tiny)).sum(-1)  # (B, ly, h)
        i, j = torch.triu_indices(h, h, 1, device=dev)
        M = (P[:, :, i] + P[:, :, j]) * 0.5
        js = (E[..., i] + E[..., j]) * 0.5 - (M * torch.log(M + tiny)).sum(-1)
        div = (js / _LN2).clamp(0.0, 1.0).sqrt().mean(-1).to(dtype)
    nan = torch.full((B, ly, Hh, 1), float("nan"), dtype=dtype, device=dev)
    divcol = torch.cat([nan[:, :, :h], div.view(B, ly, 1, 1)], 2)
    values = torch.cat([vals, divcol], -1)
    empty = lengths == 0
    values = torch.where(empty.view(B, 1, 1, 1), float("nan"), values)

    # validation, as monitor.metrics.validate: per row, then the worst row of the request
    rnan = ~finite.all(-1)
    rneg = (W < -mx.NEGATIVE_TOL).any(-1)
    roff = (X[:, :, :h].sum(-1) - 1.0).abs() > tol
    rcode = torch.where(rnan, 1, torch.where(rneg, 2, torch.where(roff, 3, 0)))
    codes = rcode.flatten(1).amax(1)
    codes = torch.where(empty, 4, codes).to(torch.uint8)

    Pn = min(L, positions)
    ok = (codes == 0).to(dtype).view(B, 1, 1, 1)
    rev = X.flip(-1)[..., :Pn] * ok
    if groups is None:
        pos = rev.sum(0, keepdim=True)
    else:
        pos = torch.zeros(n_groups, ly, Hh, Pn, dtype=dtype, device=dev).index_add_(0, groups, rev)
    return values, codes, pos


# --- helpers -----------------------------------------------------------------------------
def _align_host(a, start: np.ndarray, n: np.ndarray, L: int):
    """Per-position values (B, L) moved like the rows: window [start, start+n) to the end."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape != (len(n), L):
        return a  # the collector rejects it (length_mismatch)
    shift = L - start - n
    if not shift.any():
        return a
    src = np.clip(np.arange(L)[None, :] - shift[:, None], 0, L - 1)
    return np.take_along_axis(a, src, axis=1)


def _left_align(W: torch.Tensor, start: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Rows (B, ly, H, S) whose window is [start, start+n) moved to the right end, the rest
    0, and renormalised over the window (an empty window gives NaN: dropped later)."""
    B, ly, H, S = W.shape
    ar = torch.arange(S, device=W.device)
    shift = S - start - n
    inwin = ar.view(1, S) >= (S - n).view(B, 1)
    src = (ar.view(1, S) - shift.view(B, 1)).clamp(0, S - 1)
    g = W.gather(-1, src.view(B, 1, 1, S).expand(B, ly, H, S))
    g = torch.where(inwin.view(B, 1, 1, S), g, 0.0)
    return g / g.sum(-1, keepdim=True)


def _to_device(a, device) -> torch.Tensor:
    """Host values to `device` without making the serving thread wait: a plain copy from
    pageable memory to a GPU synchronises with the stream; pinned memory does not."""
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if t.device == torch.device(device) or t.device.type != "cpu" or torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _mha_weights(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> torch.Tensor:
    """The per-head weights (B, H, L, S) of a batched call of `m` made with need_weights=False,
    as nn.MultiheadAttention's slow path computes them for need_weights=True."""
    query, key, value = (args + tuple(kwargs.get(k) for k in ("query", "key", "value")[len(args):]))[:3]
    if m.batch_first:
        query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    separate = {} if m._qkv_same_embed_dim else dict(
        use_separate_proj_weight=True, q_proj_weight=m.q_proj_weight,
        k_proj_weight=m.k_proj_weight, v_proj_weight=m.v_proj_weight)
    with torch.no_grad():
        return F.multi_head_attention_forward(
            query, key, value, m.embed_dim, m.num_heads, m.in_proj_weight, m.in_proj_bias,
            m.bias_k, m.bias_v, m.add_zero_attn, m.dropout, m.out_proj.weight, m.out_proj.bias,
            training=False, key_padding_mask=kwargs.get("key_padding_mask"), need_weights=True,
            attn_mask=kwargs.get("attn_mask"), average_attn_weights=False,
            # is_causal without attn_mask gets this far only on the fast path, which ignores it
            is_causal=bool(kwargs.get("is_causal")) and kwargs.get("attn_mask") is not None,
            **separate)[1]


def _may_mask_a_whole_row(kwargs: dict) -> bool:
    """Whether a query row of this nn.MultiheadAttention call may have every key masked
    (causal with left padding, say): True unless its masks show it has none."""
    am, kpm = kwargs.get("attn_mask"), kwargs.get("key_padding_mask")
    if kwargs.get("is_causal") and am is None:
        return True  # a causal mask PyTorch makes itself
    try:
        masked = None
        if am is not None:
            if am.dim() != 2:
                return True
            masked = am if am.dtype == torch.bool else torch.isneginf(am)  # (L, S)
        if kpm is not None:
            if kpm.dim() != 2:
                return True
            k = (kpm if kpm.dtype == torch.bool else torch.isneginf(kpm))[:, None, :]  # (B, 1, S)
            masked = k if masked is None else masked | k
        return masked is not None and bool(masked.all(dim=-1).any())
    except Exception:
        return True


def _no_autocast(device: torch.device):
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def _nested_lengths(q: torch.Tensor) -> torch.Tensor:
    try:
        return q._nested_tensor_size()[:, 0]
    except (AttributeError, RuntimeError):
        return torch.tensor([t.shape[0] for t in q.unbind()])


def _epoch(t) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _pretrained_class():
    mod = sys.modules.get("transformers.modeling_utils")
    return getattr(mod, "PreTrainedModel", None) if mod is not None else None


@dataclass
class _State:
    """One sampled forward of one thread."""

    handle: CapturedBatch
    item_ids: object = None
    cohorts: object = None
    attributes: Mapping | None = None
    lengths: object = None
    padding: str = "left"
    query_index: object = None
    request_ids: Sequence | None = None
    timestamps: object = None
    auto: bool = False  # made by the root hook (hooks="always", no batch() open)
    forwards: int = 0
    active: bool = False
    failed: bool = False
    mask: torch.Tensor | None = None  # (B, S) bool, True = valid key
    nested_n: torch.Tensor | None = None  # lengths of a nested (right-padded) batch
    start: torch.Tensor | None = None
    n: torch.Tensor | None = None
    q: torch.Tensor | None = None
    rows: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    hf_attn: object = None
    hf_return_dict: object = None


_SKIP = object()  # batch() not sampled, with hooks="always": the forward is not captured


class AttentionCapture:
    """Hand the attention of a model's prediction rows to `collector`, for a sample of
    batches. See the module docstring for what is hooked and why.

    - `sample_every=N` captures every N-th batch (the first included); `sample_rate=p`
      a random share instead (`seed` for the draw).
    - `padding`, `query_index`, `lengths_fn(args, kwargs) -> (B,)`: defaults for the
      prediction row (see module docstring); `batch()` overrides them per batch.
    - `modules`: the nn.MultiheadAttention modules to read (default: all of them), for
      models with cross-attention. Layers are numbered in call order.
    - `weights_id`: None computes it, a str is used as is, False leaves it out.
    - `on_device=True` needs a collector with `observe_summaries`; `compile=True` runs
      `summarise` through torch.compile.
    """

    def __init__(
        self,
        model: nn.Module,
        collector,
        *,
        sample_every: int = 1,
        sample_rate: float | None = None,
        seed: int | None = None,
        padding: str = "left",
        query_index: int | Sequence[int] | torch.Tensor | None = None,
        lengths_fn: Callable[[tuple, dict], object] | None = None,
        modules: Sequence[nn.Module] | None = None,
        hooks: str = "sampled",
        on_device: bool = False,
        summary_dtype: torch.dtype = torch.float64,
        compile: bool = False,
        weights_id: str | bool | None = None,
    ):
        if not isinstance(sample_every, int) or sample_every < 1:
            raise ValueError(f"sample_every={sample_every!r}: must be an int >= 1")
        if sample_rate is not None and not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate!r}: must be within [0, 1]")
        if sample_rate is not None and sample_every != 1:
            raise ValueError("give sample_every or sample_rate, not both")
        if padding not in ("left", "right"):
            raise ValueError(f"padding={padding!r}: must be 'left' or 'right'")
        if hooks not in ("sampled", "always"):
            raise ValueError(f"hooks={hooks!r}: must be 'sampled' or 'always'")
        if hooks == "sampled" and any(getattr(m, "_orig_mod", None) is not None for m in model.modules()):
            # hooks put on and taken off per sampled batch make a compiled model recompile
            # on the serving thread (seconds each), then hit dynamo's limit and miss them all;
            # a compiled submodule (the encoder alone) misses them after the first
            raise ValueError("a torch.compile'd model cannot take hooks per sampled batch: pass "
                             "hooks='always', or capture the model uncompiled")
        if summary_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"summary_dtype={summary_dtype!r}: must be torch.float32 or torch.float64")
        if on_device and not callable(getattr(collector, "observe_summaries", None)):
            raise TypeError("on_device=True needs a collector with observe_summaries()")
        self.model, self.collector = model, collector
        self.sample_every, self.sample_rate = sample_every, sample_rate
        self.padding, self.query_index, self.lengths_fn = padding, query_index, lengths_fn
        self.hooks, self.on_device = hooks, on_device
        self.summary_dtype = summary_dtype
        self._summarise = torch.compile(summarise, dynamic=True) if compile else summarise
        self._strict = bool(getattr(collector, "strict", False))
        self._rng = np.random.default_rng(seed)

        pretrained = _pretrained_class()
        self._hf: nn.Module | None = None
        if modules is None and pretrained is not None:
            self._hf = next((m for m in model.modules() if isinstance(m, pretrained)), None)
        if self._hf is not None:
            impl = getattr(self._hf.config, "_attn_implementation", "eager")
            if impl not in ("eager", None):
                raise ValueError(
                    f"{type(self._hf).__name__} uses attn_implementation={impl!r}, which returns no "
                    "attention weights: load it with attn_implementation='eager' (or call "
                    "model.set_attn_implementation('eager'))")
            self._hf_sig = inspect.signature(self._hf.forward)
            self._mha: list[nn.Module] = []
        else:
            self._mha = list(modules) if modules is not None else [
                m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
            if not self._mha:
                raise ValueError(f"{type(model).__name__} has no nn.MultiheadAttention and is no "
                                 "Hugging Face model: its attention cannot be captured")
            # the pre-hook passes need_weights= and average_attn_weights=: any other module
            # would raise TypeError in every sampled forward, so refuse it here, at startup
            other = [type(m).__name__ for m in self._mha if not isinstance(m, nn.MultiheadAttention)]
            if other:
                raise TypeError(f"modules: only nn.MultiheadAttention can be captured, not {', '.join(other)}")
        # a module whose training mode puts dropout on the attention weights: its rows are
        # not the model's attention (renormalised they would pass, and a window that
        # dropout emptied reaches the collector as NaN)
        self._dropout_on = list(self._hf.modules()) if self._hf is not None else self._mha
        self._hf_before: dict | None = None  # hooks present before transformers added its own
        self._hf_added: list | None = None
        self._hf_flags: list = []

        if weights_id is None:
            self.weights_id: str | None = _weights_id(model)
        else:
            self.weights_id = weights_id or None
        if self.weights_id and getattr(collector, "weights_id", None) is None:
            collector.weights_id = self.weights_id

        self._local = threading.local()
        self._lock = threading.Lock()
        self._refs = 0
        self._handles: list = []
        self._removed = False
        self._n = dict(batches=0, sampled=0, captured=0, sequences=0, empty=0, missed=0, errors=0)
        self._count_lock = threading.Lock()
        self._log_rarely = RareLog(log)
        if hooks == "always":
            self._handles = self._attach()

    # --- public -----------------------------------------------------------------------
    @property
    def stats(self) -> CaptureStats:
        with self._count_lock:
            return CaptureStats(**self._n)

    @contextmanager
    def batch(
        self,
        item_ids=None,
        *,
        cohorts: str | Sequence[str] | None = None,
        attributes: Mapping[str, object] | None = None,
        lengths=None,
        padding: str | None = None,
        query_index=None,
        request_ids: Sequence[str] | None = None,
        timestamps=None,
    ) -> Iterator[CapturedBatch]:
        """Capture the model forward run inside, if this batch is sampled.

        `item_ids`, `attributes` values: (B, L) in the model's layout (they are aligned
        like the rows); `lengths` (B,) valid positions on the `padding` side."""
        if padding not in (None, "left", "right"):
            raise ValueError(f"padding={padding!r}: must be 'left' or 'right'")
        sampled = not self._removed and self._decide()  # removed: nothing is sampled or counted
        handle = CapturedBatch(sampled=sampled)
        if self._removed or (not sampled and self.hooks == "sampled"):
            yield handle
            return
        prev = getattr(self._local, "state", None)
        if not sampled:
            self._local.state = _SKIP
            try:
                yield handle
            finally:
                self._local.state = prev
            return
        self._local.state = _State(
            handle, item_ids=item_ids, cohorts=cohorts, attributes=attributes, lengths=lengths,
            padding=padding or self.padding,
            query_index=self.query_index if query_index is None else query_index,
            request_ids=request_ids, timestamps=timestamps)
        self._acquire()
        try:
            yield handle
        finally:
            self._release()
            self._local.state = prev
            if not handle.captured:
                self._add(missed=1)

    def remove(self) -> None:
        """Remove every hook (transformers' own capture hooks, if our requests made it
        install them, too): the model is then exactly as before. Idempotent."""
        with self._lock:
            self._removed = True
            for h in self._handles:
                h.remove()
            self._handles = []
            self._refs = 0
            for m, key in self._hf_added or []:
                for d in (m._forward_hooks, m._forward_hooks_with_kwargs, m._forward_hooks_always_called):
                    d.pop(key, None)
            for m, had in self._hf_flags:
                if not had:
                    m.__dict__.pop(_HF_FLAG, None)
            self._hf_added, self._hf_flags = [], []

    def __enter__(self) -> AttentionCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # --- sampling and hooks ---------------------------------------------------------------
    def _add(self, **counts: int) -> None:
        # serving threads (and the collector's, for on-device batches) count at once
        with self._count_lock:
            for key, n in counts.items():
                self._n[key] += n

    def _decide(self) -> bool:
        with self._count_lock:  # the count decides which batch is sampled: one per number
            self._n["batches"] += 1
            batch = self._n["batches"]
        if getattr(self.collector, "closed", False):
            # nothing drains a closed collector's queue: capturing would copy every
            # sampled batch into it until queue_size, for nothing (the model still serves)
            self._log_rarely(logging.WARNING, "attnmon capture: the collector is closed; nothing is "
                             "captured (call AttentionCapture.remove() before closing the collector)")
            return False
        if self.sample_rate is not None:
            hit = bool(self._rng.random() < self.sample_rate)
        else:
            hit = (batch - 1) % self.sample_every == 0
        self._add(sampled=int(hit))
        return hit

    def _acquire(self) -> None:
        if self.hooks == "sampled":
            with self._lock:
                if self._refs == 0 and not self._removed:
                    self._handles = self._attach()
                self._refs += 1

    def _release(self) -> None:
        if self.hooks == "sampled":
            with self._lock:
                self._refs = max(0, self._refs - 1)
                if self._refs == 0:
                    for h in self._handles:
                        h.remove()
                    self._handles = []

    def _attach(self) -> list:
        # Order matters on a shared module: pre-hooks and hooks run in registration order,
        # so the root's pre-hook opens the forward first and its hook closes it last.
        m = self.model
        hs = [m.register_forward_pre_hook(self._root_pre, with_kwargs=True)]
        if self._hf is not None:
            hs.append(self._hf.register_forward_pre_hook(self._hf_pre, with_kwargs=True))
        for a in self._mha:
            hs.append(a.register_forward_pre_hook(self._mha_pre, with_kwargs=True))
            hs.append(a.register_forward_hook(self._mha_post, with_kwargs=True))
        if self._hf is not None:
            hs.append(self._hf.register_forward_hook(self._hf_post, with_kwargs=True))
        hs.append(m.register_forward_hook(self._root_post, with_kwargs=True))
        return hs

    def _live(self) -> _State | None:
        st = getattr(self._local, "state", None)
        if st is None or st is _SKIP or not st.active or st.forwards != 1:
            return None
        return st

    def _root_pre(self, module, args, kwargs):
        st = getattr(self._local, "state", None)
        if st is None or (st is not _SKIP and st.auto):
            if self.hooks != "always" or self._removed or not self._decide():
                self._local.state = None
                return None
            st = self._local.state = _State(CapturedBatch(True), padding=self.padding,
                                            query_index=self.query_index, auto=True)
        if st is _SKIP:
            return None
        st.forwards += 1
        if st.forwards > 1:  # a second forward in one batch(): only the first is captured
            st.active = False
            return None
        if module.training or any(m.training and getattr(m, "dropout", 1.0) != 0.0
                                   for m in self._dropout_on):
            return None  # weights after dropout: not captured (counted in stats.missed)
        st.active = True
        if st.lengths is None and self.lengths_fn is not None:
            try:
                st.lengths = self.lengths_fn(args, kwargs)
            except Exception:
                self._fail(st, "lengths_fn failed")
        return None

    def _root_post(self, module, args, kwargs, output):
        st = self._live()
        if st is None:
            return None
        st.active = False
        try:
            if not st.failed:
                self._finish(st)
        except Exception:
            self._fail(st, "capture failed")
        finally:
            if st.auto:
                self._local.state = None
        return None

    def _fail(self, st: _State, what: str) -> None:
        st.failed = True
        self._add(errors=1)
        if self._strict:
            log.exception("attnmon capture: %s", what)
            raise
        # a failure that repeats on every sampled batch must not flood the serving
        # process's log with tracebacks: stats.errors keeps the full count
        self._log_rarely(logging.ERROR, "attnmon capture: %s", what, key=what, exc_info=True)

    # nn.MultiheadAttention
    def _mha_pre(self, module, args, kwargs):
        st = self._live()
        if st is None:
            return None
        if st.failed:  # nothing more is read from this forward: leave its calls alone
            st.calls.append(None)
            return None
        try:
            return self._mha_call(st, args, kwargs)
        except Exception:
            # a pre-hook that raises fails the caller's forward: leave this call as made
            st.calls.append(None)
            self._fail(st, "preparing an nn.MultiheadAttention call failed")
            return None

    def _mha_call(self, st: _State, args: tuple, kwargs: dict):
        if len(args) > 3:  # need_weights & co. given by position: name them
            kwargs = {**dict(zip(_MHA_ARGS, args[3:], strict=False)), **kwargs}
            args = args[:3]
        query = args[0] if args else kwargs["query"]  # attn(query=q, key=k, value=v) is legal
        if query.dim() != 3:  # unbatched
            st.calls.append(None)
            return None
        if query.is_nested and st.nested_n is None:
            # nn.TransformerEncoder's nested path (right padding, no mask left): the
            # weights come back padded to the longest sequence, masks gone
            st.nested_n = _nested_lengths(query)
        kpm = kwargs.get("key_padding_mask")
        if st.mask is None and kpm is not None and kpm.dim() == 2:
            st.mask = ~kpm if kpm.dtype == torch.bool else kpm == 0
        need, average = kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True)
        if not need and not query.is_nested and _may_mask_a_whole_row(kwargs):
            # leave the call as made: need_weights=True swaps SDPA for an explicit softmax,
            # whose fully masked query rows are NaN where SDPA's are 0 (and the NaN then
            # reaches every position of the next layer); the weights are computed after it
            # (the attention twice: a third more per sampled batch, so only when needed)
            st.calls.append((need, average, (args, kwargs)))
            return None
        st.calls.append((need, average, None))
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def _mha_post(self, module, args, kwargs, output):
        st = self._live()
        if st is None or not st.calls:
            return None
        flags = st.calls.pop()
        if flags is None:
            return None
        need, average, call = flags
        weights = output[1]
        try:
            if call is not None and not st.failed:
                weights = _mha_weights(module, *call)
            if weights is not None and not st.failed:
                st.rows.append(self._rows(st, weights))
        except Exception:
            self._fail(st, "reading nn.MultiheadAttention weights failed")
        finally:
            # hand the caller what it asked for (a call left as made has it already)
            if call is None and not need:
                output = (output[0], None)
            elif call is None and average and weights is not None:
                output = (output[0], weights.mean(dim=1))
        return output

    # Hugging Face
    def _hf_pre(self, module, args, kwargs):
        st = self._live()
        if st is None:
            return None
        bound = self._hf_sig.bind_partial(*args, **kwargs).arguments
        if any(k in bound and k not in kwargs for k in ("output_attentions", "return_dict")):
            return None  # given by position: leave the call alone (nothing captured)
        st.hf_attn = kwargs.get("output_attentions")
        st.hf_return_dict = kwargs.get("return_dict")
        am = bound.get("attention_mask")
        if st.mask is None and isinstance(am, torch.Tensor) and am.dim() == 2:
            st.mask = am != 0
        if self._hf_before is None and self._hf_added is None:
            self._hf_before = {id(m): (m, set(m._forward_hooks)) for m in module.modules()}
            self._hf_flags = [(m, _HF_FLAG in m.__dict__) for m in module.modules()]
        return args, {**kwargs, "output_attentions": True, "return_dict": True}

    def _hf_post(self, module, args, kwargs, output):
        st = self._live()
        if st is None or not kwargs.get("output_attentions") or not hasattr(output, "keys"):
            return None
        if self._hf_before is not None:  # hooks transformers installed for our request
            self._hf_added = [(m, k) for m, keys in self._hf_before.values()
                              for k in m._forward_hooks if k not in keys]
            self._hf_before = None
        try:
            if not st.failed:
                for a in output.get("attentions") or ():
                    st.rows.append(self._rows(st, a))
        except Exception:
            self._fail(st, "reading Hugging Face attentions failed")
        finally:
            cfg = module.config
            want_attn = st.hf_attn if st.hf_attn is not None else getattr(cfg, "output_attentions", False)
            want_dict = (st.hf_return_dict if st.hf_return_dict is not None
                         else getattr(cfg, "return_dict", True))
            if not want_attn:
                output = type(output)(**{k: v for k, v in output.items()
                                         if k not in ("attentions", "cross_attentions")})
            if not want_dict:
                output = output.to_tuple()
        return output

    # --- the prediction rows ---------------------------------------------------------------
    def _rows(self, st: _State, w: torch.Tensor) -> torch.Tensor:
        """(B, H, S) prediction rows of one layer's weights (B, H, Lq, S)."""
        with torch.no_grad():
            w = w.detach()
            B, H, Lq, S = w.shape
            if st.start is None:
                st.start, st.n = self._window(st, B, S, w.device)
            if st.q is None:
                st.q = self._query(st, B, Lq, w.device)
            idx = st.q.view(B, 1, 1, 1).expand(B, H, 1, S)
            return w.gather(2, idx).squeeze(2)

    @staticmethod
    def _window(st: _State, B: int, S: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, n) of each sequence's valid keys."""
        if st.nested_n is not None:
            n = _to_device(st.nested_n, device).long().view(B).clamp(0, S)
            return torch.zeros_like(n), n
        if st.lengths is not None:
            n = _to_device(st.lengths, device).long().view(B).clamp(0, S)
            start = S - n if st.padding == "left" else torch.zeros_like(n)
            return start, n
        if st.mask is not None and st.mask.shape == (B, S):
            valid = st.mask.to(device)
            some = valid.any(-1)
            first = valid.int().argmax(-1)
            last = S - 1 - valid.flip(-1).int().argmax(-1)
            # holes inside the span stay in it, as zero-weight keys (masked)
            n = torch.where(some, last - first + 1, 0)
            return torch.where(some, first, S), n
        n = torch.full((B,), S, dtype=torch.long, device=device)
        return torch.zeros_like(n), n

    @staticmethod
    def _query(st: _State, B: int, Lq: int, device) -> torch.Tensor:
        qi = st.query_index
        if qi is None:
            q = st.start + st.n - 1  # the last valid position
        elif isinstance(qi, int):
            q = torch.full((B,), qi, dtype=torch.long, device=device)
        else:
            q = _to_device(qi, device).long()
            q = q.expand(B) if q.dim() == 0 else q.view(B)  # a numpy or 0-d tensor scalar
        return torch.where(q < 0, q + Lq, q).clamp(0, Lq - 1)

    def _finish(self, st: _State) -> None:
        if not st.rows or st.rows[0].shape[0] == 0:  # an empty batch has nothing to hand over
            return
        with torch.no_grad():
            W = torch.stack(st.rows, 1)  # (B, layers, heads, S)
            if W.dtype in (torch.float16, torch.bfloat16):
                W = W.float()
            width = max([np.shape(a)[-1] for a in [st.item_ids, *(st.attributes or {}).values()]
                         if a is not None and np.ndim(a) == 2] or [0])
            if st.nested_n is not None and width > W.shape[-1]:
                # the nested path cut the rows to the longest sequence: back to the input's
                # width, so that they line up with item_ids (right padding: append zeros)
                W = torch.nn.functional.pad(W, (0, width - W.shape[-1]))
            Wl = _left_align(W, st.start, st.n)
            if self.on_device:
                self._send_summaries(st, Wl)
            else:
                self._send_rows(st, Wl)
        st.handle.captured = True
        self._add(captured=1)

    def _send_rows(self, st: _State, Wl: torch.Tensor) -> None:
        """The copy path: every prediction row to the host (one copy), then observe_batch."""
        B, ly, H, S = Wl.shape
        host = torch.cat([Wl.reshape(-1).float(), st.n.float(), st.start.float()]).cpu().numpy()
        w = host[: B * ly * H * S].reshape(B, ly, H, S)
        n = host[B * ly * H * S : B * ly * H * S + B].astype(np.int64)
        start = host[B * ly * H * S + B :].astype(np.int64)
        keep = n > 0
        idx = np.flatnonzero(keep)
        every = len(idx) == B
        sub = (lambda a: a) if every else (lambda a: a[idx])  # noqa: E731

        def per_pos(a):
            if isinstance(a, torch.Tensor):
                a = a.detach().cpu().numpy()
            a = _align_host(a, start, n, S)
            return sub(a) if np.shape(a)[:1] == (B,) else a

        cohorts = st.cohorts
        if cohorts is not None and not isinstance(cohorts, str) and len(cohorts) == B and not every:
            cohorts = [cohorts[i] for i in idx]
        rids = st.request_ids
        if rids is not None and len(rids) == B and not every:
            rids = [rids[i] for i in idx]
        ts = st.timestamps
        if ts is not None and not np.isscalar(ts) and len(ts) == B and not every:
            ts = [ts[i] for i in idx]
        weights = w[idx] if not every else w
        self.collector.observe_batch(
            weights,
            item_ids=None if st.item_ids is None else per_pos(st.item_ids),
            lengths=n[idx] if not every else n,
            cohorts=cohorts,
            attributes=None if not st.attributes else {k: per_pos(v) for k, v in st.attributes.items()},
            request_ids=rids,
            timestamps=ts,
            padding="left",
        )
        h = st.handle
        h.weights, h.lengths, h.index = weights, n[idx], idx
        self._add(sequences=len(idx), empty=B - len(idx))

    def _send_summaries(self, st: _State, Wl: torch.Tensor) -> None:
        """The on-device path: summarise, pack, one non-blocking copy, observe_summaries."""
        B, ly, H, S = Wl.shape
        dev, dt = Wl.device, self.summary_dtype
        ts = st.timestamps
        if ts is None:
            ts = np.full(B, getattr(self.collector, "clock", time.time)())
        elif np.isscalar(ts) or isinstance(ts, datetime):
            ts = np.full(B, _epoch(ts))
        else:
            ts = np.array([_epoch(t) for t in ts], dtype=np.float64)
        cohorts = "default" if st.cohorts is None else st.cohorts  # as block.DEFAULT_COHORT
        if isinstance(cohorts, str):
            coh = np.full(B, cohorts, dtype=object)
        else:
            coh = np.empty(B, dtype=object)
            coh[:] = list(cohorts)
        minutes = (ts // 60).astype(np.int64)
        if (minutes == minutes[0]).all() and (coh == coh[0]).all():
            groups, keys, gdev = np.zeros(B, np.int64), [(int(minutes[0]), coh[0])], None
        else:
            pairs = list(zip(minutes.tolist(), coh.tolist(), strict=True))
            index: dict = {}
            groups = np.array([index.setdefault(p, len(index)) for p in pairs], np.int64)
            keys = [(int(m), c) for m, c in index]
            gdev = _to_device(groups, dev)
        # the hooks run inside the caller's autocast, which would put summarise's matmuls
        # in float16/bfloat16 for summary_dtype=float32 (float64 it leaves alone)
        with _no_autocast(dev):
            values, codes, pos = self._summarise(Wl, st.n, gdev, len(keys), dtype=dt,
                                                 tol=getattr(self.collector, "tol", TOL))
        parts = [("values", values), ("codes", codes), ("pos", pos), ("lengths", st.n),
                 ("start", st.start)]
        if st.item_ids is not None or st.attributes:
            parts.append(("mean_rows", Wl.mean(2)))
        rate = float(getattr(self.collector, "sample_rate", 0.0))
        sample = np.flatnonzero(self._rng.random(B) < rate) if rate > 0 else np.zeros(0, np.int64)
        if len(sample):
            parts.append(("sample_rows", Wl[_to_device(sample, dev)]))
        flat = torch.cat([t.reshape(-1).to(dt) for _, t in parts])
        layout = [(name, tuple(t.shape)) for name, t in parts]
        host_tensors: dict[str, torch.Tensor] = {}
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=dt, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            for key, t in [("item_ids", st.item_ids)] + [(f"attr:{k}", v) for k, v in (st.attributes or {}).items()]:
                if isinstance(t, torch.Tensor) and t.device.type == "cuda":
                    ht = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                    host_tensors[key] = ht.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(flat.device))
        else:
            host, event = flat.to("cpu"), None

        def copy(a):  # the caller may reuse its buffers once the batch is done
            if a is None or isinstance(a, torch.Tensor) and a.device.type != "cpu":
                return a  # on the device: copied into pinned memory above
            return a.detach().clone() if isinstance(a, torch.Tensor) else np.array(a, copy=True)

        extra = dict(
            B=B, L=S, layers=ly, heads=H, ts=ts, groups=groups, group_keys=keys,
            item_ids=None if "item_ids" in host_tensors else copy(st.item_ids),
            attributes={k: (None if f"attr:{k}" in host_tensors else copy(v))
                        for k, v in (st.attributes or {}).items()} or None,
            request_ids=None if st.request_ids is None else list(st.request_ids),
            sample_index=sample,
        )
        pending = PendingSummaries(host, event, layout, extra, host_tensors, self._resolved)
        st.handle.summaries = pending
        self.collector.observe_summaries(pending)

    def _resolved(self, sequences: int, empty: int) -> None:
        # called on the collector's thread once the summaries reach the host
        self._add(sequences=sequences, empty=empty)


__all__ = ["AttentionCapture", "CaptureStats", "CapturedBatch", "PendingSummaries", "Summaries",
           "summarise", "weights_id"]
