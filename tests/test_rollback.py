"""rollback-check: simulated rollouts give the verdicts a release manager needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from monitor.cli import main
from monitor.demo import DEFECT, Segment, stream
from monitor.rollback import EXIT_CODES, check
from monitor.simulate import Defect
from monitor.sketch import Sketch
from monitor.store import make_engine, migrate


def _store(tmp_path_factory, name, segments):
    path = tmp_path_factory.mktemp(name) / "store.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    end = stream(url, segments, rate=100)
    return url, datetime.fromtimestamp(end, UTC)


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    # the candidate collapses one head (layer 1, head 2) and favours a brand in another
    return _store(tmp_path_factory, "collapsed", [Segment("v1", 60), Segment("v2", 30, DEFECT)])


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    # a harmless update: the same model retrained with another random seed
    return _store(tmp_path_factory, "retrained", [Segment("v1", 60), Segment("v2", 30, model_seed=8)])


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_collapsed_head_means_rollback_and_the_first_reason_names_it(collapsed, capsys):
    url, now = collapsed
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.verdict == "ROLLBACK" and v.exit_code == 4
    first = v.reasons[0]
    assert first.severity == "critical" and first.kind == "collapse"
    assert first.series.startswith("layer 1 head 2")
    assert first.candidate < first.baseline - 0.4 and first.ci[1] < 0
    assert any(r.kind == "attribute" and "brand007" in r.metric for r in v.reasons)
    code, out, _ = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--now", now.isoformat()], capsys)
    assert code == 4 and out.startswith("ROLLBACK") and "layer 1 head 2" in out.splitlines()[3]


def test_harmless_retrain_proceeds(retrained, capsys):
    url, now = retrained
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.verdict == "PROCEED", [r.text for r in v.reasons]
    assert not v.same_weights and set(v.head_matching) == {"0", "1"}
    code, out, _ = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--now", now.isoformat()], capsys)
    assert code == 0 and out.startswith("PROCEED")


def test_too_little_traffic_means_watch(tmp_path_factory, capsys):
    url, now = _store(tmp_path_factory, "little", [Segment("v1", 30), Segment("v2", 3, DEFECT)])
    code, out, _ = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--now", now.isoformat()], capsys)
    assert code == 3 and out.startswith("WATCH") and "not enough data yet" in out


def test_missing_versions_are_usage_errors(collapsed, capsys):
    url, now = collapsed
    code, _, err = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--baseline", "v0"], capsys)
    assert code == 2 and "baseline version 'v0'" in err and "does not exist" in err
    code, _, err = run_cli(["rollback-check", "--store", url, "--model", "nope"], capsys)
    assert code == 2 and "no deployments of model 'nope'" in err


def test_json_schema_is_stable(collapsed, capsys):
    url, now = collapsed
    code, out, _ = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--now", now.isoformat(),
                            "--format", "json"], capsys)
    d = json.loads(out)
    assert code == 4 == d["exit_code"] == EXIT_CODES[d["verdict"]]
    # fields are added, never renamed: schema 1's first fields, then the baseline's choice,
    # the recent window (null when the candidate's data is no longer than it), and the
    # default baseline's share of the traffic before the deploy beside other arms'
    assert set(d) == {"schema_version", "verdict", "exit_code", "model", "candidate", "baseline", "candidate_since",
                      "baseline_window", "same_weights", "predictions", "minutes", "head_matching", "reasons",
                      "baseline_choice", "recent_window", "recent_predictions", "recent_minutes",
                      "baseline_share", "baseline_alternatives"}
    assert d["schema_version"] == 1 and d["recent_window"] is None
    assert set(d["reasons"][0]) == {"severity", "kind", "series", "metric", "baseline", "candidate", "ci", "text",
                                    "window"}
    assert set(d["predictions"]) == set(d["minutes"]) == {"candidate", "baseline"}


def test_same_weights_are_held_to_sampling_noise(tmp_path_factory):
    # one weights_id, but the serving pipeline now favours recent items for one cohort
    url, now = _store(tmp_path_factory, "pipeline", [
        Segment("v1", 60, weights_id="w1"),
        Segment("v1.1", 30, Defect(recency_cohort="ios", recency_bonus=2.0), weights_id="w1"),
    ])
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.same_weights and v.verdict == "ROLLBACK"
    assert any("ios" in r.series or r.kind in ("shift", "position") for r in v.reasons if r.severity == "critical")


def test_explain_a_sampled_request(collapsed, capsys, tmp_path):
    url, _ = collapsed
    from sqlalchemy import select

    from monitor.store import tables

    with make_engine(url).connect() as conn:
        rid = conn.execute(select(tables.attention_events.c.request_id).where(
            tables.attention_events.c.version == "v2")).scalars().first()
    png = tmp_path / "explain.png"
    code, out, _ = run_cli(["explain", "--store", url, "--request-id", rid, "--out", str(png)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"request {rid}: demo-sasrec v2")
    assert sum(line.strip().startswith("layer ") for line in lines) == 2 * 4  # every layer and head
    assert "brand=" in out and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(["explain", "--store", url, "--request-id", "no-such"], capsys)
    assert code == 2 and "no-such" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("ATTNMON_REQUIRE_PEERS"), reason="Debian chromium not installed")
def test_html_report_renders_in_headless_chromium(collapsed, tmp_path, capsys):
    assert CHROMIUM, "chromium is required here (ATTNMON_REQUIRE_PEERS)"
    url, now = collapsed
    report = tmp_path / "report.html"
    code, _, _ = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--now", now.isoformat(),
                          "--format", "html", "--out", str(report)], capsys)
    assert code == 4
    text = report.read_text()
    assert "<div id=\"verdict\">ROLLBACK</div>" in text and "srcdoc=" in text and "data:image/png;base64," in text
    assert "http://" not in text.split("<iframe")[0]  # our part needs nothing from the network
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
         f"--screenshot={shot}", report.as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (900, 1200, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not blank
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert ((r > 180) & (g < 70) & (b < 70)).sum() > 500  # the verdict's red badge


def test_a_layer_that_lost_recency_is_a_rollback_reason():
    """New weights: a layer's share on the last 5 items falling 7 points or more is
    critical (SASRec with its training order lost: 8 to 9; another seed: up to 5)."""
    import numpy as np

    from monitor.metrics import ALL_METRICS
    from monitor.rollback import RECENCY_DROP_ROLLBACK, _layer_reasons
    from monitor.sketch import Sketch

    def layer(recency5: float, distance: float) -> Sketch:
        sums = np.zeros(len(ALL_METRICS))
        sums[ALL_METRICS.index("recency5")] = 1000 * recency5
        sums[ALL_METRICS.index("distance")] = 1000 * distance
        return Sketch(n=1000, sums=sums, sumsq=sums ** 2 / 1000, pos=np.linspace(1, 0.1, 50) * 1000)

    base = layer(0.33, 11.4)
    lost = _layer_reasons("1", base, layer(0.33 - RECENCY_DROP_ROLLBACK - 0.02, 15.2), same=False)
    assert [(r.severity, r.metric) for r in lost] == [("critical", "recency5")]
    assert "layer 1 lost recency" in lost[0].text and "15.2 items back" in lost[0].text
    assert _layer_reasons("1", base, layer(0.30, 12.0), same=False) == []  # a seed's wobble


def _layer_sketch(n: int, profile) -> Sketch:
    import numpy as np

    from monitor.metrics import ALL_METRICS

    sums = np.zeros(len(ALL_METRICS))
    return Sketch(n=n, sums=sums, sumsq=sums.copy(), pos=np.asarray(profile, dtype=float) * n)


def test_a_retrain_is_not_rolled_back_for_an_attribute_shift_below_its_watch_bar():
    """New weights: an attribute value must move 3 points (and 2.5×) to be worth a WATCH,
    since two seeds moved a small genre 2.6× (+2.9 points). A rare value moving 0.8% →
    2.9% (3.6×, +2.1 points) fell short of that bar, yet was critical: ROLLBACK."""
    import numpy as np

    from monitor.rollback import _layer_reasons
    from monitor.topk import TopK

    def layer(share: float) -> Sketch:
        keys = np.array(["g7"] + [f"g{i}" for i in range(20) if i != 7], dtype=object)
        masses = np.r_[share, np.full(19, (1 - share) / 19)] * 1000
        sk = _layer_sketch(1000, np.linspace(1, 0.1, 50) / np.linspace(1, 0.1, 50).sum())
        sk.attrs = {"genre": TopK.from_counts(keys, masses, 512)}
        return sk

    assert _layer_reasons("1", layer(0.008), layer(0.029), same=False) == []
    # a shift beyond the retrain's bar is still critical; with the same weights, this one is
    assert [r.severity for r in _layer_reasons("1", layer(0.008), layer(0.045), same=False)] == ["critical"]
    assert [r.severity for r in _layer_reasons("1", layer(0.008), layer(0.029), same=True)] == ["critical"]


def test_a_small_cohort_is_not_rolled_back_for_its_sampling_noise():
    """Same weights, 4 cohorts, one with 1% of the users: its 15 predictions moved its
    position profile by JS 0.09-0.30 against itself (10 seeds out of 10 were ROLLBACK)."""
    import numpy as np

    from monitor.rollback import MIN_PREDICTIONS, _cohort_reasons

    flat = np.linspace(1, 0.1, 50) / np.linspace(1, 0.1, 50).sum()
    noisy = np.random.default_rng(1).dirichlet(flat * 15)  # what 15 requests look like
    shifted = np.r_[flat[:5] * 2, flat[5:]] / np.r_[flat[:5] * 2, flat[5:]].sum()
    bs = {("tv", "0", "*"): _layer_sketch(3000, flat), ("web", "0", "*"): _layer_sketch(30000, flat)}
    cs = {("tv", "0", "*"): _layer_sketch(15, noisy), ("web", "0", "*"): _layer_sketch(MIN_PREDICTIONS, shifted)}
    reasons = _cohort_reasons(bs, cs, same=True)
    judged = [r for r in reasons if r.severity != "info"]
    assert [(r.severity, r.series) for r in judged] == [("critical", "layer 0 all heads averaged, cohort web")]
    assert [r.text for r in reasons if r.severity == "info"] == [
        "cohort tv: under 1,000 predictions on one side, so not judged on its own (still counted in the all-cohort figures)"]


def test_the_default_baseline_is_the_version_that_was_serving_not_a_rolled_back_canary(tmp_path_factory, capsys):
    """v2 was a bad canary, rolled back to v1 after 5 minutes; v3 (v1's model) then went out.
    v3 replaced v1: comparing it with v2 (99 predictions) answered WATCH 'not enough data
    yet' for ever, and with a longer canary judged a good version against a bad one."""
    url, now = _store(tmp_path_factory, "canary", [
        Segment("v1", 60), Segment("v2", 5, DEFECT), Segment("v1", 30), Segment("v3", 20)])
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert (v.candidate, v.baseline, v.verdict) == ("v3", "v1", "PROCEED"), [r.text for r in v.reasons]
    # asked for, the canary is still the baseline, and its short window is an error, not a WATCH
    code, _, err = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--baseline", "v2",
                            "--now", now.isoformat()], capsys)
    assert code == 2 and "baseline demo-sasrec v2 has 500 predictions over 5 minutes" in err


