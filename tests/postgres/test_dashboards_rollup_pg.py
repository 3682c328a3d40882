"""The traffic panels across the hourly roll-up on PostgreSQL (tests/test_dashboards_rollup.py)."""

from __future__ import annotations

from test_dashboards_rollup import check_rates_survive_the_rollup


def test_rates_survive_the_rollup_on_postgresql(pg_clean_url: str) -> None:
    check_rates_survive_the_rollup(pg_clean_url)
