"""The local host as a real service: hostile requests get a clear 4xx (never a dead handler), names from
requests and admin commands never reach outside their folder, and `host stop` only stops a host."""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from competition.host import server as host_server
from competition.host.__main__ import main as host_main
from competition.host.server import serve_in_thread
from competition.host.store import HostStore
from competition.paths import REPO_ROOT
from tests.conftest import write_course_competition

RPC = "/api/v1/competitions.CompetitionApiService/"


def _basic(host) -> str:
    creds = host.store.credentials()
    return "Basic " + base64.b64encode(f"{creds['username']}:{creds['key']}".encode()).decode()


def request(host, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            content_length: bool = True) -> tuple[int, dict]:
    """One request with full control over its headers; returns (status, JSON body or {})."""
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=20)
    connection.putrequest(method, path, skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    if body is not None and content_length:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    try:
        return response.status, json.loads(data) if data else {}
    except ValueError:
        return response.status, {"raw": data[:200]}


def rpc(host, method: str, payload, auth: str | None = "valid") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if auth == "valid":
        headers["Authorization"] = _basic(host)
    elif auth is not None:
        headers["Authorization"] = auth
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(host, "POST", RPC + method, body, headers)


def host_still_serves(host) -> None:
    status, body = rpc(host, "ListCompetitions", {})
    assert status == 200 and any(c["ref"].endswith("/competitions/digits") for c in body["competitions"]), (status, body)


# --- bodies ---------------------------------------------------------------------------------------


def test_post_without_content_length_is_411(host):
    status, body = request(host, "POST", RPC + "ListCompetitions", b"", {"Authorization": _basic(host)},
                           content_length=False)
    assert status == 411 and "needs a Content-Length" in body["message"]
    host_still_serves(host)


@pytest.mark.parametrize("value, status, phrase", [
    ("abc", 400, "is not a byte count"),
    ("-5", 400, "is not a byte count"),
    ("99999999999999999999999", 400, "is not a byte count"),
    (str(50 << 20), 413, "over this path's limit"),
])
def test_bad_or_oversized_content_length_is_refused_before_reading(host, value, status, phrase):
    # No body follows: a server that tried to read it would hang until the client gave up.
    started = time.monotonic()
    got, body = request(host, "POST", RPC + "ListCompetitions", b"",
                        {"Authorization": _basic(host), "Content-Length": value}, content_length=False)
    assert (got, phrase in body["message"]) == (status, True), body
    assert time.monotonic() - started < 5
    host_still_serves(host)


def test_chunked_body_is_refused(host):
    got, body = request(host, "POST", RPC + "ListCompetitions", b"2\r\n{}\r\n0\r\n\r\n",
                        {"Authorization": _basic(host), "Transfer-Encoding": "chunked"}, content_length=False)
    assert got == 411 and "Transfer-Encoding" in body["message"]
    host_still_serves(host)


def test_upload_over_the_size_cap_is_refused_on_the_put_path(host):
    status, started = rpc(host, "StartSubmissionUpload", {"competitionName": "digits", "fileName": "s.csv",
                                                          "contentLength": 100})
    assert status == 200
    token = started["token"]
    got, body = request(host, "PUT", f"/upload/{token}", b"", {"Content-Length": str(65 << 20)}, content_length=False)
    assert got == 413 and "limit" in body["message"]
    got, body = request(host, "PUT", f"/upload/{token}", b"x" * 101)
    assert got == 400 and "larger than the 100 bytes announced" in body["message"]
    status, body = rpc(host, "StartSubmissionUpload", {"competitionName": "digits", "fileName": "s.csv",
                                                       "contentLength": 70 << 20})
    assert status == 400 and "the limit is" in body["message"]
    host_still_serves(host)


@pytest.mark.parametrize("payload, phrase", [
    (b"not json", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b'"a string"', "must be a JSON object"),
])
def test_malformed_rpc_bodies_are_400(host, payload, phrase):
    status, body = rpc(host, "ListCompetitions", payload)
    assert status == 400 and phrase in body["message"]
    host_still_serves(host)


@pytest.mark.parametrize("payload, phrase", [
    ({"competitionName": 5}, "field 'competitionName' must be a non-empty string"),
    ({}, "field 'competitionName' must be a non-empty string"),
    ({"competitionName": "../../etc"}, "is not a competition slug"),
    ({"competitionName": "digits/../../x"}, "is not a competition slug"),
    ({"competitionName": "Digits"}, "is not a competition slug"),
    ({"competitionName": "a" * 300}, "is not a competition slug"),
])
def test_bad_competition_names_are_400_and_touch_no_path(host, payload, phrase):
    status, body = rpc(host, "ListDataFiles", payload)
    assert status == 400 and phrase in body["message"], body
    assert not (host.root / "etc").exists() and not (host.root.parent / "etc").exists()
    host_still_serves(host)


@pytest.mark.parametrize("name", ["../solution.csv", "/etc/passwd", "train/../../solution.csv", "a\\b.csv"])
def test_data_file_names_cannot_leave_the_data_folder(host, name):
    status, body = rpc(host, "DownloadDataFile", {"competitionName": "digits", "fileName": name})
    assert status in (400, 404) and "solution" not in json.dumps(body).replace(name, "")
    got, _ = request(host, "GET", "/files/digits/data/..%2Fsolution.csv", headers={"Authorization": _basic(host)})
    assert got == 404
    host_still_serves(host)


@pytest.mark.parametrize("paging", [{"pageSize": "abc"}, {"pageToken": "x", "page": "y"}])
def test_bad_paging_fields_are_400(host, paging):
    status, body = rpc(host, "ListCompetitions", paging)
    assert status == 400 and "Bad request to ListCompetitions" in body["message"]


# --- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"\xff\xfe:\x80").decode(),  # not UTF-8 inside
    "Basic " + base64.b64encode(b"no-colon-at-all").decode(),
    "Bearer caf\u00e9-token",  # non-ASCII bearer: must not crash hmac.compare_digest
    "Bearer ",
    "Digest username=x",
])
def test_malformed_or_non_ascii_auth_is_401(host, header):
    status, body = rpc(host, "ListCompetitions", {}, auth=header)
    assert status == 401 and "credentials" in body["message"]
    host_still_serves(host)


