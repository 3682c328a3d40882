"""python -m examples.movielens [--quick] [--out DIR] [--threads N] [--rate N] [--reuse-models]

The story goes to stdout, progress to stderr; README: "A real model on real data"."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m examples.movielens",
        description="SASRec on MovieLens-100K through attnmon: train v1, a defective v2 (histories "
                    "shuffled) and a harmless v2b (another seed); serve them in simulated time; "
                    "alerts, rollback verdicts, figures.")
    ap.add_argument("--quick", action="store_true", help="the reduced run CI uses (fewer epochs and minutes)")
    ap.add_argument("--out", type=Path, default=Path("attnmon-out/movielens"), help="output folder")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a small shared machine more threads run slower)")
    ap.add_argument("--reuse-models", action="store_true",
                    help="keep the trained models in OUT/models and reuse them when the settings match")
    ap.add_argument("--rate", type=int, help="requests a simulated minute (default 200)")
    args = ap.parse_args(argv)

    import torch

    from examples.movielens.run import FULL, QUICK, run, story

    torch.set_num_threads(args.threads)
    began = time.monotonic()
    settings = QUICK if args.quick else FULL
    if args.rate:
        settings = dataclasses.replace(settings, rate=args.rate)
    result = run(args.out, settings, reuse_models=args.reuse_models,
                 log=lambda msg: print(f"[{time.monotonic() - began:5.0f} s] {msg}", file=sys.stderr, flush=True))
    print(story(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
