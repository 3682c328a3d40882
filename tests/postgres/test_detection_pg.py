"""The same detection checks on the real PostgreSQL."""

from __future__ import annotations

import pytest

from monitor.quality import run_scenario, scenarios


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s.name)
def test_shift_detected_in_the_right_series_on_postgres(pg_clean_url, scenario):
    d = run_scenario(pg_clean_url, scenario)
    assert d.first_cycle is not None and 1 <= d.first_cycle <= 3, d
    assert d.false_series == (), d
