"""The kaggle Python API (KaggleApi, through the project's adapter) and the download stage."""
from __future__ import annotations

import zipfile

import pytest

from competition.errors import DataError, KaggleError
from competition.kaggle_adapter import kaggle_api
from competition.spec import load_spec
from pipelines.stages.archives import unpack_all
from pipelines.stages.download import download, raw_is_complete
from tests.conftest import write_course_competition


def test_python_api_lists_downloads_submits_and_reads_leaderboard(pipeline_env, host, tmp_path):
    truth = write_course_competition(tmp_path / "course", "api-course", max_daily=5)
    host.store.add_competition(tmp_path / "course")
    api = kaggle_api(load_spec("digits"))

    refs = [c.ref for c in api.competitions_list(page_size=200).competitions]
    assert all(ref.startswith("http://") and "/competitions/" in ref for ref in refs)  # URLs, as kaggle.com's
    slugs = {ref.rsplit("/", 1)[1] for ref in refs}
    assert {"digits", "fashion-mnist", "thu-deep-learning", "api-course"} <= slugs
    # The metric as kaggle.com names it, for the built-ins and for a competition added by hand alike.
    metric_of = {c.ref.rsplit("/", 1)[1]: c.evaluation_metric for c in api.competitions_list(page_size=200).competitions}
    assert metric_of["digits"] == "Categorization Accuracy" and metric_of["api-course"] == "Categorization Accuracy"
    assert metric_of["fashion-mnist-logloss"] == "Log Loss"
    assert metric_of["fashion-mnist-imbalanced"] == "Macro F1 Score"
    names = {f.name for f in api.competition_list_files("api-course").files}
    assert names == {"sample_submission.csv"}
    api.competition_download_files("api-course", path=str(tmp_path / "dl"), quiet=True)
    assert zipfile.ZipFile(tmp_path / "dl" / "api-course.zip").namelist() == ["sample_submission.csv"]

    half_right = tmp_path / "half.csv"
    half_right.write_text("id,label\n" + "".join(f"{i},a\n" for i in truth))
    response = api.competition_submit(str(half_right), "all a", "api-course", quiet=True)
    assert "Successfully submitted" in response.message
    latest = api.competition_submissions("api-course")[0]
    assert latest.description == "all a"
    # truth alternates a/b; public = first 3 ids (a,b,a) -> 2/3, private = (b,a,b) -> 1/3
    assert float(latest.public_score) == pytest.approx(2 / 3, abs=1e-4)
    assert not latest.private_score  # hidden until the deadline, as on kaggle.com
    host.store.close("api-course")
    latest = api.competition_submissions("api-course")[0]
    assert float(latest.private_score) == pytest.approx(1 / 3, abs=1e-4)
    # Closed: the leaderboard is the private one, as kaggle.com answers by default. The sample submission
    # (all 'a') scores the same and was there first: it ranks above on the tie.
    board = api.competition_leaderboard_view("api-course")
    assert [(row.team_name, round(float(row.score), 4)) for row in board] == [
        ("Sample Submission Benchmark", 0.3333), ("localuser", 0.3333)]
    assert [round(e["score"], 4) for e in host.store.leaderboard("api-course")] == [0.6667, 0.6667]  # the public one
    [listed] = [c for c in api.competitions_list(search="api-course").competitions]
    assert listed.user_has_entered and listed.user_rank == 2 and listed.team_count == 1
    limits = api.competition_get_submission_limits("api-course")
    assert (limits.num_today, limits.num_allowed_now) == (1, 4)


def test_python_api_surfaces_refusal_message(pipeline_env, host, tmp_path):
    write_course_competition(tmp_path / "course", "refuse-course")
    host.store.add_competition(tmp_path / "course")
    api = kaggle_api(load_spec("digits"))
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nt0,a\n")
    # Accepted, then it fails to score (as on kaggle.com), with the reason, and does not count.
    ref = api.competition_submit(str(bad), "partial", "refuse-course", quiet=True).ref
    failed = api.get_submission(ref)
    assert failed.status.name == "ERROR" and "missing 5 of 6 test ids" in failed.error_description
    assert api.competition_get_submission_limits("refuse-course").num_today == 0


