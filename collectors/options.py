"""A collector's options: from attnmon.yaml's `collector:` section, and the bounds they
must keep when given as arguments.
"""

from __future__ import annotations

import math
import os


def config_options(config, kwargs: dict, worker: bool = False) -> dict:
    """A collector's options from attnmon.yaml's `collector:` section and `store_url`
    (`config`: a loaded `monitor.config.Config`, else `load_config()`); `kwargs` win.
    `worker`: with `collector.worker`'s, for a ProcessCollector."""
    from monitor.config import load_config

    cfg = config if config is not None else load_config()
    options: dict = cfg.collector.model_dump(exclude={"hash_key_env", "worker"})
    if worker:
        options.update(cfg.collector.worker.model_dump())
    if kwargs.get("engine") is None:  # (an engine given is the store: no URL beside it)
        options["store_url"] = cfg.store_url
    if options["hash_item_ids"] and "hash_key" not in kwargs:
        var = cfg.collector.hash_key_env
        options["hash_key"] = os.environ.get(var)
        if not options["hash_key"]:
            raise ValueError(f"collector.hash_item_ids is set but ${var} (collector.hash_key_env) is empty")
    options.update(kwargs)
    return options


def _check_options(**options) -> None:
    """The bounds attnmon.yaml's collector section sets (monitor.config.CollectorConfig),
    for options given to a constructor: outside them the thread spins (flush_interval_s=0), never
    writes (NaN) or fails every batch it has counted as accepted (topk_items < 0)."""
    for name, value in options.items():
        if name.endswith("_s") or name == "tol":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and (
                value > 0 if name == "flush_interval_s" else value >= 0)
            want = "a finite number " + ("> 0" if name == "flush_interval_s" else ">= 0")
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            want = "an integer > 0"
        if not ok:
            raise ValueError(f"{name}={value!r}: must be {want}")
