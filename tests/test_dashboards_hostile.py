"""Labels, cohorts, versions, attribute values and item ids are user data: in Grafana
they must stay data, never SQL and never markup.

The collector accepts any printable label of up to 200 characters, so a model, version
or cohort can be `x' OR 'x'='x` or `<img src=...>`. Grafana interpolates the variables
filled from those values into each panel's SQL text, and renders annotation texts
(sanitised HTML) and panel descriptions (markdown) in the browser.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text

from dashboards.catalog import dashboards
from dashboards.run import context, fetch, resolve_variables
from dashboards.sql import _VARIABLE, expand
from monitor.store import make_engine, migrate

START = 1_790_000_000 // 60 * 60
T = lambda minutes: datetime.fromtimestamp(START + 60 * minutes, UTC)  # noqa: E731
RANGE = (T(0), T(12))

# values that end a quoted literal if a quote is not doubled, and still parse, so that
# an injection shows as rows of another model rather than as a syntax error
MODEL = "m' OR 'x'='x"
V1, V2 = "v1' OR 'x'='x", "v2'); DROP TABLE deployments; --"
COHORT = "c' OR 'x'='x"
MARKUP = "<img src=https://evil.example/p.png>[roll back](https://evil.example)"
OTHER = "benign"


def _traffic(url: str, model: str, version: str, m0: int, m1: int, cohorts: list[str]) -> None:
    from collectors import AttentionCollector

    rng = np.random.default_rng(1)
    clock = [START + 60 * m0]
    with AttentionCollector(url, model=model, version=version, clock=lambda: clock[0],
                            flush_interval_s=3600, sample_rate=0.1) as c:
        for minute in range(m0, m1):
            clock[0] = START + 60 * minute
            w = rng.dirichlet(np.ones(8), size=(20, 2, 2)).astype(np.float32)
            items = np.array([[f"it'em<b>{k}</b>" for k in range(8)]] * 20, dtype=object)
            c.observe_batch(w, item_ids=items, lengths=np.full(20, 8),
                            cohorts=[cohorts[i % len(cohorts)] for i in range(20)],
                            attributes={"brand": np.array([["a'); --", "<i>x</i>"] * 4] * 20, dtype=object)},
                            timestamps=clock[0] + np.linspace(1, 50, 20))
        c.flush()


def load_hostile(url: str) -> None:
    """Two models written by the real collector: one whose labels are hostile, one not."""
    for model, (v1, v2), cohorts in ((MODEL, (V1, V2), [COHORT, MARKUP]), (OTHER, ("o1", "o2"), ["web"])):
        _traffic(url, model, v1, 0, 6, cohorts)
        _traffic(url, model, v2, 6, 12, cohorts)


@pytest.fixture(scope="module")
def hostile_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'store.db'}"
    migrate.upgrade(url)
    load_hostile(url)
    return url


def _legacy(ctx):
    """Grafana 7-9's PostgreSQL datasource passed a single-valued variable through as is
    (quotes not doubled); 10+ doubles them. The dashboards must be safe under both."""
    return replace(ctx, single_value_escaped=False)


def _check_board_isolation(url: str, legacy: bool) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for board in dashboards():
                overrides = {"model": MODEL} if any(v.name == "model" for v in board.variables) else {}
                if board.uid == "attnmon-health":
                    overrides = {"model": [MODEL]}
                values = resolve_variables(conn, board, *RANGE, overrides)
                ctx = context(board, values, *RANGE)
                if legacy:
                    ctx = _legacy(ctx)
                # variable options: only the hostile model's own labels
                for var in board.variables:
                    if var.name == "model":
                        continue
                    sql = expand(var.query, ctx, conn.dialect.name)
                    got = {str(x) for x in fetch(conn, sql).iloc[:, 0]}
                    conn.rollback()
                    assert not got & {"o1", "o2", "web"}, (board.uid, var.name, sql, got)
                queries = [(p.key, q.sql) for p in board.panels for q in p.queries]
                queries += [(a.name, a.sql) for a in board.annotations]
                for key, raw in queries:
                    sql = expand(raw, ctx, conn.dialect.name)
                    df = fetch(conn, sql)  # no syntax error either
                    conn.rollback()
                    seen = {str(v) for c in df.columns if df[c].dtype == object for v in df[c]}
                    assert not any(o in s for s in seen for o in ("o1", "o2", "web")), (board.uid, key, sql)
            assert conn.execute(text("SELECT COUNT(*) FROM deployments")).scalar() == 4
    finally:
        engine.dispose()


@pytest.mark.parametrize("legacy", [False, True], ids=["grafana-10+", "grafana-7-9"])
def test_hostile_labels_stay_data_in_every_query_sqlite(hostile_sqlite: str, legacy: bool) -> None:
    _check_board_isolation(hostile_sqlite, legacy)


def test_every_variable_in_sql_is_quoted_by_sqlstring() -> None:
    """`${v:sqlstring}` quotes and doubles on every Grafana since 7.0, single- or
    multi-valued; a bare `'$v'` relies on the Grafana version's default."""
    for board in dashboards():
        names = {v.name for v in board.variables}
        sqls = [v.query for v in board.variables] + [q.sql for p in board.panels for q in p.queries]
        sqls += [a.sql for a in board.annotations]
        for sql in sqls:
            for m in _VARIABLE.finditer(sql):
                name = m.group(1) or m.group(2) or m.group(4)
                if name in names:
                    assert m.group(0) == "${" + name + ":sqlstring}", (board.uid, m.group(0), sql)


