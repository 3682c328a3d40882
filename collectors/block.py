"""Turn queued calls into blocks: left-padded arrays of one (layers, heads) layout (or, for
a batch reduced on the model's device, its labels, keys and codes without the weights).

Runs on the collector's background thread (or, for strict collectors, on the caller's).
Every rejection is a per-request code, so that the valid rows of a batch are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitor import metrics as mx
from monitor.sketch import _key, factorize

# reasons found before the numbers are looked at; codes follow monitor.metrics.REASONS
SHAPE_REASONS = ("shape", "dtype", "length_mismatch", "too_long", "bad_label", "bad_value", "bad_timestamp")
REASON_NAMES = mx.REASONS + SHAPE_REASONS
CODE = {name: i for i, name in enumerate(REASON_NAMES)}
MAX_VALUE_CHARS = 256
MAX_LABEL_CHARS = 200  # monitor.store.tables.LABEL (not imported: it would load SQLAlchemy here)
# Grafana's server expands `$name(...)` anywhere in a panel's SQL, inside a quoted value too:
# one version or cohort holding it would break every panel that lists it
_GRAFANA_MACRO = re.compile(r"\$\w+\(")
DEFAULT_COHORT = "default"
ROLLUP = "*"  # a roll-up's label: a cohort "*" would be read (and counted) with the roll-up
# Epoch seconds a request may carry: 1970 to 2106. Milliseconds (1.8e12 today) and
# nanoseconds fall outside, as do NaN and inf, which no minute can hold.
TS_MAX = float(2**32)


@dataclass
class Block:
    rows: np.ndarray  # index of each request in its call (what strict errors name)
    layout: tuple[int, int] | None  # (layers, heads); None when no row had a usable shape
    weights: np.ndarray | None  # (n, layers, heads, L), left-padded, padding zeroed
    lengths: np.ndarray  # (n,)
    cohorts: np.ndarray  # (n,) object
    ts: np.ndarray  # (n,) epoch seconds
    codes: np.ndarray  # (n,) uint8; 0 = accepted
    item_codes: np.ndarray | None = None  # (n, L) into item_keys; -1 = none
    item_keys: np.ndarray | None = None
    attrs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    request_ids: list | None = None
    reason_names: tuple[str, ...] = REASON_NAMES
    # set by check_block: code of each row's cohort into cohort_keys (-1: None/NaN)
    cohort_codes: np.ndarray | None = None
    cohort_keys: np.ndarray | None = None
    detail: str = ""  # why a call was unreadable (what a strict collector's error says)


def label_problem(x: object) -> str | None:
    """Why `x` cannot be a label (model, version, cohort, attribute name); None if it can."""
    if not isinstance(x, str) or not 0 < len(x) <= MAX_LABEL_CHARS or not x.isprintable():
        return f"must be a printable label of 1–{MAX_LABEL_CHARS} characters"
    if x == ROLLUP:
        return "must not be '*', the label of roll-ups (all cohorts, heads, versions)"
    if _GRAFANA_MACRO.search(x):
        return "must not contain '$' followed by a name and '(' (Grafana reads that as a macro in the dashboards' SQL)"
    return None


def label_ok(x: object) -> bool:
    return label_problem(x) is None


def _layout(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(layers, heads) of one request's weights, or None for an unusable shape."""
    if len(shape) == 1:
        return (1, 1)
    if len(shape) == 2 and shape[0] > 0:
        return (1, shape[0])
    if len(shape) == 3 and shape[0] > 0 and shape[1] > 0:
        return (shape[0], shape[1])
    return None


def _as_float(w: np.ndarray) -> np.ndarray | None:
    if w.dtype.kind == "f":
        return w if w.dtype.itemsize >= 4 else w.astype(np.float32)
    if w.dtype.kind in "iub":
        return w.astype(np.float64)
    return None


def rejected_block(n: int, ts, reason: str, rows=None, detail: str = "") -> Block:
    """`n` requests all rejected for `reason`, before any was read as weights."""
    return Block(
        detail=detail,
        rows=np.arange(n) if rows is None else np.asarray(rows),
        layout=None,
        weights=None,
        lengths=np.zeros(n, dtype=np.int64),
        cohorts=np.full(n, None, dtype=object),
        ts=np.broadcast_to(np.asarray(ts, dtype=np.float64), (n,)).copy(),
        codes=np.full(n, CODE[reason], dtype=np.uint8),
    )


