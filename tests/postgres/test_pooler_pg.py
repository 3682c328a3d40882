"""Collectors behind PgBouncer (transaction mode, its default ignore_startup_parameters),
which refuses the `options` startup parameter that carries the statement and lock
timeouts: they could not connect at all. A real PgBouncer runs on loopback here."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from peers import LOOPBACK, free_port, unavailable
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from collectors import AttentionCollector
from monitor.store import make_engine, migrate
from monitor.store import tables as t

DATABASE = "attnmon_pooler_test"


def _pgbouncer() -> str:
    found = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.path.exists(p)), None)
    if found is None:
        unavailable("Debian's pgbouncer is not installed")
    return found


@pytest.fixture(scope="module")
def pooled(pg_url: str) -> Iterator[tuple[str, str]]:
    """(a URL through PgBouncer, the same database's direct URL), on a database of its own
    at head: PgBouncer passes no search_path, so no schema of the other tests' will do."""
    binary = _pgbouncer()
    direct = make_url(pg_url)
    admin = make_engine(direct, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    target = direct.set(database=DATABASE)
    migrate.upgrade(target.render_as_string(hide_password=False))
    folder = Path(tempfile.mkdtemp(prefix="attnmon-pgbouncer-"))
    folder.chmod(0o755)  # read by the postgres user it switches to, when run as root
    port = free_port()
    user = direct.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{DATABASE} = host={direct.host or LOOPBACK} port={direct.port or 5432} dbname={DATABASE}\n"
        "[pgbouncer]\n"
        f"listen_addr = {LOOPBACK}\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        # one server connection: what one client sets, the next one gets, unless it is
        # set per transaction
        "pool_mode = transaction\ndefault_pool_size = 1\nmax_client_conn = 50\n"
        "ignore_startup_parameters = extra_float_digits\n"  # PgBouncer's usual
    )
    for f in folder.iterdir():
        f.chmod(0o644)
    command = [binary, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(folder / "pgbouncer.ini")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    pytest.fail(f"pgbouncer did not start: {out}")
                time.sleep(0.1)
        through = target.set(host=LOOPBACK, port=port)
        yield through.render_as_string(hide_password=False), target.render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()


def test_a_collector_writes_through_a_pooler_that_refuses_options(pooled, caplog):
    through, direct = pooled
    w = np.random.default_rng(3).dirichlet(np.ones(12), size=(40, 2, 2)).astype(np.float32)
    with caplog.at_level(logging.WARNING, "attnmon.store"):
        c = AttentionCollector(through, model="pooled", version="v1", sample_rate=0.5)
        try:
            for _ in range(6):  # past psycopg's prepare threshold (5) on one connection
                c.observe_batch(w, item_ids=np.arange(480).reshape(40, 12))
                assert c.flush(timeout=30), c.stats
        finally:
            c.close()
    assert c.stats.written == 240 and c.stats.dropped == 0
    engine = make_engine(direct)
    wa = t.window_aggregates
    with engine.connect() as conn:
        per_series = conn.execute(select(func.sum(wa.c.n)).where(wa.c.model == "pooled")
                                  .group_by(wa.c.cohort, wa.c.layer, wa.c.head)).scalars().all()
    engine.dispose()
    assert per_series and set(per_series) == {240}  # every series has every request
    told = [r.getMessage() for r in caplog.records if "refused the 'options'" in r.getMessage()]
    assert len(told) == 1 and "statement_timeout" in told[0]


def test_the_limits_hold_per_transaction_and_do_not_pass_to_the_next_client(pooled):
    through, _ = pooled
    limited = make_engine(through, statement_timeout_s=1.5, lock_timeout_s=0.5, through_pooler=True)
    plain = make_engine(through)  # no limits: PgBouncer's one server connection, next
    try:
        for _ in range(2):  # each transaction sets them again
            with limited.begin() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "500ms"
        with plain.begin() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
        with pytest.raises(OperationalError, match="statement timeout"), limited.begin() as conn:
            conn.execute(text("SELECT pg_sleep(5)"))
    finally:
        limited.dispose()
        plain.dispose()


def test_options_of_the_url_itself_refused_by_the_pooler_stay_an_error(pooled):
    through, _ = pooled
    engine = make_engine(make_url(through).update_query_dict({"options": "-csearch_path=public"}),
                         statement_timeout_s=1, through_pooler=True)
    try:
        with pytest.raises(OperationalError, match="unsupported startup parameter"), engine.connect():
            pass
    finally:
        engine.dispose()


def test_the_daemon_does_not_run_behind_a_pooler(pooled):
    """Its leadership holds session advisory locks, which a transaction-mode pooler does
    not keep: two daemons could both lead. Its engine still fails there, as before."""
    from monitor.config import Config
    from monitor.daemon import Daemon

    through, _ = pooled
    with Daemon(Config(store_url=through)) as daemon, pytest.raises(OperationalError, match="unsupported startup"):
        with daemon.engine.connect():
            pass