def test_the_default_baseline_is_the_version_serving_just_before_even_if_younger(tmp_path_factory):
    """v1 served 60 minutes of the day, v2 the last 30, then v3: v3 replaced v2."""
    url, now = _store(tmp_path_factory, "succession", [Segment("v1", 60), Segment("v2", 30), Segment("v3", 15)])
    assert check(make_engine(url), "demo-sasrec", now=now).baseline == "v2"


def test_a_baseline_without_data_in_its_window_is_an_error_not_watch(tmp_path_factory, capsys):
    """v1's data before v2's deployment is gone (or it never served then): waiting cannot
    fix that, so a pipeline must not be told 'not enough data yet' (exit 3) for ever."""
    path = tmp_path_factory.mktemp("gone") / "store.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    from monitor.demo import START

    stream(url, [Segment("v1", 20)], rate=100)
    end = stream(url, [Segment("v2", 20)], rate=100, start=START + 2 * 86400)
    code, out, err = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec",
                              "--now", datetime.fromtimestamp(end, UTC).isoformat()], capsys)
    assert code == 2 and out == ""
    assert "baseline demo-sasrec v1 has 0 predictions over 0 minutes" in err and "pass --baseline" in err


# --- a canary by cohort: a different cohort mix is no attention change -------------------

MOBILE = ("ios", "android")


