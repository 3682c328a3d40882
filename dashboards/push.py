"""`attnmon dashboards push`: the folder, the datasource and the dashboards, by uid.

Idempotent: the folder and the datasource are created only when missing (a datasource
that is there, provisioned or edited by hand, is left alone), and every dashboard is
upserted by uid into the folder (`overwrite: true`; the folder is always named, since
an update without it moves the dashboard to the root).

    >>> api = connect("http://grafana:3000", load_token())             # doctest: +SKIP
    >>> push(api, dashboards(), datasource(connection_for(url), password))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dashboards.client import GrafanaError, call
from dashboards.spec import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID, Dashboard


@dataclass(frozen=True)
class PushResult:
    folder_created: bool
    datasource_created: bool | None  # None: not asked to manage the datasource
    dashboards: tuple[tuple[str, str], ...]  # (uid, url) as Grafana answered


def ensure_folder(api, uid: str = FOLDER_UID, title: str = FOLDER_TITLE) -> bool:
    """Create the folder unless it exists; True if created."""
    if call("get folder", api.folder.get_folder, uid, allow=(404,)) is not None:
        return False
    if call("create folder", api.folder.create_folder, title, uid=uid, allow=(409,)) is not None:
        return True
    # 409: created meanwhile (another push), or a folder of that title with another uid
    if call("get folder", api.folder.get_folder, uid, allow=(404,)) is None:
        raise GrafanaError("create folder", 409, f"a folder titled {title!r} exists with another uid than {uid!r}")
    return False


def ensure_datasource(api, body: dict[str, Any]) -> bool:
    """Create the datasource unless its uid exists; True if created."""
    if call("get datasource", api.datasource.get_datasource_by_uid, body["uid"], allow=(404,)) is not None:
        return False
    call("create datasource", api.datasource.create_datasource, body)
    return True


def push(api, boards: tuple[Dashboard, ...], datasource: dict[str, Any] | None = None,
         folder_uid: str = FOLDER_UID, message: str = "attnmon dashboards push") -> PushResult:
    from dashboards.grafana import to_json

    if datasource is not None and datasource["uid"] != DATASOURCE_UID:
        raise ValueError(f"the dashboards read datasource uid {DATASOURCE_UID!r}")
    created = ensure_folder(api, folder_uid)
    ds_created = ensure_datasource(api, datasource) if datasource is not None else None
    done = []
    for board in boards:
        answer = call(
            f"save dashboard {board.uid}",
            api.dashboard.update_dashboard,
            {"dashboard": to_json(board), "folderUid": folder_uid, "overwrite": True, "message": message},
        )
        done.append((board.uid, str((answer or {}).get("url", ""))))
    return PushResult(created, ds_created, tuple(done))
