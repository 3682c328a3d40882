"""PostgreSQL for the benchmarks: a reachable server, and a schema of our own in it.

Like tests/conftest.py, the bench never touches the database's public schema: it creates
`attnmon_bench_<pid>_<hex>`, migrates it, and drops it (CASCADE) afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url

from monitor.store import make_engine, redact

PG_URL_ENV = "ATTNMON_TEST_PG_URL"
SCHEMA_PREFIX = "attnmon_bench_"


def reachable(url: str | None) -> tuple[bool, str]:
    """(True, server version) or (False, why not)."""
    if not url:
        return False, f"no PostgreSQL: --pg-url not given and {PG_URL_ENV} not set"
    try:
        engine = make_engine(url)
    except Exception as exc:
        return False, f"PostgreSQL URL {redact(url)} unusable: {exc}"
    try:
        with engine.connect() as conn:
            return True, str(conn.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # any failure to connect means "unavailable"
        return False, f"PostgreSQL at {redact(url)} unreachable: {type(exc).__name__}"
    finally:
        engine.dispose()


def schema_url(base_url: str, schema: str) -> str:
    # libpq's `options` sets the search_path of every connection made from this URL
    url = make_url(base_url)
    options = " ".join(filter(None, [url.query.get("options"), f"-csearch_path={schema}"]))
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


@contextmanager
def temp_schema(base_url: str) -> Iterator[str]:
    """A fresh, empty schema as a URL whose connections use it; dropped afterwards."""
    schema = f"{SCHEMA_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schema_url(base_url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