def _mix_store(tmp_path_factory, name, *, same_weights: bool, defect: Defect | None = None,
               before: int = 120, after: int = 60, rate: int = 100, relabel: str | None = None):
    """v1 serves every cohort for `before` minutes; then v2 (the same model, with `defect`)
    serves web while v1 keeps ios and android. The mobile apps send only their last 6
    interactions, web whole histories, so the cohorts attend differently by position.
    With `relabel`, v2's web traffic is labelled with that cohort instead."""
    import numpy as np

    from collectors import AttentionCollector
    from monitor.demo import MODEL, START
    from monitor.simulate import SimModel, Traffic, make_catalogue

    path = tmp_path_factory.mktemp(name) / "store.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    rng = np.random.default_rng(7)
    cat = make_catalogue(rng)
    traffic = Traffic(cat, rng)
    clock = [START]
    models = {"v1": SimModel(cat, seed=7), "v2": SimModel(cat, seed=7, defect=defect or Defect())}
    kw = dict(model=MODEL, sample_rate=0.02, weights_id="w1" if same_weights else None,
              clock=lambda: clock[0], flush_interval_s=3600)
    cols = {"v1": AttentionCollector(url, version="v1", seed=7, **kw)}
    for m in range(before + after):
        clock[0] = START + 60 * m
        if m == before:
            cols["v2"] = AttentionCollector(url, version="v2", seed=8, **kw)
        hist, lengths, cohorts = traffic.requests(rate)
        mobile = np.isin(cohorts, MOBILE)
        lengths = np.where(mobile, np.minimum(lengths, 6), lengths)
        hist = np.where(np.arange(hist.shape[1])[None, :] >= (hist.shape[1] - lengths)[:, None], hist, 0)
        served = {"v1": np.ones(rate, bool)} if m < before else {"v1": mobile, "v2": ~mobile}
        for version, rows in served.items():
            h, ln, co = hist[rows], lengths[rows], cohorts[rows]
            if relabel and version == "v2":
                co = np.full(len(ln), relabel, dtype=object)
            cols[version].observe_batch(
                models[version].attention(h, ln, co).astype(np.float32), item_ids=h, lengths=ln,
                cohorts=co.tolist(), attributes={"brand": cat.brand[h], "category": cat.category[h]},
                timestamps=clock[0] + np.sort(rng.uniform(0, 60, len(ln))))
        if m % 30 == 29:
            clock[0] += 60
            for c in cols.values():
                c.flush()
    clock[0] = START + 60 * (before + after + 1)
    for c in cols.values():
        c.close()
    return url, datetime.fromtimestamp(START + 60 * (before + after), UTC)


