"""Inserts that skip or update a row whose key is taken (ON CONFLICT), on the two stores
attnmon runs on, and the one upsert of `daemon_state` its jobs share."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.dml import Insert

from monitor.store import tables as t

INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def insert(bind: Connection | Engine, table, what: str) -> Insert:
    """The dialect's insert of `table`, which takes ON CONFLICT; `what` names the upsert in
    the error on a store of another dialect."""
    make = INSERTS.get(bind.dialect.name)
    if make is None:
        raise NotImplementedError(f"{what} upsert on {bind.dialect.name}")
    return make(table)


def put_state(conn: Connection, key: str, value: str, now: datetime, *, only_forward: bool = False) -> None:
    """Set a `daemon_state` row (`only_forward`: never to a smaller value, as text)."""
    ds = t.daemon_state
    stmt = insert(conn, ds, "daemon_state").values(key=key, value=value, updated_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[ds.c.key],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        where=(ds.c.value < stmt.excluded.value) if only_forward else None,
    ))
