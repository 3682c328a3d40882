"""The demo's simulated deploy shows up in the store as the defect it was given."""

from __future__ import annotations

from monitor.demo import MODEL, run_traffic, story
from monitor import Store


def test_defective_v2_changes_the_defect_heads_only(sqlite_url):
    res = run_traffic(sqlite_url, hours_before=0.25, hours_after=0.25, rate=80, progress=False)
    df = Store(sqlite_url).summary(MODEL, by=["version", "layer", "head"]).set_index(["version", "layer", "head"])
    e = df["entropy_norm"]
    assert e[("v2", "1", "2")] < e[("v1", "1", "2")] - 0.3  # the collapsed head
    for layer, head in [("0", "0"), ("0", "1"), ("1", "1"), ("1", "3")]:
        assert abs(e[("v2", layer, head)] - e[("v1", layer, head)]) < 0.05
    text = story(res)
    assert "1/2" in text and "<- changed" in text.split("1/2")[1].splitlines()[0]


def test_harmless_v2_changes_nothing(sqlite_url):
    res = run_traffic(sqlite_url, defect=False, hours_before=0.25, hours_after=0.25, rate=80, progress=False)
    assert "<- changed" not in story(res)