@pytest.mark.parametrize("same_weights", [True, False], ids=["same-weights", "new-weights"])
def test_a_canary_on_one_cohort_with_the_same_model_is_not_rolled_back(tmp_path_factory, capsys, same_weights):
    """v2 = v1's weights, serving web only while v1 keeps the mobile apps (6-item histories):
    the all-cohort roll-ups differ by the mix alone (the last 5 items' share 71% → 42%,
    position JS 0.32), which was ROLLBACK with 36 critical reasons (same weights) or 4."""
    url, now = _mix_store(tmp_path_factory, "mix", same_weights=same_weights)
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert (v.candidate, v.baseline, v.same_weights) == ("v2", "v1", same_weights)
    assert v.verdict == "PROCEED", [r.text for r in v.reasons]
    info = [r for r in v.reasons if r.severity == "info" and r.kind == "data" and r.series == "cohort mix"]
    assert len(info) == 1, [r.text for r in v.reasons]
    assert "candidate: web 100.0%" in info[0].text and "android, ios served by the baseline only, left out" in info[0].text
    code, out, _ = run_cli(["rollback-check", "--store", url, "--model", "demo-sasrec", "--now", now.isoformat()], capsys)
    assert code == 0 and out.startswith("PROCEED") and "android, ios served by the baseline only" in out
    # the HTML report's figures show what the verdict compared, not the raw roll-ups
    from monitor.report import figures
    from monitor.rollback import _sketches, compared

    engine = make_engine(url)
    bs = _sketches(engine, "demo-sasrec", "v1", *v.baseline_window)
    cs = _sketches(engine, "demo-sasrec", "v2", v.candidate_since, now)
    b, c = compared(bs, cs)

    def last5(sk):
        return sk.position_profile()[:5].sum()

    key = ("*", "1", "*")
    assert abs(last5(bs[key]) - last5(cs[key])) > 0.2  # the mix alone
    assert abs(last5(b[key]) - last5(c[key])) < 0.03
    assert set(figures(engine, v, now)) == {"heads", "positions"}


