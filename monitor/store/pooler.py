"""Connecting through a pooler that refuses the `options` startup parameter.

make_engine sets PostgreSQL's statement and lock timeouts in the `options` startup
parameter. PgBouncer refuses any parameter missing from its `ignore_startup_parameters`
("unsupported startup parameter: options"), and most configurations do not list it, so
collectors behind such a pooler could not connect at all. When the server refuses it,
the engine connects again without `options` and sets the same limits with `SET LOCAL`
at the start of each transaction: session settings would outlive the transaction on a
server connection that a transaction-mode pooler hands to another client next.

Only for limits attnmon adds: `options` that the URL itself gives (a search_path) are
the operator's, and a refusal of them stays an error.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger("attnmon.store")

PER_TRANSACTION = "attnmon.limits_per_transaction"  # in a connection record's info


def refuses_options(exc: BaseException) -> bool:
    """Whether a connect failed because the server (a pooler) refused `options`."""
    text = str(exc)
    return "unsupported startup parameter" in text and "options" in text


def fall_back_without_options(engine: Engine, limits_ms: dict[str, int]) -> None:
    """On `engine` (psycopg 3), connect without `options` once a server has refused it,
    and set `limits_ms` (setting name: milliseconds) per transaction instead."""
    told: list[bool] = []
    refused: list[bool] = []

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: tuple, cparams: dict) -> Any:
        if not refused:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if not refuses_options(exc):
                    raise
                refused.append(True)
        if not told:
            told.append(True)
            log.warning("attnmon store %s: the server refused the 'options' startup parameter (a pooler such "
                        "as PgBouncer); %s set per transaction instead", engine.url.render_as_string(),
                        ", ".join(limits_ms))
        record.info[PER_TRANSACTION] = True
        return dialect.connect(*cargs, **{k: v for k, v in cparams.items() if k != "options"})

    setting = "; ".join(f"SET LOCAL {name} = {int(ms)}" for name, ms in limits_ms.items())

    @event.listens_for(engine, "before_cursor_execute")
    def _limit(conn: Any, cursor: Any, *_: Any) -> None:
        if not conn.info.get(PER_TRANSACTION):
            return
        raw = cursor.connection
        # the first statement of a transaction: psycopg begins it with this SET LOCAL
        if not raw.autocommit and raw.info.transaction_status == raw.info.transaction_status.IDLE:
            raw.execute(setting)