# -- PostgreSQL: the same queries, and the read-only role's settings ---------------------


@pytest.fixture(scope="module")
def hostile_pg(pg_url: str) -> Iterator[str]:
    """A schema of its own in the test database, holding the hostile story."""
    from sqlalchemy.engine import make_url

    schema = f"hostile_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    try:
        migrate.upgrade(url)
        load_hostile(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.parametrize("legacy", [False, True], ids=["grafana-10+", "grafana-7-9"])
def test_hostile_labels_stay_data_in_every_query_postgresql(hostile_pg: str, legacy: bool) -> None:
    _check_board_isolation(hostile_pg, legacy)
# -- markup -----------------------------------------------------------------------------


def test_panel_descriptions_interpolate_no_user_data() -> None:
    """Grafana interpolates variables into a panel's description and renders it as
    markdown (sanitised HTML): a cohort or version would become links and images."""
    for board in dashboards():
        names = {v.name for v in board.variables}
        for p in board.panels:
            used = {m.group(1) or m.group(2) or m.group(4) for m in _VARIABLE.finditer(p.description)}
            assert not used & names, (board.uid, p.key, p.description)


def test_annotation_texts_are_html_escaped(tmp_path) -> None:
    """Grafana renders an annotation's text as (sanitised) HTML: a version or an alert
    summary must arrive as text."""
    from monitor.store import tables

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    labels = {"model": OTHER, "version": MARKUP, "cohort": MARKUP, "layer": "0", "head": "*"}
    with engine.begin() as conn:
        conn.execute(tables.models.insert().values(name=OTHER, created_at=T(0)))
        conn.execute(tables.deployments.insert().values(
            model=OTHER, version=MARKUP, first_seen=T(1), deployed_at=T(1), source="manual",
            weights_id="<i>w</i>"))
        conn.execute(tables.alerts.insert().values(
            fingerprint="f" * 32, rule="R", severity="critical", labels=labels,
            annotations={"summary": f"cohort {MARKUP} & more"}, state="firing", value=1.0,
            baseline_value=0.0, active_at=T(1), fired_at=T(2), resolved_at=None, last_eval_at=T(3),
            last_true_at=T(3)))
    try:
        board = next(b for b in dashboards() if b.uid == "attnmon-overview")
        ctx = context(board, {"model": OTHER}, *RANGE)
        with engine.connect() as conn:
            for ann in board.annotations:
                df = fetch(conn, expand(ann.sql, ctx, "sqlite"))
                assert len(df) == 1, ann.name
                assert "<" not in df["text"][0] and ">" not in df["text"][0], df["text"][0]
                assert "&lt;img src=https://evil.example/p.png&gt;" in df["text"][0] or ann.name.startswith("Alerts")
        from dashboards.annotate import events

        for e in events(engine, T(0)):
            assert "<" not in e.text and ">" not in e.text, e.text
            assert "&lt;img" in e.text
    finally:
        engine.dispose()


def test_readonly_role_pins_standard_conforming_strings(pg_url: str) -> None:
    """Doubled quotes are the only escaping Grafana does; with standard_conforming_strings
    off a backslash escapes the quote (`\\'` + `'`) and the value ends the literal."""
    from dashboards.cli import run_script
    from dashboards.role import readonly_role_sql

    role = f"attnmon_ro_{uuid.uuid4().hex[:8]}"
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            run_script(conn, readonly_role_sql(role, "pw", "public"))
            settings = conn.execute(text(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = :r AND s.setdatabase = 0"), {"r": role}).scalar_one()
        assert "standard_conforming_strings=on" in settings, settings
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        engine.dispose()
