"""A Stacked (many series' sketches) as one payload: what a trailing baseline's hour
partial is stored as (monitor.baselines), so that 24 partials of a thousand series are 24
rows to read and inflate, not 24,000, and their arrays are read with one frombuffer each.

It holds exactly what the per-series payloads (monitor.sketch.encode_payload) and their
rows hold, with the same rounding (top-K counters as float32): decode_stacked(
encode_stacked(s)) equals stack_encoded of those rows. Pure: no I/O.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from monitor.sketch import BINS, POSITIONS, M, _topk_header
from monitor.stacked import Stacked
from monitor.topk import TopK

# the baseline_sketches kind of an hour partial stored so (one row, every series)
HOUR_STACK = "hour_stack"
_MAGIC = b"ASS1"
_HLEN = struct.Struct("<I")


def encode_stacked(st: Stacked) -> bytes:
    """A JSON header (series keys, position length, top-K keys) and the arrays, column by
    column, zlib'd."""
    S = len(st.keys)
    pos = st.pos.reshape(S, POSITIONS)
    # each row's positions up to its last non-zero, as encode_payload trims them (the
    # rest read back as +0.0); the block is as wide as the widest row
    nz = pos != 0
    plen = np.where(nz.any(axis=1), POSITIONS - np.argmax(nz[:, ::-1], axis=1), 0)
    p = int(plen.max()) if S else 0
    kept = np.where(np.arange(p)[None, :] < plen[:, None], pos[:, :p], 0.0)
    topk = {str(i): {"items": _topk_header(items) if items is not None else None,
                     "attrs": {name: _topk_header(tk) for name, tk in attrs.items()}}
            for i, (items, attrs) in sorted(st.topk.items())}
    header = {"keys": [list(k) for k in st.keys], "p": p, "topk": topk}
    parts = [np.asarray(st.n, dtype="<i8").tobytes(), np.asarray(st.rejected, dtype="<i8").tobytes(),
             np.asarray(st.sums, dtype="<f8").tobytes(), np.asarray(st.sumsq, dtype="<f8").tobytes(),
             np.asarray(st.hist, dtype="<i8").tobytes(), kept.astype("<f8").tobytes()]
    for _, (items, attrs) in sorted(st.topk.items()):
        for tk in ([items] if items is not None else []) + list(attrs.values()):
            parts.append(tk.counts.astype("<f4").tobytes())
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _MAGIC + zlib.compress(_HLEN.pack(len(hjson)) + hjson + b"".join(parts), 6)


def is_stacked(data: bytes) -> bool:
    return bytes(data[:4]) == _MAGIC


def decode_stacked(data: bytes) -> Stacked:
    """The Stacked encode_stacked wrote; ValueError if `data` is not one, or is damaged."""
    if not is_stacked(data):
        raise ValueError("not an attnmon stacked sketch payload")
    try:
        z = zlib.decompressobj()
        body = z.decompress(memoryview(data)[4:])
        if not z.eof or z.unused_data:
            raise ValueError("truncated or trailing data")
        return _decode(body)
    except (ValueError, zlib.error, struct.error, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"corrupt attnmon stacked sketch payload: {e}") from e


def _decode(body: bytes) -> Stacked:
    (hlen,) = _HLEN.unpack_from(body)
    header = json.loads(body[4 : 4 + hlen].decode("utf-8"))
    keys = [tuple(k) for k in header["keys"]]
    S, p = len(keys), int(header["p"])
    off = 4 + hlen

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal off
        a = np.frombuffer(body, dtype, count, off)
        off += a.nbytes
        return a

    n, rejected = take("<i8", S).astype(np.int64), take("<i8", S).astype(np.int64)
    sums = take("<f8", S * M).reshape(S, M).astype(np.float64)
    sumsq = take("<f8", S * M).reshape(S, M).astype(np.float64)
    hist = take("<i8", S * M * BINS).reshape(S, M, BINS).astype(np.int64)
    pos = np.zeros((S, POSITIONS))
    pos[:, :p] = take("<f8", S * p).reshape(S, p)
    topk = {}
    for i, h in header["topk"].items():
        if not 0 <= int(i) < S:  # (merging it would fail far from here)
            raise ValueError(f"top-K of series {i}, of {S}")
        items = None if h["items"] is None else _topk(h["items"], take)
        topk[int(i)] = (items, {name: _topk(th, take) for name, th in h["attrs"].items()})
    if off != len(body):
        raise ValueError("trailing bytes")
    return Stacked(keys, n, rejected, sums, sumsq, hist, pos, topk)


def _topk(h: dict, take) -> TopK:
    """As monitor.sketch reads a top-K summary: keys as str objects, counts as float64."""
    keys = np.array(h["keys"], dtype=object)
    counts = take("<f4", len(keys)).astype(np.float64)
    if len(counts) != len(keys):
        raise ValueError("short top-K counts")
    return TopK(int(h["k"]), keys, counts, float(h["total"]))
