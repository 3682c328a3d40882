"""Baselines: what a series' current window is compared with (DESIGN §5).

- `previous_version`: in a version's first `previous_version_hours` after its
  deployment, the last `baseline_hours` before that deployment of the version it replaced
  (the one serving just before it, short-lived versions passed over; `replaced`), when
  both run the same weights (equal `weights_id`: the same heads, a new pipeline or config);
- `retrain`: the same window of the previous version when the weights differ or are not
  known to be equal. Heads of a retrain are not the same heads: the evaluator compares
  each head with its matched baseline head (monitor.heads), and the default rules judge
  a retrain on pathologies, not on shifts a harmless retrain makes too (DESIGN §5);
- `pinned`: a named window a person pinned (`attnmon baseline pin`);
- `trailing`: otherwise the series' own `baseline_hours` (rounded up to whole hours),
  ending `trailing_gap_hours` before the window, aligned to the hour.

A baseline is merged once per series and reference and kept in `baseline_sketches`;
a trailing one is the sum of hourly partial sketches, each merged once from minute rows.
So an evaluation cycle reads a handful of rows per series, whatever the traffic. An hour
partial is stored as one row of every series (kind `hour_stack`, monitor.stacked_payload):
a day of them is 24 rows to read and inflate, not 24 per series. Per-series `hour` rows,
as earlier releases stored them, are still read.

Each series is merged in one step (monitor.sketch.merge_all / merge_encoded), not row by
row; `Baselines` keeps the hour partials of the trailing baselines it holds, so when a
baseline slides by an hour only the new hour is read. Rows are written by COPY on
PostgreSQL (psycopg) and multi-row inserts on SQLite (`bulk_insert`).
"""

from __future__ import annotations

import gc
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import (
    Select,
    Text,
    and_,
    cast,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine

from monitor.config import EvaluateConfig
from monitor.metrics import ALL_METRICS
from monitor.sketch import Sketch, encode_payload, merge_encoded
from monitor.stacked import Stacked, merge_stacked, stack_encoded
from monitor.stacked_payload import HOUR_STACK, decode_stacked, encode_stacked
from monitor.store import tables as t
from monitor.store.bulk import bulk_insert
from monitor.store.engine import duplicate_key
from monitor.store.maintenance import as_utc, rows_in, served_minutes
from monitor.store.reader import ROLLUP

log = logging.getLogger(__name__)
SeriesKey = tuple[str, str, str]  # (cohort, layer, head)
ANY_VERSION = "*"
RETRAIN = "retrain"  # the previous_version baseline of a version with new weights
_EMPTY = ""  # cohort label of the marker row saying "built, and there was nothing"


@dataclass(frozen=True)
class BaselineRef:
    kind: str  # previous_version | retrain | pinned | trailing
    ref: str  # what it is built from, e.g. "v1@2026-11-20T10:00:00+00:00"
    version: str  # the version whose traffic it holds ("*" = any)
    start: datetime
    end: datetime


def _iso(ts: datetime) -> str:
    return as_utc(ts).isoformat(timespec="seconds")


def _floor_hour(ts: datetime) -> datetime:
    e = as_utc(ts).timestamp()
    return datetime.fromtimestamp(e - e % 3600, UTC)


def trailing_end(window_end: datetime, cfg: EvaluateConfig) -> datetime:
    """Where the trailing baseline of a window ending at `window_end` ends: an hour
    boundary `trailing_gap_hours` before the window's end, and never after its start
    (a gap shorter than the window would have the baseline hold part of the window)."""
    end = as_utc(window_end)
    gap = max(timedelta(hours=cfg.trailing_gap_hours), timedelta(minutes=cfg.window_minutes))
    return _floor_hour(end - gap)


def deployments(engine: Engine, model: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.deployments).where(t.deployments.c.model == model).order_by(t.deployments.c.deployed_at)
        ).mappings().all()
    return [dict(r, deployed_at=as_utc(r["deployed_at"])) for r in rows]


def active_pin(engine: Engine, model: str) -> dict | None:
    pb = t.pinned_baselines
    with engine.connect() as conn:
        row = conn.execute(
            select(pb).where(pb.c.model == model, pb.c.active.is_(True)).order_by(pb.c.created_at.desc())
        ).mappings().first()
    return dict(row) if row else None