def blocks_from_singles(entries: list, *, max_length: int) -> list[Block]:
    """Group `observe` calls by layout and pack each group left-padded."""
    groups: dict[tuple[int, int], list] = {}
    bad: list = []
    for e in entries:
        w = _as_float(e[1])
        lay = _layout(w.shape) if w is not None else None
        if lay is None:
            bad.append((e, "dtype" if w is None else "shape"))
        else:
            groups.setdefault(lay, []).append((e, w))
    out = [rejected_block(1, e[6], reason, rows=[0]) for e, reason in bad]
    for (ly, h), items in groups.items():
        out.append(_pack_singles(items, ly, h, max_length))
    return out


def _pack_singles(items: list, ly: int, h: int, max_length: int) -> Block:
    n = len(items)
    codes = np.zeros(n, dtype=np.uint8)
    lens = np.array([w.shape[-1] for _, w in items], dtype=np.int64)
    too_long = lens > max_length
    codes[too_long] = CODE["too_long"]
    L = int(lens[~too_long].max()) if (~too_long).any() else 0
    dtype = np.result_type(*[w.dtype for _, w in items])
    W = np.zeros((n, ly, h, L), dtype=dtype)
    has_items = any(e[2] is not None for e, _ in items)
    item_vals = np.full((n, L), None, dtype=object) if has_items else None
    attr_names = sorted({k for e, _ in items if e[4] for k in e[4]})
    attr_vals = {k: np.full((n, L), None, dtype=object) for k in attr_names}
    cohorts = np.empty(n, dtype=object)
    ts = np.empty(n)
    rids = []
    for i, (e, w) in enumerate(items):
        _, _, ids, cohort, attrs, rid, t = e
        cohorts[i] = DEFAULT_COHORT if cohort is None else cohort
        ts[i] = t
        rids.append(rid)
        if codes[i]:
            lens[i] = 0
            continue
        li = int(lens[i])
        if li:
            W[i, :, :, L - li :] = w.reshape(ly, h, li)
        if ids is not None:
            if ids.shape != (li,):
                codes[i] = CODE["length_mismatch"]
            else:
                item_vals[i, L - li :] = ids
        for k, v in (attrs or {}).items():
            if not label_ok(k) or v.shape != (li,):
                codes[i] = CODE["bad_label"] if not label_ok(k) else CODE["length_mismatch"]
            else:
                attr_vals[k][i, L - li :] = v
    block = Block(
        rows=np.zeros(n, dtype=np.int64),
        layout=(ly, h),
        weights=W,
        lengths=lens,
        cohorts=cohorts,
        ts=ts,
        codes=codes,
        request_ids=rids,
    )
    _attach_keys(block, item_vals, attr_vals)
    return block


