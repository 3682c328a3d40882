"""Runs every benchmark, prints the table and writes the JSON results.

Sections (`--only` takes a comma-separated list of these names):
  observe     observe() hot path
  throughput  background throughput
  serving     serving-call latency beside an AttentionCollector, a ProcessCollector and none
  sizing      storage sizing
  writes      SQLite and PostgreSQL writes (needs the sizing traffic: it is made either way)
  evaluate    evaluation cycle beside evidently's DataDriftPreset
  detection   detection quality (scenarios, false alarms over a simulated week)
  capture     what collectors.torch.AttentionCapture adds to a serving forward (needs torch)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    detection,
    evaluation,
    hot_path,
    pg,
    serving,
    sizing,
    store_writes,
    throughput,
)
from benchmarks.report import Row, machine, table, write_json
from benchmarks.workload import replicas_traffic

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SECTIONS = ("observe", "throughput", "serving", "sizing", "writes", "evaluate", "detection", "capture")


def sections_arg(value: str) -> set[str]:
    names = {v.strip() for v in value.split(",") if v.strip()}
    bad = names - set(SECTIONS)
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {sorted(bad)}; known: {', '.join(SECTIONS)}")
    return names


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (~2 min; the full run takes ~14 min)")
    p.add_argument("--only", type=sections_arg, default=set(SECTIONS), metavar="SECTION[,SECTION]",
                   help=f"run only these sections ({', '.join(SECTIONS)}); default: all")
    p.add_argument("--pg-url", default=os.environ.get(pg.PG_URL_ENV),
                   help=f"PostgreSQL URL (default ${pg.PG_URL_ENV}); without one the "
                   "PostgreSQL rows are skipped")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    return p.parse_args(argv)


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def event_pool(quick: bool) -> list[dict]:
    """attention_events rows as a collector sampling every request builds them."""
    (batch,) = replicas_traffic(
        minutes=1, per_minute=250 if quick else 1_000, replicas=1, layers=sizing.LAYERS,
        heads=sizing.HEADS, length=sizing.LENGTH, sample_rate=1.0,
        model="sasrec-retail", version="2026-11-20.1",
    )
    return batch.events


LEGEND = """\
ratio = cost relative to the bare reference (time per unit ÷ bare time per unit; 1 = as
cheap, 3 = three times the cost). Bare references, measured in the same run:
  observe()    deque.append(arr.copy()) of the same array, timed interleaved with it
  background   numpy -(p*np.log(p)).sum(-1) over the same (N, 50) float32 per-head vectors
  serving      the same paced serving loop with deque.append of copies and no collector
  PostgreSQL   raw psycopg COPY (FORMAT BINARY) of the same rows, one transaction per batch,
               into CREATE TABLE copy_t (LIKE t INCLUDING ALL)
  SQLite       raw sqlite3 executemany of the same rows into the same table (other file)
  evaluate     evidently DataDriftPreset (Report.run, import not counted) on raw per-vector
               metrics of the same simulated traffic (a goal ratio ≤ 0.05× = ≥ 20× faster)
  detection    none: counts judged against their goals
  capture      the same model's fused forward, no capture object, interleaved"""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    notes: list[str] = []
    rows: list[Row] = []
    sections: dict[str, float] = {}

    def section(name: str, fn):
        progress(f"{name} ...")
        t0 = time.perf_counter()
        out = fn()
        sections[name] = round(time.perf_counter() - t0, 2)
        return out

    only = args.only
    size = None
    evaluate_detail = detection_detail = None
    if "observe" in only:
        rows += section("observe() hot path", lambda: hot_path.run(args.quick))
    if "throughput" in only:
        rows += section("background throughput", lambda: throughput.run(args.quick))
    if "serving" in only:
        rows += section("serving latency", lambda: serving.run(args.quick))
    ok, server = pg.reachable(args.pg_url)
    if "sizing" in only or "writes" in only:
        size, agg_batches = section(
            "storage sizing", lambda: sizing.measure(3 if args.quick else 10))
    if "writes" in only:
        events = section("sampled events", lambda: event_pool(args.quick))
        pools = {"aggregates": [r for b in agg_batches for r in b.aggregates], "events": events}
        rows += section("SQLite writes", lambda: store_writes.run_sqlite(pools, args.quick))
        if ok:
            rows += section("PostgreSQL writes",
                            lambda: store_writes.run_postgres(pools, args.pg_url, args.quick))
    if "sizing" in only:
        rows += sizing.rows(size)
    if "evaluate" in only:
        got, evaluate_detail = section("evaluation cycle", lambda: evaluation.run(
            args.quick, args.pg_url if ok else None, progress))
        rows += got
    if "detection" in only:
        got, detection_detail = section("detection quality",
                                        lambda: detection.run(args.quick, progress))
        rows += got
    if "capture" in only:
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            from benchmarks import capture

            rows += section("torch capture", lambda: capture.run(args.quick))
        else:
            notes.append("torch capture rows skipped: torch not installed (pip install -e '.[torch]')")
    if not ok and only & {"writes", "evaluate"}:
        notes.append(f"PostgreSQL rows skipped: {server}")

    elapsed = time.perf_counter() - started
    info = machine()
    info["loadavg_1m_at_start"] = load_at_start
    if ok:
        info["postgresql"] = server
    subset = "" if only == set(SECTIONS) else f" [{', '.join(n for n in SECTIONS if n in only)}]"
    print(f"attnmon benchmarks{' (--quick)' if args.quick else ''}{subset} — "
          f"{info['cpu_model']}, {info['cores']} cores, Python {info['python']}, "
          f"numpy {info['numpy']}" + (f", PostgreSQL {server}" if ok else "")
          + f"; load average {load_at_start:.2f} at start")
    print()
    print(table([r.cells() for r in rows]))
    print()
    print(LEGEND)
    for r in rows:
        if "text_copy_rows_per_s" in r.extra:
            print(f"  {r.name}: text-format COPY {r.extra['text_copy_rows_per_s']:,.0f} rows/s "
                  f"(ratio to it {r.extra['ratio_to_text_copy']:.2f}×)")
    for text, wanted in ((size and sizing.details(size), "sizing" in only),
                         (evaluate_detail and evaluation.details(evaluate_detail), True),
                         (detection_detail and detection.details(detection_detail), True)):
        if text and wanted:
            print()
            print(text)
    for note in notes:
        print(f"\nNOTE: {note}")
    document = {
        "created_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "sections": [name for name in SECTIONS if name in only],
        "elapsed_s": round(elapsed, 1),
        "sections_s": sections,
        "machine": info,
        "results": [r.to_json() for r in rows],
        "sizing": size,
        "evaluation": evaluate_detail,
        "detection": detection_detail,
        "notes": notes,
    }
    path, latest = write_json(args.out, document)
    print(f"\nwritten: {path} and {latest.name} ({elapsed:.0f} s)")
    return 0
