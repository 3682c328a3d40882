"""CLI: `attnmon rollback-check` (exit code = verdict) and `attnmon explain`."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select

from monitor.config import Config
from monitor.errors import AttnmonError, ConfigError

EXIT_HELP = """exit status: 0 PROCEED, 3 WATCH (not enough data yet, only warnings, or a
recent change in too few predictions to tell), 4 ROLLBACK, 2 usage or store error
(e.g. a version that does not exist, a baseline with too little data in the day
before the candidate's deployment, or a candidate with too little data that has served
nothing in the last --recent or --since: waiting cannot fill either)"""


def rollback_check(config: Config, model: str, candidate: str | None = None, baseline: str | None = None,
                   since: str | None = None, fmt: str = "text", out: str | None = None, now: str | None = None,
                   recent: str | None = None) -> int:
    from monitor.cli_common import open_store as _engine
    from monitor.cli_common import parse_duration, parse_time
    from monitor.rollback import MIN_MINUTES, RECENT, check, render_text

    if candidate is not None and candidate == baseline:
        raise ConfigError([("--candidate/--baseline", candidate, "the same version: compare it with another one")],
                          "argument")
    if fmt == "html" and not out:
        raise ConfigError([("--format", fmt, "html needs --out FILE")], "argument")
    at = parse_time(now, "--now") if now else datetime.now(UTC)
    window = parse_duration(since, "--since") if since else None
    if window is not None and window < timedelta(minutes=MIN_MINUTES):
        # a shorter window can never hold the minutes a verdict needs: WATCH for ever
        raise ConfigError([("--since", since, f"a verdict needs {MIN_MINUTES} minutes of the candidate's data: "
                            f"use {MIN_MINUTES}m or more")], "argument")
    last = parse_duration(recent, "--recent") if recent else RECENT
    if last < timedelta(minutes=MIN_MINUTES):
        raise ConfigError([("--recent", recent, f"a verdict needs {MIN_MINUTES} minutes of the candidate's data: "
                            f"use {MIN_MINUTES}m or more")], "argument")
    if out:
        _check_out(out)
    engine = _engine(config)
    try:
        v = check(engine, model, candidate, baseline, window, at, recent=last)
        if fmt == "json":
            text = json.dumps(v.to_json(), indent=2)
        elif fmt == "html":
            from monitor.report import render_html

            text = render_html(engine, v, at)
        else:
            text = render_text(v)
    finally:
        engine.dispose()
    if out:
        Path(out).write_text(text, encoding="utf-8")  # an OSError: one line from monitor.cli.main
        print(f"{v.verdict}: written to {out}")
    else:
        print(text)
    return v.exit_code


def _check_out(out: str) -> None:
    """An --out that cannot be written fails before the comparison, not after it (the
    OSError becomes one line naming --out in monitor.cli.main)."""
    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), out)
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), out)


def explain(config: Config, request_id: str, out: str | None = None, top: int = 5) -> int:
    """Which history items one sampled prediction attended to, per layer and head."""
    from monitor.cli_common import open_store as _engine
    from monitor.store import tables as t

    if out:
        _check_image_format(out)
    engine = _engine(config)
    try:
        ae = t.attention_events
        with engine.connect() as conn:
            # newest first: one request id may be sampled by two models (retrieval and
            # ranking), or again for a retried request
            rows = conn.execute(
                select(ae).where(ae.c.request_id == request_id).order_by(ae.c.ts.desc(), ae.c.id.desc()).limit(11)
            ).mappings().all()
    finally:
        engine.dispose()
    if not rows:
        raise AttnmonError(f"no sampled event with request id {request_id!r} (only a sample of requests is kept)")
    row = rows[0]
    if len(rows) > 1:
        from monitor.store.maintenance import as_utc

        older = rows[1:]
        many = f"at least {len(older)}" if len(rows) == 11 else str(len(older))
        listed = "; ".join(f"{r['model']} {r['version']} at {as_utc(r['ts']):%Y-%m-%d %H:%M:%S} UTC" for r in older)
        print(f"note: {many} older sampled event{'s carry' if len(older) > 1 else ' carries'} this request id "
              f"({listed}); this is the newest", file=sys.stderr)
    ly, h, n = row["n_layers"], row["n_heads"], row["length"]
    w = np.frombuffer(row["weights"], dtype="<f4").reshape(ly, h, n)
    items = row["item_ids"] or [f"#{i}" for i in range(n)]
    attrs = row["attributes"] or {}
    print(f"request {request_id}: {row['model']} {row['version']}, cohort {row['cohort']}, "
          f"{n} history items (position 0 = most recent)")
    for layer in range(ly):
        for head in range(h):
            order = np.argsort(-w[layer, head])[:top]
            parts = []
            for j in order:
                extra = ", ".join(f"{k}={v[j]}" for k, v in attrs.items() if v and j < len(v))
                parts.append(f"{items[j]} @{n - 1 - j} {100 * w[layer, head, j]:.1f}%" + (f" ({extra})" if extra else ""))
            print(f"  layer {layer} head {head}: " + "; ".join(parts))
    if out:
        _heatmap(w, items, request_id, out)
        print(f"heatmap written to {out}")
    return 0


def _check_image_format(out: str) -> None:
    """Before any work: matplotlib picks the format from the suffix and rejects others."""
    from matplotlib.figure import Figure

    formats = sorted(Figure().canvas.get_supported_filetypes())
    suffix = Path(out).suffix.lower().removeprefix(".")
    if suffix not in formats:
        why = f"unknown image format .{suffix}" if suffix else "no file suffix"
        raise ConfigError([("--out", out, f"{why}: end the name with .png (or .{', .'.join(formats)})")],
                          "argument")


def _heatmap(w: np.ndarray, items: list, request_id: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ly, h, n = w.shape
    grid = w.reshape(ly * h, n)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * n + 2), 0.45 * ly * h + 1.8))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(ly * h), [f"L{layer} H{head}" for layer in range(ly) for head in range(h)])
    step = max(1, n // 40)
    ax.set_xticks(range(0, n, step), [str(items[j])[:10] for j in range(0, n, step)], rotation=90, fontsize=7)
    ax.set_xlabel("history item (oldest → most recent)")
    ax.set_title(f"attention of request {request_id}")
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def register(commands: argparse._SubParsersAction, add_command) -> None:
    p = add_command(commands, "rollback-check", "compare a candidate version with its baseline: PROCEED, WATCH or ROLLBACK")
    p.epilog = EXIT_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True)
    p.add_argument("--candidate", help="version to judge (default: the newest deployment)")
    p.add_argument("--baseline", help="version to compare with (default: the one serving just before the candidate's deployment, passing over versions that served under 10 minutes of the day before)")
    p.add_argument("--since", metavar="DURATION", help="only the candidate's data of the last DURATION before now (e.g. 2h; at least 10m)")
    p.add_argument("--recent", metavar="DURATION", help="also judge the candidate's last DURATION on its own, so that a defect that began lately is not averaged away over the time since the deploy (default: 30m; at least 10m)")
    p.add_argument("--format", choices=("text", "json", "html"), default="text")
    p.add_argument("--out", metavar="FILE", help="write the report there (needed for html)")
    p.add_argument("--now", metavar="TIME", help=argparse.SUPPRESS)  # simulated time (demo, tests)
    p.set_defaults(run=lambda config, a: rollback_check(config, a.model, a.candidate, a.baseline, a.since,
                                                        a.format, a.out, a.now, a.recent))

    p = add_command(commands, "explain", "show which history items one sampled prediction attended to")
    p.add_argument("--request-id", required=True, help="the request_id the serving code gave observe() "
                   "(request_ids for a batch); only sampled requests are kept")
    p.add_argument("--out", metavar="FILE.png", help="also write a heatmap PNG")
    p.set_defaults(run=lambda config, a: explain(config, a.request_id, a.out))