@pytest.mark.parametrize("same_weights", [True, False], ids=["same-weights", "new-weights"])
def test_a_defect_in_the_canary_cohort_is_still_rolled_back(tmp_path_factory, same_weights):
    """The same cohort-mix canary, but v2 collapses layer 1 head 2: ROLLBACK, for that
    head, and nothing on layer 0 (which the defect does not touch; the mix moved it)."""
    url, now = _mix_store(tmp_path_factory, "mixdefect", same_weights=same_weights,
                          defect=Defect(collapse_head=(1, 2)))
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.verdict == "ROLLBACK"
    first = v.reasons[0]
    assert first.kind == "collapse" and first.series.startswith("layer 1 head 2"), [r.text for r in v.reasons]
    assert first.ci is not None and first.ci[1] < 0
    critical = [r for r in v.reasons if r.severity == "critical"]
    assert not [r.text for r in critical if r.series.startswith("layer 0")]


def test_no_cohort_in_common_is_watch_not_a_comparison_of_different_users(tmp_path_factory):
    """v2 serves only a cohort the baseline never served: nothing to compare it with."""
    url, now = _mix_store(tmp_path_factory, "nocommon", same_weights=True, before=30, after=40, relabel="beta")
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.verdict == "WATCH" and v.predictions["candidate"] >= 1000
    assert [(r.severity, r.series) for r in v.reasons] == [("warning", "cohort mix")]
    assert "cohorts both versions served (none)" in v.reasons[0].text and "beta" in v.reasons[0].text


def test_alerts_on_all_cohort_series_do_not_hold_back_a_canary_by_cohort(tmp_path_factory):
    """The daemon's rules compare the all-cohort roll-ups as they are: run on the canary of
    the test above (v1's weights on web only), they fired RecencyLoss and
    PositionProfileShift on every all-cohort series of v2, and the verdict the README
    promises to be PROCEED was WATCH (exit 3) on those alerts alone. Alerts on a cohort's
    own series still count."""
    from monitor.store import tables

    url, now = _mix_store(tmp_path_factory, "mixalerts", same_weights=True, before=60)
    engine = make_engine(url)

    def alert(rule, cohort, layer, head, severity="warning"):
        labels = {"model": "demo-sasrec", "version": "v2", "cohort": cohort, "layer": layer, "head": head,
                  "baseline_kind": "previous_version", "alertname": rule, "severity": severity}
        return dict(fingerprint=f"{rule}{cohort}{layer}{head}", rule=rule, severity=severity, labels=labels,
                    annotations={}, state="firing", value=0.1, baseline_value=0.2, fired_at=now - timedelta(minutes=40),
                    active_at=now - timedelta(minutes=41), last_eval_at=now)

    with engine.begin() as conn:
        conn.execute(tables.alerts.insert(), [alert("RecencyLoss", "*", layer, head)
                                              for layer in "01" for head in "0123*"]
                     + [alert("PositionProfileShift", "*", "1", "*")])
    v = check(engine, "demo-sasrec", now=now)
    assert v.verdict == "PROCEED", [r.text for r in v.reasons]
    noted = [r for r in v.reasons if r.kind == "alerts"]
    assert {r.severity for r in noted} == {"info"} and len(noted) == 2
    assert "cohort mix" in noted[0].text
    # an alert on the canary cohort's own series is no artefact of the mix, nor is the
    # collector rejecting the candidate's input (its series labels are all "*")
    with engine.begin() as conn:
        conn.execute(tables.alerts.insert(), [alert("PositionProfileShift", "web", "1", "*")])
    v = check(engine, "demo-sasrec", now=now)
    assert v.verdict == "WATCH" and any(r.kind == "alerts" and r.severity == "warning" for r in v.reasons)
    with engine.begin() as conn:
        conn.execute(tables.alerts.delete().where(tables.alerts.c.fingerprint == "PositionProfileShiftweb1*"))
        rejecting = alert("CollectorRejectingInput", "*", "*", "*")
        rejecting["labels"]["statistic"] = "health.rejected_ratio"
        conn.execute(tables.alerts.insert(), [rejecting])
    v = check(engine, "demo-sasrec", now=now)
    assert v.verdict == "WATCH", [r.text for r in v.reasons]
    assert [r.metric for r in v.reasons if r.severity == "warning"] == ["CollectorRejectingInput"]