_REPLACED: dict[tuple, Predecessor] = {}  # (url, model, deployed_at, versions before) -> answer
JUST_BEFORE_MINUTES = 5  # the last minutes with traffic before a deployment: who served then
SHORT_LIVED_MINUTES = 10  # rollback-check's MIN_MINUTES: a version that served less is no baseline


@dataclass(frozen=True)
class Predecessor:
    """The version a deployment replaced, and why (`replaced`)."""

    version: str | None  # None: nothing served in the day before; the one deployed last is taken
    last_served: datetime | None  # the start of the last minute a counted version served before it
    passed_over: tuple[tuple[str, int], ...] = ()  # (version, minutes served in the day before)
    # (version, its share of the predictions in the JUST_BEFORE_MINUTES minutes ending at
    # last_served), most first: A/B arms or a canary show as more than one large share
    shares: tuple[tuple[str, float], ...] = ()


def replaced(engine: Engine, model: str, deployed_at: datetime, before: list[dict]) -> dict:
    """Of the deployments `before` one deployed at `deployed_at`, the one it replaced
    (`predecessor`), or the one deployed last if none served in the day before."""
    name = predecessor(engine, model, deployed_at, before).version
    return next((d for d in before if d["version"] == name), before[-1])


def predecessor(engine: Engine, model: str, deployed_at: datetime, before: list[dict]) -> Predecessor:
    """The version serving just before `deployed_at`: the one with most predictions in the
    last JUST_BEFORE_MINUTES minutes with traffic before it, of the versions that served at
    least SHORT_LIVED_MINUTES minutes of the day before (all of them if none did). Not the
    last deployed, since a canary rolled back is deployed later than the version that went
    on serving; not the one that served most in the hour before, since with v1, v2 and v3
    deployed within an hour that is v1, which v3 did not replace. A version that served
    only a few minutes (replaced at once) has too little to compare with: it is passed over
    and named.

    Cached once `deployed_at` is past (the daemon asks every cycle): the rows before it no
    longer change but for late data."""
    key = (str(engine.url), model, deployed_at, tuple(d["version"] for d in before))
    found = _REPLACED.get(key)
    if found is None:
        found = _just_before(engine, model, [d["version"] for d in before], deployed_at)
        if deployed_at <= datetime.now(UTC):
            if len(_REPLACED) > 4096:
                _REPLACED.clear()
            _REPLACED[key] = found
    return found


def _just_before(engine: Engine, model: str, versions: list[str], deployed_at: datetime) -> Predecessor:
    per_minute = _served_minutes(engine, model, versions, deployed_at - timedelta(hours=24), deployed_at)
    minutes = {v: len(m) for v, m in per_minute.items()}
    long_lived = [v for v in versions if minutes.get(v, 0) >= SHORT_LIVED_MINUTES] or [v for v in versions if v in minutes]
    if not long_lived:
        return Predecessor(None, None)
    last = max(max(per_minute[v]) for v in long_lived)
    recent = {v: sum(n for m, n in per_minute[v].items() if m > last - JUST_BEFORE_MINUTES) for v in long_lived}
    # ties go to the later deployment
    best = max(long_lived, key=lambda v: (recent[v], versions.index(v)))
    after = datetime.fromtimestamp(60 * last, UTC)
    passed = tuple((v, minutes[v]) for v in versions if v in minutes and v not in long_lived
                   and max(per_minute[v]) >= last - JUST_BEFORE_MINUTES)
    return Predecessor(best, after, passed, _shares(per_minute, last))


def _shares(per_minute: dict[str, dict[int, float]], last: int) -> tuple[tuple[str, float], ...]:
    """Each version's share of the predictions in the JUST_BEFORE_MINUTES minutes up to
    minute `last`, most first; a version passed over counts in the total too."""
    n = {v: sum(x for m, x in per.items() if last - JUST_BEFORE_MINUTES < m <= last) for v, per in per_minute.items()}
    total = sum(n.values())
    return tuple(sorted(((v, x / total) for v, x in n.items() if x > 0), key=lambda vx: (-vx[1], vx[0]))) if total else ()


