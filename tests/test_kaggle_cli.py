"""The unmodified `kaggle` CLI against the local host: list, files, download, submit, refusals, leaderboard."""
from __future__ import annotations

import csv
import io
import os
import socket
import zipfile

import pytest

from competition.host.server import make_server, serve_in_thread
from tests.conftest import write_course_competition


def _sample_rows(host, slug="digits") -> list[list[str]]:
    path = host.store.competition_dir(slug) / "data" / "sample_submission.csv"
    return list(csv.reader(io.StringIO(path.read_text())))


def _write(path, rows) -> str:
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return str(path)


def test_cli_lists_competitions(run_kaggle):
    result = run_kaggle("competitions", "list")
    assert result.returncode == 0, result.stderr
    for slug in ("fashion-mnist", "digits", "thu-deep-learning"):
        assert slug in result.stdout


def test_cli_lists_and_downloads_files(run_kaggle, tmp_path):
    files = run_kaggle("competitions", "files", "-c", "digits")
    assert files.returncode == 0, files.stderr
    assert "sample_submission.csv" in files.stdout

    download = run_kaggle("competitions", "download", "-c", "digits", "-p", str(tmp_path / "dl"))
    assert download.returncode == 0, download.stderr
    archive = zipfile.ZipFile(tmp_path / "dl" / "digits.zip")
    names = set(archive.namelist())
    assert {"train.csv", "sample_submission.csv"} <= names
    assert sum(n.startswith("train/") and n.endswith(".png") for n in names) == 1347
    assert sum(n.startswith("test/") for n in names) == 450


def test_cli_submits_and_reads_scores_and_leaderboard(run_kaggle, host, tmp_path):
    rows = _sample_rows(host)
    truth = {r[0]: r[1] for r in list(csv.reader(open(host.store.competition_dir("digits") / "solution.csv")))[1:]}
    perfect = [rows[0]] + [[i, truth[i]] for i, _ in rows[1:]]
    result = run_kaggle("competitions", "submit", "-c", "digits", "-f", _write(tmp_path / "perfect.csv", perfect),
                        "-m", "perfect labels")
    assert result.returncode == 0, result.stderr
    assert "Successfully submitted" in result.stdout

    subs = run_kaggle("competitions", "submissions", "-c", "digits")
    assert subs.returncode == 0, subs.stderr
    assert "perfect.csv" in subs.stdout and "1.00000" in subs.stdout

    board = run_kaggle("competitions", "leaderboard", "-c", "digits", "-s")
    assert board.returncode == 0, board.stderr
    assert "localuser" in board.stdout and "1.00000" in board.stdout


@pytest.mark.parametrize("mutation, message", [
    ("header", "Submission header must be exactly: id,label"),
    ("missing_id", "Submission is missing 1 of 450 test ids"),
    ("unknown_id", "ids that are not in the test set, e.g. 'not-an-id'"),
    ("duplicate_id", "duplicate id"),
    ("unknown_label", "unknown label 'cat'"),
])
def test_cli_refuses_malformed_submission_with_a_clear_message(run_kaggle, host, tmp_path, mutation, message):
    rows = _sample_rows(host)
    if mutation == "header":
        rows[0] = ["id", "target"]
    elif mutation == "missing_id":
        rows = rows[:-1]
    elif mutation == "unknown_id":
        rows[5][0] = "not-an-id"
    elif mutation == "duplicate_id":
        rows[5][0] = rows[6][0]
    elif mutation == "unknown_label":
        rows[3][1] = "cat"
    result = run_kaggle("competitions", "submit", "-c", "digits", "-f", _write(tmp_path / "bad.csv", rows), "-m", "bad")
    assert result.returncode == 1
    assert message in result.stderr


def test_cli_wrong_key_is_refused(run_kaggle, cli_env):
    env = {**cli_env, "KAGGLE_USERNAME": "localuser", "KAGGLE_KEY": "not-the-key"}
    result = run_kaggle("competitions", "list", env=env)
    assert result.returncode == 1
    assert "digits" not in result.stdout


def test_daily_limit_and_hosting_your_own_competition(run_kaggle, host, tmp_path):
    truth = write_course_competition(tmp_path / "course", "limit-course", max_daily=2)
    assert host.store.add_competition(tmp_path / "course") == "limit-course"
    good = _write(tmp_path / "good.csv", [["id", "label"]] + [[i, label] for i, label in truth.items()])
    for _ in range(2):
        assert run_kaggle("competitions", "submit", "-c", "limit-course", "-f", good, "-m", "ok").returncode == 0
    third = run_kaggle("competitions", "submit", "-c", "limit-course", "-f", good, "-m", "one too many")
    assert third.returncode == 1
    assert "Daily submission limit reached (2 per day" in third.stderr


def test_host_refuses_non_loopback_bind(host):
    with pytest.raises(ValueError, match="only listens on loopback"):
        make_server(host.store, port=0, bind="0.0.0.0")


def _port_80_free() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 80)) != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="port 80 needs root; the proxy route above covers other users")
@pytest.mark.skipif(not _port_80_free(), reason="something already listens on port 80 (a `make serve`?)")
def test_cli_on_port_80_without_proxy(host, cli_env, run_kaggle):
    """The documented route: KAGGLE_API_ENVIRONMENT=LOCALHOST alone reaches http://localhost:80."""
    server, _ = serve_in_thread(host.store, port=80)
    try:
        env = {k: v for k, v in cli_env.items() if k != "HTTP_PROXY"}
        result = run_kaggle("competitions", "list", env=env)
        assert result.returncode == 0, result.stderr
        assert "digits" in result.stdout
    finally:
        server.shutdown()
        server.server_close()
