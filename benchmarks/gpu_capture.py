"""benchmarks/capture.py on a GPU: one prepared script for a device machine.

    python -m benchmarks.gpu_capture [--quick] [--large] [--no-compile] [--out DIR]

Needs a CUDA build of torch (this project's CPU venv has none). Same model, batch and
variants as benchmarks/capture.py, on device="cuda", plus:
  - each call timed end to end (torch.cuda.synchronize before and after) and up to the
    moment it returns to the serving thread (no synchronize after: the on-device path
    must not wait for its copy);
  - "capture, on-device (compiled)": `summarise` through torch.compile;
  - the synchronising calls each variant makes, counted with
    torch.cuda.set_sync_debug_mode("warn") (the fused forward's own are the baseline);
  - --large: hidden 256, 4 layers, 4 heads, L = 200, batch 1024 as well.
Writes a JSON (to $OUT if set, else --out) and prints a table. Timings compare only within
one run: rerun the baseline on the same card.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.capture import batch_of, build_model, forced_forward
from benchmarks.report import Row, table
from benchmarks.workload import quiet_collector, retire

CONFIGS = [
    dict(L=50, batch=256, hidden=64, layers=2, heads=2),
    dict(L=200, batch=256, hidden=64, layers=2, heads=2),
]
LARGE = dict(L=200, batch=1024, hidden=256, layers=4, heads=4)


def sync_count(fn, dev: str) -> int:
    import torch

    if dev != "cuda":
        return -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def measure(cfg: dict, repeats: int, compile: bool, dev: str = "cuda") -> dict:
    import torch

    from collectors.torch import AttentionCapture

    synchronize = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    L, B = cfg["L"], cfg["batch"]
    model = build_model(L, hidden=cfg["hidden"], layers=cfg["layers"], heads=cfg["heads"], device=dev)
    seq, lengths = batch_of(L, batch=B, device=dev)
    copy_c = quiet_collector(sample_rate=0.0)
    dev_c = quiet_collector(sample_rate=0.0)
    comp_c = quiet_collector(sample_rate=0.0)
    never = AttentionCapture(model, quiet_collector(), sample_rate=0.0)
    cap_copy = AttentionCapture(model, copy_c)
    cap_dev = AttentionCapture(model, dev_c, on_device=True)
    cap_comp = AttentionCapture(model, comp_c, on_device=True, compile=True) if compile else None

    def in_batch(cap):
        def fn():
            with cap.batch(item_ids=seq, lengths=lengths, cohorts="web"):
                model(seq)
        return fn


    variants = {
        "fused forward": lambda: model(seq),
        "unsampled batch": in_batch(never),
        "per-head weights forced": lambda: forced_forward(model, seq),
        "capture, copy path": in_batch(cap_copy),
        "capture, on-device path": in_batch(cap_dev),
    }
    if cap_comp is not None:
        variants["capture, on-device (compiled)"] = in_batch(cap_comp)

    background: list[float] = []

    def drain():
        # the on-device collectors' thread work, by hand: resolve() and accumulate
        for c in (dev_c, comp_c):
            t0 = time.perf_counter()
            n = len(c._q)
            c._drain()
            if n:
                background.append((time.perf_counter() - t0) / n)
            c._acc.clear()
        copy_c._q.clear()

    wall = {k: np.empty(repeats) for k in variants}
    ret = {k: np.empty(repeats) for k in variants}
    syncs = {}
    clock = time.perf_counter
    with torch.inference_mode():
        t0 = clock()
        for _ in range(3):  # warm-up (and compilation)
            for fn in variants.values():
                fn()
            drain()
        synchronize()
        warm_s = clock() - t0
        for name, fn in variants.items():
            synchronize()
            syncs[name] = sync_count(fn, dev)
            synchronize()
            drain()
        names = list(variants)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = variants[name]
                synchronize()
                t0 = clock()
                fn()
                t1 = clock()
                synchronize()
                t2 = clock()
                ret[name][r], wall[name][r] = t1 - t0, t2 - t0
            drain()
    background_ms = float(np.median(background[-repeats:])) * 1e3 if background else None
    for c in (copy_c, dev_c, comp_c, never.collector):
        retire(c)
    for cap in (never, cap_copy, cap_dev, cap_comp):
        if cap is not None:
            cap.remove()
    return {"wall": wall, "return": ret, "syncs": syncs, "warmup_s": warm_s,
            "background_ms": background_ms}


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_capture")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--large", action="store_true", help="also hidden 256, 4 layers, L=200, batch 1024")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    p.add_argument("--device", default="cuda", help="'cpu' dry-runs the script's logic")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}): this script needs a GPU")
        return 2
    configs = CONFIGS + ([LARGE] if args.large else [])
    repeats = 20 if args.quick else 100
    rows: list[Row] = []
    results = []
    for cfg in configs:
        m = measure(cfg, repeats, compile=not args.no_compile, dev=args.device)
        fused = float(np.median(m["wall"]["fused forward"])) * 1e9
        label = f"L={cfg['L']} B={cfg['batch']} d={cfg['hidden']}x{cfg['layers']}"
        for name in m["wall"]:
            wall = float(np.median(m["wall"][name])) * 1e9
            back = float(np.median(m["return"][name])) * 1e9
            rows.append(Row(f"gpu {label}: {name}", "time", wall, "ns", bare=fused,
                            bare_name="fused forward",
                            extra={"returns_after_ms": round(back / 1e6, 3),
                                   "syncs": m["syncs"][name], **cfg}))
        if m["background_ms"] is not None:
            print(f"  {label}: on-device collector thread (resolve + accumulate) "
                  f"{m['background_ms']:.3f} ms per batch")
        results.append({"config": cfg, "warmup_s": round(m["warmup_s"], 1), "syncs": m["syncs"],
                        "background_ms": m["background_ms"],
                        **{f"{kind}_ms": {k: [round(float(x) * 1e3, 4) for x in v]
                                          for k, v in m[kind].items()} for kind in ("wall", "return")}})
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{device} — torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(table([r.cells() for r in rows]))
    for r in rows:
        print(f"  {r.name}: returns after {r.extra['returns_after_ms']:.3f} ms; "
              f"synchronising calls {r.extra['syncs']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_capture-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "rows": [r.to_json() for r in rows], "raw": results}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
