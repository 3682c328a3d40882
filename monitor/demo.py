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
from monitor.store.maintenance import as_utc

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
    on_minute=None,
) -> float:
    """Serve the segments one after another on a simulated clock; returns the end time.

    With `on_minute(now)`, every minute is written as soon as it closes and the callback
    runs then (the demo ticks its daemon there)."""
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
                if on_minute is not None:
                    clock[0] = start + 60 * (done + m + 1) + 5
                    collector.flush()
                    on_minute(clock[0])
                elif m % 30 == 29:
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
    """What the store now says about v1 and v2, per head, in words."""
    from monitor import Store

    store = Store(result.store_url)
    t0 = datetime.fromtimestamp(START, UTC)
    t1 = datetime.fromtimestamp(result.end_at, UTC)
    df = store.summary(MODEL, t0, t1, by=["version", "layer", "head"])
    lines = [
        "mean entropy_norm and top1 per head (from the stored sketches):",
        f"  {'layer/head':<11}{'v1 entropy':>11}{'v2 entropy':>11}{'v1 top1':>9}{'v2 top1':>9}",
    ]
    for (layer, head), g in df.groupby(["layer", "head"]):
        by = g.set_index("version")
        e1, e2 = by.loc["v1", "entropy_norm"], by.loc["v2", "entropy_norm"]
        t1_, t2_ = by.loc["v1", "top1"], by.loc["v2", "top1"]
        flag = "   <- changed" if abs(e2 - e1) > 0.1 or abs(t2_ - t1_) > 0.1 else ""
        lines.append(f"  {layer + '/' + head:<11}{e1:>11.3f}{e2:>11.3f}{t1_:>9.3f}{t2_:>9.3f}{flag}")
    store.close()
    return "\n".join(lines)


# The demo's evaluation: a one-hour baseline, since the simulated history is short.
DEMO_EVALUATE = {"baseline_hours": 1, "trailing_gap_hours": 1, "min_samples": 300}


class _Hook:
    """A local webhook receiver (127.0.0.1) that prints what on-call would get."""

    def __init__(self, out=None):
        import http.server
        import json
        import threading

        received = self.received = []
        seen: set[tuple] = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                received.append(body)
                # a message lists every alert of its group still firing: print what is new
                new = [a for a in body.get("alerts", []) if (a.get("fingerprint"), a.get("status")) not in seen]
                seen.update((a.get("fingerprint"), a.get("status")) for a in new)
                if new:
                    lab = new[0].get("labels", {})
                    where = "; ".join(
                        f"layer {a['labels'].get('layer')} {'all heads' if a['labels'].get('head') == '*' else 'head ' + str(a['labels'].get('head'))}"
                        f"{'' if a['labels'].get('cohort') == '*' else ' (' + str(a['labels'].get('cohort')) + ')'}"
                        for a in new[:4]
                    ) + (f"; and {len(new) - 4} more" if len(new) > 4 else "")
                    stream_ = out or sys.stdout
                    stream_.write(f"\r  webhook: {new[0].get('status', '').upper():8} {lab.get('alertname')} "
                              f"on {lab.get('model')} {lab.get('version')}: {where}\n")
                    stream_.flush()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def demo(out: Path, store_url: str | None = None, defect: bool = True, progress: bool = True,
         serve: bool = False, rate: int = 200, hours_before: float = 2.0, hours_after: float = 1.0) -> int:
    """The whole story: traffic, a deploy, the daemon on the simulated clock, alerts to a
    local webhook, the rollback verdict, dashboards, figures and the HTML report."""
    from monitor.config import Config
    from monitor.daemon import Daemon
    from monitor.rollback import check, render_text
    from monitor.store import make_engine, migrate

    began = time.monotonic()
    if store_url is not None:
        require_empty(store_url)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if store_url is None:
        db = out / "demo.db"
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            p.unlink(missing_ok=True)
        store_url = f"sqlite:///{db}"
    migrate.upgrade(store_url)
    hook = _Hook()
    config = Config(
        store_url=store_url,
        evaluate=DEMO_EVALUATE,
        daemon={"listen": "127.0.0.1:0"},
        alerts={"receivers": [{"name": "demo-webhook", "webhook": {"url": hook.url}}],
                "route": {"receiver": "demo-webhook", "group_wait_s": 0, "group_by": ["alertname", "version"]}},
    )
    before, after = int(hours_before * 60), int(hours_after * 60)
    segments = [Segment("v1", before), Segment("v2", after, DEFECT if defect else Defect())]
    engine = make_engine(store_url)
    now = [START]
    daemon = Daemon(config, engine=engine, clock=lambda: datetime.fromtimestamp(now[0], UTC))

    def on_minute(ts: float) -> None:
        now[0] = ts
        daemon.tick()

    print(f"attnmon demo: {MODEL} v1 serves for {before} min, then v2 "
          f"({'with a defect' if defect else 'harmless'}) for {after} min; alerts as they reach the webhook:")
    try:
        end = stream(store_url, segments, rate=rate, progress=progress, on_minute=on_minute)
        result = DemoResult(store_url, START + 60 * before, end, rate * (before + after))
        at = datetime.fromtimestamp(end, UTC)
        verdict = check(engine, MODEL, now=at)
        files = _artefacts(engine, out, verdict, at)
        print()
        print(_summary(engine, result, verdict, render_text(verdict), files, defect))
        print(f"\n(simulated {result.requests:,} predictions in {time.monotonic() - began:.0f} s)")
        daemon.close()  # frees the lead for the serving daemon
        if serve:
            _serve(config, engine, at)
    finally:
        daemon.close()
        hook.close()
        engine.dispose()
    return 0


