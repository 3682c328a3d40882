"""The demo's simulated deploy shows up in the store as the defect it was given."""

from __future__ import annotations

from monitor import Store
from monitor.demo import MODEL, run_traffic, story


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


def test_demo_tells_the_whole_story(tmp_path, capsys):
    from monitor.demo import demo

    assert demo(tmp_path, progress=False, hours_before=1.5, hours_after=0.5, rate=120) == 0
    out = capsys.readouterr().out
    assert "webhook: FIRING   RetrainEntropyCollapse on demo-sasrec v2" in out
    assert "webhook: FIRING   AttributeLift on demo-sasrec v2: layer 1 all heads" in out  # the promoted brand
    assert "ROLLBACK: demo-sasrec v2 against v1" in out
    verdict = out.split("ROLLBACK: demo-sasrec v2 against v1", 1)[1]
    assert "1. [critical] layer 1 head 2: attention collapsed" in verdict
    assert (tmp_path / "rollback-report.html").read_text().count('<div id="verdict">ROLLBACK</div>') == 1
    assert len(list((tmp_path / "figures").glob("*.png"))) >= 5
    assert len(list((tmp_path / "grafana" / "dashboards").glob("*.json"))) == 5
    assert list((tmp_path / "grafana" / "provisioning").rglob("*.yaml"))


def test_demo_without_defect_pages_nobody_and_proceeds(tmp_path, capsys):
    from monitor.demo import demo

    assert demo(tmp_path, defect=False, progress=False, hours_before=1.5, hours_after=0.5, rate=120) == 0
    out = capsys.readouterr().out
    assert "webhook: FIRING" not in out and "nothing paged" in out
    assert "PROCEED: demo-sasrec v2 against v1" in out


def test_the_served_daemon_goes_on_from_the_demos_clock_not_todays(tmp_path, capsys, monkeypatch):
    """The demo's data is of a fixed day (2026-11-20): a daemon on the real clock began by
    skipping thousands of windows since then, and evaluated empty minutes after them."""
    from datetime import UTC, datetime, timedelta

    import monitor.daemon
    from monitor.demo import START, demo

    seen = {}

    def serve(daemon, stop=None):  # instead of listening on :9464 until Ctrl-C
        seen["now"] = daemon.clock()
        seen["caught_up"] = daemon.evaluate()
        return 0

    monkeypatch.setattr(monitor.daemon, "serve", serve)
    assert demo(tmp_path, serve=True, progress=False, hours_before=0.5, hours_after=0.25, rate=40) == 0
    end = datetime.fromtimestamp(START, UTC) + timedelta(minutes=45)
    assert end <= seen["now"] < end + timedelta(minutes=5)
    assert seen["caught_up"].skipped == 0
    assert "on the demo's clock" in capsys.readouterr().out
