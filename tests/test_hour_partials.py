"""Hour partials stored as one row of every series (monitor.stacked_payload): read back
exactly as the per-series rows of earlier releases read, which are still read, with the
same drift_results; pruned and stripped of item ids like the rest."""

from __future__ import annotations

import json
import struct
import zlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select
from test_evaluate_fast import _same, _sketch

from monitor import baselines as bl
from monitor.config import EvaluateConfig
from monitor.demo import START, Segment, stream
from monitor.evaluate import evaluate_cycle
from monitor.sketch import Sketch, decode_payload, encode_payload
from monitor.stacked import Stacked, stack_encoded
from monitor.stacked_payload import HOUR_STACK, decode_stacked, encode_stacked
from monitor.store import make_engine, migrate
from monitor.store import tables as t
from monitor.store.forget import forget_items

T = lambda minutes: datetime.fromtimestamp(START + 60 * minutes, UTC)  # noqa: E731
CFG = EvaluateConfig(baseline_hours=2, trailing_gap_hours=1, min_samples=50)
MODEL = "demo-sasrec"


def _per_series_rows(sketches: dict) -> dict:
    """What _load_stacked reads of per-series rows: payload, n, rejected, sums, sumsq."""
    return {k: [(encode_payload(s), s.n, s.rejected, [float(x) for x in s.sums], [float(x) for x in s.sumsq])]
            for k, s in sketches.items()}


def test_a_stacked_partial_reads_back_as_its_per_series_rows_do():
    rng = np.random.default_rng(7)
    sketches = {("c", "0", str(h)): _sketch(rng, int(rng.integers(1, 300)), items=h % 3 == 0) for h in range(9)}
    sketches[("c", "0", "5")].attrs = {}  # no top-K at all
    sketches[("c", "0", "6")].pos[:] = 0.0  # nothing at any position
    sketches[("*", "1", "*")] = Sketch()  # empty
    got = decode_stacked(encode_stacked(Stacked.of(sketches)))
    want = stack_encoded(_per_series_rows(sketches))
    assert got.keys == want.keys == list(sketches)
    for a, b in zip(got.sketches().values(), want.sketches().values(), strict=True):
        _same(a, b)
    assert set(got.topk) == set(want.topk)
    empty = decode_stacked(encode_stacked(Stacked.of({})))
    assert empty.keys == [] and empty.hist.shape == (0, *want.hist.shape[1:])


@pytest.mark.parametrize("damage", [lambda p: p[:-5], lambda p: b"ASS1" + p[5:], lambda p: b"AS1" + p[3:]])
def test_a_damaged_stacked_partial_is_an_error_that_says_so(damage):
    payload = encode_stacked(Stacked.of({("c", "0", "0"): _sketch(np.random.default_rng(1), 50)}))
    with pytest.raises(ValueError, match="stacked sketch payload"):
        decode_stacked(damage(payload))


def _with_header(payload: bytes, change) -> bytes:
    """The payload with its JSON header changed by `change` (the rest as it was): damage
    that zlib's checksum cannot see, as a writer's bug would leave."""
    body = zlib.decompress(payload[4:])
    (hlen,) = struct.unpack_from("<I", body)
    header = change(json.loads(body[4 : 4 + hlen]))
    text = json.dumps(header).encode()
    return payload[:4] + zlib.compress(struct.pack("<I", len(text)) + text + body[4 + hlen :])


@pytest.mark.parametrize("change", [
    lambda h: {**h, "topk": {i: {**tk, "attrs": [1]} for i, tk in h["topk"].items()}},  # AttributeError
    # series that are not there
    lambda h: {**h, "topk": {str(int(i) + len(h["keys"])): tk for i, tk in h["topk"].items()}},
    lambda h: {**h, "topk": {str(int(i) - len(h["keys"])): tk for i, tk in h["topk"].items()}},
])
def test_a_stacked_partial_with_a_malformed_header_is_an_error_that_says_so(change):
    payload = encode_stacked(Stacked.of({("c", "0", "0"): _sketch(np.random.default_rng(1), 50),
                                         ("c", "0", "1"): _sketch(np.random.default_rng(2), 50, items=False)}))
    with pytest.raises(ValueError, match="stacked sketch payload"):
        decode_stacked(_with_header(payload, change))


