"""A loopback HTTP server that speaks the Kaggle API as the unmodified `kaggle` client (2.2.x) calls it.

RPCs are `POST /api/v1/<Service>/<Method>` with JSON bodies. Besides the RPCs it serves two plain
paths: `GET /files/...` (the data zip and single files the download RPCs redirect to) and
`PUT /upload/<token>` (the submission bytes).

Every request is untrusted, even on loopback: bodies are bounded (a missing, invalid or oversized
Content-Length is refused before anything is read), each connection has a read timeout, the number of
connections served at once is capped, malformed credentials are a plain 401, every slug, token and file
name is checked before it touches a path, and any unexpected error becomes a JSON 500 in the log instead
of a dead handler thread.

It stays on the standard library's `http.server`: the client sends proxied requests with an absolute URL
in the request line and follows 302s to file paths, and here each of those is one visible line.
"""
from __future__ import annotations

import base64
import binascii
import functools
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

from competition import disk, metrics
from competition.host import builders, code_api
from competition.host.code_store import CodeHost
from competition.host.paging import page_of
from competition.host.scoring import SubmissionRejected
from competition.host.store import (MAX_UPLOAD_BYTES, HostBusy, HostStore, InvalidName, LimitReached, NotFound,
                                    is_benchmark, iso)

log = logging.getLogger("competition.host")

COMPETITIONS = "competitions.CompetitionApiService"
SECURITY = "security.OAuthService"
MAX_RPC_BODY_BYTES = 1 << 20  # RPC requests are small JSON objects
CONNECTION_TIMEOUT_S = 30  # a client silent this long mid-request is dropped
MAX_CONNECTIONS = 32  # served at once; more get a 503 instead of another thread


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def kaggle_metric_name(value) -> str:
    """competition.json's metric as kaggle.com names it in `evaluationMetric` ('Categorization Accuracy')."""
    return metrics.bound(value).kaggle_name


def _score_text(value) -> str | None:
    return None if value is None else f"{value:.5f}"


def _submission_json(sub: dict, closed: bool) -> dict:
    """One submission as the client reads it; the private score only once the competition has `closed`
    (kaggle.com hides it until the deadline: seeing it would let one tune to the private split)."""
    answer = {
        "ref": sub["ref"], "fileName": sub["file_name"], "date": sub["date"], "description": sub["description"],
        "status": sub["status"], "errorDescription": sub["error_description"],
        "publicScore": _score_text(sub["public_score"]) if sub["status"] == "COMPLETE" else None,  # none while pending
        "totalBytes": sub["total_bytes"], "submittedBy": sub.get("submitter") or sub["team"], "teamName": sub["team"],
    }
    if closed:
        answer["privateScore"] = _score_text(sub["private_score"])
    return answer


def _text_field(request: dict, key: str, required: bool = True) -> str:
    value = request.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise ValueError(f"field '{key}' must be a non-empty string")
    return value


# `kaggle competitions list --category`: the request's enum name -> competition.json's `category`.
CATEGORIES = {"HOST_SEGMENT_FEATURED": "Featured", "HOST_SEGMENT_RESEARCH": "Research",
              "HOST_SEGMENT_RECRUITMENT": "Recruitment", "HOST_SEGMENT_GETTING_STARTED": "Getting Started",
              "HOST_SEGMENT_MASTERS": "Masters", "HOST_SEGMENT_PLAYGROUND": "Playground",
              "HOST_SEGMENT_COMMUNITY": "Community", "HOST_SEGMENT_ANALYTICS": "Analytics"}


def _in_group(group: str, meta: dict, teams: set, user: str, team: str, store: HostStore) -> bool:
    """`--group`: general (the default tab: still running), entered, community, hosted (added by this
    account), unlaunched (none here); the client sends EVERYTHING when no group is given."""
    if group in ("", "COMPETITION_LIST_TAB_GENERAL"):
        return not store.closed(meta["slug"])
    if group == "COMPETITION_LIST_TAB_ENTERED":
        return team in teams
    if group == "COMPETITION_LIST_TAB_COMMUNITY":
        return meta["category"] == "Community"
    if group == "COMPETITION_LIST_TAB_HOSTED":
        return meta.get("hosted_by") == user
    return group == "COMPETITION_LIST_TAB_EVERYTHING"


def _in_category(category: str, meta: dict) -> bool:
    return category in ("", "HOST_SEGMENT_UNSPECIFIED") or CATEGORIES.get(category) == meta["category"]


