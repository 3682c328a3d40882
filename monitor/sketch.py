"""The per (series, minute) sketch: what a collector writes and everything else reads.

A sketch holds, for one series and one time bucket: the count; the sum and sum of
squares of every metric; fixed-edge histograms of every metric; the position profile
(attention mass by distance from the end, up to POSITIONS); and top-K summaries of the
attention mass per item and per attribute value. `merge` is exact for everything but the
top-K summaries, which merge within their documented bound (monitor.topk). Pure numpy.
"""

from __future__ import annotations

import functools
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


def bin_index(values: np.ndarray, metrics: tuple[str, ...] = ALL_METRICS) -> np.ndarray:
    """Histogram bin of each value, per metric column; NaN gets the sentinel BINS.

    The columns of `values` are `metrics` (all of them by default)."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != len(metrics):
        return _bin_index_columns(values, metrics)
    nan = np.isnan(values)
    has_nan = bool(nan.any())
    v = np.where(nan, 0.0, values) if has_nan else values
    # equal-width bins: one multiply instead of a search, over all columns at once (the
    # searched ones are done again below); the same float ops as column by column
    lo, scale, searched = _bin_consts(tuple(metrics))
    if lo.any():
        x = np.subtract(v, lo, dtype=np.float64)
        x *= scale
    else:  # v - 0.0 is v
        x = np.multiply(v, scale, dtype=np.float64)
    # (astype truncates: the bins of (-1, 0) differ from floor's, but clip makes both 0)
    out = x.astype(np.int64)
    np.clip(out, 0, BINS - 1, out=out)
    for j in searched:
        out[:, j] = _distance_bins(v[:, j])
    if has_nan:
        np.copyto(out, BINS, where=nan)
    return out


@functools.lru_cache(maxsize=16)
def _bin_consts(metrics: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    lo = np.array([0.0 if EDGES[m] is _DISTANCE else EDGES[m][0] for m in metrics])
    scale = np.array([
        0.0 if EDGES[m] is _DISTANCE else BINS / (EDGES[m][-1] - EDGES[m][0]) for m in metrics
    ])
    return lo, scale, [j for j, m in enumerate(metrics) if EDGES[m] is _DISTANCE]


def _half_steps(edges: np.ndarray) -> np.ndarray | None:
    """The bin of each floor(2 v) in [0, 2 * last finite edge], when every finite edge is a
    multiple of 0.5 (then v >= edge exactly when floor(2 v) >= 2 * edge); else None."""
    finite = edges[np.isfinite(edges)]
    twice = finite * 2
    if not (twice == np.round(twice)).all() or finite[0] < 0 or twice[-1] > 1 << 16:
        return None
    table = np.searchsorted(edges, np.arange(int(twice[-1]) + 1) / 2, side="right") - 1
    return np.clip(table, 0, BINS - 1)


_DISTANCE_TABLE = _half_steps(_DISTANCE)


def _distance_bins(col: np.ndarray) -> np.ndarray:
    """The searchsorted bins of the distance edges (clipped to [0, BINS)), by a table lookup
    of floor(2 v), several times faster than the binary search. `col` holds no NaN."""
    table = _DISTANCE_TABLE
    if table is None:
        d = np.searchsorted(_DISTANCE, col, side="right") - 1
        return np.clip(d, 0, BINS - 1, out=d)
    t = np.clip(col, 0, (len(table) - 1) / 2)
    t *= 2  # (exact)
    return table.take(t.astype(np.intp))


def _bin_index_columns(values: np.ndarray, metrics=ALL_METRICS) -> np.ndarray:
    out = np.empty(values.shape, dtype=np.int64)
    for j, m in enumerate(metrics):
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
        return {m: float(s) / self.n for m, s in zip(ALL_METRICS, self.sums, strict=True)}

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


def from_parts(payload: bytes, n: int, rejected: int, sums, sumsq) -> Sketch:
    """Sketch.from_row of a row given as its parts: sums and sumsq are the M metrics'
    sum_* and sumsq_* values in ALL_METRICS order."""
    hist, pos, items, attrs = _payload_parts(payload)
    return Sketch(int(n), int(rejected), np.array([float(x) for x in sums]),
                  np.array([float(x) for x in sumsq]), hist.astype(np.int64), pos, items, attrs)


def merge_encoded(rows, first: Sketch | None = None) -> Sketch:
    """merge_all of `first` (if given) and the sketches rows `(payload, n, rejected, sums,
    sumsq)` hold (as from_parts reads them), without building each: the same result, for
    less work."""
    rows = list(rows)
    if first is None and len(rows) <= 1:
        return from_parts(*rows[0]) if rows else Sketch()
    lead = [] if first is None else [first]
    parts = [(s.hist, s.pos, s.items, s.attrs) for s in lead] + [_payload_parts(r[0]) for r in rows]
    items = [p[2] for p in parts if p[2] is not None]
    names = dict.fromkeys(name for p in parts for name in p[3])
    return Sketch(
        sum([*(s.n for s in lead), *(int(r[1]) for r in rows)]),
        sum([*(s.rejected for s in lead), *(int(r[2]) for r in rows)]),
        np.sum(np.array([*(s.sums for s in lead), *([float(x) for x in r[3]] for r in rows)]), axis=0),
        np.sum(np.array([*(s.sumsq for s in lead), *([float(x) for x in r[4]] for r in rows)]), axis=0),
        np.sum([p[0] for p in parts], axis=0).astype(np.int64),
        np.sum([p[1] for p in parts], axis=0),
        merge_many(items) if items else None,
        {n: merge_many([p[3][n] for p in parts if n in p[3]]) for n in names},
    )


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
    hist, pos, items, attrs = _payload_parts(data)
    return Sketch(hist=hist.astype(np.int64), pos=pos, items=items, attrs=attrs)


def _payload_parts(data: bytes) -> tuple[np.ndarray, np.ndarray, TopK | None, dict[str, TopK]]:
    """(hist as a read-only (M, BINS) view, pos, items, attrs) of a payload."""
    return _decoded(_body(data))


def _decoded(body: bytes, header: dict | None = None):
    """_decode_body, its errors as a corrupt payload's."""
    try:
        return _decode_body(body, header)
    except (struct.error, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"corrupt attnmon sketch payload: {e}") from e