def _served_minutes(engine: Engine, model: str, versions: list[str], start: datetime,
                    end: datetime) -> dict[str, dict[int, float]]:
    """Predictions per version and minute (since the epoch) in [start, end), from the
    versions' layer-0 all-cohort roll-ups. An hour row (minutes rolled up by maintenance)
    is spread evenly over the minutes it holds (minute_mask; all 60 for an hour rolled up
    before migration 0006), so a version that served the 4 minutes before 10:05 counts
    those 4 minutes, not its whole hour nor none of it."""
    wa = t.window_aggregates
    cols = [wa.c.version, wa.c.bucket_start, wa.c.bucket_seconds, wa.c.minute_mask]
    q = (select(*cols, func.sum(wa.c.n))
         .where(wa.c.model == model, wa.c.version.in_(versions), wa.c.cohort == ROLLUP, wa.c.layer == "0",
                wa.c.head == ROLLUP, *rows_in(start, end))
         .group_by(*cols))
    lo, hi = as_utc(start).timestamp(), as_utc(end).timestamp()
    served: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    with engine.connect() as conn:
        for version, bucket_start, seconds, mask, n in conn.execute(q):
            minutes = served_minutes(bucket_start, seconds, mask)
            for m in minutes:
                if lo <= 60 * m < hi and n:
                    served[version][m] += float(n) / len(minutes)
    return {v: dict(m) for v, m in served.items()}


def choose(
    engine: Engine, model: str, version: str, window_end: datetime, cfg: EvaluateConfig,
    deps: list[dict] | None = None, pin: dict | None | bool = False,
) -> BaselineRef:
    """The baseline a (model, version) window ending at `window_end` is compared with."""
    deps = deployments(engine, model) if deps is None else deps
    window_end = as_utc(window_end)
    mine = next((d for d in deps if d["version"] == version), None)
    if mine is not None:
        since = window_end - mine["deployed_at"]
        before = [d for d in deps if d["deployed_at"] < mine["deployed_at"] and d["version"] != version]
        if before and timedelta(0) <= since <= timedelta(hours=cfg.previous_version_hours):
            at = mine["deployed_at"]
            prev = replaced(engine, model, at, before)
            same = bool(mine.get("weights_id")) and mine.get("weights_id") == prev.get("weights_id")
            return BaselineRef(
                "previous_version" if same else RETRAIN, f"{prev['version']}@{_iso(at)}", prev["version"],
                at - timedelta(hours=cfg.baseline_hours), at,
            )
    pin = active_pin(engine, model) if pin is False else pin
    if pin:
        return BaselineRef(
            "pinned", pin["name"], pin["version"] or ANY_VERSION,
            as_utc(pin["window_start"]), as_utc(pin["window_end"]),
        )
    end = trailing_end(window_end, cfg)
    # whole hours, as the hour partials it is summed from (1.5 h: 2 h, not 1.5 h then 30
    # minutes past its end)
    start = _floor_hour(end - timedelta(hours=cfg.baseline_hours))
    return BaselineRef("trailing", f"trailing@{_iso(end)}", version, start, end)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector (reference counting goes on) while sketches are
    decoded by the ten thousand: each full collection would walk every cached sketch, and
    they are not garbage. Restored afterwards if it was on; nests, and threads may overlap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- materialisation -------------------------------------------------------------------

_SUM_COLS = [f"sum_{m}" for m in ALL_METRICS]
_SUMSQ_COLS = [f"sumsq_{m}" for m in ALL_METRICS]
M = len(ALL_METRICS)


# rows _merge_rows holds (compressed) before it folds them into the merged sketches: about
# 100 MB; an hour of 1,000 series is one fold, so its top-K summaries merge in one step
MERGE_BUFFER_ROWS = 65_536


def _merge_rows(engine: Engine, model: str, version: str, start: datetime, end: datetime) -> dict[SeriesKey, Sketch]:
    """Every series' rows in [start, end) merged (monitor.sketch.merge_all, in row order).

    Rows are held compressed and decoded a series at a time, MERGE_BUFFER_ROWS at most:
    past that each series' rows so far are folded into its merged sketch (counts, sums and
    histograms exactly as one merge; top-K summaries then merge once per fold).
    """
    wa = t.window_aggregates
    conds = [wa.c.model == model, wa.c.bucket_start >= start, wa.c.bucket_start < end]
    if version != ANY_VERSION:
        conds.append(wa.c.version == version)
    cols = [wa.c.cohort, wa.c.layer, wa.c.head, wa.c.payload, wa.c.n, wa.c.rejected,
            *(wa.c[c] for c in _SUM_COLS), *(wa.c[c] for c in _SUMSQ_COLS)]
    out: dict[SeriesKey, Sketch] = {}  # series in the order of their first row
    held: dict[SeriesKey, list] = {}

    def fold() -> None:
        for key, rows in held.items():
            out[key] = merge_encoded(rows, out.get(key))
        held.clear()

    with gc_paused():
        n = 0
        with engine.connect() as conn:
            for part in conn.execute(select(*cols).where(*conds)).partitions(2048):
                for r in part:
                    held.setdefault((r[0], r[1], r[2]), []).append((r[3], r[4], r[5], r[6 : 6 + M], r[6 + M :]))
                    n += 1
                    if n % MERGE_BUFFER_ROWS == 0:
                        fold()
        fold()
    return out


