"""Several kpipe processes on one data folder, and runs that fail part-way: nothing lost, nothing uploaded
twice, nothing partial under a final name, one clear line for every refusal."""
from __future__ import annotations

import contextlib
import csv
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from competition import atomic
from competition.atomic import STAGING_MARK
from competition.host import server as host_server
from competition.paths import REPO_ROOT
from competition.spec import load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.stages.download import download
from pipelines.stages.submit import LOG_COLUMNS, log_path
from tests.test_train_submit import TINY_RUN, write_digits_variant

ONE_EPOCH = {**TINY_RUN, "epochs": 1}


def staging_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if STAGING_MARK in p.name] if root.exists() else []


def log_rows(submissions: Path) -> list[dict]:
    with open(submissions / "digits" / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def subprocess_env(pipeline_env: Path, submissions: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KPIPE_SUBMISSIONS": str(submissions)}


def last_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in text, text[-2000:]
    return lines[-1]


# --- concurrency ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_submits_at_once_upload_once_and_lose_no_log_row(pipeline_env, host, tmp_path):
    submissions = tmp_path / "submissions"
    spec_path = write_digits_variant(tmp_path, [ONE_EPOCH], folds=(0,), tta=("identity",))
    before = len(host.store.submissions("digits"))
    command = [sys.executable, "-m", "pipelines", "submit", "--comp", str(spec_path)]
    env = subprocess_env(pipeline_env, submissions)
    runs = [subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    statuses = sorted(row["status"] for row in log_rows(submissions))
    assert statuses == ["COMPLETE", "already-scored"], statuses
    assert len(host.store.submissions("digits")) == before + 1, "the same predictions were uploaded twice"
    assert sum(" epoch 1/1" in out for out, _ in outputs) == 1, "both processes trained the same fold"
    assert not staging_leftovers(pipeline_env)


_LOG_WRITER = """
import sys
import numpy as np
from competition.spec import load_spec
from pipelines.stages.submit import Submission, submit
spec = load_spec("digits")
worker = int(sys.argv[1])
probs = np.eye(10, dtype=np.float32)[np.arange(450) % 10]
for i in range(int(sys.argv[2])):
    submit(spec, Submission("quick", [f"d{j}" for j in range(450)], probs, 0.5, f"cfg{worker}x{i}",
                            f"{worker:04d}{i:04d}abcd", "0" * 40), dry_run=True)
"""


def test_concurrent_log_writers_lose_no_rows(pipeline_env, host, tmp_path):
    submissions = tmp_path / "submissions"
    download(load_spec("digits"))
    # The sample submission's ids, so that the dry-run files validate.
    sample = (pipeline_env / "digits" / "raw" / "sample_submission.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[0] for line in sample]
    script = _LOG_WRITER.replace('[f"d{j}" for j in range(450)]', repr(ids))
    env = {**subprocess_env(pipeline_env, submissions), "KPIPE_DATA": str(pipeline_env)}
    writers = [subprocess.Popen([sys.executable, "-c", script, str(w), "6"], env=env, cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for w in range(3)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()[-2000:]
    rows = log_rows(submissions)
    assert len(rows) == 18 and {r["status"] for r in rows} == {"dry-run"}
    assert len({r["predictions_digest"] for r in rows}) == 18
    assert not staging_leftovers(submissions)


def test_a_second_publisher_keeps_the_first_folder(tmp_path):
    final = tmp_path / "out" / "result"
    published = []
    for content in ("first", "second"):
        with atomic.staged_folder(final) as staging:
            (staging / "value.txt").write_text(content)
            published.append(atomic.publish_folder(staging, final))
    assert published == [True, False]
    assert (final / "value.txt").read_text() == "first"
    with atomic.staged_folder(final) as staging:
        (staging / "value.txt").write_text("on purpose")
        assert atomic.publish_folder(staging, final, replace=True)
    assert (final / "value.txt").read_text() == "on purpose"
    assert sorted(p.name for p in final.parent.iterdir()) == ["result"]


@pytest.mark.slow
def test_leftovers_of_killed_writers_are_removed_by_the_next_run(pipeline_env, tmp_path):
    spec_path = write_digits_variant(tmp_path, [ONE_EPOCH], folds=(0,), tta=("identity",))
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    prepared = next((pipeline_env / "digits" / "prepared").iterdir())
    # What SIGKILL before the rename leaves: no output under its final name, a staging folder beside it.
    leftover = prepared.with_name(f".{prepared.name}{STAGING_MARK}999999-dead")
    prepared.rename(leftover)
    (leftover / "train_images.npy").write_bytes(b"half")
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    assert not leftover.exists() and (prepared / "manifest.json").is_file()
    assert not staging_leftovers(pipeline_env)


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_host_that_never_answers_fails_in_one_line_instead_of_hanging(pipeline_env, monkeypatch, capsys):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never reads or answers
    monkeypatch.setenv("KPIPE_LOCAL_HOST_PORT", str(silent.getsockname()[1]))
    monkeypatch.setenv("KPIPE_KAGGLE_TIMEOUT_S", "1")
    monkeypatch.setenv("KPIPE_KAGGLE_ATTEMPTS", "2")
    started = time.monotonic()
    try:
        assert pipelines_main(["download", "--comp", "digits"]) == 2
    finally:
        silent.close()
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    line = last_error_line(err)
    assert "downloading the files of 'digits' failed (tried 2 times)" in line
    assert "did not answer within 1 s" in line and "make serve" in line
    assert not (pipeline_env / "digits" / "raw").exists()


def _spec_of_its_own(tmp_path: Path, lr: float) -> Path:
    """A tiny run whose predictions no other test makes (the session's host remembers every digest)."""
    run = {**ONE_EPOCH, "optimizer": {"name": "sgd", "lr": lr}}
    return write_digits_variant(tmp_path, [run], folds=(0,), tta=("identity",))


@pytest.mark.slow
def test_score_lost_after_upload_is_recovered_without_a_second_upload(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = _spec_of_its_own(tmp_path, 0.041)
    before = len(host.store.submissions("digits"))

    def host_drops(self, request, user):
        raise ConnectionResetError("the host went away")  # the client sees the connection drop

    listing = host_server.KaggleHostHandler.rpc_ListSubmissions
    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_ListSubmissions", host_drops)
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 2
    line = last_error_line(capsys.readouterr().err)
    assert "the log keeps a PENDING row" in line and "without uploading again" in line
    assert len(host.store.submissions("digits")) == before + 1  # it did arrive
    rows = log_rows(tmp_path / "submissions")
    assert [r["status"] for r in rows] == ["PENDING"] and rows[0]["ref"].isdigit()

    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_ListSubmissions", listing)  # the host is back
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "completed the log row" in out and "scored already" in out
    assert len(host.store.submissions("digits")) == before + 1, "uploaded again"
    rows = log_rows(tmp_path / "submissions")
    assert [r["status"] for r in rows] == ["COMPLETE", "already-scored"]
    assert float(rows[0]["public_score"]) > 0.3 and rows[0]["ref"].isdigit()
    digest = rows[0]["predictions_digest"]
    assert f"digest {digest}" in host.store.submissions("digits")[0]["description"]


@pytest.mark.slow
def test_an_upload_whose_answer_is_lost_is_found_on_the_host(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = _spec_of_its_own(tmp_path, 0.042)
    before = len(host.store.submissions("digits"))
    create = host_server.KaggleHostHandler.rpc_CreateSubmission

    def created_then_failed(self, request, user):
        self.store.create_submission(request["competitionName"], user, request["blobFileTokens"],
                                     request.get("submissionDescription") or "")
        raise ConnectionResetError("answer lost")  # the submission exists; the client never hears so

    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_CreateSubmission", created_then_failed)
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_CreateSubmission", create)
    assert len(host.store.submissions("digits")) == before + 1
    assert [r["status"] for r in log_rows(tmp_path / "submissions")] == ["COMPLETE"]
    assert "leaderboard: public" in capsys.readouterr().out


@pytest.mark.slow
def test_an_upload_that_never_arrived_is_marked_failed_and_retried_next_time(pipeline_env, host, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = _spec_of_its_own(tmp_path, 0.043)
    before = len(host.store.submissions("digits"))

    def refused(self, request, user):
        raise ConnectionResetError("dropped before anything was stored")

    start = host_server.KaggleHostHandler.rpc_StartSubmissionUpload
    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_StartSubmissionUpload", refused)
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 2
    assert "the next `make submit` uploads it again" in last_error_line(capsys.readouterr().err)
    assert [r["status"] for r in log_rows(tmp_path / "submissions")] == ["FAILED"]
    monkeypatch.setattr(host_server.KaggleHostHandler, "rpc_StartSubmissionUpload", start)
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    assert [r["status"] for r in log_rows(tmp_path / "submissions")] == ["FAILED", "COMPLETE"]
    assert len(host.store.submissions("digits")) == before + 1


@pytest.mark.slow
def test_sigterm_mid_fold_leaves_nothing_partial_and_the_rerun_finishes(pipeline_env, tmp_path):
    spec_path = write_digits_variant(tmp_path, [{**TINY_RUN, "model_args": {"width": 32}, "epochs": 6}], folds=(0,))
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "pipelines", "train", "--comp", str(spec_path)]
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((pipeline_env / "digits" / "train").glob("*/.fold0.partial/last.pt")):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted: finished outputs are kept" in err and "Traceback" not in err
    assert not list((pipeline_env / "digits" / "train").glob("*/fold0")), "a fold under its final name"
    assert not staging_leftovers(pipeline_env)
    again = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert list((pipeline_env / "digits" / "train").glob("*/fold0/manifest.json"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_a_full_disk_is_one_line_and_leaves_nothing_partial(pipeline_env, host, tmp_path, capsys, monkeypatch):
    small = tmp_path / "small-disk"
    small.mkdir()
    # Room for digits' zip but not for its 1,797 unzipped files (a page each on tmpfs).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("KPIPE_DATA", str(small))
        assert pipelines_main(["download", "--comp", "digits"]) == 2
        line = last_error_line(capsys.readouterr().err)
        assert line.startswith("error: disk full while writing") and "make prune COMP=digits" in line, line
        assert not (small / "digits" / "raw").exists()
        assert not staging_leftovers(small)
        assert not list((small / "digits").glob(".download-*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


@contextlib.contextmanager
def file_size_limit(limit: int):
    """This process's RLIMIT_FSIZE lowered to `limit` bytes (SIGXFSZ ignored, as the CLI does), then restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_not_a_killed_process(pipeline_env, host, tmp_path):
    """Past `ulimit -f` the kernel kills a writer with SIGXFSZ unless it is ignored; then numpy's short
    write (an OSError with no errno) is still recognised, and the prepared arrays are not kept half."""
    spec_path = write_digits_variant(tmp_path, [ONE_EPOCH], folds=(0,), tta=("identity",))
    assert pipelines_main(["download", "--comp", str(spec_path)]) == 0
    command = ["prlimit", "--fsize=50000", sys.executable, "-m", "pipelines", "prepare", "--comp", str(spec_path)]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    line = last_error_line(done.stderr)
    assert line.startswith("error: a file grew past this process's file-size limit (50,000 bytes, `ulimit -f`) "
                           f"while writing {pipeline_env / 'digits' / 'prepared'}/"), line
    assert "nothing partial was kept; raise the limit (`ulimit -f unlimited`)" in line, line
    assert not list((pipeline_env / "digits" / "prepared").iterdir())
    assert not staging_leftovers(pipeline_env)


def test_a_checkpoint_past_the_file_size_limit_names_its_file(tmp_path):
    import errno

    import torch

    from pipelines.stages.predict import save_checkpoint

    path = tmp_path / "fold0" / "best.pt"
    with file_size_limit(20_000), pytest.raises(OSError) as caught:
        save_checkpoint({"weights": torch.zeros(100_000)}, path)  # torch's zip writer: a RuntimeError, no errno
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(path)
    assert not path.exists() and not staging_leftovers(tmp_path)


def test_a_log_the_disk_refuses_keeps_no_submission_file(pipeline_env, host, tmp_path, monkeypatch):
    """The submission CSV is written, then the log row naming it: when the log cannot be written, the CSV
    goes too (no row would name it), and the log is left as it was."""
    import numpy as np

    from pipelines.__main__ import disk_full_message
    from pipelines.stages.submit import Submission, submit

    submissions = tmp_path / "submissions"
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(submissions))
    spec = load_spec("digits")
    download(spec)
    ids = [line.split(",")[0] for line in (pipeline_env / "digits" / "raw" / "sample_submission.csv").read_text().splitlines()[1:]]
    path = log_path(spec)
    path.parent.mkdir(parents=True)
    path.write_text(_csv_text([LOG_COLUMNS] + [_good_row(predictions_digest=f"{i:016x}") for i in range(600)]))
    before = path.read_bytes()  # about 100 kB: rewriting it passes the limit, the 2 kB submission does not
    probs = np.eye(10, dtype=np.float32)[np.arange(len(ids)) % 10]
    with file_size_limit(60_000):
        with pytest.raises(OSError) as caught:
            submit(spec, Submission("quick", ids, probs, 0.5, "cfg", "feedfacefeedface", "0" * 40), dry_run=True)
        line = disk_full_message(caught.value, "digits")  # as the command prints it, under its limit
    assert line.startswith(f"a file grew past this process's file-size limit (60,000 bytes, `ulimit -f`) while writing {path}:"), line
    assert sorted(p.name for p in path.parent.iterdir()) == ["log.csv"], "a submission file no log row names"
    assert path.read_bytes() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_a_full_disk_under_the_submissions_log_keeps_no_submission_file(pipeline_env, host, tmp_path, monkeypatch, capsys):
    import numpy as np

    from pipelines.__main__ import disk_full_message
    from pipelines.stages.submit import Submission, submit

    small = tmp_path / "small-disk"
    small.mkdir()
    spec = load_spec("digits")
    download(spec)
    ids = [line.split(",")[0] for line in (pipeline_env / "digits" / "raw" / "sample_submission.csv").read_text().splitlines()[1:]]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("KPIPE_SUBMISSIONS", str(small))
        path = log_path(spec)
        path.parent.mkdir()
        path.write_text(_csv_text([LOG_COLUMNS] + [_good_row(predictions_digest=f"{i:016x}") for i in range(220)]))
        probs = np.eye(10, dtype=np.float32)[np.arange(len(ids)) % 10]
        with pytest.raises(OSError) as caught:
            submit(spec, Submission("quick", ids, probs, 0.5, "cfg", "feedfacefeedface", "0" * 40), dry_run=True)
        line = disk_full_message(caught.value, "digits")
        assert line.startswith(f"disk full while writing {path}: nothing partial was kept") and "make prune COMP=digits" in line
        assert sorted(p.name for p in path.parent.iterdir()) == ["log.csv"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_storage_password_is_never_printed(pipeline_env, tmp_path, capsys, postgres_url):
    spec_path = write_tuning_spec(tmp_path)
    wrong = re.sub(r"://kpipe:[^@]*@", "://kpipe:WrongSecret123@", postgres_url)
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "1", "--storage", wrong]) == 2
    captured = capsys.readouterr()
    assert "WrongSecret123" not in captured.out + captured.err
    assert "cannot open it" in last_error_line(captured.err) and "***" in captured.err
    # make's recipe echo: the URL goes through the environment, never the command line it prints.
    echo = subprocess.run(["make", "-n", "tune", "COMP=digits", f"STORAGE={wrong}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0 and "pipelines tune" in echo.stdout
    assert "WrongSecret123" not in echo.stdout + echo.stderr


@pytest.mark.parametrize("storage", [
    "postgresql:/kpipe:WrongSecret123@127.0.0.1/kpipe",  # one slash
    "postgresql//kpipe:WrongSecret123@127.0.0.1/kpipe",  # no colon
    "postgresql:kpipe:WrongSecret123@127.0.0.1/kpipe",  # no slashes
    "kpipe:WrongSecret123@127.0.0.1/kpipe",  # no scheme
    "postgresql://kpipe:WrongSecret123@127.0.0.1:notaport/kpipe",  # the rest malformed
])
def test_a_malformed_storage_url_never_prints_its_password(pipeline_env, tmp_path, capsys, storage):
    spec_path = write_tuning_spec(tmp_path)
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "1", "--storage", storage]) == 2
    captured = capsys.readouterr()
    assert "WrongSecret123" not in captured.out + captured.err
    line = last_error_line(captured.err)
    assert "***@127.0.0.1" in line, line


def write_tuning_spec(tmp_path: Path) -> Path:
    import yaml

    path = write_digits_variant(tmp_path, [ONE_EPOCH], folds=(0,), tta=("identity",))
    spec = yaml.safe_load(path.read_text())
    spec["tuning"] = {"folds": [0], "epochs": 1, "subsample": 0.3, "pruner": {"name": "none"},
                      "search_space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}}}
    path.write_text(yaml.safe_dump(spec))
    return path


# --- the submissions log, hand-edited ---------------------------------------------------------------


def _good_row(**changes) -> list[str]:
    row = {"time": "2026-01-01T00:00:00+00:00", "competition": "digits", "profile": "quick", "config_hash": "abc",
           "git_commit": "0" * 40, "predictions_digest": "0123456789abcdef", "ensemble": "", "cv_score": "0.90000", "metric": "accuracy",
           "public_score": "0.91000", "private_score": "0.92000", "status": "COMPLETE", "ref": "3", "file": "x.csv", "data": "real", "kernel": ""}
    row.update(changes)
    return [row[c] for c in LOG_COLUMNS]


def _csv_text(rows: list[list[str]]) -> str:
    return "".join(",".join(r) + "\n" for r in rows)


LOG_CASES = {
    "bad-header": (_csv_text([["time", "cv"], _good_row()]), "row 1: the header must be time,competition"),
    "truncated-row": (_csv_text([LOG_COLUMNS, _good_row()]) + "2026-01-02T00:00:00+00:00,digits,qui", "row 3: 3 fields, expected 16"),
    "extra-field": (_csv_text([LOG_COLUMNS, _good_row() + ["surprise"]]), "row 2: 17 fields, expected 16"),
    "bad-status": (_csv_text([LOG_COLUMNS, _good_row(status="DONE")]), "row 2: status 'DONE' is not one of"),
    "bad-score": (_csv_text([LOG_COLUMNS, _good_row(public_score="great")]), "row 2: public_score 'great' is not a number"),
    "bad-digest": (_csv_text([LOG_COLUMNS, _good_row(predictions_digest="zz")]), "row 2: predictions_digest 'zz'"),
    "bad-ref": (_csv_text([LOG_COLUMNS, _good_row(ref="x1")]), "row 2: ref 'x1' is not a submission number"),
    "not-utf8": (_csv_text([LOG_COLUMNS, _good_row(file="caf\udce9.csv")]), "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(LOG_CASES))
def test_a_hand_edited_log_is_reported_not_a_key_error(pipeline_env, tmp_path, monkeypatch, capsys, case):
    text, phrase = LOG_CASES[case]
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    path = log_path(load_spec("digits"))
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert pipelines_main(["prune", "--comp", "digits"]) == 2
    line = last_error_line(capsys.readouterr().err)
    assert str(path) in line and phrase in line and "move the file away to start a new log" in line, line
    assert path.read_bytes() == text.encode("utf-8", "surrogateescape"), "the log was changed"


def test_a_log_from_before_metrics_is_read_as_accuracy_and_rewritten(pipeline_env, tmp_path, monkeypatch):
    from pipelines.stages.submit import ACCURACY_LOG_COLUMNS, read_log, write_log

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec = load_spec("digits")
    path = log_path(spec)
    path.parent.mkdir(parents=True)
    row = dict(zip(LOG_COLUMNS, _good_row()))
    old = {**{k: v for k, v in row.items() if k not in ("cv_score", "metric", "ensemble", "data", "kernel")},
           "cv_accuracy": "0.95000"}
    path.write_text(_csv_text([ACCURACY_LOG_COLUMNS, [old[c] for c in ACCURACY_LOG_COLUMNS]]))
    [entry] = read_log(spec)
    assert entry["cv_score"] == "0.95000" and entry["metric"] == "accuracy" and "cv_accuracy" not in entry
    write_log(spec, [entry])
    assert path.read_text().splitlines()[0] == ",".join(LOG_COLUMNS)
    assert read_log(spec) == [entry]


# --- prune ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prune_removes_what_no_submission_needs_and_keeps_the_rest(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    monkeypatch.setenv("DRY_RUN", "1")
    kept_spec = write_digits_variant(tmp_path, [ONE_EPOCH], folds=(0,), tta=("identity", "shift"))
    assert pipelines_main(["submit", "--comp", str(kept_spec)]) == 0  # logged (dry-run): needed
    assert "disk: " in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    dropped_spec = write_digits_variant(other, [{**ONE_EPOCH, "model_args": {"width": 8}}], folds=(0,))
    assert pipelines_main(["train", "--comp", str(dropped_spec)]) == 0  # trained, never submitted
    train_runs = sorted((pipeline_env / "digits" / "train").iterdir())
    assert len(train_runs) == 2
    dead = train_runs[0] / f".fold0{STAGING_MARK}999999-dead"
    dead.mkdir()
    capsys.readouterr()
    monkeypatch.delenv("DRY_RUN")

    assert pipelines_main(["prune", "--comp", "digits", "--dry-run"]) == 0
    assert "would free" in capsys.readouterr().out
    assert dead.exists()
    assert pipelines_main(["prune", "--comp", "digits"]) == 0
    out = capsys.readouterr().out
    assert "prune: digits: freed" in out and ("kB" in out or "MB" in out)
    remaining = [p for p in (pipeline_env / "digits" / "train").glob("*/fold0")]
    assert len(remaining) == 1 and not dead.exists()
    assert (pipeline_env / "digits" / "raw").exists()

    assert pipelines_main(["submit", "--comp", str(kept_spec), "--dry-run"]) == 0
    assert " epoch 1/" not in capsys.readouterr().out, "prune removed something the logged run needed"
    shutil.rmtree(tmp_path / "submissions")


def test_a_log_from_before_code_competitions_is_read_and_rewritten_with_the_kernel_column(pipeline_env, tmp_path,
                                                                                         monkeypatch):
    from pipelines.stages.submit import DATA_LOG_COLUMNS, read_log, write_log

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec = load_spec("digits")
    path = log_path(spec)
    path.parent.mkdir(parents=True)
    row = dict(zip(LOG_COLUMNS, _good_row()))
    path.write_text(_csv_text([DATA_LOG_COLUMNS, [row[c] for c in DATA_LOG_COLUMNS]]))
    [entry] = read_log(spec)
    assert entry["kernel"] == "" and entry["public_score"] == "0.91000"
    write_log(spec, [entry])
    assert path.read_text().splitlines()[0] == ",".join(LOG_COLUMNS)
