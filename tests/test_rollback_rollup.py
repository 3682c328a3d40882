"""rollback-check after maintenance rolled the minutes up to hours: the verdict it gave on
the minutes, with the same data counted (DESIGN §4: minute rows older than a few days
become hour rows; §8: bootstrap over buckets)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from monitor import baselines
from monitor.cli import main
from monitor.demo import DEFECT, MODEL, START, Segment, stream
from monitor.rollback import EXIT_CODES, RollbackInputError, check
from monitor.store import make_engine, migrate, tables
from monitor.store.maintenance import maintain

DEPLOYED = datetime.fromtimestamp(START, UTC) + timedelta(minutes=150)  # v2, mid-hour: 10:30
LATE = DEPLOYED + timedelta(days=4)  # the check runs days later; the candidate served 40 minutes


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """v1 serves 08:00 to 10:30, then v2 for 40 minutes: v2 collapses a head (ROLLBACK) or
    is a harmless retrain (PROCEED). Each test rolls up a copy."""
    out = {}
    for name, v2 in [("collapsed", Segment("v2", 40, DEFECT)), ("retrained", Segment("v2", 40, model_seed=8))]:
        path = tmp_path_factory.mktemp(name) / "store.db"
        migrate.upgrade(f"sqlite:///{path}")
        stream(f"sqlite:///{path}", [Segment("v1", 150), v2], rate=100)
        out[name] = path
    return out


def _copy(path, tmp_path) -> str:
    # SQLite's backup, not a file copy: the last writes may still be in the WAL file
    dest = tmp_path / "store.db"
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)
    return f"sqlite:///{dest}"


def _rows(engine, version: str) -> dict[int, int]:
    """Rows of a version by bucket width (60: minutes, 3600: hours)."""
    wa = tables.window_aggregates
    with engine.connect() as conn:
        q = select(wa.c.bucket_seconds, func.count()).where(wa.c.version == version).group_by(wa.c.bucket_seconds)
        return dict(conn.execute(q).all())


def _judged(v) -> list[tuple]:
    return sorted((r.severity, r.kind, r.series, r.metric) for r in v.reasons)


@pytest.mark.parametrize("scenario, verdict", [("collapsed", "ROLLBACK"), ("retrained", "PROCEED")])
@pytest.mark.parametrize("rolled", ["baseline", "both"])
def test_a_rolled_up_baseline_gives_the_verdict_it_gave_on_minutes(streamed, tmp_path, capsys, scenario, verdict,
                                                                 rolled):
    """v1's 150 minutes became 3 hour rows, each counted as one minute: 'baseline v1 has
    15,000 predictions over 3 minutes ... will not fill', exit 2, where the minutes gave
    ROLLBACK or PROCEED. An hour row is one bootstrap bucket but covers its minutes."""
    url = _copy(streamed[scenario], tmp_path)
    engine = make_engine(url)
    before = check(engine, MODEL, now=LATE)
    assert (before.verdict, before.baseline, before.minutes) == (verdict, "v1", {"baseline": 150, "candidate": 40})
    # 'baseline': maintenance ran 3 days after v2's deployment (only v1's rows were old
    # enough); 'both': 4 days after, everything is hours
    maintain(engine, DEPLOYED + timedelta(days=3) if rolled == "baseline" else LATE)
    assert _rows(engine, "v1") == {3600: _rows(engine, "v1")[3600]}
    assert (3600 in _rows(engine, "v2")) == (rolled == "both")

    after = check(engine, MODEL, now=LATE)
    assert (after.verdict, after.baseline, after.predictions) == (verdict, "v1", before.predictions)
    assert _judged(after) == _judged(before)
    # v1 served every minute of 08:00-10:30; v2's hour rows count the minutes they recorded
    # (10:30-10:59 and 11:00-11:09), not the 30 + 60 of the window they span
    assert after.minutes == before.minutes
    if verdict == "ROLLBACK":
        first = after.reasons[0]
        assert first.kind == "collapse" and first.series.startswith("layer 1 head 2") and first.ci[1] < 0
    code = main(["rollback-check", "--store", url, "--model", MODEL, "--now", LATE.isoformat()])
    assert code == EXIT_CODES[verdict] and capsys.readouterr().out.startswith(verdict)


def test_the_replaced_version_is_the_same_once_its_hour_is_rolled_up(tmp_path, monkeypatch):
    """v1 served until 10:01, v2 for 4 minutes, v3 from 10:05: v1 served most in the hour
    before v3. Rolled up, that hour read only the 10:00 hour row (its bucket starts in the
    hour), where v2's 4 minutes beat v1's 1: v2 became the baseline (400 predictions,
    an error) where the minutes gave v1."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    end = stream(url, [Segment("v1", 121), Segment("v2", 4, DEFECT), Segment("v3", 20)], rate=50)
    now = datetime.fromtimestamp(end, UTC) + timedelta(days=4)
    engine = make_engine(url)
    deps = baselines.deployments(engine, MODEL)
    v3 = deps[-1]

    def fresh_replaced() -> str:
        monkeypatch.setattr(baselines, "_REPLACED", {})  # as in a new process: no cached answer
        return baselines.replaced(engine, MODEL, v3["deployed_at"], deps[:-1])["version"]

    assert fresh_replaced() == "v1"
    before = check(engine, MODEL, now=now)
    maintain(engine, now)
    assert set(_rows(engine, "v1")) == set(_rows(engine, "v2")) == {3600}
    assert fresh_replaced() == "v1"
    monkeypatch.setattr(baselines, "_REPLACED", {})
    after = check(engine, MODEL, now=now)
    assert (after.baseline, after.verdict, after.predictions) == ("v1", before.verdict, before.predictions)