def test_reweight_is_the_sketch_of_the_weighted_vectors():
    """Each vector of cohort c counted w_c times: means, histograms, position profiles
    and attribute shares as computed from the vectors directly; an integer weight is
    merging that cohort's sketch that many times."""
    import numpy as np

    from monitor.metrics import ALL_METRICS
    from monitor.rollback import reweight
    from monitor.sketch import build, factorize, merge_all, topk_by_group
    from monitor.topk import TopK

    rng = np.random.default_rng(3)
    R, L, M = 40, 8, len(ALL_METRICS)
    group = np.r_[np.zeros(25, int), np.ones(15, int)]
    values = rng.uniform(0, 1, (R, M))
    attn = rng.dirichlet(np.ones(L), R)
    brands = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), (R, L))
    web, ios = build(group, 2, values, attn, np.full(R, L))
    codes, keys = factorize(brands)
    for sk, tk in zip((web, ios), topk_by_group(group, 2, codes, keys, attn, np.ones((R, L), bool), 16), strict=True):
        sk.attrs["brand"] = tk
    w = {"web": 0.4, "ios": 3.0}
    got = reweight({"web": web, "ios": ios, "tv": web}, w)  # tv has no weight: left out
    vw = np.where(group == 0, w["web"], w["ios"])
    assert got.n == vw.sum()
    np.testing.assert_allclose(got.sums / got.n, (vw[:, None] * values).sum(0) / vw.sum())
    np.testing.assert_allclose(got.sumsq, (vw[:, None] * values ** 2).sum(0))
    np.testing.assert_allclose(got.pos[:L], (vw[:, None] * attn[:, ::-1]).sum(0))
    mass = {k: float((vw[:, None] * attn * (brands == k)).sum()) for k in "abcd"}
    shares = got.attrs["brand"].shares()
    assert shares == pytest.approx({k: m / sum(mass.values()) for k, m in mass.items()})
    twice = merge_all([web, web, ios])
    same = reweight({"web": web, "ios": ios}, {"web": 2, "ios": 1})
    assert same.n == twice.n and (same.hist == twice.hist).all()
    np.testing.assert_allclose(same.sums, twice.sums)
    np.testing.assert_allclose(same.pos, twice.pos)
    assert isinstance(same.attrs["brand"], TopK) and same.attrs["brand"].total == pytest.approx(twice.attrs["brand"].total)


def test_the_stratified_bootstrap_is_centred_on_the_reweighted_difference():
    """Each cohort's minutes resampled on their own, the differences combined at the
    candidate's shares; one stratum of share 1 is bootstrap_diff."""
    import numpy as np

    from monitor.rollback import bootstrap_diff, diff_draws

    rng = np.random.default_rng(0)

    def buckets(mean, k=60, n=30):
        ns = np.full(k, float(n))
        return ns, (ns * (mean + rng.normal(0, 0.02, k)))[:, None]

    # cohort a moved by +0.1, cohort b not at all; the candidate is 90% a
    strata = [(0.9, buckets(0.2), buckets(0.3)), (0.1, buckets(0.8), buckets(0.8))]
    d = diff_draws(strata, np.random.default_rng(1))
    assert d.shape == (400, 1)
    assert np.quantile(d, 0.025) < 0.09 < np.quantile(d, 0.975) and abs(np.median(d) - 0.09) < 0.005
    base, cand = buckets(0.2), buckets(0.2)
    single = diff_draws([(1.0, base, cand)], np.random.default_rng(2))[:, 0]
    assert bootstrap_diff(base, cand, 0, np.random.default_rng(2)) == (
        float(np.quantile(single, 0.025)), float(np.quantile(single, 0.975)))


