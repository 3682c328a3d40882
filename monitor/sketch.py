"""The per (series, minute) sketch: what a collector writes and everything else reads.

A sketch holds, for one series and one time bucket: the count; the sum and sum of
squares of every metric; fixed-edge histograms of every metric; the position profile
(attention mass by distance from the end, up to POSITIONS); and top-K summaries of the
attention mass per item and per attribute value. `merge` is exact for everything but the
top-K summaries, which merge within their documented bound (monitor.topk). Pure numpy.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from monitor.metrics import ALL_METRICS
from monitor.topk import TopK, merge_many

POSITIONS = 256
BINS = 20
M = len(ALL_METRICS)

_UNIT = np.linspace(0.0, 1.0, BINS + 1)
# entropy in nats: ln(4096) ~ 8.3 covers the longest accepted history
_ENTROPY = np.linspace(0.0, 8.5, BINS + 1)
# distance from the end, in positions: fine near the end, coarse far back
_DISTANCE = np.array(
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, np.inf]
)
EDGES: dict[str, np.ndarray] = {
    m: (_ENTROPY if m == "entropy" else _DISTANCE if m == "distance" else _UNIT) for m in ALL_METRICS
}


def bin_index(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each value, per metric column; NaN gets the sentinel BINS."""
    out = np.empty(values.shape, dtype=np.int64)
    for j, m in enumerate(ALL_METRICS):
        nan = np.isnan(values[:, j])
        col = np.where(nan, 0.0, values[:, j]) if nan.any() else values[:, j]
        edges = EDGES[m]
        if edges is _DISTANCE:
            b = np.searchsorted(edges, col, side="right") - 1
        else:  # equal-width bins: one multiply instead of a search
            b = np.floor((col - edges[0]) * (BINS / (edges[-1] - edges[0]))).astype(np.int64)
        np.clip(b, 0, BINS - 1, out=b)
        b[nan] = BINS
        out[:, j] = b
    return out


@dataclass
class Sketch:
    n: int = 0
    rejected: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(M))
    sumsq: np.ndarray = field(default_factory=lambda: np.zeros(M))
    hist: np.ndarray = field(default_factory=lambda: np.zeros((M, BINS), dtype=np.int64))
    pos: np.ndarray = field(default_factory=lambda: np.zeros(POSITIONS))
    items: TopK | None = None
    attrs: dict[str, TopK] = field(default_factory=dict)

    def merge(self, other: Sketch) -> Sketch:
        """A new sketch equal to the one built from both inputs' vectors."""
        return merge_all([self, other])

    def means(self) -> dict[str, float]:
        if self.n == 0:
            return {m: float("nan") for m in ALL_METRICS}
        return {m: float(s) / self.n for m, s in zip(ALL_METRICS, self.sums)}

    def position_profile(self) -> np.ndarray:
        """Mean attention mass at each distance from the end (0 = most recent)."""
        return self.pos / self.n if self.n else np.zeros(POSITIONS)

    # --- store rows -------------------------------------------------------------
    def to_row(self) -> dict[str, object]:
        row: dict[str, object] = {"n": int(self.n), "rejected": int(self.rejected)}
        for j, m in enumerate(ALL_METRICS):
            row[f"sum_{m}"] = float(self.sums[j])
            row[f"sumsq_{m}"] = float(self.sumsq[j])
        row["payload"] = encode_payload(self)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Sketch:
        sk = decode_payload(row["payload"])  # type: ignore[arg-type]
        sk.n = int(row["n"])  # type: ignore[arg-type]
        sk.rejected = int(row["rejected"])  # type: ignore[arg-type]
        sk.sums = np.array([float(row[f"sum_{m}"]) for m in ALL_METRICS])  # type: ignore[arg-type]
        sk.sumsq = np.array([float(row[f"sumsq_{m}"]) for m in ALL_METRICS])  # type: ignore[arg-type]
        return sk


def merge_all(sketches) -> Sketch:
    """Merge any number of sketches at once: array sums and one top-K merge per key set."""
    sketches = list(sketches)
    if not sketches:
        return Sketch()
    if len(sketches) == 1:
        s = sketches[0]
        return Sketch(s.n, s.rejected, s.sums.copy(), s.sumsq.copy(), s.hist.copy(), s.pos.copy(),
                      s.items, dict(s.attrs))
    items = [s.items for s in sketches if s.items is not None]
    names = dict.fromkeys(name for s in sketches for name in s.attrs)
    return Sketch(
        sum(s.n for s in sketches),
        sum(s.rejected for s in sketches),
        np.sum([s.sums for s in sketches], axis=0),
        np.sum([s.sumsq for s in sketches], axis=0),
        np.sum([s.hist for s in sketches], axis=0),
        np.sum([s.pos for s in sketches], axis=0),
        merge_many(items) if items else None,
        {n: merge_many([s.attrs[n] for s in sketches if n in s.attrs]) for n in names},
    )


# --- payload: a JSON header (keys, shapes) and raw little-endian arrays, zlib'd --------
_MAGIC = b"AS1"


def _topk_header(tk: TopK) -> dict[str, object]:
    return {"k": tk.k, "total": tk.total, "keys": [str(k) for k in tk.keys]}


def encode_payload(sk: Sketch) -> bytes:
    nz = np.flatnonzero(sk.pos)
    plen = int(nz[-1]) + 1 if len(nz) else 0
    header = {
        "p": plen,
        "items": _topk_header(sk.items) if sk.items is not None else None,
        "attrs": {name: _topk_header(tk) for name, tk in sk.attrs.items()},
    }
    parts = [sk.hist.astype("<i8").tobytes(), sk.pos[:plen].astype("<f8").tobytes()]
    # counters are approximate by design: float32 halves the largest part of the row
    if sk.items is not None:
        parts.append(sk.items.counts.astype("<f4").tobytes())
    for tk in sk.attrs.values():
        parts.append(tk.counts.astype("<f4").tobytes())
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body = struct.pack("<I", len(hjson)) + hjson + b"".join(parts)
    return _MAGIC + zlib.compress(body, 6)


