"""`attnmon dashboards export`: dashboard JSON files and Grafana provisioning files.

    OUT/dashboards/attnmon-*.json                 one file per dashboard
    OUT/provisioning/datasources/attnmon.yaml     the PostgreSQL store, read-only role
    OUT/provisioning/dashboards/attnmon.yaml      a file provider for OUT/dashboards
    OUT/readonly_role.sql                         the role's script, for psql

Grafana expands `$NAME` / `${NAME}` in provisioning files from its environment: the
role's password is never written, only `${ATTNMON_GRAFANA_DB_PASSWORD}`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from dashboards.role import SQL_FILE
from dashboards.spec import DATASOURCE_TYPE, DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID, Dashboard

PASSWORD_ENV = "ATTNMON_GRAFANA_DB_PASSWORD"
DEFAULT_ROLE = "attnmon_grafana"
DEFAULT_DASHBOARDS_PATH = "/var/lib/grafana/dashboards/attnmon"
DATASOURCE_NAME = "attnmon"


@dataclass(frozen=True)
class Connection:
    """Where Grafana finds the store: host:port, database, the read-only role."""

    url: str  # host:port, or an environment lookup
    database: str
    user: str = DEFAULT_ROLE
    sslmode: str = "require"


def connection_for(db_url: str | None, user: str = DEFAULT_ROLE, sslmode: str = "require") -> Connection:
    """From a PostgreSQL URL (the store's, say; its user and password are ignored), or,
    without one, Grafana-side environment lookups for host and database."""
    if not db_url:
        return Connection("${ATTNMON_GRAFANA_DB_HOST}", "${ATTNMON_GRAFANA_DB_NAME}", user, sslmode)
    url = make_url(db_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(
            f"Grafana reads the store through its PostgreSQL datasource; {url.get_backend_name()} "
            "stores are for the demo and `attnmon report` (give --db-url for the PostgreSQL store)"
        )
    return Connection(f"{url.host or 'localhost'}:{url.port or 5432}", url.database or "", user, sslmode)


def datasource(conn: Connection, password: str) -> dict[str, Any]:
    """The datasource as the provisioning file and `POST /api/datasources` both take it."""
    return {
        "name": DATASOURCE_NAME,
        "type": DATASOURCE_TYPE,
        "uid": DATASOURCE_UID,
        "access": "proxy",
        "url": conn.url,
        "user": conn.user,
        "jsonData": {
            "database": conn.database,
            "sslmode": conn.sslmode,
            "postgresVersion": 1500,
            "timescaledb": False,
            "maxOpenConns": 10,
        },
        "secureJsonData": {"password": password},
        "isDefault": False,
        "editable": False,
    }


def datasource_yaml(conn: Connection) -> str:
    return yaml.safe_dump(
        {"apiVersion": 1, "datasources": [datasource(conn, "${" + PASSWORD_ENV + "}")]},
        sort_keys=False,
    )


def provider_yaml(dashboards_path: str) -> str:
    provider = {
        "name": "attnmon",
        "orgId": 1,
        "folder": FOLDER_TITLE,
        "folderUid": FOLDER_UID,
        "type": "file",
        "disableDeletion": False,
        # dashboards are code: edits belong in dashboards/, not in Grafana's UI
        "allowUiUpdates": False,
        "updateIntervalSeconds": 60,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }
    return yaml.safe_dump({"apiVersion": 1, "providers": [provider]}, sort_keys=False)


def export(out: Path, boards: tuple[Dashboard, ...], conn: Connection,
           dashboards_path: str = DEFAULT_DASHBOARDS_PATH) -> list[Path]:
    """Write every file; returns their paths."""
    from dashboards.grafana import to_json

    written = []
    for sub in ("dashboards", "provisioning/datasources", "provisioning/dashboards"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for board in boards:
        path = out / "dashboards" / f"{board.uid}.json"
        path.write_text(json.dumps(to_json(board), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    files = {
        out / "provisioning/datasources/attnmon.yaml": datasource_yaml(conn),
        out / "provisioning/dashboards/attnmon.yaml": provider_yaml(dashboards_path),
    }
    for path, text in files.items():
        path.write_text(text)
        written.append(path)
    role = out / "readonly_role.sql"
    shutil.copyfile(SQL_FILE, role)
    written.append(role)
    return written