# Tables that hold data once anything was collected, evaluated or alerted on.
_DATA_TABLES = ("models", "deployments", "window_aggregates", "attention_events", "drift_results", "alerts")


def require_empty(store_url: str) -> None:
    """Refuse a store that holds data: the demo's story would mix with it (its verdict and
    alerts read back everything), and its daemon would evaluate and alert on that data.
    Checked before any migration, so a refused store is left exactly as it was."""
    from sqlalchemy import inspect, literal_column, select, table

    from monitor.errors import ConfigError
    from monitor.store import make_engine, redact
    from monitor.store.engine import store_errors

    engine = make_engine(store_url)
    try:
        with store_errors(engine.url), engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            used = [name for name in _DATA_TABLES if name in present
                    and conn.execute(select(literal_column("1")).select_from(table(name)).limit(1)).first()]
            models = (sorted(r[0] for r in conn.execute(select(literal_column("name")).select_from(table("models"))))
                      if "models" in used else [])
    finally:
        engine.dispose()
    if used:
        what = f"models {', '.join(models[:5])}{' ...' if len(models) > 5 else ''}" if models else f"rows in {used[0]}"
        raise ConfigError([("--store", redact(store_url),
                            f"already holds data ({what}); the demo needs an empty store, or its story mixes "
                            "with that data: give a new database, or leave --store out (a fresh DIR/demo.db)")],
                          "argument")


def _artefacts(engine, out: Path, verdict, at: datetime) -> dict[str, Path]:
    from dashboards.catalog import dashboards
    from dashboards.provision import connection_for, export
    from dashboards.report import report
    from monitor.report import render_html

    files = {"report": out / "rollback-report.html", "grafana": out / "grafana", "figures": out / "figures"}
    files["report"].write_text(render_html(engine, verdict, at), encoding="utf-8")
    export(files["grafana"], dashboards(None), connection_for(None))
    report(engine, files["figures"], boards=dashboards(None), model=MODEL)
    return files


def _summary(engine, result: DemoResult, verdict, verdict_text: str, files: dict, defect: bool) -> str:
    from sqlalchemy import select

    from monitor.store import tables as t

    with engine.connect() as conn:
        fired = conn.execute(
            select(t.alerts.c.rule, t.alerts.c.labels, t.alerts.c.fired_at, t.alerts.c.value)
            .where(t.alerts.c.fired_at.is_not(None)).order_by(t.alerts.c.fired_at)
        ).all()
    from monitor.store import redact

    shown = redact(result.store_url)  # never print a password
    deploy = datetime.fromtimestamp(result.deploy_at, UTC)
    lines = [f"What happened: v2 was deployed at {deploy:%H:%M} UTC "
             f"({'a promoted brand captures layer 1 head 0; layer 1 head 2 collapses' if defect else 'a harmless update'})."]
    if fired:
        lines.append(f"What attnmon detected ({len(fired)} alerts fired):")
        for rule, labels, fired_at, value in fired[:12]:
            lab = labels or {}
            mins = (as_utc(fired_at) - deploy).total_seconds() / 60
            lines.append(f"  {as_utc(fired_at):%H:%M} UTC (+{mins:.0f} min) {rule}: {lab.get('version')} "
                         f"layer {lab.get('layer')} head {lab.get('head')} cohort {lab.get('cohort')} "
                         f"({lab.get('statistic')} = {value:.3g})")
        if len(fired) > 12:
            lines.append(f"  ... and {len(fired) - 12} more (attnmon alerts list --store {shown})")
    else:
        lines.append("What attnmon detected: nothing paged.")
    lines += ["", story(result), "", "The rollback verdict (attnmon rollback-check --model demo-sasrec):", verdict_text, "",
              "Where to look:",
              f"  store:              {shown}",
              f"  HTML report:        {files['report']}",
              f"  PNG figures:        {files['figures']}/",
              f"  Grafana dashboards: {files['grafana']}/dashboards/ (provisioning: {files['grafana']}/provisioning/)"]
    return "\n".join(lines)


def _serve(config, engine, end: datetime) -> None:
    """The daemon until SIGINT or SIGTERM, on the usual /healthz port, on the demo's clock:
    from where the simulated traffic ended, at real speed. On today's clock it would skip
    every window since the demo's fixed day (thousands, with a warning) and then evaluate
    minutes without data."""
    from monitor.daemon import Daemon, fake_clock, serve

    config = config.model_copy(update={"daemon": config.daemon.model_copy(update={"listen": "127.0.0.1:9464"})})
    with Daemon(config, engine=engine, clock=fake_clock(f"{end.isoformat()} x1")) as daemon:
        print(f"daemon running on the demo's clock, from {end:%Y-%m-%d %H:%M} UTC at real speed (no new traffic "
              "comes): http://127.0.0.1:9464/healthz and /metrics (Ctrl-C to stop)", flush=True)
        serve(daemon)
