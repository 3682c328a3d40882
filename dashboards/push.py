"""`attnmon dashboards push`: the folder, the datasource and the dashboards, by uid.

Idempotent: the folder and the datasource are created only when missing (a datasource
that is there, provisioned or edited by hand, is left alone), and every dashboard is
saved by uid into the folder (the folder is always named, since an update without it
moves the dashboard to the root).

Safe for edits made in Grafana: a dashboard already there is
- left as is ("unchanged", no new version) when it is the JSON attnmon would save;
- saved over ("updated") when the newest entry of its version history is attnmon's
  own push (its `message` is PUSH_MESSAGE);
- otherwise someone saved it since (an on-call engineer's threshold, a panel): it is
  left and named ("skipped", with who saved it and when) unless `force`, which saves
  over it ("overwritten");
- left ("provisioned") when a provisioning file owns it (meta.provisioned, as the files
  `attnmon dashboards export` writes make it): Grafana refuses to save it through the
  API (400 "Cannot save provisioned dashboard"), `force` or not.

A dashboard whose calls fail (a 403 on its folder or itself, a 500, an answer cut off or
timed out) is "failed", with Grafana's status and message, and the others are pushed.
An error no dashboard can get past stops the push at once (`GrafanaError.fatal`: Grafana
unreachable, 401 for the token), as does any error on the folder or the datasource.

The version history is the signal rather than the JSON: Grafana rewrites a dashboard's
JSON on save and read as its schema evolves, and a new attnmon release changes the JSON
it generates, so "differs from ours" cannot tell an edit from either; the author of the
newest version can, without attnmon having to remember anything between runs. The save
then sends the version it read, without `overwrite`: a save by someone in between is
refused by Grafana itself (412 version-mismatch) and that dashboard is skipped too.

    >>> api = connect("http://grafana:3000", load_token())             # doctest: +SKIP
    >>> push(api, dashboards(), datasource(connection_for(url), password))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dashboards.client import GrafanaError, call
from dashboards.spec import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID, Dashboard

# every save's version message: how a later push knows the newest version is its own
# (the message pushes have carried from the start, so their versions count as attnmon's)
PUSH_MESSAGE = "attnmon dashboards push"
# what Grafana writes into a dashboard's JSON when it saves it
SERVER_FIELDS = ("id", "version")


@dataclass(frozen=True)
class BoardResult:
    uid: str
    action: str  # created, updated, unchanged, overwritten (force), skipped, provisioned or failed
    url: str = ""
    # who saved the version found on the server, when not attnmon (skipped, overwritten)
    edited_by: str | None = None
    edited_at: str | None = None  # as Grafana gave it (RFC 3339)
    edit_message: str = ""
    error: GrafanaError | None = None  # why it failed: .action (the call), .where ("HTTP 403"), .message


@dataclass(frozen=True)
class PushResult:
    folder_created: bool
    datasource_created: bool | None  # None: not asked to manage the datasource
    dashboards: tuple[BoardResult, ...]

    @property
    def skipped(self) -> tuple[BoardResult, ...]:
        return tuple(d for d in self.dashboards if d.action == "skipped")

    @property
    def provisioned(self) -> tuple[BoardResult, ...]:
        return tuple(d for d in self.dashboards if d.action == "provisioned")

    @property
    def failed(self) -> tuple[BoardResult, ...]:
        return tuple(d for d in self.dashboards if d.action == "failed")


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


def last_save(api, uid: str) -> dict[str, Any] | None:
    """The newest entry of the dashboard's version history (version, created, createdBy,
    message), None if it has none."""
    # params, not grafana-client's get_dashboard_versions: it sends `limit` as a GET body
    answer = call(f"get versions of dashboard {uid}", api.client.GET, f"/dashboards/uid/{uid}/versions",
                  params={"limit": 1})
    # a bare list before Grafana 11.6, {"continueToken", "versions"} since
    versions = answer.get("versions") if isinstance(answer, dict) else answer
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        raise GrafanaError(f"get versions of dashboard {uid}", 200, "the answer is not a list of versions")
    return max(versions, key=lambda v: v.get("version") or 0, default=None)


def push(api, boards: tuple[Dashboard, ...], datasource: dict[str, Any] | None = None,
         folder_uid: str = FOLDER_UID, force: bool = False) -> PushResult:
    from dashboards.grafana import to_json

    if datasource is not None and datasource["uid"] != DATASOURCE_UID:
        raise ValueError(f"the dashboards read datasource uid {DATASOURCE_UID!r}")
    created = ensure_folder(api, folder_uid)
    ds_created = ensure_datasource(api, datasource) if datasource is not None else None
    done = tuple(_push_or_fail(api, to_json(board), folder_uid, force) for board in boards)
    return PushResult(created, ds_created, done)


def _push_or_fail(api, board: dict[str, Any], folder_uid: str, force: bool) -> BoardResult:
    try:
        return push_board(api, board, folder_uid, force)
    except GrafanaError as exc:
        if exc.fatal:  # every later dashboard would fail the same way: one error, not one each
            raise
        return BoardResult(board["uid"], "failed", error=exc)


def push_board(api, board: dict[str, Any], folder_uid: str, force: bool = False) -> BoardResult:
    uid = board["uid"]
    current = call(f"get dashboard {uid}", api.dashboard.get_dashboard, uid, allow=(404,))
    if current is None:
        return _save(api, board, folder_uid, None, force, "created")
    meta = current.get("meta") or {}
    if _bare(current.get("dashboard")) == _bare(board) and meta.get("folderUid") == folder_uid:
        return BoardResult(uid, "unchanged", str(meta.get("url", "")))
    if meta.get("provisioned"):  # a file's: the API cannot save it, and it is not an edit
        return BoardResult(uid, "provisioned", str(meta.get("url", "")))
    last = last_save(api, uid)
    # ours only if that entry is the version on the server: a list that did not give the
    # newest first would otherwise hand back attnmon's first push, and an edit be lost
    if last is not None and last.get("message") == PUSH_MESSAGE and last.get("version") == meta.get("version"):
        return _save(api, board, folder_uid, meta.get("version"), force, "updated")
    edit = _edit(last, meta)
    if not force:
        return BoardResult(uid, "skipped", str(meta.get("url", "")), *edit)
    return _save(api, board, folder_uid, meta.get("version"), force, "overwritten", edit)


def _save(api, board: dict[str, Any], folder_uid: str, version: int | None, force: bool, action: str,
          edit: tuple = ()) -> BoardResult:
    uid = board["uid"]
    body = {"dashboard": dict(board, version=version) if version else board, "folderUid": folder_uid,
            "overwrite": force, "message": PUSH_MESSAGE}
    try:
        answer = call(f"save dashboard {uid}", api.dashboard.update_dashboard, body)
    except GrafanaError as exc:
        if exc.status != 412 or exc.reason != "version-mismatch":
            raise
        # saved (or created) by someone since it was read: theirs is kept
        current = call(f"get dashboard {uid}", api.dashboard.get_dashboard, uid) or {}
        meta = current.get("meta") or {}
        return BoardResult(uid, "skipped", str(meta.get("url", "")), *_edit(last_save(api, uid), meta))
    return BoardResult(uid, action, str((answer or {}).get("url", "")), *edit)


def _bare(board: Any) -> dict[str, Any] | None:
    return {k: v for k, v in board.items() if k not in SERVER_FIELDS} if isinstance(board, dict) else None


def _edit(last: dict[str, Any] | None, meta: dict[str, Any]) -> tuple[str | None, str | None, str]:
    """(who, when, their message) of the version on the server."""
    if last is None:  # no history to read: the dashboard's own record
        return meta.get("updatedBy"), meta.get("updated"), ""
    return last.get("createdBy"), last.get("created"), str(last.get("message") or "")
