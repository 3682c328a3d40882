"""Imports run one way: the pure core pulls in no SQL, scheduler or HTTP library."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["monitor.metrics", "monitor.sketch", "monitor.topk", "monitor.simulate"])
def test_pure_core_imports_no_io_library(module):
    code = (
        f"import sys, {module}; "
        "bad = [m for m in ('sqlalchemy', 'alembic', 'psycopg', 'apscheduler', 'requests', 'httpx', 'urllib3') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_exports():
    import collectors
    import monitor

    assert collectors.__all__ == ["AttentionCollector", "CollectorStats", "InvalidAttention", "ProcessCollector"]
    assert monitor.__all__ == ["Store"]
    assert monitor.Store.__name__ == "Store"
