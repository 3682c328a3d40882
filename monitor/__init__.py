"""attnmon's core: metrics, sketches, the store, evaluation and the CLI.

    from monitor import Store
    Store("sqlite:///attnmon.db").summary(model="sasrec", by=["version", "layer", "head"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.store.reader import Store

__all__ = ["Store"]


def __getattr__(name: str) -> Any:
    # lazy: the collector imports monitor.metrics on the serving side without pandas/SQL
    if name == "Store":
        from monitor.store.reader import Store

        return Store
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")
