"""The SQL store: tables, engines, and (later) reading and writing.

    >>> from monitor.store import make_engine, require_schema
    >>> engine = make_engine("sqlite:///attnmon.db")   # doctest: +SKIP

Import-light on purpose: the serving side imports monitor.store.writer through this
package, so nothing here may pull in Alembic, pandas or the reader at import time.
Names are resolved on first use (PEP 562). To export a new name (e.g. `Store` from
monitor/store/reader.py, which will import pandas), add it to `_EXPORTS` and `__all__`;
do not import it eagerly here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.store import tables
    from monitor.store.engine import make_engine, redact, require_schema
    from monitor.store.reader import Store

__all__ = ["Store", "tables", "make_engine", "require_schema", "redact"]

# public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "Store": ("monitor.store.reader", "Store"),
    "tables": ("monitor.store.tables", None),
    "make_engine": ("monitor.store.engine", "make_engine"),
    "require_schema": ("monitor.store.engine", "require_schema"),
    "redact": ("monitor.store.engine", "redact"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
