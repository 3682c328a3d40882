"""The whole example: train v1, a defective v2 and a harmless v2b; serve v1 then each
update in simulated time through the real data path; let the daemon evaluate and alert;
ask rollback-check; write figures, the HTML reports and summary.json; print the story."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from examples.movielens.data import MovieLens, load
from examples.movielens.serve import MODEL, Traffic, serve
from examples.movielens.train import hit_ndcg, split, train_model

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp()
# SASRec's own figures (Kang & McAuley 2018, Table III) on MovieLens-1M, the same protocol
PUBLISHED = {"data": "MovieLens-1M", "hr10": 0.8245, "ndcg10": 0.5905}


@dataclass(frozen=True)
class Settings:
    epochs: int  # per model
    lr: float
    users: int | None  # users to train on (None: all 943)
    before: int  # minutes v1 serves before the update
    after: int  # minutes the update serves
    rate: int  # requests a minute
    figures: bool = True


# FULL: HR@10 ≈ 0.70 on the whole data set, ~2 CPU minutes a model (1 thread, a shared
# 2-core machine). QUICK (CI): 400 users, trained just long enough for v1 to be a real
# recommender (HR@10 ≈ 0.65) and for v2's loss of recency to show in its attention.
FULL = Settings(epochs=40, lr=2e-3, users=None, before=90, after=60, rate=200)
QUICK = Settings(epochs=10, lr=5e-3, users=400, before=25, after=20, rate=200)

# v2 and v2b differ only in the defect: same seed (the same initial weights), same settings
VERSIONS = {
    "v1": dict(seed=0, shuffle_order=False, what="the model in production"),
    "v2": dict(seed=1, shuffle_order=True, what="retrained on histories whose order was lost (shuffled)"),
    "v2b": dict(seed=1, shuffle_order=False, what="retrained with another seed, same data (harmless)"),
}
EVALUATE = {"baseline_hours": 1, "trailing_gap_hours": 1, "min_samples": 300}  # as monitor.demo


@dataclass
class Branch:
    version: str
    store_url: str
    verdict: object = None  # monitor.rollback.Verdict
    alerts: list[dict] = field(default_factory=list)
    measured: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    settings: Settings
    offline: dict[str, dict[str, float]]
    branches: dict[str, Branch]
    timings: dict[str, float]
    out: Path
    titles: dict[int, str] = field(default_factory=dict)  # MovieLens item id -> title

    def summary(self) -> dict:
        return {
            "settings": self.settings.__dict__,
            "published": PUBLISHED,
            "offline": self.offline,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "branches": {
                name: {
                    "verdict": b.verdict.to_json(),
                    "alerts": b.alerts,
                    "measured": b.measured,
                    "files": b.files,
                }
                for name, b in self.branches.items()
            },
        }


# --- training ---------------------------------------------------------------------------
def train_all(ml: MovieLens, s: Settings, log, reuse: Path | None = None) -> tuple[dict, dict, dict[str, float]]:
    """v1, v2 and v2b trained (or, with `reuse`, loaded from an earlier run's models/
    folder when it was trained with the same settings) and evaluated offline."""
    from examples.movielens.model import SASRec

    train, _valid, test = split(ml)
    if s.users is not None:
        keep = sorted(np.random.default_rng(0).choice(sorted(train), s.users, replace=False).tolist())
        train = {u: train[u] for u in keep}
        test = {u: test[u] for u in keep}
    models, offline, took = {}, {}, {}
    key = {"epochs": s.epochs, "lr": s.lr, "users": s.users}
    for version, spec in VERSIONS.items():
        t0 = time.monotonic()
        path = reuse / f"{version}.pt" if reuse is not None else None
        saved = torch.load(path) if path is not None and path.exists() else None
        if saved is not None and saved["settings"] == {**key, **spec}:
            models[version] = SASRec(ml.n_items)
            models[version].load_state_dict(saved["state"])
            models[version].eval()
            log(f"{version}: reusing {path}")
        else:
            log(f"training {version} ({spec['what']}): {s.epochs} epochs on {len(train)} users")
            models[version] = train_model(ml, train, epochs=s.epochs, lr=s.lr, seed=spec["seed"],
                                          shuffle_order=spec["shuffle_order"], log=log)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"settings": {**key, **spec}, "state": models[version].state_dict()}, path)
        took[f"train {version}"] = time.monotonic() - t0
        hr, ndcg = hit_ndcg(models[version], ml, test)
        offline[version] = {"hr10": round(hr, 4), "ndcg10": round(ndcg, 4), "users": len(test),
                            "train_s": round(took[f"train {version}"], 1), **spec}
        log(f"  {version}: HR@10 {hr:.3f}  NDCG@10 {ndcg:.3f}  ({took[f'train {version}']:.0f} s)")
    return models, offline, took


# --- serving ----------------------------------------------------------------------------
def _daemon(store_url: str, engine, now: list[float]):
    from monitor.config import Config
    from monitor.daemon import Daemon

    config = Config(store_url=store_url, evaluate=EVALUATE, daemon={"listen": "127.0.0.1:0"})
    return Daemon(config, engine=engine, clock=lambda: datetime.fromtimestamp(now[0], UTC))


def _copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite store (WAL included): the second branch's past."""
    for p in (dst, Path(f"{dst}-wal"), Path(f"{dst}-shm")):
        p.unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def serve_all(ml: MovieLens, models: dict, s: Settings, out: Path, log) -> tuple[dict[str, Branch], float, dict]:
    """v1 for `before` minutes, then two branches of the same timeline: v2 deployed in
    one store, v2b in a copy of it, each serving the same requests for `after` minutes."""
    from monitor.store import make_engine, migrate

    users = np.array(sorted(ml.histories))
    branches: dict[str, Branch] = {}
    dbs = {}
    for v in ("v2", "v2b"):
        (out / v).mkdir(parents=True, exist_ok=True)
        dbs[v] = out / v / "attnmon.db"
        for p in (dbs[v], Path(f"{dbs[v]}-wal"), Path(f"{dbs[v]}-shm")):
            p.unlink(missing_ok=True)
        branches[v] = Branch(v, f"sqlite:///{dbs[v]}")
    took = {}
    now = [START]

    # v1: one store, the daemon ticking every simulated minute
    t0 = time.monotonic()
    migrate.upgrade(branches["v2"].store_url)
    engine = make_engine(branches["v2"].store_url)
    daemon = _daemon(branches["v2"].store_url, engine, now)

    def tick(ts: float) -> None:
        now[0] = ts
        daemon.tick()

    log(f"serving v1 for {s.before} simulated minutes, {s.rate} requests a minute")
    traffic = Traffic(ml, users, np.random.default_rng(7))
    serve(branches["v2"].store_url, models["v1"], "v1", traffic, start=START, minutes=s.before, rate=s.rate,
          clock=now, on_minute=tick, seed=1)
    daemon.close()
    engine.dispose()
    _copy_sqlite(dbs["v2"], dbs["v2b"])
    took["serve v1"] = time.monotonic() - t0

    deploy = START + 60 * s.before
    end = deploy + 60 * s.after
    for v in ("v2", "v2b"):
        t0 = time.monotonic()
        b = branches[v]
        engine = make_engine(b.store_url)
        now[0] = deploy
        daemon = _daemon(b.store_url, engine, now)

        def tick(ts: float, daemon=daemon) -> None:
            now[0] = ts
            daemon.tick()

        log(f"deploying {v} at +{s.before} min ({VERSIONS[v]['what']}); serving {s.after} minutes")
        traffic = Traffic(ml, users, np.random.default_rng(8))  # the same requests in both branches
        serve(b.store_url, models[v], v, traffic, start=deploy, minutes=s.after, rate=s.rate, clock=now,
              on_minute=tick, seed=2)
        daemon.close()
        engine.dispose()
        took[f"serve {v}"] = time.monotonic() - t0
    return branches, end, took


