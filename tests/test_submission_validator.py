"""The pre-upload validator refuses every kind of malformed submission, naming the file, row and problem,
in each format a metric asks for (competition/formats.py): one label, k ranked labels, probabilities."""
from __future__ import annotations

import numpy as np
import pytest

from competition.formats import SubmissionFormat, score
from competition.metrics import metric
from competition.spec import load_spec
from pipelines.stages.submit import SubmissionInvalid, validate_submission

CLASSES = ["0", "1", "2"]
SAMPLE_ROWS = [["id", "label"], ["a", "0"], ["b", "0"], ["c", "0"]]
LABEL = SubmissionFormat.of(metric("accuracy"), "id", "label", CLASSES, ["id", "label"])


def _write(path, rows):
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sample(tmp_path):
    return _write(tmp_path / "sample_submission.csv", SAMPLE_ROWS)


def test_a_good_submission_passes(tmp_path, sample):
    good = _write(tmp_path / "good.csv", [["id", "label"], ["a", "2"], ["b", "1"], ["c", "0"]])
    assert validate_submission(good, sample, LABEL) == 3


@pytest.mark.parametrize("rows, message", [
    ([["id", "target"], ["a", "2"], ["b", "1"], ["c", "0"]], "header id,target differs from the sample's id,label"),
    ([["id", "label"], ["a", "2"], ["b", "1"]], "2 rows, the sample submission has 3"),
    ([["id", "label"], ["a", "2"], ["b", "1"], ["c", "0"], ["d", "0"]], "4 rows, the sample submission has 3"),
    ([["id", "label"], ["b", "2"], ["a", "1"], ["c", "0"]], "row 2: id 'b' where the sample submission has 'a'"),
    ([["id", "label"], ["a", "2"], ["a", "1"], ["c", "0"]], "row 3: duplicate id 'a'"),
    ([["id", "label"], ["a", "2"], ["x", "1"], ["c", "0"]], "row 3: id 'x' where the sample submission has 'b'"),
    ([["id", "label"], ["a", "7"], ["b", "1"], ["c", "0"]], "row 2 (id 'a'): 'label' is '7', not one of the competition's classes"),
    ([["id", "label"], ["a", ""], ["b", "1"], ["c", "0"]], "row 2 (id 'a'): 'label' is '', not one of"),
    ([["id", "label"], ["a", "1", "extra"], ["b", "1"], ["c", "0"]], "row 2: 3 fields, expected 2"),
    ([], "empty file"),
])
def test_malformed_submission_is_refused(tmp_path, sample, rows, message):
    bad = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(SubmissionInvalid) as info:
        validate_submission(bad, sample, LABEL)
    assert message in str(info.value) and str(bad) in str(info.value)


PROBABILITIES = SubmissionFormat.of(metric("log_loss"), "id", "label", CLASSES, ["id", "c0", "c1", "c2"])


@pytest.mark.parametrize("row, message", [
    (["a", "0.2", "0.3", "0.5"], None),
    (["a", "0.2", "0.3", "0.6"], "the probabilities sum to 1.1000; each row must sum to 1"),
    (["a", "0.2", "x", "0.8"], "'c1' is 'x', not a number"),
    (["a", "-0.1", "0.6", "0.5"], "'c0' is -0.1; probabilities lie between 0 and 1"),
    (["a", "nan", "0.5", "0.5"], "'c0' is nan; probabilities lie between 0 and 1"),
])
def test_probability_rows_are_numbers_in_range_summing_to_one(tmp_path, row, message):
    sample = _write(tmp_path / "sample.csv", [["id", "c0", "c1", "c2"], ["a", "1", "0", "0"]])
    path = _write(tmp_path / "sub.csv", [["id", "c0", "c1", "c2"], row])
    if message is None:
        assert validate_submission(path, sample, PROBABILITIES) == 1
        return
    with pytest.raises(SubmissionInvalid, match="row 2 \\(id 'a'\\): " + message.replace("(", "\\(").replace(")", "\\)")):
        validate_submission(path, sample, PROBABILITIES)


def test_each_format_writes_what_it_reads_and_scores_like_the_metric():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]])
    labels = np.array([1, 2, 2])
    ranked3 = SubmissionFormat.of(metric("map_at_k", 2), "id", "label", CLASSES, ["id", "label"])
    assert ranked3.cells(probs[1]) == ["0 2"]
    assert ranked3.parse(["0 2"]) == [0, 2]
    parsed = [ranked3.parse(ranked3.cells(p)) for p in probs]
    assert score(metric("map_at_k", 2), ranked3, parsed, labels) == pytest.approx((1 + 1 / 2 + 1) / 3)
    with pytest.raises(ValueError, match="holds 3 labels; give 1 to 2"):
        ranked3.parse(["0 1 2"])
    assert LABEL.cells(probs[0]) == ["1"]
    parsed = [LABEL.parse(LABEL.cells(p)) for p in probs]
    assert score(metric("accuracy"), LABEL, parsed, labels) == pytest.approx(2 / 3)
    parsed = [PROBABILITIES.parse(PROBABILITIES.cells(p)) for p in probs]
    assert score(metric("log_loss"), PROBABILITIES, parsed, labels) == pytest.approx(metric("log_loss").score(probs, labels))
    binary = SubmissionFormat.of(metric("roc_auc"), "id", "label", ["no", "yes"], ["id", "yes"])
    assert binary.cells(np.array([0.25, 0.75])) == ["0.75"] and binary.parse(["0.75"]).tolist() == [0.25, 0.75]


@pytest.mark.parametrize("name, header, message", [
    ("log_loss", ["id", "label"], "1 prediction columns; a submission scored by log_loss has one probability column per class (3)"),
    ("accuracy", ["id", "c0", "c1", "c2"], "a submission scored by accuracy has the one column 'label'"),
    ("accuracy", ["key", "label"], "its first column is 'key', not the id column 'id'"),
])
def test_a_sample_submission_that_does_not_fit_the_metric_is_named(name, header, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        SubmissionFormat.of(metric(name), "id", "label", CLASSES, header)


def test_a_kernels_output_is_checked_before_anything_is_submitted(pipeline_env, host, tmp_path, capsys):
    from pipelines.after_run.code_submit import _check_output
    from pipelines.stages.download import download

    spec = load_spec("digits")
    download(spec)
    visible = tmp_path / "visible.csv"  # the pipeline's own predictions for the rows the download holds
    visible.write_text("id,label\na,1\nb,2\n")
    output = tmp_path / "v3" / "submission.csv"
    output.parent.mkdir()
    (output.parent / "kernel.log").write_text("ran\n")
    cases = [(None, "the kernel wrote no submission.csv (its output: nothing)"),
             ("id,prediction\na,1\n", "header id,prediction differs from the sample's id,label"),
             ("id,label\na,1\nb,3\nc,4\n", "predictions for 1 of the 2 visible test rows differ from the pipeline's "
                                           "(first: id 'b')"),
             ("id,label\na,1\nb,2\nb,4\n", "row 4: a duplicate id"),
             ("id,label\na,1\nb,2\nc,eleven\n", "row 4 (id 'c')")]
    for text, message in cases:
        if text is not None:
            output.write_text(text)
        with pytest.raises(SubmissionInvalid) as refused:
            _check_output(spec, output, visible)
        assert message in str(refused.value) and "nothing was submitted" in str(refused.value), str(refused.value)
    output.write_text("id,label\na,1\nb,2\nc,4\n")
    assert _check_output(spec, output, visible) == 3
    assert "the kernel agrees with the pipeline on the 2 visible test rows" in capsys.readouterr().out
