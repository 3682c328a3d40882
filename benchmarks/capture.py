"""What `collectors.torch.AttentionCapture` adds to a serving forward, per batch.

A SASRec-sized model (item embedding, 2 `nn.TransformerEncoderLayer`s, 2 heads, hidden 64,
causal mask, left padding, logits of the last position over a 50,000-item catalogue),
batch 256, L = 50 and 200, in eval mode under `torch.inference_mode()`. Timed call by call,
the variants interleaved, median of the repeats:

  fused forward        the model alone: PyTorch's fused encoder-layer kernel
  unsampled batch      inside `capture.batch()` that is not sampled (no hooks attached)
  per-head weights     hooks that only force need_weights / average_attn_weights=False
                       (the slow path the capture needs, without reading anything)
  capture, copy        a sampled batch: prediction rows to the host, observe_batch
  capture, on-device   a sampled batch: `summarise` on the device, one copy,
                       AttentionCollector.observe_summaries (check + append)

The collectors' threads never run here (they are drained by hand after each round), so the
figures are the serving thread's; the collector's background work per batch — `_drain`:
for the copy path the block's checks and numpy metrics, for the on-device path
`PendingSummaries.resolve()` and the checks the device could not make, each followed by
the same accumulation into the sketches — is timed separately and reported in `extra`
(`background_ms`), and so is `summarise` alone on rows of the batch's shape
(`summarise_ms`: the on-device path's own work). On a CPU "on the device" is the serving
thread itself, so the on-device path moves the metrics onto the serving thread: the
figure that matters for it is the GPU one (benchmarks/gpu_capture.py).

    python -m benchmarks.capture [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from benchmarks.report import Row, table
from benchmarks.workload import quiet_collector, retire

BATCH, HIDDEN, HEADS, LAYERS, ITEMS = 256, 64, 2, 2, 50_000
LENGTHS = (50, 200)


def build_model(L: int, *, hidden: int = HIDDEN, heads: int = HEADS, layers: int = LAYERS,
                items: int = ITEMS, device: str = "cpu", seed: int = 0):
    import torch
    from torch import nn

    class SASRec(nn.Module):
        def __init__(self):
            super().__init__()
            self.item = nn.Embedding(items + 1, hidden, padding_idx=0)
            self.pos = nn.Embedding(L, hidden)
            layer = nn.TransformerEncoderLayer(hidden, heads, hidden, dropout=0.2, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.register_buffer("causal", torch.triu(torch.ones(L, L, dtype=torch.bool), 1))

        def forward(self, seq):
            x = self.item(seq) * math.sqrt(hidden) + self.pos.weight
            h = self.encoder(x, mask=self.causal, is_causal=True)
            return h[:, -1] @ self.item.weight.T

    torch.manual_seed(seed)
    return SASRec().to(device).eval()


def batch_of(L: int, *, batch: int = BATCH, items: int = ITEMS, device: str = "cpu", seed: int = 1):
    """Left-padded histories (lengths uniform in 1..L) and their lengths."""
    import torch

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, batch)
    seq = rng.integers(1, items + 1, (batch, L))
    seq[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0
    return torch.as_tensor(seq, device=device), lengths


def force_weights_hooks(model) -> list:
    """Only what the capture does to the model's call: per-head weights, nothing read."""
    from torch import nn

    def pre(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    return [m.register_forward_pre_hook(pre, with_kwargs=True)
            for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


def forced_forward(model, seq) -> None:
    """One forward with per-head weights forced on and nothing read: the capture's cost
    to the model's own call, without the capture."""
    hooks = force_weights_hooks(model)
    try:
        model(seq)
    finally:
        for h in hooks:
            h.remove()


def measure(L: int, *, repeats: int, warmup: int = 3, device: str = "cpu",
            sync: Callable[[], None] = lambda: None, batch: int = BATCH,
            compile: bool = False, **model_kw) -> dict[str, np.ndarray]:
    """Per-call seconds of each variant (interleaved), and the background costs."""
    import torch

    from collectors.torch import AttentionCapture

    model = build_model(L, device=device, **model_kw)
    seq, lengths = batch_of(L, batch=batch, items=model_kw.get("items", ITEMS), device=device)
    copy_c = quiet_collector(sample_rate=0.0)
    dev_c = quiet_collector(sample_rate=0.0)
    never = AttentionCapture(model, quiet_collector(), sample_rate=0.0)
    cap_copy = AttentionCapture(model, copy_c)
    cap_dev = AttentionCapture(model, dev_c, on_device=True, compile=compile)

    def fused():
        model(seq)

    def unsampled():
        with never.batch(item_ids=seq, lengths=lengths, cohorts="web"):
            model(seq)

    def forced():
        forced_forward(model, seq)

    def copy_path():
        with cap_copy.batch(item_ids=seq, lengths=lengths, cohorts="web"):
            model(seq)

    def device_path():
        with cap_dev.batch(item_ids=seq, lengths=lengths, cohorts="web"):
            model(seq)

    variants = {"fused": fused, "unsampled": unsampled, "forced": forced,
                "copy": copy_path, "device": device_path}
    out = {k: np.empty(repeats) for k in variants}
    background = {"drain_copy": np.empty(repeats), "drain_device": np.empty(repeats)}
    clock = time.perf_counter
    names = list(variants)
    with torch.inference_mode():
        for r in range(-warmup, repeats):
            # rotate the order: no variant always follows the collector's work below
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = variants[name]
                sync()
                t0 = clock()
                fn()
                sync()
                if r >= 0:
                    out[name][r] = clock() - t0
            # the collectors' side, off the serving thread: one batch each
            assert len(copy_c._q) == len(dev_c._q) == 1
            t0 = clock()
            copy_c._drain()
            t1 = clock()
            dev_c._drain()
            t2 = clock()
            for c in (copy_c, dev_c):
                c._acc.clear()
            if r >= 0:
                background["drain_copy"][r] = t1 - t0
                background["drain_device"][r] = t2 - t1
        # `summarise` alone, on prediction rows of the batch's shape: the on-device path's
        # own work on the serving thread (on a CPU), out of the forward's noise
        layers, heads = model_kw.get("layers", LAYERS), model_kw.get("heads", HEADS)
        rows = torch.as_tensor(np.random.default_rng(3).dirichlet(np.ones(L), (batch, layers, heads)),
                               dtype=torch.float32, device=device)
        n = torch.as_tensor(lengths, device=device)
        background["summarise"] = np.empty(repeats)
        for r in range(-warmup, repeats):
            sync()
            t0 = clock()
            cap_dev._summarise(rows, n)
            sync()
            if r >= 0:
                background["summarise"][r] = clock() - t0
    for c in (copy_c, dev_c, never.collector):
        retire(c)
    for cap in (never, cap_copy, cap_dev):
        cap.remove()
    return {**out, **background}


NAMES = {
    "unsampled": "unsampled batch",
    "forced": "per-head weights forced",
    "copy": "capture, copy path",
    "device": "capture, on-device path",
}


def run(quick: bool, lengths: Sequence[int] = LENGTHS, threads: int = 1) -> list[Row]:
    """Rows for the benchmark table: each variant beside the fused forward. On `threads`
    torch threads (one, as the rest of the suite: figures that hold on a busy machine)."""
    import torch

    rows: list[Row] = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timings = {L: measure(L, repeats=8 if quick else 30) for L in lengths}
    finally:
        torch.set_num_threads(before)
    for L, t in timings.items():
        fused = float(np.median(t["fused"])) * 1e9
        for key, label in NAMES.items():
            figure = float(np.median(t[key])) * 1e9
            forced = float(np.median(t["forced"])) * 1e9
            extra = {"L": L, "batch": BATCH, "torch_threads": threads,
                     "added_ms": round((figure - fused) / 1e6, 3),
                     # what the capture's own work adds to the path it needs
                     "added_vs_forced_ms": round((figure - forced) / 1e6, 3),
                     "p25_ratio": round(float(np.percentile(t[key], 25) / np.percentile(t["fused"], 25)), 3)}
            if key in ("copy", "device"):
                extra["background_ms"] = round(float(np.median(t[f"drain_{key}"])) * 1e3, 3)
            if key == "device":
                extra["summarise_ms"] = round(float(np.median(t["summarise"])) * 1e3, 3)
            rows.append(Row(f"capture L={L}: {label}", "time", figure, "ns", bare=fused,
                            bare_name="fused forward", extra=extra))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    rows = run(args.quick)
    print(table([r.cells() for r in rows]))
    for r in rows:
        print(f"  {r.name}: {r.extra['added_ms']:+.2f} ms ({r.extra['added_vs_forced_ms']:+.2f} ms "
              "beside per-head weights forced)"
              + (f"; collector thread {r.extra['background_ms']:.2f} ms" if "background_ms" in r.extra else "")
              + (f"; summarise alone {r.extra['summarise_ms']:.2f} ms" if "summarise_ms" in r.extra else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
