"""`attnmon demo --store postgresql+psycopg://...`: the same story on PostgreSQL."""

from __future__ import annotations


def test_demo_on_postgres(own_database, tmp_path, capsys):
    from monitor.demo import demo

    assert demo(tmp_path, store_url=own_database.url, progress=False, hours_before=1.5, hours_after=0.5, rate=120) == 0
    out = capsys.readouterr().out
    assert "webhook: FIRING   RetrainEntropyCollapse on demo-sasrec v2" in out
    assert "ROLLBACK: demo-sasrec v2 against v1" in out
    assert "1. [critical] layer 1 head 2: attention collapsed" in out.split("ROLLBACK: demo-sasrec v2 against v1", 1)[1]
    assert "s3cret-pw" not in out  # the store URL is printed without its password
