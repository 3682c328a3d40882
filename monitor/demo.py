"""`attnmon demo`: simulated traffic of a retail recommender through the real data path.

`demo-sasrec` v1 serves first; at a known time v2 is deployed (with a defect unless
--no-defect): a promoted brand captures one head's attention and another head's entropy
collapses. Everything goes through AttentionCollector into the store on a simulated
clock; the story printed at the end is read back from the store.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from monitor.simulate import Defect, SimModel, Traffic, make_catalogue

MODEL = "demo-sasrec"
PROMOTED = "brand007"
DEFECT = Defect(promoted_brand=PROMOTED, promoted_head=(1, 0), promoted_bonus=6.0, collapse_head=(1, 2))
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class DemoResult:
    store_url: str
    deploy_at: float
    end_at: float
    requests: int


class _Progress:
    """A one-line progress bar on stderr (no dependency for 30 lines of output)."""

    def __init__(self, total: int, label: str, stream=sys.stderr):
        self.total, self.label, self.stream = total, label, stream
        self.last = -1.0

    def update(self, done: int) -> None:
        frac = done / self.total
        if frac - self.last < 0.02 and done != self.total:
            return
        self.last = frac
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}%")
        if done == self.total:
            self.stream.write("\n")
        self.stream.flush()


@dataclass(frozen=True)
class Segment:
    """`minutes` of traffic served by `version`, computed with `defect` (same weights)."""

    version: str
    minutes: int
    defect: Defect = Defect()
    model_seed: int | None = None  # another seed: a retrain (new weights), same world
    weights_id: str | None = None


def stream(
    store_url: str,
    segments: list[Segment],
    *,
    rate: int = 200,
    seed: int = 7,
    start: float = START,
    sample_rate: float = 0.02,
    progress: bool = False,
) -> float:
    """Serve the segments one after another on a simulated clock; returns the end time."""
    from collectors import AttentionCollector

    rng = np.random.default_rng(seed)
    cat = make_catalogue(rng)
    traffic = Traffic(cat, rng)
    total_minutes = sum(s.minutes for s in segments)
    bar = _Progress(total_minutes, "simulating traffic") if progress else None
    clock = [start]
    done = 0
    for seg in segments:
        model = SimModel(cat, seed=seed if seg.model_seed is None else seg.model_seed, defect=seg.defect)
        with AttentionCollector(
            store_url, model=MODEL, version=seg.version, sample_rate=sample_rate, weights_id=seg.weights_id,
            clock=lambda: clock[0], flush_interval_s=3600, seed=seed + done,
        ) as collector:
            for m in range(seg.minutes):
                clock[0] = start + 60 * (done + m)
                hist, lengths, cohorts = traffic.requests(rate)
                weights = model.attention(hist, lengths, cohorts).astype(np.float32)
                collector.observe_batch(
                    weights,
                    item_ids=hist,
                    lengths=lengths,
                    cohorts=cohorts.tolist(),
                    attributes={"brand": cat.brand[hist], "category": cat.category[hist]},
                    request_ids=[f"{seg.version}-{done + m}-{i}" for i in range(rate)],
                    timestamps=clock[0] + np.sort(rng.uniform(0, 60, rate)),
                )
                if m % 30 == 29:
                    clock[0] += 60  # lets the collector write the closed minutes
                    collector.flush()
                if bar:
                    bar.update(done + m + 1)
        done += seg.minutes
    return start + 60 * done


def run_traffic(
    store_url: str,
    *,
    defect: bool = True,
    hours_before: float = 2.0,
    hours_after: float = 1.0,
    rate: int = 200,
    seed: int = 7,
    progress: bool = True,
) -> DemoResult:
    """v1 then v2 (defective unless `defect=False`) through collectors on a simulated clock."""
    before, after = int(hours_before * 60), int(hours_after * 60)
    segments = [Segment("v1", before), Segment("v2", after, DEFECT if defect else Defect())]
    end = stream(store_url, segments, rate=rate, seed=seed, progress=progress)
    return DemoResult(store_url, START + 60 * before, end, rate * (before + after))


def story(result: DemoResult) -> str:
    """What the store now says about v1 and v2, in words."""
    from monitor import Store

    store = Store(result.store_url)
    t0 = datetime.fromtimestamp(START, UTC)
    t1 = datetime.fromtimestamp(result.end_at, UTC)
    df = store.summary(MODEL, t0, t1, by=["version", "layer", "head"])
    lines = [
        f"{result.requests:,} predictions of {MODEL} logged to {result.store_url}",
        f"v2 deployed at {datetime.fromtimestamp(result.deploy_at, UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "mean entropy_norm and top1 per head (from the stored sketches):",
        f"  {'layer/head':<11}{'v1 entropy':>11}{'v2 entropy':>11}{'v1 top1':>9}{'v2 top1':>9}",
    ]
    for (layer, head), g in df.groupby(["layer", "head"]):
        by = g.set_index("version")
        e1, e2 = by.loc["v1", "entropy_norm"], by.loc["v2", "entropy_norm"]
        t1_, t2_ = by.loc["v1", "top1"], by.loc["v2", "top1"]
        flag = "   <- changed" if abs(e2 - e1) > 0.1 or abs(t2_ - t1_) > 0.1 else ""
        lines.append(f"  {layer + '/' + head:<11}{e1:>11.3f}{e2:>11.3f}{t1_:>9.3f}{t2_:>9.3f}{flag}")
    sk = store.sketches(MODEL, t0, t1, by=["version", "layer"], cohort="*", head="*")
    lines += ["", f"share of attention on {PROMOTED} (layer 1, all heads averaged):"]
    for version in ("v1", "v2"):
        s = sk.get((version, "1"))
        if s is not None and "brand" in s.attrs:
            share = s.attrs["brand"].shares().get(PROMOTED, 0.0)
            lines.append(f"  {version}: {100 * share:.1f}%")
    store.close()
    return "\n".join(lines)


def demo(out: Path, store_url: str | None = None, defect: bool = True, progress: bool = True) -> int:
    from monitor.store import migrate

    out.mkdir(parents=True, exist_ok=True)
    if store_url is None:
        db = out / "demo.db"
        db.unlink(missing_ok=True)
        store_url = f"sqlite:///{db}"
    migrate.upgrade(store_url)
    began = time.monotonic()
    result = run_traffic(store_url, defect=defect, progress=progress)
    print(story(result))
    print(f"\n(simulated {result.requests:,} predictions in {time.monotonic() - began:.0f} s)")
    return 0