_STORE_COLS = ("model", "version", "cohort", "layer", "head", "kind", "ref", "window_start",
               "window_end", "n", "rejected", "sums", "sumsq", "payload", "computed_at")


def _store(engine: Engine, model: str, version: str, kind: str, ref: str, start: datetime,
           end: datetime, sketches: dict[SeriesKey, Sketch]) -> list[tuple]:
    """Replace the reference's rows with these sketches; the rows written (_STORE_COLS)."""
    now = datetime.now(UTC)
    rows = []
    items = sketches.items() if sketches else [((_EMPTY, _EMPTY, _EMPTY), Sketch())]
    for (cohort, layer, head), s in items:
        rows.append(
            (model, version, cohort, layer, head, kind, ref, start, end, int(s.n), int(s.rejected),
             [float(x) for x in s.sums], [float(x) for x in s.sumsq], encode_payload(s), now)
        )
    bs = t.baseline_sketches
    _replace(engine, [bs.c.model == model, bs.c.version == version, bs.c.kind == kind, bs.c.ref == ref], rows)
    return rows


_REPLACE_TRIES = 3


def _replace(engine: Engine, where: list, rows: list[tuple]) -> None:
    """Delete the baseline_sketches rows `where` selects and insert `rows` (_STORE_COLS),
    in one transaction. A concurrent builder of the same reference wrote the same sums:
    keep one. Its rows, not yet committed when this delete ran, make the unique key refuse
    these (PostgreSQL): tried again, the delete sees them."""
    bs = t.baseline_sketches
    for attempt in range(1, _REPLACE_TRIES + 1):
        try:
            with engine.begin() as conn:
                conn.execute(delete(bs).where(*where))
                bulk_insert(conn, bs, _STORE_COLS, rows)
            return
        except Exception as exc:
            if attempt == _REPLACE_TRIES or not duplicate_key(exc):
                raise
            log.info("%s baseline %s of %s %s: stored by another builder meanwhile; replaced",
                     rows[0][5], rows[0][6], rows[0][0], rows[0][1])


def _load(engine: Engine, model: str, version: str, kind: str, ref: str, start: datetime,
          end: datetime) -> dict[SeriesKey, Sketch] | None:
    got = _load_stacked(engine, model, version, kind, ref, start, end)
    return None if got is None else got.sketches()


def _load_stacked(engine: Engine, model: str, version: str, kind: str, ref: str, start: datetime,
                  end: datetime) -> Stacked | None:
    bs = t.baseline_sketches
    # sums as their JSON text: lists of floats, parsed below without the JSON decoder
    cols = [bs.c.cohort, bs.c.layer, bs.c.head, bs.c.payload, bs.c.n, bs.c.rejected,
            cast(bs.c.sums, Text), cast(bs.c.sumsq, Text)]
    with engine.connect() as conn:
        # the window too: a ref names its end, not its start, which baseline_hours sets
        rows = conn.execute(
            select(*cols).where(bs.c.model == model, bs.c.version == version, bs.c.kind == kind, bs.c.ref == ref,
                                bs.c.window_start == start, bs.c.window_end == end)
        ).all()
    if not rows:
        return None
    rows = [r for r in rows if r[0] != _EMPTY]
    sums, sumsq = _floats_many([r[6] for r in rows]), _floats_many([r[7] for r in rows])
    with gc_paused():
        # a series stored twice (two builders at once wrote the same sums): the last row
        return stack_encoded({(r[0], r[1], r[2]): [(r[3], r[4], r[5], s, q)]
                              for r, s, q in zip(rows, sums, sumsq, strict=True)})


