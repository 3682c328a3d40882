"""Compaction and roll-up on a real PostgreSQL, where two of them can run at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.test_maintenance import T0, _write_two_collectors, merge_while_another_merges


@pytest.mark.parametrize("kw", [{}, {"source_seconds": 60, "target_seconds": 3600}],
                         ids=["compaction", "roll-up"])
def test_two_merges_at_once_count_every_row_once_on_postgresql(pg_clean_url, monkeypatch, kw):
    _write_two_collectors(pg_clean_url)
    merge_while_another_merges(pg_clean_url, monkeypatch, datetime.fromtimestamp(T0 + 7200, UTC), **kw)