def _sorted_competitions(sort_by: str, rows: list[tuple[dict, set]]) -> list[tuple[dict, set]]:
    """`--sort-by`: deadlines, team counts, creation; best, relevance, grouped and prize (all Knowledge here)
    keep the host's order (by slug)."""
    keys = {"COMPETITION_SORT_BY_EARLIEST_DEADLINE": (lambda r: r[0]["deadline"], False),
            "COMPETITION_SORT_BY_LATEST_DEADLINE": (lambda r: r[0]["deadline"], True),
            "COMPETITION_SORT_BY_NUMBER_OF_TEAMS": (lambda r: len(r[1]), True),
            "COMPETITION_SORT_BY_RECENTLY_CREATED": (lambda r: r[0].get("created", ""), True)}
    if sort_by not in keys:
        return rows
    key, reverse = keys[sort_by]
    return sorted(rows, key=key, reverse=reverse)


class KaggleHostHandler(BaseHTTPRequestHandler):
    server_version = "kpipe-local-kaggle/1"
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S  # socket timeout for every read of this connection
    store: HostStore  # set on the subclass made by make_server
    code: CodeHost  # datasets and kernels, beside the store

    # --- plumbing ------------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # route through logging; never prints headers (credentials)
        log.info("%s %s", self.address_string(), fmt % args)

    def _path(self) -> str:
        # Behind HTTP_PROXY the request line carries a full URL; keep only its path.
        try:
            return urlsplit(self.path).path if "://" in self.path else self.path.split("?", 1)[0]
        except ValueError:  # e.g. an unbalanced '[' in the host part
            return "/"

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

    def _refuse(self, code: int, message: str) -> None:
        """Answer before reading the body, and close: unread body bytes must not be taken for a request."""
        self.close_connection = True
        self._send(code, json.dumps({"code": code, "message": message}).encode(), "application/json",
                   {"Connection": "close"})

    def _read_body(self, limit: int) -> bytes | None:
        """The request body, or None after a refusal was sent: bodies need a valid Content-Length <= limit."""
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "Send the body with a Content-Length; Transfer-Encoding is not supported here")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command == "PUT" or self.command == "POST":
                self._refuse(411, f"{self.command} {self._path()[:200]} needs a Content-Length header")
                return None
            return b""
        if not raw.strip().isdigit() or len(raw.strip()) > 18:
            self._refuse(400, f"Content-Length {raw[:40]!r} is not a byte count")
            return None
        length = int(raw)
        if length > limit:
            self._refuse(413, f"Request body of {length} bytes is over this path's limit of {limit} bytes")
            return None
        try:
            body = self.rfile.read(length) if length else b""
        except (TimeoutError, OSError):
            self.close_connection = True
            return None
        if len(body) != length:  # the client went away mid-body
            self.close_connection = True
            return None
        return body

    def _authenticated_user(self) -> str | None:
        """The account name for valid credentials; None for missing, wrong or malformed ones (never raises).
        Every account is compared in full, so the time taken does not tell which names exist."""
        header = self.headers.get("Authorization", "")
        found = None
        try:
            if header.startswith("Basic "):
                user, _, key = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
                for account in self.store.accounts():
                    if hmac.compare_digest(user.encode(), account["username"].encode()) & \
                            hmac.compare_digest(key.encode(), account["key"].encode()):
                        found = account["username"]
            elif header.startswith("Bearer "):
                token = header[7:].encode("utf-8", "surrogateescape")
                for account in self.store.accounts():
                    if hmac.compare_digest(token, account["token"].encode()):
                        found = account["username"]
        except (ValueError, binascii.Error, UnicodeError):
            return None
        return found

    def _guard_loopback(self) -> bool:
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            self._refuse(403, "This host only serves loopback clients")
            return False
        return True

    # --- HTTP verbs ----------------------------------------------------------------------------

    def _guarded(self, handle) -> None:
        """Run one verb's handler; an unexpected error is logged and answered with a JSON 500, so a bad
        request can never kill the handler thread or leave the client waiting."""
        try:
            if self._guard_loopback():
                handle()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - the last line of defence, by design
            refused = disk.refusal(exc, self.store.root)
            if refused:
                log.error("%s %s: %s", self.command, self._path()[:200], disk.describe(refused, self.store.root))
            else:
                log.exception("unexpected error in %s %s", self.command, self._path()[:200])
            self.close_connection = True
            try:
                if refused:  # 507 Insufficient Storage: the request was fine, the host's disk is not
                    self._send_error(507, "The local host cannot store this now: its disk is full or over a limit "
                                          "(see its server.log); try again once it has room")
                else:
                    self._send_error(500, f"The local host failed on this request ({type(exc).__name__}); see its server.log")
            except OSError:
                pass

    def do_POST(self):
        self._guarded(self._post)

    def do_GET(self):
        self._guarded(self._get)

    def do_HEAD(self):
        self._guarded(self._get)

    def do_PUT(self):
        self._guarded(self._put)

    def _post(self):
        path = self._path()
        body = self._read_body(MAX_RPC_BODY_BYTES)
        if body is None:
            return
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["api", "v1"]:
            return self._send_error(404, f"No such endpoint: {path[:200]}")
        service, method = parts[2], parts[3]
        try:
            request = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._send_error(400, "Request body is not JSON")
        if not isinstance(request, dict):
            return self._send_error(400, "Request body must be a JSON object")
        try:
            if (service, method) == (SECURITY, "IntrospectToken"):
                return self._introspect(request)
            user = self._authenticated_user()
            if user is None:
                return self._send_error(401, "Missing or wrong credentials for the local Kaggle host")
            handler = getattr(self, f"rpc_{method}", None) if service == COMPETITIONS else None
            if handler is None and (service, method) in code_api.RPCS:
                handler = functools.partial(code_api.RPCS[(service, method)], self)
            if handler is None:
                # 405: the client adds no hint of its own to it. To a 404 it adds "check the spelling of the
                # reference", to a 501 "a problem on Kaggle's side, try again later": both wrong here.
                return self._send_error(405, f"{service[:80]}/{method[:80]} is not implemented by the local host "
                                             "(kpipe's stand-in for kaggle.com; the README lists what it serves)")
            handler(request, user)
        except SubmissionRejected as exc:
            self._send_error(400, str(exc))
        except LimitReached as exc:
            self._send_error(400, str(exc))  # kaggle.com's status; a 429 reads "you have been rate limited"
        except HostBusy as exc:
            self._send_error(503, str(exc))
        except NotFound as exc:
            self._send_error(404, str(exc))
        except builders.BuildError as exc:
            # Not 503: the client would retry, and a missing data package does not come back by waiting.
            self._send_error(500, str(exc))
        except (InvalidName, KeyError, ValueError, TypeError) as exc:
            self._send_error(400, f"Bad request to {method}: {exc}")

    def _get(self):
        path = self._path()
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) >= 3 and parts[0] == "outputs":  # a kernel's output: the client sends no credentials
            try:
                return self._send_file(self.code.output_file(parts[1], "/".join(parts[2:])), "application/octet-stream")
            except (NotFound, InvalidName) as exc:
                return self._send_error(404, str(exc))
        user = self._authenticated_user()
        if user is None:
            return self._send_error(401, "Missing or wrong credentials for the local Kaggle host")
        try:
            if len(parts) == 6 and parts[:2] == ["files", "datasets"] and parts[5] == f"{parts[3]}.zip":
                return self._send_file(self.code.dataset_zip(parts[2], parts[3], int(parts[4])), "application/zip")
            if len(parts) == 6 and parts[:2] == ["files", "datasets"]:
                return self._send_file(self.code.dataset_file(parts[2], parts[3], int(parts[4]), parts[5]),
                                       "application/octet-stream")
            if len(parts) == 3 and parts[0] == "files" and parts[2] == f"{parts[1]}.zip":
                return self._send_file(self.store.data_zip(parts[1]), "application/zip")
            if len(parts) >= 4 and parts[0] == "files" and parts[2] == "data":
                path = self.store.data_file(parts[1], "/".join(parts[3:]))
                return self._send_file(path, mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            if len(parts) == 3 and parts[0] == "submitted":
                _, stored = self.store.submitted_file(int(parts[1]), self.store.team_of(user))
                return self._send_file(stored, "application/octet-stream")
            if len(parts) == 3 and parts[0] == "files" and parts[2] == "leaderboard.zip":
                return self._send(200, self._leaderboard_zip(parts[1]), "application/zip")
        except (NotFound, InvalidName, ValueError) as exc:
            return self._send_error(404, str(exc))
        except builders.BuildError as exc:
            return self._send_error(500, str(exc))
        self._send_error(404, f"No such file: {path[:200]}")

    def _put(self):
        parts = self._path().strip("/").split("/")
        if len(parts) != 2 or parts[0] != "upload":
            return self._refuse(404, "No such upload URL")
        if self.headers.get("Content-Range", "").startswith("bytes */"):
            # The client asking whether an earlier upload finished (its resume probe): 200 if so, else 404.
            try:
                done = self.store.upload_complete(parts[1])
            except (NotFound, InvalidName):
                done = False
            return self._send_json({}, status=200) if done else self._send_error(404, "No finished upload for this URL")
        body = self._read_body(MAX_UPLOAD_BYTES)
        if body is None:
            return
        try:
            self.store.receive_upload(parts[1], body)
        except (NotFound, InvalidName) as exc:
            return self._send_error(404, str(exc))
        except ValueError as exc:
            return self._send_error(400, str(exc))
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

    def _base_url(self) -> str:
        """http://<the Host the client asked for>, for URLs the client fetches next; a Host header that is
        not a plain host name (and port) becomes localhost, so a request cannot point the client elsewhere."""
        host = self.headers.get("Host", "localhost")
        if not all(c.isalnum() or c in ".-:[]" for c in host) or len(host) > 255:
            host = "localhost"
        return f"http://{host}"

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # --- RPCs ----------------------------------------------------------------------------------

    def _introspect(self, request: dict) -> None:
        token, username = str(request.get("token", "")).encode("utf-8", "surrogateescape"), ""
        for account in self.store.accounts():
            if hmac.compare_digest(token, account["token"].encode()):
                username = account["username"]
        self._send_json({"active": bool(username), "username": username})

    def rpc_ListCompetitions(self, request: dict, user: str) -> None:
        """`kaggle competitions list [--group G] [--category C] [--sort-by S] [-s text]`, as kaggle.com answers
        it: each `ref` is the competition's URL (the CLI shows refs; commands take the slug at its end)."""
        search, team = str(request.get("search") or "").lower(), self.store.team_of(user)
        rows = []
        for slug in self.store.slugs():
            meta = self.store.meta(slug)
            if search and search not in slug.lower() and search not in meta["title"].lower():
                continue
            teams = {s["team"] for s in self.store.submissions(slug) if not is_benchmark(s["team"])}
            rows.append((meta, teams))
        rows = [(m, t) for m, t in rows if _in_group(str(request.get("group") or ""), m, t, user, team, self.store)
                and _in_category(str(request.get("category") or ""), m)]
        rows = _sorted_competitions(str(request.get("sortBy") or ""), rows)
        page, next_token = page_of(rows, request)
        competitions = []
        for number, (meta, teams) in enumerate(page, start=1):
            url = f"{self._base_url()}/competitions/{meta['slug']}"
            competitions.append({
                "id": number, "ref": url, "title": meta["title"], "url": url,
                "description": meta.get("description", ""),
                "deadline": meta["deadline"] + ".000Z" if "." not in meta["deadline"] else meta["deadline"],
                "category": meta["category"], "reward": "Knowledge", "teamCount": len(teams),
                "userHasEntered": team in teams, "userRank": self._rank(meta["slug"], team) if team in teams else None,
                "maxDailySubmissions": meta["max_daily_submissions"],
                "evaluationMetric": kaggle_metric_name(meta.get("metric", "accuracy")), "tags": [],
                "isKernelsSubmissionsOnly": bool(meta.get("code_competition")),
            })
        self._send_json({"competitions": competitions, "nextPageToken": next_token})

    def _rank(self, slug: str, team: str) -> int | None:
        """The team's place on the leaderboard the client sees: public, private after the deadline
        (benchmarks hold places too, as on kaggle.com)."""
        board = [entry["team"] for entry in self.store.leaderboard(slug, private=self.store.closed(slug))]
        return board.index(team) + 1 if team in board else None

    def rpc_ListDataFiles(self, request: dict, user: str) -> None:
        slug = _text_field(request, "competitionName")
        data_dir = self.store.competition_dir(slug) / "data"
        files = [{"name": p.relative_to(data_dir).as_posix(), "totalBytes": p.stat().st_size,
                  "creationDate": iso(datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).replace(tzinfo=None))}
                 for p in self.store.data_files(slug)]
        page, next_token = page_of(files, request)
        self._send_json({"files": page, "nextPageToken": next_token})

    def rpc_DownloadDataFiles(self, request: dict, user: str) -> None:
        slug = _text_field(request, "competitionName")
        self.store.data_zip(slug)  # build before redirecting, so the GET is fast and errors surface here
        self._redirect(f"/files/{quote(slug)}/{quote(slug)}.zip")

    def rpc_DownloadDataFile(self, request: dict, user: str) -> None:
        slug, name = _text_field(request, "competitionName"), _text_field(request, "fileName")
        self.store.data_file(slug, name)
        self._redirect(f"/files/{quote(slug)}/data/{quote(name)}")

    def rpc_StartSubmissionUpload(self, request: dict, user: str) -> None:
        slug = _text_field(request, "competitionName")
        token = self.store.start_upload(slug, _text_field(request, "fileName", required=False) or "submission.csv",
                                        int(request.get("contentLength") or 0))
        self._send_json({"token": token, "createUrl": f"{self._base_url()}/upload/{token}"})

    def rpc_CreateSubmission(self, request: dict, user: str) -> None:
        slug = _text_field(request, "competitionName")
        ref = self.store.create_submission(slug, self.store.team_of(user), _text_field(request, "blobFileTokens"),
                                           _text_field(request, "submissionDescription", required=False)[:1000],
                                           submitter=user)
        title = self.store.meta(slug)["title"]
        self._send_json({"message": f"Successfully submitted to {title}", "ref": ref})

    def rpc_GetSubmission(self, request: dict, user: str) -> None:
        found = self.store.submissions(team=self.store.team_of(user), ref=int(request["ref"]))
        if not found:
            raise NotFound(f"No submission {request['ref']}")
        self._send_json(_submission_json(found[0], self.store.closed(found[0]["competition"])))

    def rpc_DownloadSubmission(self, request: dict, user: str) -> None:
        ref = int(request.get("submissionId") or 0)
        name, _ = self.store.submitted_file(ref, self.store.team_of(user))
        self._redirect(f"/submitted/{ref}/{quote(name)}")

    def rpc_ListSubmissions(self, request: dict, user: str) -> None:
        slug = _text_field(request, "competitionName")
        closed = self.store.closed(slug)
        subs = [_submission_json(s, closed) for s in self.store.submissions(slug, team=self.store.team_of(user))]
        page, next_token = page_of(subs, request)
        self._send_json({"submissions": page, "nextPageToken": next_token})

    def _leaderboard_rows(self, slug: str, private: bool = False) -> list[dict]:
        return [{"teamId": number, "teamName": entry["team"], "submissionDate": entry["date"],
                 "score": _score_text(entry["score"])}
                for number, entry in enumerate(self.store.leaderboard(slug, private), start=1)]

    def rpc_GetLeaderboard(self, request: dict, user: str) -> None:
        """The private leaderboard once the competition has closed, unless `overridePublic` (as kaggle.com)."""
        slug = _text_field(request, "competitionName")
        self.store.meta(slug)
        private = self.store.closed(slug) and not request.get("overridePublic")
        page, next_token = page_of(self._leaderboard_rows(slug, private), request)
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
        slug = _text_field(request, "competitionName")
        self._send(200, self._leaderboard_zip(slug), "application/zip",
                   {"Last-Modified": formatdate(usegmt=True)})

    def rpc_GetSubmissionLimits(self, request: dict, user: str) -> None:
        self._send_json(self.store.limits(_text_field(request, "competitionName"), self.store.team_of(user)))


def check_loopback(bind: str) -> None:
    try:
        is_loopback = ipaddress.ip_address(bind).is_loopback
    except ValueError:
        is_loopback = bind == "localhost"
    if not is_loopback:
        raise ValueError(f"--bind {bind}: the local host only listens on loopback (127.0.0.1 or ::1)")


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS at once; the rest get a 503 and are closed."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                body = b'{"code": 503, "message": "The local host is serving too many connections; try again"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_server(store: HostStore, port: int = 80, bind: str = "127.0.0.1") -> ThreadingHTTPServer:
    check_loopback(bind)
    store.credentials()  # create the account before the first request
    code = CodeHost(store)
    code.recover()
    handler = type("BoundKaggleHostHandler", (KaggleHostHandler,), {"store": store, "code": code})
    return BoundedThreadingHTTPServer((bind, port), handler)


def serve_in_thread(store: HostStore, port: int = 0, bind: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a server on a background thread (port 0 = any free port); for tests and embedding."""
    server = make_server(store, port, bind)
    thread = threading.Thread(target=server.serve_forever, name="local-kaggle-host", daemon=True)
    thread.start()
    return server, thread