def _floats_many(texts: list) -> np.ndarray:
    """_floats of each text, as an (R, M) array: one split and one float() pass over them
    all (what _floats gives row by row)."""
    if all(isinstance(x, str) and x[:1] == "[" and x[-1:] == "]" and x.count(",") == M - 1
           and "[" not in x[1:] for x in texts):
        try:
            vals = list(map(float, ",".join(x[1:-1] for x in texts).split(",")))
            return np.array(vals, dtype=np.float64).reshape(len(texts), M)
        except ValueError:
            pass
    return np.array([_floats(x) for x in texts], dtype=np.float64).reshape(len(texts), M)


def _floats(text) -> list:
    """A stored JSON list of the M metrics' floats (as _store writes it), as a list."""
    if isinstance(text, str) and text[:1] == "[" and text[-1:] == "]" and "[" not in text[1:]:
        parts = text[1:-1].split(",")
        if len(parts) == M:
            try:
                return [float(x) for x in parts]  # what json.loads gives, then float()
            except ValueError:
                pass
    vals = json.loads(text) if isinstance(text, str) else text
    if len(vals) != M:
        raise ValueError(f"expected {M} values per series, got {len(vals)}")
    return vals


def _store_hour(engine: Engine, model: str, version: str, hour: datetime, partial: Stacked) -> bytes:
    """Replace the hour's partial (either form) with one HOUR_STACK row; its payload."""
    payload = encode_stacked(partial)
    end = hour + timedelta(hours=1)
    bs, ref = t.baseline_sketches, _iso(hour)
    row = (model, version, _EMPTY, _EMPTY, _EMPTY, HOUR_STACK, ref, hour, end, _total(partial),
           int(partial.rejected.sum()), [], [], payload, datetime.now(UTC))
    _replace(engine, [bs.c.model == model, bs.c.version == version, bs.c.kind.in_([HOUR_STACK, "hour"]),
                      bs.c.ref == ref], [row])
    return payload


def _load_hours(engine: Engine, model: str, version: str, hours: list[datetime],
                progress: Callable[[], object] = lambda: None) -> dict[datetime, Stacked]:
    """The stored partials of these hours (UTC hour starts), read with one query; an hour
    with no HOUR_STACK row is read from its per-series rows, if an earlier release stored
    it so (`progress()` after each). Hours with neither are left out, and so are those
    whose payload cannot be read (logged): they are built again, and stored whole, rather
    than fail every cycle."""
    if not hours:
        return {}
    bs = t.baseline_sketches
    refs = {_iso(h): h for h in hours}
    with engine.connect() as conn:
        rows = conn.execute(
            select(bs.c.id, bs.c.ref, bs.c.window_start, bs.c.window_end, bs.c.payload)
            .where(bs.c.model == model, bs.c.version == version, bs.c.kind == HOUR_STACK, bs.c.ref.in_(list(refs)))
        ).all()
    out, damaged = {}, set()
    with gc_paused():
        for row_id, ref, start, end, payload in rows:
            hour = refs[ref]
            if as_utc(start) == hour and as_utc(end) == hour + timedelta(hours=1):
                try:
                    out[hour] = decode_stacked(payload)
                except ValueError as exc:
                    _damaged(f"row {row_id} ({HOUR_STACK})", ref, model, version, exc)
                    damaged.add(hour)
    missing = [_iso(h) for h in hours if h not in out and h not in damaged]
    if not missing:
        return out
    # which of them an earlier release stored, in one query: not a query an hour, with no
    # step between them, on a store that has none (a first window's day of baselines)
    with engine.connect() as conn:
        older = set(conn.execute(select(bs.c.ref).distinct().where(
            bs.c.model == model, bs.c.version == version, bs.c.kind == "hour", bs.c.ref.in_(missing))).scalars())
    for ref in missing:
        if ref not in older:
            continue
        hour = refs[ref]
        try:
            got = _load_stacked(engine, model, version, "hour", ref, hour, hour + timedelta(hours=1))
        except ValueError as exc:
            _damaged("rows (hour, one a series)", ref, model, version, exc)
            got = None
        if got is not None:
            out[hour] = got
        progress()
    return out