def test_the_text_output_lists_the_most_severe_reasons_and_counts_the_rest():
    """One cause (a pipeline change with the same weights) can move every head and
    metric: 36 critical lines hid the point. JSON keeps them all."""
    from monitor.rollback import TEXT_REASONS, Reason, Verdict, render_text

    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    reasons = [Reason("critical", "shift", f"layer 0 head {i}", "distance", 1.0, 2.0, None, f"head {i} moved")
               for i in range(TEXT_REASONS + 5)] + [Reason("info", "data", "cohorts", "n", None, None, None, "small")]
    v = Verdict("ROLLBACK", "m", "v2", "v1", t0, (t0, t0), True, {"candidate": 1, "baseline": 1},
                {"candidate": 1, "baseline": 1}, {}, reasons)
    lines = render_text(v).splitlines()
    assert f"  {TEXT_REASONS}. [critical] head {TEXT_REASONS - 1} moved" in lines
    assert lines[-1] == "  ... and 6 more (5 critical, 1 info): --format json or html lists them all"
    assert len(v.to_json()["reasons"]) == TEXT_REASONS + 6


def test_an_info_alert_is_no_reason_to_watch():
    """Rules may have severity info (alerts/rules.py); one that fired for the candidate was
    reported as a warning, and the verdict was WATCH (exit 3) on it alone. Alerts of the
    monitor's own health carry "*" for cohort, layer and head: they are on no layer (the
    reason read "on layer * all heads averaged")."""
    from monitor.rollback import _alert_reasons

    def alert(rule, severity, **labels):
        return {"rule": rule, "severity": severity, "fired_at": datetime(2026, 11, 20, 9, 5, tzinfo=UTC),
                "value": 0.1, "baseline_value": None,
                "labels": {"model": "demo-sasrec", "version": "v2", "cohort": "*", **labels}}

    reasons = _alert_reasons([alert("Heads-up", "info", layer="1", head="*"),
                              alert("CollectorRejectingInput", "warning", layer="*", head="*",
                                    statistic="health.rejected_ratio")], "v2")
    assert [(r.metric, r.severity) for r in reasons] == [("Heads-up", "info"), ("CollectorRejectingInput", "warning")]
    assert reasons[0].text.endswith("on layer 1 all heads averaged")
    assert reasons[1].text.endswith("on all series") and "layer *" not in reasons[1].text


def test_layers_and_heads_only_one_side_has_are_named_not_passed_over(tmp_path):
    """A candidate with a third layer and a third head per layer (new weights): what has
    no counterpart is not judged, and an info reason says so instead of nothing."""
    import numpy as np

    from collectors import AttentionCollector

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    t0 = 1_800_000_000.0
    rng = np.random.default_rng(3)
    for version, first, minutes, shape in (("v1", 0, 60, (2, 2)), ("v2", 60, 30, (3, 3))):
        with AttentionCollector(url, model="m", version=version, weights_id=version, sample_rate=0,
                                clock=lambda first=first: t0 + 60 * first) as c:  # deployed then
            for minute in range(first, first + minutes):
                w = rng.dirichlet(np.ones(20), size=(100, *shape)).astype(np.float32)
                c.observe_batch(w, timestamps=t0 + 60 * minute + 5)
    engine = make_engine(url)
    try:
        v = check(engine, "m", "v2", "v1", now=datetime.fromtimestamp(t0 + 90 * 60, UTC))
    finally:
        engine.dispose()
    info = {r.series: r.text for r in v.reasons if r.severity == "info" and r.metric == "heads"}
    assert info == {
        "layer 0": "layer 0: only the candidate has head 2, so not compared",
        "layer 1": "layer 1: only the candidate has head 2, so not compared",
        "layer 2": "layer 2: only the candidate has it, so not compared",
    }, [r.text for r in v.reasons]
    assert v.verdict == "PROCEED", [r.text for r in v.reasons]