# --- reading it back -----------------------------------------------------------------------
def _sketches(engine, version: str, start: datetime, end: datetime) -> dict[tuple[str, str], object]:
    """Merged sketches of the all-cohorts series of `version` in [start, end), by (layer, head)."""
    from sqlalchemy import select

    from monitor.sketch import Sketch, merge_all
    from monitor.store import tables as t

    wa = t.window_aggregates
    parts: dict[tuple[str, str], list] = {}
    q = select(wa).where(wa.c.model == MODEL, wa.c.version == version, wa.c.cohort == "*",
                         wa.c.bucket_start >= start, wa.c.bucket_start < end)
    with engine.connect() as conn:
        for row in conn.execute(q).mappings():
            parts.setdefault((row["layer"], row["head"]), []).append(Sketch.from_row(row))
    return {k: merge_all(v) for k, v in parts.items()}


def _shares(sk, name: str, top: int = 6) -> dict[str, float]:
    tk = sk.attrs.get(name)
    if tk is None:
        return {}
    return {k: round(v, 4) for k, v in sorted(tk.shares().items(), key=lambda kv: -kv[1])[:top]}


def measure(engine, verdict, end: datetime) -> dict:
    """What moved between the baseline version and the candidate, from the stored sketches
    (the rollback check's windows): per head and per layer, plus the most extreme values
    the daemon's evaluations saw after the deploy (drift_results of the all-cohorts series
    against the previous version: heads matched when the weights are new, as the daemon does)."""
    from sqlalchemy import func, select

    from monitor import stats
    from monitor.heads import match_heads
    from monitor.metrics import ALL_METRICS
    from monitor.store import tables as t

    col = {m: i for i, m in enumerate(ALL_METRICS)}
    base = _sketches(engine, verdict.baseline, *verdict.baseline_window)
    cand = _sketches(engine, verdict.candidate, verdict.candidate_since, end)
    mean = lambda sk, m: round(float(sk.sums[col[m]] / sk.n), 4)  # noqa: E731
    shown = ("entropy_norm", "recency5", "top1", "distance")
    out: dict = {"heads": {}, "layers": {}, "daemon_extreme": {}}
    for layer in sorted({k[0] for k in base} & {k[0] for k in cand}):
        bh = {h: s for (ly, h), s in base.items() if ly == layer and h != "*"}
        ch = {h: s for (ly, h), s in cand.items() if ly == layer and h != "*"}
        matched = match_heads(bh, ch)
        for h in sorted(ch):
            b, c, m = bh[h], ch[h], bh[matched[h]]
            j = col["entropy_norm"]
            out["heads"][f"{layer}/{h}"] = {
                "baseline": {k: mean(b, k) for k in shown},
                "candidate": {k: mean(c, k) for k in shown},
                "psi_entropy_norm": round(stats.psi(b.hist[j], c.hist[j]), 4),
                "js_position": round(stats.js_profile(b.pos, c.pos), 4),
                "matched_to": matched[h],
                "matched_psi_entropy_norm": round(stats.psi(m.hist[j], c.hist[j]), 4),
                "matched_js_position": round(stats.js_profile(m.pos, c.pos), 4),
            }
        b, c = base[(layer, "*")], cand[(layer, "*")]
        out["layers"][layer] = {
            "baseline": {k: mean(b, k) for k in (*shown, "head_diversity")},
            "candidate": {k: mean(c, k) for k in (*shown, "head_diversity")},
            "js_position": round(stats.js_profile(b.pos, c.pos), 4),
            "genre": {"baseline": _shares(b, "genre"), "candidate": _shares(c, "genre")},
            "genre_js": round(stats.shares_js(b.attrs["genre"].shares(), c.attrs["genre"].shares()), 4),
            "decade": {"baseline": _shares(b, "decade"), "candidate": _shares(c, "decade")},
            "top10_items": [round(stats.top_share(b.items.shares(), 10), 4),
                            round(stats.top_share(c.items.shares(), 10), 4)] if b.items and c.items else None,
        }
    dr = t.drift_results
    q = (select(dr.c.layer, dr.c.head, dr.c.statistic, func.min(dr.c.value), func.max(dr.c.value))
         .where(dr.c.model == MODEL, dr.c.version == verdict.candidate, dr.c.cohort == "*",
                dr.c.baseline_kind.in_(["previous_version", "retrain"]),
                dr.c.statistic.in_(["psi.entropy_norm", "js.position_profile", "delta.recency5",
                                    "delta.entropy_norm", "mover.attr.genre", "mover.attr.decade"]))
         .group_by(dr.c.layer, dr.c.head, dr.c.statistic))
    with engine.connect() as conn:
        for layer, head, stat, lo, hi in conn.execute(q):  # the most extreme value, with its sign
            value = lo if abs(lo) > abs(hi) else hi
            out["daemon_extreme"].setdefault(stat, {})[f"{layer}/{head}"] = round(float(value), 4)
    return out