def _results(engine) -> list[tuple]:
    dr = t.drift_results
    cols = [c for c in dr.c if c.name not in ("id", "computed_at")]
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(*cols)))


def _kinds(engine) -> dict[str, int]:
    bs = t.baseline_sketches
    with engine.connect() as conn:
        rows = conn.execute(select(bs.c.kind)).scalars().all()
    return {k: rows.count(k) for k in set(rows)}


def test_partials_stored_per_series_by_an_earlier_release_give_the_same_results(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 250)], rate=20)
    engine = make_engine(url)
    first = evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG))
    assert first.series > 0
    bs = t.baseline_sketches
    with engine.connect() as conn:
        hours = sorted(bl.as_utc(h) for h in conn.execute(select(bs.c.window_start).where(bs.c.kind == HOUR_STACK)).scalars())
    assert len(hours) == 2 and "hour" not in _kinds(engine)  # two hours, a row each
    # what a daemon that finds them stored writes (the one that built them used top-K
    # counters not yet rounded to float32, as before)
    with engine.begin() as conn:
        conn.execute(bs.delete().where(bs.c.kind == "trailing"))
        conn.execute(t.drift_results.delete())
    assert evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG)).written == first.written
    stacked = _results(engine)
    # the same hours as an earlier release stored them: one row per series
    for hour in hours:
        got = bl._load_hours(engine, MODEL, "v1", [hour])[hour]
        bl._store(engine, MODEL, "v1", "hour", bl._iso(hour), hour, hour + timedelta(hours=1), got.sketches())
    with engine.begin() as conn:
        conn.execute(bs.delete().where(bs.c.kind.in_([HOUR_STACK, "trailing"])))
        conn.execute(t.drift_results.delete())
    assert evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG)).written == first.written
    assert _results(engine) == stacked  # every value, baseline value and detail
    assert HOUR_STACK not in _kinds(engine)  # read as they are, not rewritten
    # each hour read so is a step (/livez): a day of them is 24 reads; hours stored in
    # neither form cost no read of their own
    steps = []
    none = hours[0] - timedelta(hours=5)
    got = bl._load_hours(engine, MODEL, "v1", [none, *hours], lambda: steps.append(1))
    assert sorted(got) == hours and len(steps) == 2
    # late data in one of them: rebuilt, stored stacked, the per-series rows gone
    with engine.begin() as conn:
        conn.execute(bs.delete().where(bs.c.kind == "trailing"))
    b = bl.Baselines(engine, CFG)
    b._hour(MODEL, "v1", hours[0], expect=1)
    assert _kinds(engine)[HOUR_STACK] == 1 and _kinds(engine)["hour"] < first.series * 2


def test_stacked_partials_are_pruned_and_forget_their_items(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 130)], rate=20)
    engine = make_engine(url)
    part = bl.Baselines(engine, CFG)._hour(MODEL, "v1", T(0))
    assert any(items is not None for items, _ in part.topk.values())
    done = forget_items(engine, T(200), model=MODEL)
    assert done.baselines == 1 and done.unreadable == 0
    bs = t.baseline_sketches
    with engine.connect() as conn:
        payload = conn.execute(select(bs.c.payload).where(bs.c.kind == HOUR_STACK)).scalar_one()
    left = decode_stacked(payload)
    assert all(items is None for items, _ in left.topk.values())
    assert {i for i, (_, attrs) in left.topk.items() if attrs} == {i for i, (_, attrs) in part.topk.items() if attrs}
    assert np.array_equal(left.hist, part.hist) and left.n.tolist() == part.n.tolist()
    assert forget_items(engine, T(200), model=MODEL).baselines == 0  # nothing left to do
    assert bl.prune(engine, T(60)) == 0
    assert bl.prune(engine, T(61)) == 1 and HOUR_STACK not in _kinds(engine)


def _again(engine, hour_kinds: tuple = ()) -> int:
    """A fresh process's cycle at T(196) with no trailing baseline or results stored (and
    hour 60's rows of these kinds gone): the results it wrote."""
    bs = t.baseline_sketches
    with engine.begin() as conn:
        conn.execute(bs.delete().where(bs.c.kind.in_(hour_kinds), bs.c.window_start == T(60)))
        conn.execute(bs.delete().where(bs.c.kind == "trailing"))
        conn.execute(t.drift_results.delete())
    return evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG)).written


