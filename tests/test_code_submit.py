"""`make submit` on a code competition: real training on digits, the package published through the real
kaggle client, the inference kernel run by the local host on the hidden test set, its output submitted
and scored as the CSV route scores the same run."""
from __future__ import annotations

import csv

import pytest
import yaml

from competition.host.code_store import CodeHost
from competition.host.store import NotFound
from competition.kaggle_kernels import file_digests, publish_dataset
from competition.kaggle_adapter import kaggle_api
from competition.spec import load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.after_run.export import write_package
from pipelines.stages.lineage import find_run
from pipelines.stages.submit import read_log
from tests.test_train_submit import TINY_RUN, write_digits_variant

pytestmark = pytest.mark.slow  # trains, and runs kernels on the host


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _code_variant(folder):
    path = write_digits_variant(folder, [TINY_RUN])
    spec = yaml.safe_load(path.read_text())
    spec.update(name="digits-code", kaggle_slug="digits-code", kernels_only=True)
    spec.pop("code_competition")
    path.write_text(yaml.safe_dump(spec))
    return path


def _latest(host, owner: str) -> tuple[int, int]:
    """(the latest dataset version, the latest kernel version) of kpipe's entry to digits-code; 0 for none."""
    code = CodeHost(host.store)
    try:
        dataset = code.dataset(owner, "kpipe-digits-code")["version"]
    except NotFound:
        dataset = 0
    try:
        kernel = code.kernel(owner, "kpipe-digits-code")["version"]
    except NotFound:
        kernel = 0
    return dataset, kernel


def test_make_submit_enters_a_code_competition_through_a_kernel(pipeline_env, host, tmp_path, kernel_python, run_kaggle,
                                                                monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = _code_variant(tmp_path)
    owner = host.store.credentials()["username"]
    dataset_before, kernel_before = _latest(host, owner)
    scored_before = len(host.store.submissions("digits-code"))

    # A kernel whose Python lacks the packages fails: one line with its log's tail and where the rest
    # is, a FAILED row in the log, nothing submitted.
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", "/usr/bin/python3")
    assert pipelines_main(["submit", "--comp", str(spec_path)]) != 0
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]
    assert f"kernel {owner}/kpipe-digits-code version {kernel_before + 1} failed on the local Kaggle host" in error
    assert "ModuleNotFoundError" in error and "Nothing was submitted" in error, error
    assert f"dataset {owner}/kpipe-digits-code version {dataset_before + 1}: uploaded" in captured.out
    assert len(host.store.submissions("digits-code")) == scored_before
    [failed] = read_log(load_spec(str(spec_path)))
    assert failed["status"] == "FAILED" and not failed["ref"]
    assert failed["kernel"] == f"{owner}/kpipe-digits-code v{kernel_before + 1}, dataset v{dataset_before + 1}"

    # With the packages the script declares: the same package (not uploaded again), a new kernel version,
    # its output checked against the visible rows, submitted and scored.
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", kernel_python)
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "holds this package already, nothing uploaded" in out
    assert f"pushed kernel {owner}/kpipe-digits-code version {kernel_before + 2}" in out
    assert "the kernel agrees with the pipeline on the 20 visible test rows" in out
    assert "leaderboard: public" in out
    scored = host.store.submissions("digits-code")
    assert len(scored) == scored_before + 1 and scored[0]["status"] == "COMPLETE"
    row = read_log(load_spec(str(spec_path)))[-1]
    assert row["status"] == "COMPLETE" and row["ref"] == str(scored[0]["ref"])
    assert row["kernel"] == f"{owner}/kpipe-digits-code v{kernel_before + 2}, dataset v{dataset_before + 1}"
    kernel_output = pipeline_env / "digits-code" / "kernels" / "kpipe-digits-code" / f"v{kernel_before + 2}" / "submission.csv"
    assert row["file"] == str(kernel_output) and len(_rows(kernel_output)) == 451  # the whole hidden test set

    # The CSV route on the same run: `make predict` over the whole hidden test set, uploaded to digits
    # (the same ids, labels and split): the same rows, the same scores.
    hidden = host.store.competition_dir("digits-code") / "hidden" / "test"
    assert pipelines_main(["predict", "--comp", str(spec_path), "--input", str(hidden), "--out",
                           str(tmp_path / "all.csv")]) == 0
    assert _rows(tmp_path / "all.csv") == _rows(kernel_output)
    uploaded = run_kaggle("competitions", "submit", "digits", "-f", str(tmp_path / "all.csv"), "-m", "csv route of code")
    assert "Successfully submitted" in uploaded.stdout, uploaded.stdout + uploaded.stderr
    [csv_route] = [s for s in host.store.submissions("digits") if s["description"] == "csv route of code"]
    assert (scored[0]["public_score"], scored[0]["private_score"]) == (csv_route["public_score"], csv_route["private_score"])

    # Again: scored already, nothing published, pushed or submitted.
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    assert "scored already" in capsys.readouterr().out
    assert _latest(host, owner) == (dataset_before + 1, kernel_before + 2)
    assert len(host.store.submissions("digits-code")) == scored_before + 1

    # The package on the host is found by its digest; a changed one is a new version.
    spec = load_spec(str(spec_path))
    package = write_package(spec, find_run(spec, None))
    api = kaggle_api(spec)
    assert not publish_dataset(spec, api, package.dataset, package.ref, package.digest, "same").uploaded
    (package.dataset / "requirements.txt").write_text("numpy\n")  # stands in for new weights
    changed = file_digests(package.dataset)["digest"]
    (package.dataset / "kpipe-package.json").write_text(f'{{"digest": "{changed}"}}')
    again = publish_dataset(spec, api, package.dataset, package.ref, changed, "changed")
    assert again.uploaded and again.version == dataset_before + 2
