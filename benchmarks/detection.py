"""Detection quality (monitor.quality): how soon known shifts are caught, and how often a
stationary stream crosses the default rule thresholds.

- each of `scenarios()` on a fresh, migrated SQLite store: `run_scenario` streams 3 h of
  stationary traffic then the defect, evaluates every minute from 10 minutes before the
  shift to 8 after, and reports the first cycle (counted from the first window holding
  shifted data) where a rule fires in the changed series, and every unchanged series
  where one fires;
- `false_alarms`: a stationary stream evaluated every minute with the default config and
  rules for `days` simulated days (after a day of warm-up for the trailing baseline);
  crossings are scaled to a week.

No bare reference: these are counts, judged against the goals.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.report import Row, table
from monitor.quality import false_alarms, run_scenario, scenarios
from monitor.store import migrate

FIRST_CYCLE_GOAL = 3
PER_WEEK_GOAL = 1.0


def _fresh(tmp: str, name: str) -> str:
    url = f"sqlite:///{Path(tmp) / name}.db"
    migrate.upgrade(url)
    return url


def run(quick: bool, progress=lambda s: None) -> tuple[list[Row], dict]:
    days = 0.5 if quick else 7.0
    rows: list[Row] = []
    detail: dict = {"scenarios": [], "false_alarms": None}
    with tempfile.TemporaryDirectory(prefix="attnmon-bench-") as tmp:
        for sc in scenarios():
            t0 = time.perf_counter()
            d = run_scenario(_fresh(tmp, sc.name), sc)
            secs = time.perf_counter() - t0
            progress(f"  {sc.name}: first cycle {d.first_cycle} ({secs:.0f} s)")
            shown = ("not detected" if d.first_cycle is None else f"cycle {d.first_cycle}") + \
                f", {len(d.false_series)} false series"
            r = Row(f"detection {sc.name}", "count", float(d.first_cycle or 0), "cycles",
                    goal=f"≤ {FIRST_CYCLE_GOAL} cycles, no false series", shown=shown,
                    extra={"rules": list(d.rules), "false_series": list(d.false_series),
                           "shift_at": d.shift_at.isoformat(), "seconds": secs})
            r.met = bool(d.first_cycle is not None and d.first_cycle <= FIRST_CYCLE_GOAL
                         and not d.false_series)
            rows.append(r)
            detail["scenarios"].append({"name": sc.name, "first_cycle": d.first_cycle,
                                        "rules": list(d.rules), "false_series": list(d.false_series),
                                        "seconds": secs})
        progress(f"  false alarms, {days:g} simulated days ...")
        t0 = time.perf_counter()
        fa = false_alarms(_fresh(tmp, "stationary"), days=days)
        secs = time.perf_counter() - t0
    span = "7 days" if days == 7 else f"{days:g} day, scaled ×{7 / days:g} (--quick)"
    r = Row(f"false alarms, stationary {span}", "count", fa.per_week, "per week",
            goal=f"≤ {PER_WEEK_GOAL:g} per week",
            shown=f"{fa.per_week:g} per week ({fa.crossings} crossings)",
            extra={"days": fa.days, "series": fa.series, "cycles": fa.cycles,
                   "results": fa.results, "crossings": fa.crossings, "by_rule": fa.by_rule,
                   "seconds": secs})
    r.met = bool(fa.per_week <= PER_WEEK_GOAL)
    rows.append(r)
    detail["false_alarms"] = dict(r.extra, per_week=fa.per_week)
    return rows, detail


def details(d: dict) -> str:
    fa = d["false_alarms"]
    scen = table(
        [(s["name"], "—" if s["first_cycle"] is None else str(s["first_cycle"]),
          ", ".join(s["rules"]) or "—", str(len(s["false_series"])), f"{s['seconds']:.0f}")
         for s in d["scenarios"]],
        ("scenario", "first cycle", "rules fired in the changed series", "false series", "s"))
    by_rule = ", ".join(f"{k} {v}" for k, v in sorted(fa["by_rule"].items())) or "none"
    return "\n".join([
        "Detection quality — monitor.quality on fresh SQLite stores, default rules "
        "(alerts/rules); scenarios with a 2 h trailing baseline (quality.TEST_EVALUATE).",
        scen,
        f"False alarms: {fa['days']:g} simulated days, {fa['series']} series, "
        f"{fa['cycles']:,} cycles, {fa['results']:,} drift_results rows, "
        f"{fa['crossings']} crossings ({fa['per_week']:g} per week); by rule: {by_rule}; "
        f"{fa['seconds']:.0f} s.",
    ])