@pytest.mark.parametrize("kind", [HOUR_STACK, "hour"])
def test_a_damaged_stored_partial_is_named_and_built_again(tmp_path, caplog, kind):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 250)], rate=20)
    engine = make_engine(url)
    written = evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG)).written
    # hour 60 merged from its minute rows, hour 120 read as stored: as below
    assert _again(engine, (HOUR_STACK,)) == written
    want = _results(engine)
    bs = t.baseline_sketches
    hour = T(60)
    if kind == "hour":  # as an earlier release stored it
        got = bl._load_hours(engine, MODEL, "v1", [hour])[hour]
        with engine.begin() as conn:
            conn.execute(bs.delete().where(bs.c.kind == HOUR_STACK, bs.c.window_start == hour))
        bl._store(engine, MODEL, "v1", "hour", bl._iso(hour), hour, hour + timedelta(hours=1), got.sketches())
    with engine.begin() as conn:
        row_id, payload = conn.execute(select(bs.c.id, bs.c.payload).where(bs.c.kind == kind, bs.c.window_start == hour)
                                       .order_by(bs.c.id).limit(1)).one()
        conn.execute(bs.update().where(bs.c.id == row_id).values(payload=payload[:-7]))  # cut short
    with caplog.at_level("WARNING", logger="monitor.baselines"):
        assert _again(engine) == written  # it raised ValueError, every cycle
    assert _results(engine) == want
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and bl._iso(hour) in said[0] and "corrupt" in said[0], said
    if kind == HOUR_STACK:
        assert f"row {row_id}" in said[0]
    # stored again, whole: the next process reads it
    with engine.connect() as conn:
        payload = conn.execute(select(bs.c.payload).where(bs.c.kind == HOUR_STACK, bs.c.window_start == hour)).scalar_one()
    assert decode_stacked(payload).n.sum() > 0 and "hour" not in _kinds(engine)


def test_forget_items_holds_one_stacked_partial_at_a_time(tmp_path, monkeypatch):
    from monitor.store import forget

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    rng = np.random.default_rng(5)
    for h in range(3):
        part = Stacked.of({("*", "0", "*"): _sketch(rng, 50), ("c", "0", "1"): _sketch(rng, 50, items=False)})
        bl._store_hour(engine, MODEL, "v1", T(60 * h), part)
    held, chunks = [], forget._chunks

    def counted(*args):
        for conn, rows in chunks(*args):
            held.append(len(rows))
            yield conn, rows

    monkeypatch.setattr(forget, "_chunks", counted)
    done = forget_items(engine, T(600), model=MODEL)  # chunk: 500 rows a transaction
    assert done.baselines == 3 and done.unreadable == 0
    # each is an hour of every series (megabytes): all 500 at once were gigabytes
    assert max(held) == 1


def test_a_damaged_stored_baseline_is_named_and_built_again(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    stream(url, [Segment("v1", 250)], rate=20)
    engine = make_engine(url)
    written = evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG)).written
    bs = t.baseline_sketches
    stored = _kinds(engine)["trailing"]
    with engine.begin() as conn:
        row_id, ref, payload = conn.execute(select(bs.c.id, bs.c.ref, bs.c.payload).where(bs.c.kind == "trailing")
                                            .order_by(bs.c.id).limit(1)).one()
        conn.execute(bs.update().where(bs.c.id == row_id).values(payload=payload[:-7]))  # cut short
        conn.execute(t.drift_results.delete())
    with caplog.at_level("WARNING", logger="monitor.baselines"):
        # it raised ValueError, every cycle until the row was pruned
        assert evaluate_cycle(engine, T(196), CFG, bl.Baselines(engine, CFG)).written == written
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and ref in said[0] and "corrupt" in said[0], said
    with engine.connect() as conn:
        rows = conn.execute(select(bs.c.payload).where(bs.c.kind == "trailing")).scalars().all()
    assert len(rows) == stored and all(decode_payload(p) for p in rows)  # stored again, whole