def block_from_batch(e, *, max_length: int) -> Block:
    _, weights, ids, lengths, cohorts, attrs, rids, ts, padding = e
    B = len(weights) if weights.ndim >= 1 else 1
    ts_ok = np.isscalar(ts) or np.shape(ts) == (B,)
    ts_arr = np.broadcast_to(np.asarray(ts, dtype=np.float64), (B,)).copy() if ts_ok else (
        np.resize(np.asarray(ts, dtype=np.float64), B) if np.size(ts) else np.zeros(B)
    )
    w = _as_float(weights)
    if w is None:
        return rejected_block(B, ts_arr, "dtype")
    lay = _layout(w.shape[1:]) if w.ndim >= 2 else None
    if lay is None or padding not in ("left", "right"):
        return rejected_block(B, ts_arr, "shape")
    ly, h = lay
    L = w.shape[-1]
    W = w.reshape(B, ly, h, L)
    codes = np.zeros(B, dtype=np.uint8)
    if not ts_ok:
        codes[:] = CODE["length_mismatch"]
    if lengths is None:
        lens = np.full(B, L, dtype=np.int64)
    elif lengths.shape != (B,) or lengths.dtype.kind not in "iu":
        lens = np.zeros(B, dtype=np.int64)
        codes[:] = CODE["length_mismatch"]
    else:
        lens = lengths.astype(np.int64)
        out_of_range = (lens < 0) | (lens > L)
        codes[out_of_range & (codes == 0)] = CODE["length_mismatch"]
        lens = np.clip(lens, 0, L)
    if L > max_length:
        codes[codes == 0] = CODE["too_long"]
    if isinstance(cohorts, str) or cohorts is None:
        coh = np.full(B, DEFAULT_COHORT if cohorts is None else cohorts, dtype=object)
    elif len(cohorts) == B:
        coh = np.empty(B, dtype=object)
        coh[:] = cohorts
    else:
        coh = np.full(B, None, dtype=object)
        codes[codes == 0] = CODE["length_mismatch"]
    if rids is not None and len(rids) != B:
        rids = None
        codes[codes == 0] = CODE["length_mismatch"]
    item_vals, attr_vals = _key_values(codes, B, L, ids, attrs)
    if padding == "right":
        W, item_vals, attr_vals = _to_left(W, lens, item_vals, attr_vals)
    block = Block(
        rows=np.arange(B),
        layout=(ly, h),
        weights=W,
        lengths=lens,
        cohorts=coh,
        ts=ts_arr,
        codes=codes,
        request_ids=rids,
    )
    _attach_keys(block, item_vals, attr_vals)
    return block


def _key_values(codes: np.ndarray, B: int, L: int, ids, attrs) -> tuple[np.ndarray | None, dict]:
    """Item ids and attribute values of shape (B, L), as arrays; a wrong shape or label
    rejects every row not rejected yet (their order: ids, then each attribute)."""
    item_vals = None
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (B, L):
            codes[codes == 0] = CODE["length_mismatch"]
        else:
            item_vals = ids
    attr_vals = {}
    for k, v in (attrs or {}).items():
        v = np.asarray(v)
        if not label_ok(k):
            codes[codes == 0] = CODE["bad_label"]
        elif v.shape != (B, L):
            codes[codes == 0] = CODE["length_mismatch"]
        else:
            attr_vals[k] = v
    return item_vals, attr_vals


def block_from_summaries(s, *, max_length: int) -> Block:
    """The block of a batch reduced on the model's device (`collectors.torch.Summaries`):
    no weights (the metrics come with it), and the checks `block_from_batch` and
    `check_block` make that the device could not — shapes, labels, key values — in the
    same order, before the device's own codes (nan, negative, not_normalised)."""
    B, L = len(s.codes), s.length
    codes = np.zeros(B, dtype=np.uint8)
    if L > max_length:
        codes[:] = CODE["too_long"]
    rids = s.request_ids
    if rids is not None and len(rids) != B:
        rids = None
        codes[codes == 0] = CODE["length_mismatch"]
    item_vals, attr_vals = _key_values(codes, B, L, s.item_ids, s.attributes)
    block = Block(
        rows=np.arange(B),
        layout=(s.layers, s.heads),
        weights=None,
        lengths=np.asarray(s.lengths, dtype=np.int64),
        cohorts=s.cohorts,
        ts=np.asarray(s.ts, dtype=np.float64),
        codes=codes,
        request_ids=rids,
    )
    _attach_keys(block, item_vals, attr_vals)
    _check_times(block)
    _check_labels(block)
    fresh = block.codes == 0
    block.codes[fresh] = np.asarray(s.codes)[fresh]
    return block


def _to_left(W, lens, item_vals, attr_vals):
    """Right-padded rows moved so that the last column is the most recent."""
    L = W.shape[-1]
    src = np.arange(L)[None, :] - (L - lens)[:, None]  # source column of each target column
    pad = src < 0
    src = np.where(pad, 0, src)

    def gather(a, fill):
        g = np.take_along_axis(a, src.reshape(src.shape[:1] + (1,) * (a.ndim - 2) + src.shape[1:]), axis=-1)
        g[np.broadcast_to(pad.reshape(pad.shape[:1] + (1,) * (a.ndim - 2) + pad.shape[1:]), g.shape)] = fill
        return g

    W = gather(W, 0)
    if item_vals is not None:
        item_vals = gather(item_vals.astype(object), None)
    attr_vals = {k: gather(v.astype(object), None) for k, v in attr_vals.items()}
    return W, item_vals, attr_vals