def test_download_stage_unzips_and_then_skips(pipeline_env, capsys):
    spec = load_spec("digits")
    folder = download(spec)
    assert raw_is_complete(folder)
    assert (folder / "train.csv").is_file() and len(list((folder / "test").glob("*.png"))) == 450
    capsys.readouterr()
    assert download(spec) == folder
    assert "up to date" in capsys.readouterr().out
    # A file removed from raw/ makes the download incomplete again.
    (folder / "train.csv").unlink()
    assert not raw_is_complete(folder)


def test_in_a_kernel_the_attached_competition_is_linked_not_downloaded(pipeline_env, host, tmp_path, monkeypatch, capsys):
    import shutil

    from competition.paths import data_root, submissions_root

    attached = tmp_path / "input" / "digits"
    shutil.copytree(host.store.competition_dir("digits") / "data", attached)
    with zipfile.ZipFile(attached / "extra.zip", "w") as zf:  # as a real competition may ship archives inside
        zf.writestr("notes/readme.txt", "unpacked in place")
    monkeypatch.setenv("KAGGLE_INPUT_ROOT", str(tmp_path / "input"))
    monkeypatch.setenv("KPIPE_LOCAL_HOST_PORT", "9")  # nothing listens there: a download would fail
    folder = download(load_spec("digits"), start_local_host=False)
    assert "using the files attached to this kernel" in capsys.readouterr().out
    assert (folder / "train.csv").is_symlink() and len(list((folder / "test").glob("*.png"))) == 450
    assert (folder / "notes" / "readme.txt").read_text() == "unpacked in place" and not (folder / "extra.zip").exists()
    assert raw_is_complete(folder) and list(attached.glob("extra.zip"))  # the attached files are left as they were
    # Inside a kernel, what kpipe writes goes to the working directory, which becomes the kernel's output.
    monkeypatch.delenv("KPIPE_DATA")
    monkeypatch.delenv("KPIPE_SUBMISSIONS", raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "kpipe-data" and submissions_root() == tmp_path / "submissions"


def test_safe_extract_refuses_entries_escaping_the_folder(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.csv", "id,label\n")
        zf.writestr("../escaped.txt", "gotcha")
    with pytest.raises(DataError, match="would escape the data folder"):
        unpack_all(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_unreachable_local_host_is_one_clear_sentence(pipeline_env, monkeypatch):
    monkeypatch.setenv("KPIPE_LOCAL_HOST_PORT", "9")  # nothing listens there
    with pytest.raises(KaggleError, match=r"downloading the files of 'digits' failed \(tried 3 times\): cannot reach the "
                                          r"local Kaggle host \(127.0.0.1:9\): start it with `make serve`"):
        download(load_spec("digits"), start_local_host=False)
    assert not (pipeline_env / "digits" / "raw").exists()


def test_real_kaggle_without_credentials_says_how_to_fix(pipeline_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    spec = load_spec("digits").model_copy(update={"host": "kaggle"})
    with pytest.raises(KaggleError, match="no Kaggle credentials: save your API token as .*kaggle.json"):
        kaggle_api(spec)


def test_make_scores_fills_private_scores_once_the_competition_closes(pipeline_env, host, tmp_path, monkeypatch, capsys):
    import yaml

    from competition.host.__main__ import main as host_main
    from competition.spec import SPEC_DIR
    from pipelines.__main__ import main as pipelines_main
    from pipelines.stages.submit import LOG_COLUMNS, log_path, read_log, write_log

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    truth = write_course_competition(tmp_path / "course", "scores-course")
    host.store.add_competition(tmp_path / "course")
    variant = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    variant["kaggle_slug"] = "scores-course"
    spec_path = tmp_path / "digits-scores.yaml"
    spec_path.write_text(yaml.safe_dump(variant))
    spec = load_spec(str(spec_path))
    api = kaggle_api(spec)
    answer = tmp_path / "answer.csv"
    answer.write_text("id,label\n" + "".join(f"{i},a\n" for i in truth))
    api.competition_submit(str(answer), "all a", "scores-course", quiet=True)
    [mine] = api.competition_submissions("scores-course")
    row = dict.fromkeys(LOG_COLUMNS, "")
    row.update(time="2026-11-27T10:00:00+00:00", competition="digits", profile="quick", config_hash="abc",
               git_commit="0" * 40, predictions_digest="0123456789abcdef", cv_score="0.90000", metric="accuracy",
               public_score=mine.public_score, status="COMPLETE", ref=str(mine.ref), file=str(answer), data="real")
    log_path(spec).parent.mkdir(parents=True)
    write_log(spec, [row])

    assert pipelines_main(["scores", "--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "0 private scores filled in" in out and "hidden until the deadline" in out
    assert read_log(spec)[0]["private_score"] == ""

    assert host_main(["--root", str(host.root), "close", "scores-course"]) == 0
    assert "scores-course: closed" in capsys.readouterr().out
    assert pipelines_main(["scores", "--comp", str(spec_path)]) == 0
    assert "1 private score filled in" in capsys.readouterr().out
    assert float(read_log(spec)[0]["private_score"]) == pytest.approx(1 / 3, abs=1e-4)  # (b,a,b) against all a
    assert host_main(["--root", str(host.root), "close", "no-such-comp"]) == 2  # one line, no traceback


def course_spec(tmp_path, host, slug: str):
    """A course competition on the test host, and a spec whose kaggle_slug names it; (spec, truth)."""
    import yaml

    from competition.spec import SPEC_DIR

    truth = write_course_competition(tmp_path / slug, slug, max_daily=20)
    host.store.add_competition(tmp_path / slug)
    variant = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    variant["kaggle_slug"] = slug
    path = tmp_path / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(variant))
    return load_spec(str(path)), truth


@pytest.mark.slow
def test_the_wait_loop_meets_pending_then_complete_an_error_and_a_timeout(pipeline_env, host, tmp_path, scoring_delay):
    import time

    from pipelines.stages.submit import wait_for_score

    spec, truth = course_spec(tmp_path, host, "wait-course")
    api = kaggle_api(spec)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("id,label\n" + "".join(f"{i},{label}\n" for i, label in truth.items()))
    bad.write_text("id,label\nt0,a\n")

    scoring_delay(2)
    ref = api.competition_submit(str(good), "good", "wait-course", quiet=True).ref
    pending = api.get_submission(ref)
    assert pending.status.name == "PENDING" and not pending.public_score  # no score while pending
    started = time.monotonic()
    result = wait_for_score(spec, api, ref, "0" * 16)
    assert result.status == "COMPLETE" and result.public_score == 1.0 and time.monotonic() - started >= 1.0
    assert result.private_score is None  # hidden until the deadline

    ref = api.competition_submit(str(bad), "bad", "wait-course", quiet=True).ref
    result = wait_for_score(spec, api, ref, "0" * 16)
    assert result.status == "ERROR" and "missing 5 of 6 test ids" in result.error

    scoring_delay(60)
    ref = api.competition_submit(str(good), "slow", "wait-course", quiet=True).ref
    result = wait_for_score(spec, api, ref, "0" * 16, timeout_s=1.5)
    assert result.status == "PENDING" and result.ref == ref  # the log keeps it PENDING for a later run


def test_a_zipped_csv_is_scored_like_the_csv_and_a_bad_zip_fails_to_score(pipeline_env, host, tmp_path):
    spec, truth = course_spec(tmp_path, host, "zip-course")
    api = kaggle_api(spec)
    text = "id,label\n" + "".join(f"{i},a\n" for i in truth)
    (tmp_path / "plain.csv").write_text(text)
    with zipfile.ZipFile(tmp_path / "zipped.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("submission.csv", text)
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.csv", text)
        archive.writestr("b.csv", text)
    plain = api.get_submission(api.competition_submit(str(tmp_path / "plain.csv"), "csv", "zip-course", quiet=True).ref)
    zipped = api.get_submission(api.competition_submit(str(tmp_path / "zipped.zip"), "zip", "zip-course", quiet=True).ref)
    assert zipped.status.name == "COMPLETE" and zipped.public_score == plain.public_score
    two = api.get_submission(api.competition_submit(str(tmp_path / "two.zip"), "two", "zip-course", quiet=True).ref)
    assert two.status.name == "ERROR" and "must hold exactly one .csv file" in two.error_description