def _damaged(rows: str, ref: str, model: str, version: str, exc: ValueError) -> None:
    log.warning("baseline_sketches %s, the hour partial %s of %s %s: %s; built again from its minute rows",
                rows, ref, model, version, exc)


class Baselines:
    """Materialised baselines, with an in-process cache for the daemon's cycles.

    Hour partials are kept too (as read back from the store), those of the latest
    trailing baseline of each (model, version): when the baseline slides by an hour, only
    the new hour is merged from minute rows.
    """

    def __init__(self, engine: Engine, cfg: EvaluateConfig, cache_size: int = 128,
                 progress: Callable[[], object] = lambda: None):
        self.engine, self.cfg = engine, cfg
        # called after each hour partial and baseline: a window's first baseline is 24
        # hours of them, more work than the daemon's /livez may let pass without a step
        self.progress = progress
        self._cache: dict[tuple, dict[SeriesKey, Sketch]] = {}
        self._cache_size = cache_size
        self._hours: dict[tuple[str, str, datetime], Stacked] = {}

    def holds(self, model: str, ref: BaselineRef) -> bool:
        """Whether this baseline is in the cache (get() would not read the store)."""
        return (model, ref.kind, ref.ref, ref.version) in self._cache

    def get(self, model: str, ref: BaselineRef) -> dict[SeriesKey, Sketch]:
        return self.get_all(model, [ref])[0]

    def get_all(self, model: str, refs: list[BaselineRef]) -> list[dict[SeriesKey, Sketch]]:
        """get() of each; the trailing baselines to build over one window (one per version)
        check their hours' rows for late data with one query, not one each."""
        out = [self._cached(model, ref, load=True) for ref in refs]
        todo = [r for r, got in zip(refs, out, strict=True) if got is None and r.kind == "trailing"]
        totals: dict[tuple, dict[datetime, int]] = {}
        for start, end in dict.fromkeys((r.start, r.end) for r in todo):
            versions = list(dict.fromkeys(r.version for r in todo if (r.start, r.end) == (start, end)))
            for v, by_hour in _hour_totals(self.engine, model, versions, start, end).items():
                totals[(v, start, end)] = by_hour
        for i, ref in enumerate(refs):
            if out[i] is None:
                got = self._cached(model, ref)  # a ref given twice is built once
                if got is None:
                    got = self._build(model, ref, totals.get((ref.version, ref.start, ref.end)))
                    self._keep((model, ref.kind, ref.ref, ref.version), got)
                    self.progress()
                out[i] = got
        return out

    def _cached(self, model: str, ref: BaselineRef, load: bool = False) -> dict[SeriesKey, Sketch] | None:
        """The baseline from the cache, or else (`load`) as stored; None if neither holds it."""
        key = (model, ref.kind, ref.ref, ref.version)
        got = self._cache.pop(key, None)
        if got is None and load:
            try:
                got = _load(self.engine, model, ref.version, ref.kind, ref.ref, ref.start, ref.end)
            except ValueError as exc:  # built again and stored whole, rather than fail every cycle
                log.warning("baseline_sketches rows of the %s baseline %s of %s %s: %s; built again",
                            ref.kind, ref.ref, model, ref.version, exc)
        if got is not None:
            self._keep(key, got)  # the least recently used goes first
        return got

    def _keep(self, key: tuple, got: dict[SeriesKey, Sketch]) -> None:
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = got

    def _build(self, model: str, ref: BaselineRef, totals: dict[datetime, int] | None = None) -> dict[SeriesKey, Sketch]:
        """`totals`: the vectors in each hour's rows of a trailing baseline (_hour_totals;
        read here if not given)."""
        if ref.kind != "trailing":
            got = _merge_rows(self.engine, model, ref.version, ref.start, ref.end)
        else:
            if totals is None:
                totals = _hour_totals(self.engine, model, [ref.version], ref.start, ref.end)[ref.version]
            starts = []
            hour = ref.start
            while hour < ref.end:
                starts.append(as_utc(hour))
                hour += timedelta(hours=1)
            held = [h for h in starts if (model, ref.version, h) not in self._hours]
            stored = _load_hours(self.engine, model, ref.version, held, self.progress)  # one query, not one an hour
            hours = []
            for h in starts:
                hours.append(self._hour(model, ref.version, h, totals.get(h, 0),
                                        stored.get(h) if h in held else False))
                self.progress()
            # each series' partials summed in hour order, as merge_all of them
            got = merge_stacked(hours).sketches()
            self._forget_hours(model, ref)
        _store(self.engine, model, ref.version, ref.kind, ref.ref, ref.start, ref.end, got)
        return got

    def _forget_hours(self, model: str, ref: BaselineRef) -> None:
        """Keep the partials the successors of this trailing baseline need (its hours), and
        those of the other trailing baselines still cached; forget the rest."""
        live = {(k[0], k[3]) for k in self._cache if k[1] == "trailing"}
        for key in list(self._hours):
            if key[:2] == (model, ref.version):
                if not ref.start <= key[2] < ref.end:
                    del self._hours[key]
            elif key[:2] not in live:
                del self._hours[key]

    def _hour(self, model: str, version: str, hour: datetime, expect: int | None = None,
              stored: Stacked | None | bool = False) -> Stacked:
        """The hour's partial; rebuilt when its rows now hold `expect` vectors and it does not
        (late data: a collector replaying its spill after the partial was built). `stored`:
        the partial as stored, if already read (_load_hours; None: none stored)."""
        key = (model, version, as_utc(hour))
        hit = self._hours.get(key)
        if hit is not None and (expect is None or _total(hit) == expect):
            return hit
        ref = _iso(hour)
        got = _load_hours(self.engine, model, version, [key[2]]).get(key[2]) if stored is False else stored
        if got is not None and expect is not None and _total(got) != expect:
            log.info("hour %s of %s %s: %d vectors in its rows, %d in its partial: late data, rebuilt",
                     ref, model, version, expect, _total(got))
            got = None
        if got is None:
            merged = Stacked.of(_merge_rows(self.engine, model, version, hour, hour + timedelta(hours=1)))
            payload = _store_hour(self.engine, model, version, hour, merged)
            self._hours[key] = decode_stacked(payload)  # what a later _load_hours would read
            return merged
        self._hours[key] = got
        return got


