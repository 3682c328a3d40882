"""The five dashboards of DESIGN §7, built from their specs.

    >>> [d.uid for d in dashboards()]    # doctest: +NORMALIZE_WHITESPACE
    ['attnmon-overview', 'attnmon-heads', 'attnmon-items', 'attnmon-versions', 'attnmon-health']
"""

from __future__ import annotations

from pathlib import Path

from dashboards import heads, health, items, overview, versions
from dashboards.spec import Dashboard


def dashboards(rules_path: str | Path | None = None) -> tuple[Dashboard, ...]:
    """Every dashboard; the overview draws the thresholds of the rules at `rules_path`
    (default: the shipped rule pack)."""
    from alerts.rules import load_rules

    rules = load_rules(rules_path)
    return (
        overview.build(rules),
        heads.build(),
        items.build(),
        versions.build(),
        health.build(rules),
    )


def by_uid(uid: str, rules_path: str | Path | None = None) -> Dashboard:
    for d in dashboards(rules_path):
        if d.uid == uid:
            return d
    raise KeyError(uid)