def _bad_keys(keys: np.ndarray) -> np.ndarray:
    """Keys that are not plain text we can store verbatim (NUL, too long, not UTF-8)."""
    if keys.dtype.kind == "U":
        fast = _bad_unicode_keys(keys)
        if fast is not None:
            return fast
    bad = np.zeros(len(keys), dtype=bool)
    for j, k in enumerate(keys):
        k = _key(k)
        if len(k) > MAX_VALUE_CHARS or "\x00" in k:
            bad[j] = True
            continue
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            bad[j] = True
    return bad


def _bad_unicode_keys(keys: np.ndarray) -> np.ndarray | None:
    """`_bad_keys` of a numpy str array, on its UTF-32 code points (None: look at each)."""
    flags = _unicode_flags(keys)
    if flags is None:
        return None
    too_long, inner_nul, surrogate = flags
    return too_long | inner_nul | surrogate


def _unicode_flags(keys: np.ndarray):
    """(longer than MAX_VALUE_CHARS, NUL inside, lone surrogate) of each str, or None."""
    w = keys.dtype.itemsize // 4
    if w == 0:
        no = np.zeros(len(keys), dtype=bool)
        return no, no, no
    cp = np.ascontiguousarray(keys).view(np.uint32).reshape(len(keys), w)
    if (cp > 0x10FFFF).any():
        return None
    nonzero = cp != 0
    # a str ends after its last non-NUL code point (numpy drops trailing NULs)
    length = np.where(nonzero.any(axis=1), w - np.argmax(nonzero[:, ::-1], axis=1), 0)
    inner_nul = (~nonzero & (np.arange(w)[None, :] < length[:, None])).any(axis=1)
    surrogate = ((cp >= 0xD800) & (cp <= 0xDFFF)).any(axis=1)  # UTF-8 cannot encode them
    return length > MAX_VALUE_CHARS, inner_nul, surrogate


