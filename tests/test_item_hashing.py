"""hash_item_ids: no raw item id reaches the store (raw events, top-K summaries, spill
files, compacted rows), and the hashed top-K is the plain one with its keys hashed.

tests/postgres/test_item_hashing_pg.py runs the store tests here against PostgreSQL
(through the `store_url` fixture); the plain reference runs always go to SQLite."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import zlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from collectors import AttentionCollector, ProcessCollector
from collectors.itemhash import item_hash
from collectors.spill import SpillDir
from monitor import Store
from monitor.baselines import BaselineRef, Baselines
from monitor.cli import main
from monitor.config import EvaluateConfig
from monitor.sketch import decode_payload
from monitor.store import make_engine, tables
from monitor.store.maintenance import as_utc, merge_buckets
from monitor.topk import TopK, merge_many

T0 = 1_780_000_020.0  # a minute boundary, long closed
KEY = "s3cret-key"
# distinctive ids: any of them found anywhere in the store is a leak
IDS = np.array([f"sku-SECRET-{i:03d}" for i in range(40)])
LONE = [f"lone-SECRET-{i}" for i in range(8)]  # the history of a minute's only request


@pytest.fixture
def plain_url(_sqlite_template, tmp_path) -> str:
    """A second SQLite store, for the unhashed reference runs."""
    path = tmp_path / "plain.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


def observe(c, rng, minute0: int = 0) -> None:
    """A minute with one request, then a minute of 200 requests in two cohorts."""
    w = rng.dirichlet(np.ones(8), size=(1, 2, 2)).astype(np.float32)
    c.observe_batch(w, item_ids=[LONE], cohorts="web", timestamps=T0 + 60 * minute0 + 5)
    w = rng.dirichlet(np.ones(12), size=(200, 2, 2)).astype(np.float32)
    ids = IDS[rng.integers(0, len(IDS), (200, 12))]
    cohorts = rng.choice(["web", "app"], 200).tolist()
    c.observe_batch(w, item_ids=ids, cohorts=cohorts, timestamps=T0 + 60 * (minute0 + 1) + 5)


def _texts(value) -> list[bytes]:
    """What a stored value holds, as bytes to search: sketch payloads decompressed."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return [raw, zlib.decompress(raw[3:])] if raw[:3] == b"AS1" else [raw]
    if isinstance(value, dict | list):
        return [json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")]
    return [str(value).encode("utf-8")]


def leaks(url: str, needles) -> set[tuple[str, str]]:
    """(table, column) of every stored value, in every table, that holds one of `needles`."""
    needles = [n.encode("utf-8") for n in needles]
    found = set()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for table in tables.metadata.sorted_tables:
                for row in conn.execute(select(table)).mappings():
                    for col, value in row.items():
                        if any(n in t for t in _texts(value) for n in needles):
                            found.add((table.name, col))
    finally:
        engine.dispose()
    return found


def item_tops(url: str, version: str = "v1") -> dict[tuple[float, str], TopK]:
    """The items' top-K of each (minute, layer): the cohort="*", head="*" rows, merged."""
    wa = tables.window_aggregates
    engine = make_engine(url)
    parts: dict[tuple[float, str], list[TopK]] = {}
    try:
        with engine.connect() as conn:
            q = select(wa.c.bucket_start, wa.c.layer, wa.c.payload).where(
                wa.c.version == version, wa.c.cohort == "*", wa.c.head == "*")
            for start, layer, payload in conn.execute(q):
                items = decode_payload(payload).items
                if items is not None:
                    parts.setdefault((as_utc(start).timestamp(), layer), []).append(items)
    finally:
        engine.dispose()
    return {k: merge_many(v) for k, v in parts.items()}


def assert_hashed_equals_plain(hashed: dict, plain: dict) -> None:
    assert hashed.keys() == plain.keys() and len(plain) == 4  # 2 minutes x 2 layers
    for k, p in plain.items():
        h = hashed[k]
        assert list(h.keys) == [item_hash(KEY.encode(), str(x)) for x in p.keys]
        np.testing.assert_array_equal(h.counts, p.counts)
        assert h.total == p.total and h.k == p.k


def plain_then_hashed(plain_url: str, store_url: str):
    """(url, collector options): the plain store, then the hashed one."""
    return ((plain_url, {}), (store_url, {"hash_item_ids": True, "hash_key": KEY}))


@pytest.mark.parametrize("sample_rate", [0.0, 1.0])
def test_no_raw_item_id_in_any_table_and_the_top_k_is_the_plain_one_hashed(store_url, plain_url, sample_rate):
    for url, opts in plain_then_hashed(plain_url, store_url):
        with AttentionCollector(url, model="m", version="v1", sample_rate=sample_rate, **opts) as c:
            observe(c, np.random.default_rng(3))
    needles = [*IDS, *LONE]
    # the scan finds them where they are stored plain (top-K, and events when sampled)
    assert ("window_aggregates", "payload") in leaks(plain_url, needles)
    assert leaks(store_url, needles) == set()
    # ... and reads this store: it finds the hashes
    events = {("attention_events", "item_ids")} if sample_rate else set()
    assert leaks(store_url, [item_hash(KEY.encode(), LONE[0])]) == {("window_aggregates", "payload")} | events
    hashed, plain = item_tops(store_url), item_tops(plain_url)
    assert_hashed_equals_plain(hashed, plain)
    lone = hashed[(T0, "0")]  # the single request's whole history, hashed
    assert sorted(lone.keys) == sorted(item_hash(KEY.encode(), x) for x in LONE)


def test_two_collectors_with_one_key_compact_into_the_same_hashed_keys(store_url, plain_url):
    for url, opts in plain_then_hashed(plain_url, store_url):
        for seed in (5, 6):  # two collectors (two serving processes), the same minutes
            with AttentionCollector(url, model="m", version="v1", sample_rate=0.5, seed=seed, **opts) as c:
                observe(c, np.random.default_rng(seed))
        engine = make_engine(url)
        try:
            assert merge_buckets(engine, datetime.fromtimestamp(T0 + 3600, UTC)).merged_groups > 0
        finally:
            engine.dispose()
    tops = item_tops(store_url)
    assert_hashed_equals_plain(tops, item_tops(plain_url))
    # one key per item whichever collector saw it: 40 ids, 40 hashes
    assert len(tops[(T0 + 60, "0")].keys) == len(IDS)
    assert leaks(store_url, [*IDS, *LONE]) == set()


@pytest.mark.parametrize("sample_rate", [0.0, 1.0])
def test_the_process_collector_hashes_in_its_worker_before_anything_is_written(store_url, plain_url, sample_rate):
    for url, opts in plain_then_hashed(plain_url, store_url):
        with ProcessCollector(url, model="m", version="v1", sample_rate=sample_rate, **opts) as c:
            observe(c, np.random.default_rng(3))
        assert c.stats.written == 201
    assert leaks(store_url, [*IDS, *LONE]) == set()
    assert ("window_aggregates", "payload") in leaks(store_url, [item_hash(KEY.encode(), LONE[0])])
    assert_hashed_equals_plain(item_tops(store_url), item_tops(plain_url))


def test_the_process_collector_keeps_the_key_it_found_when_the_variable_goes(store_url, monkeypatch):
    # a serving process may drop a secret from its environment once read: the worker,
    # started later, hashes with the key the collector was made with
    monkeypatch.setenv("ATTNMON_HASH_KEY", KEY)
    c = ProcessCollector(store_url, model="m", version="v1", sample_rate=0.0, hash_item_ids=True)
    monkeypatch.delenv("ATTNMON_HASH_KEY")
    with c:
        observe(c, np.random.default_rng(3))
    assert c.stats.written == 201
    lone = item_tops(store_url)[(T0, "0")]
    assert sorted(lone.keys) == sorted(item_hash(KEY.encode(), x) for x in LONE)


def test_spill_files_hold_hashed_ids_and_replay_them(tmp_path):
    from monitor.store import migrate

    db = tmp_path / "late" / "store.db"  # no such folder yet: the store is down
    url = f"sqlite:///{db}"
    spill = tmp_path / "spill"
    c = AttentionCollector(url, model="m", version="v1", sample_rate=1.0, spill_dir=spill,
                           hash_item_ids=True, hash_key=KEY)
    observe(c, np.random.default_rng(3))
    assert c.flush()
    files = list(spill.rglob("*.json.gz"))
    assert files and c.stats.spilled == 201
    texts = []
    for f in files:  # the file as it lies on disk, and the sketch payloads inside it
        texts.append(gzip.decompress(f.read_bytes()).decode("utf-8"))
        texts += [t.decode("utf-8", "replace") for row in SpillDir(spill).load(f).aggregates
                  for t in _texts(row["payload"])]
    assert any(item_hash(KEY.encode(), LONE[0]) in t for t in texts)  # (the scan sees the keys)
    assert not [x for x in [*IDS, *LONE] if any(x in t for t in texts)]
    db.parent.mkdir()
    migrate.upgrade(url)
    c.close()
    assert list(spill.glob("*.json.gz")) == [] and c.stats.written == 201
    assert leaks(url, [*IDS, *LONE]) == set()


def test_hash_item_prints_the_hash_the_collector_stores(sqlite_url, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNMON_HASH_KEY", KEY)
    with AttentionCollector(sqlite_url, model="m", version="v1", sample_rate=0.0, hash_item_ids=True) as c:
        observe(c, np.random.default_rng(3))
    stored = set(item_tops(sqlite_url)[(T0, "0")].keys)
    assert main(["hash-item", LONE[0], LONE[1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [[item_hash(KEY.encode(), x), x] for x in LONE[:2]]
    assert {line.split()[0] for line in lines} <= stored
    assert main(["hash-item", "--format", "json", "42"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"item": "42", "hash": item_hash(KEY.encode(), "42")}]
    # an argument whose bytes are not UTF-8 (os.fsdecode keeps them as surrogates)
    assert main(["hash-item", "ok", "caf\udce9"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "ITEM_ID='caf\\udce9': not UTF-8" in err


def test_hash_item_reads_the_variable_the_config_names_and_says_when_it_is_empty(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNMON_HASH_KEY", raising=False)
    (tmp_path / "attnmon.yaml").write_text("collector: {hash_key_env: MY_KEY}\n")
    monkeypatch.delenv("MY_KEY", raising=False)
    assert main(["hash-item", "x"]) == 2
    err = capsys.readouterr().err
    assert "collector.hash_key_env='MY_KEY'" in err and "empty or unset" in err
    monkeypatch.setenv("MY_KEY", "other")
    assert main(["hash-item", "x"]) == 0
    assert capsys.readouterr().out.split() == [item_hash(b"other", "x"), "x"]


def test_forget_items_removes_the_ids_stored_before_hashing_was_turned_on(store_url):
    # minutes 0-1 written plain, rolled up to their hour, a baseline materialised from them;
    # then hashing turned on for minutes 60-61 (the next hour)
    with AttentionCollector(store_url, model="m", version="v1", sample_rate=1.0) as c:
        observe(c, np.random.default_rng(3))
    engine = make_engine(store_url)
    try:
        rolled = merge_buckets(engine, datetime.fromtimestamp(T0 + 86_400, UTC), target_seconds=3600)
        assert rolled.merged_groups > 0
        hour = datetime.fromtimestamp(T0 - T0 % 3600, UTC)
        Baselines(engine, EvaluateConfig()).get("m", BaselineRef("pinned", "p", "v1", hour, hour + timedelta(hours=1)))
    finally:
        engine.dispose()
    with AttentionCollector(store_url, model="m", version="v1", sample_rate=1.0, hash_item_ids=True,
                            hash_key=KEY) as c:
        observe(c, np.random.default_rng(4), minute0=60)
    needles = [*IDS, *LONE]
    assert {("window_aggregates", "payload"), ("baseline_sketches", "payload"),
            ("attention_events", "item_ids")} <= leaks(store_url, needles)
    summary = Store(store_url).summary("m", by=("version", "layer", "head"))
    hashed_tops = {k: v for k, v in item_tops(store_url).items() if k[0] >= T0 + 3600}
    switched_on = datetime.fromtimestamp(T0 + 3600, UTC).isoformat()

    def forget(*more) -> dict:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["forget-items", "--store", store_url, "--before", switched_on, "--format", "json",
                         *more]) == 0  # (a second --before wins)
        return json.loads(out.getvalue())

    day_before = datetime.fromtimestamp(T0 - 86_400, UTC).isoformat()
    assert forget("--model", "m", "--before", day_before) == {
        "before": day_before, "model": "m", "sketches": 0, "baselines": 0, "results": 0, "events": 0,
        "unreadable": 0}  # nothing starts a day before the first minute
    done = forget()
    assert done["sketches"] >= 2 and done["baselines"] >= 2 and done["events"] == 201
    assert leaks(store_url, needles) == set()
    # what was written hashed keeps its items; every other figure reads as before
    after = item_tops(store_url)
    assert after.keys() == hashed_tops.keys() and len(after) == 4
    for k, tk in hashed_tops.items():
        assert list(after[k].keys) == list(tk.keys) and list(after[k].counts) == list(tk.counts)
    pd.testing.assert_frame_equal(Store(store_url).summary("m", by=("version", "layer", "head")), summary)
    assert forget() == {"before": switched_on, "model": None, "sketches": 0, "baselines": 0, "results": 0,
                        "events": 0, "unreadable": 0}


def test_forget_items_refuses_a_time_in_the_future(store_url, capsys):
    assert main(["forget-items", "--store", store_url, "--before", "now+1h"]) == 2
    assert "--before" in capsys.readouterr().err
