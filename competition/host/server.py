"""A loopback HTTP server that speaks the Kaggle API as the unmodified `kaggle` client (2.2.x) calls it.

RPCs are `POST /api/v1/<Service>/<Method>` with JSON bodies (see ../shared/kaggle-protocol.md).
Besides the RPCs it serves two plain paths: `GET /files/...` (the data zip and single files the
download RPCs redirect to) and `PUT /upload/<token>` (the submission bytes).
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import mimetypes
import threading
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from competition.host import builders
from competition.host.scoring import SubmissionRejected
from competition.host.store import HostStore, LimitReached, NotFound, iso

log = logging.getLogger("competition.host")

COMPETITIONS = "competitions.CompetitionApiService"
SECURITY = "security.OAuthService"


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _page(items: list, request: dict, default_size: int = 20) -> tuple[list, str]:
    """Offset paging: the page token is the offset of the next page as text ("" when there is none)."""
    size = int(request.get("pageSize") or default_size)
    token = request.get("pageToken") or ""
    start = int(token) if token.isdigit() else max(int(request.get("page") or 1) - 1, 0) * size
    chunk = items[start:start + size]
    return chunk, (str(start + size) if start + size < len(items) else "")


def _score_text(value) -> str | None:
    return None if value is None else f"{value:.5f}"


def _submission_json(sub: dict) -> dict:
    return {
        "ref": sub["ref"], "fileName": sub["file_name"], "date": sub["date"], "description": sub["description"],
        "status": sub["status"], "publicScore": _score_text(sub["public_score"]),
        "privateScore": _score_text(sub["private_score"]), "errorDescription": sub["error_description"],
        "totalBytes": sub["total_bytes"], "submittedBy": sub["team"], "teamName": sub["team"],
    }


class KaggleHostHandler(BaseHTTPRequestHandler):
    server_version = "kpipe-local-kaggle/1"
    protocol_version = "HTTP/1.1"
    store: HostStore  # set on the subclass made by make_server

    # --- plumbing ------------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # route through logging; never prints headers (credentials)
        log.info("%s %s", self.address_string(), fmt % args)

    def _path(self) -> str:
        # Behind HTTP_PROXY the request line carries a full URL; keep only its path.
        return urlsplit(self.path).path if "://" in self.path else self.path.split("?", 1)[0]

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send_error(self, code: int, message: str) -> None:
        # The client raises HTTPError(message) for a JSON body whose integer `code` is >= 400.
        self._send_json({"code": code, "message": message}, status=code)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authenticated_user(self) -> str | None:
        creds = self.store.credentials()
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            if user == creds["username"] and hmac.compare_digest(key, creds["key"]):
                return user
        elif header.startswith("Bearer "):
            if hmac.compare_digest(header[7:], creds["token"]):
                return creds["username"]
        return None

    def _guard_loopback(self) -> bool:
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            self._send_error(403, "This host only serves loopback clients")
            return False
        return True

    # --- HTTP verbs ----------------------------------------------------------------------------

    def do_POST(self):
        if not self._guard_loopback():
            return
        path = self._path()
        body = self._read_body()
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["api", "v1"]:
            return self._send_error(404, f"No such endpoint: {path}")
        service, method = parts[2], parts[3]
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return self._send_error(400, "Request body is not JSON")
        try:
            if (service, method) == (SECURITY, "IntrospectToken"):
                return self._introspect(request)
            user = self._authenticated_user()
            if user is None:
                return self._send_error(401, "Missing or wrong credentials for the local Kaggle host")
            handler = getattr(self, f"rpc_{method}", None) if service == COMPETITIONS else None
            if handler is None:
                return self._send_error(404, f"The local host does not implement {service}/{method}")
            handler(request, user)
        except SubmissionRejected as exc:
            self._send_error(400, str(exc))
        except LimitReached as exc:
            self._send_error(429, str(exc))
        except NotFound as exc:
            self._send_error(404, str(exc))
        except builders.BuildError as exc:
            self._send_error(503, str(exc))
        except (KeyError, ValueError, TypeError) as exc:
            self._send_error(400, f"Bad request to {method}: {exc}")

    def do_GET(self):
        if not self._guard_loopback():
            return
        path = self._path()
        if self._authenticated_user() is None:
            return self._send_error(401, "Missing or wrong credentials for the local Kaggle host")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            if len(parts) == 3 and parts[0] == "files" and parts[2] == f"{parts[1]}.zip":
                return self._send_file(self.store.data_zip(parts[1]), "application/zip")
            if len(parts) >= 4 and parts[0] == "files" and parts[2] == "data":
                path = self.store.data_file(parts[1], "/".join(parts[3:]))
                return self._send_file(path, mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "leaderboard.zip":
                return self._send(200, self._leaderboard_zip(parts[1]), "application/zip")
        except NotFound as exc:
            return self._send_error(404, str(exc))
        except builders.BuildError as exc:
            return self._send_error(503, str(exc))
        self._send_error(404, f"No such file: {path}")

    def do_HEAD(self):
        self.do_GET()

    def do_PUT(self):
        if not self._guard_loopback():
            return
        parts = self._path().strip("/").split("/")
        if len(parts) != 2 or parts[0] != "upload":
            return self._send_error(404, "No such upload URL")
        try:
            self.store.receive_upload(parts[1], self._read_body())
        except NotFound as exc:
            return self._send_error(404, str(exc))
        self._send_json({}, status=200)

    def _send_file(self, path: Path, content_type: str) -> None:
        # Streams the file; never application/json, or the client would try to parse it.
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                self.wfile.write(chunk)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # --- RPCs ----------------------------------------------------------------------------------

    def _introspect(self, request: dict) -> None:
        creds = self.store.credentials()
        active = hmac.compare_digest(str(request.get("token", "")), creds["token"])
        self._send_json({"active": active, "username": creds["username"] if active else ""})

    def rpc_ListCompetitions(self, request: dict, user: str) -> None:
        search = (request.get("search") or "").lower()
        metas = [self.store.meta(s) for s in self.store.slugs()]
        metas = [m for m in metas if search in m["slug"].lower() or search in m["title"].lower()]
        page, next_token = _page(metas, request)
        competitions = []
        for number, meta in enumerate(page, start=1):
            teams = {s["team"] for s in self.store.submissions(meta["slug"])}
            competitions.append({
                "id": number, "ref": meta["slug"], "title": meta["title"],
                "url": f"http://localhost/competitions/{meta['slug']}", "description": meta.get("description", ""),
                "deadline": meta["deadline"] + ".000Z" if "." not in meta["deadline"] else meta["deadline"],
                "category": meta["category"], "reward": "Knowledge", "teamCount": len(teams),
                "userHasEntered": user in teams, "maxDailySubmissions": meta["max_daily_submissions"],
                "evaluationMetric": meta["metric"], "tags": [],
            })
        self._send_json({"competitions": competitions, "nextPageToken": next_token})

    def rpc_ListDataFiles(self, request: dict, user: str) -> None:
        slug = request["competitionName"]
        data_dir = self.store.competition_dir(slug) / "data"
        files = [{"name": p.relative_to(data_dir).as_posix(), "totalBytes": p.stat().st_size,
                  "creationDate": iso(datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).replace(tzinfo=None))}
                 for p in self.store.data_files(slug)]
        page, next_token = _page(files, request)
        self._send_json({"files": page, "nextPageToken": next_token})

    def rpc_DownloadDataFiles(self, request: dict, user: str) -> None:
        slug = request["competitionName"]
        self.store.data_zip(slug)  # build before redirecting, so the GET is fast and errors surface here
        self._redirect(f"/files/{quote(slug)}/{quote(slug)}.zip")

    def rpc_DownloadDataFile(self, request: dict, user: str) -> None:
        slug, name = request["competitionName"], request["fileName"]
        self.store.data_file(slug, name)
        self._redirect(f"/files/{quote(slug)}/data/{quote(name)}")

    def rpc_StartSubmissionUpload(self, request: dict, user: str) -> None:
        slug = request["competitionName"]
        token = self.store.start_upload(slug, request.get("fileName") or "submission.csv", int(request.get("contentLength") or 0))
        host = self.headers.get("Host", "localhost")
        self._send_json({"token": token, "createUrl": f"http://{host}/upload/{token}"})

    def rpc_CreateSubmission(self, request: dict, user: str) -> None:
        slug = request["competitionName"]
        ref = self.store.create_submission(slug, user, request.get("blobFileTokens") or "", request.get("submissionDescription") or "")
        title = self.store.meta(slug)["title"]
        self._send_json({"message": f"Successfully submitted to {title}", "ref": ref})

    def rpc_GetSubmission(self, request: dict, user: str) -> None:
        found = self.store.submissions(team=user, ref=int(request["ref"]))
        if not found:
            raise NotFound(f"No submission {request['ref']}")
        self._send_json(_submission_json(found[0]))

    def rpc_ListSubmissions(self, request: dict, user: str) -> None:
        subs = [_submission_json(s) for s in self.store.submissions(request["competitionName"], team=user)]
        page, next_token = _page(subs, request)
        self._send_json({"submissions": page, "nextPageToken": next_token})

    def _leaderboard_rows(self, slug: str) -> list[dict]:
        return [{"teamId": number, "teamName": sub["team"], "submissionDate": sub["date"], "score": _score_text(sub["public_score"])}
                for number, sub in enumerate(self.store.leaderboard(slug), start=1)]

    def rpc_GetLeaderboard(self, request: dict, user: str) -> None:
        self.store.meta(request["competitionName"])
        page, next_token = _page(self._leaderboard_rows(request["competitionName"]), request)
        self._send_json({"submissions": page, "nextPageToken": next_token})

    def _leaderboard_zip(self, slug: str) -> bytes:
        import io
        import zipfile

        self.store.meta(slug)
        lines = ["TeamId,TeamName,SubmissionDate,Score"] + [
            f"{r['teamId']},{r['teamName']},{r['submissionDate']},{r['score']}" for r in self._leaderboard_rows(slug)]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr(f"{slug}-publicleaderboard.csv", "\n".join(lines) + "\n")
        return buffer.getvalue()

    def rpc_DownloadLeaderboard(self, request: dict, user: str) -> None:
        slug = request["competitionName"]
        self._send(200, self._leaderboard_zip(slug), "application/zip",
                   {"Last-Modified": formatdate(usegmt=True)})

    def rpc_GetSubmissionLimits(self, request: dict, user: str) -> None:
        self._send_json(self.store.limits(request["competitionName"], user))


def check_loopback(bind: str) -> None:
    try:
        is_loopback = ipaddress.ip_address(bind).is_loopback
    except ValueError:
        is_loopback = bind == "localhost"
    if not is_loopback:
        raise ValueError(f"--bind {bind}: the local host only listens on loopback (127.0.0.1 or ::1)")


def make_server(store: HostStore, port: int = 80, bind: str = "127.0.0.1") -> ThreadingHTTPServer:
    check_loopback(bind)
    store.credentials()  # create the account before the first request
    handler = type("BoundKaggleHostHandler", (KaggleHostHandler,), {"store": store})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(store: HostStore, port: int = 0, bind: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a server on a background thread (port 0 = any free port); for tests and embedding."""
    server = make_server(store, port, bind)
    thread = threading.Thread(target=server.serve_forever, name="local-kaggle-host", daemon=True)
    thread.start()
    return server, thread
