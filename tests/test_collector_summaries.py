"""AttentionCollector.observe_summaries without torch: batches reduced "on the device" by
numpy here, in the shape `collectors.torch.PendingSummaries.resolve()` returns, must
write what observe_batch writes for the same rows. (tests/test_torch_capture.py does it
with real models and the real on-device reduction; it shares `stored` and
`assert_same_store` from here.)
"""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import select

from collectors import AttentionCollector, InvalidAttention
from monitor import metrics as mx
from monitor import sketch as sk
from monitor.store import make_engine, migrate, tables

T0 = 1_800_000_000.0  # a minute boundary


def clock() -> float:
    return T0 + 3600  # every minute written is closed


# --- helpers, shared with test_torch_capture ------------------------------------------------
def stored(url):
    """What collectors wrote to a store: sketches per (minute, cohort, layer, head), merged
    over flushes; events by request id; health counts summed over its rows."""
    engine = make_engine(url)
    with engine.connect() as conn:
        aggs: dict[tuple, sk.Sketch] = {}
        for row in conn.execute(select(tables.window_aggregates)).mappings():
            key = (row["bucket_start"], row["cohort"], row["layer"], row["head"])
            s = sk.Sketch.from_row(row)
            aggs[key] = aggs[key].merge(s) if key in aggs else s
        events = {r["request_id"]: dict(r) for r in conn.execute(select(tables.attention_events)).mappings()}
        health = Counter()
        for r in conn.execute(select(tables.collector_health)).mappings():
            health.update({k: r[k] for k in ("observed", "accepted", "rejected", "dropped")})
            health.update({f"rejected:{k}": v for k, v in r["rejected_by_reason"].items()})
    engine.dispose()
    return aggs, events, health


