"""The stuck bound's premise on a real PostgreSQL: a job's statement that waits on a lock
fails at statement_timeout_s even with lock_timeout_s at 0 (PostgreSQL counts lock waits
in the statement's time), so a bound is derived from statement_timeout_s alone."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from monitor.config import DaemonConfig
from monitor.store import make_engine


def test_a_statement_waiting_on_a_lock_fails_at_statement_timeout_without_lock_timeout(pg_clean_url):
    dm = DaemonConfig(statement_timeout_s=1, lock_timeout_s=0)
    holder = make_engine(pg_clean_url)
    job = make_engine(pg_clean_url, statement_timeout_s=dm.statement_timeout_s, lock_timeout_s=dm.lock_timeout_s)
    try:
        with holder.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
            with job.connect() as waiting, pytest.raises(OperationalError, match="statement timeout"):
                waiting.execute(text("SELECT pg_advisory_xact_lock(424242)"))
    finally:
        holder.dispose()
        job.dispose()
    assert dm.stuck_bound_s() == 2
