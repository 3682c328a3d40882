"""The rollback-check HTML report: one self-contained file.

Our verdict and reasons first, per-head and per-position figures (matplotlib, inlined
as PNG), then evidently's DataDriftPreset on the sampled raw events of both versions
(entropy_norm, top1, recency5, distance, gini), embedded as an iframe document.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from monitor.rollback import ROLLBACK, WATCH, Verdict, _sketches, compared
from monitor.store import tables as t

EVENT_COLUMNS = ["entropy_norm", "top1", "recency5", "distance", "gini"]
COLOURS = {"PROCEED": "#1a7f37", "WATCH": "#9a6700", "ROLLBACK": "#cf222e"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def events(engine: Engine, model: str, version: str, start: datetime, end: datetime) -> pd.DataFrame:
    ev = t.attention_events
    q = select(*[ev.c[c] for c in EVENT_COLUMNS]).where(
        ev.c.model == model, ev.c.version == version, ev.c.ts >= start, ev.c.ts < end
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(q).all(), columns=EVENT_COLUMNS).astype(float)


def figures(engine: Engine, v: Verdict, now: datetime) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # what the verdict compared: the baseline at the candidate's cohort mix
    b, c = compared(_sketches(engine, v.model, v.baseline, *v.baseline_window),
                    _sketches(engine, v.model, v.candidate, v.candidate_since, now))
    out = {}
    layers = sorted({k[1] for k in c if k[0] == "*"} & {k[1] for k in b if k[0] == "*"})
    if not layers:
        return out
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        pairs = v.head_matching.get(layer) or {h: h for h in sorted({k[2] for k in c if k[1] == layer and k[2] != "*"})}
        heads = sorted(pairs)
        be = [b[("*", layer, pairs[h])].means()["entropy_norm"] if ("*", layer, pairs[h]) in b else np.nan for h in heads]
        ce = [c[("*", layer, h)].means()["entropy_norm"] for h in heads]
        x = np.arange(len(heads))
        ax.bar(x - 0.2, be, 0.4, label=f"{v.baseline} (baseline)", color="#8c959f")
        ax.bar(x + 0.2, ce, 0.4, label=f"{v.candidate} (candidate)", color=COLOURS[v.verdict])
        ax.set_xticks(x, [h if pairs[h] == h else f"{h}←{pairs[h]}" for h in heads])
        ax.set_xlabel(f"layer {layer}: head (candidate←baseline)")
        ax.set_ylabel("mean entropy_norm")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle("Attention entropy per head (1 = spread evenly, 0 = one item)")
    out["heads"] = _png(fig)
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for sk, name, colour in ((b[("*", layer, "*")], v.baseline, "#8c959f"), (c[("*", layer, "*")], v.candidate, COLOURS[v.verdict])):
            prof = sk.position_profile()[:50]
            ax.plot(np.arange(len(prof)), prof, label=name, color=colour)
        ax.set_xlabel(f"layer {layer}: distance from the most recent item")
        ax.set_ylabel("mean attention")
        ax.legend(fontsize=7)
    fig.suptitle("Attention by position (head-averaged)")
    out["positions"] = _png(fig)
    return out


def evidently_html(reference: pd.DataFrame, current: pd.DataFrame) -> str | None:
    """evidently's DataDriftPreset report as a standalone HTML document, or None when a
    side has no sampled events."""
    if len(reference) < 2 or len(current) < 2:
        return None
    from evidently import Report  # imported here: it takes seconds
    from evidently.presets import DataDriftPreset

    return Report([DataDriftPreset()]).run(current, reference).get_html_str(as_iframe=False)


def render_html(engine: Engine, v: Verdict, now: datetime) -> str:
    figs = figures(engine, v, now)
    ref = events(engine, v.model, v.baseline, *v.baseline_window)
    cur = events(engine, v.model, v.candidate, v.candidate_since, now)
    ev_html = evidently_html(ref, cur)
    colour = COLOURS[v.verdict]
    what = {ROLLBACK: "roll back", WATCH: "watch: not decided yet"}.get(v.verdict, "proceed")
    rows = "".join(
        f"<tr><td>{i}</td><td class='{html.escape(r.severity)}'>{html.escape(r.severity)}</td>"
        f"<td>{html.escape(r.text)}</td></tr>"
        for i, r in enumerate(v.reasons, 1)
    ) or "<tr><td colspan=3>No head, position, item or attribute moved beyond what a harmless update does.</td></tr>"
    imgs = "".join(f"<figure><img alt='{k}' src='{src}'></figure>" for k, src in figs.items())
    ev = (
        f"<iframe title='evidently report' srcdoc=\"{html.escape(ev_html, quote=True)}\"></iframe>"
        if ev_html else "<p>No sampled events on one side: the evidently report needs raw samples (sample_rate &gt; 0).</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>attnmon rollback-check: {html.escape(v.model)} {html.escape(v.candidate)} — {v.verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1f2328; }}
#verdict {{ font-size: 2.4em; font-weight: 700; color: white; background: {colour}; padding: .3em .6em; border-radius: 8px; display: inline-block; }}
table {{ border-collapse: collapse; margin: 1em 0; max-width: 70em; }}
td {{ border-bottom: 1px solid #d0d7de; padding: .4em .6em; vertical-align: top; }}
td.critical {{ color: #cf222e; font-weight: 600; }} td.warning {{ color: #9a6700; font-weight: 600; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} img {{ max-width: 46em; }}
iframe {{ width: 100%; height: 1400px; border: 1px solid #d0d7de; }}
</style></head><body>
<h1>{html.escape(v.model)}: {html.escape(v.candidate)} against {html.escape(v.baseline)}</h1>
<div id="verdict">{v.verdict}</div> <span>— {what}</span>
<p>Candidate since {v.candidate_since:%Y-%m-%d %H:%M} UTC: {v.predictions['candidate']:,} predictions over
{v.minutes['candidate']} minutes. Baseline {v.baseline_window[0]:%Y-%m-%d %H:%M} to {v.baseline_window[1]:%Y-%m-%d %H:%M} UTC:
{v.predictions['baseline']:,} predictions over {v.minutes['baseline']} minutes.
Weights: {'the same (heads compared one to one)' if v.same_weights else 'new (heads matched by their distributions)'}.</p>
<h2>Reasons, most severe first</h2>
<table>{rows}</table>
<h2>Heads and positions</h2>
<p>As the verdict compares them: on the cohorts both versions served, the baseline weighted to the candidate's
share of each.</p>
{imgs}
<h2>Sampled events: evidently DataDriftPreset (baseline = reference, candidate = current)</h2>
<p>{len(ref):,} baseline and {len(cur):,} candidate sampled events; columns {', '.join(EVENT_COLUMNS)} of each
event's last layer, head-averaged. These are raw samples of all cohorts: a change of cohort mix shows here.</p>
{ev}
</body></html>
"""
