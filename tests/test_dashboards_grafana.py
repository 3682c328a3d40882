"""`push` and `annotate` against a local stand-in for Grafana's HTTP API.

The stand-in implements the endpoints attnmon uses as Grafana documents them: a Bearer
token on every call (401 without), `GET/POST /api/folders`, `GET /api/datasources/uid/:uid`,
`POST /api/datasources`, `POST /api/dashboards/db`, `GET /api/dashboards/uid/:uid` (with
`meta`), `GET /api/dashboards/uid/:uid/versions` and `POST /api/annotations`, with their
bodies checked and Grafana's 200/400/404/409/412 answers. `faults` makes the calls about
one dashboard (or the saves into one folder) answer an error, lose the connection or hang.

Dashboards are saved as Grafana's SQL store does (pkg/services/dashboards/database): the
stored JSON gets `id`, `uid` and `version`; a save of an existing uid whose `version` is
not the stored one is refused (412 version-mismatch) unless `overwrite`, and each save
adds a version (+1) to the history with its author and `message`. `ui_edit` is a person
saving in the browser, which sends the version it loaded without `overwrite`.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from dashboards.annotate import KEY_PREFIX, annotate
from dashboards.catalog import dashboards
from dashboards.client import GrafanaError, connect
from dashboards.provision import connection_for, datasource
from dashboards.push import ensure_folder, push
from monitor.cli import main
from monitor.store import make_engine, tables

TOKEN = "glsa_test_token_0123456789"
SERVICE_ACCOUNT = "sa-1-attnmon-ci"  # the token's login, as Grafana names a service account's
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
PROVISIONING = "Anonymous"  # the author the versions list gives a provisioner's save (user id 0)


class FakeGrafana:
    """State and the request log of the stand-in."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.folders: dict[str, dict] = {}
        self.datasources: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.annotations: list[dict] = []
        self.lock = threading.Lock()
        self.clock = lambda: datetime.now(UTC)
        # the versions list: "paged" ({"continueToken", "versions"}) since Grafana 11.6,
        # "list" (a bare array) before (grafana/grafana#104556)
        self.versions_shape = "paged"
        # dashboards a provisioning file owns (allowUiUpdates: false, as `export` writes it):
        # meta.provisioned, and a save through the API is refused (400)
        self.provisioned: set[str] = set()
        # the versions list's order: Grafana gives the newest first; "oldest" plays a server
        # (or storage backend) that does not, against which push must stay safe
        self.versions_order = "newest"
        # dashboard uid (its get, versions and save) or folder uid (saves into it) -> what
        # its calls get instead: (status, body), "reset" (the connection reset, no answer),
        # "hang" (no answer until `release` is set; the server sets it when it stops) or
        # "down" (Grafana stops: no answer, and later connections are refused)
        self.faults: dict[str, tuple[int, dict] | str] = {}
        self.release = threading.Event()

    def fault(self, method: str, path: str, body: Any) -> tuple[int, dict] | str | None:
        """The fault set for the dashboard (or folder) this request is about, if any."""
        parts = path.strip("/").split("/")
        if method == "GET" and parts[:3] == ["api", "dashboards", "uid"] and len(parts) >= 4:
            return self.faults.get(parts[3])
        if method == "POST" and path == "/api/dashboards/db" and isinstance(body, dict):
            board = body.get("dashboard") if isinstance(body.get("dashboard"), dict) else {}
            return self.faults.get(board.get("uid")) or self.faults.get(body.get("folderUid"))
        return None

    def calls(self, method: str | None = None, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method)
                and (path is None or r["path"].split("?")[0] == path)]

    # -- endpoints: (status, body) ---------------------------------------------------------

    def get_folder(self, uid: str):
        if uid in self.folders:
            return 200, self.folders[uid]
        return 404, {"message": "folder not found", "status": "not-found"}

    def post_folder(self, body: dict):
        if not isinstance(body.get("title"), str) or not body["title"]:
            return 400, {"message": "folder title cannot be empty"}
        uid = body.get("uid") or f"gen{len(self.folders)}"
        if uid in self.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        if any(f["title"] == body["title"] for f in self.folders.values()):
            return 409, {"message": "a folder with the same name already exists"}
        folder = {"id": len(self.folders) + 1, "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/"}
        self.folders[uid] = folder
        return 200, folder

    def get_datasource(self, uid: str):
        if uid in self.datasources:
            return 200, self.datasources[uid]
        return 404, {"message": "Data source not found"}

    def post_datasource(self, body: dict):
        missing = [k for k in ("name", "type", "access") if not isinstance(body.get(k), str) or not body[k]]
        if missing or body["access"] not in ("proxy", "direct"):
            return 400, {"message": f"bad datasource: {missing or body['access']}"}
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return 409, {"message": "data source with the same name already exists"}
        uid = body.get("uid") or f"ds{len(self.datasources)}"
        if uid in self.datasources:
            return 409, {"message": "data source with the same uid already exists"}
        ds = {k: v for k, v in body.items() if k != "secureJsonData"} | {"id": len(self.datasources) + 1, "uid": uid}
        self.datasources[uid] = ds
        return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]}

    def post_dashboard(self, body: dict, user: str = SERVICE_ACCOUNT):
        board = body.get("dashboard")
        if not isinstance(board, dict) or not board.get("title") or not board.get("uid"):
            return 400, {"message": "Dashboard title cannot be empty", "status": "empty-name"}
        if len(board["uid"]) > 40:
            return 400, {"message": "uid too long, max 40 characters"}
        folder = body.get("folderUid")
        if folder and folder not in self.folders:
            return 400, {"message": "folder not found", "status": "folder-not-found"}
        old = self.dashboards.get(board["uid"])
        if old is not None and board["uid"] in self.provisioned and user != PROVISIONING:
            # pkg/services/dashboards: ErrDashboardCannotSaveProvisionedDashboard, overwrite or not
            return 400, {"message": "Cannot save provisioned dashboard"}
        if board.get("id") is not None and (old is None or old["id"] != board["id"]):
            return 404, {"message": "Dashboard not found", "status": "not-found"}
        sent = board.get("version") or 0  # absent: 0, as Go reads it
        if old is not None and sent != old["version"] and not body.get("overwrite"):
            return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
        version = (old["version"] + 1) if old else 1
        now = self.clock().replace(microsecond=0).isoformat().replace("+00:00", "Z")  # Go: RFC 3339, seconds
        slug = board["title"].lower().replace(" ", "-")
        saved = {"id": old["id"] if old else len(self.dashboards) + 1, "uid": board["uid"], "version": version,
                 "folderUid": folder or "", "url": f"/d/{board['uid']}/{slug}", "slug": slug,
                 "created": old["created"] if old else now, "createdBy": old["createdBy"] if old else user,
                 "updated": now, "updatedBy": user, "history": old["history"] if old else []}
        saved["dashboard"] = dict(board, id=saved["id"], uid=board["uid"], version=version)
        saved["history"].append({
            "id": sum(len(d["history"]) for d in self.dashboards.values()) + 1, "dashboardId": saved["id"],
            "uid": board["uid"], "parentVersion": old["version"] if old else 0, "restoredFrom": 0,
            "version": version, "created": now, "createdBy": user, "message": body.get("message") or ""})
        self.dashboards[board["uid"]] = saved
        return 200, {"id": saved["id"], "uid": board["uid"], "url": saved["url"],
                     "status": "success", "version": version, "slug": slug}

    def get_dashboard(self, uid: str):
        d = self.dashboards.get(uid)
        if d is None:
            return 404, {"message": "Dashboard not found"}
        meta = {"isStarred": False, "url": d["url"], "slug": d["slug"], "folderUid": d["folderUid"],
                "folderId": self.folders.get(d["folderUid"], {}).get("id", 0),
                "provisioned": uid in self.provisioned,
                "canSave": True, "canEdit": True, "version": d["version"], "created": d["created"],
                "createdBy": d["createdBy"], "updated": d["updated"], "updatedBy": d["updatedBy"]}
        return 200, {"dashboard": json.loads(json.dumps(d["dashboard"])), "meta": meta}

    def get_versions(self, uid: str, query: dict[str, list[str]]):
        d = self.dashboards.get(uid)
        if d is None:
            return 404, {"message": "Dashboard not found"}
        try:
            limit = int(query.get("limit", ["1000"])[0])
        except ValueError:
            limit = 1000
        order = -1 if self.versions_order == "newest" else 1
        versions = sorted(d["history"], key=lambda v: order * v["version"])[:limit if limit > 0 else 1000]
        return 200, versions if self.versions_shape == "list" else {"continueToken": "", "versions": versions}

    def ui_edit(self, uid: str, change, user: str = "alice", message: str = "") -> None:
        """A person opens the dashboard in the browser, edits it and saves it."""
        status, loaded = self.get_dashboard(uid)
        assert status == 200, loaded
        board = loaded["dashboard"]
        change(board)
        status, answer = self.post_dashboard(
            {"dashboard": board, "folderUid": loaded["meta"]["folderUid"], "message": message}, user)
        assert status == 200, answer

    def provision(self, board: dict, folder_uid: str) -> None:
        """Grafana's file provisioner saving a dashboard from its JSON file (no user, no
        message), the file's owner from then on."""
        self.provisioned.add(board["uid"])
        old = self.dashboards.get(board["uid"])
        status, answer = self.post_dashboard(
            {"dashboard": dict(board, version=old["version"] if old else 0), "folderUid": folder_uid},
            PROVISIONING)
        assert status == 200, answer

    def post_annotation(self, body: dict):
        if not isinstance(body.get("time"), int) or body["time"] <= 0:
            return 400, {"message": "time must be epoch milliseconds"}
        if not isinstance(body.get("text"), str) or not body["text"]:
            return 400, {"message": "text field should not be empty"}
        if not isinstance(body.get("tags", []), list) or not all(isinstance(t, str) for t in body.get("tags", [])):
            return 400, {"message": "tags must be strings"}
        uid = body.get("dashboardUID")
        if uid is not None and uid not in self.dashboards:
            return 404, {"message": "Dashboard not found"}
        self.annotations.append(dict(body, id=len(self.annotations) + 1))
        return 200, {"message": "Annotation added", "id": len(self.annotations)}


