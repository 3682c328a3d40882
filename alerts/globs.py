"""`match` values of alert rules and routes: a glob, or a list of globs.

A glob that starts with `!` matches the values the rest does not. In a list, a value
matches if any plain glob matches (or there is none) and no `!` glob excludes it:
`["!retrain", "!previous_version"]` is "neither", `[trailing, pinned]` is "either".

Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence


def label_matches(value: str, pattern: str | Sequence[str]) -> bool:
    """Whether a label value matches a `match` entry: one glob, or a list of them (any
    plain glob, and every `!` one)."""
    patterns = (pattern,) if isinstance(pattern, str) else tuple(pattern)
    wanted = [p for p in patterns if not p.startswith("!")]
    if wanted and not any(fnmatch.fnmatchcase(value, p) for p in wanted):
        return False
    return not any(fnmatch.fnmatchcase(value, p[1:]) for p in patterns if p.startswith("!"))


def _is_literal(glob: str) -> bool:
    return not re.search(r"[*?[]", glob.replace("[*]", "").replace("[?]", ""))


def _unescape(glob: str) -> str:
    return glob.replace("[*]", "*").replace("[?]", "?")


def check_patterns(label: str, value) -> tuple[str, ...]:
    """One glob or a non-empty list of them, as a tuple; a list that cannot match any
    value is an error, as is a glob listed twice."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    elif not isinstance(value, list | tuple):
        raise ValueError(f"{label}: expected a glob or a list of globs, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{label}: an empty list matches nothing; leave the label out to match every value")
    bad = [x for x in value if not isinstance(x, str | int | float) or isinstance(x, bool)]
    if bad:
        raise ValueError(f"{label}: list entries must be globs (strings), got {bad[0]!r}")
    out = tuple(str(x) for x in value)
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise ValueError(f"{label}: {dup} listed more than once")
    wanted = [p for p in out if not p.startswith("!")]
    negated = [p[1:] for p in out if p.startswith("!")]

    def excluded(p: str) -> bool:  # every value this plain glob matches is negated too
        return any(n == "*" or n == p or (_is_literal(p) and fnmatch.fnmatchcase(_unescape(p), n)) for n in negated)

    if "*" in negated or (wanted and all(excluded(p) for p in wanted)):
        shown = out[0] if len(out) == 1 else list(out)
        raise ValueError(f"{label}: {shown!r} can match no value: a `!` entry excludes every value it allows")
    return out
