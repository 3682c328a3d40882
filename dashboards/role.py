"""The read-only role Grafana connects as: `readonly_role.sql`, rendered for Python.

The file is written for psql (`-v role=... -v password=... -v schema=...`); this module
substitutes the same variables the way psql does (`:'v'` a quoted literal, `:"v"` a
quoted identifier), so there is one script for both.

    >>> sql = readonly_role_sql("attnmon_grafana", "s3cret", "public")
    >>> "ALTER ROLE \\"attnmon_grafana\\" WITH PASSWORD 's3cret'" in sql
    True
"""

from __future__ import annotations

import re
from pathlib import Path

SQL_FILE = Path(__file__).with_name("readonly_role.sql")
_PSQL_VAR = re.compile(r""":'(\w+)'|:"(\w+)\"""")
_GRANTED = re.compile(r"ARRAY\[(.*?)\]", re.S)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def readonly_role_sql(role: str, password: str, schema: str = "public") -> str:
    """readonly_role.sql with its psql variables filled in."""
    if not role or not schema:
        raise ValueError("role and schema must not be empty")
    values = {"role": role, "password": password, "schema": schema}

    def fill(m: re.Match[str]) -> str:
        if m.group(1):
            return _literal(values[m.group(1)])
        return _identifier(values[m.group(2)])

    return _PSQL_VAR.sub(fill, SQL_FILE.read_text())


def granted_tables() -> tuple[str, ...]:
    """The tables the role may SELECT, as the script lists them."""
    m = _GRANTED.search(SQL_FILE.read_text())
    assert m is not None, "readonly_role.sql lost its table list"
    return tuple(re.findall(r"'(\w+)'", m.group(1)))