def assert_same_store(url_a, url_b, *, pos=True):
    """Counts exactly, sums, position profiles and top-K counters to 1e-5, histograms
    exactly, events alike. `pos=False` leaves the position profiles out."""
    aggs_a, events_a, health_a = stored(url_a)
    aggs_b, events_b, health_b = stored(url_b)
    assert health_a == health_b
    assert aggs_a.keys() == aggs_b.keys()
    for key, a in aggs_a.items():
        b = aggs_b[key]
        assert (a.n, a.rejected) == (b.n, b.rejected), key
        np.testing.assert_allclose(a.sums, b.sums, rtol=1e-5, atol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(a.sumsq, b.sumsq, rtol=1e-5, atol=1e-5, err_msg=str(key))
        np.testing.assert_array_equal(a.hist, b.hist, err_msg=str(key))
        if pos:
            np.testing.assert_allclose(a.pos, b.pos, atol=1e-5, err_msg=str(key))
        assert a.attrs.keys() == b.attrs.keys(), key
        for ta, tb in [(a.items, b.items)] + [(a.attrs[k], b.attrs[k]) for k in a.attrs]:
            assert (ta is None) == (tb is None), key
            if ta is not None:  # (key order: first seen, which depends on the flushes)
                assert sorted(ta.keys) == sorted(tb.keys), key
                tb_counts = dict(zip(tb.keys, tb.counts, strict=True))
                np.testing.assert_allclose(ta.counts, [tb_counts[x] for x in ta.keys], atol=1e-5)
                np.testing.assert_allclose(ta.total, tb.total, atol=1e-5)
    assert events_a.keys() == events_b.keys()
    for rid, ea in events_a.items():
        eb = events_b[rid]
        for col in ("cohort", "ts", "n_layers", "n_heads", "length", "item_ids", "attributes"):
            assert ea[col] == eb[col], (rid, col)
        np.testing.assert_allclose(np.frombuffer(ea["weights"], "<f4"), np.frombuffer(eb["weights"], "<f4"),
                                   atol=1e-7)
        for m in ("entropy_norm", "top1", "recency5", "distance", "gini"):
            np.testing.assert_allclose(ea[m], eb[m], rtol=1e-5, atol=1e-6)


def second_store(tmp_path) -> str:
    """A second fresh SQLite store, beside sqlite_url's."""
    url = f"sqlite:///{tmp_path / 'device.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def second_url(tmp_path, sqlite_url):
    return second_store(tmp_path)


# --- summaries made with numpy ----------------------------------------------------------------
class Pending:
    """Stands in for collectors.torch.PendingSummaries: resolve() returns the summaries."""

    def __init__(self, summaries):
        self.summaries, self.size = summaries, len(summaries.codes)
        self.threads: list[str] = []

    def resolve(self):
        self.threads.append(threading.current_thread().name)
        return self.summaries


def reduce(W, lengths, cohorts, ts, *, item_ids=None, attributes=None, request_ids=None, sample=()):
    """What collectors.torch.summarise and PendingSummaries.resolve() give for left-padded
    rows W (B, layers, heads, L), padding zero: metrics per row (the head-mean row last,
    with head_diversity), validation codes, position profiles summed per (minute, cohort)
    over the valid requests, head-mean rows, and the sampled requests' rows."""
    B, ly, h, L = W.shape
    m = len(mx.METRICS)
    mean = W.mean(axis=2)
    values = np.full((B, ly, h + 1, m + 1), np.nan)
    values[:, :, :h, :m] = mx.compute(W.reshape(-1, L), np.repeat(lengths, ly * h)).reshape(B, ly, h, m)
    values[:, :, h, :m] = mx.compute(mean.reshape(-1, L), np.repeat(lengths, ly)).reshape(B, ly, m)
    values[:, :, h, m] = mx.head_diversity(W.reshape(B * ly, h, L), np.repeat(lengths, ly)).reshape(B, ly)
    codes = mx.validate(W.reshape(-1, L), np.repeat(lengths, ly * h)).reshape(B, -1).max(axis=1)
    index: dict = {}
    groups = np.array([index.setdefault((int(t // 60), c), len(index)) for t, c in zip(ts, cohorts, strict=True)])
    rows = np.concatenate([W, mean[:, :, None]], axis=2).astype(np.float64)[..., ::-1][..., : sk.POSITIONS]
    rows = np.where((codes == 0)[:, None, None, None], np.nan_to_num(rows), 0.0)
    pos = np.zeros((len(index),) + rows.shape[1:])
    np.add.at(pos, groups, rows)
    coh = np.empty(B, dtype=object)
    coh[:] = list(cohorts)
    sample = np.asarray(sample, dtype=np.int64)
    return SimpleNamespace(
        layers=ly, heads=h, length=L, values=values, codes=codes.astype(np.uint8),
        lengths=np.asarray(lengths), ts=np.asarray(ts, dtype=np.float64), groups=groups,
        group_keys=list(index), pos=pos, mean_rows=mean.astype(np.float64), item_ids=item_ids,
        attributes=attributes, request_ids=request_ids, sample_index=sample,
        sample_rows=W[sample].astype(np.float64), cohorts=coh,
    )


def traffic(rng, B=60, ly=2, h=3, L=20):
    """Left-padded rows over two minutes and three cohorts (one None: bad_label), two NaN
    rows, a one-hot row, item ids and a brand attribute."""
    lengths = np.r_[L, 1, rng.integers(1, L + 1, B - 2)]
    W = rng.dirichlet(np.ones(L) * 0.3, size=(B, ly, h)).astype(np.float32)
    W[np.broadcast_to((np.arange(L)[None, :] < (L - lengths)[:, None])[:, None, None], W.shape)] = 0
    W /= W.sum(-1, keepdims=True)
    W[4, 1, 2, -1] = np.nan
    W[9] = np.nan
    cohorts = [("web", "app", "tv")[i % 3] for i in range(B)]
    cohorts[7] = None
    ts = T0 + 30 + np.arange(B)  # the minute turns at request 30
    items = rng.integers(1, 300, (B, L))
    brand = np.where(items % 3 == 0, "acme", "other")
    rids = [f"r{i}" for i in range(B)]
    return W, lengths, cohorts, ts, items, brand, rids


def test_observe_summaries_writes_what_observe_batch_writes(sqlite_url, second_url):
    rng = np.random.default_rng(1)
    batches = [traffic(rng) for _ in range(3)]
    kw = dict(model="m", version="v1", sample_rate=1.0, clock=clock)
    pendings = []
    with AttentionCollector(sqlite_url, **kw) as c, AttentionCollector(second_url, **kw) as d:
        for k, (W, lengths, cohorts, ts, items, brand, rids) in enumerate(batches):
            rids = [f"{k}-{r}" for r in rids]
            c.observe_batch(W, item_ids=items, lengths=lengths, cohorts=cohorts,
                            attributes={"brand": brand}, request_ids=rids, timestamps=ts)
            p = Pending(reduce(W, lengths, cohorts, ts, item_ids=items, attributes={"brand": brand},
                               request_ids=rids, sample=np.arange(len(W))))
            d.observe_summaries(p)
            pendings.append(p)
    assert c.stats == d.stats
    assert d.stats.rejected == {"nan": 6, "bad_label": 3} and d.stats.accepted == 3 * 60 - 9
    assert all(p.threads == ["attnmon-collector-m"] for p in pendings)  # not the caller's
    assert_same_store(sqlite_url, second_url)
    assert len(stored(second_url)[1]) == d.stats.accepted


@pytest.mark.parametrize("case", ["too_long", "items_shape", "attr_name", "attr_shape", "rids", "bad_value"])
def test_the_collector_checks_what_the_device_could_not(case, sqlite_url, second_url):
    rng = np.random.default_rng(2)
    W, lengths, cohorts, ts, items, brand, rids = traffic(rng, B=12, L=8)
    attrs = {"brand": brand}
    max_length = 4096
    if case == "too_long":
        max_length = 7
    elif case == "items_shape":
        items = items[:, :5]
    elif case == "attr_name":
        attrs = {"bad\nname": brand}
    elif case == "attr_shape":
        attrs = {"brand": brand[:5]}
    elif case == "rids":
        rids = rids[:3]
    else:
        attrs = {"brand": brand.astype(object)}
        attrs["brand"][2, -1] = "a\x00b"
    kw = dict(model="m", version="v1", sample_rate=0.0, clock=clock, max_length=max_length)
    with AttentionCollector(sqlite_url, **kw) as c, AttentionCollector(second_url, **kw) as d:
        c.observe_batch(W, item_ids=items, lengths=lengths, cohorts=cohorts, attributes=attrs,
                        request_ids=rids, timestamps=ts)
        d.observe_summaries(Pending(reduce(W, lengths, cohorts, ts, item_ids=items, attributes=attrs,
                                           request_ids=rids)))
    assert c.stats == d.stats
    reason = {"too_long": "too_long", "attr_name": "bad_label", "bad_value": "bad_value"}.get(case, "length_mismatch")
    # a batch-wide problem rejects every row, before its other reasons; a bad value, its row
    assert d.stats.rejected[reason] == (1 if case == "bad_value" else 12)
    # the device summed the bad_value request's rows: only its group's position profile
    # differs (see collectors.torch)
    assert_same_store(sqlite_url, second_url, pos=case != "bad_value")


def test_observe_summaries_full_queue_drops_the_newest_and_counts(sqlite_url):
    rng = np.random.default_rng(3)
    c = AttentionCollector(sqlite_url, model="m", version="v1", queue_size=2, clock=clock)
    c._start = lambda: None  # keep the thread from draining: the queue stays full
    pendings = []
    for _ in range(5):
        W, lengths, cohorts, ts, *_ = traffic(rng, B=10)
        pendings.append(Pending(reduce(W, lengths, cohorts, ts)))
        c.observe_summaries(pendings[-1])
    assert len(c._q) == 2 and c.stats.dropped == 30
    assert not any(p.threads for p in pendings)  # nothing resolved on the serving thread
    del c._start
    c.close()
    assert [len(p.threads) for p in pendings] == [1, 1, 0, 0, 0]
    assert c.stats.dropped == 30 and c.stats.observed == 20
    _, _, health = stored(sqlite_url)
    assert health["dropped"] == 30 and health["observed"] == 20


class FailingCopy:
    """A PendingSummaries whose copy failed: resolve() raises."""

    size = 7

    def __init__(self):
        self.threads: list[str] = []

    def resolve(self):
        self.threads.append(threading.current_thread().name)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_failing_resolve_is_counted_and_logged_and_the_thread_goes_on(sqlite_url, caplog):
    rng = np.random.default_rng(4)
    W, lengths, cohorts, ts, *_ = traffic(rng, B=10)
    bad = [FailingCopy(), FailingCopy()]
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, clock=clock) as c:
        c.observe_summaries(bad[0])  # returns: resolve() is the collector thread's
        assert c.flush()
        c.observe_summaries(Pending(reduce(W, lengths, cohorts, ts)))
        c.observe_summaries(bad[1])
        assert c.flush()
        assert c._thread.is_alive()
    assert [f.threads for f in bad] == [["attnmon-collector-m"]] * 2
    accepted = 10 - 3  # two NaN rows, a None cohort
    assert c.stats.dropped == 14 and c.stats.accepted == accepted
    assert "on-device summaries lost (7 requests" in caplog.text and "illegal memory access" in caplog.text
    aggs, _, health = stored(sqlite_url)
    assert health["dropped"] == 14 and health["accepted"] == accepted
    assert sum(s.n for (_, coh, layer, head), s in aggs.items() if (coh, layer, head) == ("*", "0", "*")) == accepted


def test_strict_observe_summaries_resolves_at_once_and_raises(sqlite_url):
    rng = np.random.default_rng(5)
    W, lengths, cohorts, ts, *_ = traffic(rng, B=10)
    p = Pending(reduce(W, lengths, ["web"] * 10, ts))
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, strict=True, clock=clock) as c:
        with pytest.raises(InvalidAttention) as err:
            c.observe_summaries(p)
    assert p.threads == [threading.current_thread().name]
    assert (err.value.reason, err.value.row) == ("nan", 4)
    assert c.stats.accepted == 8 and c.stats.rejected == {"nan": 2}