def _handler(state: FakeGrafana):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append({"method": method, "path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization"),
                                       "content_type": self.headers.get("Content-Type")})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, {"message": "Unauthorized"})
                if method == "POST" and self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    return self._answer(415, {"message": "expected JSON"})
                path = self.path.split("?")[0]
                fault = state.fault(method, path, body)
            if fault in ("reset", "down"):
                if fault == "down":  # Grafana stops: this call gets no answer, later ones are refused
                    self.server.shutdown()
                    self.server.socket.close()
                # RST: the connection reset, no answer
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return None
            if fault == "hang":
                state.release.wait(60)  # bounded: the server sets it when it stops
                self.close_connection = True
                return None
            if fault is not None:
                return self._answer(*fault)
            with state.lock:
                parts = path.strip("/").split("/")
                if method == "GET" and parts[:2] == ["api", "folders"] and len(parts) == 3:
                    return self._answer(*state.get_folder(parts[2]))
                if method == "POST" and path == "/api/folders":
                    return self._answer(*state.post_folder(body or {}))
                if method == "GET" and parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4:
                    return self._answer(*state.get_datasource(parts[3]))
                if method == "POST" and path == "/api/datasources":
                    return self._answer(*state.post_datasource(body or {}))
                if method == "POST" and path == "/api/dashboards/db":
                    return self._answer(*state.post_dashboard(body or {}))
                if method == "GET" and parts[:3] == ["api", "dashboards", "uid"] and len(parts) == 4:
                    return self._answer(*state.get_dashboard(parts[3]))
                if method == "GET" and parts[:3] == ["api", "dashboards", "uid"] and parts[4:] == ["versions"]:
                    return self._answer(*state.get_versions(parts[3], parse_qs(urlsplit(self.path).query)))
                if method == "POST" and path == "/api/annotations":
                    return self._answer(*state.post_annotation(body or {}))
                return self._answer(404, {"message": "Not found"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


@contextmanager
def fake_grafana(state: FakeGrafana | None = None, port: int = 0) -> Iterator[tuple[str, FakeGrafana]]:
    """The stand-in serving on loopback (`port` 0: any free one) until the block ends;
    pass the `state` of an earlier one to bring "the same Grafana" back up."""
    state = state or FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    with fake_grafana() as served:
        yield served


PG = "postgresql+psycopg://admin:adminpw@db.internal:6432/attnmon"


def _release(boards):
    """The same dashboards as a later attnmon release draws them."""
    return tuple(replace(b, description=b.description + " (next release)") for b in boards)


def _raise_threshold(board: dict) -> None:
    """What an on-call engineer does in the browser during an incident."""
    board["panels"][0]["title"] += " (threshold raised for INC-42)"


def test_push_creates_then_updates_and_leaves_unchanged_boards_alone(grafana) -> None:
    url, state = grafana
    api = connect(url, TOKEN)
    body = datasource(connection_for(PG, "attnmon_grafana", "require"), "ro-pw")
    boards = dashboards()
    first = push(api, boards, body)  # an empty Grafana
    assert first.folder_created and first.datasource_created
    assert [(d.uid, d.action) for d in first.dashboards] == [(b.uid, "created") for b in boards]
    assert first.dashboards[0].url == "/d/attnmon-overview/attnmon-·-overview" and not first.skipped
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in state.requests)
    assert [(r["method"], r["path"]) for r in state.requests[:4]] == [
        ("GET", "/api/folders/attnmon"),
        ("POST", "/api/folders"),
        ("GET", "/api/datasources/uid/attnmon-pg"),
        ("POST", "/api/datasources"),
    ]
    assert state.requests[1]["body"] == {"title": "attnmon", "uid": "attnmon"}
    ds = state.requests[3]["body"]
    assert ds["type"] == "grafana-postgresql-datasource" and ds["uid"] == "attnmon-pg"
    assert ds["url"] == "db.internal:6432" and ds["user"] == "attnmon_grafana"
    assert ds["jsonData"]["database"] == "attnmon" and ds["secureJsonData"] == {"password": "ro-pw"}
    saves = state.calls("POST", "/api/dashboards/db")
    assert len(saves) == 5
    for r in saves:  # created without overwrite: a dashboard made meanwhile is not replaced
        assert r["body"]["folderUid"] == "attnmon" and r["body"]["overwrite"] is False
        assert r["body"]["message"] == "attnmon dashboards push"
        assert r["body"]["dashboard"].get("id") is None and not r["body"]["dashboard"].get("version")
    assert {d["folderUid"] for d in state.dashboards.values()} == {"attnmon"}

    # the same dashboards again: nothing saved, no new version for nothing
    state.requests.clear()
    again = push(api, boards, body)
    assert not again.folder_created and again.datasource_created is False
    assert [(d.uid, d.action) for d in again.dashboards] == [(b.uid, "unchanged") for b in boards]
    assert again.dashboards[0].url == "/d/attnmon-overview/attnmon-·-overview"
    assert state.calls("POST") == []
    assert {d["version"] for d in state.dashboards.values()} == {1}

    # a new release: each saved over attnmon's own last push, the version it read sent
    state.requests.clear()
    later = push(api, _release(boards), body)
    assert [d.action for d in later.dashboards] == ["updated"] * 5 and not later.skipped
    saves = state.calls("POST", "/api/dashboards/db")
    assert [(r["body"]["overwrite"], r["body"]["dashboard"]["version"]) for r in saves] == [(False, 1)] * 5
    assert all("limit=1" in r["path"] for r in state.calls("GET") if r["path"].split("?")[0].endswith("/versions"))
    assert {d["version"] for d in state.dashboards.values()} == {2} and len(state.dashboards) == 5
    assert state.dashboards["attnmon-overview"]["dashboard"]["description"].endswith("(next release)")


@pytest.mark.parametrize("shape", ["paged", "list"])  # Grafana 11.6+, and before
def test_a_dashboard_edited_in_grafana_is_left_as_it_is_and_named(grafana, shape: str) -> None:
    url, state = grafana
    state.versions_shape = shape
    api = connect(url, TOKEN)
    boards = dashboards()
    push(api, boards)
    state.clock = lambda: datetime(2026, 11, 20, 9, 12, tzinfo=UTC)
    state.ui_edit("attnmon-overview", _raise_threshold, user="alice", message="INC-42")
    edited = state.dashboards["attnmon-overview"]["dashboard"]

    state.requests.clear()
    result = push(api, _release(boards))
    assert [(d.uid, d.action) for d in result.dashboards] == [
        ("attnmon-overview", "skipped")] + [(b.uid, "updated") for b in boards[1:]]
    [skipped] = result.skipped
    assert (skipped.edited_by, skipped.edited_at, skipped.edit_message) == ("alice", "2026-11-20T09:12:00Z", "INC-42")
    assert skipped.url == "/d/attnmon-overview/attnmon-·-overview"
    assert state.dashboards["attnmon-overview"]["dashboard"] == edited  # alice's edit kept
    assert "attnmon-overview" not in {r["body"]["dashboard"]["uid"] for r in state.calls("POST", "/api/dashboards/db")}

    # forced: attnmon's dashboard replaces the edit, and says whose edit it replaced
    forced = push(api, _release(boards), force=True)
    assert [(d.uid, d.action) for d in forced.dashboards] == [
        ("attnmon-overview", "overwritten")] + [(b.uid, "unchanged") for b in boards[1:]]
    assert (forced.dashboards[0].edited_by, forced.dashboards[0].edited_at) == ("alice", "2026-11-20T09:12:00Z")
    saved = state.dashboards["attnmon-overview"]
    assert saved["version"] == 3 and saved["updatedBy"] == SERVICE_ACCOUNT
    assert saved["dashboard"]["panels"][0]["title"] == edited["panels"][0]["title"].split(" (threshold")[0]
    # attnmon's again: the next push is a plain update
    assert [d.action for d in push(api, boards).dashboards] == ["updated"] * 5


def test_an_edit_is_kept_when_the_versions_list_does_not_give_the_newest(grafana) -> None:
    """A server whose `versions?limit=1` answers the oldest version (attnmon's first push):
    that entry is not the version on the server, so nothing tells who saved last, and the
    edit is kept rather than overwritten."""
    url, state = grafana
    api = connect(url, TOKEN)
    boards = dashboards()
    push(api, boards)
    state.ui_edit("attnmon-overview", _raise_threshold, user="alice")
    edited = state.dashboards["attnmon-overview"]["dashboard"]
    state.versions_order = "oldest"
    result = push(api, _release(boards))
    assert {d.uid: d.action for d in result.dashboards}["attnmon-overview"] == "skipped"
    assert state.dashboards["attnmon-overview"]["dashboard"] == edited


def test_a_dashboard_attnmon_did_not_save_last_is_not_taken_over(grafana) -> None:
    """The uid taken by a dashboard imported by hand, or edited back to attnmon's exact
    JSON: the first is left and named, the second is attnmon's (nothing to lose)."""
    url, state = grafana
    api = connect(url, TOKEN)
    boards = dashboards()
    ensure_folder(api)
    state.post_dashboard({"dashboard": {"uid": "attnmon-items", "title": "Our items"}, "folderUid": "attnmon"},
                         user="bob")
    result = push(api, boards)
    assert {d.uid: d.action for d in result.dashboards}["attnmon-items"] == "skipped"
    assert result.skipped[0].edited_by == "bob" and state.dashboards["attnmon-items"]["version"] == 1
    # alice edits, then undoes her edit by hand: the same JSON as attnmon's, left as is
    state.ui_edit("attnmon-heads", _raise_threshold, user="alice")
    state.ui_edit("attnmon-heads", lambda b: b["panels"][0].update(
        title=b["panels"][0]["title"].split(" (threshold")[0]), user="alice")
    assert {d.uid: d.action for d in push(api, boards).dashboards}["attnmon-heads"] == "unchanged"


def test_an_edit_saved_while_push_runs_is_not_overwritten(grafana) -> None:
    """Between push's read of the version history and its save, a person saves: Grafana's
    version check (412 version-mismatch) keeps their save."""
    url, state = grafana
    api = connect(url, TOKEN)
    boards = dashboards()
    push(api, boards)
    real = state.post_dashboard

    def racing(body: dict, user: str = SERVICE_ACCOUNT):
        if user == SERVICE_ACCOUNT and body["dashboard"]["uid"] == "attnmon-heads":
            state.ui_edit("attnmon-heads", _raise_threshold, user="carol")
        return real(body, user)

    state.post_dashboard = racing
    result = push(api, _release(boards))
    assert {d.uid: d.action for d in result.dashboards}["attnmon-heads"] == "skipped"
    assert result.skipped[0].edited_by == "carol"
    assert state.dashboards["attnmon-heads"]["updatedBy"] == "carol"
    assert [d.action for d in result.dashboards].count("updated") == 4


def test_a_provisioned_dashboard_is_named_as_provisioned_not_as_edited(grafana, capsys, monkeypatch) -> None:
    """Dashboards Grafana reads from files (`attnmon dashboards export`) cannot be saved
    through the API: Grafana answers 400 "Cannot save provisioned dashboard", with
    overwrite too. push named the provisioner's save as an edit in Grafana and said to
    use --force, and --force stopped the whole push at that dashboard with the 400."""
    from dashboards.grafana import to_json

    url, state = grafana
    api = connect(url, TOKEN)
    boards = dashboards()
    ensure_folder(api)
    state.provision(to_json(boards[0]), "attnmon")  # an older release's file
    state.dashboards[boards[0].uid]["dashboard"]["description"] = "older"
    for force in (False, True):
        result = push(api, boards, force=force)
        assert [(d.uid, d.action) for d in result.dashboards] == [
            (boards[0].uid, "provisioned")] + [(b.uid, "unchanged" if force else "created") for b in boards[1:]]
        assert result.dashboards[0].url == state.dashboards[boards[0].uid]["url"]
    assert boards[0].uid not in {r["body"]["dashboard"]["uid"] for r in state.calls("POST", "/api/dashboards/db")}
    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    assert main(["dashboards", "push", "--grafana-url", url, "--no-datasource", "--store", "sqlite://"]) == 1
    captured = capsys.readouterr()
    line = f"dashboard {boards[0].uid} provisioned from a file: Grafana refuses saves through its API"
    assert line in captured.out and "edited in Grafana" not in captured.err
    assert "attnmon dashboards export" in captured.err and "--force" not in captured.err


def test_push_errors_are_one_clear_line(grafana) -> None:
    url, state = grafana
    with pytest.raises(GrafanaError) as err:
        push(connect(url, "wrong-token"), dashboards())
    assert err.value.status == 401 and "wrong-token" not in str(err.value)
    assert "\n" not in str(err.value)
    # a folder titled attnmon under another uid: say so instead of saving elsewhere
    state.folders["other"] = {"id": 9, "uid": "other", "title": "attnmon", "url": ""}
    with pytest.raises(GrafanaError, match="another uid"):
        push(connect(url, TOKEN), dashboards())
    assert state.calls("POST", "/api/dashboards/db") == []


# Grafana's answer to a token that may not write there (access control's 403)
DENIED = {"accessErrorId": "ACE0123456789", "title": "Access denied",
          "message": "You'll need additional permissions to perform this action. Permissions needed: dashboards:write"}


def test_a_dashboard_grafana_refuses_is_named_and_the_others_are_pushed(grafana) -> None:
    """A 403 on one dashboard's save, a 500 on another's read: each is named with
    Grafana's status and message, and the rest are pushed. The first error stopped the
    push, leaving every dashboard after it unpushed."""
    url, state = grafana
    state.faults["attnmon-heads"] = (403, DENIED)
    state.faults["attnmon-versions"] = (500, {"message": "Internal Server Error", "traceID": "00"})
    result = push(connect(url, TOKEN), dashboards())
    assert [(d.uid, d.action) for d in result.dashboards] == [
        ("attnmon-overview", "created"), ("attnmon-heads", "failed"), ("attnmon-items", "created"),
        ("attnmon-versions", "failed"), ("attnmon-health", "created")]
    heads, versions = result.failed
    assert (heads.error.status, heads.error.action, heads.error.message) == (
        403, "get dashboard attnmon-heads", DENIED["message"])
    assert (versions.error.status, versions.error.message) == (500, "Internal Server Error")
    assert set(state.dashboards) == {"attnmon-overview", "attnmon-items", "attnmon-health"}
    # the token may not write the folder: every save refused, each named, none fatal
    del state.faults["attnmon-heads"], state.faults["attnmon-versions"]
    state.faults["attnmon"] = (403, DENIED)
    result = push(connect(url, TOKEN), _release(dashboards()))
    assert [d.action for d in result.dashboards] == ["failed"] * 5
    assert {(d.error.status, d.error.action) for d in result.failed} == {
        (403, f"save dashboard {b.uid}") for b in dashboards()}


def test_an_answer_cut_off_fails_one_dashboard_not_the_push(grafana) -> None:
    """A connection reset on one call, a call Grafana never answers: those dashboards
    fail (no answer), the others are pushed, and the hung call holds the push for its
    timeout only."""
    url, state = grafana
    state.faults["attnmon-heads"] = "reset"
    state.faults["attnmon-items"] = "hang"
    started = time.monotonic()
    result = push(connect(url, TOKEN, timeout=3), dashboards())  # room for the calls that answer
    assert time.monotonic() - started < 20  # not the 60 s the hung call waits to be let go
    assert {d.uid: d.action for d in result.dashboards} == {
        "attnmon-overview": "created", "attnmon-heads": "failed", "attnmon-items": "failed",
        "attnmon-versions": "created", "attnmon-health": "created"}
    heads, items = result.failed
    assert heads.error.status == 0 and heads.error.where == "no answer" and not heads.error.fatal
    assert "the connection broke off" in heads.error.message
    assert items.error.where == "no answer" and items.error.message == "none complete within 3 s"
    assert set(state.dashboards) == {"attnmon-overview", "attnmon-versions", "attnmon-health"}


@pytest.mark.parametrize("fault", [(401, {"message": "Unauthorized"}), "down"], ids=["401", "grafana-down"])
def test_an_error_no_dashboard_can_pass_stops_the_push_at_once(grafana, fault) -> None:
    """The token refused (revoked mid-push) or Grafana gone: one error, not one per
    dashboard. Down, the call in flight gets no answer (that dashboard is named as
    failed) and the next cannot connect: the push stops there."""
    url, state = grafana
    state.faults["attnmon-heads"] = fault
    with pytest.raises(GrafanaError) as err:
        push(connect(url, TOKEN, timeout=5), dashboards())
    assert err.value.fatal
    if fault == "down":
        assert err.value.where == "unreachable" and err.value.action == "get dashboard attnmon-items"
    else:
        assert err.value.status == 401 and err.value.action == "get dashboard attnmon-heads"
    about = [r["path"] for r in state.requests if "attnmon-items" in json.dumps(r)]
    assert about == [] and set(state.dashboards) == {"attnmon-overview"}


def test_push_cli_names_what_failed_and_exits_2(grafana, monkeypatch, tmp_path: Path, capsys) -> None:
    """2, not the 1 of dashboards left on purpose (edited, provisioned): a pipeline that
    lets 1 pass must still stop on an error."""
    url, state = grafana
    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    args = ["dashboards", "push", "--grafana-url", url, "--no-datasource", "--store", f"sqlite:///{tmp_path / 'x.db'}"]
    state.faults["attnmon-heads"] = (403, DENIED)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert ("dashboard attnmon-heads failed (HTTP 403 to get dashboard attnmon-heads): You'll need additional "
            "permissions to perform this action. Permissions needed: dashboards:write") in captured.out
    assert "dashboard attnmon-items created /d/attnmon-items/" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("attnmon: 1 dashboard failed and was not pushed, the others were: "
                                              "attnmon-heads (HTTP 403: You'll need additional permissions")
    # with a dashboard left as edited too: both named, and 2
    state.ui_edit("attnmon-items", _raise_threshold, user="bob")
    state.faults["attnmon-heads"] = "reset"
    assert main([*args, "--format", "json"]) == 2
    captured = capsys.readouterr()
    out = {d["uid"]: d for d in json.loads(captured.out)["dashboards"]}
    assert out["attnmon-items"]["action"] == "skipped"
    assert out["attnmon-heads"]["action"] == "failed" and out["attnmon-heads"]["status"] is None
    assert out["attnmon-heads"]["call"] == "get dashboard attnmon-heads"
    assert out["attnmon-heads"]["error"].startswith("the connection broke off")
    assert "edited in Grafana" in captured.err and "attnmon-heads (no answer: the connection broke off" in captured.err
    del state.faults["attnmon-heads"]
    assert main(args) == 1  # only the edit left: 1, as before


def test_push_cli(grafana, monkeypatch, tmp_path: Path, capsys) -> None:
    url, state = grafana
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    monkeypatch.setenv("ATTNMON_GRAFANA_DB_PASSWORD", "from-env")
    monkeypatch.delenv("ATTNMON_GRAFANA_TOKEN", raising=False)
    args = ["dashboards", "push", "--grafana-url", url, "--token-file", str(token), "--db-url", PG,
            "--store", f"sqlite:///{tmp_path / 'unused.db'}", "--format", "json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["folder_created"] and out["datasource_created"]
    assert out["dashboards"][0] == {"uid": "attnmon-overview", "url": "/d/attnmon-overview/attnmon-·-overview",
                                    "action": "created"}
    assert state.calls("POST", "/api/datasources")[0]["body"]["secureJsonData"] == {"password": "from-env"}
    # no token anywhere: one line on stderr, exit 2
    assert main(args[:4] + args[6:]) == 2
    assert "ATTNMON_GRAFANA_TOKEN" in capsys.readouterr().err


def test_push_cli_names_what_it_left_and_force_overwrites(grafana, monkeypatch, tmp_path: Path, capsys) -> None:
    url, state = grafana
    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    args = ["dashboards", "push", "--grafana-url", url, "--no-datasource", "--store", f"sqlite:///{tmp_path / 'x.db'}"]
    assert main(args) == 0
    assert "dashboard attnmon-overview created /d/attnmon-overview/" in capsys.readouterr().out
    state.clock = lambda: datetime(2026, 11, 20, 9, 12, tzinfo=UTC)
    state.ui_edit("attnmon-overview", _raise_threshold, user="alice", message="INC-42")
    state.ui_edit("attnmon-items", _raise_threshold, user="bob")
    assert main(args) == 1  # the rest pushed, the edited ones left and named
    captured = capsys.readouterr()
    assert "dashboard attnmon-heads unchanged /d/attnmon-heads/" in captured.out
    assert ("dashboard attnmon-overview skipped: saved in Grafana by alice at 2026-11-20T09:12:00Z "
            "('INC-42') since attnmon pushed it") in captured.out
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("attnmon: 2 dashboards edited in Grafana since attnmon pushed them")
    assert "attnmon-overview (alice, 2026-11-20T09:12:00Z)" in err and "attnmon-items (bob, " in err
    assert "--force" in err
    assert state.dashboards["attnmon-overview"]["updatedBy"] == "alice"
    assert main([*args, "--format", "json"]) == 1
    out = json.loads(capsys.readouterr().out)["dashboards"]
    assert out[0] == {"uid": "attnmon-overview", "url": "/d/attnmon-overview/attnmon-·-overview", "action": "skipped",
                      "edited_by": "alice", "edited_at": "2026-11-20T09:12:00Z", "edit_message": "INC-42"}
    assert main([*args, "--force"]) == 0
    assert "dashboard attnmon-overview overwritten (saved in Grafana by alice at 2026-11-20T09:12:00Z" in \
        capsys.readouterr().out
    assert {d["updatedBy"] for d in state.dashboards.values()} == {SERVICE_ACCOUNT}


@pytest.fixture
def store(sqlite_url: str) -> str:
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(tables.models.insert().values(name="rec", created_at=T0))
        conn.execute(tables.deployments.insert(), [
            dict(model="rec", version="v1", first_seen=T0, deployed_at=T0, weights_id=None, source="collector"),
            dict(model="rec", version="v2", first_seen=T0 + timedelta(hours=2),
                 deployed_at=T0 + timedelta(hours=2), weights_id="w2", source="manual"),
        ])
        conn.execute(tables.alerts.insert().values(
            fingerprint="a" * 32, rule="AttentionEntropyCollapse", severity="critical",
            labels={"model": "rec", "version": "v2", "layer": "1", "head": "2", "cohort": "*"},
            annotations={"summary": "entropy collapsed"}, state="resolved", value=-3.0,
            active_at=T0 + timedelta(hours=2, minutes=3), fired_at=T0 + timedelta(hours=2, minutes=5),
            resolved_at=T0 + timedelta(hours=3), last_eval_at=T0 + timedelta(hours=3)))
    engine.dispose()
    return sqlite_url


def test_an_alert_that_ended_unfixed_is_annotated_as_ended(store: str) -> None:
    """Its comparison ended (alerts.model.ENDED): the graph must not say "resolved"."""
    from alerts.model import ENDED
    from dashboards.annotate import ENDED as ENDED_HERE
    from dashboards.annotate import events

    assert ENDED_HERE == ENDED
    engine = make_engine(store)
    with engine.begin() as conn:
        conn.execute(tables.alerts.update().values(annotations={"summary": "shifted", ENDED: "Not fixed: ..."}))
    found = [e for e in events(engine, T0) if "alert" in e.tags]
    engine.dispose()
    assert [(e.tags[-1], e.text) for e in found] == [
        ("firing", "AttentionEntropyCollapse firing (critical) [version=v2, cohort=*, layer=1, head=2]: shifted"),
        ("ended", "AttentionEntropyCollapse ended (critical) [version=v2, cohort=*, layer=1, head=2]: not fixed, "
                  "it is no longer compared with the baseline it fired against")]


def test_annotate_posts_each_event_once(grafana, store: str) -> None:
    url, state = grafana
    now = T0 + timedelta(hours=4)
    engine = make_engine(store)
    result = annotate(engine, connect(url, TOKEN), since=now - timedelta(days=7), grafana_url=url, now=now)
    assert (result.posted, result.already) == (4, 0)  # 2 deployments, 1 alert fired and resolved
    bodies = [r["body"] for r in state.calls("POST", "/api/annotations")]
    assert [b["time"] for b in bodies] == [
        int((T0 + d).timestamp() * 1000)
        for d in (timedelta(0), timedelta(hours=2), timedelta(hours=2, minutes=5), timedelta(hours=3))
    ]
    assert bodies[1]["text"] == "rec v2 deployed (manual, weights w2)"
    assert bodies[1]["tags"] == ["attnmon", "deployment", "model:rec", "version:v2"]
    assert bodies[2]["tags"][:4] == ["attnmon", "alert", "critical", "AttentionEntropyCollapse"]
    assert bodies[2]["text"].startswith("AttentionEntropyCollapse firing (critical)")
    assert "resolved" in bodies[3]["tags"]
    assert all("dashboardUID" not in b for b in bodies)  # organisation-wide by default
    engine.dispose()

    # a restart (a new engine, a new client): nothing twice
    engine = make_engine(store)
    again = annotate(engine, connect(url, TOKEN), since=now - timedelta(days=7), grafana_url=url, now=now)
    assert (again.posted, again.already) == (0, 4) and len(state.annotations) == 4
    with engine.connect() as conn:
        rows = conn.execute(select(tables.daemon_state).where(
            tables.daemon_state.c.key.like(KEY_PREFIX + "%"))).mappings().all()
    assert len(rows) == 4 and {json.loads(r["value"])["id"] for r in rows} == {1, 2, 3, 4}

    # a new deployment: only it; pinned to a dashboard, it names the dashboard
    state.post_dashboard({"dashboard": {"uid": "attnmon-overview", "title": "Overview"}}, user="admin")
    with engine.begin() as conn:
        conn.execute(tables.deployments.insert().values(
            model="rec", version="v3", first_seen=now, deployed_at=now, source="collector"))
    third = annotate(engine, connect(url, TOKEN), since=now - timedelta(days=7), grafana_url=url,
                     dashboard_uid="attnmon-overview", now=now)
    # another target is another Grafana place: every event goes there once
    assert third.posted == 5
    assert state.calls("POST", "/api/annotations")[-1]["body"]["dashboardUID"] == "attnmon-overview"
    engine.dispose()


def test_annotate_retries_what_failed(grafana, store: str) -> None:
    url, state = grafana
    now = T0 + timedelta(hours=4)
    engine = make_engine(store)
    with pytest.raises(GrafanaError) as err:  # no such dashboard: Grafana answers 404
        annotate(engine, connect(url, TOKEN), since=now - timedelta(days=1), grafana_url=url,
                 dashboard_uid="missing", now=now)
    assert err.value.status == 404
    with pytest.raises(GrafanaError) as err:  # Grafana down
        annotate(engine, connect("http://127.0.0.1:9", TOKEN, timeout=2), since=now - timedelta(days=1),
                 grafana_url="http://127.0.0.1:9", now=now)
    assert err.value.status == 0
    result = annotate(engine, connect(url, TOKEN), since=now - timedelta(days=1), grafana_url=url, now=now)
    assert result.posted == 4
    engine.dispose()


@pytest.mark.parametrize("peer", ["silent", "trickle", "trickle-body"])
def test_a_grafana_that_hangs_or_trickles_is_cut_and_the_events_wait(grafana, store: str, peer: str) -> None:
    """Grafana accepts the connection, then answers nothing, or a byte a second (from its
    status line, or through its body after whole headers): the call ends at its timeout
    with nothing recorded as posted, and the next run, Grafana answering, posts every
    event. A timeout per read let a trickle hold the call, and the daemon's job, for hours."""
    from peers import silent_port, trickling_port

    url, state = grafana
    now = T0 + timedelta(hours=4)
    engine = make_engine(store)
    slow_peer = silent_port() if peer == "silent" else trickling_port(1.0, headers_first=peer == "trickle-body")
    with slow_peer as port:
        started = time.monotonic()
        with pytest.raises(GrafanaError) as err:
            # each byte comes within the 2 s read timeout: only a bound on the whole call ends it
            annotate(engine, connect(f"http://127.0.0.1:{port}", TOKEN, timeout=2), since=now - timedelta(days=1),
                     grafana_url=url, now=now)
        took = time.monotonic() - started
    assert took < 12  # its bound is 2 x timeout; the trickle would take hours
    assert str(err.value) == "Grafana: post annotation failed (no answer): none complete within 2 s"
    assert not err.value.fatal
    with engine.connect() as conn:  # nothing recorded as posted: the events wait
        assert conn.execute(select(tables.daemon_state.c.key).where(
            tables.daemon_state.c.key.like(KEY_PREFIX + "%"))).first() is None
    result = annotate(engine, connect(url, TOKEN), since=now - timedelta(days=1), grafana_url=url, now=now)
    assert (result.posted, len(state.annotations)) == (4, 4)
    engine.dispose()


def test_a_redirect_cut_while_its_body_is_read_does_not_leave_the_next_hop_unbounded() -> None:
    """A proxy's redirect, cut at the timeout while its body still comes, to a Grafana that
    trickles: the call ends at its timeout too. The one close at the timeout ended the
    redirect's connection only; the next hop's, opened after it, trickled for hours."""
    from peers import redirecting_port, trickling_port

    ended: list[BaseException] = []

    def push_folder(url: str) -> None:
        try:
            ensure_folder(connect(url, TOKEN, timeout=1))
        except BaseException as exc:  # (what the test looks at)
            ended.append(exc)

    with trickling_port(1.0) as target, redirecting_port(f"http://localhost:{target}/api/folders/x", 0.25) as port:
        call = threading.Thread(target=push_folder, args=(f"http://127.0.0.1:{port}",), daemon=True)
        call.start()
        call.join(15)  # its bound is 2 x timeout; the trickle would take hours
        assert not call.is_alive(), "the call was not cut"
    assert len(ended) == 1 and isinstance(ended[0], GrafanaError)
    assert ended[0].where == "no answer" and ended[0].message == "none complete within 1 s"


def test_annotate_cli(grafana, store: str, monkeypatch, capsys) -> None:
    url, state = grafana
    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    args = ["dashboards", "annotate", "--grafana-url", url, "--store", store, "--now", "2026-11-20T12:00Z",
            "--format", "json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"posted": 4, "already": 0}
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"posted": 0, "already": 4}


def test_push_and_annotate_take_token_and_folder_from_the_config(grafana, store: str, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    import yaml

    url, state = grafana
    token = tmp_path / "grafana-token"
    token.write_text(TOKEN + "\n")
    monkeypatch.delenv("ATTNMON_GRAFANA_TOKEN", raising=False)
    cfg = tmp_path / "attnmon.yaml"
    cfg.write_text(yaml.safe_dump({"store_url": store, "grafana": {
        "url": url, "token": {"file": str(token)}, "folder": "ml-monitoring"}}))
    common = ["--grafana-url", url, "--config", str(cfg), "--format", "json"]
    assert main(["dashboards", "push", "--no-datasource", *common]) == 0
    assert json.loads(capsys.readouterr().out)["folder_created"]
    assert set(state.folders) == {"ml-monitoring"}
    assert {d["folderUid"] for d in state.dashboards.values()} == {"ml-monitoring"}
    assert main(["dashboards", "annotate", "--now", "2026-11-20T12:00Z", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"posted": 4, "already": 0}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in state.requests)
    # the section's token cannot be read: one line naming it, exit 2
    token.unlink()
    assert main(["dashboards", "annotate", *common]) == 2
    assert "grafana.token" in capsys.readouterr().err


@pytest.mark.parametrize(("section", "message"), [
    ({"url": "grafana:3000"}, "grafana.url='grafana:3000': not an http(s) URL"),
    ({"url": "http://g", "token": {"env": "A", "file": "b"}}, "give exactly one of env or file"),
    ({"url": "http://g", "annotate_every_s": 0}, "grafana.annotate_every_s=0: must be > 0"),
    ({"url": "http://g", "folder": "x" * 41}, "grafana.folder"),
    ({"url": "http://g", "interval": 60}, "grafana.interval=60: unknown key"),
    ({}, "grafana.url"),
])
def test_grafana_section_is_validated(section: dict, message: str, clean_env: Path) -> None:
    from monitor.config import Config, load_config
    from monitor.errors import ConfigError

    assert Config().grafana is None  # absent: no annotate job
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {}, overrides={f"grafana.{k}": v for k, v in section.items()} or {"grafana": {}})


def test_annotate_and_push_go_where_the_config_says(grafana, store: str, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    """With a grafana: section, `attnmon dashboards annotate` posts where the daemon's job
    does: its URL when --grafana-url is left out, and its dashboard_uid. Posted
    organisation-wide instead, a catch-up run after the daemon was down sent every event
    of the week a second time (the record of what was posted is per target)."""
    import yaml

    from monitor.config import load_config

    url, state = grafana
    monkeypatch.setenv("ATTNMON_GRAFANA_TOKEN", TOKEN)
    push(connect(url, TOKEN), dashboards())
    cfg = tmp_path / "attnmon.yaml"
    cfg.write_text(yaml.safe_dump({"store_url": store, "grafana": {"url": url, "dashboard_uid": "attnmon-overview"}}))
    now = T0 + timedelta(hours=4)
    # the daemon's job posts the week's events...
    config = load_config(str(cfg), {})
    engine = make_engine(store)
    annotate(engine, connect(url, TOKEN), since=now - timedelta(days=7), grafana_url=config.grafana.url,
             dashboard_uid=config.grafana.dashboard_uid, now=now)
    assert len(state.annotations) == 4
    # ...and a catch-up by hand posts nothing twice, with or without --grafana-url
    common = ["--config", str(cfg), "--now", "2026-11-20T12:00Z", "--format", "json"]
    assert main(["dashboards", "annotate", "--grafana-url", url + "/", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"posted": 0, "already": 4}
    with engine.begin() as conn:
        conn.execute(tables.deployments.insert().values(
            model="rec", version="v3", first_seen=now, deployed_at=now, source="collector"))
    engine.dispose()
    assert main(["dashboards", "annotate", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"posted": 1, "already": 4}
    assert [a.get("dashboardUID") for a in state.annotations] == ["attnmon-overview"] * 5
    # push takes the URL from the section too; without a section it must be given
    state.requests.clear()
    assert main(["dashboards", "push", "--no-datasource", "--config", str(cfg)]) == 0
    assert state.calls("GET", "/api/folders/attnmon")
    capsys.readouterr()
    cfg.write_text(yaml.safe_dump({"store_url": store}))
    assert main(["dashboards", "annotate", "--config", str(cfg)]) == 2
    assert "--grafana-url" in capsys.readouterr().err


class _SignInProxy(BaseHTTPRequestHandler):
    """A proxy in front of Grafana (oauth2-proxy, say) that sends an API call without its
    cookie to its sign-in page: a 302, then a 200 HTML page."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/oauth2/"):
            page = b"<!doctype html><html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        self.send_response(302)
        self.send_header("Location", "/oauth2/sign_in")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer


def test_a_sign_in_page_instead_of_grafana_is_one_clear_error(store: str) -> None:
    # the HTML page came back as a string: push took it for an existing folder, then
    # crashed on the dashboard's answer (AttributeError), as annotate did
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SignInProxy)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(GrafanaError, match="get folder.*not JSON") as err:
            push(connect(url, TOKEN), dashboards())
        assert "\n" not in str(err.value) and TOKEN not in str(err.value)
        engine = make_engine(store)
        with pytest.raises(GrafanaError, match="post annotation.*not JSON"):
            annotate(engine, connect(url, TOKEN), since=T0 - timedelta(days=1), grafana_url=url)
        with engine.connect() as conn:  # nothing recorded as posted
            assert conn.execute(select(tables.daemon_state.c.key).where(
                tables.daemon_state.c.key.like(KEY_PREFIX + "%"))).first() is None
        engine.dispose()
    finally:
        server.shutdown()
        server.server_close()


class _CatchAll(BaseHTTPRequestHandler):
    """A proxy's catch-all in front of Grafana (nginx's `return 200;`): an empty 200 of
    the default type, application/octet-stream."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer


def test_an_answer_that_is_not_json_is_named_as_such_not_as_cut_off() -> None:
    # grafana-client's JSONDecodeError was taken for a transport error: "(no answer): the
    # answer broke off", which sends the operator to the network, not the proxy
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CatchAll)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(GrafanaError, match=r"get folder failed \(HTTP 200\): the answer was not JSON") as err:
            push(connect(f"http://127.0.0.1:{server.server_address[1]}", TOKEN), dashboards())
        assert not err.value.fatal and err.value.connected
    finally:
        server.shutdown()
        server.server_close()
