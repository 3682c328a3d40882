"""attnmon.yaml: one validated model, loaded once by the CLI and passed down.

Precedence, lowest first: the defaults below < the YAML file < the environment <
explicit overrides (the CLI's `--store`). Environment variables:

    ATTNMON_STORE_URL=postgresql+psycopg://...     -> store_url
    ATTNMON_COLLECTOR__SAMPLE_RATE=0.1             -> collector.sample_rate
    ATTNMON_<SECTION>__<KEY>                        -> <section>.<key> (any depth, `__` apart)

An empty variable counts as unset; `null` (any case) sets a field that may be null to
None, as `null` in the file does (ATTNMON_COLLECTOR__SPILL_DIR=null: no spill folder),
and is an error for any other field. Every bad entry is reported at once, as a
`ConfigError` naming the dotted field, the value and what is wrong:

    >>> load_config("attnmon.yaml")   # doctest: +SKIP
    ConfigError: attnmon.yaml: collector.sample_rate=1.5: must be ≤ 1
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.config import AlertsConfig, Secret
from monitor.errors import ConfigError
from monitor.store.engine import PG_TIMEOUT_MAX_S, redact, url_problem

DEFAULT_PATH = Path("attnmon.yaml")
ENV_PREFIX = "ATTNMON_"
ENV_STORE_URL = "ATTNMON_STORE_URL"


# Upper bounds. A duration past a century (say 1e6 days, to mean "keep forever") overflows
# the date arithmetic of the jobs, which then fail at every run; PostgreSQL takes a
# statement or lock timeout of at most 2^31-1 ms, and refuses every connection past it.
CENTURY_DAYS = 36_500
CENTURY_S = CENTURY_DAYS * 86_400
STUCK_STATEMENTS = 2  # the default stuck bound, in statements at their timeouts (DaemonConfig)


class _Strict(BaseModel):
    # A misspelled key is an error, not a silently ignored setting; NaN and inf are
    # never a meaningful rate, size or interval.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class WorkerConfig(_Strict):
    """ProcessCollector's worker process (an AttentionCollector ignores these)."""

    restart_every_s: float = Field(5.0, ge=0, le=CENTURY_S)
    hang_after_s: float | None = Field(60.0, ge=2, le=CENTURY_S)  # (the worker reports every second)
    python: str | None = None


class CollectorConfig(_Strict):
    sample_rate: float = Field(0.01, ge=0, le=1)
    queue_size: int = Field(10_000, gt=0)
    flush_interval_s: float = Field(2.0, gt=0, le=CENTURY_S)
    spill_dir: str | None = None
    hash_item_ids: bool = False
    # the name of the variable that holds the key, never the key itself
    hash_key_env: str = "ATTNMON_HASH_KEY"
    max_length: int = Field(4096, gt=0)
    topk_items: int = Field(512, gt=0)
    topk_attr_values: int = Field(128, gt=0)
    late_grace_s: float = Field(5.0, ge=0, le=CENTURY_S)
    tol: float = Field(5e-3, ge=0, le=1)  # collectors.collector.TOL
    max_unsent_rows: int = Field(100_000, ge=0)
    write_timeout_s: float = Field(30.0, gt=0, le=PG_TIMEOUT_MAX_S)
    worker: WorkerConfig = WorkerConfig()


class RetentionConfig(_Strict):
    events_days: float = Field(7, gt=0, le=CENTURY_DAYS)
    minute_aggregates_days: float = Field(3, gt=0, le=CENTURY_DAYS)
    write_batches_days: float = Field(14, gt=0, le=CENTURY_DAYS)
    # drift results grow with series x statistics x minutes (1,000 series: ~17M rows a day)
    drift_results_days: float = Field(30, gt=0, le=CENTURY_DAYS)
    # older results keep one window in every evaluate.window_minutes (windows that tile
    # time): a fifteenth of the rows for 15-minute windows; at or past drift_results_days
    # nothing is thinned
    drift_results_thin_after_days: float = Field(3, gt=0, le=CENTURY_DAYS)
    # the collectors' per-minute health rows (one per collector and minute)
    collector_health_days: float = Field(30, gt=0, le=CENTURY_DAYS)


Statistic = Literal["mean", "delta", "psi", "js", "wasserstein"]
STATISTICS = ("mean", "delta", "psi", "js", "wasserstein")  # per-metric statistics, written in this order