def _total(partial: Stacked) -> int:
    return int(partial.n.sum())


def _hour_totals(engine: Engine, model: str, versions: list[str], start: datetime,
                 end: datetime) -> dict[str, dict[datetime, int]]:
    """Per version, vectors summed over every row (all series) of each hour in [start, end):
    what the hour's partial, merged from those rows, holds in total (the sum of its series'
    n). One query for all: the index is (model, bucket_start, version, n), so a query per
    version would step through every version's entries of the window."""
    out: dict[str, dict[datetime, int]] = {v: defaultdict(int) for v in versions}
    with engine.connect() as conn:
        for minute, version, n in conn.execute(hour_totals_query(model, versions, start, end)):
            out[version][_floor_hour(minute)] += int(n or 0)
    return out


def hour_totals_query(model: str, versions: list[str], start: datetime, end: datetime) -> Select:
    """n summed per (bucket, version): read from the index alone (migration 0007 put n in it)."""
    wa = t.window_aggregates
    return (select(wa.c.bucket_start, wa.c.version, func.sum(wa.c.n))
            .where(wa.c.model == model, wa.c.version.in_(versions), wa.c.bucket_start >= start,
                   wa.c.bucket_start < end)
            .group_by(wa.c.bucket_start, wa.c.version))


def prune(engine: Engine, older_than: datetime, after_deploy: timedelta = timedelta(0)) -> int:
    """Drop materialised baselines no cycle will read again: trailing ones and hour
    partials ending before `older_than`, and a deployment's predecessor baselines
    (previous_version, retrain: they end at the deploy) once `after_deploy` (the
    comparison's length) has passed too. A backfill over such a window builds them
    again; pinned baselines stay."""
    bs = t.baseline_sketches
    with engine.begin() as conn:
        res = conn.execute(delete(bs).where(or_(
            and_(bs.c.kind.in_(["trailing", "hour", HOUR_STACK]), bs.c.window_end < older_than),
            and_(bs.c.kind.in_(["previous_version", "retrain"]), bs.c.window_end < older_than - after_deploy),
        )))
    return res.rowcount or 0


def sketch_std(s: Sketch) -> np.ndarray:
    """Per-metric standard deviation of the vectors a sketch summarises."""
    if s.n < 2:
        return np.full(len(s.sums), np.nan)
    mean = s.sums / s.n
    return np.sqrt(np.maximum(s.sumsq / s.n - mean * mean, 0.0))