def fired_alerts(engine) -> list[dict]:
    from sqlalchemy import select

    from monitor.store import tables as t
    from monitor.store.maintenance import as_utc

    with engine.connect() as conn:
        rows = conn.execute(
            select(t.alerts.c.rule, t.alerts.c.severity, t.alerts.c.labels, t.alerts.c.fired_at, t.alerts.c.value,
                   t.alerts.c.annotations)
            .where(t.alerts.c.fired_at.is_not(None)).order_by(t.alerts.c.fired_at)
        ).all()
    return [{"rule": r, "severity": sev, "version": (lab or {}).get("version"), "cohort": (lab or {}).get("cohort"),
             "layer": (lab or {}).get("layer"), "head": (lab or {}).get("head"),
             "statistic": (lab or {}).get("statistic"), "value": round(float(v), 4) if v is not None else None,
             "fired_at": as_utc(at).isoformat(), "summary": (notes or {}).get("summary")}
            for r, sev, lab, at, v, notes in rows]


def judge(branches: dict[str, Branch], end: float, s: Settings, log) -> dict[str, float]:
    """rollback-check, the alerts that fired, the measurements, the HTML report and figures."""
    from monitor.report import render_html
    from monitor.rollback import check
    from monitor.store import make_engine

    at = datetime.fromtimestamp(end, UTC)
    took = {}
    for v, b in branches.items():
        t0 = time.monotonic()
        engine = make_engine(b.store_url)
        try:
            b.verdict = check(engine, MODEL, now=at)
            b.alerts = fired_alerts(engine)
            b.measured = measure(engine, b.verdict, at)
            folder = Path(b.store_url.removeprefix("sqlite:///")).parent
            html = folder / "rollback-report.html"
            html.write_text(render_html(engine, b.verdict, at), encoding="utf-8")
            b.files = {"store": b.store_url, "report": str(html)}
            if s.figures:
                from dashboards.catalog import dashboards
                from dashboards.report import report

                report(engine, folder / "figures", boards=dashboards(None), model=MODEL)
                b.files["figures"] = str(folder / "figures")
        finally:
            engine.dispose()
        took[f"judge {v}"] = time.monotonic() - t0
        log(f"rollback-check {v}: {b.verdict.verdict} ({took[f'judge {v}']:.0f} s)")
    return took


