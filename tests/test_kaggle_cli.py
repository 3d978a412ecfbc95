"""The unmodified `kaggle` CLI against the local host: list, files, download, submit, refusals, leaderboard."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from competition.host.server import make_server, serve_in_thread
from competition.host.store import HostStore
from competition.paths import REPO_ROOT
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


def _listed(run_kaggle, *options) -> list[str]:
    result = run_kaggle("competitions", "list", "--csv", "--page-size", "200", *options)  # one page, however many
    assert result.returncode == 0, result.stderr
    return [row["ref"].rsplit("/", 1)[1] for row in csv.DictReader(io.StringIO(result.stdout))]


@pytest.mark.slow
def test_cli_list_filters_and_sorts_as_kaggle_does(run_kaggle, host, tmp_path):
    import json

    for slug, deadline, category in (("early-course", "2030-01-01T00:00:00", "Playground"),
                                     ("late-course", "2090-01-01T00:00:00", "Community")):
        truth = write_course_competition(tmp_path / slug, slug)
        meta = json.loads((tmp_path / slug / "competition.json").read_text())
        meta.update(deadline=deadline, category=category)
        (tmp_path / slug / "competition.json").write_text(json.dumps(meta))
        host.store.add_competition(tmp_path / slug)
    listed = _listed(run_kaggle, "--sort-by", "earliestDeadline")
    assert listed.index("early-course") < listed.index("late-course")
    latest = _listed(run_kaggle, "--sort-by", "latestDeadline")
    assert latest.index("late-course") < latest.index("early-course")
    assert _listed(run_kaggle, "--category", "playground") == ["early-course"]
    assert "early-course" not in _listed(run_kaggle, "--group", "entered")
    answer = _write(tmp_path / "answer.csv", [["id", "label"]] + [[i, label] for i, label in truth.items()])
    assert run_kaggle("competitions", "submit", "-c", "late-course", "-f", answer, "-m", "x").returncode == 0
    assert "late-course" in _listed(run_kaggle, "--group", "entered")
    assert {"early-course", "late-course"} <= set(_listed(run_kaggle, "--group", "hosted"))
    assert "digits" not in _listed(run_kaggle, "--group", "hosted")  # built in, not added by this account


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


@pytest.mark.slow
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
    # As on kaggle.com the upload is accepted and then fails to score: `--wait` shows why.
    result = run_kaggle("competitions", "submit", "-c", "digits", "-f", _write(tmp_path / "bad.csv", rows), "-m", "bad",
                        "--wait")
    assert result.returncode == 1
    assert "failed to score" in result.stdout + result.stderr and message in result.stdout + result.stderr


def test_an_empty_submission_file_is_refused_with_a_reason_the_client_prints(run_kaggle, host, tmp_path):
    before = len(host.store.submissions("digits"))
    (tmp_path / "empty.csv").write_bytes(b"")
    result = run_kaggle("competitions", "submit", "-c", "digits", "-f", "empty.csv", "-m", "empty")
    assert result.returncode == 1
    assert "Submission file 'empty.csv' is empty (0 bytes): there is nothing to score" in result.stdout + result.stderr
    assert "Could not submit to competition" not in result.stdout + result.stderr
    assert len(host.store.submissions("digits")) == before


@pytest.mark.slow
def test_a_log_loss_competition_takes_probabilities_scores_them_and_ranks_lower_first(run_kaggle, host, tmp_path):
    import numpy as np

    from competition.metrics import metric

    truth = write_course_competition(tmp_path / "course", "logloss-course", max_daily=5, metric="log_loss")
    assert host.store.add_competition(tmp_path / "course") == "logloss-course"
    classes = ["a", "b", "c"]
    labels = np.array([classes.index(label) for label in truth.values()])
    sharp = np.full((6, 3), 0.1) + 0.7 * np.eye(3)[labels]
    vague = np.full((6, 3), 0.25) + 0.25 * np.eye(3)[labels]
    for name, probs in (("vague", vague), ("sharp", sharp)):
        path = _write(tmp_path / f"{name}.csv", [["id", "p_a", "p_b", "p_c"]]
                      + [[i, *(f"{p:.6f}" for p in row)] for i, row in zip(truth, probs)])
        assert run_kaggle("competitions", "submit", "-c", "logloss-course", "-f", path, "-m", name).returncode == 0
    [sharp_sub, vague_sub] = host.store.submissions("logloss-course")  # newest first
    public = [0, 1, 2]  # write_course_competition makes the first three ids Public
    expected = metric("log_loss").score(sharp[public], labels[public])
    assert sharp_sub["public_score"] == pytest.approx(expected, abs=1e-6)
    assert vague_sub["public_score"] > sharp_sub["public_score"]
    board = host.store.leaderboard("logloss-course")  # our team's best is the lower log loss ...
    [ours] = [entry for entry in board if entry["team"] == "localuser"]
    assert ours["public_score"] == sharp_sub["public_score"]
    # ... and it ranks above the sample submission's (equal probabilities), lower first
    assert [entry["team"] for entry in board] == ["localuser", "Sample Submission Benchmark"]

    bad = _write(tmp_path / "bad.csv", [["id", "p_a", "p_b", "p_c"]] + [[i, "0.5", "0.5", "0.5"] for i in truth])
    result = run_kaggle("competitions", "submit", "-c", "logloss-course", "-f", bad, "-m", "sums to 1.5", "--wait")
    assert result.returncode == 1
    assert ("Submission row 2 (id 't0'): the probabilities sum to 1.5000; each row must sum to 1"
            in result.stdout + result.stderr)


def test_cli_wrong_key_is_refused(run_kaggle, cli_env):
    env = {**cli_env, "KAGGLE_USERNAME": "localuser", "KAGGLE_KEY": "not-the-key"}
    result = run_kaggle("competitions", "list", env=env)
    assert result.returncode == 1
    assert "digits" not in result.stdout


@pytest.mark.slow
def test_daily_limit_and_hosting_your_own_competition(run_kaggle, host, tmp_path):
    truth = write_course_competition(tmp_path / "course", "limit-course", max_daily=2)
    assert host.store.add_competition(tmp_path / "course") == "limit-course"
    good = _write(tmp_path / "good.csv", [["id", "label"]] + [[i, label] for i, label in truth.items()])
    for _ in range(2):
        assert run_kaggle("competitions", "submit", "-c", "limit-course", "-f", good, "-m", "ok").returncode == 0
    third = run_kaggle("competitions", "submit", "-c", "limit-course", "-f", good, "-m", "one too many")
    assert third.returncode == 1
    assert "Your team has used its daily Submission allowance (2) today, please try again tomorrow UTC" in third.stderr
    assert "rate limited" not in third.stderr + third.stdout


def test_a_call_the_host_does_not_serve_says_so(run_kaggle):
    # A call the host has no answer for: a 405 naming it, not a spelling or try-again-later hint.
    result = run_kaggle("models", "list")
    assert result.returncode != 0 or "not implemented by the local host" in result.stdout + result.stderr
    assert "not implemented by the local host" in result.stdout + result.stderr, result.stdout + result.stderr
    assert "check the spelling" not in (result.stdout + result.stderr).lower()
    assert "try again later" not in (result.stdout + result.stderr).lower()


def test_host_refuses_non_loopback_bind(host):
    with pytest.raises(ValueError, match="only listens on loopback"):
        make_server(host.store, port=0, bind="0.0.0.0")


# Runs inside a network namespace of its own: loopback up, the host on port 80, the CLI without a proxy.
_PORT_80_SCRIPT = """
import fcntl, socket, struct, subprocess, sys
from competition.host.server import serve_in_thread
from competition.host.store import HostStore
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(probe, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(probe, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS: lo up
serve_in_thread(HostStore(sys.argv[1]), port=80)
sys.exit(subprocess.run([sys.argv[2], "competitions", "list"]).returncode)
"""


@pytest.mark.slow
def test_cli_on_port_80_without_proxy(host, cli_env, tmp_path):
    """The documented route: KAGGLE_API_ENVIRONMENT=LOCALHOST alone reaches http://localhost:80.

    In a network namespace of the test's own, so that a host already on port 80 (left by `make submit`,
    which is normal) neither blocks the test nor answers it."""
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "--map-root-user"]
    if subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel allows no network namespace here (unshare --net failed)")
    env = {k: v for k, v in cli_env.items() if k != "HTTP_PROXY"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    kaggle_bin = str(Path(sys.executable).with_name("kaggle"))
    result = subprocess.run([*unshare, sys.executable, "-c", _PORT_80_SCRIPT, str(host.root), kaggle_bin],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "digits" in result.stdout and "fashion-mnist" in result.stdout


def test_a_submission_to_a_competition_never_built_is_scored_not_hung(host, cli_env, tmp_path):
    """The submission builds the competition while the host holds its lock: the lock is re-entrant, so
    the request completes instead of waiting on itself (and every later request behind it)."""
    rows = _sample_rows(host)  # the built-in builders are seeded: a fresh host's digits has the same ids
    fresh = HostStore(tmp_path / "fresh-host")
    fresh.credentials()
    server, _ = serve_in_thread(fresh, port=0)
    try:
        env = {**cli_env, "KAGGLE_CONFIG_DIR": str(fresh.root / "client"),
               "HTTP_PROXY": f"http://127.0.0.1:{server.server_address[1]}"}
        assert not (fresh.root / "competitions" / "digits").exists()
        result = subprocess.run([str(Path(sys.executable).with_name("kaggle")), "competitions", "submit", "-c", "digits",
                                 "-f", _write(tmp_path / "first.csv", rows), "-m", "first"],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Successfully submitted" in result.stdout, result.stdout + result.stderr
        assert fresh.submissions("digits")[0]["status"] == "COMPLETE"
    finally:
        server.shutdown()
        server.server_close()


def test_the_host_lock_is_reentrant(tmp_path):
    fresh = HostStore(tmp_path / "fresh-host")
    with fresh.locked():  # as a path that holds the lock and then needs a competition built
        assert (fresh.competition_dir("digits") / "competition.json").is_file()


@pytest.mark.slow
def test_a_request_behind_a_stuck_one_gets_a_503_not_a_hang(host, run_kaggle, monkeypatch):
    import threading

    from competition.host import store as store_module

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.5)
    stuck, release = threading.Event(), threading.Event()

    def hold():
        with host.store.locked():
            stuck.set()
            release.wait(30)

    host.store.data_zip("digits")
    (host.store.root / "downloads" / "digits" / "digits.zip").unlink()  # the download below must take the lock
    holder = threading.Thread(target=hold)
    holder.start()
    stuck.wait(10)
    try:
        result = run_kaggle("competitions", "download", "-c", "digits", "-p", "dl")
        assert result.returncode != 0 and "busy with another request" in result.stdout + result.stderr, result
    finally:
        release.set()
        holder.join()
    assert run_kaggle("competitions", "download", "-c", "digits", "-p", "dl").returncode == 0  # and then it works


def test_leaderboards_start_with_benchmarks_so_a_rank_means_something(run_kaggle, host):
    board = run_kaggle("competitions", "leaderboard", "-c", "digits", "-s", "--csv")
    assert board.returncode == 0, board.stderr
    scores = {row["teamName"]: float(row["score"]) for row in csv.DictReader(io.StringIO(board.stdout))}
    # A nearest-centroid model on the raw pixels, fitted on the training images when digits was built,
    # and the sample submission (one label everywhere).
    assert 0.8 < scores["Nearest Centroid Benchmark"] < 1.0, scores
    assert scores["Sample Submission Benchmark"] < 0.2, scores
    assert not (host.store.competition_dir("digits") / "data" / "baselines").exists()  # never downloadable


@pytest.mark.slow
def test_the_digit_recognizer_replica_downloads_in_its_layout_and_scores_its_columns(run_kaggle, host, tmp_path):
    """digit-recognizer's layout from Fashion-MNIST pixels: pixel CSVs, and submissions of ImageId, Label."""
    got = run_kaggle("competitions", "download", "-c", "digit-recognizer-replica", "-p", str(tmp_path))
    assert got.returncode == 0, got.stderr
    with zipfile.ZipFile(tmp_path / "digit-recognizer-replica.zip") as archive:
        assert sorted(archive.namelist()) == ["sample_submission.csv", "test.csv", "train.csv"]
        train_header = archive.read("train.csv").split(b"\n", 1)[0].decode().split(",")
        sample = archive.read("sample_submission.csv").decode().splitlines()
    assert train_header[:3] == ["label", "pixel0", "pixel1"] and len(train_header) == 785
    assert sample[:2] == ["ImageId,Label", "1,0"] and len(sample) == 4001
    board = run_kaggle("competitions", "leaderboard", "-c", "digit-recognizer-replica", "-s", "--csv")
    scores = {row["teamName"]: float(row["score"]) for row in csv.DictReader(io.StringIO(board.stdout))}
    assert scores["Sample Submission Benchmark"] < 0.2 < 0.5 < scores["Nearest Centroid Benchmark"], scores
    wrong = tmp_path / "lowercase.csv"
    wrong.write_text("imageid,label\n" + "".join(f"{i},0\n" for i in range(1, 4001)))
    result = run_kaggle("competitions", "submit", "-c", "digit-recognizer-replica", "-f", str(wrong), "-m", "x", "--wait")
    assert "Submission header must be exactly: ImageId,Label" in result.stdout + result.stderr


@pytest.mark.slow
def test_several_accounts_and_a_team_share_submissions_limits_and_a_leaderboard_row(run_kaggle, cli_env, host, tmp_path):
    from competition.host.__main__ import main as host_main

    truth = write_course_competition(tmp_path / "teams", "teams-course", max_daily=2)
    host.store.add_competition(tmp_path / "teams")
    for argv in (["add-user", "alice", "--team", "Team A"], ["add-user", "bob", "--team", "Team A"], ["add-user", "carol"]):
        assert host_main(["--root", str(host.root), *argv]) == 0
    assert host_main(["--root", str(host.root), "add-user", "alice"]) == 2  # exists already: one line

    def as_user(name):
        folder = host.root / "users" / name
        assert (folder / "kaggle.json").stat().st_mode & 0o077 == 0  # the key is readable by its owner only
        return {**cli_env, "KAGGLE_CONFIG_DIR": str(folder)}

    right = _write(tmp_path / "right.csv", [["id", "label"]] + [[i, label] for i, label in truth.items()])
    wrong = _write(tmp_path / "wrong.csv", [["id", "label"]] + [[i, "b" if label == "a" else "a"] for i, label in truth.items()])
    assert run_kaggle("competitions", "submit", "-c", "teams-course", "-f", right, "-m", "alice's",
                      env=as_user("alice")).returncode == 0
    # Bob is on Alice's team: he sees her submission, and they share the daily limit.
    bobs_view = run_kaggle("competitions", "submissions", "-c", "teams-course", env=as_user("bob"))
    assert "alice's" in bobs_view.stdout, bobs_view.stdout + bobs_view.stderr
    assert run_kaggle("competitions", "submit", "-c", "teams-course", "-f", right, "-m", "bob's",
                      env=as_user("bob")).returncode == 0
    third = run_kaggle("competitions", "submit", "-c", "teams-course", "-f", right, "-m", "one too many", env=as_user("bob"))
    assert third.returncode == 1 and "daily Submission allowance (2)" in third.stderr
    assert run_kaggle("competitions", "submit", "-c", "teams-course", "-f", wrong, "-m", "carol's",
                      env=as_user("carol")).returncode == 0
    mine = {s["description"]: s["submitter"] for s in host.store.submissions("teams-course")}
    assert (mine["alice's"], mine["bob's"], mine["carol's"]) == ("alice", "bob", "carol")  # submittedBy
    # The host's own account sees none of theirs.
    assert "alice's" not in run_kaggle("competitions", "submissions", "-c", "teams-course").stdout

    board = run_kaggle("competitions", "leaderboard", "-c", "teams-course", "-s", "--csv")
    teams = [row["teamName"] for row in csv.DictReader(io.StringIO(board.stdout))]
    assert teams[0] == "Team A" and teams.count("Team A") == 1 and teams[-1] == "carol", teams
    listed = run_kaggle("competitions", "list", "--csv", "-s", "teams-course", env=as_user("carol"))
    [row] = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert row["userHasEntered"] == "True" and row["userRank"] == str(len(teams)) and row["teamCount"] == "2"


@pytest.mark.slow
def test_a_submission_downloads_as_it_was_sent_and_only_to_its_team(run_kaggle, cli_env, host, tmp_path):
    from competition.host.__main__ import main as host_main

    rows = _sample_rows(host)
    sent = _write(tmp_path / "mine.csv", rows)
    submitted = run_kaggle("competitions", "submit", "-c", "digits", "-f", sent, "-m", "to download")
    ref = next(line.split()[-1] for line in submitted.stdout.splitlines() if line.startswith("Submission ref:"))
    got = run_kaggle("competitions", "submission-download", ref, "-p", str(tmp_path / "back"))
    assert got.returncode == 0, got.stdout + got.stderr
    assert (tmp_path / "back" / "mine.csv").read_bytes() == Path(sent).read_bytes()
    assert host_main(["--root", str(host.root), "add-user", "mallory"]) == 0
    stranger = {**cli_env, "KAGGLE_CONFIG_DIR": str(host.root / "users" / "mallory")}
    refused = run_kaggle("competitions", "submission-download", ref, "-p", str(tmp_path / "theirs"), env=stranger)
    assert refused.returncode == 1 and "No submission" in refused.stdout + refused.stderr
    assert not (tmp_path / "theirs" / "mine.csv").exists()


@pytest.mark.slow
def test_after_the_deadline_the_leaderboard_is_the_private_one_from_the_two_best_public_submissions(
        run_kaggle, host, tmp_path):
    from competition.host.__main__ import main as host_main

    truth = write_course_competition(tmp_path / "private", "private-course", max_daily=5)  # t0..t2 public
    host.store.add_competition(tmp_path / "private")
    ids, flip = list(truth), {"a": "b", "b": "a"}

    def answer(name, right):  # right: the ids answered correctly
        return _write(tmp_path / f"{name}.csv", [["id", "label"]] + [[i, truth[i] if i in right else flip[truth[i]]] for i in ids])

    for name, right in (("public-only", ids[:3]), ("private-only", ids[3:]), ("both", ids[:2] + ids[3:5])):
        assert run_kaggle("competitions", "submit", "-c", "private-course", "-f", answer(name, right), "-m", name).returncode == 0

    def board():
        result = run_kaggle("competitions", "leaderboard", "-c", "private-course", "-s", "--csv")
        return {row["teamName"]: row["score"] for row in csv.DictReader(io.StringIO(result.stdout))}

    assert board()["localuser"] == "1.00000"  # before the deadline: the best public score
    assert host_main(["--root", str(host.root), "close", "private-course"]) == 0
    # public-only (1.0 public) and both (2/3) are the two best by public score; of those, both has the
    # better private score. private-only (private 1.0, public 0) was never among them.
    assert board()["localuser"] == "0.66667"
