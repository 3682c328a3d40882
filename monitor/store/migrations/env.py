"""Alembic environment for attnmon. There is no alembic.ini: monitor.store.migrate builds
the configuration and usually hands over an open connection (config.attributes).

No __init__.py lives in this folder: the migrations are data that Alembic loads by
path, not modules of the package.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from monitor.store.migrate import migration_engine
from monitor.store.tables import metadata

config = context.config


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kwargs)


def _run_on(connection: Connection) -> None:
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """`--sql` mode: print the DDL for a URL instead of running it."""
    url = config.get_main_option("sqlalchemy.url")
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("attnmon's alembic env.py needs a connection or sqlalchemy.url")
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