def test_the_replaced_version_is_the_one_that_served_in_the_hour_before_though_rolled_up(tmp_path, monkeypatch):
    """v1 served 09:00-09:04, v2 10:00-10:04, v3 from 10:05: in the hour before v3 only v2
    served. Rolled up and weighed by the share of their hour inside 09:05-10:05, v1's
    09:00 row counted 55/60 of its predictions and v2's 10:00 row 5/60 of its own: v1
    became the baseline. The rows' minute masks say when each version served."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    nine = START + 3600
    stream(url, [Segment("v1", 5)], rate=50, start=nine)
    stream(url, [Segment("v2", 5)], rate=50, start=nine + 3600)
    end = stream(url, [Segment("v3", 20)], rate=50, start=nine + 3900)
    engine = make_engine(url)
    deps = baselines.deployments(engine, MODEL)

    def fresh_replaced() -> str:
        monkeypatch.setattr(baselines, "_REPLACED", {})  # as in a new process: no cached answer
        return baselines.replaced(engine, MODEL, deps[-1]["deployed_at"], deps[:-1])["version"]

    assert fresh_replaced() == "v2"
    maintain(engine, datetime.fromtimestamp(end, UTC) + timedelta(days=4))
    assert set(_rows(engine, "v1")) == set(_rows(engine, "v2")) == {3600}
    assert fresh_replaced() == "v2"


@pytest.fixture(scope="module")
def eight_minutes(tmp_path_factory):
    """v1 serves 08:00 to 10:30, v2 8 minutes (1,200 predictions), then v3 40 minutes."""
    path = tmp_path_factory.mktemp("eight") / "store.db"
    migrate.upgrade(f"sqlite:///{path}")
    stream(f"sqlite:///{path}", [Segment("v1", 150), Segment("v2", 8, model_seed=8), Segment("v3", 40)],
           rate=150)
    return path


def test_a_version_that_served_8_minutes_of_a_rolled_up_hour_has_not_enough_data(eight_minutes, tmp_path,
                                                                                  capsys):
    """v2's 8 minutes became part of its 10:00 hour row, which counted as the 30 minutes of
    the hour after its deployment (as candidate) or the 38 before v3's (as baseline): a
    verdict where its minutes gave 'not enough data' (MIN_MINUTES is 10). Now the row
    counts the 8 minutes it recorded, and the outcome is the one the minutes gave."""
    url = _copy(eight_minutes, tmp_path)
    engine = make_engine(url)

    def outcomes():
        # the baseline is v1's 150 minutes; a --recent of 5 days: v2 counts as still serving
        short = check(engine, MODEL, candidate="v2", now=LATE, recent=timedelta(days=5))
        with pytest.raises(RollbackInputError) as info:
            check(engine, MODEL, candidate="v3", baseline="v2", now=LATE)
        with pytest.raises(RollbackInputError) as stopped:  # (the last 30 minutes: it served nothing since 10:38)
            check(engine, MODEL, candidate="v2", now=LATE)
        return short, str(info.value), str(stopped.value)

    before, refused, stopped = outcomes()
    assert (before.verdict, before.baseline) == ("WATCH", "v1")
    assert before.minutes == {"baseline": 150, "candidate": 8} and before.predictions["candidate"] == 1200
    assert [r.kind for r in before.reasons] == ["data"]
    assert "has 1,200 predictions over 8 minutes" in refused
    assert stopped.startswith("demo-sasrec v2 has served nothing since 2026-11-20 10:38 UTC")
    maintain(engine, LATE)
    assert set(_rows(engine, "v2")) == {3600}

    after, refused_after, stopped_after = outcomes()
    assert (after.verdict, after.minutes, after.predictions) == ("WATCH", before.minutes, before.predictions)
    assert [r.text for r in after.reasons] == [r.text for r in before.reasons]
    assert (refused_after, stopped_after) == (refused, stopped)  # its hour row's minutes say when it stopped
    for args, code in [(["--candidate", "v2", "--recent", "5d"], EXIT_CODES["WATCH"]), (["--candidate", "v2"], 2),
                       (["--candidate", "v3", "--baseline", "v2"], 2)]:
        assert main(["rollback-check", "--store", url, "--model", MODEL, "--now", LATE.isoformat(), *args]) == code
    capsys.readouterr()
