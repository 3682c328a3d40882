"""Detection quality on SQLite: known shifts are caught in the right series within three
cycles of the first window holding shifted data, and nothing fires where nothing changed."""

from __future__ import annotations

import pytest

from monitor.quality import false_alarms, run_scenario, scenarios


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s.name)
def test_shift_detected_in_the_right_series(sqlite_url, scenario):
    d = run_scenario(sqlite_url, scenario)
    assert d.first_cycle is not None, f"{scenario.name} not detected"
    assert 1 <= d.first_cycle <= 3, d
    assert d.false_series == (), d


def test_stationary_stream_crosses_no_default_threshold(sqlite_url):
    fa = false_alarms(sqlite_url, days=0.25)
    assert fa.cycles == 360 and fa.results > 0 and fa.series == 9
    assert fa.crossings == 0, fa.by_rule
