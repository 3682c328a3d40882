"""Batches that could not be written wait here, one file each, replayed in order.

A file is gzip'd JSON (bytes as base64): a spill file is data, never code, so nothing
in it is unpickled or executed. Files are written to a temporary name and renamed, so a
crash leaves either a whole file or none.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from datetime import datetime
from pathlib import Path

from monitor.store.writer import FlushBatch


def _enc(v):
    if isinstance(v, bytes):
        return {"\x00b": base64.b64encode(v).decode("ascii")}
    if isinstance(v, datetime):
        return {"\x00t": v.isoformat()}
    raise TypeError(f"cannot spill {type(v).__name__}")


def _dec(d: dict):
    if "\x00b" in d and len(d) == 1:
        return base64.b64decode(d["\x00b"])
    if "\x00t" in d and len(d) == 1:
        return datetime.fromisoformat(d["\x00t"])
    return d


class SpillDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def put(self, batch: FlushBatch) -> Path:
        name = f"{batch.collector_id}-{batch.batch_seq:012d}.json.gz"
        final = self.path / name
        tmp = self.path / (name + ".tmp")
        data = json.dumps(batch.__dict__, default=_enc).encode("utf-8")
        with gzip.open(tmp, "wb", compresslevel=1) as f:
            f.write(data)
        os.replace(tmp, final)
        return final

    def pending(self, collector_id: str | None = None) -> list[Path]:
        """Spilled files in write order (by collector, then sequence)."""
        pat = f"{collector_id}-*.json.gz" if collector_id else "*.json.gz"
        return sorted(self.path.glob(pat))

    def load(self, path: Path) -> FlushBatch:
        with gzip.open(path, "rb") as f:
            d = json.loads(f.read().decode("utf-8"), object_hook=_dec)
        return FlushBatch(**d)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