def test_introspect_with_non_ascii_token_is_inactive(host):
    status, body = request(host, "POST", "/api/v1/security.OAuthService/IntrospectToken",
                           json.dumps({"token": "t\u00f6ken"}).encode(), {"Content-Type": "application/json"})
    assert status == 200 and body["active"] is False


def test_credentials_are_created_with_mode_600(tmp_path):
    store = HostStore(tmp_path / "fresh-host")
    store.credentials()
    for path in (store.root / "credentials.json", store.root / "client" / "kaggle.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --- connections ----------------------------------------------------------------------------------


def test_silent_connection_is_dropped_after_the_timeout(host, monkeypatch):
    monkeypatch.setattr(host_server.KaggleHostHandler, "timeout", 1)
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(b"POST " + RPC.encode() + b"ListCompetitions HTTP/1.1\r\nHost: x\r\n")  # never finishes
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server gave up on it and closed the connection
        assert time.monotonic() - started < 8
    host_still_serves(host)


def test_connections_beyond_the_cap_get_503_not_a_thread(host, monkeypatch):
    monkeypatch.setattr(host_server, "MAX_CONNECTIONS", 2)
    capped, _ = serve_in_thread(host.store, port=0)
    try:
        idle = [socket.create_connection(("127.0.0.1", capped.server_address[1]), timeout=10) for _ in range(2)]
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", capped.server_address[1]), timeout=10) as third:
            reply = third.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        for sock in idle:
            sock.close()
    finally:
        capped.shutdown()
        capped.server_close()


def test_unexpected_handler_error_is_a_json_500_and_the_host_lives_on(host, monkeypatch):
    def broken(self, request, user):
        raise ZeroDivisionError("boom")

    limits = host_server.KaggleHostHandler.rpc_GetSubmissionLimits
    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_GetSubmissionLimits", broken)
    status, body = rpc(host, "GetSubmissionLimits", {"competitionName": "digits"})
    assert status == 500 and "ZeroDivisionError" in body["message"] and "server.log" in body["message"]
    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_GetSubmissionLimits", limits)
    host_still_serves(host)


# --- admin commands -------------------------------------------------------------------------------


def _add(root, folder, capsys) -> tuple[int, str]:
    status = host_main(["--root", str(root), "add", str(folder)])
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize("slug", ["../outside", "..", "a/b", "", "UPPER", "-leading"])
def test_add_with_a_bad_slug_is_refused_and_deletes_nothing(tmp_path, capsys, slug):
    root = tmp_path / "host"
    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    write_course_competition(tmp_path / "course", "placeholder")
    meta_path = tmp_path / "course" / "competition.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "slug": slug}))
    status, err = _add(root, tmp_path / "course", capsys)
    assert status == 2 and err.startswith("error: ") and "competition.json: key 'slug'" in err and "\n" not in err
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (root / "competitions").exists() or not any((root / "competitions").iterdir())


@pytest.mark.parametrize("mutation, phrase", [
    ("not-utf8", "not UTF-8 text"),
    ("not-json", "not valid JSON"),
    ("labels-one", "key 'labels' must list at least two labels"),
    ("limit-bad", "key 'max_daily_submissions'"),
    ("metric-bad", "key 'metric': unknown metric 'rmse'"),
    ("symlink", "a symbolic link"),
    ("solution-bad", "solution.csv row 2: Usage must be Public or Private"),
])
def test_add_refuses_a_broken_competition_folder_in_one_line(tmp_path, capsys, mutation, phrase):
    folder = tmp_path / "course"
    write_course_competition(folder, "broken-course")
    meta_path = folder / "competition.json"
    meta = json.loads(meta_path.read_text())
    if mutation == "not-utf8":
        meta_path.write_bytes(b'{"slug": "broken-course", "title": "\xff\xfe"}')
    elif mutation == "not-json":
        meta_path.write_text("{slug: broken")
    elif mutation == "labels-one":
        meta_path.write_text(json.dumps({**meta, "labels": ["a"]}))
    elif mutation == "limit-bad":
        meta_path.write_text(json.dumps({**meta, "max_daily_submissions": "many"}))
    elif mutation == "metric-bad":
        meta_path.write_text(json.dumps({**meta, "metric": "rmse"}))
    elif mutation == "symlink":
        (folder / "data" / "leak.txt").symlink_to("/etc/hostname")
    elif mutation == "solution-bad":
        (folder / "solution.csv").write_text("id,label,Usage\nt0,a,Maybe\n")
    status, err = _add(tmp_path / "host", folder, capsys)
    assert status == 2 and phrase in err and "\n" not in err, err
    assert not (tmp_path / "host" / "competitions" / "broken-course").exists()


def test_host_stop_refuses_a_pid_that_is_not_a_host(tmp_path, capsys):
    root = tmp_path / "host"
    root.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / "server.pid").write_text(f"{bystander.pid}\n")
        assert host_main(["--root", str(root), "stop"]) == 0
        assert "no host is running" in capsys.readouterr().out
        time.sleep(0.2)
        assert bystander.poll() is None, "host stop signalled a process that is not the host"
        assert not (root / "server.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_host_stop_stops_a_real_host(tmp_path, capsys):
    root = tmp_path / "host"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "competition.host", "--root", str(root), "serve", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (root / "server.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert host_main(["--root", str(root), "stop"]) == 0
        assert f"stopped the local host (pid {process.pid})" in capsys.readouterr().out
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- set-up -----------------------------------------------------------------------------------------


def test_missing_debian_packages_without_root_are_one_line_with_the_command():
    """Without root or sudo, the set-up step names what is missing and how to install it, and stops.

    As root, run as `nobody` with the system's python3 (the step is standard library only, as the Makefile
    runs it), from a copy of the module in a folder that user can read."""
    import shutil
    import tempfile

    if os.geteuid() == 0:
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None:
            pytest.skip("no system python3 for the `nobody` user")
        as_user = ["runuser", "-u", "nobody", "--", python]
    else:
        if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
            pytest.skip("this user has password-less sudo: the step would install the package instead")
        as_user = [sys.executable]
    folder = Path(tempfile.mkdtemp(prefix="kpipe-setup-"))
    try:
        folder.chmod(0o755)
        shutil.copy(REPO_ROOT / "pipelines" / "tools" / "system_packages.py", folder / "system_packages.py")
        script = ("import sys; sys.path.insert(0, sys.argv[1]); import system_packages as setup; "
                  "setup.CHECKS['run'][1] = ('dataset-fashion-mnist', 'the local host', lambda: False); "
                  "sys.exit(setup.main(['run']))")
        result = subprocess.run([*as_user, "-c", script, str(folder)], cwd=folder, capture_output=True, text=True,
                                timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert result.returncode == 2, result.stderr
    assert "setup: dataset-fashion-mnist is missing (the local host)" in result.stdout
    assert result.stderr.strip() == ("error: missing Debian packages dataset-fashion-mnist; install them (root needed) "
                                     "with: sudo apt-get install -y dataset-fashion-mnist")