def _factorize(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`monitor.sketch.factorize`, with the same codes (first appearance order), but keys
    of integer and str arrays left as a numpy array: `str()` of an element (as
    `monitor.sketch._key` does) gives the key, and the collector only makes text of the
    keys that reach a top-K summary."""
    kind = vals.dtype.kind
    if kind in "iu":
        flat = vals.ravel()
        if flat.size and np.can_cast(flat.dtype, np.int64):
            lo, hi = int(flat.min()), int(flat.max())
            if hi - lo < _dense_slots(len(flat)):  # a table over the range: no hashing
                codes, first = _dense_factorize(flat.astype(np.int64, copy=False) - lo, hi - lo + 1)
                return codes.reshape(vals.shape), flat[first]
        codes, uniq = pd.factorize(flat, sort=False, use_na_sentinel=True)
        return codes.astype(np.int64, copy=False).reshape(vals.shape), np.asarray(uniq)
    if kind == "U" and vals.size and vals.dtype.itemsize:
        out = _factorize_unicode(vals.ravel())
        if out is not None:
            return out[0].reshape(vals.shape), out[1]
    return factorize(vals)


# weights of the code points in the hash of a str element (any fixed numbers in [1, 2))
_HASH_W = 1.0 + np.random.default_rng(20261126).random(1024)


def _factorize_unicode(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """pd.factorize of a numpy str array without making a Python str of every element
    (None where pandas' own way must decide: the caller falls back to it).

    Each element becomes one integer: its code points, less each position's minimum,
    packed side by side when they fit in 64 bits (exact: equal integers are equal
    strings), else a hash of them, checked afterwards against the strings themselves.
    """
    w = flat.dtype.itemsize // 4
    flat = np.ascontiguousarray(flat)
    cp = flat.view(np.uint32).reshape(len(flat), w)
    small = _narrowed(cp)
    lo, hi = _column_range(small)
    bits = [int(span).bit_length() for span in (hi - lo).tolist()]
    exact = sum(bits) <= 64
    shift = 0
    if exact:  # (in uint32 where the key fits: half the memory to go through)
        kt = np.uint32 if sum(bits) <= 32 else np.uint64
        key = np.zeros(len(flat), dtype=kt)
        for j in np.flatnonzero(bits).tolist():  # positions that vary
            col = np.subtract(small[:, j], lo[j], dtype=kt)
            if shift:
                col <<= kt(shift)
            key |= col
            shift += bits[j]
    elif w <= len(_HASH_W):
        key = small[:, 0] * _HASH_W[0]  # (no BLAS: a threaded gemv would fight the caller's core)
        for j in range(1, w):
            key += small[:, j] * _HASH_W[j]
    else:
        return None
    if exact and (1 << shift) <= _dense_slots(len(flat)):  # first appearances in a table
        codes, first = _dense_factorize(key, 1 << shift)
    else:
        codes, _ = pd.factorize(key, sort=False)
        first = np.full(int(codes.max()) + 1, len(flat), dtype=np.intp)
        np.minimum.at(first, codes, np.arange(len(flat)))
    uniq = flat[first]
    if not exact and not np.array_equal(uniq[codes].view(np.uint32), cp.reshape(-1)):
        return None  # two strings with one hash
    flags = _unicode_flags(uniq)
    if flags is None or flags[1].any():
        # pandas hashes str as NUL-terminated UTF-8: it lumps "a\x00b" with "a". Leave
        # such arrays (rejected rows) to it, for the same codes. (Lone surrogates, which
        # pandas cannot encode, it lumps with other strings differently from one call to
        # the next: here they stay distinct strings, rejected as bad values.)
        return None
    return codes.astype(np.int64, copy=False), uniq


def _narrowed(cp: np.ndarray) -> np.ndarray:
    """The code points as uint8 when they all fit (Latin-1 text, the common case): a
    quarter of the memory for the passes over columns that follow, which read every row."""
    return cp.astype(np.uint8) if cp.size and int(cp.max()) < 256 else cp


def _dense_slots(n: int) -> int:
    """How many table slots a factorization of n integers may use instead of hashing."""
    return 4 * n + 65536


_FIRST_PREFIX = 8192


def _dense_factorize(key: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """pd.factorize(key, sort=False) of integers in [0, slots), with a table instead of a
    hash: the codes (int64), and where each distinct value first appears, in that order."""
    n = len(key)
    key = key.astype(np.intp, copy=False)  # (ufunc.at and take are fastest on intp)
    first = np.full(slots, n, dtype=np.intp)
    rank = np.full(slots, -1, dtype=np.int64)
    # most values show up early: codes of the values of a prefix, in one pass over all
    # positions; then the positions left without one (values new after the prefix)
    p = min(n, _FIRST_PREFIX)
    head = np.arange(p)
    np.minimum.at(first, key[:p], head)
    # a position whose value first appears there (in order: no sort of the firsts)
    firsts = np.flatnonzero(first.take(key[:p]) == head)
    rank[key.take(firsts)] = np.arange(len(firsts))
    codes = rank.take(key)
    late = np.flatnonzero(codes[p:] < 0) + p
    if len(late):
        lk = key.take(late)
        np.minimum.at(first, lk, late)
        new = np.compress(first.take(lk) == late, late)  # (boolean indexing: slower)
        rank[key.take(new)] = len(firsts) + np.arange(len(new))
        codes[late] = rank.take(lk)
        firsts = np.concatenate([firsts, new])
    return codes, firsts


def _column_range(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a.min(axis=0), a.max(axis=0) of a tall, narrow array, in wide rows (a reduce over
    rows of a few elements is slow)."""
    n, w = a.shape
    m = n - n % 64
    wide = a[:m].reshape(-1, 64 * w)
    lo = wide.min(axis=0).reshape(64, w).min(axis=0) if m else a.min(axis=0)
    hi = wide.max(axis=0).reshape(64, w).max(axis=0) if m else a.max(axis=0)
    if 0 < m < n:
        lo, hi = np.minimum(lo, a[m:].min(axis=0)), np.maximum(hi, a[m:].max(axis=0))
    return lo, hi


def _codes_for(vals: np.ndarray, block: Block) -> tuple[np.ndarray, np.ndarray]:
    codes, keys = _factorize(vals)  # bytes that are not UTF-8 come back with a NUL
    if vals.dtype.kind in "OUS":
        bad = _bad_keys(keys)
        if bad.any():
            L = vals.shape[1]
            valid = np.arange(L)[None, :] >= (L - block.lengths)[:, None]
            rows_bad = (bad[np.where(codes >= 0, codes, 0)] & (codes >= 0) & valid).any(axis=1)
            block.codes[rows_bad & (block.codes == 0)] = CODE["bad_value"]
    return codes, keys


def _attach_keys(block: Block, item_vals, attr_vals: dict) -> None:
    if item_vals is not None:
        block.item_codes, block.item_keys = _codes_for(item_vals, block)
    if attr_vals:
        block.attrs = {k: _codes_for(v, block) for k, v in attr_vals.items()}


def check_block(block: Block, *, tol: float) -> None:
    """Times and labels, then the numbers: set each request's code, zero the padding."""
    _check_times(block)
    _check_labels(block)
    if block.layout is None:
        return
    n, ly, h, L = block.weights.shape
    flat = block.weights.reshape(n * ly * h, L)
    lens = np.repeat(block.lengths, ly * h)
    vcodes = mx.validate(flat, lens, tol=tol).reshape(n, ly * h).max(axis=1)
    fresh = block.codes == 0
    block.codes[fresh] = vcodes[fresh]
    w = block.weights
    if w.dtype in (np.float32, np.float64) and w.flags.c_contiguous and w.flags.writeable:
        # the block owns its weights (the queued copy or a packing of it): zero in place
        _zero_padding_inplace(flat, lens)
    else:
        block.weights = mx.zero_padding(flat, lens).reshape(n, ly, h, L)


def _zero_padding_inplace(flat: np.ndarray, lens: np.ndarray) -> None:
    """What mx.zero_padding returns, written into `flat` itself."""
    L = flat.shape[1]
    short = np.flatnonzero(lens < L)
    if not len(short):
        return
    keep = np.arange(L)[None, :] >= (L - lens[short])[:, None]
    rows = flat[short]
    np.copyto(rows, 0, where=~keep)  # a masked write: padding NaN must not survive
    flat[short] = rows


def _check_times(block: Block) -> None:
    """bad_timestamp for each row (not yet rejected) whose time is not epoch seconds in
    [0, TS_MAX)."""
    block.codes[~time_ok(block.ts) & (block.codes == 0)] = CODE["bad_timestamp"]


def time_ok(ts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (ts >= 0) & (ts < TS_MAX)  # (NaN compares False)


def _check_labels(block: Block) -> None:
    """bad_label for each row (not yet rejected) whose cohort is not a valid label; the
    cohorts' factorization stays on the block for the collector's grouping."""
    fresh = block.codes == 0
    if not fresh.any():
        return
    factorized = _factorize_cohorts(block.cohorts)
    if factorized is None:  # one at a time, as they come
        ok_labels: dict[object, bool] = {}
        for i, c in enumerate(block.cohorts):
            if block.codes[i]:
                continue
            good = ok_labels.get(c)
            if good is None:
                good = ok_labels[c] = label_ok(c)
            if not good:
                block.codes[i] = CODE["bad_label"]
        return
    codes, uniq = factorized
    ok = np.array([label_ok(u) for u in uniq] + [False], dtype=bool)  # [-1]: None/NaN
    block.codes[fresh & ~ok[codes]] = CODE["bad_label"]
    block.cohort_codes, block.cohort_keys = codes, uniq


def _factorize_cohorts(cohorts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Codes of equal cohorts (as a dict would find them), or None where that is not sure:
    pandas compares str as NUL-terminated UTF-8, so "a\x00b" may come out as "a"."""
    try:
        codes, uniq = pd.factorize(cohorts, sort=False, use_na_sentinel=True)
        uniq = np.asarray(uniq, dtype=object)
        some = codes >= 0
        if not (cohorts[some] == uniq[codes[some]]).all():
            return None
    except Exception:  # unhashable, or not comparable
        return None
    return codes.astype(np.int64, copy=False), uniq
