"""Result rows, the printed table, the machine description and the JSON files."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HEADER = ("benchmark", "figure", "bare reference", "ratio", "goal", "met?")


@dataclass
class Row:
    """One figure beside its bare reference.

    `kind` is "time" (ns per call: lower is better), "rate" (per second: higher is
    better), "bytes" or "count" (no ratio: judged against its goal). `shown`, when set,
    is printed instead of the formatted figure. `ratio` is always the cost relative to the bare reference
    (time per unit divided by the bare time per unit: 1.0 = as cheap, 3.0 = three times
    the cost), so that one goal reads the same way on every row.
    """

    name: str
    kind: str
    figure: float
    unit: str
    bare: float | None = None
    bare_name: str = ""
    goal: str = ""
    met: bool | None = None
    extra: dict = field(default_factory=dict)
    shown: str = ""

    @property
    def ratio(self) -> float | None:
        if self.bare is None or not self.figure or not self.bare:
            return None
        if self.kind == "rate":
            return self.bare / self.figure
        return self.figure / self.bare

    def cells(self) -> tuple[str, ...]:
        ratio = self.ratio
        return (
            self.name,
            self.shown or fmt(self.figure, self.kind, self.unit),
            "—" if self.bare is None else fmt(self.bare, self.kind, self.unit),
            "—" if ratio is None else f"{ratio:.2f}×",
            self.goal or "—",
            {True: "yes", False: "NO", None: "—"}[self.met],
        )

    def to_json(self) -> dict:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def fmt(value: float, kind: str, unit: str) -> str:
    if kind == "time":  # value in ns
        if value < 1_000:
            return f"{value:.0f} ns"
        if value < 1_000_000:
            return f"{value / 1e3:.2f} µs"
        if value < 1_000_000_000:
            return f"{value / 1e6:.2f} ms"
        return f"{value / 1e9:.2f} s"
    if kind == "rate":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.2f}{suffix} {unit}"
        return f"{value:.0f} {unit}"
    if kind == "bytes":
        return f"{value:,.0f} B"
    return f"{value:g} {unit}"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> str:
    """Plain text, columns aligned and separated by ' | '."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import numpy
    import psycopg
    import sqlalchemy

    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "sqlite": sqlite3.sqlite_version,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        # other work on the box skews every figure: say how busy it was
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_json(out_dir: Path, document: dict) -> tuple[Path, Path]:
    """`<out>/<timestamp>.json` and `<out>/latest.json` (the same content)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n"
    path = out_dir / f"{stamp}.json"
    path.write_text(text, encoding="utf-8")
    latest = out_dir / "latest.json"
    latest.write_text(text, encoding="utf-8")
    return path, latest
