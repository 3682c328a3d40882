"""`attnmon run`: the daemon that evaluates drift, delivers alerts and keeps the store small.

    >>> with Daemon(config) as daemon:     # doctest: +SKIP
    ...     daemon.start()                  # lead election, scheduler, /healthz, /metrics
    ...     ...                             # until SIGTERM (see `serve`)

Jobs (one APScheduler 3 `BackgroundScheduler` per daemon; only the leader runs them;
each with an explicit id, `coalesce=True`, `max_instances=1`, `misfire_grace_time`):

- `evaluate` (every `daemon.evaluate_every_s`): every window that ended since the
  watermark, oldest first, at most `evaluate.catchup_max_windows` of them (older ones are
  skipped with a warning), then the watermark moves on. See "Crash safety" below.
- `deliver` (every `daemon.deliver_every_s`): calls each of `deliver_hooks(engine, now)`;
  the first is the alerting outbox (`alerts.service.AlertService.deliver`: sends what is
  due, retries, re-sends firing alerts to Alertmanager).
- `maintain` (every `daemon.maintain_every_s`): compaction, hourly roll-up, thinning of
  old drift results and retention
  (`monitor.store.maintenance.maintain`), and drops materialised baselines older than
  two days (a deploy's predecessor baseline: two days after its comparison ended;
  `monitor.baselines.prune`). When it is next due is kept in `daemon_state`
  (`maintain.due`), so a restarted daemon keeps the hourly rhythm instead of starting
  the hour again (a new store: an interval after its first daemon started).
- `annotate` (every `grafana.annotate_every_s`, only with a `grafana:` section): posts
  the deployments and alert transitions of the last `grafana.annotate_days` that this
  Grafana has not had yet (`dashboards.annotate.annotate`, which records each one in
  `daemon_state`: a restart or a new leader posts nothing twice). Grafana down, or
  hanging (each call is cut at `grafana.timeout_s`, 2 x that at most): the run fails, is
  logged and retried; the events wait for a later run.

Time comes from `clock` (real UTC by default): a demo or a test passes a simulated one
and calls `tick(now)`, which runs the due jobs synchronously through the same code the
scheduler runs. The scheduler itself reads the host's wall clock: when it steps back
(NTP, a VM restored), the lease thread runs within about `lease_s` the jobs it left due
further ahead than their intervals (`_undo_step_back`); a step forward runs each job at
most once (`coalesce`), not once per interval missed.

Crash safety. The watermark (`daemon_state`, key `evaluate.watermark`) is the end of the
newest window evaluated; it moves after the window's results are committed. Results are
unique per (series, statistic, window end), so a crash between the two only makes the
next run write nothing for that window. Its update is monotonic, so a daemon that lost
the lead without noticing yet cannot move it back.

Leadership (`monitor.leadership`): one daemon per store leads and runs the jobs; on
PostgreSQL a session advisory lock with a heartbeat (a frozen leader is replaced), on a
SQLite file a `flock`. The leader checks it still leads every `daemon.lease_s` and
before each job, window and delivery group; a follower tries to lead every lease_s.

Progress. Each window (and each hour of a baseline it builds), delivery group,
maintenance chunk and Grafana annotation is a step of its job; a job that goes `daemon.stuck_after_s` without one is stuck, and /livez
answers 503 (`Daemon.alive`): its lease thread still beats, so only a restart (a liveness
probe) hands the lead on. The alert side sends the watchdog (`alerts.watchdog`) after
each window's alert rules ran, so a stuck evaluation also stops the dead-man's switch.

A failing job (store down) logs one line without secrets, counts the error, and runs
again `daemon.retry_s` later; the evaluate job's catch-up covers the windows missed.
A store that cannot be reached when `serve` starts is waited for (`wait_for_store`),
with /healthz saying so, rather than exiting.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select
from sqlalchemy.engine import Engine

from alerts.model import Receiver
from alerts.rules import CANNOT_FIRE, cannot_fire
from alerts.service import AlertService
from alerts.watchdog import KEEP_INTERVALS as WATCHDOG_KEEP_INTERVALS
from monitor.baselines import Baselines, prune
from monitor.config import Config
from monitor.errors import ConfigError, StoreError
from monitor.evaluate import (
    CycleResult,
    WindowReader,
    evaluate_cycle,
    prepare_baselines,
    window_for,
)
from monitor.leadership import SESSIONS_NAME, daemon_id, leadership_for
from monitor.store import tables as t
from monitor.store.engine import (
    make_engine,
    redact,
    require_schema,
    unreachable,
)
from monitor.store.engine import one_line as _one_line
from monitor.store.maintenance import MaintenanceResult, as_utc, maintain
from monitor.store.upsert import put_state

log = logging.getLogger("attnmon.daemon")

JOBS = ("evaluate", "deliver", "maintain")
ANNOTATE = "annotate"  # a job only when the config has a grafana: section
WATERMARK_KEY = "evaluate.watermark"
AHEAD_S = 120  # a watermark this far past the clock is not skew between hosts' clocks
MAINTAIN_DUE_KEY = "maintain.due"  # when the maintain job is next due, kept across restarts
BASELINE_KEEP = timedelta(days=2)  # materialised baselines older than this are pruned
STORE_WAIT_MAX_S = 30.0  # a store down at start is tried again at most this far apart
STEP_SLACK_S = 1.0  # a job due more than its interval and this ahead was left there by a clock step back
WINDOW_STEP_S = 60  # a window ends each minute: an evaluate run more often finds none new
# a call to Grafana is cut at grafana.timeout_s, its body's last read at most that later
# (dashboards.bounded): an annotate step takes up to this many timeouts
GRAFANA_CALL_TIMEOUTS = 2
FAKE_NOW_ENV = "ATTNMON_FAKE_NOW"  # read by the CLI only: simulated time for tests and demos

Clock = Callable[[], datetime]
DeliverHook = Callable[[Engine, datetime], object]
CycleHook = Callable[[Engine, CycleResult], object]


def utc_now() -> datetime:
    return datetime.now(UTC)


def fake_clock(spec: str, *, monotonic: Callable[[], float] = time.monotonic) -> Clock:
    """A simulated clock, for tests and demos: `"2026-11-20T08:00Z"` stands still;
    `"2026-11-20T08:00Z x60"` starts there and runs 60 times faster than real time."""
    parts = spec.split()
    try:
        if not 1 <= len(parts) <= 2:
            raise ValueError
        start = as_utc(datetime.fromisoformat(parts[0]))
        speed = float(parts[1].removeprefix("x")) if len(parts) == 2 else 0.0
        if not math.isfinite(speed) or speed < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(
            [(FAKE_NOW_ENV, spec, "expected an ISO time, optionally followed by a speed (e.g. 2026-11-20T08:00Z x60)")],
            "environment",
        ) from None
    t0 = monotonic()
    return lambda: start + timedelta(seconds=(monotonic() - t0) * speed)


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CatchUp:
    """What one evaluate job did: the windows evaluated, oldest first."""

    windows: tuple[CycleResult, ...] = ()
    skipped: int = 0  # missed windows beyond catchup_max_windows, never evaluated
    watermark: datetime | None = None  # after the run
    complete: bool = True  # False: stopped early (shutdown, or the lead was lost)

    @property
    def written(self) -> int:
        return sum(w.written for w in self.windows)


@dataclass(frozen=True)
class Maintained:
    maintenance: MaintenanceResult
    baselines_pruned: int


def maintain_store(engine: Engine, config: Config, now: datetime,
                   progress: Callable[[], object] = lambda: None) -> Maintained:
    """The maintain job's work, also `attnmon maintain`'s: compaction, roll-up and the
    retention of `config.retention`, then materialised baselines no cycle reads (`prune`).
    `progress()` is called after each step (`monitor.store.maintenance`)."""
    r = config.retention
    result = maintain(
        engine, now, events_days=r.events_days,
        minute_aggregates_days=r.minute_aggregates_days, write_batches_days=r.write_batches_days,
        drift_results_days=r.drift_results_days, health_days=r.collector_health_days,
        thin_results_after_days=r.drift_results_thin_after_days, thin_every_minutes=config.evaluate.window_minutes,
        progress=progress,
    )
    after = timedelta(hours=config.evaluate.previous_version_hours)
    return Maintained(result, prune(engine, now - BASELINE_KEEP, after_deploy=after))


@dataclass(frozen=True)
class JobRun:
    job: str
    at: datetime  # the daemon's clock when it started
    ok: bool
    duration_s: float
    result: object = None  # CatchUp | int (hooks called) | Maintained
    error: str | None = None  # one line, no secrets


# --- the watermark ---------------------------------------------------------------------


def read_watermark(engine: Engine) -> datetime | None:
    return _read_time(engine, WATERMARK_KEY)


def write_watermark(engine: Engine, end: datetime) -> None:
    """Move the watermark to `end`, never back (the ISO text of UTC minutes sorts as time)."""
    _write_time(engine, WATERMARK_KEY, end, only_forward=True)


def read_maintain_due(engine: Engine) -> datetime | None:
    return _read_time(engine, MAINTAIN_DUE_KEY)


def write_maintain_due(engine: Engine, due: datetime) -> None:
    _write_time(engine, MAINTAIN_DUE_KEY, due)


def _read_time(engine: Engine, key: str) -> datetime | None:
    ds = t.daemon_state
    with engine.connect() as conn:
        value = conn.execute(select(ds.c.value).where(ds.c.key == key)).scalar()
    return as_utc(datetime.fromisoformat(value)) if value else None


def _write_time(engine: Engine, key: str, value: datetime, *, only_forward: bool = False) -> None:
    with engine.begin() as conn:
        put_state(conn, key, _iso(value), utc_now(), only_forward=only_forward)


def _iso(ts: datetime) -> str:
    return as_utc(ts).isoformat(timespec="seconds")


# --- metrics ---------------------------------------------------------------------------


class _Metrics:
    def __init__(self, registry: CollectorRegistry, daemon: Daemon):
        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            Gauge(name, doc, registry=registry).set_function(fn)

        gauge("attnmon_daemon_is_leader", "1 if this daemon holds the lead", lambda: float(daemon.is_leader))
        gauge(
            "attnmon_daemon_evaluate_lag_seconds",
            "Seconds between now (the daemon's clock) and the end of the newest evaluated window",
            lambda: _nan(daemon.lag_s()),
        )
        gauge(
            "attnmon_daemon_watermark_timestamp_seconds",
            "End of the newest evaluated window (unix time)",
            lambda: daemon.watermark.timestamp() if daemon.watermark else math.nan,
        )
        job = ["job"]
        self.last_run = Gauge("attnmon_daemon_job_last_run_timestamp_seconds", "When each job last finished, ok or not (the daemon's clock)", job, registry=registry)
        self.last_success = Gauge("attnmon_daemon_job_last_success_timestamp_seconds", "When each job last finished without error", job, registry=registry)
        self.duration = Gauge("attnmon_daemon_job_duration_seconds", "How long each job's last run took", job, registry=registry)
        self.runs = Counter("attnmon_daemon_job_runs", "Job runs", job, registry=registry)
        self.errors = Counter("attnmon_daemon_job_errors", "Job runs that failed", job, registry=registry)
        for name in daemon.jobs:  # every series exists from the start, at 0
            for metric in (self.runs, self.errors):
                metric.labels(name)
        self.series = Gauge("attnmon_daemon_series_evaluated", "Series compared in the newest evaluated window", registry=registry)
        self.windows = Counter("attnmon_daemon_windows_evaluated", "Windows evaluated", registry=registry)
        self.skipped = Counter("attnmon_daemon_windows_skipped", "Missed windows beyond catchup_max_windows, not evaluated", registry=registry)
        self.written = Counter("attnmon_daemon_results_written", "drift_results rows written", registry=registry)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


# --- the daemon ------------------------------------------------------------------------


class Daemon:
    """The jobs, the lead and the endpoints of one `attnmon run` process.

    Everything it writes to is passed in: `engine` (else one for `config.store_url`),
    `clock`, the metrics `registry` (else a fresh one, never the global one).
    `deliver_hooks(engine, now)` are called by the deliver job; `cycle_hooks(engine,
    cycle_result)` after each window's results are committed and before the watermark
    moves past it (so a crash calls them again: they must be idempotent). Both lists
    start with the alerting side (`self.alerts`: alert evaluation after each window,
    then the outbox; `receivers` replaces the configured receivers, for tests) and may be
    extended before `start()`. `annotate=False` leaves out the Grafana annotate job (and
    the reading of its token), as `attnmon run --once` does: it never annotates.
    """

    def __init__(
        self,
        config: Config,
        *,
        engine: Engine | None = None,
        clock: Clock = utc_now,
        registry: CollectorRegistry | None = None,
        deliver_hooks: Iterable[DeliverHook] = (),
        cycle_hooks: Iterable[CycleHook] = (),
        healthy_lag_s: float | None = None,
        receivers: Mapping[str, Receiver] | None = None,
        annotate: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.clock = clock
        self._own_engine = engine is None
        dm = config.daemon
        self.id = daemon_id()
        self.engine = engine if engine is not None else make_engine(
            config.store_url, statement_timeout_s=dm.statement_timeout_s, lock_timeout_s=dm.lock_timeout_s,
            application_name=SESSIONS_NAME + self.id)  # a follower that ends this leader finds them by it
        self.store = redact(self.engine.url)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.alerts = AlertService(
            config.alerts, self.engine, registry=self.registry, clock=clock, receivers=receivers, who=self.id,
            # the watchdog comes after each evaluation, at most one a minute (a window ends
            # each minute, however often the job runs): Alertmanager holds it 4 of them
            watchdog_keep_s=WATCHDOG_KEEP_INTERVALS * max(dm.evaluate_every_s, dm.deliver_every_s, WINDOW_STEP_S))
        # a lost lead stops delivery between groups; each group is progress (/livez)
        self.alerts.keep_going = lambda: self._progressed("deliver") and self._may_go_on()
        for rule in cannot_fire(self.alerts.rules, config.evaluate):
            log.warning(CANNOT_FIRE.format(name=rule.name, statistic=rule.statistic))
        if not config.alerts.receivers and not receivers:
            log.warning("no alert receivers are configured (alerts.receivers): alerts fire and show in "
                        "Grafana and `attnmon alerts list`, but nobody is notified")
        elif config.alerts.receivers and config.alerts.route.receiver is None:
            # Alertmanager refuses such a root route; here it would drop alerts without a word
            log.warning("alerts.route names no receiver: an alert that no child route matches is "
                        "notified to nobody")
        self.deliver_hooks: list[DeliverHook] = [self.alerts.deliver, *deliver_hooks]
        self.cycle_hooks: list[CycleHook] = [self.alerts.after_cycle, *cycle_hooks]
        ev, dm = config.evaluate, config.daemon
        # steady state: the watermark trails now by lag_minutes, plus up to a minute and
        # one evaluate interval; /healthz says 503 past this
        self.healthy_lag_s = (
            healthy_lag_s if healthy_lag_s is not None else 60 * (ev.lag_minutes + 2) + 2 * dm.evaluate_every_s
        )
        self._every = {"evaluate": dm.evaluate_every_s, "deliver": dm.deliver_every_s, "maintain": dm.maintain_every_s}
        self.jobs: tuple[str, ...] = JOBS
        self._grafana: Any = None  # the Grafana API client, made on the annotate job's first run
        if config.grafana is not None and annotate:
            config.grafana.read_token()  # a token that cannot be read is an error now, not every run
            bound = dm.stuck_bound_s()
            if bound is not None and GRAFANA_CALL_TIMEOUTS * config.grafana.timeout_s >= bound:
                raise ConfigError([("grafana.timeout_s", config.grafana.timeout_s, (
                    f"a call to Grafana may take {GRAFANA_CALL_TIMEOUTS} x timeout_s, which must stay under "
                    f"daemon.stuck_after_s ({bound:g} s): a Grafana that hangs would make /livez report "
                    "the annotate job stuck"))])
            self.jobs += (ANNOTATE,)
            self._every[ANNOTATE] = config.grafana.annotate_every_s
        # a window's baselines are many hour partials: each is a step of the job (/livez)
        self._baselines = Baselines(self.engine, ev, progress=lambda: self._progressed("evaluate"))
        # minute sketches decoded once and reused by the overlapping windows of later cycles
        self._reader = WindowReader(self.engine)
        self._leadership = leadership_for(self.engine.url, dm.lease_s, self.id)
        self._leader = False
        self._lead_lock = threading.Lock()
        self._lease_failing = False
        self._watermark: datetime | None = None
        self._store_down: str | None = None  # why the store cannot be reached, while waiting for it at start
        self._last_run: dict[str, datetime | None] = dict.fromkeys(self.jobs)
        self._errors = dict.fromkeys(self.jobs, 0)
        self._failing = dict.fromkeys(self.jobs, 0)  # consecutive failures
        self._locks = {job: threading.Lock() for job in self.jobs}
        self._due: dict[str, datetime] | None = None  # tick(): when each job is due next
        self._stop = threading.Event()
        # the lease thread stops after the scheduler: a leader beats while its last job ends
        self._lease_stop = threading.Event()
        self._moving = threading.Lock()  # held to move a job in the scheduler, and to begin stop()
        self._scheduler: Any = None
        self._server: Any = None
        self._lease_thread: threading.Thread | None = None
        self._started_at = clock()
        # /livez: a job running longer than this since its last step of progress is stuck
        self.stuck_after_s = dm.stuck_bound_s()
        self._monotonic = monotonic  # (not `clock`: a wall clock stepped forward is no stall)
        self._running: dict[str, tuple[float, float]] = {}  # job -> (started, last progress)
        self._told_stuck: tuple[str, float] | None = None
        self._metrics = _Metrics(self.registry, self)

    # -- state ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def watermark(self) -> datetime | None:
        """End of the newest evaluated window, as last read or written by this daemon."""
        return self._watermark

    @property
    def http_port(self) -> int | None:
        """The port /healthz and /metrics are served on (after `start()`)."""
        return self._server.port if self._server is not None else None

    def lag_s(self, now: datetime | None = None) -> float | None:
        if self._watermark is None:
            return None
        return ((now or self.clock()) - self._watermark).total_seconds()

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /healthz: 200 while the evaluate lag is below
        `healthy_lag_s` (or the daemon is younger than that and has no watermark yet);
        503 "watermark_ahead" when the watermark is past this daemon's clock (nothing is
        evaluated until the clock gets there: a clock behind, or a watermark written by
        one ahead); 503 "store_unreachable" while `wait_for_store` waits, and while a daemon
        that is not leading cannot reach the store to take the lead."""
        now = self.clock()
        lag = self.lag_s(now)
        if self._store_down is not None:
            status = "store_unreachable"
        elif lag is None:
            young = (now - self._started_at).total_seconds() < self.healthy_lag_s
            status = "starting" if young else "no_watermark"
        else:
            status = "watermark_ahead" if lag < -AHEAD_S else "ok" if lag < self.healthy_lag_s else "lagging"
        body = {
            "status": status,
            "leader": self.is_leader,
            "lag_s": lag,
            "healthy_lag_s": self.healthy_lag_s,
            "watermark": _iso(self._watermark) if self._watermark else None,
            "last_run": {job: _iso(ts) if ts else None for job, ts in self._last_run.items()},
            "errors": dict(self._errors),
        }
        if self._store_down is not None:
            body["error"] = self._store_down
        return (200 if status in ("ok", "starting") else 503), body

    def alive(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /livez, for a liveness probe: 200 while this process runs
        its scheduler and lease (or waits for its store at start), whatever the lag.
        /healthz is for readiness and alerting: a follower reports the leader's lag, so a
        liveness probe on it would restart every replica, the leader amid a catch-up too.

        503 "stuck" when a job has gone `stuck_after_s` without a step of progress (a
        window evaluated, a delivery group, a maintenance chunk): the lease thread still
        beats for such a leader, so no follower would take over until it is restarted.
        A catch-up or a long merge makes a step every few statements and is never stuck."""
        stuck = self.stuck()
        if self._stop.is_set():
            status = "stopping"
        elif self._scheduler is not None and not self._scheduler.running:
            status = "scheduler_stopped"
        elif self._lease_thread is not None and not self._lease_thread.is_alive():
            status = "lease_stopped"
        elif stuck is not None:
            status = "stuck"
        else:
            status = "alive"
        body: dict[str, Any] = {"status": status, "leader": self.is_leader}
        if status == "stuck":
            body["stuck"] = stuck
        return (200 if status == "alive" else 503), body

    def stuck(self) -> dict[str, Any] | None:
        """The job that has gone longest without progress, if past `stuck_after_s`: its
        name, how long it has run and how long since its last step (seconds)."""
        if self.stuck_after_s is None:
            return None
        now = self._monotonic()
        quiet = [(now - last, job, now - started) for job, (started, last) in list(self._running.items())]
        if not quiet or max(quiet)[0] <= self.stuck_after_s:
            return None
        since, job, running = max(quiet)
        return {"job": job, "running_s": round(running, 1), "since_progress_s": round(since, 1),
                "stuck_after_s": self.stuck_after_s}

    def _progressed(self, job: str) -> bool:
        """Mark a step of progress of the running `job` (for /livez); always True."""
        if job in self._running:
            self._running[job] = (self._running[job][0], self._monotonic())
        return True

    # -- the jobs --------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None, *, keep_going: Callable[[], bool] | None = None) -> CatchUp:
        """Evaluate every window that ended since the watermark, oldest first.

        Without a watermark (a new store) only the current window is evaluated;
        `monitor.evaluate.backfill` evaluates history. `keep_going()` is asked before
        each window (the scheduled job stops between windows on shutdown).
        """
        cfg = self.config.evaluate
        now = as_utc(now) if now is not None else self.clock()
        _, target = window_for(now, cfg)
        wm = self._watermark = read_watermark(self.engine)
        if wm is None:
            ends = [target]
            log.info("no watermark in the store yet: starting with the window ending %s", _iso(target))
        else:
            missed = int((target - wm).total_seconds() // 60)
            ends = [wm + timedelta(minutes=i) for i in range(1, missed + 1)]
            if (wm - now).total_seconds() > AHEAD_S:
                log.warning(
                    "the watermark (%s) is ahead of this daemon's clock (%s): nothing is evaluated until the "
                    "clock gets there. Check the clock (NTP) on this host and the last leader's; a watermark "
                    "written by a wrong clock is the row evaluate.watermark in daemon_state", _iso(wm), _iso(now))
        limit = max(1, cfg.catchup_max_windows)
        skipped = max(0, len(ends) - limit)
        if skipped:
            log.warning(
                "%d windows ending %s to %s are more than catchup_max_windows=%d behind: "
                "skipped, not evaluated",
                skipped, _iso(ends[0]), _iso(ends[skipped - 1]), cfg.catchup_max_windows,
            )
            self._metrics.skipped.inc(skipped)
            ends = ends[skipped:]
        if len(ends) > 1:
            log.info("catching up %d windows ending %s to %s", len(ends), _iso(ends[0]), _iso(ends[-1]))
        done: list[CycleResult] = []
        for end in ends:
            if keep_going is not None and not keep_going():
                break
            result = evaluate_cycle(self.engine, end + timedelta(minutes=cfg.lag_minutes), cfg, self._baselines,
                                    self._reader)
            self._progressed("evaluate")
            for hook in self.cycle_hooks:
                hook(self.engine, result)
                self._progressed("evaluate")
            write_watermark(self.engine, result.window_end)
            self._watermark = max(result.window_end, self._watermark or result.window_end)
            self._metrics.windows.inc()
            self._metrics.written.inc(result.written)
            self._metrics.series.set(result.series)
            done.append(result)
        if done and (keep_going is None or keep_going()):  # (not while shutting down)
            self._prepare(done[-1])
        return CatchUp(tuple(done), skipped, self._watermark, complete=len(done) == len(ends))

    def _prepare(self, result: CycleResult) -> None:
        """The next hour's trailing baselines, after the results are written (a failure
        only means the turnover cycle builds them itself)."""
        try:
            for model, ref in prepare_baselines(self.engine, result, self.config.evaluate, self._baselines):
                log.info("prepared baseline %s of %s %s", ref.ref, model, ref.version)
        except Exception:
            log.warning("preparing the next hour's baselines failed; the turnover cycle builds them",
                        exc_info=True)

    def deliver(self, now: datetime | None = None) -> int:
        """Call every deliver hook; the first failure is raised after all have run."""
        now = as_utc(now) if now is not None else self.clock()
        first: BaseException | None = None
        for hook in list(self.deliver_hooks):
            try:
                hook(self.engine, now)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first
        return len(self.deliver_hooks)

    def maintain(self, now: datetime | None = None) -> Maintained:
        now = as_utc(now) if now is not None else self.clock()
        done = maintain_store(self.engine, self.config, now, progress=lambda: self._progressed("maintain"))
        write_maintain_due(self.engine, now + timedelta(seconds=self._every["maintain"]))
        return done

    def maintain_due(self, now: datetime) -> datetime:
        """When the maintain job is next due: as the store says, at most an interval from
        `now`. Kept in the store because a daemon restarted more often than
        maintain_every_s (rollouts, a crash loop) would otherwise never maintain, and raw
        events would outlive their retention. A store that says nothing is told now."""
        every = timedelta(seconds=self._every["maintain"])
        try:
            due = read_maintain_due(self.engine)
            if due is None:
                due = now + every
                write_maintain_due(self.engine, due)
        except Exception as exc:  # the store is down: the job's own retries take over
            log.warning("cannot read when maintenance is due: %s", _one_line(exc, self.engine.url))
            return now + every
        return min(due, now + every)

    def _maintain_in(self) -> timedelta:
        """How long from now (the daemon's clock) until maintain_due, never negative."""
        now = self.clock()
        return max(timedelta(0), self.maintain_due(now) - now)

    def annotate(self, now: datetime | None = None) -> Any:
        """Post the deployments and alert transitions Grafana has not had yet; returns
        `dashboards.annotate.AnnotateResult`. Raises `GrafanaError` when Grafana fails."""
        from dashboards.annotate import annotate
        from dashboards.client import connect

        g = self.config.grafana
        if g is None:
            raise RuntimeError("no grafana: section in the config")
        now = as_utc(now) if now is not None else self.clock()
        if self._grafana is None:
            self._grafana = connect(g.url, g.read_token(), timeout=g.timeout_s)
        try:
            return annotate(self.engine, self._grafana, since=now - timedelta(days=g.annotate_days),
                            grafana_url=g.url, dashboard_uid=g.dashboard_uid, now=now,
                            progress=lambda: self._progressed(ANNOTATE))
        except Exception:
            self._grafana = None  # the next run connects afresh (and reads a rotated token)
            raise

    def run_job(self, job: str, now: datetime | None = None) -> JobRun | None:
        """Run one job now, as the scheduler does: only on the leader, one at a time,
        errors logged and counted. None when not the leader or the job is running."""
        if job not in self.jobs:
            raise ValueError(f"unknown job {job!r}; jobs: {self.jobs}")
        if not self._still_leading():
            return None
        lock = self._locks[job]
        if not lock.acquire(blocking=False):
            return None
        started = self._monotonic()
        self._running[job] = (started, started)
        try:
            return self._run_locked(job, as_utc(now) if now is not None else self.clock())
        finally:
            del self._running[job]
            lock.release()

    def _run_locked(self, job: str, now: datetime) -> JobRun:
        started = time.monotonic()
        m = self._metrics
        try:
            if job == "evaluate":  # each window is progress (/livez)
                result: object = self.evaluate(
                    now, keep_going=lambda: self._progressed("evaluate") and self._may_go_on())
            else:
                result = getattr(self, job)(now)
        except Exception as exc:
            took = time.monotonic() - started
            msg = _one_line(exc, self.engine.url)
            self._errors[job] += 1
            self._failing[job] += 1
            m.errors.labels(job).inc()
            self._finished(job, took)
            log.error(
                "job %s failed on %s (%d in a row; retrying in %gs): %s",
                job, self.store, self._failing[job], self._retry_in(job), msg,
            )
            self._schedule_retry(job)
            return JobRun(job, now, False, took, error=msg)
        took = time.monotonic() - started
        if self._failing[job]:
            log.info("job %s succeeded again after %d failures", job, self._failing[job])
            self._failing[job] = 0
        self._finished(job, took)
        m.last_success.labels(job).set(self.clock().timestamp())
        return JobRun(job, now, True, took, result)

    def _finished(self, job: str, took: float) -> None:
        end = self.clock()
        self._last_run[job] = end
        self._metrics.runs.labels(job).inc()
        self._metrics.last_run.labels(job).set(end.timestamp())
        self._metrics.duration.labels(job).set(took)

    def _may_go_on(self) -> bool:
        return not self._stop.is_set() and self._still_leading()

    def _retry_in(self, job: str) -> float:
        return min(self.config.daemon.retry_s, self._every[job])

    def _schedule_retry(self, job: str) -> None:
        # (tick() moves its own due times)
        self._move_job(job, utc_now() + timedelta(seconds=self._retry_in(job)))

    def _move_job(self, job: str, when: datetime) -> None:
        """Set when the scheduler next runs `job`; nothing once stop() has begun. The
        scheduler's shutdown holds its job store's lock while it waits for the running
        job: a job (or the lease thread) asking it then would wait forever, and so would
        the shutdown."""
        with self._moving:
            if self._scheduler is None or self._stop.is_set():
                return
            try:
                self._scheduler.modify_job(job, next_run_time=when)
            except Exception:  # the job is gone
                pass

    def tick(self, now: datetime | None = None) -> dict[str, JobRun]:
        """Run the jobs due at `now` (default: the clock) synchronously, the same code the
        scheduler runs; for a simulated clock. Takes the lead first if it can.

        The first tick runs evaluate and deliver; maintain runs when `maintain_due` says
        (a new store: one interval later), as under the scheduler. A failed job is due again `retry_s` later."""
        now = as_utc(now) if now is not None else self.clock()
        if not self.acquire():
            return {}
        if self._due is None:
            self._due = {"evaluate": now, "deliver": now, "maintain": self.maintain_due(now), ANNOTATE: now}
        runs: dict[str, JobRun] = {}
        for job in self.jobs:
            if now < self._due[job]:
                continue
            run = self.run_job(job, now)
            if run is None:
                continue
            runs[job] = run
            wait = self._every[job] if run.ok else self._retry_in(job)
            self._due[job] = now + timedelta(seconds=wait)
        return runs

    # -- the lead ----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lead if it is free (one try); True if this daemon holds it."""
        with self._lead_lock:
            if self._leader:
                return True
            try:
                got = self._leadership.try_acquire()
            except Exception as exc:
                if not self._lease_failing:  # once per outage, not every lease_s
                    log.warning("cannot reach %s to take the lead: %s", self.store, _one_line(exc, self.engine.url))
                self._lease_failing = True
                # /healthz says why at once, not only "lagging" once the lag has grown
                self._store_down = _one_line(exc, self.engine.url)
                return False
            self._lease_failing = False
            self._store_down = None
            if got:
                self._leader = True
                log.info("took the lead on %s", self.store)
            return got

    def _still_leading(self) -> bool:
        """Whether this daemon still leads, asked of the lock itself (PostgreSQL: a round
        trip on its connection); steps down when it does not. Asked before each job, window
        and delivery group, not only every lease_s: a leader frozen past its keepalives (or
        cut off) whose lock went to another daemon would otherwise run jobs beside the new
        leader when it wakes, until its lease thread runs."""
        with self._lead_lock:
            if not self._leader:
                return False
            if self._leadership.still_held():
                return True
            self._leader = False
            self.alerts.watchdog.forget()  # its evaluations so far vouch for nothing once it leads again
        log.warning("lost the lead on %s (its connection ended); trying to take it again", self.store)
        return False

    def _lease(self) -> None:
        """Every lease_s: the leader checks it still leads; a follower tries to lead.
        While stopping, the leader only beats (its last job is ending) and no one leads anew."""
        self._still_leading()
        if self._stop.is_set():
            return
        if not self._leader and self.acquire() and self._scheduler is not None:
            # catch up at once, not an interval later; maintain when the store says
            due = {"evaluate": utc_now(), "deliver": utc_now(), "maintain": utc_now() + self._maintain_in()}
            for job, when in due.items():
                self._move_job(job, when)
        if not self._leader:
            try:  # a follower's /healthz, lag and alert gauges follow the store
                self._watermark = read_watermark(self.engine)
                self.alerts.refresh_metrics(self.engine, self.clock())
            except Exception as exc:
                log.debug("cannot read the watermark: %s", _one_line(exc, self.engine.url))

    def _lease_loop(self) -> None:
        while not self._lease_stop.wait(self.config.daemon.lease_s):
            try:
                self._lease()
            except Exception as exc:  # never let the lease thread die
                log.error("lead check failed: %s", _one_line(exc, self.engine.url))
            try:
                self._undo_step_back()
            except Exception as exc:
                log.error("cannot check when the jobs are due: %s", _one_line(exc, self.engine.url))
            self._tell_stuck()

    def _tell_stuck(self) -> None:
        """Log a stuck job once (per run of it), beside /livez's 503."""
        stuck = self.stuck()
        if stuck is None:
            return
        key = (stuck["job"], self._running.get(stuck["job"], (0.0, 0.0))[0])
        if key == self._told_stuck:
            return
        self._told_stuck = key
        log.error("job %s has made no progress for %.0fs (running for %.0fs; daemon.stuck_after_s=%g): "
                  "it is stuck; /livez answers 503 \"stuck\" so that a liveness probe restarts this daemon "
                  "(and another takes the lead)", stuck["job"], stuck["since_progress_s"], stuck["running_s"],
                  self.stuck_after_s)

    def _undo_step_back(self) -> None:
        """Run now every job the scheduler holds due more than its interval ahead.

        APScheduler reads the wall clock (`datetime.now`, never our `clock`) but sleeps on a
        monotonic wait: a wall clock stepped back by an hour (NTP, a VM restored) leaves
        every job due an hour ahead, and nothing would run for that hour, with nothing
        failing. No job is ever scheduled further ahead than its interval, so one that is
        was left there by a step; this thread waits on a monotonic clock too, so such a
        stall lasts about lease_s. A smaller step delays a job by at most the step. (A step
        forward needs nothing: the overdue runs are coalesced into one, or dropped as missed
        past misfire_grace_s, and the next is at most an interval away.)"""
        with self._moving:  # not once stop() shuts the scheduler down (see _move_job)
            if self._scheduler is None or self._stop.is_set():
                return
            jobs = self._scheduler.get_jobs()
        now = utc_now()
        ahead = {}
        for job in jobs:
            if job.next_run_time is not None:
                by = (job.next_run_time - now).total_seconds()
                if by > self._every[job.id] + STEP_SLACK_S:
                    ahead[job.id] = by
        if not ahead:
            return
        log.warning("the wall clock stepped back: jobs were due further ahead than their intervals (%s); "
                    "running them now instead of waiting",
                    ", ".join(f"{job} in {by:.0f}s" for job, by in sorted(ahead.items())))
        for job_id in ahead:
            self._move_job(job_id, now)

    # -- life cycle --------------------------------------------------------------------

    def listen(self) -> None:
        """Serve /healthz and /metrics (once)."""
        from monitor.health import HealthServer

        if self._server is not None:
            return
        listen = self.config.daemon.listen
        try:
            self._server = HealthServer(listen, self.health, self.registry, live=self.alive)
        except (OSError, ValueError) as exc:  # a bad address, or the port is taken
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError([("daemon.listen", listen, f"cannot listen there: {reason}")]) from None
        self._server.start()
        log.info("serving /healthz, /livez and /metrics on %s", self._server.url)

    def wait_for_store(self, stop: threading.Event, *, max_wait_s: float = STORE_WAIT_MAX_S) -> bool:
        """Check the store's schema, waiting (True) for a store that cannot be reached, or
        until `stop` is set (False). Meanwhile /healthz answers 503 "store_unreachable".

        Waiting, rather than exiting for a restart policy to try again: systemd gives a
        unit up after 5 failed starts in 10 s, and a Kubernetes pod in CrashLoopBackOff
        may wait 5 minutes after the store is back. A schema that is not this attnmon's
        (or a SQLite file that is not there) still raises StoreError: waiting would not
        fix it."""
        delay, told, told_at = 1.0, None, 0.0
        while True:
            try:
                require_schema(self.engine)
            except StoreError as exc:
                if not unreachable(exc):
                    raise
                self._store_down = str(exc)
                if self._store_down != told or time.monotonic() - told_at > 600:  # once per cause, then every 10 min
                    log.warning("%s; waiting for it (/healthz: 503 store_unreachable)", exc)
                    told, told_at = self._store_down, time.monotonic()
                if stop.wait(delay):
                    return False
                delay = min(2 * delay, max_wait_s)
                continue
            if told is not None:
                log.info("%s answers: starting", self.store)
            self._store_down = None
            return True

    def start(self) -> None:
        """Serve /healthz and /metrics, take the lead if free, start the scheduler."""
        from apscheduler.schedulers.background import BackgroundScheduler

        dm = self.config.daemon
        self.listen()
        if not self.acquire():
            log.info("another daemon leads %s: waiting (trying every %gs)", self.store, dm.lease_s)
            self._lease()
        scheduler = BackgroundScheduler(timezone=UTC)
        now = utc_now()
        first = {"evaluate": now, "deliver": now, "maintain": now + self._maintain_in(), ANNOTATE: now}
        for job in self.jobs:
            scheduler.add_job(
                self.run_job, "interval", args=[job], id=job, name=f"attnmon {job}",
                seconds=self._every[job], next_run_time=first[job],
                coalesce=True, max_instances=1,
                # APScheduler wants whole seconds, at least one
                misfire_grace_time=max(1, math.ceil(dm.misfire_grace_s)),
                replace_existing=True,
            )
        self._scheduler = scheduler
        scheduler.start()
        self._lease_thread = threading.Thread(target=self._lease_loop, name="attnmon-lease", daemon=True)
        self._lease_thread.start()

    def stop(self) -> None:
        """Let the running job finish (a catch-up stops between windows), stop the
        scheduler, give the lead back and stop serving. The lease thread goes on beating
        until the job has ended: a follower must not take a leader finishing its last job
        for a frozen one and end the job's session."""
        with self._moving:  # no job is moved from here on (see _move_job)
            self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self._lease_stop.set()
        if self._lease_thread is not None:
            self._lease_thread.join()
            self._lease_thread = None
        with self._lead_lock:
            if self._leader:
                self._leadership.release()
                self._leader = False
                log.info("gave the lead on %s back", self.store)
        if self._server is not None:
            self._server.close()
            self._server = None

    def close(self) -> None:
        self.stop()
        self._leadership.close()
        if self._own_engine:
            self.engine.dispose()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(daemon: Daemon, stop: threading.Event | None = None) -> int:
    """Run `daemon` until SIGTERM or SIGINT (or `stop` is set), then shut down cleanly.
    A store that cannot be reached at start is waited for (`Daemon.wait_for_store`).
    A second signal while the running job finishes exits the process at once (status
    128 + the signal's number), which the crash safety allows: the watermark moves only
    after a window's results are committed."""
    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            # a job stuck on the store; what it did not commit, the next leader does again
            log.warning("%s again: exiting now, without waiting for the running job", name)
            logging.shutdown()
            os._exit(128 + signum)
        log.info("%s: finishing the running job, then exiting (send it again to exit at once)", name)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.listen()
        if not daemon.wait_for_store(stop):
            return 0
        daemon.start()
        while not stop.wait(0.5):
            pass
    finally:
        daemon.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