class EvaluateConfig(_Strict):
    window_minutes: int = Field(15, gt=0, le=CENTURY_DAYS * 1440)
    lag_minutes: int = Field(1, ge=0, le=CENTURY_DAYS * 1440)  # the window ends this long ago, for late data
    # below this many vectors in the window or the baseline, a series is not compared
    min_samples: int = Field(300, gt=0)
    metrics: list[str] = ["entropy_norm", "top1", "recency5", "distance", "gini"]
    # what is written per metric: mean.*, delta.*, psi.* by default; js.* and wasserstein.*
    # on request. Each costs a row per series and minute (1,000 series: 1.4M rows a day).
    statistics: list[Statistic] = ["mean", "delta", "psi"]
    # ... except for the metrics named here. By default the metrics no shipped rule or
    # dashboard reads the mean or delta of get PSI alone (their distribution shift, one
    # row): a third fewer rows. {} writes `statistics` for every metric, and so does a
    # config that sets `statistics` without setting this.
    statistics_by_metric: dict[str, list[Statistic]] = {
        "top1": ["psi"], "distance": ["psi"], "gini": ["psi"], "head_diversity": ["psi"],
    }
    baseline_hours: float = Field(24, gt=0, le=CENTURY_DAYS * 24)
    trailing_gap_hours: float = Field(1, ge=0, le=CENTURY_DAYS * 24)
    previous_version_hours: float = Field(24, ge=0, le=CENTURY_DAYS * 24)  # how long after a deploy it is compared with its predecessor
    catchup_max_windows: int = Field(120, ge=0)  # a restarted daemon evaluates at most this many missed minutes

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from monitor.metrics import ALL_METRICS

        bad = [m for m in value if m not in ALL_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {list(ALL_METRICS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _statistics_set_alone_apply_to_all(cls, data: Any) -> Any:
        # who asks for statistics by name asks for them on every metric, not only on
        # the ones the lean default leaves alone
        if isinstance(data, dict) and "statistics" in data and "statistics_by_metric" not in data:
            return {**data, "statistics_by_metric": {}}
        return data

    @field_validator("statistics_by_metric")
    @classmethod
    def _known_metric_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from monitor.metrics import ALL_METRICS

        bad = [m for m in value if m not in ALL_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {list(ALL_METRICS)}")
        return value

    def statistics_for(self, metric: str) -> list[str]:
        """What is written for `metric`, in the order mean, delta, psi, js, wasserstein."""
        chosen = set(self.statistics_by_metric.get(metric, self.statistics))
        return [s for s in STATISTICS if s in chosen]


class DaemonConfig(_Strict):
    listen: str = "127.0.0.1:9464"  # /healthz, /livez and /metrics; loopback unless you say otherwise
    evaluate_every_s: float = Field(60, gt=0, le=CENTURY_S)
    deliver_every_s: float = Field(15, gt=0, le=CENTURY_S)
    maintain_every_s: float = Field(3600, gt=0, le=CENTURY_S)
    misfire_grace_s: float = Field(30, ge=0, le=CENTURY_S)
    # how often the leader beats and a waiting daemon tries to lead; PostgreSQL: a leader
    # silent 3 x lease_s (frozen) is ended by a follower
    lease_s: float = Field(10, gt=0, le=CENTURY_S)
    retry_s: float = Field(5, gt=0, le=CENTURY_S)  # a failed job is retried this soon (store down)
    # PostgreSQL: a statement or a lock wait of a job's session past these fails the job
    # (retried retry_s later) instead of holding it forever; 0 = no limit
    statement_timeout_s: float = Field(900, ge=0, le=PG_TIMEOUT_MAX_S)
    lock_timeout_s: float = Field(60, ge=0, le=PG_TIMEOUT_MAX_S)
    # a job that has run this long without a step of progress (a window, a delivery group,
    # a maintenance chunk) is stuck: /livez answers 503. None: STUCK_STATEMENTS x
    # (statement_timeout_s + lock_timeout_s), or never when statement_timeout_s is 0; 0: never
    stuck_after_s: float | None = Field(None, ge=0, le=CENTURY_S)

    def stuck_bound_s(self) -> float | None:
        """How long a job may go without progress before /livez calls it stuck (None: never).

        A step between two progress marks is a few statements, each of which fails at
        statement_timeout_s (its lock waits included: PostgreSQL counts them in the
        statement's time, so a lock_timeout_s of 0 leaves it bounded): past a couple of
        those, the job is waiting on something no timeout bounds."""
        if self.stuck_after_s is not None:
            return self.stuck_after_s or None
        if not self.statement_timeout_s:
            return None  # no limit on a statement: a long one cannot be told from a stuck one
        return STUCK_STATEMENTS * (self.statement_timeout_s + self.lock_timeout_s)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        # Checked with the rest of the file, not first when `attnmon run` binds: every
        # other command (and `run --once`) would take a listen the daemon cannot use.
        from monitor.health import parse_listen

        try:
            parse_listen(value)
        except ValueError:
            raise ValueError("expected HOST:PORT, a port from 0 to 65535 (e.g. 127.0.0.1:9464)") from None
        return value


class GrafanaConfig(_Strict):
    """Where the daemon's annotate job posts deployments and alert transitions (and where
    `attnmon dashboards push|annotate` go when not told otherwise)."""

    url: str  # base URL, e.g. https://grafana.internal (any sub-path)
    # a service account token, named by an environment variable or a file, never inline
    token: Secret = Secret(env="ATTNMON_GRAFANA_TOKEN")
    folder: str = Field("attnmon", min_length=1, max_length=40)  # the dashboards' folder uid (push)
    dashboard_uid: str | None = None  # pin annotations to one dashboard; None: organisation-wide, by tag
    annotate_every_s: float = Field(60.0, gt=0, le=CENTURY_S)
    annotate_days: float = Field(7.0, gt=0, le=CENTURY_DAYS)  # look back this far for events not posted yet
    timeout_s: float = Field(10.0, gt=0, le=CENTURY_S)  # each call as a whole (dashboards.bounded: 2 x at most)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlparse

        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("not an http(s) URL (e.g. https://grafana.internal)")
        return value

    def read_token(self) -> str:
        """The token, read now (a rotated file is picked up); ConfigError if unset."""
        try:
            token = self.token.read().strip()
        except ConfigError as exc:
            raise ConfigError([("grafana.token", where, msg) for where, _, msg in exc.problems]) from None
        if not token:
            raise ConfigError([("grafana.token", self.token.file or self.token.env, "empty")])
        return token


class Config(_Strict):
    store_url: str = "sqlite:///attnmon.db"
    collector: CollectorConfig = CollectorConfig()
    retention: RetentionConfig = RetentionConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    daemon: DaemonConfig = DaemonConfig()
    alerts: AlertsConfig = AlertsConfig()
    grafana: GrafanaConfig | None = None  # None: no annotate job

    def __repr_args__(self):
        # repr() and str(): a config in a log line or a traceback's locals must not show
        # the store's password
        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "store_url" else value

    @field_validator("store_url")
    @classmethod
    def _parseable_url(cls, value: str) -> str:
        if problem := url_problem(value):
            raise ValueError(problem)
        return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read attnmon.yaml (if any), apply the environment, validate once.

    `path=None` reads ./attnmon.yaml only if it exists; `env=None` reads os.environ.
    `overrides` maps dotted fields to values given on the command line (highest
    precedence; None values are ignored).
    """
    env = os.environ if env is None else env
    if path is None and DEFAULT_PATH.is_file():
        path = DEFAULT_PATH
    source = str(path) if path is not None else "config"

    data: dict[str, Any] = {}
    problems: list[tuple[str, object, str]] = []  # found before validation: duplicate keys
    if path is not None:
        data, problems = _read_yaml(path)
    origins: dict[tuple[str, ...], str] = {}  # field path -> where a non-file value came from
    for keys, var, value in _env_entries(env):
        origins[keys] = f"environment variable {var}"
        parsed = _env_value(value)
        if value.strip().lower() == "null" and (nullable := _nullable(keys)) is not None:
            if not nullable:
                problems.append((".".join(keys), value, "cannot be null; to use the file's value or the default, "
                                 f"unset the variable or leave it empty (from {origins[keys]})"))
                continue
            parsed = None
        blocked = _set(data, keys, parsed)
        if blocked is not None:
            # The file holds a list or a value where the variable reaches inside it
            # (ATTNMON_ALERTS__RECEIVERS__0__URL): it would be ignored without a word.
            problems.append((".".join(keys), value, f"{var} cannot set a key inside {'.'.join(blocked)}, "
                             "which is a list or a value, not a mapping: set "
                             f"ATTNMON_{'__'.join(blocked).upper()} as a whole (YAML flow style)"))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            keys = tuple(dotted.split("."))
            _set(data, keys, value)
            origins[keys] = "the command line"

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += [_problem(err, origins) for err in exc.errors()]
        raise ConfigError(problems, source) from None
    if problems:
        raise ConfigError(problems, source)
    return config


def _env_entries(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], str, str]]:
    entries = []
    for var, value in sorted(env.items()):
        if not value or not var.startswith(ENV_PREFIX):
            continue
        if var == ENV_STORE_URL:
            entries.append((("store_url",), var, value))
        elif "__" in var:
            # Only ATTNMON_<SECTION>__<KEY> is configuration: ATTNMON_HASH_KEY,
            # ATTNMON_TEST_PG_URL and friends are other things.
            keys = tuple(k.lower() for k in var[len(ENV_PREFIX) :].split("__"))
            entries.append((keys, var, value))
    return entries


def _nullable(keys: tuple[str, ...]) -> bool | None:
    """Whether the field at `keys` (through Config's nested sections) may be None; None
    for a key that is no field (unknown, or inside a list or mapping): validation says so."""
    model: Any = Config
    for depth, key in enumerate(keys, 1):
        fields = model.model_fields
        field = fields.get(key) or next((f for f in fields.values() if f.alias == key), None)
        if field is None:
            return None
        ann = field.annotation
        args = get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)
        if depth == len(keys):
            return type(None) in args
        sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(sections) != 1:
            return None
        model = sections[0]
    return None


def _env_value(value: str) -> Any:
    """A variable's text; a list or mapping when written as one, in YAML's flow style
    (ATTNMON_EVALUATE__METRICS='[entropy_norm, top1]')."""
    if value.lstrip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # validation names the variable and the value
    return value


def _set(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> tuple[str, ...] | None:
    """Set data[k0][k1]... = value; None, or the keys of the non-mapping in the way."""
    node = data
    for depth, key in enumerate(keys[:-1], 1):
        child = node.get(key)
        if not isinstance(child, dict):
            # A section the file left out (or got wrong: validation reports that).
            if child is not None:
                return keys[:depth]
            child = node[key] = {}
        node = child
    node[keys[-1]] = value
    return None


# pydantic's words -> the short words a person reads in a one-line error
_MESSAGES = {
    "extra_forbidden": "unknown key",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "finite_number": "must be a finite number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "dict_type": "must be a mapping of keys to values",
    "list_type": "must be a list, e.g. [a, b]",
}


def _problem(err: Any, origins: Mapping[tuple[str, ...], str]) -> tuple[str, object, str]:
    loc = tuple(str(p) for p in err["loc"])
    ctx = {k: _number(v) for k, v in err.get("ctx", {}).items()}
    template = _MESSAGES.get(err["type"])
    if template is not None:
        message = template.format(**ctx)
    else:
        message = str(ctx.get("error") or err["msg"])
    # Name where the value came from when it was not the file: the variable that set
    # this field or a section above it, or (an unknown section) the ones below it.
    sources = [origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins][:1]
    sources = sources or [o for keys, o in origins.items() if keys[: len(loc)] == loc]
    value = err["input"]
    if err["type"] == "missing":
        value = "(missing)"  # (the input is the mapping that lacks it: it may hold secrets)
    elif isinstance(value, Mapping):
        value = "{" + ", ".join(str(k) for k in value) + "}"  # its keys only, for the same reason
    if err["type"] in ("model_type", "model_attributes_type") and err.get("ctx", {}).get("class_name") == "Secret":
        # a secret written inline: say how to name it, and never print it back
        message, value = "a secret is named, never written here: {env: VARIABLE} or {file: PATH}", "(hidden)"
    if loc == ("store_url",) and isinstance(value, str):
        from monitor.store.engine import redact

        value = redact(value)  # a URL that failed validation still carries its password
    if err["type"] == "extra_forbidden" and isinstance(err["input"], str) and any(o.startswith("environment") for o in sources):
        # A variable that is no setting may be a receiver's secret someone named
        # ATTNMON_ALERTS__PAGERDUTY_KEY: its value must not reach stderr or a log.
        value = "(hidden)"
        message += " (a secret's variable must not be named ATTNMON_<SECTION>__<KEY>)"
    if sources:
        message += f" (from {', '.join(sources)})"
    return ".".join(loc) or "(top level)", value, message


def _number(value: Any) -> Any:
    # "must be ≤ 1", not "must be ≤ 1.0"
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _read_yaml(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], list[tuple[str, object, str]]]:
    """The file's mapping, and its duplicate keys (reported with the other problems)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([("file", source, f"cannot be read: {reason}")], source) from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text)], source) from None
    finally:
        loader.dispose()
    if data is None:  # an empty file is an empty config
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("(top level)", data, "must be a mapping of sections")], source)
    return data, loader.duplicates


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[str, object, str]:
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return "yaml", None, f"syntax error: {what}"
    lines = text.splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else ""
    return f"line {mark.line + 1}, column {mark.column + 1}", line, f"YAML syntax error: {what}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys: YAML would let the last one win silently."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[str, object, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                where = f"line {key_node.start_mark.line + 1}"
                self.duplicates.append((where, key, "duplicate key"))
            try:
                seen.add(key)
            except TypeError:
                pass  # an unhashable key: construct_mapping below reports it
        return super().construct_mapping(node, deep=deep)