def test_explain_a_request_id_two_models_sampled_shows_the_newest_and_names_the_other(tmp_path, capsys):
    import numpy as np

    from collectors import AttentionCollector

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    t0 = 1_800_000_000.0
    for i, model in enumerate(("retrieval", "ranking")):  # one request, scored by two models
        with AttentionCollector(url, model=model, version="v1", sample_rate=1.0, clock=lambda: t0) as c:
            c.observe_batch(np.full((1, 2, 5), 0.2, dtype=np.float32), request_ids=["r1"], timestamps=t0 + i)
    code, out, err = run_cli(["explain", "--store", url, "--request-id", "r1"], capsys)
    assert code == 0 and out.startswith("request r1: ranking v1")
    assert err == "note: 1 older sampled event carries this request id (retrieval v1 at 2027-01-15 08:00:00 UTC); " \
                  "this is the newest\n"


def _pipeline_store(tmp_path, *, shift_ids: int, after: int) -> tuple[str, datetime]:
    """v1 serves 60 minutes; then v1.1, the same weights (one weights_id) behind a new
    pipeline that feeds the model every item id shifted by `shift_ids` (the ids the
    collector logs are the requested ones)."""
    import numpy as np

    from collectors import AttentionCollector
    from monitor.demo import MODEL, START
    from monitor.simulate import SimModel, Traffic, make_catalogue

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    rng = np.random.default_rng(7)
    cat = make_catalogue(rng)
    traffic, model, clock = Traffic(cat, rng), SimModel(cat, seed=7), [START]
    minute = 0
    for version, minutes, shift in (("v1", 60, 0), ("v1.1", after, shift_ids)):
        with AttentionCollector(url, model=MODEL, version=version, weights_id="w1", sample_rate=0.02,
                                clock=lambda: clock[0], flush_interval_s=3600, seed=7) as c:
            for _ in range(minutes):
                clock[0] = START + 60 * minute
                hist, lengths, cohorts = traffic.requests(100)
                valid = np.arange(hist.shape[1])[None, :] >= (hist.shape[1] - lengths)[:, None]
                fed = np.where(valid, (hist + shift) % len(cat.brand), 0)
                c.observe_batch(model.attention(fed, lengths, cohorts).astype(np.float32), item_ids=hist,
                                lengths=lengths, cohorts=cohorts.tolist(),
                                timestamps=clock[0] + np.sort(rng.uniform(0, 60, len(lengths))))
                minute += 1
    return url, datetime.fromtimestamp(START + 60 * minute, UTC)


def test_same_weights_behind_a_pipeline_that_shifts_item_ids_by_one_is_rolled_back(tmp_path):
    """DESIGN §5's serving bug: the same weights, item ids off by one. It moved every head's
    entropy_norm by -0.23 to -0.44 baseline SDs (95% CIs far from 0), while the same
    weights and pipeline moved no head by more than 0.08 SD (1,000 predictions, 10
    minutes). The bar of half an SD let it through: PROCEED (exit 0)."""
    url, now = _pipeline_store(tmp_path, shift_ids=1, after=30)
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.same_weights and v.verdict == "ROLLBACK", [r.text for r in v.reasons]
    first = v.reasons[0]
    assert first.kind == "shift" and first.metric in ("entropy_norm", "top1"), first.text
    assert "the serving pipeline" in first.text and first.ci is not None and (first.ci[0] > 0 or first.ci[1] < 0)


def test_same_weights_and_pipeline_proceed_ten_minutes_after_the_deploy(tmp_path):
    """The control: the same weights and pipeline, 1,000 predictions over 10 minutes."""
    url, now = _pipeline_store(tmp_path, shift_ids=0, after=10)
    v = check(make_engine(url), "demo-sasrec", now=now)
    assert v.same_weights and v.predictions["candidate"] == 1000 and v.verdict == "PROCEED", [r.text for r in v.reasons]