def run(out: Path, settings: Settings = FULL, log=print, reuse_models: bool = False) -> Result:
    """The whole example into `out`. `reuse_models` keeps the trained models in out/models
    and loads them on the next run with the same settings (to replay the serving story)."""
    began = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    ml = load()
    models, offline, timings = train_all(ml, settings, log, out / "models" if reuse_models else None)
    branches, end, took = serve_all(ml, models, settings, out, log)
    timings.update(took)
    timings.update(judge(branches, end, settings, log))
    timings["total"] = time.monotonic() - began
    titles = {int(i): str(x) for i, x in zip(ml.raw_id[1:], ml.title[1:], strict=True)}
    result = Result(settings, offline, branches, timings, out, titles)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str), encoding="utf-8")
    return result


# --- the story ----------------------------------------------------------------------------
def story(r: Result) -> str:
    from monitor.rollback import render_text

    s = r.settings
    lines = [
        "SASRec (2 layers x 2 heads, hidden 64, max length 50; torch.nn.MultiheadAttention) on MovieLens-100K",
        "",
        "Offline, leave-one-out, the held-out last item against 100 sampled items the user never rated:",
        f"  {'version':<8}{'HR@10':>7}{'NDCG@10':>9}{'train':>8}  what",
    ]
    for v, o in r.offline.items():
        lines.append(f"  {v:<8}{o['hr10']:>7.3f}{o['ndcg10']:>9.3f}{o['train_s']:>7.0f}s  {o['what']}")
    lines += [
        f"  {'SASRec':<8}{PUBLISHED['hr10']:>7.4f}{PUBLISHED['ndcg10']:>9.4f}{'':>8}  Kang & McAuley 2018, on "
        f"{PUBLISHED['data']} (6,040 users, 1M ratings, 200-item histories): ML-100K is smaller and sparser",
        "",
        f"Serving in simulated time: v1 for {s.before} min, then v2 or v2b for {s.after} min, {s.rate} requests a "
        "minute (the 943 users' real histories cut at random points"
        + (f"; the models were trained on {s.users} of the users, the others are new to them" if s.users else "")
        + "), attention through AttentionCapture and AttentionCollector, the daemon evaluating every minute.",
        "",
        "Attention of the layers (all heads averaged), v1 before the update against each candidate after it:",
        f"  {'':<12}{'recency5':>18}{'entropy_norm':>18}{'distance':>18}{'JS(position)':>14}",
    ]
    for v, b in r.branches.items():
        for layer, m in b.measured["layers"].items():
            bb, cc = m["baseline"], m["candidate"]
            lines.append(f"  {v + ' layer ' + layer:<12}"
                         + "".join(f"{bb[k]:>9.3f} → {cc[k]:<6.3f}" for k in ("recency5", "entropy_norm"))
                         + f"{bb['distance']:>9.2f} → {cc['distance']:<6.2f}{m['js_position']:>14.3f}")
    lines += ["", "Heads (matched across the retrain as rollback-check does), entropy_norm and recency5:"]
    for v, b in r.branches.items():
        parts = []
        for key, h in b.measured["heads"].items():
            layer = key.split("/")[0]
            base = r.branches[v].measured["heads"][f"{layer}/{h['matched_to']}"]["baseline"]
            parts.append(f"{key}←{h['matched_to']}: {base['entropy_norm']:.2f}→{h['candidate']['entropy_norm']:.2f}, "
                         f"{base['recency5']:.2f}→{h['candidate']['recency5']:.2f} "
                         f"(PSI {h['matched_psi_entropy_norm']:.2f}, JS {h['matched_js_position']:.2f})")
        lines.append(f"  {v}: " + "; ".join(parts))
    lines += ["", "Alerts that fired (default rule pack):"]
    for v, b in r.branches.items():
        if not b.alerts:
            lines.append(f"  {v}: none")
            continue
        by: dict[str, list[str]] = {}
        for a in b.alerts:
            where = f"layer {a['layer']} {'all heads' if a['head'] == '*' else 'head ' + str(a['head'])}"
            where += "" if a["cohort"] == "*" else f" ({a['cohort']})"
            by.setdefault(f"{a['rule']} [{a['severity']}]", []).append(where)
        for rule, where in by.items():
            more = f" and {len(where) - 4} more" if len(where) > 4 else ""
            lines.append(f"  {v}: {rule} on {'; '.join(where[:4])}{more}")
        for a in b.alerts:  # what the attribute rule says (the value that moved)
            if a["rule"] == "AttributeShareShift" and a["cohort"] == "*" and a["summary"]:
                lines.append(f"      e.g. {a['summary']}")
                break
    lines += ["", "Rollback verdicts (attnmon rollback-check --model sasrec-ml100k):"]
    for b in r.branches.values():
        lines += ["  " + x for x in render_text(b.verdict).splitlines()]
    lines += ["", "rollback-check's own comparison of the versions (its reasons other than fired alerts):"]
    for v, b in r.branches.items():
        own = [x for x in b.verdict.reasons if x.kind != "alerts"]
        worst = ("critical" if any(x.severity == "critical" for x in own)
                 else "warning" if own else "nothing beyond what a harmless update does")
        lines.append(f"  {v}: {len(own)} reason(s), {worst}")
        lines += [f"    [{x.severity}] {x.text}" for x in own[:6]]
        if len(own) > 6:
            lines.append(f"    ... and {len(own) - 6} more")
    named: set[int] = set()
    for b in r.branches.values():
        for reason in b.verdict.reasons:
            if reason.kind == "concentration":
                named.update(int(i) for i in re.findall(r"\d+", reason.text.split("most attended:")[-1]))
    if named and r.titles:
        lines.append("  items named above: " + "; ".join(f"{i} = {r.titles.get(i, '?')}" for i in sorted(named)))
    lines += ["", "Offline accuracy beside the verdicts:"]
    for v, b in r.branches.items():
        o, o1 = r.offline[v], r.offline["v1"]
        lines.append(f"  {v}: HR@10 {o1['hr10']:.3f} → {o['hr10']:.3f}, NDCG@10 {o1['ndcg10']:.3f} → {o['ndcg10']:.3f}: "
                     f"{b.verdict.verdict}")
    t = r.timings
    lines += ["", f"Took {t['total']:.0f} s: training "
              f"{sum(v for k, v in t.items() if k.startswith('train')):.0f} s, serving and the daemon "
              f"{sum(v for k, v in t.items() if k.startswith('serve')):.0f} s, verdicts, reports and figures "
              f"{sum(v for k, v in t.items() if k.startswith('judge')):.0f} s.",
              f"Files: {r.out}/summary.json; per branch {r.out}/v2/ and {r.out}/v2b/: attnmon.db, "
              "rollback-report.html, figures/*.png"]
    return "\n".join(lines)