def _body(data: bytes) -> bytes:
    """The decompressed body of a payload."""
    data = bytes(data)
    if data[:3] != _MAGIC:
        raise ValueError("not an attnmon sketch payload")
    try:
        z = zlib.decompressobj()
        body = z.decompress(data[3:])
    except zlib.error as e:
        raise ValueError(f"corrupt attnmon sketch payload: {e}") from e
    if not z.eof or z.unused_data:
        raise ValueError("corrupt attnmon sketch payload: truncated or trailing data")
    return body


_HLEN = struct.Struct("<I")
_HIST_BYTES = 8 * M * BINS


def _decode_body(body: bytes, header: dict | None = None) -> tuple[np.ndarray, np.ndarray, TopK | None, dict[str, TopK]]:
    """`header`: the body's header, if already parsed."""
    (hlen,) = _HLEN.unpack_from(body)
    if header is None:
        header = json.loads(body[4 : 4 + hlen].decode("utf-8"))
    off = 4 + hlen
    hist = np.frombuffer(body, "<i8", M * BINS, off).reshape(M, BINS)
    off += _HIST_BYTES
    p = header["p"]
    pos = np.zeros(POSITIONS)
    pos[:p] = np.frombuffer(body, "<f8", p, off)
    off += 8 * p
    items = header["items"]
    if items is not None:
        items, off = _topk(body, items, off)
    attrs = {}
    for name, h in header["attrs"].items():
        attrs[name], off = _topk(body, h, off)
    if off != len(body):
        raise ValueError("corrupt attnmon sketch payload: trailing bytes")
    return hist, pos, items, attrs


def decode_many(payloads) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[TopK | None, dict[str, TopK]]]]:
    """_payload_parts of many payloads at once: (hist (R, M, BINS) int64, pos (R, POSITIONS),
    {row: (items, attrs)} of the rows with top-K summaries). Equal to decoding each.

    A payload without top-K (most: per-head series) is sliced, not decoded: its arrays are
    joined and read with one frombuffer, and its header (a few distinct texts) parsed once.
    """
    hists, poss, topk = [], [], {}
    headers: dict[bytes, dict] = {}  # keyless headers: a handful of distinct texts
    unpack, zero_pos = _HLEN.unpack_from, bytes(8 * POSITIONS)
    for i, data in enumerate(payloads):
        header = None
        try:
            body = _body(data)
            (hlen,) = unpack(body)
            text = body[4 : 4 + hlen]
            header = headers.get(text)
            if header is None:
                header = json.loads(text.decode("utf-8"))
                if header["items"] is None and not header["attrs"]:
                    headers[text] = header
            p, off = header["p"], 4 + hlen + _HIST_BYTES
            fast = header["items"] is None and not header["attrs"] and type(p) is int and 0 <= p <= POSITIONS
        except Exception:  # noqa: BLE001 - the one-at-a-time path raises what it always raised
            fast = False
        if fast and off + 8 * p == len(body):
            hists.append(body[off - _HIST_BYTES : off])
            poss.append(body[off : off + 8 * p] + zero_pos[8 * p :])
            continue
        # top-K (or not well formed): decoded as _payload_parts does, header parsed once
        hist, pos, items, attrs = _payload_parts(data) if header is None else _decoded(body, header)
        hists.append(hist.astype("<i8").tobytes())
        poss.append(pos.astype("<f8").tobytes())
        if items is not None or attrs:
            topk[i] = (items, attrs)
    R = len(hists)
    hist = np.frombuffer(b"".join(hists), "<i8").reshape(R, M, BINS).astype(np.int64)
    pos = np.frombuffer(b"".join(poss), "<f8").reshape(R, POSITIONS).astype(np.float64)
    return hist, pos, topk


def _topk(body: bytes, h: dict, off: int) -> tuple[TopK, int]:
    """The top-K summary header `h` describes, its counts at `off`; and the next offset."""
    keys = np.array(h["keys"], dtype=object)
    n = len(keys)
    counts = np.frombuffer(body, "<f4", n, off).astype(np.float64)
    return TopK(int(h["k"]), keys, counts, float(h["total"])), off + 4 * n


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
    out = []
    for g in range(n_groups):
        # TopK.from_counts on the key codes: only the kept codes become key objects
        m = mass[starts[g] : starts[g + 1]]
        keep = m > 0
        m = m[keep]
        t = TopK._reduced(k_of[starts[g] : starts[g + 1]][keep], m, k, float(m.sum()))
        out.append(TopK(t.k, np.asarray(uniq[t.keys], dtype=object), t.counts, t.total))
    return out


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