def decode_payload(data: bytes) -> Sketch:
    data = bytes(data)
    if data[:3] != _MAGIC:
        raise ValueError("not an attnmon sketch payload")
    try:
        z = zlib.decompressobj()
        body = z.decompress(data[3:])
        if not z.eof or z.unused_data:
            raise ValueError("corrupt attnmon sketch payload: truncated or trailing data")
        return _decode_body(body)
    except (zlib.error, struct.error, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"corrupt attnmon sketch payload: {e}") from e


def _decode_body(body: bytes) -> Sketch:
    (hlen,) = struct.unpack_from("<I", body)
    header = json.loads(body[4 : 4 + hlen].decode("utf-8"))
    off = 4 + hlen

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal off
        size = np.dtype(dtype).itemsize * count
        arr = np.frombuffer(body, dtype=dtype, count=count, offset=off)
        off += size
        return arr

    hist = take("<i8", M * BINS).reshape(M, BINS).astype(np.int64)
    pos = np.zeros(POSITIONS)
    pos[: header["p"]] = take("<f8", header["p"])

    def topk(h: dict) -> TopK:
        keys = np.array(h["keys"], dtype=object)
        counts = take("<f4", len(keys)).astype(np.float64)
        return TopK(int(h["k"]), keys, counts, float(h["total"]))

    items = topk(header["items"]) if header["items"] is not None else None
    attrs = {name: topk(h) for name, h in header["attrs"].items()}
    if off != len(body):
        raise ValueError("corrupt attnmon sketch payload: trailing bytes")
    return Sketch(hist=hist, pos=pos, items=items, attrs=attrs)


# --- building sketches from a batch of vectors ---------------------------------------
def build(
    group: np.ndarray,
    n_groups: int,
    values: np.ndarray,
    weights: np.ndarray,
    lengths: np.ndarray,
) -> list[Sketch]:
    """One sketch per group from per-vector metrics (R, M) and left-padded weights (R, L).

    `group[i]` in [0, n_groups) names the sketch row i goes to. head_diversity may be
    NaN (per-head series have none): it then adds to neither sums nor histograms.
    """
    R, L = weights.shape
    onehot = sparse.csr_matrix(
        (np.ones(R), (group, np.arange(R))), shape=(n_groups, R)
    )
    counts = np.bincount(group, minlength=n_groups)
    clean = np.nan_to_num(values, nan=0.0)
    sums = onehot @ clean
    sumsq = onehot @ (clean * clean)
    # the last column is distance 0: reverse so that pos[d] is distance d
    rev = weights[:, ::-1][:, :POSITIONS]
    pos = np.zeros((n_groups, POSITIONS))
    pos[:, : rev.shape[1]] = onehot @ rev
    bins = bin_index(values)
    flat = (group[:, None] * M + np.arange(M)[None, :]) * (BINS + 1) + bins
    hist = np.bincount(flat.ravel(), minlength=n_groups * M * (BINS + 1))
    hist = hist.reshape(n_groups, M, BINS + 1)[:, :, :BINS]
    return [
        Sketch(int(counts[g]), 0, sums[g], sumsq[g], hist[g].copy(), pos[g])
        for g in range(n_groups)
    ]


def topk_by_group(
    group: np.ndarray,
    n_groups: int,
    codes: np.ndarray,
    uniq: np.ndarray,
    weights: np.ndarray,
    valid: np.ndarray,
    k: int,
) -> list[TopK]:
    """Attention mass per key, summarised per group.

    `codes` (R, L) index `uniq` (the keys as str) and are aligned with `weights` (R, L);
    only positions where `valid` is True count.
    """
    valid = valid & (codes >= 0)  # -1: no key (None), which must not alias another key
    flat_codes = codes[valid]
    flat_mass = weights[valid].astype(np.float64)
    flat_group = np.broadcast_to(group[:, None], valid.shape)[valid].astype(np.int64)
    U = max(len(uniq), 1)
    pair = flat_group * U + flat_codes
    if n_groups * U <= 4 * len(pair) + 65536:
        # dense: one bincount over every (group, key) cell; no sort
        dense = np.bincount(pair, weights=flat_mass, minlength=n_groups * U)
        upair = np.flatnonzero(dense)
        mass = dense[upair]
    else:  # too many cells: sort the pairs that occur
        upair, inv = np.unique(pair, return_inverse=True)
        mass = np.bincount(inv, weights=flat_mass)
    g_of, k_of = np.divmod(upair, U)
    starts = np.searchsorted(g_of, np.arange(n_groups + 1))
    return [
        TopK.from_counts(uniq[k_of[starts[g] : starts[g + 1]]], mass[starts[g] : starts[g + 1]], k)
        for g in range(n_groups)
    ]


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (same shape) and the unique keys as str objects; None gets -1."""
    # pandas' hash factorize beats a sort for object keys
    codes, uniq = pd.factorize(values.ravel(), sort=False, use_na_sentinel=True)
    keys = np.array([_key(v) for v in uniq], dtype=object)
    return codes.astype(np.int64).reshape(values.shape), keys


def _key(v: object) -> str:
    """A key as text: bytes must be UTF-8; anything else is its str()."""
    if isinstance(v, bytes | bytearray):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return "\x00not UTF-8"  # the NUL makes the collector reject it (bad_value)
    return str(v)
